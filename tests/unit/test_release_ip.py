"""A released floating IP: `stop|shelve --release-ip` gives the address back,
`start|unshelve` gets a new one. The guest follows its address at each boot
(the first: the launch's; later: what the cloud's metadata service, else its
config drive, says) and serves the names of the new one; vmbinder reads no
certificate report made for the old address as the new one's; commands refuse
what cannot be released and say what was."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.unit.test_guest_parts import document
from tests.unit.test_power import Powered
from tests.unit.test_scope import ME, server
from vmbinder import errors, https, power
from vmbinder.commands.main import cli
from vmbinder.providers.base import Removed

guest = importlib.import_module("vmbinder.cloud_init.vmbinder_guest")

OLD, NEW = "203.0.113.9", "198.51.100.4"


@pytest.fixture
def booted(tmp_path, monkeypatch):
    """The guest script in a scratch root, the cloud saying the address it says."""
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    says = {"address": None, "asked": 0}

    def public_ipv4():
        says["asked"] += 1
        return says["address"]

    monkeypatch.setattr(guest, "public_ipv4", public_ipv4)
    return says


def hosts(doc):
    return [c["host"] for c in guest.candidates(doc)]


def test_the_guest_serves_the_names_of_the_address_it_has_now(booted):
    doc = document(OLD)
    doc["site"]["follow_address"] = True
    launched = hosts(doc)
    assert launched == [OLD, "203-0-113-9.sslip.io", "203-0-113-9.nip.io", OLD]
    # The first boot: the launch's address, the cloud not asked (it attaches it as the server boots).
    guest.follow_address(doc)
    assert (booted["asked"], hosts(doc)) == (0, launched)
    # A later boot with the same address, then with a new one.
    booted["address"] = OLD
    guest.follow_address(doc)
    assert hosts(doc) == launched
    booted["address"] = NEW
    guest.follow_address(doc)
    assert booted["asked"] == 2
    assert hosts(doc) == [NEW, "198-51-100-4.sslip.io", "198-51-100-4.nip.io", NEW]
    assert [c["issuer"] for c in guest.candidates(doc)] == [c["issuer"] for c in doc["site"]["candidates"]]
    # The cloud says nothing (no metadata service, no config drive): the last one known.
    booted["address"] = None
    guest.follow_address(doc)
    assert hosts(doc)[0] == NEW


def test_a_host_name_stays_and_a_launch_that_does_not_follow_never_asks(booted):
    doc = document(OLD, hostname="nb.example.org")
    doc["site"]["follow_address"] = True
    guest.follow_address(doc)
    booted["address"] = NEW
    guest.follow_address(doc)
    assert hosts(doc) == ["nb.example.org", "nb.example.org"]
    fixed = document(OLD)  # a port's own address, or the local target's
    assert fixed["site"]["follow_address"] is False
    guest.follow_address(fixed)
    assert booted["asked"] == 1 and hosts(fixed)[0] == OLD


def test_readdress_changes_the_address_and_its_wildcard_names_only():
    assert guest.readdress(OLD, OLD, NEW) == NEW
    assert guest.readdress("203-0-113-9.sslip.io", OLD, NEW) == "198-51-100-4.sslip.io"
    assert guest.readdress("203-0-113-99.sslip.io", OLD, NEW) == "203-0-113-99.sslip.io"
    assert guest.readdress("nb.example.org", OLD, NEW) == "nb.example.org"
    assert guest.readdress("2001-db8--1.sslip.io", "2001:db8::1", "2001:db8::2") == "2001-db8--2.sslip.io"


def test_the_metadata_service_is_asked_again_until_it_has_the_address(monkeypatch):
    answers = iter([guest.urllib.error.HTTPError(guest.PUBLIC_IPV4, 404, "Not Found", {}, None),
                    NEW.encode()])

    class Opener:
        def open(self, url, timeout):
            assert url == guest.PUBLIC_IPV4
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return Answer(answer)

    class Answer:
        def __init__(self, body):
            self.body = body

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return self.body

    clock = {"now": 1000.0}
    monkeypatch.setattr(guest.urllib.request, "build_opener", lambda *handlers: Opener())
    monkeypatch.setattr(guest.time, "time", lambda: clock["now"])
    monkeypatch.setattr(guest.time, "sleep", lambda s: clock.__setitem__("now", clock["now"] + s))
    monkeypatch.setattr(guest, "config_drive_public_ipv4", lambda: OLD)
    assert guest.public_ipv4() == NEW
    # No answer yet (the network still being wired as the server boots), then the address.
    answers = iter([OSError("no route"), TimeoutError("timed out"), NEW.encode()])
    assert guest.public_ipv4() == NEW
    # An answer without one until the wait is over: none (the config drive's would be older).
    answers = iter([guest.urllib.error.HTTPError(guest.PUBLIC_IPV4, 404, "Not Found", {}, None)] * 100)
    start = clock["now"]
    assert guest.public_ipv4() is None
    assert guest.PUBLIC_IPV4_WAIT <= clock["now"] - start <= guest.PUBLIC_IPV4_WAIT + 5
    # No metadata service at all, through the whole wait: the config drive's.
    answers = iter([OSError("no route")] * 100)
    start = clock["now"]
    assert guest.public_ipv4() == OLD
    assert guest.PUBLIC_IPV4_WAIT <= clock["now"] - start <= guest.PUBLIC_IPV4_WAIT + 5


def caddy_has(doc, host):
    """Caddy's stored certificate for host from the ACME CA, as Caddy stores it."""
    folder = Path(guest.at(guest.caddy_storage(doc))) / "certificates" / "acme-dir" / host
    folder.mkdir(parents=True)
    (folder / f"{host}.crt").write_text("a certificate")


