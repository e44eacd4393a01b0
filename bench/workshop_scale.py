"""Workshop scaling on the OpenStack testbed: `up` of 50 seats against 1 seat.

For each size, runs vmbinder.workshops.up.up (as `vmbinder workshop up
--no-wait`, parallelism 8) as the testbed's member, counts the HTTP requests it
sends to the cloud, then removes the seats with vmbinder.workshops.seats.down.
The quotas are raised for the run as the admin and put back afterwards. Goal: 50 seats in at most 3x the
wall time of 1.

    testbed/up && .venv/bin/python bench/workshop_scale.py [--seats 50] [--json]

The testbed boots nothing (Nova's fake driver): this measures vmbinder and the
control plane, not guests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmbinder.providers.openstack import OpenStackProvider
from vmbinder.workshops.file import load
from vmbinder.workshops.seats import PARALLEL, down
from vmbinder.workshops.up import up

TESTBED = Path(os.environ.get("VMBINDER_TESTBED_DIR", ROOT / ".testbed"))


class RequestCounter:
    """Counts every HTTP request keystoneauth sends (authentication included)."""

    def __init__(self):
        from keystoneauth1 import session

        self.count, self.lock = 0, threading.Lock()
        self.original = session.Session.request
        counter = self

        def counted(self, *args, **kwargs):
            with counter.lock:
                counter.count += 1
            return counter.original(self, *args, **kwargs)

        session.Session.request = counted

    def take(self) -> int:
        with self.lock:
            n, self.count = self.count, 0
        return n


def connect(cloud: str):
    import openstack
    from openstack import config as os_config

    region = os_config.OpenStackConfig(config_files=[str(TESTBED / "clouds.yaml")]).get_one(cloud=cloud)
    return openstack.connection.Connection(config=region)


def run(seats: int, folder: Path, counter: RequestCounter, parallel: int) -> dict:
    path = folder / f"bench{seats}.yaml"
    path.write_text(f"name: bench{seats}\nsource: https://github.com/binder-examples/requirements\n"
                    f"seats: {seats}\nimage: debian-12\nflavor: m1.tiny\n")
    workshop = load(path)
    provider = OpenStackProvider(conn=connect("testbed"))
    counter.take()
    started = time.monotonic()
    result = up(provider, workshop, wait=False, fan_out=False, parallel=parallel)
    seconds = time.monotonic() - started
    requests = counter.take()
    made = sum(r.action == "created" for r in result.seats)
    down(provider, workshop)
    return {"seats": seats, "created": made, "seconds": round(seconds, 1),
            "requests": requests, "requests_per_seat": round(requests / seats, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seats", type=int, default=50)
    parser.add_argument("--parallel", type=int, default=PARALLEL)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (TESTBED / "clouds.yaml").is_file():
        sys.exit(f"the testbed is not running ({TESTBED / 'clouds.yaml'} is missing): run testbed/up")
    admin = connect("testbed-admin")
    project = connect("testbed").current_project_id
    n = args.seats + 5
    admin.compute.update_quota_set(project, instances=n, cores=n, ram=n * 512)
    admin.network.update_quota(project, floating_ips=n, ports=n + 20)
    counter = RequestCounter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            one = run(1, Path(tmp), counter, args.parallel)
            many = run(args.seats, Path(tmp), counter, args.parallel)
    finally:
        admin.compute.revert_quota_set(project)
        admin.network.delete_quota(project)
    figures = {"one": one, "many": many, "ratio": round(many["seconds"] / one["seconds"], 2)}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for row in (one, many):
            print(f"{row['seats']:>3} seats: {row['seconds']:7.1f} s, {row['requests']} HTTP requests "
                  f"({row['requests_per_seat']} per seat), {row['created']} created")
        print(f"wall time ratio {args.seats} seats / 1 seat: {figures['ratio']} (goal: at most 3)")
    return 0 if one["created"] == 1 and many["created"] == args.seats else 1


if __name__ == "__main__":
    sys.exit(main())
