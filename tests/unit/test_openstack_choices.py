"""What the OpenStack provider decides from listed records: where a server goes
(its network, whether it gets a floating IP), the quota a batch needs, and how a
server is created (its config drive, its port). The cloud calls themselves are
tested against the testbed (tests/functional); the default image is in
test_image_choice."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import requests

from vmbinder import errors
from vmbinder.providers import base
from vmbinder.providers.base import Ledger, Resolved
from vmbinder.providers.openstack import common as osp
from vmbinder.providers.openstack import network, quotas, resolve
from vmbinder.providers.openstack.provider import OpenStackProvider, refuses_config_drive
from vmbinder.sources import Source
from vmbinder.spec import CloudChoice, make_spec

SOURCE = Source("https://github.com/o/r", "git")


# -- where a server goes -----------------------------------------------------------------

PROJECT = "p-demo"


def net(name, *, external=False, shared=False, project=PROJECT, cidrs=("192.0.2.0/24",)):
    return SimpleNamespace(id=f"id-{name}", name=name, is_router_external=external,
                           is_shared=shared, project_id=project, cidrs=cidrs)


def conn_with_networks(*nets):
    by_id = {n.id: n for n in nets}
    asked = []

    def subnets(network_id):
        asked.append(network_id)
        return iter(SimpleNamespace(cidr=c) for c in by_id[network_id].cidrs)

    return SimpleNamespace(current_project_id=PROJECT, asked=asked, network=SimpleNamespace(
        networks=lambda: iter(nets), subnets=subnets))


PRIVATE = net("private")
PUBLIC = net("public", external=True, shared=True, project="p-admin", cidrs=("203.0.113.0/24",))


def test_a_tenant_network_gets_a_floating_ip_from_the_only_external_one():
    place = resolve.networks(conn_with_networks(PRIVATE, PUBLIC), None, None)
    assert (place.network.name, place.routable, place.external.name, place.floating) == \
        ("private", False, "public", True)


def test_a_shared_external_network_is_routable_and_gets_no_floating_ip():
    conn = conn_with_networks(PRIVATE, PUBLIC)
    place = resolve.networks(conn, "public", None)
    assert (place.network.name, place.routable, place.external, place.floating) == \
        ("public", True, None, False)
    assert conn.asked == []  # external is enough: its subnets are not read


@pytest.mark.parametrize("cidrs, routable", [
    (("198.51.100.0/24",), False), (("10.0.0.0/16",), False),
    (("10.1.0.0/16", "2a00:1450:4001::/48"), True), (("8.8.8.0/24",), True),
])
def test_a_shared_network_is_routable_when_a_subnet_holds_global_addresses(cidrs, routable):
    campus = net("campus", shared=True, project="p-admin", cidrs=cidrs)
    conn = conn_with_networks(PRIVATE, PUBLIC, campus)
    place = resolve.networks(conn, "campus", None)
    assert place.routable is routable and place.floating is (not routable)
    assert conn.asked == [campus.id]


def test_floating_ip_yes_and_no_override_the_choice():
    campus = net("campus", shared=True, project="p-admin", cidrs=("8.8.8.0/24",))
    conn = conn_with_networks(PRIVATE, PUBLIC, campus)
    assert resolve.networks(conn, "campus", None, "yes").external.name == "public"
    place = resolve.networks(conn, "private", None, "no")
    assert (place.routable, place.floating, place.external) == (False, False, None)


def test_a_floating_ip_from_the_servers_own_network_is_refused():
    with pytest.raises(errors.ConfigError) as info:
        resolve.networks(conn_with_networks(PRIVATE, PUBLIC), "public", None, "yes")
    assert "cannot reach a server on public itself" in info.value.message
    assert "leave --floating-ip at auto" in info.value.hint


def test_an_external_network_not_shared_with_the_project_is_refused():
    closed = net("ext-closed", external=True, project="p-admin")
    with pytest.raises(errors.ConfigError) as info:
        resolve.networks(conn_with_networks(PRIVATE, closed), "ext-closed", None)
    assert "external and not shared with this project" in info.value.message
    assert "private" in info.value.hint


def test_without_a_tenant_network_the_only_shared_external_one_is_taken():
    place = resolve.networks(conn_with_networks(PUBLIC), None, None)
    assert (place.network.name, place.floating) == ("public", False)
    other = net("public2", external=True, shared=True, project="p-admin")
    with pytest.raises(errors.ConfigError) as info:
        resolve.networks(conn_with_networks(PUBLIC, other), None, None)
    assert info.value.message == "no --network given and there are several"
    assert info.value.hint == "choose one with --network: public, public2"


def test_an_external_network_named_is_checked_even_when_no_floating_ip_is_made():
    with pytest.raises(errors.ConfigError) as info:
        resolve.networks(conn_with_networks(PRIVATE, PUBLIC), "public", "nope")
    assert "external network 'nope' not found" in info.value.message


# -- records -----------------------------------------------------------------------------

def test_a_servers_address_is_its_floating_ip_else_the_one_vmbinder_recorded():
    fixed = {"public": [{"addr": "203.0.113.40", "OS-EXT-IPS:type": "fixed"}]}
    floating = {"private": [{"addr": "192.0.2.5", "OS-EXT-IPS:type": "fixed"},
                            {"addr": "203.0.113.20", "OS-EXT-IPS:type": "floating"}]}
    assert osp.server_address(fixed, {"vmbinder:address": "203.0.113.40"}) == "203.0.113.40"
    assert osp.server_address(floating, {"vmbinder:address": "192.0.2.5"}) == "203.0.113.20"
    assert osp.server_address(fixed, {}) is None
    # Given back: none, though Nova's record of the addresses still lists it a while.
    assert osp.server_address(floating, {"vmbinder:released": "net-1"}) is None
    assert osp.server_address(floating, {"vmbinder:released": ""}) == "203.0.113.20"


def test_a_ports_address_is_its_ipv4_one_first():
    port = SimpleNamespace(fixed_ips=[{"subnet_id": "a", "ip_address": "2001:db8::5"},
                                      {"subnet_id": "b", "ip_address": "203.0.113.9"}])
    assert network.port_address(port) == "203.0.113.9"
    assert network.port_address(SimpleNamespace(fixed_ips=[{"ip_address": "2001:db8::5"}])) == \
        "2001:db8::5"
    assert network.port_address(SimpleNamespace(fixed_ips=[])) is None


def http_error(status: int, text: str):
    from openstack import exceptions

    response = requests.Response()
    response.status_code = status
    response.headers["x-openstack-request-id"] = "req-1"
    return exceptions.HttpException(text, response=response, details=text)


def test_a_refusal_leaves_no_sweep_in_the_ledger_and_a_lost_answer_does():
    from openstack.exceptions import HttpException

    ledger = Ledger()
    for status in (400, 403, 409, 429):
        with pytest.raises(HttpException), osp.in_flight(ledger, "server", "s", lambda: None, "c"):
            raise http_error(status, "no")
    assert ledger.items == []
    for status in (408, 500, 504):
        with pytest.raises(HttpException), osp.in_flight(ledger, "server", "s", lambda: None, "c"):
            raise http_error(status, "maybe")
    assert len(ledger.items) == 3


@pytest.mark.parametrize("status, text, refused", [
    (400, "Invalid input for field/attribute config_drive.", True),
    (400, "Config drive is not supported on this cloud", True),
    (400, "Invalid key_name provided.", False),
    (403, "config_drive is forbidden by policy", False),
])
def test_only_novas_400_about_the_config_drive_counts_as_refusing_it(status, text, refused):
    exc = errors.CloudError(f"creating server s failed: HTTP {status}: {text}",
                            details={"http_status": status})
    assert refuses_config_drive(exc) is refused


# -- creating a server -----------------------------------------------------------------

class Compute:
    """Nova's create call, refusing config drives when asked to."""

    def __init__(self, refuse: str | None = None):
        self.refuse, self.created = refuse, []

    def create_server(self, **attrs):
        self.created.append(attrs)
        if self.refuse and attrs.get("config_drive"):
            raise http_error(400, self.refuse)
        return SimpleNamespace(id=f"srv-{len(self.created)}", name=attrs["name"], status="BUILD",
                               task_state=None, addresses={}, metadata=attrs["metadata"],
                               fault=None, created_at=None, flavor=None)


