"""The Neutron resources vmbinder makes for an OpenStack server and removes with it:
the security group that lets in ports 22, 80 and 443 (one per --ssh-cidr, shared
by the servers that use it, removed with the last of them), and the server's
floating IP or, on a network whose addresses are public (no floating IP), its
port, made before the server so that its address is known when the user-data is
written. Nova deletes neither with the server. Both are described
`vmbinder:<name>`, which finds them again after the server is gone."""

from __future__ import annotations

from vmbinder import errors
from vmbinder.providers.base import META, OWNER_TAG, Created, Ledger, Removed, Resolved, Server
from vmbinder.providers.openstack.common import (
    cloud_errors,
    existing_rules,
    extra_rules,
    find_or_none,
    in_flight,
    openstacksdk,
    refuse_extra_rules,
    security_group_name,
    wanted_rules,
)
from vmbinder.spec import EXPOSE_SSH, LaunchSpec

# -- security groups -------------------------------------------------------------


def security_group(conn, spec: LaunchSpec, ledger: Ledger, settle_timeout: float):
    """The group for spec's --ssh-cidr and --expose (its id and name), made (and its missing
    rules added) when needed. A group of that name that lets in more is refused
    before anything is made (common.refuse_extra_rules); ingress rules a cloud
    adds to every new group are removed from the one made here, which is
    vmbinder's."""
    cidr, expose = spec.cloud.ssh_cidr, spec.cloud.expose
    name = security_group_name(cidr, expose)
    project_id = conn.current_project_id
    with cloud_errors(f"preparing security group {name}"):
        found = list(conn.network.security_groups(name=name, project_id=project_id))
        group = found[0] if found else None
        if group is not None:
            refuse_extra_rules(conn, group, cidr, expose)
        else:
            with in_flight(ledger, "security group", name,
                           lambda: _sweep_group(conn, name, settle_timeout),
                           f"openstack security group delete {name}"):
                group = conn.network.create_security_group(
                    name=name, description="vmbinder: ingress 22 only" if expose == EXPOSE_SSH
                    else "vmbinder: ingress 22, 80 and 443 only")
            group_id = group.id
            ledger.add(Created(
                "security group", group_id, name,
                lambda: _delete_created_group(conn, group_id, settle_timeout),
                f"openstack security group delete {group_id}",
            ))
            for rule in extra_rules(group.security_group_rules or [], cidr, expose):
                conn.network.delete_security_group_rule(rule["id"], ignore_missing=True)
        missing = wanted_rules(cidr, expose) - existing_rules(group.security_group_rules or [])
        if missing:
            conn.network.create_security_group_rules([
                {"security_group_id": group.id, "direction": "ingress", "protocol": "tcp",
                 "ethertype": eth, "port_range_min": port, "port_range_max": port,
                 "remote_ip_prefix": prefix}
                for eth, port, prefix in sorted(missing)
            ])
    return group


def _delete_created_group(conn, group_id: str, settle_timeout: float) -> None:
    """Rollback of a group this attempt made. A server deleted while it was
    still building can have its port removed by the cloud a little later,
    so "in use" is retried for a while before it counts as a leftover."""
    import tenacity

    sdk = openstacksdk()
    for attempt in tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(sdk.exceptions.ConflictException),
        wait=tenacity.wait_exponential(multiplier=0.5, max=5),
        stop=tenacity.stop_after_delay(settle_timeout),
        reraise=True,
    ):
        with attempt:
            conn.network.delete_security_group(group_id, ignore_missing=True)


def _sweep_group(conn, name: str, settle_timeout: float) -> None:
    group = find_or_none(conn.network.find_security_group, name,
                         project_id=conn.current_project_id)
    if group is not None:
        _delete_created_group(conn, group.id, settle_timeout)


def _delete_group_if_unused(conn, group_id: str) -> bool:
    """Delete a vmbinder security group unless a port still uses it."""
    sdk = openstacksdk()
    try:
        conn.network.delete_security_group(group_id, ignore_missing=True)
    except sdk.exceptions.ConflictException:
        return False  # another server uses it: leave it
    return True


def delete_unused_groups(conn, names: list[str]) -> list[Removed]:
    """The vmbinder groups among names that no server uses any more, deleted."""
    removed = []
    for name in names:
        if not name.startswith(OWNER_TAG):
            continue
        group = find_or_none(conn.network.find_security_group, name,
                             project_id=conn.current_project_id)
        if group is not None and _delete_group_if_unused(conn, group.id):
            removed.append(Removed("security group", group.id, name))
    return removed


# -- floating IPs ----------------------------------------------------------------


def allocate_floating_ip(conn, spec: LaunchSpec, external, ledger: Ledger):
    """A floating IP on the external network, described `vmbinder:<name>`."""
    with cloud_errors(f"allocating a floating IP on {external.name}"), in_flight(
            ledger, "floating IP", spec.name, lambda: release_orphans(conn, [spec.name]),
            f"openstack floating ip list --long  # description {META}{spec.name}"):
        fip = conn.network.create_ip(
            floating_network_id=external.id, description=f"{META}{spec.name}")
    fip_id = fip.id
    ledger.add(Created(
        "floating IP", fip_id, fip.floating_ip_address,
        lambda: conn.network.delete_ip(fip_id, ignore_missing=True),
        f"openstack floating ip delete {fip_id}",
    ))
    return fip


def attach_floating_ip(conn, server: Server, resolved: Resolved) -> None:
    """Attach the floating IP prepare allocated to the server's port on its network."""
    with cloud_errors(f"attaching floating IP {resolved.public_ip}"):
        ports = list(conn.network.ports(device_id=server.id, network_id=resolved.network_id,
                                        project_id=conn.current_project_id))
        if not ports:
            raise errors.CloudError(f"server {server.name} has no port on {resolved.network_name}")
        conn.network.update_ip(resolved.floating_ip_id, port_id=ports[0].id)


