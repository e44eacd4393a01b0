"""Every command, run as a user would, against the real testbed."""

from __future__ import annotations

import base64
import ipaddress
import json

import pytest
import yaml

from .conftest import FLAVOR, IMAGE, SOURCE

PUBLIC = ipaddress.ip_network("203.0.113.0/24")


def launch_args(name, *extra):
    return ("launch", "--no-wait", "--format", "json", "--name", name,
            "--image", IMAGE, "--flavor", FLAVOR, *extra)


def ok(result):
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def test_launch_then_list_status_url_delete_each_from_a_new_process(testbed, vmb, name, ssh_key, home):
    res = ok(vmb(*launch_args(name, "--ref", "main", "--open", "index.ipynb", SOURCE)))
    out = json.loads(res.stdout)
    assert out["name"] == name and out["status"] == "active"
    address = out["address"]
    assert ipaddress.ip_address(address) in PUBLIC
    host = address  # the first name the guest tries, until it reports another
    assert out["urls"]["lab"].startswith(f"https://{host}/lab?token=")
    assert out["open_url"].startswith(f"https://{host}/lab/tree/index.ipynb?token=")
    token = out["open_url"].rsplit("token=", 1)[1]
    assert len(token) >= 32
    assert token not in res.stderr, "the token was printed in progress output"
    (debug_log,) = (home / "state" / "vmbinder" / "logs").glob(f"launch-{name}-*.log")
    logged = debug_log.read_text()
    assert "create:" in logged and token not in logged

    # What the cloud recorded, read back as the admin.
    server = testbed.server(name)
    assert "vmbinder" in server.tags
    meta = server.metadata
    assert meta["vmbinder:repo"] == SOURCE and meta["vmbinder:source"] == SOURCE
    assert meta["vmbinder:ref"] == "main" and meta["vmbinder:open-file"] == "index.ipynb"
    assert meta["vmbinder:repo2docker"] == "2026.4.0" and meta["vmbinder:version"]
    assert meta["vmbinder:owner"] == testbed.user_id
    assert meta["vmbinder:token"] == token
    assert server.key_name.startswith("vmbinder-")
    assert [g["name"] for g in server.security_groups] == ["vmbinder"]
    user_data = base64.b64decode(server.user_data).decode()
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    launch_doc = json.loads(files["/etc/vmbinder/launch.json"]["content"])
    assert launch_doc["repo"] == SOURCE and launch_doc["public_ip"] == address
    assert launch_doc["token"] == token
    # The floating IP is attached to this server's port.
    (fip,) = list(testbed.admin.network.ips(floating_ip_address=address))
    port = testbed.admin.network.get_port(fip.port_id)
    assert port.device_id == server.id
    # The security group lets in TCP 22, 80 and 443 and nothing else.
    group = testbed.admin.network.find_security_group("vmbinder", project_id=testbed.project_id)
    ingress = {(r["ethertype"], r["port_range_min"], r["port_range_max"], r["remote_ip_prefix"])
               for r in group.security_group_rules if r["direction"] == "ingress"}
    assert ingress == {(e, p, p, c) for p in (22, 80, 443)
                       for e, c in (("IPv4", "0.0.0.0/0"), ("IPv6", "::/0"))}

    # A second launch reuses the keypair and the security group.
    second = name + "-b"
    ok(vmb(*launch_args(second, SOURCE)))
    assert testbed.server(second).key_name == server.key_name
    assert len([g for g in testbed.owned() if g[0] == "security group"]) == 1

    listed_out = ok(vmb("list", "--format", "json")).stdout
    assert token not in listed_out
    listed = json.loads(listed_out)
    by_name = {d["name"]: d for d in listed}
    assert set(by_name) == {name, second}
    assert by_name[name]["address"] == address and by_name[name]["ref"] == "main"
    values = ok(vmb("list", "--format", "value")).stdout.splitlines()
    assert any(line.startswith(f"{name}\tactive\t{address}\t") for line in values)

    status = json.loads(ok(vmb("status", name, "--format", "json")).stdout)
    assert status["status"] == "active" and status["address"] == address
    assert status["repo2docker"] == "2026.4.0"
    assert status["urls"]["lab"] == f"https://{host}/lab"  # status never shows the token
    table = ok(vmb("status", name))
    assert name in table.stdout and address in table.stdout
    assert token not in table.stdout + table.stderr
    assert f"https://{host}/lab/tree/index.ipynb\n" in table.stdout

    assert ok(vmb("url", name)).stdout.strip() == out["open_url"]
    assert ok(vmb("url", name, "--ui", "tree")).stdout.strip() == f"https://{host}/tree?token={token}"
    as_json = json.loads(ok(vmb("url", name, "--ui", "lab", "--format", "json")).stdout)
    # The fake compute boots no guest: no certificate was reported.
    assert as_json == {"name": name, "ui": "lab", "url": out["urls"]["lab"], "certificate": None}
    nteract = vmb("url", name, "--ui", "nteract")
    assert nteract.returncode == 2 and "2023.06" in nteract.stderr and nteract.stdout == ""

    removed = json.loads(ok(vmb("delete", name, second, "--format", "json")).stdout)
    kinds = sorted(r["kind"] for r in removed)
    assert kinds == ["floating IP", "floating IP", "security group", "server", "server"]
    assert json.loads(ok(vmb("list", "--format", "json")).stdout) == []
    # The uploaded keypair is kept on purpose (upload once, reuse); remove it
    # the way a user would, so the leak check sees a clean project.
    left = testbed.owned()
    assert [k for k, _, _ in left] == ["keypair"] and left[0][1] == server.key_name
    testbed.admin.compute.delete_keypair(server.key_name, user_id=testbed.user_id)


