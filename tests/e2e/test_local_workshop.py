"""End to end: a two-seat workshop on the local target. The first seat builds
the environment and is snapshotted; the second starts from the snapshot and
answers without building; the roster lists both; down removes everything.

Its ACME CA cannot be reached, so each seat falls back, try by try, to its
own CA, whose root vmbinder trusts by the fingerprint the seat's console
published; the second seat's own CA is new, not the first seat's from the
snapshot. From the first moment the second seat answers, the first seat's
token is tried on it and never accepted; its machine id and SSH host keys are
its own."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vmbinder.providers.local.qemu import free_ports

from .conftest import forwarded
from .test_local_guest import get

pytestmark = pytest.mark.e2e
PHASE = '"phase": "build", "result": "%s", "status": "done"'  # sort_keys order


def vmbinder(cli_env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", *args],
                          env=cli_env, capture_output=True, text=True, timeout=timeout, check=False)


def test_a_local_workshop_builds_once_and_fans_out_from_the_snapshot(cli_env, baked_image,
                                                                      test_repo, tmp_path):
    path = tmp_path / "ws.yaml"
    (closed,) = free_ports(1)  # nothing listens there: the CA is unreachable
    path.write_text(f"name: e2e-ws\nsource: {test_repo}\nseats: 2\nimage: {baked_image}\n"
                    f"open: index.ipynb\nacme_ca: https://10.0.2.2:{closed}/dir\n")
    state = tmp_path / "state" / "vmbinder" / "local"
    # From the first moment the second seat answers, the first seat's token is
    # tried on it (its JupyterLab API and status service): never accepted.
    watch = SeatWatch(state, "e2e-ws-01", "e2e-ws-02")
    proc = subprocess.Popen([sys.executable, "-m", "vmbinder", "--cloud", "local", "workshop", "up",
                             str(path), "--format", "json", "--timeout", "2400"],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        watch.until(proc, timeout=5400)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    doc = json.loads(out)
    answered = [a for a in watch.answers if a[1] is not None]
    assert answered, f"the second seat never answered while it started: {watch.answers[-5:]}"
    assert not [a for a in answered if a[1] == 200], answered
    print(f"\nthe first seat's token tried {len(answered)} times on the second seat, from "
          f"{answered[0][0]:.0f} s after its port was known: {sorted({a[1] for a in answered})}")
    assert [(s["seat"], s["result"]) for s in doc["seats"]] == [
        ("e2e-ws-01", "created"), ("e2e-ws-02", "created")]
    assert doc["snapshot_action"] == "made"
    snapshot = Path(doc["snapshot"])
    image = json.loads((snapshot / "image.json").read_text())
    assert image["snapshot_of"] == "e2e-ws-01" and image["properties"]["vmbinder_workshop"] == "e2e-ws"

    # The second seat found the environment in the snapshot (its console shows
    # this boot only; the first seat's console was started again after the snapshot).
    second = (state / "e2e-ws-02" / "console.log").read_text(errors="replace")
    phases = [line for line in second.splitlines() if "VMBINDER-PHASE" in line]
    assert PHASE % "present" in second and PHASE % "built" not in second, (
        image.get("snapshot_shutdown"), phases)
    meta = json.loads((state / "e2e-ws-02" / "server.json").read_text())["metadata"]
    assert meta["vmbinder:snapshot"] == str(snapshot)

    # Each seat tried the CA for its address and both wildcard names, then its own CA.
    roots = {}
    for seat in ("e2e-ws-01", "e2e-ws-02"):
        res = vmbinder(cli_env, "status", seat, "--format", "json")
        assert res.returncode == 0, res.stderr
        cert = json.loads(res.stdout)["certificate"]
        assert (cert["site"], cert["issuer"]) == ("127.0.0.1", "internal"), cert
        assert [(f["host"], f["cause"]) for f in cert["failed"]] == [
            ("127.0.0.1", "CA unreachable"), ("127-0-0-1.sslip.io", "CA unreachable"),
            ("127-0-0-1.nip.io", "CA unreachable")], cert
        roots[seat] = cert["root_sha256"]
    assert len(set(roots.values())) == 2, f"the second seat kept the first seat's CA: {roots}"

    # The roster checks every URL (each seat's certificate against its pinned root);
    # both answer, each with its own token.
    res = vmbinder(cli_env, "workshop", "roster", str(path), "--format", "json", timeout=120)
    assert res.returncode == 0, res.stderr
    seats = json.loads(res.stdout)["seats"]
    assert [s["seat"] for s in seats] == ["e2e-ws-01", "e2e-ws-02"]
    assert len({s["url"].rsplit("token=", 1)[1] for s in seats}) == 2
    steps, identity = {}, {}
    for seat in seats:
        base, token = seat["lab_url"].split("/lab?token=")
        context = pinned(base, roots[seat["seat"]])
        assert get(seat["url"], context=context)[0] == 200
        assert get(seat["lab_url"], context=context)[0] == 200
        code, body = get(f"{base}/vmbinder/status.json?token={token}", context=context)
        assert code == 200, body
        steps[seat["seat"]] = json.loads(body)["durations"]
        identity[seat["seat"]] = json.loads(body)
        # Another seat's root does not verify this seat.
        other = next(fp for name, fp in roots.items() if name != seat["seat"])
        with pytest.raises(AssertionError):
            pinned(base, other)
    # Nothing unique of the first seat on the second: its machine id (as a digest)
    # and SSH host keys are its own; the host key is the one its console printed.
    one, two = identity["e2e-ws-01"], identity["e2e-ws-02"]
    assert one["machine"] and two["machine"] and one["machine"] != two["machine"]
    assert one["host_keys"] and two["host_keys"] and not set(one["host_keys"]) & set(two["host_keys"])
    # cloud-init prints the keys after the guest script's run, which may end after
    # the seat answers: wait for them.
    deadline = time.monotonic() + 300
    while "-----END SSH HOST KEY KEYS-----" not in second and time.monotonic() < deadline:
        time.sleep(5)
        second = (state / "e2e-ws-02" / "console.log").read_text(errors="replace")
    printed = second.split("-----BEGIN SSH HOST KEY KEYS-----")[-1].split("-----END SSH HOST KEY")[0]
    ed25519 = [line.split()[1] for line in printed.splitlines() if line.startswith("ssh-ed25519 ")]
    digest = base64.b64encode(hashlib.sha256(base64.b64decode(ed25519[-1])).digest()).decode().rstrip("=")
    assert f"ssh-ed25519 SHA256:{digest}" in two["host_keys"], (two["host_keys"], ed25519)

    # The guest's own seconds: repo2docker built on the first seat only (the second
    # seat's step found the image: its console says "present", checked above).
    assert steps["e2e-ws-01"]["build"] > steps["e2e-ws-02"]["build"], steps
    seconds = {s["seat"]: s["seconds"] for s in doc["seats"]}
    print(f"\nfirst seat (build, snapshot, answering again) {seconds['e2e-ws-01']:.0f} s, "
          f"second seat from the snapshot {seconds['e2e-ws-02']:.0f} s; guest steps {steps}")

    res = vmbinder(cli_env, "workshop", "down", str(path), "--snapshot", "--format", "json")
    assert res.returncode == 0, res.stderr
    kinds = sorted(r["kind"] for r in json.loads(res.stdout))
    assert kinds == ["qemu process", "qemu process", "server", "server", "snapshot"]
    assert not snapshot.exists() and not list(state.iterdir())
    res = vmbinder(cli_env, "workshop", "down", str(path), "--snapshot", "--format", "json")
    assert res.returncode == 0 and json.loads(res.stdout) == []


def pinned(base: str, fingerprint: str) -> ssl.SSLContext:
    """A context trusting the root the seat serves, once its SHA-256 is fingerprint."""
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(f"{base}/vmbinder/root.pem", context=insecure, timeout=20) as resp:
        pem = resp.read().decode()
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    assert ":".join(digest[i:i + 2] for i in range(0, 64, 2)) == fingerprint
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=pem)
    return context


class SeatWatch:
    """While `workshop up` runs: once the first seat's token and the second seat's
    forwarded port are known, tries that token on the second seat every second,
    recording (seconds since the port was known, HTTP status or None)."""

    PATHS = ("api/status", "vmbinder/status.json")

    def __init__(self, state: Path, first: str, second: str):
        """state: the local target's folder of servers (STATE/vmbinder/local)."""
        self.state, self.first, self.second = state, first, second
        self.answers: list[tuple[float, int | None]] = []

    def until(self, proc: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        token, port, since = None, None, None
        while proc.poll() is None and time.monotonic() < deadline:
            token = token or seed_token(self.state / self.first)
            port = port or forwarded(self.state.parent.parent, self.second, "https-port")
            if token and port:
                since = since or time.monotonic()
                for path in self.PATHS:
                    url = f"https://127.0.0.1:{port}/{path}?token={token}"
                    try:
                        with urllib.request.urlopen(url, timeout=5, context=insecure) as resp:
                            code = resp.status
                    except urllib.error.HTTPError as exc:
                        code = exc.code
                    except OSError:
                        code = None
                    self.answers.append((time.monotonic() - since, code))
            time.sleep(1)


def seed_token(folder: Path) -> str | None:
    """The token in a local server's NoCloud seed (its launch document), once written."""
    import pycdlib
    import yaml

    if not (folder / "seed.iso").exists():
        return None
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(folder / "seed.iso"))
        data = io.BytesIO()
        iso.get_file_from_iso_fp(data, rr_path="/user-data")
        iso.close()
    except Exception:  # written meanwhile: read again in a second
        return None
    files = yaml.safe_load(data.getvalue())["write_files"]
    launch = next(f["content"] for f in files if f["path"] == "/etc/vmbinder/launch.json")
    return json.loads(launch)["token"]