@pytest.fixture
def later_boot(booted, monkeypatch):
    """A boot after the first of a launch that follows its address, whose first
    boot settled on a certificate for OLD; getting one is recorded, not done (what
    that does is test_guest_script's)."""
    doc = document(OLD)
    doc["site"]["follow_address"] = True
    guest.follow_address(doc)
    guest.write_state(doc, ready=True, ready_at=1.0, tls={"trying": 0, "outcome": {
        "site": OLD, "issuer": "acme", "failed": [], "root": None}})
    caddy_has(doc, OLD)
    obtained = []

    def obtain_certificate(doc):
        host = guest.current_candidate(doc)["host"]
        obtained.append((host, guest.current_state(doc)["ready"]))
        return 0, {"site": host, "issuer": "acme", "failed": [], "root": None}

    monkeypatch.setattr(guest, "obtain_certificate", obtain_certificate)
    return doc, obtained


def console_lines(prefix):
    path = Path(guest.at("/dev/console"))
    return [line for line in path.read_text().splitlines() if line.startswith(prefix)] \
        if path.exists() else []


def test_a_boot_at_a_new_address_gets_its_certificate_and_is_ready_again(booted, later_boot):
    doc, obtained = later_boot
    (Path(guest.ROOT) / "dev").mkdir()
    (Path(guest.ROOT) / "dev/console").write_text("")
    booted["address"] = OLD  # started again with the floating IP kept: its certificate stays
    assert guest.boot_again(doc) == 0
    state = guest.current_state(doc)
    # Ready again on this boot's console (Nova's is new after an unshelve), counted from now.
    assert obtained == [] and (state["phase"], state["status"], state["ready"]) == ("ready", "done", True)
    assert state["ready_at"] > 1.0
    assert console_lines(doc["guest"]["outcome_prefix"]) == []
    booted["address"] = NEW  # given back and a new one attached
    assert guest.boot_again(doc) == 0
    state = guest.current_state(doc)
    # Not ready while it got the certificate (the care service waits), ready afterwards.
    assert obtained == [(NEW, False)] and state["ready"]
    assert (state["address"], state["phase"], state["status"]) == (NEW, "ready", "done")
    assert state["tls"]["outcome"]["site"] == NEW
    (line,) = console_lines(doc["guest"]["outcome_prefix"])
    assert json.loads(line[len(doc["guest"]["outcome_prefix"]):])["site"] == NEW
    log = (Path(guest.ROOT) / guest.where(doc, "log_dir").lstrip("/") / "guest.log").read_text()
    assert f"the server's address is now {NEW} (it was {OLD})" in log


def test_a_failed_certificate_at_a_new_address_is_the_tls_phases_and_the_server_is_ready(
        booted, later_boot, monkeypatch):
    doc, _ = later_boot

    def refused(doc):
        raise guest.StepFailed("no certificate from any issuer: 198.51.100.4 (acme): refused by the CA")

    monkeypatch.setattr(guest, "obtain_certificate", refused)
    booted["address"] = NEW
    assert guest.boot_again(doc) == 1
    state = guest.current_state(doc)
    assert (state["phase"], state["status"], state["ready"]) == ("tls", "failed", True)
    assert "refused by the CA" in state["error"]


def test_a_boot_stopped_while_it_got_the_certificate_gets_it_at_the_next(booted, later_boot):
    doc, obtained = later_boot
    booted["address"] = NEW
    guest.follow_address(doc)  # the new address recorded, then powered off
    guest.write_state(doc, ready=False)
    caddy_has(doc, NEW)  # Caddy, started at the next boot for it, got one on its own
    assert guest.boot_again(doc) == 0
    # The outcome on record was OLD's: this boot reports NEW's.
    assert obtained == [(NEW, False)] and guest.current_state(doc)["ready"]


