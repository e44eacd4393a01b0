"""A workshop's seats stopped, started, shelved and unshelved at once (stopped
with --release-ip, then started at new addresses too), one seat refused by
Nova while the other is done (exit 10), one seat reset, and the seats of a
removed workshop reported missing, against the testbed's Nova.

Its fake compute driver boots nothing, so start, unshelve and reset do not wait
for the environment (--no-wait). One workshop of two seats serves every step:
each launch on the testbed costs time."""

from __future__ import annotations

import csv
import io
import json
from urllib.parse import urlsplit

from .test_launch import ok
from .test_workshop import only_the_keypair_is_left, seats_on_cloud, write_workshop

SEATS = ["wspow-01", "wspow-02"]


def nova_status(testbed) -> dict:
    """Each seat's Nova status, read as the admin."""
    return {name: server.status for name, server in seats_on_cloud(testbed, "wspow").items()}


def results(res) -> dict:
    """The seats' (result, state) of a power command's JSON."""
    doc = json.loads(res.stdout)
    return {s["seat"]: (s["result"], s["state"]) for s in doc["seats"]}


def test_bulk_power_one_seat_refusing_reset_and_missing_seats(testbed, vmb, tmp_path, ssh_key):
    path = str(write_workshop(tmp_path, "wspow", 2))
    made = json.loads(ok(vmb("workshop", "up", path, "--no-wait", "--format", "json",
                             timeout=600)).stdout)
    addresses = {s["seat"]: s["address"] for s in made["seats"]}
    assert sorted(addresses) == SEATS and all(addresses.values()), made

    # Every seat, each verb: Nova's status afterwards, the address kept.
    for verb, extra, result, state, nova in (
            ("stop", (), "stopped", "stopped", "SHUTOFF"),
            ("start", ("--no-wait",), "started", "active", "ACTIVE"),
            ("shelve", (), "shelved", "shelved", "SHELVED_OFFLOADED"),
            ("unshelve", ("--no-wait",), "unshelved", "active", "ACTIVE")):
        res = ok(vmb("workshop", verb, path, *extra, "--format", "json", timeout=900))
        assert results(res) == {seat: (result, state) for seat in SEATS}, res.stdout
        assert {s["seat"]: s["address"] for s in json.loads(res.stdout)["seats"]} == addresses
        assert nova_status(testbed) == {seat: nova for seat in SEATS}, verb

    # --release-ip: each seat's floating IP given back before it stops; start
    # attaches a new one to each, and the roster has the new URLs.
    res = ok(vmb("workshop", "stop", path, "--release-ip", "--format", "json", timeout=900))
    assert {s["seat"]: (s["result"], s["address"], s["released"])
            for s in json.loads(res.stdout)["seats"]} == {
        seat: ("stopped", None, [addresses[seat]]) for seat in SEATS}, res.stdout
    assert not [ip for ip in testbed.admin.network.ips(project_id=testbed.project_id)
                if ip.floating_ip_address in addresses.values()]
    assert nova_status(testbed) == {seat: "SHUTOFF" for seat in SEATS}
    res = ok(vmb("workshop", "start", path, "--no-wait", "--format", "json", timeout=900))
    new = {s["seat"]: s["address"] for s in json.loads(res.stdout)["seats"]}
    assert sorted(new) == SEATS and all(new.values()), res.stdout
    assert not set(new.values()) & set(addresses.values())
    roster = ok(vmb("workshop", "roster", path, "--no-check", "--format", "csv"))
    urls = {row["seat"]: row["url"] for row in csv.DictReader(io.StringIO(roster.stdout))}
    hosts = {seat: urlsplit(url).hostname for seat, url in urls.items()}
    assert sorted(urls) == SEATS and all(  # the address, or a wildcard DNS name of it
        hosts[s] == new[s] or hosts[s].startswith(new[s].replace(".", "-") + ".") for s in SEATS), urls
    assert nova_status(testbed) == {seat: "ACTIVE" for seat in SEATS}

    # One seat locked by the administrator: stopping the workshop stops the other
    # seat, says why that one was refused, and exits 10.
    locked = seats_on_cloud(testbed, "wspow")["wspow-02"]
    testbed.admin.compute.lock_server(locked)
    try:
        res = vmb("workshop", "stop", path, "--format", "json", timeout=600)
    finally:
        testbed.admin.compute.unlock_server(locked)
    assert res.returncode == 10, res.stderr
    assert results(res) == {"wspow-01": ("stopped", "stopped"), "wspow-02": ("failed", "active")}
    assert nova_status(testbed) == {"wspow-01": "SHUTOFF", "wspow-02": "ACTIVE"}
    said = " ".join(res.stderr.split())
    assert "1 of 2 seats failed to stop; the others are stopped: wspow-02: stopping wspow-02 " \
           f"failed: HTTP 409: Instance {locked.id} is locked (request id req-" in said, res.stderr
    assert f"run the same `vmbinder workshop stop {path}` again" in said

    # Reset: that seat alone gets a new server and a new token; the other is untouched.
    before = seats_on_cloud(testbed, "wspow")
    res = ok(vmb("workshop", "reset", path, "wspow-01", "--no-wait", timeout=600))
    after = seats_on_cloud(testbed, "wspow")
    new = after["wspow-01"]
    assert new.id != before["wspow-01"].id and new.status == "ACTIVE"
    (line,) = list(csv.DictReader(io.StringIO(res.stdout)))
    token = new.metadata["vmbinder:token"]
    assert line["seat"] == "wspow-01" and line["url"].endswith(f"?token={token}"), res.stdout
    assert token != before["wspow-01"].metadata["vmbinder:token"]
    other = after["wspow-02"]
    assert (other.id, other.status, other.metadata["vmbinder:token"]) == (
        before["wspow-02"].id, "ACTIVE", before["wspow-02"].metadata["vmbinder:token"])
    said = " ".join(res.stderr.split())
    assert f"removed server wspow-01 ({before['wspow-01'].id})" in said
    # The old seat's floating IP was released with it: one address per seat.
    ips = list(testbed.admin.network.ips(project_id=testbed.project_id))
    assert len(ips) == 2 and all(ip.port_id for ip in ips)

    # Removed, the workshop's seats are reported missing, and nothing fails.
    ok(vmb("workshop", "down", path, timeout=600))
    res = ok(vmb("workshop", "stop", path, "--format", "json"))
    assert results(res) == {seat: ("missing", None) for seat in SEATS}
    only_the_keypair_is_left(testbed)