def create(compute, *, config_drive="auto", port_id=None):
    conn = SimpleNamespace(current_user_id="u-1", compute=compute)
    provider = OpenStackProvider(conn=conn)
    spec = make_spec(SOURCE, name="demo", cloud=CloudChoice(config_drive=config_drive))
    resolved = Resolved("img", "debian-12", "flv", "m1.small", "net-1", "public", None, None,
                        None, ("vmbinder",), "203.0.113.40", None, port_id=port_id)
    ledger = Ledger()
    return provider.create(spec, resolved, "#cloud-config\n", ledger), ledger


def test_a_config_drive_is_asked_for_by_default_and_recorded():
    compute = Compute()
    server, ledger = create(compute)
    (attrs,) = compute.created
    assert attrs["config_drive"] is True
    assert server.meta("user-data-via") == "config-drive"
    assert [(i.kind, i.id) for i in ledger.items] == [("server", "srv-1")]


def test_a_cloud_that_refuses_config_drives_gets_the_server_without_one():
    compute = Compute(refuse="Invalid input for field/attribute config_drive.")
    server, ledger = create(compute)
    first, second = compute.created
    assert first["config_drive"] is True and "config_drive" not in second
    assert server.meta("user-data-via") == "metadata-service"
    assert [(i.kind, i.id) for i in ledger.items] == [("server", "srv-2")]  # no sweep left


