"""The cloud's metadata service, which serves the user-data (and so a private
repository's git token) for the server's whole life: containers are refused it
at every boot, on every target, and the git token that cloud-init writes back at
a boot is scrubbed again. The rules are applied against a stand-in for iptables
that keeps its tables (no real firewall is touched); the boot command also runs
as shipped, in a scratch root with recording commands."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types

import pytest

from tests.unit.test_guest_script import RECORDER, jupyter  # noqa: F401 (jupyter: a fixture)
from tests.unit.test_private_repos import TOKEN, copies, private_guest, private_spec
from vmbinder import cloudinit, launchdoc
from vmbinder.sources import Source
from vmbinder.spec import AcmeChoice, GuestNetwork, make_spec

guest = importlib.import_module("vmbinder.cloud_init.vmbinder_guest")

CHAIN = "VMBINDER-METADATA"
REFUSALS = [["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"], ["-j", "REJECT"]]
V4, V6 = "169.254.169.254", "fe80::a9fe:a9fe"
#: The server's own connections are refused it unless they are root's.
NOT_ROOT = ["-m", "owner", "!", "--uid-owner", "0"]


class Tables:
    """iptables and ip6tables as far as the guest uses them (-L, -N, -F, -A, -C, -I
    on the filter table), each with its chains; a family in `missing` has no
    command, one in `broken` fails every call (a kernel without it)."""

    def __init__(self, missing=(), broken=()):
        self.chains = {name: {"INPUT": [], "FORWARD": [], "OUTPUT": []}
                       for name in ("iptables", "ip6tables")}
        self.missing, self.broken, self.calls = set(missing), set(broken), []

    def run(self, argv, check=False, **kwargs):
        name, wait, op, *rest = argv
        assert name in self.chains and wait == "-w", f"not an iptables call: {argv}"
        if name in self.missing:
            raise FileNotFoundError(2, "No such file or directory", name)
        self.calls.append(argv)
        rc = 1 if name in self.broken else self.apply(self.chains[name], op, rest)
        if check and rc:
            raise subprocess.CalledProcessError(rc, argv)
        return subprocess.CompletedProcess(argv, rc)

    @staticmethod
    def apply(chains, op, rest):
        if op == "-n":  # -n -L CHAIN
            return 0 if rest[1] in chains else 1
        chain, *rule = rest
        if op == "-N":
            if chain in chains:
                return 1
            chains[chain] = []
            return 0
        if chain not in chains:
            return 1
        if op == "-F":
            chains[chain].clear()
        elif op == "-A":
            chains[chain].append(rule)
        elif op == "-C":
            return 0 if rule in chains[chain] else 1
        elif op == "-I":
            chains[chain].insert(int(rule[0]) - 1, rule[1:])
        else:
            raise AssertionError(f"unexpected iptables operation {op}")
        return 0


@pytest.fixture
def tables(monkeypatch, tmp_path):
    """The guest in a scratch root, its iptables calls going to a Tables."""
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    fake = Tables()
    monkeypatch.setattr(guest, "subprocess", types.SimpleNamespace(
        run=lambda argv, **kw: fake.run(argv, **kw), DEVNULL=subprocess.DEVNULL,
        STDOUT=subprocess.STDOUT, CalledProcessError=subprocess.CalledProcessError))
    return fake


def cloud_doc():
    return launchdoc.document(make_spec(Source("https://github.com/o/r", "git"), name="demo"))


def local_doc():
    """A local target's document: it has the fence too."""
    src = Source(repo="git://10.0.2.2:9418/r.git", kind="git", ref=None, subdir=None, open=None,
                 given="git://10.0.2.2:9418/r.git")
    return launchdoc.document(make_spec(src, name="demo", acme=AcmeChoice(ca="https://10.0.2.2:14000/dir"),
                                        guest_network=GuestNetwork(host_address="10.0.2.2")))


def jump(address, chain=CHAIN):
    return ["-d", address, "-j", chain]


def guest_log(tmp_path):
    path = tmp_path / "var/log/vmbinder/guest.log"
    return path.read_text() if path.exists() else ""