def test_a_later_boot_of_a_launch_that_does_not_follow_reports_ready_and_asks_nothing(booted):
    fixed = document(OLD)  # a port's own address, or the local target's
    guest.write_state(fixed, ready=True, ready_at=1.0)
    booted["address"] = NEW
    assert guest.boot_again(fixed) == 0
    state = guest.current_state(fixed)
    assert (state["phase"], state["ready"], booted["asked"]) == ("ready", True, 0)
    assert state["ready_at"] > 1.0


def test_the_first_boot_and_another_launchs_state_are_left_to_run(booted, monkeypatch):
    ran = []
    monkeypatch.setattr(guest, "ensure_tls", lambda doc: ran.append(doc))
    doc = document(OLD)
    doc["site"]["follow_address"] = True
    booted["address"] = NEW
    guest.write_state(doc, ready=False)  # the first boot's run is at it
    assert guest.boot_again(doc) == 0
    assert "phase" not in guest.current_state(doc)
    other = document(OLD, name="seat-02")  # a server started from doc's snapshot
    other["site"]["follow_address"] = True
    guest.write_state(doc, ready=True, ready_at=1.0)
    assert guest.boot_again(other) == 0
    assert ran == [] and booted["asked"] == 0 and guest.current_state(other) == {}


def test_the_first_boots_run_enables_the_boot_unit_once(tmp_path, monkeypatch):
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    commands = []
    monkeypatch.setattr(guest, "run", lambda doc, argv, **kw: commands.append(argv))
    doc = document(OLD)
    guest.boot_unit_enabled(doc)
    guest.boot_unit_enabled(doc)
    unit = (tmp_path / "etc/systemd/system" / guest.BOOT_UNIT).read_text()
    assert f"ExecStart=/usr/bin/python3 {guest.__file__} boot" in unit
    assert "After=network-online.target cloud-init.service cloud-init-network.service " \
           f"{guest.CADDY_UNIT} vmbinder-env.service" in unit
    # Enabled for the boots to come, not started: the first boot's run does its work.
    assert commands == [["systemctl", "daemon-reload"], ["systemctl", "enable", guest.BOOT_UNIT]]


def report(site, issuer="acme"):
    return https.OUTCOME_PREFIX + json.dumps({"site": site, "issuer": issuer, "failed": []})


def test_a_certificate_report_for_the_old_address_is_not_the_new_ones():
    console = "\n".join([report(OLD), "boot again", report("203-0-113-9.sslip.io")])
    assert https.last_outcome(console).site == "203-0-113-9.sslip.io"
    assert https.last_outcome(console, NEW) is None
    assert https.last_outcome(console, OLD).site == "203-0-113-9.sslip.io"
    console += "\n" + report(NEW, "internal")
    assert https.last_outcome(console, NEW).site == NEW
    named = report("nb.example.org")  # a host name stands for no address
    assert https.last_outcome(named, NEW).site == "nb.example.org"


class Releasing(Powered):
    capabilities = Powered.capabilities | {"release_ip"}

    def release_ip(self, srv):
        self.calls.append(f"release {srv.name}")
        done = replace(srv, address=None, metadata={**srv.metadata, "vmbinder:released": "ext"})
        self.servers[srv.id] = done
        return done, [Removed("floating IP", "fip-1", srv.address)]


def test_stop_releases_first_and_says_what_start_gives(monkeypatch, tmp_path):
    from vmbinder.commands import main as cli_module

    cloud = Releasing(replace(server("a", ME), address=OLD), replace(server("b", ME), address=NEW))
    monkeypatch.setattr(cli_module.Context, "provider", property(lambda self: cloud))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    res = CliRunner().invoke(cli, ["--cloud", "x", "stop", "--release-ip", "a"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert cloud.calls == ["release a", "stopped a"]
    assert f"released floating IP {OLD}: vmbinder start gives a a new one" in res.stderr
    res = CliRunner().invoke(cli, ["--cloud", "x", "status", "a"], catch_exceptions=False)
    assert "released: vmbinder start (or unshelve, when shelved) gives it a new one" in res.stdout
    res = CliRunner().invoke(cli, ["--cloud", "x", "shelve", "--release-ip", "--format", "json", "b"],
                             catch_exceptions=False)
    (doc,) = json.loads(res.stdout)
    assert (doc["action"], doc["address"], doc["released"]) == ("shelved", None, [NEW])


def test_release_is_refused_where_the_target_cannot_and_for_start():
    with pytest.raises(errors.BadRequest, match="no floating IP to give back"):
        power.check(Powered(), "stop", release_ip=True)
    with pytest.raises(ValueError):
        power.check(Releasing(), "start", release_ip=True)
    power.check(Releasing(), "shelve", release_ip=True)
