"""Load: a 50-seat workshop made 50 at a time through a proxy that throttles
the cloud (429 with Retry-After, 503) and breaks two server creations for good
(500). Every seat ends created or cleanly failed, nothing is left after `down`
(conftest's check), and `up` again makes exactly the failed seats."""

from __future__ import annotations

import json

from .test_faults import SERVERS
from .test_workshop import only_the_keypair_is_left, seats_on_cloud, write_workshop

SEATS = 50

THROTTLE = (
    {"method": "POST", "path": SERVERS, "action": "status", "status": 500, "every": 10, "times": 2},
    {"method": "POST", "path": SERVERS, "action": "status", "status": 429, "retry_after": 1,
     "every": 3},
    {"method": "POST", "path": "/floatingips$", "action": "status", "status": 503, "every": 4},
    {"method": "PUT", "path": "/floatingips/", "action": "status", "status": 429, "every": 5},
    {"method": "GET", "path": "", "action": "status", "status": 503, "every": 9},
)


def test_fifty_seats_at_once_under_throttling_are_each_accounted_for(
        testbed, cli_env, fault_proxy, quota, tmp_path, ssh_key):
    import subprocess
    import sys

    quota(compute={"instances": SEATS + 5, "cores": SEATS + 5, "ram": (SEATS + 5) * 512},
          network={"floating_ips": SEATS + 5, "ports": 2 * SEATS + 10})
    path = write_workshop(tmp_path, "load", SEATS)
    env = fault_proxy.through(cli_env)

    def up():
        return subprocess.run(
            [sys.executable, "-m", "vmbinder", "workshop", "up", str(path), "--no-wait",
             "--parallel", str(SEATS), "--format", "json"],
            env=env, capture_output=True, text=True, timeout=1800, check=False)

    fault_proxy.set(*THROTTLE)
    res = up()
    assert res.returncode == 10, res.stderr  # the batch partly failed
    seats = {s["seat"]: s for s in json.loads(res.stdout)["seats"]}
    assert len(seats) == SEATS
    failed = sorted(n for n, s in seats.items() if s["result"] == "failed")
    assert len(failed) == 2, {n: seats[n].get("error") for n in failed}
    assert {s["result"] for n, s in seats.items() if n not in failed} == {"created"}
    for name in failed:
        assert "HTTP 500" in seats[name]["error"], seats[name]
    throttled = fault_proxy.count(fault="status") - 2
    assert throttled >= SEATS, f"only {throttled} throttled answers: the load test tested little"
    print(f"\n{SEATS} seats at once: {len(fault_proxy.requests())} requests, {throttled} answered "
          f"429 or 503 by the proxy, 2 answered 500; {len(failed)} seats failed cleanly")

    # On the cloud: exactly the created seats, each with its own floating IP;
    # a failed seat left no server and no address.
    on_cloud = seats_on_cloud(testbed, "load")
    assert sorted(on_cloud) == sorted(n for n in seats if n not in failed)
    fips = [ip for ip in testbed.admin.network.ips(project_id=testbed.project_id)
            if (ip.description or "").startswith("vmbinder:load-")]
    assert sorted(ip.description[len("vmbinder:"):] for ip in fips) == sorted(on_cloud)
    assert all(ip.port_id for ip in fips)

    # Up again, still throttled but with no more 500s: only the failed seats are made.
    fault_proxy.set(*THROTTLE[1:])
    res = up()
    assert res.returncode == 0, res.stderr
    again = {s["seat"]: s["result"] for s in json.loads(res.stdout)["seats"]}
    assert sorted(n for n, r in again.items() if r == "created") == failed
    assert {r for n, r in again.items() if n not in failed} == {"kept"}

    fault_proxy.set()
    res = subprocess.run([sys.executable, "-m", "vmbinder", "workshop", "down", str(path),
                          "--format", "json"], env=env, capture_output=True, text=True,
                         timeout=1800, check=False)
    assert res.returncode == 0, res.stderr
    assert seats_on_cloud(testbed, "load") == {}
    only_the_keypair_is_left(testbed)
