"""The steps real mode adds to `up` (mixed into start.Starter).

Order matters, as met on this kind of machine:
- Neutron's WSGI API answers no agent RPC: neutron-rpc-server and
  neutron-periodic-workers run beside it, and the agents start only once the
  rpc server consumes its queues (an agent's first report sent earlier is
  lost and costs 60 s and a back-off).
- Ports bind only to a registered agent: networks and routers are made
  after every agent has reported.
"""

import amqp
import dataplane
import realconf
from configs import COMPUTE_HOST, HOST, PORTS
from runner import NotReady, port_free

from testbed import HERE, Failure, down

AGENTS = (
    # record name, binary, its own config file, Neutron's agent_type
    ("neutron-ovs-agent", "neutron-openvswitch-agent", "openvswitch_agent.ini",
     "Open vSwitch agent"),
    ("neutron-l3-agent", "neutron-l3-agent", "l3_agent.ini", "L3 agent"),
    ("neutron-dhcp-agent", "neutron-dhcp-agent", "dhcp_agent.ini", "DHCP agent"),
    ("neutron-metadata-agent", "neutron-metadata-agent", "metadata_agent.ini",
     "Metadata agent"),
)
#: Queues the rpc server consumes: the agents' calls and their state reports.
RPC_QUEUES = ("q-plugin", "q-reports-plugin")
#: OpenFlow controller of the OVS agent (os-ken), on loopback.
OPENFLOW_PORT = 6633