# -- the rules -------------------------------------------------------------------------

def test_containers_are_refused_the_metadata_service_on_both_families(tables):
    assert guest.apply_metadata(cloud_doc()) == 0
    for family, address in (("iptables", V4), ("ip6tables", V6)):
        chains = tables.chains[family]
        assert chains[CHAIN] == REFUSALS, family
        # Containers' connections: Docker's chain for its users' rules, and FORWARD.
        assert chains["DOCKER-USER"] == [jump(address)], family
        assert chains["FORWARD"] == [jump(address)], family
        # The server's own processes reach it if they are root's (cloud-init).
        assert chains["OUTPUT"] == [NOT_ROOT + jump(address)], family
        assert chains["INPUT"] == [], family


def test_applying_again_adds_nothing_and_keeps_dockers_rules(tables):
    """Docker made its chains before (the unit runs after docker.service): ours
    go first and Docker's stay; a second application (a restart of the unit)
    leaves every chain as it was."""
    v4 = tables.chains["iptables"]
    v4["DOCKER-USER"] = [["-j", "RETURN"]]
    v4["FORWARD"] = [["-j", "DOCKER-USER"], ["-j", "DOCKER-FORWARD"]]
    guest.apply_metadata(cloud_doc())
    once, first = json.loads(json.dumps(tables.chains)), len(tables.calls)
    assert v4["DOCKER-USER"] == [jump(V4), ["-j", "RETURN"]]
    assert v4["FORWARD"] == [jump(V4), ["-j", "DOCKER-USER"], ["-j", "DOCKER-FORWARD"]]
    assert v4["OUTPUT"] == [NOT_ROOT + jump(V4)]
    guest.apply_metadata(cloud_doc())
    assert tables.chains == once
    # The second time nothing is made or inserted: the chain is filled again only.
    second = tables.calls[first:]
    assert not [c for c in second if c[2] in ("-N", "-I")]
    assert [c[2:] for c in second if c[2] in ("-F", "-A") and c[0] == "iptables"] == [
        ["-F", CHAIN], *(["-A", CHAIN, *rule] for rule in REFUSALS)]


def test_the_fence_and_the_refusal_are_independent(tables):
    """The local target has both, each with its own jump in DOCKER-USER; a cloud
    server has no fence and the same refusal."""
    doc = local_doc()
    assert guest.apply_fence(doc) == 0 and guest.apply_metadata(doc) == 0
    v4 = tables.chains["iptables"]
    assert v4["DOCKER-USER"] == [jump(V4), jump("10.0.2.2", "VMBINDER-FENCE")]
    assert v4["OUTPUT"] == [NOT_ROOT + jump(V4), jump("10.0.2.2", "VMBINDER-FENCE")]
    assert v4[CHAIN] == REFUSALS
    fresh = Tables()
    tables.__dict__.update(fresh.__dict__)
    assert guest.apply_fence(cloud_doc()) == 0 and not tables.calls
    guest.apply_metadata(cloud_doc())
    assert "VMBINDER-FENCE" not in tables.chains["iptables"]
    assert tables.chains["iptables"]["DOCKER-USER"] == [jump(V4)]


@pytest.mark.parametrize("how", ["missing", "broken"])
def test_without_ip6tables_ipv4_is_refused_and_the_boot_goes_on(tmp_path, tables, how):
    setattr(tables, how, {"ip6tables"})
    assert guest.apply_metadata(cloud_doc()) == 0
    assert tables.chains["iptables"]["FORWARD"] == [jump(V4)]
    assert tables.chains["iptables"]["DOCKER-USER"] == [jump(V4)]
    assert f"{V6} not refused" in guest_log(tmp_path)


def test_when_iptables_fails_the_unit_fails(tables):
    """The environment's unit requires this one: no refusal, no environment."""
    tables.broken = {"iptables"}
    with pytest.raises(subprocess.CalledProcessError):
        guest.apply_metadata(cloud_doc())


# -- the step and its unit --------------------------------------------------------------

