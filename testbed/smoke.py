#!/usr/bin/env python3
"""Smoke check of a running testbed, through openstacksdk.

As the member cloud `testbed`: keypair, security group, a server with
user_data on `private`, a floating IP on `public` attached to its port, the
console, an unschedulable flavor, then quotas set through `testbed-admin`.
Everything it creates is deleted again, and it checks that nothing is left.

Prints one PASS/FAIL line per check and exits non-zero on any failure.

    .testbed/venv/bin/python testbed/smoke.py
"""

import base64
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path

import openstack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from openstack import exceptions

HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get("VMBINDER_TESTBED_DIR") or HERE.parent / ".testbed").resolve()
os.environ.setdefault("OS_CLIENT_CONFIG_FILE", str(STATE / "clouds.yaml"))

MEMBER, ADMIN = "testbed", "testbed-admin"
IMAGE, FLAVOR, TOOBIG = "debian-12", "m1.tiny", "x1.toobig"
PRIVATE, PUBLIC = "private", "public"
TIMEOUT = 120


class Smoke:
    def __init__(self):
        self.prefix = f"smoke-{uuid.uuid4().hex[:8]}"
        self.failures = 0
        self.passes = 0
        self.t0 = time.monotonic()
        self.cleanup = []   # (description, callable), undone in reverse

    def check(self, name, ok, detail=""):
        status = "PASS" if ok else "FAIL"
        if ok:
            self.passes += 1
        else:
            self.failures += 1
        took = time.monotonic() - self.t0
        print(f"{status} [{took:6.1f}s] {name}" + (f": {detail}" if detail else ""),
              flush=True)
        return ok

    def must(self, name, ok, detail=""):
        if not self.check(name, ok, detail):
            raise RuntimeError(f"cannot go on after: {name}")

    def undo(self, what, func):
        self.cleanup.append((what, func))


