"""Servers on a network whose own addresses are public, against the testbed:
`public` is external and shared (a provider network), so a server on it gets
no floating IP and its URLs use its own address; --floating-ip overrides;
nothing is left after delete, a rollback or a workshop down."""

from __future__ import annotations

import ipaddress
import json

from .conftest import SOURCE
from .test_launch import PUBLIC, launch_args, ok
from .test_workshop import only_the_keypair_is_left, seats_on_cloud, write_workshop

PRIVATE = ipaddress.ip_network("192.0.2.0/24")


def vmbinder_ports(testbed, name):
    return [p for p in testbed.admin.network.ports(project_id=testbed.project_id)
            if p.description == f"vmbinder:{name}"]


def floating_ips_of(testbed, name):
    return [ip for ip in testbed.admin.network.ips(project_id=testbed.project_id)
            if ip.description == f"vmbinder:{name}"]


def test_a_server_on_the_provider_network_answers_on_its_own_address(testbed, vmb, name, ssh_key):
    out = json.loads(ok(vmb(*launch_args(name, "--network", "public", SOURCE))).stdout)
    address = out["address"]
    assert ipaddress.ip_address(address) in PUBLIC
    assert out["urls"]["lab"].startswith(f"https://{address}/lab?token=")

    # No floating IP: the server sits on public with the port vmbinder made for it.
    assert floating_ips_of(testbed, name) == []
    server = testbed.server(name)
    assert [a["addr"] for a in server.addresses["public"]] == [address]
    assert {a["OS-EXT-IPS:type"] for a in server.addresses["public"]} == {"fixed"}
    assert server.metadata["vmbinder:address"] == address
    (port,) = vmbinder_ports(testbed, name)
    assert port.device_id == server.id and port.network_id == testbed.admin.network.find_network(
        "public", ignore_missing=False).id
    assert [ip["ip_address"] for ip in port.fixed_ips] == [address]
    group = testbed.admin.network.find_security_group("vmbinder", project_id=testbed.project_id,
                                                      ignore_missing=False)
    assert port.security_group_ids == [group.id]
    # The guest was told its address before it booted.
    import base64

    import yaml
    user_data = base64.b64decode(testbed.server(name).user_data).decode()
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    assert json.loads(files["/etc/vmbinder/launch.json"]["content"])["public_ip"] == address

    # Every command finds the address again, each from a new process.
    listed = {d["name"]: d for d in json.loads(ok(vmb("list", "--format", "json")).stdout)}
    assert listed[name]["address"] == address
    status = json.loads(ok(vmb("status", name, "--format", "json")).stdout)
    assert status["address"] == address and status["urls"]["lab"] == f"https://{address}/lab"
    assert ok(vmb("url", name)).stdout.strip() == out["urls"]["lab"]

    removed = json.loads(ok(vmb("delete", name, "--format", "json")).stdout)
    assert sorted(r["kind"] for r in removed) == ["port", "security group", "server"]
    assert vmbinder_ports(testbed, name) == []
    left = testbed.owned()
    assert [k for k, _, _ in left] == ["keypair"]
    testbed.admin.compute.delete_keypair(left[0][1], user_id=testbed.user_id)


def test_floating_ip_yes_on_the_provider_network_is_refused_with_nothing_made(testbed, vmb, name):
    res = vmb(*launch_args(name, "--network", "public", "--floating-ip", "yes", SOURCE))
    assert res.returncode == 3, res.stderr
    assert "a floating IP from public cannot reach a server on public itself" in res.stderr
    assert "leave --floating-ip at auto" in res.stderr and "nothing had been created" in res.stderr
    assert res.stdout == ""


