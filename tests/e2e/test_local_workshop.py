"""End to end: a two-seat workshop on the local target. The first seat builds
the environment and is snapshotted; the second starts from the snapshot and
answers without building; the roster lists both; down removes everything.

Its ACME CA cannot be reached, so each seat falls back, try by try, to its
own CA, whose root vmbinder trusts by the fingerprint the seat's console
published; the second seat's own CA is new, not the first seat's from the
snapshot."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from vmbinder.providers.local.qemu import free_ports

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
    res = vmbinder(cli_env, "workshop", "up", str(path), "--format", "json", "--timeout", "2400",
                   timeout=5400)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [(s["seat"], s["result"]) for s in doc["seats"]] == [
        ("e2e-ws-01", "created"), ("e2e-ws-02", "created")]
    assert doc["snapshot_action"] == "made"
    snapshot = Path(doc["snapshot"])
    image = json.loads((snapshot / "image.json").read_text())
    assert image["snapshot_of"] == "e2e-ws-01" and image["properties"]["vmbinder_workshop"] == "e2e-ws"

    # The second seat found the environment in the snapshot (its console shows
    # this boot only; the first seat's console was started again after the snapshot).
    state = tmp_path / "state" / "vmbinder" / "local"
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
    steps = {}
    for seat in seats:
        base, token = seat["lab_url"].split("/lab?token=")
        context = pinned(base, roots[seat["seat"]])
        assert get(seat["url"], context=context)[0] == 200
        assert get(seat["lab_url"], context=context)[0] == 200
        code, body = get(f"{base}/vmbinder/status.json?token={token}", context=context)
        assert code == 200, body
        steps[seat["seat"]] = json.loads(body)["durations"]
        # Another seat's root does not verify this seat.
        other = next(fp for name, fp in roots.items() if name != seat["seat"])
        with pytest.raises(AssertionError):
            pinned(base, other)
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
