"""What an OpenStack server is made from: the image, the flavor, where it is
placed (its network, and the external network of its floating IP, if it gets
one) and the keypair, as --image, --flavor, --network, --external-network,
--floating-ip and --key-name name them, or as vmbinder picks them when they are
left out. A --public-key is uploaded once as a keypair named after it and
reused. A name that matches nothing, or more than one record, is a ConfigError
listing what there is."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from vmbinder import errors
from vmbinder.providers.base import Created, Ledger, ambiguous, candidates, find_object, keypair_name
from vmbinder.providers.openstack import distros
from vmbinder.providers.openstack.common import (
    cloud_errors,
    find_or_none,
    in_flight,
    openstacksdk,
)
from vmbinder.spec import AUTO, LaunchSpec

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
#: The smallest flavor picked when --flavor is not given must have at least this.
MIN_RAM_MB = 2048
MIN_DISK_GB = 10


def _find(kind: str, finder, name_or_id: str, lister, option: str):
    """One request, the proxy's find_* (by id, else by name), then find_object's errors."""
    sdk = openstacksdk()
    try:
        with cloud_errors(f"looking up {kind} {name_or_id!r}"):
            found = find_or_none(finder, name_or_id)
    except errors.CloudError as exc:
        if isinstance(exc.__cause__, sdk.exceptions.DuplicateResource):
            raise ambiguous(kind, name_or_id, option) from exc
        raise
    return _one(kind, [found] if found is not None else [], name_or_id, option, lister)


def _one(kind: str, hits: list, wanted: str, option: str, lister):
    """The single record named or numbered wanted among hits, else ConfigError
    (listing what there is, for the hint)."""
    def names():
        with cloud_errors(f"listing {kind}s"):
            return [x.name for x in lister()]

    return find_object(hits, wanted, kind, option, names=names)


def image(conn, wanted: str | None):
    """The image named or numbered wanted, else the one distros.choose picks among
    the active images (by their Glance properties, then their names)."""
    if wanted:
        # One request: by id when it looks like one, else by name.
        with cloud_errors(f"looking up image {wanted!r}"):
            if UUID_RE.match(wanted):
                found = find_or_none(conn.image.find_image, wanted)
                hits = [found] if found is not None else []
            else:
                hits = list(conn.image.images(name=wanted))
        return _one("image", hits, wanted, "--image", conn.image.images)
    with cloud_errors("listing images"):
        images = list(conn.image.images(status="active"))
    return distros.choose(images)


def flavor(conn, wanted: str | None, image=None):
    """The flavor named or numbered wanted, else the smallest with MIN_RAM_MB and
    MIN_DISK_GB (or the image's min_ram and min_disk, when larger)."""
    with cloud_errors("listing flavors"):
        flavors = list(conn.compute.flavors())
    if wanted:
        return _one("flavor", flavors, wanted, "--flavor", lambda: flavors)
    # An image's min_disk (such as the 20 GB disk of `vmbinder image upload`) raises the floor.
    ram = max(MIN_RAM_MB, getattr(image, "min_ram", 0) or 0)
    disk = max(MIN_DISK_GB, getattr(image, "min_disk", 0) or 0)
    fits = [f for f in flavors if f.ram >= ram and f.disk >= disk]
    if not fits:
        raise errors.ConfigError(
            f"no --flavor given and no flavor has {ram} MB of RAM and {disk} GB of disk",
            f"choose one with --flavor (or VMBINDER_FLAVOR): {candidates(f.name for f in flavors)}",
        )
    return min(fits, key=lambda f: (f.ram, f.vcpus, f.disk, f.name))


@dataclass(frozen=True)
class Placement:
    """Where a server goes: its network; whether that network is itself routable
    (external, or shared and holding global addresses), so that the server's own
    address there is its public address; and the external network its floating
    IP comes from, or None when it gets none."""

    network: object
    routable: bool
    external: object | None = None

    @property
    def floating(self) -> bool:
        return self.external is not None


def routable(conn, net) -> bool:
    """Whether a server's own address on net is reachable from outside the cloud:
    net is external, or shared with a subnet of global addresses (a provider network)."""
    if net.is_router_external:
        return True
    if not net.is_shared:
        return False
    with cloud_errors(f"listing the subnets of {net.name}"):
        subnets = list(conn.network.subnets(network_id=net.id))
    return any(ipaddress.ip_network(s.cidr, strict=False).is_global for s in subnets if s.cidr)


def _default_network(nets: list):
    """The only network of the project's own (not external); with none, the only
    shared external one (a cloud whose servers sit on a provider network)."""
    tenant = [n for n in nets if not n.is_router_external]
    pool = tenant or [n for n in nets if n.is_router_external and n.is_shared]
    if len(pool) == 1:
        return pool[0]
    why = "none is visible" if not pool else "there are several"
    raise errors.ConfigError(f"no --network given and {why}",
                             f"choose one with --network: {candidates(n.name for n in pool)}")


def _external(nets: list, wanted: str | None):
    pool = [n for n in nets if n.is_router_external]
    if wanted:
        return find_object(pool, wanted, "external network", "--external-network", id_of="network")
    if len(pool) == 1:
        return pool[0]
    why = "none is visible" if not pool else "there are several"
    raise errors.ConfigError(
        f"no --external-network given and {why}",
        f"choose one with --external-network: {candidates(n.name for n in pool)}")


def networks(conn, wanted: str | None, wanted_external: str | None,
             floating_ip: str = AUTO) -> Placement:
    """Where a server goes (see Placement). Its network is the one named (any
    network: a tenant, shared or external one), else _default_network's. It gets
    a floating IP when floating_ip is yes, or auto and its network is not
    routable, from the external network named, else the only one."""
    with cloud_errors("listing networks"):
        nets = list(conn.network.networks())
    if wanted:
        net = find_object(nets, wanted, "network", "--network", id_of="network")
    else:
        net = _default_network(nets)
    if net.is_router_external and not net.is_shared and net.project_id != conn.current_project_id:
        raise errors.ConfigError(
            f"network {net.name} is external and not shared with this project: "
            "servers cannot be placed on it",
            "leave --network out (a server on the project's network gets a floating IP from "
            f"{net.name}), or choose a network with --network: "
            f"{candidates(n.name for n in nets if n.is_shared or not n.is_router_external)}")
    direct = routable(conn, net)
    floating = floating_ip == "yes" or (floating_ip == AUTO and not direct)
    external = _external(nets, wanted_external) if floating or wanted_external else None
    if floating and external.id == net.id:
        raise errors.ConfigError(
            f"--floating-ip yes: a floating IP from {external.name} cannot reach a server on "
            f"{net.name} itself (a floating IP needs a router between the two networks)",
            f"leave --floating-ip at auto: on {net.name} the server's own address is public; "
            "or choose another --network or --external-network")
    return Placement(net, direct, external if floating else None)


def existing_keypair(conn, name_or_id: str):
    """The keypair --key-name names."""
    return _find("keypair", conn.compute.find_keypair, name_or_id, conn.compute.keypairs,
                 "--key-name")


def keypair(conn, spec: LaunchSpec, ledger: Ledger) -> str | None:
    """The name of the keypair the server gets: --key-name's, or the one made from
    --public-key (uploaded unless it is there already), or None."""
    choice = spec.cloud
    if choice.key_name:
        return existing_keypair(conn, choice.key_name).name
    if not choice.public_key:
        return None
    name = keypair_name(choice.public_key)
    with cloud_errors(f"looking up keypair {name}"):
        if find_or_none(conn.compute.find_keypair, name) is not None:
            return name
        with in_flight(ledger, "keypair", name,
                       lambda: conn.compute.delete_keypair(name, ignore_missing=True),
                       f"openstack keypair delete {name}"):
            conn.compute.create_keypair(name=name, public_key=choice.public_key.strip())
    ledger.add(Created(
        "keypair", name, name,
        lambda: conn.compute.delete_keypair(name, ignore_missing=True),
        f"openstack keypair delete {name}",
    ))
    return name