class RealMode:
    def take_down_abandoned(self):
        """A real testbed whose run was killed before its `down` leaves its
        namespaces and devices: taken down here, from whichever folder it ran."""
        state = dataplane.abandoned_by()
        if state:
            self.step(f"the real testbed in {state} was left up by a run that ended "
                      "without its down: taking it down")
            down(state, grace=5, log=self.step)

    def prepare_real(self):
        lay = self.lay
        problems = dataplane.missing_prerequisites(lay.venv / "bin" / "python")
        busy = [str(p) for p in (OPENFLOW_PORT,) if not port_free(p)]
        if busy:
            problems.append(f"port {', '.join(busy)} on 127.0.0.1 is in use (the OVS agent's "
                            "OpenFlow controller listens there)")
        if problems:
            raise Failure("real compute", "; ".join(problems))
        dataplane.prepare(lay)
        (lay.run / "mode").write_text("real\n")

    def start_dataplane(self):
        """Open vSwitch, the bridges and "the internet", libvirt, the forwarder."""
        lay = self.lay
        rundir, sock = realconf.ovs_rundir(lay), realconf.ovsdb_socket(lay)
        self.start("ovsdb-server", [
            "ovsdb-server", rundir / "conf.db", f"--remote=punix:{sock}",
            f"--unixctl={rundir / 'ovsdb-server.ctl'}", f"--pidfile={rundir / 'ovsdb-server.pid'}",
            "-vconsole:info"])

        def db_ready():
            if not sock.exists():
                raise NotReady(f"{sock} not there yet")

        self.wait("ovsdb-server", "the OVS database socket", db_ready)
        dataplane.vsctl(lay, "--no-wait", "init")
        self.start("ovs-vswitchd", [
            "ovs-vswitchd", f"unix:{sock}", f"--unixctl={rundir / 'ovs-vswitchd.ctl'}",
            f"--pidfile={rundir / 'ovs-vswitchd.pid'}", "-vconsole:info"])

        def switch_ready():
            if not (rundir / "ovs-vswitchd.ctl").exists():
                raise NotReady("ovs-vswitchd has no control socket yet")

        self.wait("ovs-vswitchd", "ovs-vswitchd", switch_ready)
        try:
            dataplane.make_bridges_and_netns(lay)
        except Exception as exc:
            raise Failure("ovs-vswitchd", f"making the bridges and namespace "
                          f"{realconf.NETNS}: {exc}", lay.logs / "ovs-vswitchd.log") from exc
        self.step(f"Open vSwitch (userspace datapath) with br-int, br-ex; namespace "
                  f"{realconf.NETNS} at {realconf.INET_ADDRESS}/{realconf.INET_PREFIX}")
        self.start("forwarder", [lay.venv / "bin" / "python", HERE / "forwarder.py",
                                 realconf.NETNS, *(PORTS[s] for s in realconf.FORWARDED)])
        self.start("libvirtd", dataplane.libvirtd_argv(lay))
        socket_path = realconf.libvirt_socket(lay)

        def libvirt_ready():
            if not socket_path.exists():
                raise NotReady("libvirtd has no socket yet")

        self.wait("libvirtd", "libvirtd", libvirt_ready)
        self.step("libvirtd and virtlogd answer")

    def neutron_real(self):
        """The rpc server and periodic workers, then the agents, registered."""
        lay, bin_ = self.lay, self.lay.venv / "bin"
        etc = lay.etc / "neutron"
        server = ["--config-file", etc / "neutron.conf",
                  "--config-file", etc / "plugins" / "ml2" / "ml2_conf.ini"]

        # Runs beside wait_rabbitmq: the rpc server needs the broker too.
        self.wait("rabbitmq", "AMQP listener", self.rabbitmq_answers, watch=("rabbitmq",))
        self.start("neutron-rpc", [bin_ / "neutron-rpc-server", *server])
        self.start("neutron-periodic", [bin_ / "neutron-periodic-workers", *server])

        def consumed():
            conn = amqp.Connection(f"{HOST}:{PORTS['rabbitmq']}", userid="openstack",
                                   password=lay.password, connect_timeout=5)
            try:
                conn.connect()
                channel = conn.channel()
                for queue in RPC_QUEUES:
                    try:
                        _, _, consumers = channel.queue_declare(queue, passive=True)
                    except amqp.exceptions.NotFound:
                        raise NotReady(f"queue {queue} not declared yet") from None
                    if not consumers:
                        raise NotReady(f"queue {queue} has no consumer yet")
            except OSError as exc:
                raise NotReady(str(exc)) from None
            finally:
                conn.collect()

        self.wait("neutron-rpc", "the rpc server's queues", consumed,
                  watch=("neutron-rpc", "rabbitmq"))
        self.step("neutron-rpc-server consumes its queues")
        for name, binary, conf, _ in AGENTS:
            self.start(name, [bin_ / binary, "--config-file", etc / "neutron.conf",
                              "--config-file", etc / conf])
        names = tuple(a[0] for a in AGENTS)

        def registered():
            count = self.query(
                "SELECT COUNT(DISTINCT agent_type) FROM neutron.agents WHERE host=%s "
                "AND admin_state_up=1 AND agent_type IN (%s, %s, %s, %s)",
                COMPUTE_HOST, *(a[3] for a in AGENTS))
            if count < len(AGENTS):
                raise NotReady(f"{count} of {len(AGENTS)} agents reported")

        self.wait("neutron-ovs-agent", "the Neutron agents' reports", registered,
                  watch=("neutron-rpc", *names))
        self.step("Neutron agents reported: " + ", ".join(a[3] for a in AGENTS))

    def nova_metadata(self):
        etc = self.lay.etc / "nova"
        self.serve("nova-metadata", "nova.wsgi.metadata:application",
                   OS_NOVA_CONFIG_DIR=etc,
                   OS_NOVA_CONFIG_FILES="api-paste.ini;nova.conf;nova-db.conf")

    def wait_wired(self):
        """The routers' and DHCP servers' ports are ACTIVE: the agents wired them."""
        def active():
            waiting = self.query(
                "SELECT COUNT(*) FROM neutron.ports WHERE device_owner IN "
                "('network:router_gateway', 'network:router_interface', 'network:dhcp') "
                "AND status <> 'ACTIVE'")
            total = self.query(
                "SELECT COUNT(*) FROM neutron.ports WHERE device_owner IN "
                "('network:router_gateway', 'network:router_interface', 'network:dhcp')")
            # router1's gateway and interface, the DHCP servers of private and public
            if waiting or total < 4:
                raise NotReady(f"{waiting} of {total} router and DHCP ports not ACTIVE")

        self.wait("neutron-l3-agent", "router and DHCP ports ACTIVE", active,
                  watch=tuple(a[0] for a in AGENTS))
        self.step("router1 and the DHCP server wired")
