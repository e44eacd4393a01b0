"""Whose servers vmbinder shows and deletes, and the security group it trusts,
against the real testbed: two members of one project (clouds `testbed` and
`testbed-other`) and the administrator, in a project of their own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ADMIN, FLAVOR, IMAGE, MEMBER, SOURCE, connect
from .test_launch import launch_args, ok
from .test_workshop import write_workshop

OTHER = "testbed-other"


@pytest.fixture
def vmb_as(cli_env):
    """Run `python -m vmbinder ARGS` as the user of another cloud of clouds.yaml."""

    def run(cloud: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vmbinder", *args],
                              env={**cli_env, "OS_CLOUD": cloud}, capture_output=True, text=True,
                              timeout=timeout, check=False)

    return run


def names(result) -> set[str]:
    return {d["name"] for d in json.loads(ok(result).stdout)}


# -- whose servers -------------------------------------------------------------------

def test_another_members_server_is_hidden_refused_and_deleted_only_with_force(
        testbed, vmb, vmb_as, name):
    ok(vmb(*launch_args(name, SOURCE)))
    theirs = "b-" + name
    ok(vmb_as(OTHER, *launch_args(theirs, SOURCE)))
    other_id = connect(OTHER).current_user_id
    assert testbed.server(theirs).metadata["vmbinder:owner"] == other_id

    # Each sees their own; --all shows the project's, with who launched each.
    assert names(vmb("list", "--format", "json")) == {name}
    assert names(vmb_as(OTHER, "list", "--format", "json")) == {theirs}
    everyone = json.loads(ok(vmb_as(OTHER, "list", "--all", "--format", "json")).stdout)
    assert {d["name"]: d["owner"] for d in everyone} == {name: testbed.user_id, theirs: other_id}
    table = ok(vmb_as(OTHER, "list"))
    assert f" {name} " not in table.stdout and f" {theirs} " in table.stdout
    assert "1 more launched by other users of the project: vmbinder list --all" in table.stderr
    table = ok(vmb_as(OTHER, "list", "--all"))
    assert f" {name} " in table.stdout and "owner" in table.stdout
    assert testbed.user_id in table.stdout and " you " in table.stdout

    # status and url of the other member's server: refused without --all.
    for command in ("status", "url"):
        res = vmb_as(OTHER, command, name)
        assert res.returncode == 2 and res.stdout == "", res.stderr
        assert "launched by another user of the project" in res.stderr
        assert testbed.user_id in res.stderr and f"vmbinder {command} --all {name}" in res.stderr
    status = json.loads(ok(vmb_as(OTHER, "status", "--all", name, "--format", "json")).stdout)
    assert status["name"] == name and status["owner"] == testbed.user_id
    assert "token=" in ok(vmb_as(OTHER, "url", "--all", name)).stdout

    # delete: refused without --force, for every name given, and nothing is deleted.
    res = vmb_as(OTHER, "delete", theirs, name)
    assert res.returncode == 2, res.stderr
    assert "not deleting servers another user of the project launched" in res.stderr
    assert f"vmbinder delete --force {theirs} {name}" in res.stderr
    testbed.server(name)
    testbed.server(theirs)  # their own, named with it: not deleted either
    removed = json.loads(ok(vmb_as(OTHER, "delete", "--force", theirs, name,
                                   "--format", "json")).stdout)
    assert sorted(r["kind"] for r in removed) == [
        "floating IP", "floating IP", "security group", "server", "server"]
    assert names(vmb("list", "--all", "--format", "json")) == set()


def test_a_server_with_no_recorded_owner_and_an_old_group_name_is_everyones(
        testbed, vmb_as, name):
    # As a vmbinder before these checks made it: no owner recorded, and the group
    # named the old way for --ssh-cidr 2001:db8::/64 (runs of other characters as "-").
    member = connect(MEMBER)
    old = member.network.create_security_group(name="vmbinder-ssh-2001-db8-64",
                                               description="vmbinder: ingress 22, 80 and 443 only")
    (image,) = member.image.images(name=IMAGE)
    flavor = member.compute.find_flavor(FLAVOR, ignore_missing=False)
    private = member.network.find_network("private", ignore_missing=False)
    server = member.compute.create_server(
        name=name, image_id=image.id, flavor_id=flavor.id, networks=[{"uuid": private.id}],
        security_groups=[{"name": old.name}], tags=["vmbinder"],
        metadata={"vmbinder:repo": SOURCE, "vmbinder:tls": "acme"})
    member.compute.wait_for_server(server, wait=120)

    assert names(vmb_as(OTHER, "list", "--format", "json")) == {name}
    ok(vmb_as(OTHER, "status", name))
    removed = json.loads(ok(vmb_as(OTHER, "delete", name, "--format", "json")).stdout)
    assert ("security group", old.name) in {(r["kind"], r["name"]) for r in removed}


def test_workshop_seats_are_seen_by_every_member_and_removed_by_another_only_with_force(
        testbed, vmb, vmb_as, tmp_path):
    path = write_workshop(tmp_path, "wsscope", 2)
    ok(vmb("workshop", "up", str(path), "--no-wait", "--format", "json", timeout=600))
    status = json.loads(ok(vmb_as(OTHER, "workshop", "status", str(path), "--format", "json")).stdout)
    assert [s["state"] for s in status["seats"]] == ["active", "active"]
    res = vmb_as(OTHER, "workshop", "down", str(path))
    assert res.returncode == 2, res.stderr
    assert "not deleting seats another user of the project launched" in res.stderr
    assert f"vmbinder workshop down --force {path}" in res.stderr
    testbed.server("wsscope-01")
    testbed.server("wsscope-02")
    removed = json.loads(ok(vmb_as(OTHER, "workshop", "down", "--force", str(path),
                                   "--format", "json")).stdout)
    assert sorted(r["name"] for r in removed if r["kind"] == "server") == ["wsscope-01", "wsscope-02"]


def test_an_administrators_delete_touches_only_its_own_projects_floating_ips_and_ports(
        testbed, vmb_as, name):
    """An administrator's credentials list every project's floating IPs and ports:
    those of a server of the same name in the member's project must stay."""
    admin, member = testbed.admin, connect(MEMBER)
    admin_project = admin.current_project_id
    public = member.network.find_network("public", ignore_missing=False)
    private = member.network.find_network("private", ignore_missing=False)
    # What a launch of the same name left in the member's project (described as
    # vmbinder describes what it makes for a server), attached to nothing.
    fip = member.network.create_ip(floating_network_id=public.id, description=f"vmbinder:{name}")
    port = member.network.create_port(network_id=private.id, description=f"vmbinder:{name}")
    try:
        # The administrator's server sits on the shared network: vmbinder makes its port.
        ok(vmb_as(ADMIN, *launch_args(name, "--network", "public", "--floating-ip", "no", SOURCE)))
        removed = json.loads(ok(vmb_as(ADMIN, "delete", name, "--format", "json")).stdout)
        assert sorted(r["kind"] for r in removed) == ["port", "security group", "server"]
        assert port.id not in {r["id"] for r in removed}
        assert admin.network.get_ip(fip.id).description == f"vmbinder:{name}"
        assert admin.network.get_port(port.id).description == f"vmbinder:{name}"
    finally:
        member.network.delete_ip(fip, ignore_missing=True)
        member.network.delete_port(port, ignore_missing=True)
        left = [("server", s.name) for s in admin.compute.servers(tags="vmbinder")]
        left += [("port", p.id) for p in admin.network.ports(project_id=admin_project)
                 if (p.description or "").startswith("vmbinder:")]
        left += [("floating IP", i.id) for i in admin.network.ips(project_id=admin_project)
                 if (i.description or "").startswith("vmbinder:")]
        groups = [g for g in admin.network.security_groups(project_id=admin_project)
                  if g.name.startswith("vmbinder")]
        for group in groups:
            admin.network.delete_security_group(group, ignore_missing=True)
        left += [("security group", g.name) for g in groups]
    assert left == [], f"left in the administrator's project: {left}"


