"""The rendered guest script, run for real in a scratch root where every
external command is a recorder: which commands run, with which arguments, and
what they leave behind."""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from vmbinder import cloudinit
from vmbinder.sources import Source
from vmbinder.spec import GuestNetwork, make_spec

RECORDER = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
record = os.environ["RECORD"]
with open(record, "a") as fh:
    fh.write(json.dumps([name] + args) + "\\n")
if name == "repo2docker" and args == ["--version"]:
    print(os.environ["R2D_VERSION"])
if name == "docker" and args[:2] == ["image", "inspect"]:
    built = any(json.loads(l)[0] == "repo2docker" and "--version" not in l
                for l in open(record))
    sys.exit(0 if built else 1)
if name == "docker" and args[:2] == ["buildx", "version"]:
    sys.exit(int(os.environ.get("NO_BUILDX", "0")))
"""
COMMANDS = ("apt-get", "systemctl", "docker", "caddy", "update-ca-certificates", "python3")


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
        }.items():
            (self.root / path).parent.mkdir(parents=True, exist_ok=True)
            (self.root / path).write_text(text)
        recorder = RECORDER.format(python=sys.executable)
        for name in COMMANDS:
            (self.bin / name).write_text(recorder)
            (self.bin / name).chmod(0o755)
        r2d = self.root / "opt/vmbinder/repo2docker/bin/repo2docker"
        r2d.parent.mkdir(parents=True)
        r2d.write_text(recorder)
        r2d.chmod(0o755)

    def run(self, **env) -> subprocess.CompletedProcess:
        full = dict(os.environ, PATH=f"{self.bin}:{os.environ['PATH']}", RECORD=str(self.record),
                    VMBINDER_GUEST_ROOT=str(self.root), VMBINDER_GUEST_JUPYTER=self.jupyter_addr,
                    R2D_VERSION=self.spec.repo2docker_version, **env)
        script = self.root / "usr/local/lib/vmbinder/vmbinder-guest.py"
        return subprocess.run([sys.executable, str(script), "run"], env=full, capture_output=True,
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
    assert list(state["durations"]) == ["trust", "mirrors", "proxy", "docker", "base-images",
                                        "repo2docker", "build", "service", "interfaces"]
    assert all(isinstance(v, (int, float)) and v >= 0 for v in state["durations"].values())
    console = (guest.root / "dev/console").read_text().splitlines()
    phases = [json.loads(line.split(" ", 1)[1]) for line in console]
    assert [p["phase"] for p in phases if p["status"] == "done"] == [
        "trust", "mirrors", "proxy", "docker", "base-images", "repo2docker", "build", "service",
        "interfaces", "ready"]
    caddy = (guest.root / "etc/caddy/Caddyfile").read_text()
    assert caddy.startswith("203-0-113-9.sslip.io {") and "reverse_proxy " + guest.jupyter_addr in caddy
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
    assert "After=docker.service cloud-init.service\n" in unitfile
    assert "ExecStartPre=/usr/bin/python3 " in unitfile and unitfile.index(" env-file\n") < \
        unitfile.index("ExecStart=/usr/bin/docker run")


def test_a_second_run_changes_nothing(tmp_path, jupyter):
    guest = Guest(tmp_path, jupyter, spec_for())
    assert guest.run().returncode == 0
    first = len(guest.calls())
    assert guest.run().returncode == 0
    again = guest.calls()[first:]
    assert not [c for c in again if c[0] in ("apt-get", "systemctl", "update-ca-certificates")]
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
    first = len(builder.calls())
    built_at = builder.state()["started"]
    res = builder.run()
    assert res.returncode == 0, res.stderr
    again = builder.calls()[first:]
    assert [c for c in again if c[0] == "repo2docker"] == [["repo2docker", "--version"]]
    assert ["docker", "image", "inspect", image] in again
    env = (builder.root / "etc/vmbinder/jupyter.env").read_text()
    assert env == f"JUPYTER_TOKEN={seat.token}\n"
    assert "seat2.example.org" in (builder.root / "etc/caddy/Caddyfile").read_text()
    assert ["systemctl", "restart", "vmbinder-env.service"] in again
    state = builder.state()
    assert state["ready"] is True and state["server"] == "demo-02"
    assert state["started"] > built_at  # its own clock, not the snapshotted seat's


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


@pytest.mark.parametrize("tls, hostname, public_ip, site, tls_line", [
    # acme: Caddy gets a certificate for the name and redirects HTTP to HTTPS.
    ("acme", None, "203.0.113.9", "203-0-113-9.sslip.io {", None),
    ("acme", "nb.example.org", "203.0.113.9", "nb.example.org {", None),
    ("internal", None, None, "localhost {", "\ttls internal"),
    ("internal", "localhost", None, "localhost {", "\ttls internal"),
    # off: plain HTTP on port 80, no certificate and no redirect.
    ("off", None, "203.0.113.9", "http://203-0-113-9.sslip.io {", None),
    ("off", "nb.example.org", None, "http://nb.example.org {", None),
])
def test_caddy_serves_each_tls_mode(tmp_path, jupyter, tls, hostname, public_ip, site, tls_line):
    guest = Guest(tmp_path, jupyter, spec_for(tls=tls, hostname=hostname), public_ip=public_ip)
    assert guest.run().returncode == 0
    caddy = (guest.root / "etc/caddy/Caddyfile").read_text().splitlines()
    assert caddy[0] == site
    assert [ln for ln in caddy if "tls" in ln] == ([tls_line] if tls_line else [])
    assert "\t\treverse_proxy " + guest.jupyter_addr in caddy