def test_config_drive_yes_is_never_dropped_and_no_never_asks():
    with pytest.raises(errors.CloudError) as info:
        create(Compute(refuse="config_drive is not supported"), config_drive="yes")
    assert "HTTP 400" in info.value.message
    compute = Compute(refuse="config_drive is not supported")
    server, _ = create(compute, config_drive="no")
    (attrs,) = compute.created
    assert "config_drive" not in attrs and server.meta("user-data-via") == "metadata-service"


def test_a_server_on_its_own_port_boots_with_it_and_records_its_address():
    compute = Compute()
    server, _ = create(compute, port_id="port-1")
    (attrs,) = compute.created
    assert attrs["networks"] == [{"port": "port-1"}] and "security_groups" not in attrs
    assert server.address == "203.0.113.40" and server.meta("address") == "203.0.113.40"
    compute = Compute()
    server, _ = create(compute)
    (attrs,) = compute.created
    assert attrs["networks"] == [{"uuid": "net-1"}]
    assert attrs["security_groups"] == [{"name": "vmbinder"}]
    assert server.address is None and server.meta("address") is None


@pytest.mark.parametrize("asked, has_config_drive, recorded", [
    ("config-drive", "True", "config-drive"),
    ("metadata-service", "", "metadata-service"),
    ("metadata-service", "True", "config-drive"),  # the image or the cloud forced one
    ("config-drive", "", "metadata-service"),
])
def test_wait_records_which_way_the_user_data_really_went(asked, has_config_drive, recorded):
    set_calls = []
    raw = SimpleNamespace(id="srv-1", name="demo", status="ACTIVE", task_state=None,
                          addresses={}, metadata={"vmbinder:user-data-via": asked}, fault=None,
                          created_at=None, flavor=None, has_config_drive=has_config_drive)
    compute = SimpleNamespace(wait_for_server=lambda *a, **kw: raw,
                              set_server_metadata=lambda sid, **meta: set_calls.append(meta))
    provider = OpenStackProvider(conn=SimpleNamespace(compute=compute))
    resolved = Resolved("img", "debian-12", "flv", "m1.small", "net-1", "public", None, None,
                        None, ("vmbinder",), "203.0.113.40", None, port_id="port-1")
    server = provider.wait(provider._record(raw), resolved, 10, Ledger())
    assert server.meta("user-data-via") == recorded
    assert set_calls == ([] if asked == recorded else [{"vmbinder:user-data-via": recorded}])


# -- quotas ---------------------------------------------------------------------------

