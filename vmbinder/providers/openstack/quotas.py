"""What a batch of servers needs on OpenStack: a check, before anything is made,
that the project's compute, network and volume quotas leave room for every seat (and
that no security group the seats would use lets in more than vmbinder asks for)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from vmbinder import errors
from vmbinder.providers.openstack.common import (
    cloud_errors,
    existing_rules,
    find_or_none,
    refuse_extra_rules,
    security_group_name,
    wanted_rules,
)


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


def _network_needs(conn, count: int, wanted: list[tuple[str, str]], floating_ips: int) -> list[Need]:
    with cloud_errors("reading the network quota"):
        quota = conn.network.get_quota(conn.current_project_id, details=True)
        groups, rules = 0, 0
        for cidr, expose in sorted(set(wanted)):
            group = find_or_none(conn.network.find_security_group,
                                 security_group_name(cidr, expose),
                                 project_id=conn.current_project_id)
            if group is not None:
                refuse_extra_rules(conn, group, cidr, expose)
            have = existing_rules(group.security_group_rules or []) if group else set()
            groups += group is None
            # A new group also gets Neutron's two default egress rules.
            rules += len(wanted_rules(cidr, expose) - have) + (2 if group is None else 0)

    def need(resource: str, detail: dict | None, needed: int) -> Need:
        detail = detail or {}
        used = (detail.get("used") or 0) + (detail.get("reserved") or 0)
        return Need(resource, needed, detail.get("limit"), used)

    # Every server has one port: Nova's, or vmbinder's when it gets no floating IP.
    return [
        need("floating IPs", quota.floating_ips, floating_ips),
        need("ports", quota.ports, count),
        need("security groups", quota.security_groups, groups),
        need("security group rules", quota.security_group_rules, rules),
    ]


def _volume_needs(conn, sizes: list[int]) -> list[Need]:
    """The work volumes the batch makes (sizes in GB), against Cinder's limits."""
    if not sizes:
        return []
    with cloud_errors("reading the volume quota"):
        limits = conn.block_storage.get_limits().absolute
    return [
        Need("volumes", len(sizes), limits.max_total_volumes, limits.total_volumes_used or 0),
        Need("volume GB", sum(sizes), limits.max_total_volume_gigabytes, limits.total_gigabytes_used or 0),
    ]


def check_quota(conn, flavors: list, groups: list[tuple[str, str]], *,
                floating_ips: int, volume_sizes: list[int] = ()) -> list[Need]:
    """Every quota the batch draws on (groups: the --ssh-cidr and --expose of each
    server; floating_ips: how many of them get one; volume_sizes: the work volumes
    it makes). QuotaExceeded, naming each short one with its numbers, when one is
    too small, and ConfigError for a security group that lets in more than
    vmbinder asks for; nothing is created either way."""
    needs = (_compute_needs(conn, flavors) + _network_needs(conn, len(flavors), groups, floating_ips)
             + _volume_needs(conn, list(volume_sizes)))
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
