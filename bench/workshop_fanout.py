"""Workshop fan-out on the local target: a seat started from the snapshot
against the seat that built the environment.

Serves examples/local-repo from this machine and runs a two-seat workshop of it
with vmbinder.batch.up on the local target (baked image): the first seat builds
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

from vmbinder import batch
from vmbinder.localrepo import serve
from vmbinder.providers.local import LocalProvider
from vmbinder.providers.local_image import images_dir
from vmbinder.workshop import load


class Clock:
    """A batch reporter that keeps when each seat reached each state."""

    def __init__(self):
        self.started = time.monotonic()
        self.seen: dict[tuple[str, str], float] = {}

    def seat(self, name: str, state: str, detail: str = "") -> None:
        self.seen.setdefault((name, state), time.monotonic() - self.started)


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
            result = batch.up(provider, workshop, reporter=clock, local=True)
        finally:
            batch.down(provider, workshop, snapshots=True)
    first, second = (r.seconds for r in result.seats)
    snap_start = clock.seen[("fanout-01", "snapshot")]
    snap_end = clock.seen[("fanout-01", batch.SNAPSHOTTED)]
    figures = {"build_seat_s": round(first, 1), "snapshot_s": round(snap_end - snap_start, 1),
               "seat_from_snapshot_s": round(second, 1), "total_s": round(time.monotonic() - clock.started, 1)}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"first seat, building the environment: {figures['build_seat_s']} s")
        print(f"snapshot (power off, flatten the disk, start again): {figures['snapshot_s']} s")
        print(f"second seat, from the snapshot: {figures['seat_from_snapshot_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