def test_floating_ips_are_counted_for_the_seats_that_get_one_and_ports_for_every_seat():
    limits = SimpleNamespace(instances=10, instances_used=0, total_cores=20, total_cores_used=0,
                             total_ram=51200, total_ram_used=0)
    quota = SimpleNamespace(floating_ips={"limit": 2, "used": 1}, ports={"limit": 10, "used": 4},
                            security_groups={"limit": 10, "used": 1},
                            security_group_rules={"limit": 100, "used": 4})
    group = SimpleNamespace(security_group_rules=[
        {"direction": "ingress", "protocol": "tcp", "ethertype": eth, "port_range_min": p,
         "port_range_max": p, "remote_ip_prefix": None} for p in (22, 80, 443)
        for eth in ("IPv4", "IPv6")])
    conn = SimpleNamespace(
        current_project_id=PROJECT,
        compute=SimpleNamespace(get_limits=lambda: SimpleNamespace(absolute=limits)),
        network=SimpleNamespace(get_quota=lambda project, details: quota,
                                find_security_group=lambda name, **kw: group))
    flavor = SimpleNamespace(name="m1.small", vcpus=1, ram=2048)
    groups = [("0.0.0.0/0", "https")] * 6
    needs = {n.resource: n for n in quotas.check_quota(conn, [flavor] * 6, groups, floating_ips=1)}
    assert (needs["floating IPs"].needed, needs["ports"].needed) == (1, 6)
    with pytest.raises(errors.QuotaExceeded) as info:
        quotas.check_quota(conn, [flavor] * 6, [("0.0.0.0/0", "https")] * 6, floating_ips=2)
    assert "floating IPs: needs 2, 1 left of 2" in info.value.message
    assert "ports" not in info.value.message
    assert not {"volumes", "volume GB"} & needs.keys()  # no work volumes made: Cinder is not asked


def test_work_volumes_are_counted_against_cinders_limits():
    limits = SimpleNamespace(instances=10, instances_used=0, total_cores=20, total_cores_used=0,
                             total_ram=51200, total_ram_used=0)
    quota = SimpleNamespace(floating_ips={"limit": -1}, ports={"limit": -1},
                            security_groups={"limit": -1}, security_group_rules={"limit": -1})
    cinder = SimpleNamespace(max_total_volumes=10, total_volumes_used=7,
                             max_total_volume_gigabytes=100, total_gigabytes_used=90)
    conn = SimpleNamespace(
        current_project_id=PROJECT,
        compute=SimpleNamespace(get_limits=lambda: SimpleNamespace(absolute=limits)),
        network=SimpleNamespace(get_quota=lambda project, details: quota,
                                find_security_group=lambda name, **kw: None),
        block_storage=SimpleNamespace(get_limits=lambda: SimpleNamespace(absolute=cinder)))
    flavor = SimpleNamespace(name="m1.small", vcpus=1, ram=2048)
    groups = [("0.0.0.0/0", "https")] * 3
    needs = {n.resource: n for n in quotas.check_quota(conn, [flavor] * 3, groups, floating_ips=0,
                                                        volume_sizes=[3, 3, 3])}
    assert (needs["volumes"].needed, needs["volume GB"].needed) == (3, 9)
    with pytest.raises(errors.QuotaExceeded) as info:
        quotas.check_quota(conn, [flavor] * 3, groups, floating_ips=0, volume_sizes=[6, 5])
    assert info.value.message.endswith("\n  volume GB: needs 11, 10 left of 100"), info.value.message
    assert "volumes:" not in info.value.message


# -- the security group ------------------------------------------------------------------

def ingress(port, prefix=None, *, eth="IPv4", protocol="tcp", rule_id=None, **extra):
    return {"id": rule_id or f"r-{port}-{eth}", "direction": "ingress", "protocol": protocol,
            "ethertype": eth, "port_range_min": port, "port_range_max": port,
            "remote_ip_prefix": prefix, "remote_group_id": None, **extra}


WANTED = [ingress(p, eth=e) for p in (22, 80, 443) for e in ("IPv4", "IPv6")]


