"""The rendered guest script, run for real in a scratch root where every
external command is a recorder: which commands run, with which arguments, and
what they leave behind."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from vmbinder import cloudinit
from vmbinder.guestcontract import CADDY_VERSION
from vmbinder.sources import Source
from vmbinder.spec import AcmeChoice, GuestNetwork, make_spec

RECORDER = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
record = os.environ["RECORD"]
with open(record, "a") as fh:
    fh.write(json.dumps([name] + args) + "\\n")
if name == "repo2docker" and args == ["--version"]:
    print(os.environ["R2D_VERSION"])
if name == "caddy" and args == ["version"]:
    print(os.environ["CADDY_VERSION"] + " h1:recorded")
if name == "docker" and args[:2] == ["image", "inspect"]:
    built = any(json.loads(l)[0] == "repo2docker" and "--version" not in l
                for l in open(record))
    sys.exit(0 if built else 1)
if name == "docker" and args[:2] == ["buildx", "version"]:
    sys.exit(int(os.environ.get("NO_BUILDX", "0")))
if name == "iptables" and ("-L" in args or "-C" in args):
    sys.exit(1)  # no such chain or rule yet
if name == "systemd-machine-id-setup":
    with open(os.path.join(os.environ["VMBINDER_GUEST_ROOT"], "etc/machine-id"), "w") as fh:
        fh.write(os.urandom(16).hex() + "\\n")
if name == "systemctl" and args[:1] == ["is-active"]:
    sys.exit(int(os.environ.get("CADDY_DOWN", "0")))
if name == "systemctl" and args == ["restart", "vmbinder-caddy.service"]:
    import runpy
    sys.argv = [os.environ["FAKE_CADDY"]]
    runpy.run_path(os.environ["FAKE_CADDY"], run_name="__main__")
"""

#: Stands in for Caddy when the guest (re)starts it: runs the unit's ExecStartPre
#: (caddy-config), reads the Caddyfile it wrote, and gets the certificate, or logs
#: the failure Caddy logs, as the CA_ANSWERS environment variable says for
#: "<host> <issuer>" (default: a certificate).
FAKE_CADDY = """
import json, os, re, subprocess, sys
root = os.environ["VMBINDER_GUEST_ROOT"]
script = os.path.join(root, "usr/local/lib/vmbinder/vmbinder-guest.py")
subprocess.run([sys.executable, script, "caddy-config"], check=True)
text = open(os.path.join(root, "etc/vmbinder/Caddyfile")).read()
storage = root + re.search(r"storage file_system (\\S+)", text).group(1)
site = re.search(r"^(\\S+) [{]$", text, re.M).group(1)
if site == ":80":
    sys.exit(0)
issuer = "internal" if "tls internal" in text else "acme"
answer = json.loads(os.environ.get("CA_ANSWERS", "{}")).get(f"{site} {issuer}", "ok")
if answer == "silent":
    pass
elif answer == "ok":
    folder = os.path.join(storage, "certificates", "local" if issuer == "internal"
                          else "acme-v02.api.letsencrypt.org-directory", site)
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, site + ".crt"), "w").write("certificate")
    if issuer == "internal":
        pki = os.path.join(storage, "pki/authorities/local")
        os.makedirs(pki, exist_ok=True)
        open(os.path.join(pki, "root.crt"), "w").write(os.environ["FAKE_ROOT"])
else:
    log = os.path.join(root, "var/log/vmbinder-caddy/caddy.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "a") as fh:
        fh.write(json.dumps({"msg": "could not get certificate from issuer",
                             "identifier": site, "error": answer}) + "\\n")
"""
#: An SSH host key and its fingerprint, as `ssh-keygen -l` prints it.
SEAT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbGG3RrhkmpPUpVMWCAu8wDmR+xKzXm+1MrgZ5RW4k6"
SEAT_KEY_SHA256 = "ssh-ed25519 SHA256:0J6wablIsyZSEsGIgbuabRxiFBG2M9x9DZLoYImpBHs"
#: A root certificate for the fake own CA (its fingerprint is all the guest reads).
FAKE_ROOT = ("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2FkZHkgbG9jYWwgcm9vdA==\n"
             "-----END CERTIFICATE-----\n")
COMMANDS = ("apt-get", "systemctl", "docker", "caddy", "update-ca-certificates", "python3",
            "iptables", "systemd-machine-id-setup")


