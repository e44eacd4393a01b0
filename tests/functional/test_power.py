"""Stop, start, shelve and unshelve against the testbed's Nova (its fake driver
boots nothing, so the environment is not waited for: --no-wait): the states
Nova reaches, the floating IP attached to the same port throughout, so the URL
and the token are the same afterwards; status says what the server holds. With
--release-ip the floating IP is given back, and start and unshelve attach a new
one from the same network, printing the URLs of the new address."""

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


def attached(testbed, server_id):
    ports = [p.id for p in testbed.admin.network.ports(device_id=server_id)]
    return [ip for ip in testbed.admin.network.ips() if ip.port_id in ports]


def test_release_ip_gives_the_address_back_and_start_and_unshelve_get_a_new_one(
        testbed, vmb, name, ssh_key):
    out = json.loads(ok(vmb(*launch_args(name, SOURCE))).stdout)
    server_id = testbed.server(name).id
    (first,) = attached(testbed, server_id)

    done = json.loads(ok(vmb("stop", name, "--release-ip", "--format", "json", timeout=600)).stdout)
    assert [(d["action"], d["status"], d["address"], d["released"]) for d in done] == [
        ("stopped", "stopped", None, [out["address"]])]
    assert attached(testbed, server_id) == [] and not list(testbed.admin.network.ips(id=first.id))
    meta = testbed.admin.compute.get_server(server_id).metadata
    assert meta["vmbinder:released"] == first.floating_network_id and meta["vmbinder:issuer"] == ""
    status = ok(vmb("status", name))
    assert "released: vmbinder start" in status.stdout, status.stdout

    done = json.loads(ok(vmb("start", name, "--no-wait", "--format", "json", timeout=600)).stdout)
    (second,) = attached(testbed, server_id)
    assert second.id != first.id and second.floating_network_id == first.floating_network_id
    assert [(d["action"], d["status"], d["address"]) for d in done] == [
        ("started", "active", second.floating_ip_address)]
    assert f"https://{second.floating_ip_address}/" in done[0]["urls"]["lab"], done[0]["urls"]
    assert testbed.admin.compute.get_server(server_id).metadata["vmbinder:released"] == ""

    err = vmb("shelve", name, "--release-ip", timeout=900)
    assert err.returncode == 0, err.stderr
    assert f"released floating IP {second.floating_ip_address}: vmbinder unshelve gives" in err.stderr
    assert attached(testbed, server_id) == []
    again = vmb("shelve", name, "--release-ip")
    assert again.returncode == 2 and "released already" in again.stderr, again.stderr
    assert f"vmbinder unshelve {name} gives it a new one" in again.stderr, again.stderr
    wrong = vmb("start", name, "--no-wait")  # refused, naming unshelve, with no address made
    assert wrong.returncode == 2 and f"vmbinder unshelve {name}" in wrong.stderr, wrong.stderr
    assert attached(testbed, server_id) == []
    done = json.loads(ok(vmb("unshelve", name, "--no-wait", "--format", "json", timeout=900)).stdout)
    (third,) = attached(testbed, server_id)
    assert third.id not in (first.id, second.id)
    assert [(d["action"], d["address"]) for d in done] == [("unshelved", third.floating_ip_address)]

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
