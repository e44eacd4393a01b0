"""Workshop fan-out on the local target: a seat started from the snapshot
against the seat that built the environment.

Serves examples/local-repo from this machine and runs a two-seat workshop of it
with vmbinder.workshops.up.up on the local target (baked image): the first seat builds
the environment and is snapshotted, the second starts from the snapshot. Prints
the seconds of each part, then removes the seats and the snapshot.

    sudo .venv/bin/python bench/workshop_fanout.py [--image FOLDER] [--json]

The image defaults to ~/.cache/vmbinder/images/debian-12-baked (build it with
`vmbinder image build --baked --base-container`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmbinder import lifecycle
from vmbinder.images.folder import images_dir
from vmbinder.localrepo import serve
from vmbinder.providers.local import LocalProvider
from vmbinder.readiness import fetch_json
from vmbinder.workshops.file import load
from vmbinder.workshops.seats import CREATED, SNAPSHOTTED, down, roster_entries
from vmbinder.workshops.up import up


class Clock:
    """A batch reporter that keeps when each seat reached each state, in order."""

    def __init__(self):
        self.started = time.monotonic()
        self.events: list[tuple[float, str, str]] = []

    def seat(self, name: str, state: str, detail: str = "") -> None:
        self.events.append((time.monotonic() - self.started, name, state))

    def at(self, name: str, state: str, nth: int = 0) -> float:
        return [t for t, n, s in self.events if (n, s) == (name, state)][nth]


def guest_steps(provider, workshop) -> dict[str, dict]:
    """Each seat's own seconds per step, from its status.json (its own CA's root
    checked against the fingerprint its console published)."""
    entries, _ = roster_entries(provider, workshop, check=False)
    steps = {}
    for entry in entries:
        base, token = entry.lab_url.split("/lab?token=")
        context = lifecycle.trust(provider.get(entry.seat))
        steps[entry.seat] = fetch_json(f"{base}/vmbinder/status.json?token={token}",
                                       context=context, timeout=30).get("durations", {})
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(images_dir() / "debian-12-baked"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serve(ROOT / "examples" / "local-repo") as url:
        env = {"HOME": tmp, "XDG_STATE_HOME": f"{tmp}/state", "VMBINDER_IMAGES_DIR": f"{tmp}/images"}
        provider = LocalProvider(env=env)
        path = Path(tmp) / "bench.yaml"
        path.write_text(f"name: fanout\nsource: {url}\nseats: 2\nimage: {args.image}\n")
        workshop = load(path)
        clock = Clock()
        try:
            result = up(provider, workshop, reporter=clock)
            total = time.monotonic() - clock.started
            steps = guest_steps(provider, workshop)
        finally:
            down(provider, workshop, snapshots=True)
    built = clock.at("fanout-01", CREATED)
    snap_start, snap_end = clock.at("fanout-01", "snapshot"), clock.at("fanout-01", SNAPSHOTTED)
    second = next(r for r in result.seats if r.seat.name == "fanout-02")
    one, two = steps.get("fanout-01", {}), steps.get("fanout-02", {})
    figures = {
        "build_seat_s": round(built, 1),
        "snapshot_s": round(snap_end - snap_start, 1),
        "first_seat_again_s": round(clock.at("fanout-01", CREATED, 1) - snap_end, 1),
        "seat_from_snapshot_s": round(second.seconds, 1),
        "total_s": round(total, 1),
        "guest_build_s": {"fanout-01": one.get("build"), "fanout-02": two.get("build")},
        "guest_base_images_s": {"fanout-01": one.get("base-images"),
                                "fanout-02": two.get("base-images")},
        "guest_steps_s": steps,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"first seat, building the environment: {figures['build_seat_s']} s "
              f"(repo2docker {one.get('build')} s, base image import {one.get('base-images')} s)")
        print(f"snapshot (power off, flatten the disk, start again): {figures['snapshot_s']} s")
        print(f"first seat answering again after it: {figures['first_seat_again_s']} s")
        print(f"second seat, from the snapshot: {figures['seat_from_snapshot_s']} s "
              f"(repo2docker {two.get('build')} s, base image import {two.get('base-images')} s)")
        print(f"whole batch: {figures['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