def test_floating_ip_yes_on_a_tenant_network_makes_one_and_no_makes_none(testbed, vmb, name,
                                                                       ssh_key):
    yes = json.loads(ok(vmb(*launch_args(name, "--floating-ip", "yes", SOURCE))).stdout)
    (fip,) = floating_ips_of(testbed, name)
    assert fip.floating_ip_address == yes["address"] and fip.port_id
    assert vmbinder_ports(testbed, name) == []  # Nova made the port: the floating IP's own way

    private = name + "-p"
    res = ok(vmb(*launch_args(private, "--floating-ip", "no", SOURCE)))
    out = json.loads(res.stdout)
    address = out["address"]
    assert ipaddress.ip_address(address) in PRIVATE
    assert out["urls"]["lab"].startswith(f"https://{address}/lab?token=")
    assert f"warning: {private} gets no floating IP (--floating-ip no) and network private is " \
           f"not routable: its address {address} answers only from inside the cloud" in res.stderr
    assert floating_ips_of(testbed, private) == []
    (port,) = vmbinder_ports(testbed, private)
    assert port.device_id == testbed.server(private).id
    assert json.loads(ok(vmb("status", private, "--format", "json")).stdout)["address"] == address

    removed = json.loads(ok(vmb("delete", name, private, "--format", "json")).stdout)
    assert sorted(r["kind"] for r in removed) == ["floating IP", "port", "security group",
                                                   "server", "server"]
    only_the_keypair_is_left(testbed)


def test_a_failed_launch_on_the_provider_network_removes_its_port(testbed, vmb, name, quota):
    res = vmb("launch", "--no-wait", "--name", name, "--image", "debian-12", "--flavor",
              "x1.toobig", "--network", "public", SOURCE)
    assert res.returncode == 4, res.stderr
    assert "No valid host" in res.stderr
    assert "removed what it created: security group vmbinder, port 203.0.113." in res.stderr
    assert f"server {name}" in res.stderr
    assert vmbinder_ports(testbed, name) == []

    used = testbed.admin.network.get_quota(testbed.project_id, details=True).ports["used"]
    quota(network={"ports": used})  # the router's and the DHCP server's ports fill it
    res = vmb(*launch_args(name, "--network", "public", SOURCE))
    assert res.returncode == 4, res.stderr
    assert "creating a port on public failed: HTTP 409" in res.stderr and "port" in res.stderr
    assert "removed what it created: security group vmbinder" in res.stderr
    # conftest's check: nothing owned by vmbinder is left, ports included.


def test_a_workshop_seat_on_the_provider_network(testbed, vmb, quota, tmp_path, ssh_key):
    # The quota check counts a floating IP only for the seat that gets one.
    path = write_workshop(tmp_path, "wspn", 2, "overrides:\n  2: {network: public}\n")
    quota(network={"floating_ips": 0})
    res = vmb("workshop", "up", str(path), "--no-wait")
    assert res.returncode == 4, res.stderr
    assert "floating IPs: needs 1, 0 left of 0" in res.stderr and testbed.owned() == []
    quota(network={"floating_ips": 1})
    res = ok(vmb("workshop", "up", str(path), "--no-wait", "--format", "json", timeout=600))
    doc = json.loads(res.stdout)
    assert [s["result"] for s in doc["seats"]] == ["created", "created"], res.stdout
    seats = seats_on_cloud(testbed, "wspn")
    assert [ip.description for ip in floating_ips_of(testbed, "wspn-01")] == ["vmbinder:wspn-01"]
    assert floating_ips_of(testbed, "wspn-02") == []
    (port,) = vmbinder_ports(testbed, "wspn-02")
    assert port.device_id == seats["wspn-02"].id
    status = {s["seat"]: s for s in json.loads(ok(vmb("workshop", "status", str(path),
                                                       "--format", "json")).stdout)["seats"]}
    assert status["wspn-02"]["address"] == port.fixed_ips[0]["ip_address"]

    # The second seat deleted by hand: Nova leaves the port vmbinder made; down removes it.
    testbed.admin.compute.delete_server(seats["wspn-02"])
    testbed.admin.compute.wait_for_delete(seats["wspn-02"], wait=120)
    res = ok(vmb("workshop", "down", str(path), "--format", "json", timeout=600))
    kinds = sorted(r["kind"] for r in json.loads(res.stdout))
    assert kinds == ["floating IP", "port", "security group", "server"], kinds
    only_the_keypair_is_left(testbed)