UNIT = """[Unit]
Description=vmbinder: containers refused the cloud's metadata service
After=docker.service cloud-init.service cloud-init-network.service
Before=vmbinder-env.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 {script} metadata

[Install]
WantedBy=multi-user.target
RequiredBy=vmbinder-env.service
"""


@pytest.mark.parametrize("make_doc", [cloud_doc, local_doc], ids=["cloud", "local"])
def test_the_step_installs_a_unit_that_runs_at_every_boot(monkeypatch, tmp_path, make_doc):
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    calls, active = [], {"now": True}
    monkeypatch.setattr(guest, "run", lambda doc, argv, **kw: calls.append(argv))
    monkeypatch.setattr(guest, "ok", lambda argv: active["now"])
    doc = make_doc()
    assert guest.ensure_metadata(doc) == f"{V4} refused to containers"
    unit = (tmp_path / "etc/systemd/system/vmbinder-metadata.service").read_text()
    assert unit == UNIT.format(script=guest.__file__)
    assert calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "vmbinder-metadata.service"],
                     ["systemctl", "restart", "vmbinder-metadata.service"]]
    # Again, unchanged: nothing to do while it is active, a start when it is not.
    calls.clear()
    guest.ensure_metadata(doc)
    assert calls == []
    active["now"] = False
    guest.ensure_metadata(doc)
    assert calls == [["systemctl", "start", "vmbinder-metadata.service"]]


def test_the_step_comes_before_anything_runs_a_container():
    """After docker (iptables comes with it), before the build and the environment;
    on every target, the fence or not."""
    names = [name for name, _ in guest.STEPS]
    assert names.count("metadata") == 1
    at = names.index("metadata")
    assert names.index("docker") < at < names.index("fence")
    assert at < min(names.index(n) for n in ("base-images", "repo2docker", "build", "home", "service"))
    assert dict(guest.STEPS)["metadata"] is guest.ensure_metadata


def test_the_status_page_lists_the_step(monkeypatch, tmp_path):
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    doc = cloud_doc()
    state = {"phase": "metadata", "status": "started", "durations": {"docker": 40.0},
             "step_started": guest.time.time()}
    rows = {name: status for name, status, _ in guest.steps_table(doc, state)}
    assert list(rows)[list(rows).index("docker") + 1] == "metadata"
    assert (rows["docker"], rows["metadata"], rows["fence"]) == ("done", "running", "waiting")


def test_the_boot_command_is_dispatched(monkeypatch, tmp_path, tables):
    doc = cloud_doc()
    launch = tmp_path / "etc/vmbinder/launch.json"
    launch.parent.mkdir(parents=True)
    launch.write_text(json.dumps(doc))
    assert guest.main(["vmbinder-guest.py", "metadata"]) == 0
    assert tables.chains["iptables"]["FORWARD"] == [jump(V4)]


# -- the git token, scrubbed again at every boot ------------------------------------------

def reboot_copies(guest_, before):
    """What a boot of the local target does: cloud-init reads its seed again and
    writes the user-data, token included, back into its copies."""
    for path, data in before.items():
        (guest_.root / path).write_bytes(data)


def ip6_recorder(guest_):
    (guest_.bin / "ip6tables").write_text(RECORDER.format(python=sys.executable))
    (guest_.bin / "ip6tables").chmod(0o755)