def poll(predicate, timeout=TIMEOUT, interval=0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def server_events(conn, server):
    """The instance-action events: where a build failed, when it hangs in BUILD."""
    lines = []
    with contextlib.suppress(Exception):
        for action in conn.compute.server_actions(server):
            detail = conn.compute.get_server_action(action.request_id, server)
            for event in detail.events or []:
                lines.append(f"{action.action}/{event['event']}: {event.get('result')}"
                             f" {event.get('traceback') or ''}".strip())
    return "; ".join(lines)


def wait_status(conn, server, status):
    try:
        return conn.compute.wait_for_server(server, status=status,
                                            failures=[] if status == "ERROR" else ["ERROR"],
                                            interval=1, wait=TIMEOUT)
    except exceptions.SDKException as exc:
        raise RuntimeError(f"{exc}; events: {server_events(conn, server)}") from exc


def run(smoke, member, admin):
    project_id = member.current_project_id
    image = member.image.find_image(IMAGE, ignore_missing=False)
    flavor = member.compute.find_flavor(FLAVOR, ignore_missing=False)
    toobig = member.compute.find_flavor(TOOBIG, ignore_missing=False)
    private = member.network.find_network(PRIVATE, ignore_missing=False)
    public = member.network.find_network(PUBLIC, ignore_missing=False)
    smoke.check("catalog, image, flavors and networks found as member",
                bool(image and flavor and toobig and private and public))
    check_bootstrap(smoke, member, admin, project_id)
    baseline_fips = {ip.id for ip in member.network.ips(project_id=project_id)}

    # Keypair from a freshly generated ed25519 key (Nova no longer makes keys).
    public_key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    keypair = member.compute.create_keypair(name=smoke.prefix, public_key=public_key)
    smoke.undo("keypair", lambda: member.compute.delete_keypair(keypair, ignore_missing=True))
    smoke.check("keypair created from an ed25519 public key",
                keypair.public_key.split()[:2] == public_key.split()[:2])

    group = member.network.create_security_group(name=smoke.prefix,
                                                 description="smoke check")
    smoke.undo("security group",
               lambda: member.network.delete_security_group(group, ignore_missing=True))
    for proto, port in (("tcp", 22), ("tcp", 443), ("icmp", None)):
        member.network.create_security_group_rule(
            security_group_id=group.id, direction="ingress", ethertype="IPv4",
            protocol=proto, port_range_min=port, port_range_max=port,
            remote_ip_prefix="0.0.0.0/0")
    rules = list(member.network.security_group_rules(security_group_id=group.id,
                                                    direction="ingress"))
    smoke.check("security group with tcp/22, tcp/443 and icmp rules", len(rules) == 3)

    marker = f"smoke-marker-{uuid.uuid4().hex}"
    # Non-ASCII text too: Nova returns the console as ASCII, it must not fail.
    user_data_text = f"#cloud-config\nruncmd:\n  - echo {marker}\n  - echo 'caf\u00e9 \u2713'\n"
    user_data = base64.b64encode(user_data_text.encode()).decode()
    t = time.monotonic()
    server = member.compute.create_server(
        name=smoke.prefix, image_id=image.id, flavor_id=flavor.id,
        networks=[{"uuid": private.id}], key_name=keypair.name,
        security_groups=[{"name": group.name}], user_data=user_data,
        metadata={"smoke": smoke.prefix})
    smoke.undo("server", lambda: delete_server(member, server))
    early = console_answer(member, server)
    smoke.check("console right after create (BUILD) does not crash",
                early == "answered" or early == "HTTP 409", early)
    server = wait_status(member, server, "ACTIVE")
    smoke.must("server ACTIVE", server.status == "ACTIVE",
               f"{time.monotonic() - t:.1f} s")

    # Binding details are visible to admin only.
    ports = list(admin.network.ports(device_id=server.id))
    smoke.must("server has one port on private, bound (ovs) and ACTIVE",
               len(ports) == 1 and ports[0].network_id == private.id
               and ports[0].binding_vif_type == "ovs" and ports[0].status == "ACTIVE",
               f"{[(p.binding_vif_type, p.status) for p in ports]}")

    fip = member.network.create_ip(floating_network_id=public.id)
    smoke.undo("floating IP", lambda: member.network.delete_ip(fip, ignore_missing=True))
    fip = member.network.update_ip(fip, port_id=ports[0].id)
    smoke.check("floating IP allocated on public and attached to the port",
                fip.port_id == ports[0].id, fip.floating_ip_address)

    def floating_shown():
        addresses = member.compute.get_server(server.id).addresses or {}
        return any(a.get("OS-EXT-IPS:type") == "floating"
                   and a.get("addr") == fip.floating_ip_address
                   for entries in addresses.values() for a in entries)

    t = time.monotonic()
    smoke.check("floating IP shows in server.addresses", poll(floating_shown, 60),
                f"{time.monotonic() - t:.1f} s")

    console = member.compute.get_server_console_output(server)["output"]
    smoke.check("console shows the decoded user_data", marker in console)
    last = console.strip().splitlines()[-1] if console.strip() else ""
    smoke.check("console ends with cloud-init's finished line",
                last.startswith("Cloud-init v.") and " finished at " in last, last[:80])
    smoke.check("member cannot read user_data back",
                member.compute.get_server(server.id).user_data is None)
    smoke.check("admin reads user_data back exactly",
                admin.compute.get_server(server.id).user_data == user_data)

    # A server in ERROR on its host: the console shows boot lines only.
    admin.compute.reset_server_state(server, "error")
    try:
        text = member.compute.get_server_console_output(server)["output"]
        smoke.check("console of a server in ERROR on a host answers, without "
                    "cloud-init's finished line", " finished at " not in text,
                    text.strip().splitlines()[-1][:80] if text.strip() else "")
    except exceptions.HttpException as exc:
        smoke.check("console of a server in ERROR on a host answers", False,
                    f"HTTP {exc.status_code}")
    admin.compute.reset_server_state(server, "active")

    # A flavor that fits no host: ERROR with a "No valid host" fault, no quota error.
    big = member.compute.create_server(
        name=f"{smoke.prefix}-toobig", image_id=image.id, flavor_id=toobig.id,
        networks=[{"uuid": private.id}])
    smoke.undo("x1.toobig server", lambda: delete_server(member, big))
    big = wait_status(member, big, "ERROR")
    fault = (big.fault or {}).get("message", "")
    smoke.check(f"{TOOBIG} boot ends in ERROR with a No valid host fault",
                big.status == "ERROR" and "No valid host" in fault, fault[:80])
    answer = console_answer(member, big)
    smoke.check("console of a server in ERROR does not crash",
                answer in ("answered", "HTTP 409"), answer)
    delete_server(member, big)

    # Compute quota: one instance allowed, one in use: the next is refused.
    admin.compute.update_quota_set(project_id, instances=1)
    try:
        try:
            extra = member.compute.create_server(
                name=f"{smoke.prefix}-over", image_id=image.id, flavor_id=flavor.id,
                networks=[{"uuid": private.id}])
            smoke.undo("over-quota server", lambda: delete_server(member, extra))
            smoke.check("compute quota instances=1 refuses a second server", False,
                        "server was created")
        except exceptions.HttpException as exc:
            smoke.check("compute quota instances=1 refuses a second server (HTTP 403)",
                        exc.status_code == 403, f"HTTP {exc.status_code}")
    finally:
        admin.compute.revert_quota_set(project_id)
    quota = admin.compute.get_quota_set(project_id)
    smoke.check("compute quota reverted", quota.instances != 1, f"instances={quota.instances}")

    # Network quota: one floating IP allowed, one in use: the next is refused.
    admin.network.update_quota(project_id, floating_ips=1 + len(baseline_fips))
    try:
        try:
            over = member.network.create_ip(floating_network_id=public.id)
            smoke.undo("over-quota floating IP",
                       lambda: member.network.delete_ip(over, ignore_missing=True))
            smoke.check("network quota floatingip=1 refuses a second floating IP", False)
        except exceptions.HttpException as exc:
            smoke.check("network quota refuses a second floating IP (HTTP 409)",
                        exc.status_code == 409, f"HTTP {exc.status_code}")
    finally:
        admin.network.delete_quota(project_id)

    teardown(smoke)
    left = []
    if any(s.name.startswith(smoke.prefix) for s in member.compute.servers()):
        left.append("servers")
    if {ip.id for ip in member.network.ips(project_id=project_id)} - baseline_fips:
        left.append("floating IPs")
    if list(member.network.ports(device_id=server.id)):
        left.append("ports")
    if member.network.find_security_group(smoke.prefix, project_id=project_id):
        left.append("security group")
    if member.compute.find_keypair(smoke.prefix):
        left.append("keypair")
    smoke.check("everything deleted, nothing left", not left, ", ".join(left))


def check_bootstrap(smoke, member, admin, project_id):
    """The resources that `up` creates, as other code expects them."""
    flavors = {f.name: (f.vcpus, f.ram, f.disk, f.is_public)
               for f in member.compute.flavors()}
    expected = {"m1.tiny": (1, 512, 1, True), "m1.small": (1, 2048, 20, True),
                "m1.medium": (2, 4096, 40, True), "x1.toobig": (1, 512, 1_000_000, True)}
    smoke.check("flavors m1.tiny, m1.small, m1.medium, x1.toobig",
                all(flavors.get(k) == v for k, v in expected.items()), str(flavors))
    image = member.image.find_image(IMAGE)
    smoke.check(f"image {IMAGE} public and active",
                image.visibility == "public" and image.status == "active")
    public = admin.network.find_network(PUBLIC)
    smoke.check("network public: external, shared, flat on physnet public",
                public.is_router_external and public.is_shared
                and public.provider_network_type == "flat"
                and public.provider_physical_network == "public")
    sub = admin.network.find_subnet("public-subnet")
    pool = sub.allocation_pools[0] if sub.allocation_pools else {}
    smoke.check("public-subnet 203.0.113.0/24, gateway .1, pool .10-.250, DHCP",
                sub.cidr == "203.0.113.0/24" and sub.gateway_ip == "203.0.113.1"
                and pool == {"start": "203.0.113.10", "end": "203.0.113.250"}
                and sub.is_dhcp_enabled)
    private = admin.network.find_network(PRIVATE)
    psub = admin.network.find_subnet("private-subnet")
    smoke.check("network private (vxlan) and private-subnet 192.0.2.0/24 owned by demo",
                private.provider_network_type == "vxlan"
                and private.project_id == project_id and psub.cidr == "192.0.2.0/24"
                and psub.project_id == project_id)
    router = member.network.find_router("router1")
    gateway = (router.external_gateway_info or {}).get("network_id") if router else None
    interfaces = list(member.network.ports(device_id=router.id,
                                           device_owner="network:router_interface")) \
        if router else []
    smoke.check("router1: gateway on public, interface on private-subnet",
                gateway == public.id and any(ip["subnet_id"] == psub.id
                                             for p in interfaces for ip in p.fixed_ips))


def console_answer(conn, server) -> str:
    """"answered", or the HTTP status Nova refused the console output with."""
    try:
        conn.compute.get_server_console_output(server)
        return "answered"
    except exceptions.HttpException as exc:
        return f"HTTP {exc.status_code}"


def delete_server(conn, server):
    conn.compute.delete_server(server, ignore_missing=True)
    conn.compute.wait_for_delete(server, interval=1, wait=TIMEOUT)


def teardown(smoke):
    errors = []
    while smoke.cleanup:
        what, func = smoke.cleanup.pop()
        try:
            func()
        except Exception as exc:  # noqa: BLE001 - report every leak, go on
            errors.append(f"{what}: {exc}")
    smoke.check("cleanup", not errors, "; ".join(errors))


def main():
    smoke = Smoke()
    print(f"smoke check against {os.environ['OS_CLIENT_CONFIG_FILE']} ({smoke.prefix})")
    try:
        member = openstack.connect(cloud=MEMBER)
        admin = openstack.connect(cloud=ADMIN)
        smoke.check("authenticated as member and admin",
                    bool(member.authorize() and admin.authorize()))
    except Exception as exc:  # noqa: BLE001
        smoke.check("authenticate from clouds.yaml", False, str(exc))
        return 1
    try:
        run(smoke, member, admin)
    except Exception as exc:  # noqa: BLE001 - report, clean up, fail
        smoke.check("smoke run", False, f"{type(exc).__name__}: {exc}")
        if smoke.cleanup:
            teardown(smoke)
    print(f"{smoke.passes} passed, {smoke.failures} failed "
          f"in {time.monotonic() - smoke.t0:.1f} s")
    return 1 if smoke.failures else 0


if __name__ == "__main__":
    sys.exit(main())
