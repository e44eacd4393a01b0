"""End to end: a two-seat workshop on the local target. The first seat builds
the environment and is snapshotted; the second starts from the snapshot and
answers without building; the roster lists both; down removes everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .test_local_guest import get

pytestmark = pytest.mark.e2e
PHASE = '"phase": "build", "result": "%s", "status": "done"'  # sort_keys order


def vmbinder(cli_env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", *args],
                          env=cli_env, capture_output=True, text=True, timeout=timeout, check=False)


def test_a_local_workshop_builds_once_and_fans_out_from_the_snapshot(cli_env, baked_image,
                                                                      test_repo, tmp_path):
    path = tmp_path / "ws.yaml"
    path.write_text(f"name: e2e-ws\nsource: {test_repo}\nseats: 2\nimage: {baked_image}\n"
                    "open: index.ipynb\n")
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

    # The roster checks every URL; both answer, each with its own token.
    res = vmbinder(cli_env, "workshop", "roster", str(path), "--format", "json", timeout=120)
    assert res.returncode == 0, res.stderr
    seats = json.loads(res.stdout)["seats"]
    assert [s["seat"] for s in seats] == ["e2e-ws-01", "e2e-ws-02"]
    assert len({s["url"].rsplit("token=", 1)[1] for s in seats}) == 2
    steps = {}
    for seat in seats:
        assert get(seat["url"])[0] == 200 and get(seat["lab_url"])[0] == 200
        base, token = seat["lab_url"].split("/lab?token=")
        code, body = get(f"{base}/vmbinder/status.json?token={token}")
        assert code == 200, body
        steps[seat["seat"]] = json.loads(body)["durations"]
    # The guest's own seconds: repo2docker built on the first seat only.
    assert steps["e2e-ws-01"]["build"] > 10 > steps["e2e-ws-02"]["build"], steps
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