class Neutron:
    """The security group calls of a project's network API, recording what is made."""

    def __init__(self, groups=(), added_by_the_cloud=()):
        self.groups = {g.id: g for g in groups}
        self.added_by_the_cloud = list(added_by_the_cloud)
        self.made, self.rules, self.deleted_rules = [], [], []

    def security_groups(self, name, project_id):
        assert project_id == PROJECT
        return iter(g for g in self.groups.values() if g.name == name)

    def find_security_group(self, name_or_id, ignore_missing=True, **query):
        return self.groups[name_or_id]

    def create_security_group(self, name, description):
        group = SimpleNamespace(id=f"sg-{len(self.made) + 1}", name=name,
                                security_group_rules=list(self.added_by_the_cloud))
        self.made.append(group)
        return group

    def create_security_group_rules(self, rules):
        self.rules += rules

    def delete_security_group_rule(self, rule_id, ignore_missing=True):
        self.deleted_rules.append(rule_id)


def group_of(name, rules, group_id="sg-0"):
    return SimpleNamespace(id=group_id, name=name, security_group_rules=rules)


def prepare_group(neutron, ssh_cidr="0.0.0.0/0"):
    conn = SimpleNamespace(current_project_id=PROJECT, network=neutron)
    spec = make_spec(SOURCE, name="demo", cloud=CloudChoice(ssh_cidr=ssh_cidr))
    ledger = Ledger()
    return network.security_group(conn, spec, ledger, settle_timeout=1), ledger


def test_a_group_that_lets_in_more_is_refused_listing_each_extra_rule_and_the_fix():
    default = group_of("default", [], "sg-default")
    mine = group_of("vmbinder", [
        *WANTED, {"id": "e1", "direction": "egress", "protocol": None, "ethertype": "IPv4"},
        ingress(8080, "0.0.0.0/0", rule_id="x1"),
        ingress(None, protocol=None, rule_id="x2", remote_group_id="sg-default")])
    neutron = Neutron([mine, default])
    with pytest.raises(errors.ConfigError) as info:
        prepare_group(neutron)
    message, hint = info.value.message, info.value.hint
    assert "security group vmbinder (sg-0) lets in more than vmbinder asks for" in message
    assert "  tcp 8080 from 0.0.0.0/0 (IPv4)  (rule x1)" in message
    assert "  any protocol from group default (IPv4)  (rule x2)" in message
    assert "egress" not in message and "e1" not in message
    assert "openstack security group rule delete x1 x2" in hint
    assert "openstack security group delete sg-0" in hint
    assert info.value.exit_code == 3
    assert (neutron.made, neutron.rules) == ([], [])  # nothing was made, nothing added


def test_a_group_with_fewer_rules_gets_the_missing_ones_and_egress_is_left_alone():
    mine = group_of("vmbinder", [*WANTED[:4], {"id": "e1", "direction": "egress",
                                               "protocol": None, "ethertype": "IPv6"}])
    neutron = Neutron([mine])
    group, ledger = prepare_group(neutron)
    assert group is mine and neutron.made == [] and ledger.items == []
    assert sorted((r["ethertype"], r["port_range_min"]) for r in neutron.rules) == [
        ("IPv4", 443), ("IPv6", 443)]


@pytest.mark.parametrize("given, name, prefix, eth", [
    ("10.1.2.3/24", "vmbinder-ssh-10-1-2-0-24", "10.1.2.0/24", "IPv4"),
    ("2001:db8:0:7::1/64", "vmbinder-ssh-2001-0db8-0000-0007-0000-0000-0000-0000-64",
     "2001:db8:0:7::/64", "IPv6"),
])
def test_a_new_group_is_named_after_the_network_and_its_ssh_rule_uses_it(given, name, prefix, eth):
    # A cloud whose new groups come with an ingress rule of its own: removed from
    # vmbinder's group, which lets in only what vmbinder asks for.
    neutron = Neutron(added_by_the_cloud=[ingress(None, protocol=None, rule_id="c1",
                                                  remote_group_id="sg-1")])
    group, ledger = prepare_group(neutron, given)
    assert group.name == name and [i.kind for i in ledger.items] == ["security group"]
    assert neutron.deleted_rules == ["c1"]
    ssh = [r for r in neutron.rules if r["port_range_min"] == 22]
    assert [(r["ethertype"], r["remote_ip_prefix"]) for r in ssh] == [(eth, prefix)]
    assert len(neutron.rules) == 5  # 80 and 443 for both, 22 for the network