# -- the security group ----------------------------------------------------------------

def premade_group(rules: list[dict], name: str = "vmbinder"):
    """A group of vmbinder's name in the member's project, made by hand."""
    member = connect(MEMBER)
    group = member.network.create_security_group(name=name)
    for rule in rules:
        member.network.create_security_group_rule(security_group_id=group.id,
                                                  direction="ingress", **rule)
    return member, member.network.get_security_group(group.id)


WANTED = [{"protocol": "tcp", "ethertype": eth, "port_range_min": port, "port_range_max": port}
          for port in (22, 80, 443) for eth in ("IPv4", "IPv6")]


def test_a_group_that_lets_in_more_is_refused_before_anything_is_made(
        testbed, vmb, name, ssh_key, tmp_path):
    member, group = premade_group([*WANTED, {
        "protocol": "tcp", "ethertype": "IPv4", "port_range_min": 8080, "port_range_max": 8080,
        "remote_ip_prefix": "0.0.0.0/0"}])
    default = member.network.find_security_group("default", project_id=testbed.project_id,
                                                 ignore_missing=False)
    member.network.create_security_group_rule(security_group_id=group.id, direction="ingress",
                                              ethertype="IPv6", remote_group_id=default.id)
    extra = [r["id"] for r in member.network.get_security_group(group.id).security_group_rules
             if r["direction"] == "ingress" and r["port_range_min"] not in (22, 80, 443)]
    try:
        res = vmb(*launch_args(name, SOURCE))
        assert res.returncode == 3, res.stderr
        assert f"security group vmbinder ({group.id}) lets in more than vmbinder asks for" \
            in res.stderr
        assert "tcp 8080 from 0.0.0.0/0 (IPv4)" in res.stderr
        assert "any protocol from group default (IPv6)" in res.stderr
        assert "openstack security group rule delete" in res.stderr
        assert all(rule_id in res.stderr for rule_id in extra)
        assert f"openstack security group delete {group.id}" in res.stderr
        assert "nothing had been created" in res.stderr
        # Nothing was made (no keypair either): only the group made by hand is there.
        assert testbed.owned() == [("security group", group.id, "vmbinder")]

        # A workshop refuses it before any seat is made.
        path = write_workshop(tmp_path, "wswide", 2)
        res = vmb("workshop", "up", str(path), "--no-wait", timeout=600)
        assert res.returncode == 3, res.stderr
        assert "tcp 8080 from 0.0.0.0/0 (IPv4)" in res.stderr
        assert testbed.owned() == [("security group", group.id, "vmbinder")]

        # With the extra rules removed, as the hint says, the group is used.
        for rule_id in extra:
            member.network.delete_security_group_rule(rule_id)
        ok(vmb(*launch_args(name, SOURCE)))
        assert [g["name"] for g in testbed.server(name).security_groups] == ["vmbinder"]
        ok(vmb("delete", name))
    finally:
        member.network.delete_security_group(group.id, ignore_missing=True)
        for kind, key, _ in testbed.owned():
            if kind == "keypair":
                testbed.admin.compute.delete_keypair(key, user_id=testbed.user_id)


