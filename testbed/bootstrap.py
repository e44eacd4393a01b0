"""Identity, catalog and cloud resources of the testbed, made with openstacksdk."""

import contextlib
import os

import openstack
import yaml
from configs import REGION, SERVICE_USERS

from testbed import Failure

# name, type, port key, path
CATALOG = (
    ("nova", "compute", "nova-api", "/v2.1"),
    ("glance", "image", "glance", ""),
    ("neutron", "network", "neutron", ""),
    ("placement", "placement", "placement", ""),
)
#: Cinder (fake mode): its service type and the older name Nova's [cinder]
#: catalog_info asks for, both at the same API.
VOLUME_CATALOG = (
    ("cinder", "block-storage", "cinder", "/v3/%(project_id)s"),
    ("cinderv3", "volumev3", "cinder", "/v3/%(project_id)s"),
)

FLAVORS = (
    # name, vCPUs, RAM MiB, disk GB
    ("m1.tiny", 1, 512, 1),
    ("m1.small", 1, 2048, 20),
    ("m1.medium", 2, 4096, 40),
    # The fake driver reports 600,000 GB of disk: no host fits this one, so a
    # boot ends in ERROR with "No valid host was found".
    ("x1.toobig", 1, 512, 1_000_000),
)

IMAGE_NAME = "debian-12"
IMAGE_SIZE = 1024 * 1024

PUBLIC = {"network": "public", "subnet": "public-subnet", "cidr": "203.0.113.0/24",
          "gateway": "203.0.113.1", "pool": ("203.0.113.10", "203.0.113.250")}
PRIVATE = {"network": "private", "subnet": "private-subnet", "cidr": "192.0.2.0/24",
           "router": "router1"}

ADMIN = {"cloud": "testbed-admin", "username": "admin", "project_name": "admin"}
MEMBER = {"cloud": "testbed", "username": "demo", "project_name": "demo"}
#: A second member of project demo: another user of the same project.
OTHER = {"cloud": "testbed-other", "username": "demo-other", "project_name": "demo"}


def cloud_config(lay, who, interface="public"):
    """A clouds.yaml entry.  In real mode the public one (what clouds.yaml
    holds) answers only inside "the internet" namespace, as for a guest."""
    return {
        "auth": {
            "auth_url": lay.public_auth_url if interface == "public" else lay.auth_url,
            "username": who["username"],
            "password": lay.password,
            "project_name": who["project_name"],
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": REGION,
        "interface": interface,
        "identity_api_version": "3",
    }


def connect(lay, who):
    """As `who`, on loopback through the internal endpoints."""
    # Ignore clouds.yaml files and OS_* variables of whoever runs this.
    config = cloud_config(lay, who, interface="internal")
    return openstack.connect(load_yaml_config=False, load_envvars=False, api_timeout=60,
                             **config["auth"], **{k: v for k, v in config.items()
                                                  if k != "auth"})


@contextlib.contextmanager
def blame(lay, service, what):
    """Turn an API error into a Failure that points at the service's log."""
    try:
        yield
    except openstack.exceptions.SDKException as exc:
        raise Failure(service, f"{what}: {exc}", lay.logs / f"{service}.log") from exc


def identity(lay, step):
    """Projects, users, roles and the service catalog."""
    with blame(lay, "keystone", "creating users, projects and the catalog"):
        _identity(lay, connect(lay, ADMIN))
    step("keystone: service users, catalog, project demo and users demo and demo-other created")


def _identity(lay, conn):
    idn = conn.identity
    roles = {role.name: role for role in idn.roles()}
    for name in ("admin", "member", "reader", "service"):
        if name not in roles:
            roles[name] = idn.create_role(name=name)
    service = idn.create_project(name="service", domain_id="default",
                                 description="Service users of the testbed")
    demo = idn.create_project(name="demo", domain_id="default",
                              description="Project of the testbed's member user")
    for name in SERVICE_USERS:
        user = idn.create_user(name=name, password=lay.password, domain_id="default",
                               default_project_id=service.id)
        for role in ("admin", "service"):
            idn.assign_project_role_to_user(service, user, roles[role])
    for who in (MEMBER, OTHER):
        user = idn.create_user(name=who["username"], password=lay.password, domain_id="default",
                               default_project_id=demo.id)
        idn.assign_project_role_to_user(demo, user, roles["member"])
    for name, kind, port_key, path in CATALOG + (() if lay.real else VOLUME_CATALOG):
        svc = idn.create_service(name=name, type=kind)
        idn.create_endpoint(service_id=svc.id, interface="public",
                            url=lay.public_url(port_key, path), region_id=REGION)
        idn.create_endpoint(service_id=svc.id, interface="internal",
                            url=lay.url(port_key, path), region_id=REGION)
    conn.close()


def resources(lay, step):
    """Flavors, the image, the external network, and demo's network and router."""
    admin = connect(lay, ADMIN)
    flavors = FLAVORS
    if lay.real:
        import realconf

        flavors += realconf.FLAVORS
    with blame(lay, "nova-api", "creating flavors"):
        for name, vcpus, ram, disk in flavors:
            admin.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk,
                                        is_public=True)
    step("flavors created: " + ", ".join(f[0] for f in flavors))

    with blame(lay, "glance", f"uploading image {IMAGE_NAME}"):
        admin.image.create_image(
            IMAGE_NAME, data=bytes(IMAGE_SIZE), disk_format="raw",
            container_format="bare", visibility="public", os_distro="debian",
            os_version="12", wait=True)
    step(f"image {IMAGE_NAME} uploaded")

    if lay.real:  # fake mode moves no packets: its groups stay as they were
        with blame(lay, "neutron", "creating the default security group rules"):
            _default_rules(admin)
    with blame(lay, "neutron", "creating networks and router1"):
        _networks(lay, admin)
    admin.close()
    step("networks public and private, router router1 created")


