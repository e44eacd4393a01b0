"""What a batch of servers needs on OpenStack: a quota check before anything is
made, and snapshots (Glance images made from a server) to start seats from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from vmbinder import errors
from vmbinder.providers.base import Created, Ledger, Removed, Server, Snapshot
from vmbinder.providers.openstack.common import (
    cloud_errors,
    existing_rules,
    find_or_none,
    security_group_name,
    wanted_rules,
)

#: The property every vmbinder snapshot carries: the server it was made from.
SNAPSHOT_OF = "vmbinder_snapshot_of"


@dataclass(frozen=True)
class Need:
    """One quota: what the batch needs, what is left (None: unlimited)."""

    resource: str
    needed: int
    limit: int | None
    used: int

    @property
    def left(self) -> int | None:
        return None if self.limit is None or self.limit < 0 else max(0, self.limit - self.used)

    @property
    def short(self) -> bool:
        return self.left is not None and self.needed > self.left

    def describe(self) -> str:
        left = "unlimited" if self.left is None else f"{self.left} left of {self.limit}"
        return f"{self.resource}: needs {self.needed}, {left}"


def _compute_needs(conn, flavors: list) -> list[Need]:
    with cloud_errors("reading the compute quota"):
        limits = conn.compute.get_limits().absolute
    return [
        Need("instances", len(flavors), limits.instances, limits.instances_used or 0),
        Need("cores", sum(f.vcpus for f in flavors), limits.total_cores, limits.total_cores_used or 0),
        Need("RAM (MB)", sum(f.ram for f in flavors), limits.total_ram, limits.total_ram_used or 0),
    ]


def _network_needs(conn, count: int, cidrs: list[str]) -> list[Need]:
    with cloud_errors("reading the network quota"):
        quota = conn.network.get_quota(conn.current_project_id, details=True)
        groups, rules = 0, 0
        for cidr in sorted(set(cidrs)):
            group = find_or_none(conn.network.find_security_group, security_group_name(cidr),
                                 project_id=conn.current_project_id)
            have = existing_rules(group.security_group_rules or []) if group else set()
            groups += group is None
            # A new group also gets Neutron's two default egress rules.
            rules += len(wanted_rules(cidr) - have) + (2 if group is None else 0)

    def need(resource: str, detail: dict | None, needed: int) -> Need:
        detail = detail or {}
        used = (detail.get("used") or 0) + (detail.get("reserved") or 0)
        return Need(resource, needed, detail.get("limit"), used)

    return [
        need("floating IPs", quota.floating_ips, count),
        need("ports", quota.ports, count),
        need("security groups", quota.security_groups, groups),
        need("security group rules", quota.security_group_rules, rules),
    ]


def check_quota(conn, flavors: list, cidrs: list[str]) -> list[Need]:
    """Every quota the batch draws on. QuotaExceeded, naming each short one with
    its numbers, when one is too small; nothing is created either way."""
    needs = _compute_needs(conn, flavors) + _network_needs(conn, len(flavors), cidrs)
    short = [n for n in needs if n.short]
    if short:
        sizes = Counter(f.name for f in flavors)
        raise errors.QuotaExceeded(
            f"the project's quota is too small for {len(flavors)} servers "
            f"({', '.join(f'{n} x {name}' for name, n in sorted(sizes.items()))}):\n"
            + "\n".join(f"  {n.describe()}" for n in short),
            "ask the cloud's administrators for more, use fewer seats or a smaller flavor, "
            "or remove servers you no longer need (vmbinder list)",
            details={"needs": [n.__dict__ | {"left": n.left} for n in needs]},
        )
    return needs


# -- snapshots ---------------------------------------------------------------------------

def _record(image) -> Snapshot:
    props = {k: str(v) for k, v in (image.properties or {}).items() if k.startswith("vmbinder_")}
    return Snapshot(id=image.id, name=image.name, properties=props, created=image.created_at)


def _wait_for(conn, server: Server, status: str, timeout: float):
    raw = conn.compute.get_server(server.id)
    if raw.status != status:
        conn.compute.wait_for_server(raw, status=status, failures=["ERROR"], interval=2, wait=timeout)


def snapshot(conn, server: Server, name: str, properties: dict[str, str], ledger: Ledger,
             timeout: float) -> Snapshot:
    """Stop the server (a snapshot of a quiet disk), image it, start it again."""
    with cloud_errors(f"stopping {server.name} to snapshot it"):
        if conn.compute.get_server(server.id).status != "SHUTOFF":
            conn.compute.stop_server(server.id)
        _wait_for(conn, server, "SHUTOFF", timeout)
    try:
        with cloud_errors(f"snapshotting {server.name}"):
            image = conn.compute.create_server_image(
                server.id, name, metadata={**properties, SNAPSHOT_OF: server.name})
            image_id = image.id
            ledger.add(Created(
                "snapshot", image_id, name,
                lambda: conn.image.delete_image(image_id, ignore_missing=True),
                f"openstack image delete {image_id}",
            ))
            image = conn.image.wait_for_status(
                image, status="active", failures=["killed", "deleted"], interval=2, wait=timeout)
    finally:
        with cloud_errors(f"starting {server.name} again after its snapshot"):
            conn.compute.start_server(server.id)
            _wait_for(conn, server, "ACTIVE", timeout)
    return _record(image)


def snapshots(conn, properties: dict[str, str]) -> list[Snapshot]:
    with cloud_errors("listing snapshots"):
        images = [i for i in conn.image.images(owner=conn.current_project_id)
                  if (i.properties or {}).get(SNAPSHOT_OF)
                  and all((i.properties or {}).get(k) == v for k, v in properties.items())
                  and i.status == "active"]
    return [_record(i) for i in sorted(images, key=lambda i: i.created_at or "", reverse=True)]


def delete_snapshot(conn, snap: Snapshot) -> list[Removed]:
    with cloud_errors(f"deleting snapshot {snap.name}"):
        image = find_or_none(conn.image.find_image, snap.id)
        if image is None:
            return []
        if not (image.properties or {}).get(SNAPSHOT_OF):
            raise errors.BadRequest(f"image {snap.name} ({snap.id}) is not a vmbinder snapshot",
                                    "delete it with the openstack CLI if you mean it")
        conn.image.delete_image(image.id, ignore_missing=True)
    return [Removed("snapshot", snap.id, snap.name)]