@pytest.fixture
def jupyter():
    """A stand-in for the container's Jupyter: /tree, /lab and /api/status with the token."""
    class Handler(http.server.BaseHTTPRequestHandler):
        token = None

        def do_GET(self):
            path, _, query = self.path.partition("?")
            good = query == f"token={Handler.token}"
            self.send_response(200 if good and path in ("/api/status", "/tree", "/lab") else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Handler, f"127.0.0.1:{server.server_port}"
    server.shutdown()


def unpack(user_data: str) -> tuple[dict, str]:
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    doc = json.loads(files["/etc/vmbinder/launch.json"]["content"])
    script = gzip.decompress(base64.b64decode(files["/usr/local/lib/vmbinder/vmbinder-guest.py"]["content"]))
    return doc, script.decode()


class Guest:
    def __init__(self, tmp: Path, jupyter, spec, public_ip="203.0.113.9", os_release="debian 12"):
        self.root = tmp / "root"
        self.record = tmp / "record.jsonl"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.spec = spec
        handler, self.jupyter_addr = jupyter
        handler.token = spec.token
        doc, script = unpack(cloudinit.render(spec, public_ip))
        self.doc = doc
        distro, version = os_release.split()
        for path, text in {
            "etc/vmbinder/launch.json": json.dumps(doc),
            "usr/local/lib/vmbinder/vmbinder-guest.py": script,
            "etc/os-release": f'ID={distro}\nVERSION_ID="{version}"\nVERSION_CODENAME=bookworm\n',
            "dev/console": "",
            "etc/machine-id": "5f1b2c3d4e5f60718293a4b5c6d7e8f9\n",
        }.items():
            (self.root / path).parent.mkdir(parents=True, exist_ok=True)
            (self.root / path).write_text(text)
        recorder = RECORDER.format(python=sys.executable)
        self.fake_caddy = tmp / "fake_caddy.py"
        self.fake_caddy.write_text(FAKE_CADDY)
        for name in COMMANDS:
            (self.bin / name).write_text(recorder)
            (self.bin / name).chmod(0o755)
        for exe in ("opt/vmbinder/repo2docker/bin/repo2docker", "opt/vmbinder/caddy/bin/caddy"):
            path = self.root / exe
            path.parent.mkdir(parents=True)
            path.write_text(recorder)
            path.chmod(0o755)

    def run(self, command="run", **env) -> subprocess.CompletedProcess:
        full = dict(os.environ, PATH=f"{self.bin}:{os.environ['PATH']}", RECORD=str(self.record),
                    VMBINDER_GUEST_ROOT=str(self.root), VMBINDER_GUEST_JUPYTER=self.jupyter_addr,
                    R2D_VERSION=self.spec.repo2docker_version, FAKE_CADDY=str(self.fake_caddy),
                    FAKE_ROOT=FAKE_ROOT, CADDY_VERSION="v" + CADDY_VERSION, **env)
        script = self.root / "usr/local/lib/vmbinder/vmbinder-guest.py"
        return subprocess.run([sys.executable, str(script), command], env=full, capture_output=True,
                              text=True, timeout=60, cwd=self.root, check=False)

    def calls(self, name=None) -> list[list[str]]:
        if not self.record.exists():
            return []
        calls = [json.loads(line) for line in self.record.read_text().splitlines()]
        return [c for c in calls if name is None or c[0] == name]

    def state(self) -> dict:
        return json.loads((self.root / "var/lib/vmbinder/status.json").read_text())


def spec_for(value="https://github.com/o/r", **kw):
    src = Source(repo=kw.pop("repo", value), kind=kw.pop("kind", "git"), ref=kw.pop("ref", None),
                 subdir=kw.pop("subdir", None), open=None, given=value)
    return make_spec(src, name="demo", **kw)


def test_a_first_run_builds_serves_and_reports(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for(ref="v1.0", subdir="binder"))
    res = guest.run()
    assert res.returncode == 0, res.stderr + (guest.root / "var/log/vmbinder/guest.log").read_text()
    (build,) = [c for c in guest.calls("repo2docker") if c[1:] != ["--version"]]
    assert build[1:] == ["--config", str(guest.root / "etc/vmbinder/repo2docker_config.py"),
                         "--no-run", "--json-logs", "--user-id", "1000", "--user-name", "jovyan",
                         "--image-name", build[build.index("--image-name") + 1], "--ref=v1.0",
                         "--subdir=binder",
                         "--", "https://github.com/o/r"]
    assert build[build.index("--image-name") + 1].startswith("vmbinder-env:")
    config = (guest.root / "etc/vmbinder/repo2docker_config.py").read_text()
    assert "content_providers = [contentproviders.Git]" in config
    state = guest.state()
    assert state["ready"] is True and state["phase"] == "ready"
    assert state["interfaces"] == ["tree", "lab"]
    # Seconds per step, which the guest-overhead benchmark reads.
    assert list(state["durations"]) == ["trust", "mirrors", "proxy", "care", "tls", "docker", "metadata",
                                        "fence", "volumes", "base-images", "repo2docker", "build",
                                        "home", "service", "interfaces"]
    assert all(isinstance(v, (int, float)) and v >= 0 for v in state["durations"].values())
    console = (guest.root / "dev/console").read_text().splitlines()
    phases = [json.loads(line.split(" ", 1)[1]) for line in console if line.startswith("VMBINDER-PHASE ")]
    assert [p["phase"] for p in phases if p["status"] == "done"] == [
        "trust", "mirrors", "proxy", "care", "tls", "docker", "metadata", "fence", "volumes",
        "base-images", "repo2docker", "build", "home", "service", "interfaces", "ready"]
    # The certificate: Let's Encrypt's, for the address itself.
    (outcome,) = outcomes(guest)
    assert outcome == {"site": "203.0.113.9", "issuer": "acme", "failed": [], "root": None}
    caddy = (guest.root / "etc/vmbinder/Caddyfile").read_text()
    assert "\n203.0.113.9 {\n" in caddy and "reverse_proxy " + guest.jupyter_addr in caddy
    assert "\t\t\tprofile shortlived\n" in caddy and "\tdefault_sni 203.0.113.9\n" in caddy
    unit = (guest.root / "etc/systemd/system/vmbinder-caddy.service").read_text()
    assert "DynamicUser=yes" in unit and "caddy-config\n" in unit
    assert "After=network-online.target cloud-init.service cloud-init-network.service\n" in unit
    env_file = guest.root / "etc/vmbinder/jupyter.env"
    assert env_file.read_text() == f"JUPYTER_TOKEN={guest.spec.token}\n"
    assert env_file.stat().st_mode & 0o777 == 0o600
    for call in guest.calls():
        assert guest.spec.token not in " ".join(call), f"token in the arguments of {call[0]}"
    assert guest.spec.token not in "\n".join(console)
    unitfile = (guest.root / "etc/systemd/system/vmbinder-env.service").read_text()
    assert guest.spec.token not in unitfile and "--env-file /etc/vmbinder/jupyter.env" in unitfile
    # Every start takes the token of the launch document cloud-init wrote (a
    # server started from another's snapshot must not serve that one's token).
    assert "After=docker.service cloud-init.service cloud-init-network.service\n" in unitfile
    assert "ExecStartPre=/usr/bin/python3 " in unitfile and unitfile.index(" env-file\n") < \
        unitfile.index("ExecStart=/usr/bin/docker run")


def test_a_second_run_changes_nothing(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for())
    assert guest.run().returncode == 0
    first = len(guest.calls())
    assert guest.run().returncode == 0
    again = guest.calls()[first:]
    # Only questions: is the metadata unit (which a failed start would leave down) active?
    assert not [c for c in again if c[0] in ("apt-get", "systemctl", "update-ca-certificates")
                and c[1] != "is-active"]
    assert [c for c in again if c[0] == "systemctl"] == [
        ["systemctl", "is-active", "--quiet", "vmbinder-metadata.service"]]
    assert [c for c in again if c[0] == "repo2docker"] == [["repo2docker", "--version"]]
    assert guest.state()["ready"] is True


def test_a_seat_started_from_a_snapshot_skips_the_build_and_serves_its_own_token(tmp_path, jupyter):
    """A workshop seat boots from a snapshot of seat 1: the same disk, new user-data
    (another name, host name and token). The image is found by what was built."""
    builder = Guest(tmp_path, jupyter, spec_for(ref="v1.0"))
    assert builder.run().returncode == 0
    built = [c for c in builder.calls("repo2docker") if c[1:] != ["--version"]]
    image = built[0][built[0].index("--image-name") + 1]
    seat = make_spec(builder.spec.source, name="demo-02", hostname="seat2.example.org")
    assert seat.token != builder.spec.token
    doc, _ = unpack(cloudinit.render(seat, "203.0.113.10"))
    (builder.root / "etc/vmbinder/launch.json").write_text(json.dumps(doc))
    jupyter[0].token = seat.token
    first_state = builder.state()
    assert first_state["tls"]["outcome"]["site"] not in (None, "seat2.example.org")
    # Caddy starts at boot, before cloud-init's runcmd: it may hold the seat's
    # certificate before the guest script asks, so the run finds it there.
    early = (builder.root / "var/lib/vmbinder-caddy" / launch_stamp(seat) / "certificates"
             / "acme-v02.api.letsencrypt.org-directory" / "seat2.example.org")
    early.mkdir(parents=True)
    (early / "seat2.example.org.crt").write_text("certificate")
    # What the first seat's disk holds of it: cloud-init's folder of its instance,
    # its machine id and journal, its logs.
    cloud = builder.root / "var/lib/cloud"
    for instance in ("seat-1", "seat-2"):
        (cloud / "instances" / instance).mkdir(parents=True)
    (cloud / "instances/seat-1/user-data.txt").write_text(builder.spec.token)
    (cloud / "instance").symlink_to(cloud / "instances/seat-2")
    first_machine = (builder.root / "etc/machine-id").read_text().strip()
    (builder.root / "var/log/journal" / first_machine).mkdir(parents=True)
    with open(builder.root / "var/log/vmbinder/commands.log", "a") as fh:
        fh.write("first seat's build\n")
    caddy_log = builder.root / "var/log/vmbinder-caddy/caddy.log"
    caddy_log.parent.mkdir(parents=True, exist_ok=True)
    caddy_log.write_text("the first seat's ACME tries\n")
    # cloud-init made this instance its own SSH host key before the run.
    (builder.root / "etc/ssh").mkdir(parents=True, exist_ok=True)
    (builder.root / "etc/ssh/ssh_host_ed25519_key.pub").write_text(SEAT_KEY + " root@seat-2\n")
    first = len(builder.calls())
    built_at = first_state["started"]
    res = builder.run()
    assert res.returncode == 0, res.stderr
    again = builder.calls()[first:]
    assert [c for c in again if c[0] == "repo2docker"] == [["repo2docker", "--version"]]
    assert ["docker", "image", "inspect", image] in again
    env = (builder.root / "etc/vmbinder/jupyter.env").read_text()
    assert env == f"JUPYTER_TOKEN={seat.token}\n"
    assert "\nseat2.example.org {\n" in (builder.root / "etc/vmbinder/Caddyfile").read_text()
    # Nothing of the first seat's Caddy state (certificates, ACME account, own CA) is
    # kept: each launch has its own storage, and the others' are removed.
    storage = builder.root / "var/lib/vmbinder-caddy"
    assert [p.name for p in storage.iterdir()] == [launch_stamp(seat)]
    assert outcomes(builder)[-1]["site"] == "seat2.example.org"
    assert ["systemctl", "restart", "vmbinder-env.service"] in again
    state = builder.state()
    assert state["ready"] is True and state["server"] == "demo-02"
    assert state["started"] > built_at  # its own clock, not the snapshotted seat's
    # Its own certificate's outcome, never the first seat's (whose site is another
    # address: the host would probe that one with this seat's token).
    assert state["tls"]["outcome"]["site"] == "seat2.example.org"
    assert (state["built"], state["commit"]) == (first_state["built"], first_state["commit"])
    # Nothing that names the first seat or is its secret: cloud-init's folder of its
    # instance (its user-data, with its token), its machine id, logs and journal.
    assert [p.name for p in (builder.root / "var/lib/cloud/instances").iterdir()] == ["seat-2"]
    assert state["machine"] not in (None, first_state["machine"])
    assert first_state["host_keys"] == [] and state["host_keys"] == [SEAT_KEY_SHA256]
    assert not (builder.root / "var/log/journal" / first_machine).exists()
    assert builder.spec.token not in (builder.root / "var/log/vmbinder/guest.log").read_text()
    assert "first seat's build" not in (builder.root / "var/log/vmbinder/commands.log").read_text()
    assert (builder.root / "var/log/vmbinder-caddy/caddy.log").read_text() == ""


def test_another_source_builds_another_image(tmp_path, jupyter):
    names = []
    for ref in ("v1.0", "v2.0"):
        (tmp_path / ref).mkdir()
        guest = Guest(tmp_path / ref, jupyter, spec_for(ref=ref))
        jupyter[0].token = guest.spec.token
        assert guest.run().returncode == 0
        (build,) = [c for c in guest.calls("repo2docker") if c[1:] != ["--version"]]
        names.append(build[build.index("--image-name") + 1])
    assert names[0] != names[1]


def test_debian_12_takes_buildx_from_trixie_with_a_low_pin(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for())
    assert guest.run(NO_BUILDX="1").returncode == 0
    installs = [c for c in guest.calls("apt-get") if c[1] == "install"]
    assert installs[0][-5:] == ["docker.io", "apparmor", "xz-utils", "git", "python3-venv"]
    assert installs[1][-3:] == ["-t", "trixie", "docker-buildx"]
    pin = (guest.root / "etc/apt/preferences.d/vmbinder-trixie").read_text()
    assert "Pin: release n=trixie" in pin and "Pin-Priority: 100" in pin


def test_ca_and_mirrors_reach_apt_and_pip(tmp_path, jupyter):
    pem = ("-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ==\n-----END CERTIFICATE-----\n")
    spec = spec_for(guest_network=GuestNetwork(ca_certs=(pem,), apt_mirror="http://mirror.example/debian",
                                               pip_index_url="https://pypi.example/simple"))
    guest = Guest(tmp_path, jupyter, spec)
    assert guest.run().returncode == 0
    assert (guest.root / "usr/local/share/ca-certificates/vmbinder-0.crt").read_text() == pem
    assert ["update-ca-certificates"] in guest.calls()
    pip = (guest.root / "etc/pip.conf").read_text()
    assert "index-url = https://pypi.example/simple" in pip and "cert = " in pip
    sources = (guest.root / "etc/apt/sources.list.d/vmbinder-mirror.sources").read_text()
    assert "URIs: http://mirror.example/debian" in sources


HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "x; touch PWNED",
    "x' && touch PWNED #",
    'x" || touch PWNED',
    "x\ntouch PWNED",
    "--help",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_reach_repo2docker_as_one_argument_each(tmp_path, jupyter, value):
    guest = Guest(tmp_path, jupyter, spec_for(repo=value, ref=value, subdir=value))
    res = guest.run()
    assert res.returncode == 0, res.stderr
    (build,) = [c for c in guest.calls("repo2docker") if c[1:] != ["--version"]]
    assert build[-4:] == [f"--ref={value}", f"--subdir={value}", "--", value]
    assert not list(tmp_path.rglob("PWNED")), "an injected command ran"


def test_a_failing_step_is_reported_and_stops(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for())
    r2d = guest.root / "opt/vmbinder/repo2docker/bin/repo2docker"
    r2d.write_text(r2d.read_text() + "if '--no-run' in args:\n    sys.exit(3)\n")
    res = guest.run()
    assert res.returncode == 1
    state = guest.state()
    assert (state["phase"], state["status"]) == ("build", "failed")
    r2d = str(guest.root / "opt/vmbinder/repo2docker/bin/repo2docker")
    assert state["error"].startswith(r2d + " --config ") and state["error"].endswith(" exited with 3")
    assert not [c for c in guest.calls("systemctl") if "vmbinder-env.service" in c]


CLONE_FAILS = """
if '--no-run' in args:
    tries = os.path.join(os.environ["RECORD"] + ".tries")
    n = len(open(tries).read()) if os.path.exists(tries) else 0
    open(tries, "a").write("x")
    if n < int(os.environ["FAILS"]):
        print("Cloning into '/tmp/repo2dockerx'...")
        print(os.environ["GIT_SAYS"])
        print("Error during build: Failed to clone repository from https://github.com/o/r (ref HEAD).")
        sys.exit(1)
"""


@pytest.mark.parametrize(("says", "fails", "builds"), [
    ("fatal: unable to access 'https://github.com/o/r/': Empty reply from server", 2, 3),
    ("error: RPC failed; curl 56 Recv failure: Connection reset by peer", 1, 2),
    ("fatal: unable to access 'https://github.com/o/r/': Empty reply from server", 3, 3),
    ("fatal: could not read Username for 'https://github.com': terminal prompts disabled", 1, 1),
    ("fatal: Authentication failed for 'https://github.com/o/r/'", 1, 1),
])
def test_a_clone_that_fails_on_the_way_is_tried_again_and_a_refusal_is_not(tmp_path, jupyter, says,
                                                                           fails, builds):
    guest = Guest(tmp_path, jupyter, spec_for())
    r2d = guest.root / "opt/vmbinder/repo2docker/bin/repo2docker"
    r2d.write_text(r2d.read_text() + CLONE_FAILS)
    res = guest.run(FAILS=str(fails), GIT_SAYS=says, VMBINDER_GUEST_CLONE_PAUSES="0 0")
    assert len([c for c in guest.calls("repo2docker") if c[1:] != ["--version"]]) == builds
    commands = (guest.root / "var/log/vmbinder/commands.log").read_text()
    assert commands.count("building again in 0 s") == min(fails, builds - 1)
    if fails < builds:
        assert res.returncode == 0, res.stderr
        assert guest.state()["ready"] is True
    else:  # a refusal, or the last try: the step fails as any failed build does
        assert res.returncode == 1
        state = guest.state()
        assert (state["phase"], state["status"]) == ("build", "failed")


@pytest.mark.parametrize("value", HOSTILE)
def test_cloud_init_schema_accepts_rendered_user_data(tmp_path, value):
    assert shutil.which("cloud-init"), "cloud-init is not installed: run scripts/setup"
    text = cloudinit.render(spec_for(repo=value, ref=value, subdir=value), "203.0.113.9")
    path = tmp_path / "user-data"
    path.write_text(text)
    res = subprocess.run(["cloud-init", "schema", "--config-file", str(path)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0 and "Valid cloud-config" in res.stdout, res.stdout + res.stderr


def test_baked_base_images_are_imported_once(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for())
    folder = guest.root / "var/lib/vmbinder/base-images"
    folder.mkdir(parents=True)
    (folder / "base.tar.gz").write_bytes(b"")
    (folder / "base.tar.gz.json").write_text(json.dumps(
        {"name": "vmbinder/base:bookworm", "tarball": "base.tar.gz",
         "changes": ["USER 1000", "ENV A=b c"]}))
    assert guest.run().returncode == 0
    (imp,) = [c for c in guest.calls("docker") if c[1] == "import"]
    assert imp[1:] == ["import", "--change", "USER 1000", "--change", "ENV A=b c",
                       str(folder / "base.tar.gz"), "vmbinder/base:bookworm"]


def outcomes(guest) -> list[dict]:
    """The certificate outcomes the guest printed on its console."""
    return [json.loads(line.split(" ", 1)[1]) for line in
            (guest.root / "dev/console").read_text().splitlines() if line.startswith("VMBINDER-TLS ")]


def launch_stamp(spec) -> str:
    return hashlib.sha256(spec.token.encode()).hexdigest()[:16]


def caddyfile(guest) -> str:
    return (guest.root / "etc/vmbinder/Caddyfile").read_text()


def test_the_ca_refusing_the_address_leads_to_a_wildcard_dns_name(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for())
    answers = {
        "203.0.113.9 acme": "HTTP 429 urn:ietf:params:acme:error:rateLimited - too many certificates",
        "203-0-113-9.sslip.io acme": 'HTTP 400 urn:ietf:params:acme:error:connection - Get '
                                     '"http://203-0-113-9.sslip.io/.well-known/acme-challenge/x": '
                                     'dial tcp 203.0.113.9:80: i/o timeout',
    }
    assert guest.run(CA_ANSWERS=json.dumps(answers)).returncode == 0
    (outcome,) = outcomes(guest)
    assert outcome["site"] == "203-0-113-9.nip.io" and outcome["issuer"] == "acme"
    assert [(f["host"], f["cause"]) for f in outcome["failed"]] == [
        ("203.0.113.9", "rate limited"), ("203-0-113-9.sslip.io", "port 80 unreachable")]
    assert outcome["failed"][0]["detail"] == "rateLimited - too many certificates"
    caddy = caddyfile(guest)
    # A name's certificate needs no profile, and clients send its name.
    assert "\n203-0-113-9.nip.io {\n" in caddy and "profile" not in caddy and "default_sni" not in caddy
    # Caddy was started once per try, and each try said what it tried.
    assert guest.calls("systemctl").count(["systemctl", "restart", "vmbinder-caddy.service"]) == 3
    tries = [p["detail"] for p in (json.loads(line.split(" ", 1)[1]) for line in
             (guest.root / "dev/console").read_text().splitlines() if line.startswith("VMBINDER-PHASE "))
             if p["phase"] == "tls" and p["status"] == "started" and "detail" in p]
    assert tries == ["203.0.113.9 (acme)", "203-0-113-9.sslip.io (acme), after 203.0.113.9: rate limited",
                     "203-0-113-9.nip.io (acme), after 203-0-113-9.sslip.io: port 80 unreachable"]
    assert guest.state()["tls"]["outcome"] == outcome


def test_when_every_acme_try_fails_the_servers_own_ca_signs_and_its_root_is_published(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for())
    unreachable = ('registering account [] with server: provisioning client: performing request: '
                   'Get "https://acme-v02.api.letsencrypt.org/directory": dial tcp: lookup '
                   'acme-v02.api.letsencrypt.org: no such host')
    answers = {f"{host} acme": unreachable
               for host in ("203.0.113.9", "203-0-113-9.sslip.io", "203-0-113-9.nip.io")}
    assert guest.run(CA_ANSWERS=json.dumps(answers)).returncode == 0
    (outcome,) = outcomes(guest)
    assert (outcome["site"], outcome["issuer"]) == ("203.0.113.9", "internal")
    assert [f["cause"] for f in outcome["failed"]] == ["CA unreachable"] * 3
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(FAKE_ROOT)).hexdigest().upper()
    assert outcome["root"] == ":".join(digest[i:i + 2] for i in range(0, 64, 2))
    assert "\n203.0.113.9 {\n\ttls internal\n" in caddyfile(guest)


def test_no_certificate_at_all_fails_the_step_naming_each_try(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for(hostname="nb.example.org"))
    guest.doc["site"]["wait"] = 2  # each try's bound, here for the own CA that never signs
    (guest.root / "etc/vmbinder/launch.json").write_text(json.dumps(guest.doc))
    answers = {"nb.example.org acme": "HTTP 400 urn:ietf:params:acme:error:rejectedIdentifier - no",
               "nb.example.org internal": "the own CA failed"}
    res = guest.run(CA_ANSWERS=json.dumps(answers))
    assert res.returncode == 1
    state = guest.state()
    assert (state["phase"], state["status"]) == ("tls", "failed")
    assert state["error"].startswith("StepFailed: no certificate from any issuer: nb.example.org "
                                     "(acme): refused by the CA; nb.example.org (internal): no answer")


def test_caddy_that_does_not_run_fails_the_step_at_once_with_its_journal(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for())
    res = guest.run(CA_ANSWERS=json.dumps({"203.0.113.9 acme": "silent"}), CADDY_DOWN="3")
    assert res.returncode == 1
    state = guest.state()
    assert (state["phase"], state["status"]) == ("tls", "failed")
    assert state["error"].startswith("StepFailed: Caddy does not run: ")
    assert state["durations"].get("tls") is None and len(
        [c for c in guest.calls("systemctl") if c[1] == "is-active"]) == 2


def test_a_private_acme_ca_and_its_root(tmp_path, jupyter):
    pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ==\n-----END CERTIFICATE-----\n"
    spec = spec_for(acme=AcmeChoice(ca="https://ca.example.org/acme/directory", ca_root=pem,
                                    wildcard_dns=()))
    guest = Guest(tmp_path, jupyter, spec)
    assert guest.run().returncode == 0
    caddy = caddyfile(guest)
    assert "\t\t\tdir https://ca.example.org/acme/directory\n" in caddy
    assert "\t\t\ttrusted_roots /etc/vmbinder/acme-ca-root.pem\n" in caddy
    assert "profile" not in caddy  # the profile is Let's Encrypt's
    assert (guest.root / "etc/vmbinder/acme-ca-root.pem").read_text() == pem
    assert [c["host"] for c in guest.doc["site"]["candidates"]] == ["203.0.113.9", "203.0.113.9"]


@pytest.mark.parametrize("tls, hostname, public_ip, site, issuer", [
    ("acme", None, "203.0.113.9", "203.0.113.9", "acme"),
    ("acme", "nb.example.org", "203.0.113.9", "nb.example.org", "acme"),
    ("internal", None, None, "localhost", "internal"),
    ("internal", "localhost", None, "localhost", "internal"),
    ("internal", None, "203.0.113.9", "203.0.113.9", "internal"),
    # off: plain HTTP on port 80 for any name (the printed URL's is the address).
    ("off", None, "203.0.113.9", ":80", "off"),
    ("off", "nb.example.org", None, ":80", "off"),
])
def test_caddy_serves_each_tls_mode(tmp_path, jupyter, tls, hostname, public_ip, site, issuer):
    guest = Guest(tmp_path, jupyter, spec_for(tls=tls, hostname=hostname), public_ip=public_ip)
    assert guest.run().returncode == 0
    caddy = caddyfile(guest).splitlines()
    assert caddy[caddy.index("}") + 1] == site + " {"
    assert ("\ttls internal" in caddy) == (issuer == "internal")
    assert ("\t\tissuer acme {" in caddy) == (issuer == "acme")
    assert "\t\treverse_proxy " + guest.jupyter_addr in caddy
    assert outcomes(guest)[-1]["issuer"] == issuer


def test_on_the_local_target_code_reaches_only_the_named_ports_of_this_machine(tmp_path, jupyter):
    """The local target's server reaches this machine's loopback at 10.0.2.2: a
    chain entered from OUTPUT and DOCKER-USER lets through only the repository's,
    mirror's and CA's ports there, and the environment starts only after it."""
    spec = make_spec(Source(repo="git://10.0.2.2:9418/r.git", kind="git", ref=None, subdir=None,
                            open=None, given="git://10.0.2.2:9418/r.git"), name="demo",
                     acme=AcmeChoice(ca="https://10.0.2.2:14000/dir"),
                     guest_network=GuestNetwork(pip_index_url="http://10.0.2.2:3141/simple",
                                                apt_mirror="http://deb.example.org/debian",
                                                host_address="10.0.2.2"))
    guest = Guest(tmp_path, jupyter, spec)
    assert guest.doc["fence"] == {"host": "10.0.2.2", "ports": [3141, 9418, 14000]}
    res = guest.run()
    assert res.returncode == 0, res.stderr
    unit = (guest.root / "etc/systemd/system/vmbinder-fence.service").read_text()
    assert "Type=oneshot" in unit and "Before=vmbinder-env.service" in unit and unit.endswith(
        "/usr/local/lib/vmbinder/vmbinder-guest.py fence\n\n"
        "[Install]\nWantedBy=multi-user.target\n")
    assert ["systemctl", "restart", "vmbinder-fence.service"] in guest.calls()
    env = (guest.root / "etc/systemd/system/vmbinder-env.service").read_text()
    assert "After=docker.service vmbinder-fence.service " in env
    assert "Requires=vmbinder-fence.service\n" in env

    before = len(guest.calls("iptables"))
    assert guest.run("fence").returncode == 0
    rules = [c[2:] for c in guest.calls("iptables")[before:] if "-L" not in c and "-C" not in c]
    chain = "VMBINDER-FENCE"
    assert rules == [
        ["-N", chain], ["-N", "DOCKER-USER"], ["-F", chain],
        ["-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"],
        ["-A", chain, "-p", "tcp", "--dport", "3141", "-j", "RETURN"],
        ["-A", chain, "-p", "tcp", "--dport", "9418", "-j", "RETURN"],
        ["-A", chain, "-p", "tcp", "--dport", "14000", "-j", "RETURN"],
        ["-A", chain, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-A", chain, "-j", "REJECT"],
        ["-I", "OUTPUT", "1", "-d", "10.0.2.2", "-j", chain],
        ["-I", "DOCKER-USER", "1", "-d", "10.0.2.2", "-j", chain],
    ]


def test_a_cloud_server_has_no_fence(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for())
    assert guest.doc["fence"] is None
    assert guest.run().returncode == 0
    assert not guest.calls("iptables")
    assert not (guest.root / "etc/systemd/system/vmbinder-fence.service").exists()
    assert "Requires=" not in (guest.root / "etc/systemd/system/vmbinder-env.service").read_text()
