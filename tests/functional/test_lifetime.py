"""Lifetimes against the testbed's Nova: --lifetime and --at-end recorded with
the server, status counting down, and `vmbinder reap` acting once on the server
whose lifetime has ended while one with time left runs on. A lifetime cannot be
launched already over, so the first server's end is moved into the past through
Nova's metadata API (as if its hours had passed); the rest is vmbinder's own doing."""

from __future__ import annotations

import json
import re

from .conftest import FLAVOR, IMAGE, SOURCE
from .test_launch import launch_args, ok
from .test_workshop import TINY, write_workshop

PAST = "2026-01-01T00:00Z"


def test_reap_shelves_the_expired_once_and_leaves_the_rest(testbed, vmb, name, ssh_key):
    old, young = f"{name}-a", f"{name}-b"
    ok(vmb(*launch_args(old, "--lifetime", "90m", SOURCE)))
    ok(vmb(*launch_args(young, "--lifetime", "8h", "--at-end", "delete", SOURCE)))
    doc = json.loads(ok(vmb("status", young, "--format", "json")).stdout)
    assert doc["at_end"] == "delete" and doc["expires"].endswith("Z")
    cores = testbed.admin.compute.find_flavor(FLAVOR).vcpus
    assert doc["usage"]["cores"] == cores and doc["usage"]["seconds"]["running"] > 0, doc["usage"]
    rows = ok(vmb("status", young)).stdout
    assert re.search(r"^lifetime +ends \S+Z \(in 7 h 5[89] min\), then it is deleted$", rows,
                     re.M), rows
    testbed.admin.compute.set_server_metadata(testbed.server(old), **{"vmbinder:expires": PAST})

    dry = json.loads(ok(vmb("reap", "--dry-run", "--format", "json")).stdout)
    assert [(d["name"], d["action"], d["result"]) for d in dry] == [(old, "shelve", "would")]
    assert testbed.server(old).status == "ACTIVE"

    res = ok(vmb("reap", timeout=900))
    assert f"shelved {old}: ended {PAST}" in " ".join(res.stderr.split()), res.stderr
    assert testbed.server(old).status == "SHELVED_OFFLOADED"
    assert testbed.server(young).status == "ACTIVE"
    # Recorded before it was shelved (Nova takes no metadata after): done once, so
    # a server brought back runs on, and the next reap has nothing to do.
    assert testbed.server(old).metadata["vmbinder:ended"] == "shelve"
    assert json.loads(ok(vmb("reap", "--action", "delete", "--format", "json")).stdout) == []

    ok(vmb("delete", old, young, timeout=600))
    left = testbed.owned()
    assert [k for k, _, _ in left] == ["keypair"], left
    testbed.admin.compute.delete_keypair(left[0][1], user_id=testbed.user_id)


def test_a_dry_run_says_what_the_flavor_holds_over_the_lifetime(testbed, vmb, name, tmp_path):
    res = ok(vmb("launch", "--dry-run", "--format", "json", "--name", name, "--image", IMAGE,
                 "--flavor", FLAVOR, "--lifetime", "8h", "--volume", "3", SOURCE))
    flavor = testbed.admin.compute.find_flavor(FLAVOR)
    holds = json.loads(res.stdout)["holds"]
    assert (holds["cores"], holds["memory_mb"], holds["volume_gb"], holds["core_hours"]) == (
        flavor.vcpus, flavor.ram, 3, 8.0 * flavor.vcpus)
    # A workshop's: every seat's flavor, over the workshop's lifetime.
    path = write_workshop(tmp_path, name, 3, "lifetime: 2h\nvolume: 4\n")
    holds = json.loads(ok(vmb("workshop", "up", str(path), "--dry-run", "--format", "json")).stdout)[
        "holds"]
    tiny = testbed.admin.compute.find_flavor(TINY)
    assert (holds["servers"], holds["cores"], holds["memory_mb"], holds["volume_gb"],
            holds["core_hours"]) == (3, 3 * tiny.vcpus, 3 * tiny.ram, 12, 6.0 * tiny.vcpus)
    assert testbed.owned() == []