def test_the_quota_check_of_a_batch_refuses_a_group_that_lets_in_more():
    limits = SimpleNamespace(instances=10, instances_used=0, total_cores=20, total_cores_used=0,
                             total_ram=51200, total_ram_used=0)
    quota = SimpleNamespace(floating_ips={"limit": 10}, ports={"limit": 10},
                            security_groups={"limit": 10}, security_group_rules={"limit": 100})
    wide = group_of("vmbinder", [*WANTED, ingress(8080, "0.0.0.0/0", rule_id="x1")])
    conn = SimpleNamespace(
        current_project_id=PROJECT,
        compute=SimpleNamespace(get_limits=lambda: SimpleNamespace(absolute=limits)),
        network=SimpleNamespace(get_quota=lambda project, details: quota,
                                find_security_group=lambda name, **kw: wide))
    flavor = SimpleNamespace(name="m1.small", vcpus=1, ram=2048)
    with pytest.raises(errors.ConfigError) as info:
        quotas.check_quota(conn, [flavor] * 3, [("0.0.0.0/0", "https")] * 3, floating_ips=3)
    assert "tcp 8080 from 0.0.0.0/0 (IPv4)" in info.value.message


def test_the_group_is_checked_before_the_keypair_is_made(monkeypatch):
    made = []
    place = SimpleNamespace(network=SimpleNamespace(id="n", name="private"), external=None,
                            floating=False, routable=True)
    monkeypatch.setattr(resolve, "image", lambda conn, wanted: SimpleNamespace(id="i", name="i"))
    monkeypatch.setattr(resolve, "flavor", lambda conn, wanted, image: SimpleNamespace(id="f", name="f"))
    monkeypatch.setattr(resolve, "networks", lambda *a: place)
    monkeypatch.setattr(resolve, "keypair", lambda conn, spec, ledger: made.append("keypair"))

    def refuse(*a):
        raise errors.ConfigError("security group vmbinder lets in more than vmbinder asks for")

    monkeypatch.setattr(network, "security_group", refuse)
    provider = OpenStackProvider(conn=SimpleNamespace(current_project_id=PROJECT))
    monkeypatch.setattr(provider, "_refuse_duplicate", lambda name: None)
    with pytest.raises(errors.ConfigError):
        provider.prepare(make_spec(SOURCE, name="demo"), Ledger())
    assert made == []


# -- this project's floating IPs and ports only -------------------------------------------

class Listing:
    """Neutron's list calls, recording what each was asked; an administrator's
    credentials would list every project's without project_id."""

    def __init__(self):
        self.asked = []

    def ips(self, **query):
        self.asked.append(("ips", query))
        return iter([SimpleNamespace(id="fip-1", port_id=None, description="vmbinder:demo",
                                     floating_ip_address="203.0.113.9")])

    def ports(self, **query):
        self.asked.append(("ports", query))
        return iter([SimpleNamespace(id="port-1", device_id=None, description="vmbinder:demo",
                                     fixed_ips=[], security_group_ids=[])])

    def delete_ip(self, ip, ignore_missing=True):
        pass

    def delete_port(self, port, ignore_missing=True):
        pass


def test_every_floating_ip_and_port_lookup_asks_for_this_project_only():
    listing = Listing()
    conn = SimpleNamespace(current_project_id=PROJECT, network=listing)
    server = base.Server("srv-1", "demo", base.ACTIVE, "ACTIVE", None, {})
    network.floating_ips(conn, server)
    network.server_ports(conn, server)
    network.release_orphans(conn, ["demo"])
    assert listing.asked and all(query.get("project_id") == PROJECT for _, query in listing.asked), \
        listing.asked


def test_the_owner_recorded_and_compared_is_the_keystone_user():
    provider = OpenStackProvider(conn=SimpleNamespace(current_user_id="u-1"))
    assert provider.current_owner() == "u-1"
