"""Stop, start, shelve and unshelve against the testbed's Nova (its fake driver
boots nothing, so the environment is not waited for: --no-wait): the states
Nova reaches, the floating IP attached to the same port throughout, so the URL
and the token are the same afterwards; status says what the server holds."""

from __future__ import annotations

import json

from .conftest import SOURCE
from .test_launch import launch_args, ok


def fip_of(testbed, address):
    (fip,) = list(testbed.admin.network.ips(floating_ip_address=address))
    return fip


def test_stop_start_shelve_unshelve_keep_the_floating_ip_and_the_url(testbed, vmb, name, ssh_key):
    out = json.loads(ok(vmb(*launch_args(name, SOURCE))).stdout)
    address, url = out["address"], out["urls"]["lab"]
    port_id = fip_of(testbed, address).port_id

    done = json.loads(ok(vmb("stop", name, "--format", "json", timeout=600)).stdout)
    assert [(d["name"], d["action"], d["status"], d["cloud_status"]) for d in done] == [
        (name, "stopped", "stopped", "SHUTOFF")]
    assert testbed.server(name).status == "SHUTOFF"
    status = ok(vmb("status", name))
    assert "on a cloud also its cores" in status.stdout, status.stdout
    again = json.loads(ok(vmb("stop", name, "--format", "json")).stdout)
    assert again[0]["action"] == "already stopped"

    done = json.loads(ok(vmb("start", name, "--no-wait", "--format", "json", timeout=600)).stdout)
    assert [(d["action"], d["status"], d["address"]) for d in done] == [("started", "active", address)]
    assert done[0]["urls"]["lab"] == url

    done = json.loads(ok(vmb("shelve", name, "--format", "json", timeout=900)).stdout)
    assert [(d["action"], d["status"], d["cloud_status"]) for d in done] == [
        ("shelved", "shelved", "SHELVED_OFFLOADED")]
    assert fip_of(testbed, address).port_id == port_id  # the address stays with the server
    listed = {d["name"]: d for d in json.loads(ok(vmb("list", "--format", "json")).stdout)}
    assert listed[name]["status"] == "shelved"
    status = ok(vmb("status", name))
    assert "its disk as an image; no cores" in status.stdout, status.stdout
    wrong = vmb("start", name, "--no-wait")
    assert wrong.returncode == 2 and f"vmbinder unshelve {name}" in wrong.stderr, wrong.stderr

    done = json.loads(ok(vmb("unshelve", name, "--no-wait", "--format", "json", timeout=900)).stdout)
    assert [(d["action"], d["status"], d["address"]) for d in done] == [("unshelved", "active", address)]
    assert fip_of(testbed, address).port_id == port_id
    assert ok(vmb("url", name, "--ui", "lab")).stdout.strip() == url
    # Nova's action record: running, stopped and shelved time, cores held only while not shelved.
    usage = json.loads(ok(vmb("status", name, "--format", "json")).stdout)["usage"]
    assert all(usage["seconds"][k] > 0 for k in ("running", "stopped", "shelved")), usage
    held = usage["cores"] * (usage["seconds"]["running"] + usage["seconds"]["stopped"]) / 3600
    assert abs(usage["core_hours_held"] - held) < 0.01, usage

    ok(vmb("delete", name))
    left = testbed.owned()
    assert [k for k, _, _ in left] == ["keypair"], left
    testbed.admin.compute.delete_keypair(left[0][1], user_id=testbed.user_id)


def test_an_unknown_name_among_the_names_stops_none_of_them(testbed, vmb, name, ssh_key):
    ok(vmb(*launch_args(name, SOURCE)))
    res = vmb("stop", name, "no-such-server")
    assert res.returncode == 2 and "no-such-server" in res.stderr, res.stderr
    assert testbed.server(name).status == "ACTIVE"
    ok(vmb("delete", name))
    left = testbed.owned()
    assert [k for k, _, _ in left] == ["keypair"], left
    testbed.admin.compute.delete_keypair(left[0][1], user_id=testbed.user_id)