def _default_rules(admin):
    """The rules every new security group starts with, as Neutron's data
    migration seeds them (the schema is made with create_all, which skips it):
    egress for every group, ingress from members of the same group for a
    project's default group."""
    for ethertype in ("IPv4", "IPv6"):
        admin.network.create_default_security_group_rule(
            direction="egress", ethertype=ethertype,
            used_in_default_sg=True, used_in_non_default_sg=True)
        admin.network.create_default_security_group_rule(
            direction="ingress", ethertype=ethertype, remote_group_id="PARENT",
            used_in_default_sg=True, used_in_non_default_sg=False)


def _networks(lay, admin):
    """public is external (floating IPs, router1's gateway) and also a provider
    network: shared, with DHCP, so a member's server can sit on it directly and
    its own address is public (reached from "the internet" without a router)."""
    public = admin.network.create_network(
        name=PUBLIC["network"], is_router_external=True, is_shared=True,
        provider_network_type="flat", provider_physical_network="public")
    admin.network.create_subnet(
        name=PUBLIC["subnet"], network_id=public.id, ip_version=4, cidr=PUBLIC["cidr"],
        gateway_ip=PUBLIC["gateway"], is_dhcp_enabled=True,
        allocation_pools=[{"start": PUBLIC["pool"][0], "end": PUBLIC["pool"][1]}])

    demo = connect(lay, MEMBER)
    private = demo.network.create_network(name=PRIVATE["network"])
    subnet = demo.network.create_subnet(
        name=PRIVATE["subnet"], network_id=private.id, ip_version=4, cidr=PRIVATE["cidr"])
    router = demo.network.create_router(
        name=PRIVATE["router"], external_gateway_info={"network_id": public.id})
    demo.network.add_interface_to_router(router, subnet_id=subnet.id)
    demo.close()


class VolumeProbe:
    """Makes one volume as the admin until Cinder places it (the scheduler sends a
    volume to ERROR while it has heard of no back end), then removes it."""

    NAME = "testbed-probe"

    def __init__(self, lay):
        self.conn = connect(lay, ADMIN)
        self.volume = None

    def made(self):
        from runner import NotReady

        bs = self.conn.block_storage
        if self.volume is None:
            self.volume = bs.create_volume(name=self.NAME, size=1)
        self.volume = bs.get_volume(self.volume)
        if self.volume.status == "error":
            bs.delete_volume(self.volume)
            self.volume = None
            raise NotReady("the scheduler found no back end yet")
        if self.volume.status != "available":
            raise NotReady(f"probe volume {self.volume.status}")
        bs.delete_volume(self.volume)
        bs.wait_for_delete(self.volume, interval=0.5, wait=60)
        self.volume = None

    def close(self):
        if self.volume is not None:
            self.conn.block_storage.delete_volume(self.volume, ignore_missing=True)
        self.conn.close()


def write_clouds_yaml(lay):
    """Written last: its presence means READY."""
    data = {"clouds": {who["cloud"]: cloud_config(lay, who) for who in (ADMIN, MEMBER, OTHER)}}
    tmp = lay.clouds_yaml.with_suffix(".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)
    os.replace(tmp, lay.clouds_yaml)