def test_a_boot_scrubs_the_token_cloud_init_wrote_back(tmp_path, jupyter):  # noqa: F811
    """As shipped: the build forgets the token; a boot brings it back into
    cloud-init's copies; the boot command refuses containers the metadata service
    and masks every occurrence again, in place; a later boot finds nothing."""
    guest_, instance = private_guest(tmp_path, jupyter)
    ip6_recorder(guest_)
    before = copies(guest_)
    assert guest_.run(R2D_ENV=str(tmp_path / "r2d-env.json")).returncode == 0
    launch = guest_.root / "etc/vmbinder/launch.json"
    forgotten = launch.read_text()
    assert json.loads(forgotten)["git_credential"] is None
    unit = (guest_.root / "etc/systemd/system/vmbinder-metadata.service").read_text()
    assert "\nExecStart=/usr/bin/python3 " in unit
    assert "/usr/local/lib/vmbinder/vmbinder-guest.py metadata\n" in unit

    reboot_copies(guest_, before)
    assert TOKEN.encode() in (instance / "user-data.txt").read_bytes()
    calls = len(guest_.calls())
    res = guest_.run("metadata")
    assert res.returncode == 0, res.stderr
    mask = b"*" * len(TOKEN)
    after = copies(guest_)
    for path, data in after.items():
        assert data == before[path].replace(TOKEN.encode(), mask), path
    assert launch.read_text() == forgotten
    assert TOKEN in (guest_.root / "etc/unrelated.txt").read_text()  # not cloud-init's
    assert "git token removed from the launch document and 5 of cloud-init's files" in \
        guest_log(guest_.root)
    booted = guest_.calls()[calls:]
    v4 = [c[2:] for c in booted if c[0] == "iptables" and c[2] in ("-N", "-F", "-A", "-I")]
    assert v4 == [["-N", CHAIN], ["-N", "DOCKER-USER"], ["-F", CHAIN],
                  *(["-A", CHAIN, *rule] for rule in REFUSALS),
                  ["-I", "DOCKER-USER", "1", *jump(V4)], ["-I", "FORWARD", "1", *jump(V4)],
                  ["-I", "OUTPUT", "1", *NOT_ROOT, *jump(V4)]]
    assert ["ip6tables", "-w", "-A", CHAIN, *REFUSALS[0]] in booted
    assert {c[0] for c in booted} == {"iptables", "ip6tables"}

    # A boot whose cloud-init kept the masked copies: nothing to scrub, nothing written.
    res = guest_.run("metadata")
    assert res.returncode == 0, res.stderr
    assert copies(guest_) == after
    assert guest_log(guest_.root).count("git token removed") == 2  # the build's and the boot's


def test_before_the_build_the_boot_command_leaves_the_token(tmp_path, jupyter):  # noqa: F811
    """The first run starts the unit before the build, which still needs the token."""
    guest_, _ = private_guest(tmp_path, jupyter)
    ip6_recorder(guest_)
    before = copies(guest_)
    res = guest_.run("metadata")
    assert res.returncode == 0, res.stderr
    assert copies(guest_) == before
    assert json.loads((guest_.root / "etc/vmbinder/launch.json").read_text())["git_credential"][
        "password"] == TOKEN


def test_a_launch_without_a_token_has_nothing_to_scrub(tmp_path, tables):
    doc = cloud_doc()
    # No cloud-init copies at all.
    guest.apply_metadata(doc)
    assert "git token" not in guest_log(tmp_path)
    # A public launch's user-data.
    instance = tmp_path / "var/lib/cloud/instances/i-0001"
    instance.mkdir(parents=True)
    user_data = cloudinit.render(make_spec(Source("https://github.com/o/r", "git"), name="demo"))
    (instance / "user-data.txt").write_text(user_data)
    (tmp_path / "var/lib/cloud/instance").symlink_to(instance)
    assert guest.seeded_git_password() is None
    guest.apply_metadata(doc)
    assert (instance / "user-data.txt").read_text() == user_data
    assert "git token" not in guest_log(tmp_path)


def test_the_token_is_found_in_the_user_data_as_rendered(monkeypatch, tmp_path):
    """The user-data's launch document line (a JSON string in YAML) is read back;
    a masked one is not a token."""
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    user_data = cloudinit.render(private_spec())
    path = tmp_path / "var/lib/cloud/instance/user-data.txt"
    path.parent.mkdir(parents=True)
    path.write_text(user_data)
    assert guest.seeded_git_password() == TOKEN
    path.write_text(user_data.replace(TOKEN, "*" * len(TOKEN)))
    assert guest.seeded_git_password() is None
    path.write_text("not: [yaml\ncontent: \"{broken\"\n")
    assert guest.seeded_git_password() is None