#: The server's metadata (vmbinder:released) naming the network a released
#: floating IP came from: start and unshelve get a new one there.
RELEASED = "released"


def release_floating_ips(conn, server: Server) -> list[Removed]:
    """Give the floating IPs attached to the server back to the cloud (the server's
    vmbinder:released must be recorded before: see the provider's release_ip)."""
    removed = []
    with cloud_errors(f"releasing the floating IP of {server.name}"):
        for ip in attached_floating_ips(conn, server):
            conn.network.delete_ip(ip, ignore_missing=True)
            removed.append(Removed("floating IP", ip.id, ip.floating_ip_address))
    return removed


def attached_floating_ips(conn, server: Server) -> list:
    return [ip for ip in floating_ips(conn, server) if ip.port_id]


def new_floating_ip(conn, server: Server) -> str | None:
    """For a server whose floating IP was released: a new one from the network
    recorded then, attached to its port (the server may be stopped or shelved);
    its address. None when the server needs none (never released, or given one
    by an earlier try)."""
    network_id = server.meta(RELEASED)
    if not network_id:
        return None
    with cloud_errors(f"giving {server.name} a new floating IP"):
        there = attached_floating_ips(conn, server)
        if there:
            return there[0].floating_ip_address
        ports = list(conn.network.ports(device_id=server.id, project_id=conn.current_project_id))
        if not ports:
            raise errors.CloudError(f"server {server.name} has no port to attach a floating IP to")
        fip = conn.network.create_ip(floating_network_id=network_id, description=f"{META}{server.name}")
        try:
            conn.network.update_ip(fip, port_id=ports[0].id)
        except Exception:
            conn.network.delete_ip(fip, ignore_missing=True)
            raise
    return fip.floating_ip_address


def floating_ips(conn, server: Server) -> list:
    """The server's floating IPs: attached to its ports, or allocated for it and
    never attached. Only this project's: an administrator's credentials list
    every project's, and another project's server may have the same name."""
    project_id = conn.current_project_id
    with cloud_errors(f"finding the floating IPs of {server.name}"):
        found = {ip.id: ip for ip in conn.network.ips(description=f"{META}{server.name}",
                                                      project_id=project_id)
                 if not ip.port_id}
        for port in conn.network.ports(device_id=server.id, project_id=project_id):
            for ip in conn.network.ips(port_id=port.id, project_id=project_id):
                found[ip.id] = ip
    return list(found.values())


def release_orphans(conn, names: list[str], *, free_groups: bool = False) -> list[Removed]:
    """Floating IPs and ports made for these server names and attached to
    nothing: what a server deleted by hand (not with vmbinder delete) leaves
    behind. With free_groups, the vmbinder groups of those ports that nothing
    uses any more too (not while a launch may be about to use them)."""
    wanted = {f"{META}{n}" for n in names}
    removed = []
    with cloud_errors("removing floating IPs of deleted servers"):
        for ip in conn.network.ips(project_id=conn.current_project_id):
            if ip.description in wanted and not ip.port_id:
                conn.network.delete_ip(ip, ignore_missing=True)
                removed.append(Removed("floating IP", ip.id, ip.floating_ip_address))
    groups: set[str] = set()
    with cloud_errors("removing ports of deleted servers"):
        for port in conn.network.ports(project_id=conn.current_project_id):
            if port.description in wanted and not port.device_id:
                conn.network.delete_port(port, ignore_missing=True)
                removed.append(Removed("port", port.id, port_address(port) or port.id))
                groups.update(port.security_group_ids or [])
        # A group the last of its servers left to that port is unused now.
        for group_id in sorted(groups) if free_groups else ():
            group = find_or_none(conn.network.find_security_group, group_id)
            if group is not None and group.name.startswith(OWNER_TAG) \
                    and _delete_group_if_unused(conn, group.id):
                removed.append(Removed("security group", group.id, group.name))
    return removed


# -- ports -----------------------------------------------------------------------


def port_address(port) -> str | None:
    """The port's first IPv4 address, else its first address."""
    addresses = [ip.get("ip_address") for ip in port.fixed_ips or [] if ip.get("ip_address")]
    return next((a for a in addresses if ":" not in a), addresses[0] if addresses else None)


def create_port(conn, spec: LaunchSpec, net, group_id: str, ledger: Ledger):
    """The server's port on net, with the security group, described
    `vmbinder:<name>`: made here, not by Nova, so that its address (the server's
    public address on a routable network) goes into the user-data."""
    with cloud_errors(f"creating a port on {net.name}"), in_flight(
            ledger, "port", spec.name, lambda: release_orphans(conn, [spec.name]),
            f"openstack port list --long  # description {META}{spec.name}"):
        port = conn.network.create_port(network_id=net.id, name=spec.name,
                                        description=f"{META}{spec.name}",
                                        security_groups=[group_id])
    port_id, address = port.id, port_address(port)
    ledger.add(Created(
        "port", port_id, address or port_id,
        lambda: conn.network.delete_port(port_id, ignore_missing=True),
        f"openstack port delete {port_id}",
    ))
    if address is None:
        raise errors.ConfigError(
            f"the port made on network {net.name} got no address: it has no subnet",
            "choose a network with a subnet with --network")
    return port


def server_ports(conn, server: Server) -> list:
    """The ports vmbinder made for the server: attached to it, or to nothing yet;
    this project's only (see floating_ips)."""
    with cloud_errors(f"finding the ports of {server.name}"):
        return [p for p in conn.network.ports(description=f"{META}{server.name}",
                                              project_id=conn.current_project_id)
                if p.device_id in (None, "", server.id)]