@pytest.mark.parametrize("given, same, group_name, prefix, ethertype", [
    ("10.1.2.3/24", "10.1.2.200/24", "vmbinder-ssh-10-1-2-0-24", "10.1.2.0/24", "IPv4"),
    ("2001:db8:0:7::1/64", "2001:db8:0:7::abcd/64",
     "vmbinder-ssh-2001-0db8-0000-0007-0000-0000-0000-0000-64", "2001:db8:0:7::/64", "IPv6"),
])
def test_narrowed_ssh_uses_a_group_named_after_the_network(
        testbed, vmb, name, given, same, group_name, prefix, ethertype):
    ok(vmb(*launch_args(name, "--ssh-cidr", given, SOURCE)))
    (group,) = [g for g in testbed.admin.network.security_groups(project_id=testbed.project_id)
                if g.name.startswith("vmbinder")]
    assert group.name == group_name
    assert [g["name"] for g in testbed.server(name).security_groups] == [group_name]
    ssh = [(r["ethertype"], r["remote_ip_prefix"]) for r in group.security_group_rules
           if r["direction"] == "ingress" and r["port_range_min"] == 22]
    assert ssh == [(ethertype, prefix)]
    # Another address of the same network shares the group.
    other = name + "-b"
    ok(vmb(*launch_args(other, "--ssh-cidr", same, SOURCE)))
    assert [g["name"] for g in testbed.server(other).security_groups] == [group_name]
    assert len([g for g in testbed.owned() if g[0] == "security group"]) == 1
    removed = json.loads(ok(vmb("delete", name, other, "--format", "json")).stdout)
    assert ("security group", group_name) in {(r["kind"], r["name"]) for r in removed}
