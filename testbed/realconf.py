"""What real compute changes in the services' configuration.

In real mode Nova runs its libvirt driver (qemu under TCG), Neutron runs ML2
with the Open vSwitch agent on OVS's userspace datapath, the L3, DHCP and
metadata agents, and Nova's metadata API answers the metadata agent.  Every
address of that data plane lives in network namespaces: the routers' and
DHCP servers' (made by Neutron's agents) and "the internet" (NETNS), which
holds the external network's gateway address and, through the forwarder, the
public API endpoints.  No address of it is in the root namespace.
"""

from configs import COMPUTE_HOST, HOST, PORTS, PUBLIC_HOST, service_auth

#: "The internet": the namespace beside the external network's gateway.
NETNS = "vmbinder-inet"
#: Its address on the external network (the subnet's gateway), where the
#: public API endpoints answer.
INET_ADDRESS = PUBLIC_HOST
INET_PREFIX = 24
#: br-ex's port that is moved into NETNS.
INET_PORT = "vmb-inet"
BRIDGES = ("br-int", "br-ex")
#: APIs the forwarder makes answer inside NETNS (on every address there).
FORWARDED = ("keystone", "glance", "placement", "neutron", "nova-api")
#: Flavors only real mode has: 2 vCPUs make a TCG guest's build faster.
FLAVORS = (("c2.small", 2, 2048, 20),)


def metadata_secret(lay):
    return f"metadata-{lay.password}"


def ovs_rundir(lay):
    return lay.run / "ovs"


def ovsdb_socket(lay):
    return ovs_rundir(lay) / "db.sock"


def ovs_env(lay):
    """Where OVS's tools find the database and the daemons' control sockets."""
    rundir = ovs_rundir(lay)
    return {"OVS_RUNDIR": rundir, "OVS_DBDIR": rundir, "OVS_LOGDIR": lay.logs,
            "OVS_SYSCONFDIR": rundir}


def libvirt_root(lay):
    """Bound over /etc/libvirt, /var/lib/libvirt, ... in libvirt's mount namespace."""
    return lay.run / "libvirt"


LIBVIRT_BINDS = ("/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt",
                 "/var/cache/libvirt", "/run/libvirt")


def libvirt_socket(lay):
    return libvirt_root(lay) / "run-libvirt" / "libvirt-sock"


def qemu_conf():
    return "\n".join([
        "# Written by the testbed: root runs qemu, no security driver, no cgroups",
        "# (no systemd here), no private /dev (a container's).",
        'user = "root"',
        'group = "root"',
        "dynamic_ownership = 0",
        "remember_owner = 0",
        'security_driver = "none"',
        "cgroup_controllers = [ ]",
        "namespaces = [ ]",
        "",
    ])


def neutron_conf(lay, conf):
    conf["DEFAULT"].update({
        "host": COMPUTE_HOST,
        "dhcp_agent_notification": True,
        # The L3 agent's haproxy (in each router's namespace) and the metadata
        # agent meet at this socket.
        "metadata_proxy_socket": lay.run / "neutron" / "metadata_proxy",
        "rpc_workers": 1,
        "rpc_state_report_workers": 1,
    })
    # Services reach each other on loopback (the internal endpoints); the
    # public ones are only reachable inside NETNS.
    conf["nova"]["endpoint_type"] = "internal"
    conf["agent"] = {"root_helper": "sudo", "report_interval": 10}
    conf["securitygroup"] = {"firewall_driver": "openvswitch"}
    return conf


def ml2_conf(lay, conf):
    conf["ml2"].update({"type_drivers": "flat,vxlan,local",
                        "project_network_types": "local",
                        # openvswitch, with taps that survive a reboot on the
                        # userspace datapath (plugins/testbed_plugins/ovs_netdev.py)
                        "mechanism_drivers": "testbed_openvswitch"})
    conf["securitygroup"] = {"firewall_driver": "openvswitch",
                             "enable_security_group": True}
    return conf


def agent_confs(lay):
    """The agents' own files: name -> sections."""
    common = {"interface_driver": "openvswitch", "ovs_use_veth": False}
    ovs = {"ovsdb_connection": f"unix:{ovsdb_socket(lay)}", "datapath_type": "netdev",
           "integration_bridge": "br-int"}
    return {
        "openvswitch_agent.ini": {
            "ovs": {**ovs, "bridge_mappings": "public:br-ex", "of_listen_address": HOST},
            "agent": {"tunnel_types": ""},
            "securitygroup": {"firewall_driver": "openvswitch", "enable_security_group": True},
        },
        "l3_agent.ini": {"DEFAULT": {**common, "agent_mode": "legacy"}, "ovs": ovs},
        # Isolated metadata: on public (no router interface) the DHCP server's
        # namespace answers 169.254.169.254 for the servers that sit on it.
        "dhcp_agent.ini": {"DEFAULT": {**common, "enable_isolated_metadata": True,
                                       "dnsmasq_local_resolv": False},
                           "ovs": ovs},
        "metadata_agent.ini": {"DEFAULT": {
            "nova_metadata_host": HOST, "nova_metadata_port": PORTS["nova-metadata"],
            "metadata_proxy_shared_secret": metadata_secret(lay),
            "metadata_workers": 1}},
    }


def nova_conf(lay, conf):
    conf["DEFAULT"].update({
        "compute_driver": "libvirt.LibvirtDriver",
        # Keep Glance's qcow2 as the backing file instead of a raw copy.
        "force_raw_images": False,
        # Per image (img_config_drive=mandatory) or per server: as on a real cloud.
        "force_config_drive": False,
    })
    conf["libvirt"] = {"virt_type": "qemu", "cpu_mode": "none", "images_type": "qcow2",
                       # libvirtd's sockets are in the testbed's folder (its mount namespace).
                       "connection_uri": f"qemu:///system?socket={libvirt_socket(lay)}"}
    conf["os_vif_ovs"] = {"ovsdb_connection": f"unix:{ovsdb_socket(lay)}"}
    conf["workarounds"] = {"disable_rootwrap": True}
    conf["neutron"] = {**service_auth(lay, "neutron"), "service_metadata_proxy": True,
                       "metadata_proxy_shared_secret": metadata_secret(lay)}
    conf["serial_console"] = {"enabled": False}
    conf["spice"] = {"enabled": False}
    return conf


def sudo_shim():
    """privsep and Neutron's root_helper call `sudo`: everything already runs as
    root, so the shim drops sudo's options and runs the command."""
    return "\n".join([
        "#!/bin/sh",
        "# The testbed runs as root: run the command without sudo's options.",
        'while [ $# -gt 0 ]; do case "$1" in --) shift; break;; -*) shift;; *) break;; esac; done',
        'exec "$@"',
        "",
    ])


def netns_hosts():
    """/etc/hosts inside NETNS: the wildcard DNS names of the floating IP pool, as
    sslip.io would answer them (NETNS has no DNS server), and the API host."""
    lines = ["127.0.0.1 localhost", f"{INET_ADDRESS} testbed-api"]
    for last in range(2, 255):
        lines.append(f"203.0.113.{last} 203-0-113-{last}.sslip.io")
    return "\n".join(lines) + "\n"
