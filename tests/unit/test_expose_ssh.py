"""launch --expose ssh: port 22 alone is open, nothing serves HTTP publicly, and
vmbinder reaches the environment through SSH (its host key the console's): the
launch's wait, status, logs and the tunnel. The SSH server here is paramiko's
(tests/unit/test_remote.py), its direct-tcpip channels reaching services on
this machine's loopback as the server's would reach its own."""

from __future__ import annotations

import http.server
import json
import socket
import threading

import pytest
from click.testing import CliRunner

from tests.unit.test_guest_script import SEAT_KEY, SEAT_KEY_SHA256, jupyter, spec_for  # noqa: F401
from tests.unit.test_guest_script import Guest as GuestScript
from tests.unit.test_remote import TOKEN, SshProvider, block, keys, sshd, use  # noqa: F401
from vmbinder import errors, guestlog, lifecycle, reach, remote
from vmbinder.commands.main import cli
from vmbinder.guestcontract import PHASE_PREFIX
from vmbinder.https import OUTCOME_PREFIX
from vmbinder.providers.local.qemu import FORWARDS, forwarded_for, qemu_argv
from vmbinder.providers.openstack.common import extra_rules, security_group_name, wanted_rules
from vmbinder.sources import Source
from vmbinder.spec import make_spec, recorded


class Services(http.server.ThreadingHTTPServer):
    """Jupyter and the status service of a server, on one port of this machine."""

    def __init__(self):
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), ServicesHandler)

    @property
    def address(self) -> str:
        return "{}:{}".format(*self.server_address[:2])


class ServicesHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        if f"token={TOKEN}" not in self.path:
            self.answer(403, {"error": "token"})
        elif self.path.startswith("/api/status"):
            self.answer(200, {"started": "2026-12-05T00:00:00Z", "connections": 0})
        elif self.path.startswith("/vmbinder/status.json"):
            self.answer(200, {"phase": "ready", "status": "done", "ready": True, "elapsed": 42,
                              "interfaces": ["tree", "lab"], "commit": "abc1234"})
        elif self.path.startswith("/vmbinder/log"):
            text = "Step 1/3 : FROM base\nbuilt\n"
            self.answer(200, {"text": text, "offset": len(text), "size": len(text),
                              "phase": "ready", "status": "done", "ready": True})
        else:
            self.answer(404, {})

    def answer(self, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def guest(monkeypatch):
    server = Services()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Both services answer at the one address here; on a server they are two.
    monkeypatch.setattr(reach, "JUPYTER_ADDRESS", server.address)
    monkeypatch.setattr(reach, "STATUS_ADDRESS", server.address)
    yield server
    server.shutdown()
    server.server_close()


READY = PHASE_PREFIX + json.dumps({"phase": "ready", "status": "done"}) + "\n"


def ssh_server(sshd, keys, console: str = READY, **metadata):  # noqa: F811
    return SshProvider(sshd.port, block(keys.host) + console, {"expose": "ssh", "tls": "off",
                                                               **metadata})


def spec(**kw):
    return make_spec(Source(kind="git", repo="https://github.com/o/r", ref="main", given="o/r"),
                     name="demo", **kw)


# -- what the launch asks for -----------------------------------------------------------

def test_expose_ssh_asks_for_no_certificate_and_is_recorded():
    from vmbinder.spec import CloudChoice, MetadataLimits

    s = spec(cloud=CloudChoice(expose="ssh"))
    assert (s.tls, s.hostname) == ("off", None)
    values = recorded(s, MetadataLimits(value_max=255))
    assert values["expose"] == "ssh" and values["tls"] == "off"
    assert "expose" not in recorded(spec(), MetadataLimits(value_max=255))  # the default is not written
    assert lifecycle.dry_run(s)["expose"] == "ssh"


@pytest.mark.parametrize("given", [{"hostname": "lab.example.org"}, {"tls": "internal"}])
def test_expose_ssh_refuses_the_options_of_a_public_site(given):
    from vmbinder.spec import CloudChoice

    with pytest.raises(errors.BadRequest) as info:
        spec(cloud=CloudChoice(expose="ssh"), **given)
    option = "--" + next(iter(given))
    assert option in info.value.message and "only port 22 is open" in info.value.message
    assert f"leave {option} out, or launch with --expose https" == info.value.hint


def test_an_unknown_exposure_is_refused():
    from vmbinder.spec import CloudChoice

    with pytest.raises(errors.BadRequest) as info:
        spec(cloud=CloudChoice(expose="http"))
    assert info.value.message == "invalid --expose 'http'" and info.value.hint == "use one of: https, ssh"


def test_the_security_group_of_expose_ssh_lets_in_port_22_alone():
    assert security_group_name("0.0.0.0/0", "ssh") == "vmbinder-ssh-only"
    assert security_group_name("192.0.2.7/24", "ssh") == "vmbinder-ssh-only-192-0-2-0-24"
    assert security_group_name("192.0.2.7/24") == "vmbinder-ssh-192-0-2-0-24"
    assert wanted_rules("0.0.0.0/0", "ssh") == {("IPv4", 22, "0.0.0.0/0"), ("IPv6", 22, "::/0")}
    assert wanted_rules("192.0.2.0/24", "ssh") == {("IPv4", 22, "192.0.2.0/24")}
    web = [{"direction": "ingress", "protocol": "tcp", "ethertype": "IPv4", "port_range_min": p,
            "port_range_max": p, "remote_ip_prefix": "0.0.0.0/0"} for p in (22, 443)]
    assert extra_rules(web, "0.0.0.0/0", "ssh") == web[1:]  # 443 is more than it asks for
    assert extra_rules(web, "0.0.0.0/0") == []


def test_the_local_target_forwards_port_22_alone(tmp_path):
    from vmbinder.images.folder import Image
    from vmbinder.providers.local.qemu import Flavor

    assert forwarded_for("https") == tuple(key for key, _ in FORWARDS)
    assert forwarded_for("ssh") == ("ssh-port",)
    image = Image(name="x", path=tmp_path, disk=tmp_path / "disk.qcow2", disk_format="qcow2")
    argv = qemu_argv(name="demo", image=image, state=tmp_path, ports={"ssh-port": 2222},
                     flavor=Flavor(cpus=1, memory_mb=1024), accel="tcg")
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev.endswith(",hostfwd=tcp:127.0.0.1:2222-:22") and netdev.count("hostfwd") == 1


# -- reaching the server's services through SSH ---------------------------------------------

def test_a_get_through_ssh_reaches_the_service_on_the_servers_loopback(keys, sshd, guest):  # noqa: F811
    provider = ssh_server(sshd, keys)
    with remote.connect(provider, provider.get("demo")) as session:
        status, body, reason = session.get(guest.address, f"/api/status?token={TOKEN}")
        assert (status, reason) == (200, "OK") and "started" in json.loads(body)
        assert session.get(guest.address, "/api/status?token=wrong")[0] == 403
        closed = socket.create_server(("127.0.0.1", 0))
        nowhere = "{}:{}".format(*closed.getsockname()[:2])
        closed.close()
        status, body, reason = session.get(nowhere, "/api/status")
        assert status is None and body == b"" and reason


def test_the_wait_asks_jupyter_through_ssh_and_records_what_the_guest_found(keys, sshd, guest):  # noqa: F811
    provider = ssh_server(sshd, keys)
    said, lines = [], []

    class Reporter:
        def phase(self, phase, detail=""):
            said.append((phase, detail))

        def output(self, line):
            lines.append(line)

    server = lifecycle.wait_ready(provider, provider.get("demo"), Reporter(), timeout=60)
    assert server.meta("interfaces") == "tree,lab"
    assert said[-1] == ("ready", "the environment answers (through SSH)")
    assert lines == ["Step 1/3 : FROM base", "built"]  # the build's output, through SSH too
    assert any(p.startswith("/api/status?token=") for p in guest.paths)
    assert [k for k in sshd.forwards if "{}:{}".format(*k) != guest.address] == []
    acc = lifecycle.access(server)
    assert acc.ssh_only and acc.base is None and acc.urls == {}


def test_the_wait_says_it_waits_for_ssh_until_the_console_shows_host_keys(keys, sshd, guest):  # noqa: F811
    provider = SshProvider(sshd.port, READY, {"expose": "ssh", "tls": "off"})  # no key block
    watch = lifecycle._Watch(provider, provider.get("demo"), None)
    ok, detail = watch.answers()
    assert not ok and detail.startswith("waiting for SSH: demo has printed no SSH host keys")
    watch.close()


def test_a_host_key_that_is_not_the_consoles_ends_the_wait(keys, sshd, guest):  # noqa: F811
    from tests.unit.test_remote import ed25519_key

    other, _ = ed25519_key()
    provider = SshProvider(sshd.port, block(other) + READY, {"expose": "ssh", "tls": "off"})
    with pytest.raises(errors.UntrustedServer):
        lifecycle.wait_ready(provider, provider.get("demo"), lifecycle.NullReporter(), timeout=60)


def test_status_logs_and_url_of_a_server_that_exposes_ssh(keys, sshd, guest, monkeypatch):  # noqa: F811
    provider = ssh_server(sshd, keys)
    use(monkeypatch, provider)
    runner = CliRunner()
    res = runner.invoke(cli, ["status", "demo", "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["expose"] == "ssh" and doc["urls"] == {}
    assert doc["guest"]["phase"] == "ready" and doc["guest"]["commit"] == "abc1234"
    assert provider.get("demo").meta("interfaces") == "tree,lab"  # recorded by status
    res = runner.invoke(cli, ["status", "demo"], catch_exceptions=False)
    assert "reach it" in res.stdout and "vmbinder tunnel demo" in res.stdout
    assert "certificate" not in res.stdout and "vmbinder url" not in res.stderr

    res = runner.invoke(cli, ["url", "demo"], catch_exceptions=False)
    assert res.exit_code == 2 and "demo has no public URL" in res.stderr
    assert "vmbinder tunnel demo forwards it to this machine" in res.stderr

    res = runner.invoke(cli, ["logs", "demo"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    assert "Step 1/3 : FROM base" in res.stdout


def test_the_log_reader_of_a_server_that_exposes_ssh_reads_through_ssh(keys, sshd, guest):  # noqa: F811
    provider = ssh_server(sshd, keys)
    reader = guestlog.Reader(provider, provider.get("demo"))
    try:
        chunk = reader.read(0)
    finally:
        reader.through.close()
    assert chunk.text == "Step 1/3 : FROM base\nbuilt\n" and chunk.ready
    assert any(p.startswith("/vmbinder/log?offset=0&token=") for p in guest.paths)


# -- logs over SSH when the status service does not answer over HTTPS -------------------

def https_server(sshd, keys, port: int):  # noqa: F811
    """A server served over plain HTTP at a port where nothing answers."""
    return SshProvider(sshd.port, block(keys.host), {"tls": "off", "http-port": str(port)})


def closed_port() -> int:
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    return port


def test_logs_go_through_ssh_when_the_url_does_not_answer(keys, sshd, guest, monkeypatch):  # noqa: F811
    provider = https_server(sshd, keys, closed_port())
    use(monkeypatch, provider)
    res = CliRunner().invoke(cli, ["logs", "demo"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "Step 1/3 : FROM base\nbuilt\n"
    assert any(p.startswith("/vmbinder/log?offset=0&token=") for p in guest.paths)


def test_without_a_status_service_logs_read_the_file_over_ssh_with_sudo(keys, sshd, tmp_path,  # noqa: F811
                                                                         monkeypatch):
    log = tmp_path / "commands.log"
    log.write_text("$ apt-get install docker.io\nE: Unable to locate package docker.io\n")
    monkeypatch.setattr(guestlog, "COMMANDS_LOG", str(log))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n')
    (bin_dir / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    nowhere = closed_port()
    monkeypatch.setattr(reach, "STATUS_ADDRESS", f"127.0.0.1:{nowhere}")  # not running
    provider = https_server(sshd, keys, nowhere)
    use(monkeypatch, provider)
    res = CliRunner().invoke(cli, ["logs", "demo", "--format", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["log"] == log.read_text() and doc["size"] == len(log.read_bytes())
    log.write_text("")
    log.unlink()  # the file is not there: the error says so and how to look
    res = CliRunner().invoke(cli, ["logs", "demo"], catch_exceptions=False)
    assert res.exit_code != 0 and f"cannot read {log} on demo" in res.stderr
    assert "vmbinder ssh demo" in res.stderr


# -- the guest -----------------------------------------------------------------------------

def test_the_guest_of_expose_ssh_starts_no_proxy_asks_for_no_certificate_and_prints_its_keys(
        tmp_path, jupyter):  # noqa: F811
    from vmbinder.spec import CloudChoice

    guest = GuestScript(tmp_path, jupyter, spec_for(cloud=CloudChoice(expose="ssh")))
    (guest.root / "etc/ssh").mkdir(parents=True)
    (guest.root / "etc/ssh/ssh_host_ed25519_key.pub").write_text(SEAT_KEY + " root@seat\n")
    res = guest.run()
    assert res.returncode == 0, res.stderr
    assert guest.doc["expose"] == "ssh"
    units = guest.root / "etc/systemd/system"
    assert (units / "vmbinder-status.service").is_file()
    assert not (units / "vmbinder-caddy.service").exists() and not guest.calls("caddy")
    assert not (guest.root / "etc/vmbinder/Caddyfile").exists()
    state = guest.state()
    assert state["ready"] is True and state["interfaces"] == ["tree", "lab"]
    assert "tls" not in state or not (state["tls"] or {}).get("outcome")
    console = (guest.root / "dev/console").read_text()
    assert OUTCOME_PREFIX not in console  # no certificate to report
    assert [str(k) for k in remote.console_host_keys(console)] == [SEAT_KEY_SHA256]
    # The block comes before the steps: vmbinder can log in while the server builds.
    assert console.index("-----BEGIN SSH HOST KEY KEYS-----") < console.index('"phase": "trust"')
    # Every boot prints them again (cloud-init does on the first boot only), so
    # vmbinder ssh can check the key after a reboot.
    from tests.unit.test_guest_metadata import ip6_recorder

    ip6_recorder(guest)
    (guest.root / "dev/console").write_text("")
    res = guest.run("metadata")
    assert res.returncode == 0, res.stderr
    console = (guest.root / "dev/console").read_text()
    assert [str(k) for k in remote.console_host_keys(console)] == [SEAT_KEY_SHA256]