@pytest.mark.parametrize("option, value, candidate", [
    ("--image", "no-such-image", "debian-12"),
    ("--flavor", "no-such-flavor", "m1.small"),
    ("--network", "no-such-network", "private"),
    ("--external-network", "no-such-net", "public"),
    ("--key-name", "no-such-key", "(none visible)"),
])
def test_unknown_cloud_objects_are_refused_with_the_candidates(vmb, name, option, value, candidate):
    args = dict(zip(("--image", "--flavor"), (IMAGE, FLAVOR), strict=True))
    args[option] = value
    flat = [x for kv in args.items() for x in kv]
    res = vmb("launch", "--no-wait", "--name", name, *flat, SOURCE)
    assert res.returncode == 3, res.stderr
    assert f"'{value}' not found" in res.stderr
    assert candidate in res.stderr and option in res.stderr
    assert res.stdout == ""


def test_compute_quota_exceeded_rolls_everything_back(vmb, name, quota, ssh_key):
    quota(compute={"instances": 0})
    res = vmb(*launch_args(name, SOURCE))
    assert res.returncode == 4, res.stderr
    assert "Quota exceeded for instances" in res.stderr and "HTTP 403" in res.stderr
    assert "request id req-" in res.stderr
    # It had made a security group, a keypair and a floating IP: all gone.
    assert "removed what it created: security group vmbinder, keypair" in res.stderr
    assert "floating IP" in res.stderr


def test_floating_ip_quota_exceeded_rolls_everything_back(vmb, name, quota):
    quota(network={"floating_ips": 0})
    res = vmb(*launch_args(name, SOURCE))
    assert res.returncode == 4, res.stderr
    assert "Quota exceeded" in res.stderr and "floatingip" in res.stderr
    assert "removed what it created: security group vmbinder" in res.stderr


def test_a_flavor_no_host_fits_shows_the_fault_and_rolls_back(vmb, name):
    res = vmb("launch", "--no-wait", "--name", name, "--image", IMAGE, "--flavor", "x1.toobig", SOURCE)
    assert res.returncode == 4, res.stderr
    assert "went to ERROR" in res.stderr and "No valid host" in res.stderr
    assert "removed what it created" in res.stderr and "server " + name in res.stderr


def test_a_second_server_with_the_same_name_is_refused(testbed, vmb, name):
    ok(vmb(*launch_args(name, SOURCE)))
    res = vmb(*launch_args(name, SOURCE))
    assert res.returncode == 2 and "already exists" in res.stderr
    assert f"vmbinder delete {name}" in res.stderr
    ok(vmb("delete", name))


def test_unknown_names_are_refused_before_anything_is_deleted(testbed, vmb, name):
    ok(vmb(*launch_args(name, SOURCE)))
    res = vmb("delete", name, "no-such-server")
    assert res.returncode == 2 and "no-such-server" in res.stderr and name in res.stderr
    testbed.server(name)  # still there
    for command in (("status", "nope"), ("url", "nope")):
        res = vmb(*command)
        assert res.returncode == 2 and "no vmbinder server named 'nope'" in res.stderr
    ok(vmb("delete", name))


def test_narrowed_ssh_uses_a_group_of_its_own(testbed, vmb, name):
    ok(vmb(*launch_args(name, "--ssh-cidr", "192.0.2.0/24", SOURCE)))
    (group,) = [g for g in testbed.admin.network.security_groups(project_id=testbed.project_id)
                if g.name.startswith("vmbinder")]
    assert group.name == "vmbinder-ssh-192-0-2-0-24"
    ssh = [r for r in group.security_group_rules
           if r["direction"] == "ingress" and r["port_range_min"] == 22]
    assert [r["remote_ip_prefix"] for r in ssh] == ["192.0.2.0/24"]
    ok(vmb("delete", name))


def test_expose_ssh_opens_port_22_alone_and_prints_the_tunnel_not_a_url(testbed, vmb, name):
    res = ok(vmb(*launch_args(name, "--expose", "ssh", SOURCE)))
    out = json.loads(res.stdout)
    assert out["expose"] == "ssh" and out["urls"] == {} and out["open_url"] is None
    server = testbed.server(name)
    assert server.metadata["vmbinder:expose"] == "ssh" and server.metadata["vmbinder:tls"] == "off"
    assert [g["name"] for g in server.security_groups] == ["vmbinder-ssh-only"]
    group = testbed.admin.network.find_security_group("vmbinder-ssh-only",
                                                      project_id=testbed.project_id)
    ingress = {(r["ethertype"], r["port_range_min"], r["port_range_max"], r["remote_ip_prefix"])
               for r in group.security_group_rules if r["direction"] == "ingress"}
    assert ingress == {("IPv4", 22, 22, "0.0.0.0/0"), ("IPv6", 22, 22, "::/0")}
    user_data = base64.b64decode(server.user_data).decode()
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    assert json.loads(files["/etc/vmbinder/launch.json"]["content"])["expose"] == "ssh"
    table = ok(vmb("status", name))
    assert f"vmbinder tunnel {name}" in table.stdout
    assert f"https://{out['address']}" not in table.stdout and "/lab" not in table.stdout
    url = vmb("url", name)
    assert url.returncode == 2 and f"vmbinder tunnel {name}" in url.stderr
    refused = vmb(*launch_args(name + "-b", "--expose", "ssh", "--hostname", "lab.example.org",
                               SOURCE))
    assert refused.returncode == 2 and "--hostname" in refused.stderr
    removed = json.loads(ok(vmb("delete", name, "--format", "json")).stdout)
    assert sorted(r["kind"] for r in removed) == ["floating IP", "security group", "server"]
