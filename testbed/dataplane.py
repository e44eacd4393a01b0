"""The data plane of real mode: Open vSwitch, libvirt and the namespaces.

Started by start.Starter in real mode, removed by `testbed.py down`.  What it
makes outside the state folder: network namespace realconf.NETNS (and those
Neutron's agents make for routers and DHCP), /etc/netns/NETNS/ (that
namespace's hosts and resolv.conf), OWNER, OVS's tap devices.  libvirt runs in a
mount namespace of its own in which /etc/libvirt, /var/lib/libvirt, ... are
folders under run/libvirt, so no system file is changed.

`down` imports this module with any Python 3: standard library only at the top.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import realconf
from realconf import BRIDGES, INET_ADDRESS, INET_PORT, INET_PREFIX, NETNS

#: What real mode needs on the machine (testbed/install --real installs them).
COMMANDS = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "libvirtd",
            "virtlogd", "qemu-system-x86_64", "qemu-img", "genisoimage", "dnsmasq",
            "haproxy", "iptables", "ip", "unshare", "conntrack", "arping")
NETNS_ETC = Path("/etc/netns") / NETNS
#: The state folder of the testbed that made NETNS, so that another `up` can
#: tell a namespace a killed run left behind from one a running testbed uses.
#: Not in NETNS_ETC: `ip netns exec` binds each file there over /etc's own.
OWNER = Path("/run") / f"{NETNS}.testbed"
DATAPATH_DEVICE = "ovs-netdev"
#: libvirt's qemu hook, run at each start of a guest: its taps brought up once
#: its qemu has started. A guest's tap is made by os-vif (testbed_plugins'
#: ovs_netdev) and used by libvirt as it is; a server stopped, imaged and started
#: again (Nova's hard reboot unplugs and plugs its port) was once left with its
#: tap down: its DHCP requests were dropped and the server never answered.
#: What it did, and whether the tap was down, is in libvirt's log folder
#: (run/libvirt/var-log-libvirt/qemu-hook.log).
QEMU_HOOK = """#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
LOG=${TESTBED_HOOK_LOG:-/var/log/libvirt/qemu-hook.log}
[ "$2" = started ] || exit 0
sed -n "s/.*<target dev='\\(tap[^']*\\)'.*/\\1/p" | while read -r dev; do
  was=down
  ip -o link show dev "$dev" 2>/dev/null | grep -q "[<,]UP[,>]" && was=up
  ip link set dev "$dev" up && echo "$(date -u +%FT%TZ) $1: $dev up (was $was)" >>"$LOG" || true
done
exit 0
"""
#: Namespaces that Neutron's agents make, by router or network id.
AGENT_NETNS = re.compile(r"^(qrouter|qdhcp)-([0-9a-f-]{36})$")


def _path(env):
    return f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{env.get('PATH', '')}"


def missing_prerequisites(venv_python):
    """Names of what real mode lacks here, each with what to do."""
    problems = []
    if os.geteuid() != 0:
        problems.append("real compute needs root (libvirt, Open vSwitch, namespaces)")
    path = _path(os.environ)
    missing = [c for c in COMMANDS if not shutil.which(c, path=path)]
    if missing:
        problems.append(f"commands not found: {', '.join(missing)} (run testbed/install --real)")
    probe = subprocess.run([str(venv_python), "-c", "import libvirt"], capture_output=True, check=False)
    if probe.returncode:
        problems.append("the testbed's venv has no libvirt-python (run testbed/install --real)")
    if not Path("/dev/net/tun").exists():
        problems.append("/dev/net/tun is missing: Open vSwitch's userspace datapath needs it")
    if NETNS in netns_list():
        problems.append(f"network namespace {NETNS} already exists: run testbed/down "
                        f"(or `ip netns delete {NETNS}` if another program made it)")
    return problems


def netns_list():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ns_run(*argv, check=True):
    return subprocess.run(["ip", "netns", "exec", NETNS, *map(str, argv)], check=check,
                          capture_output=True, text=True)


# --------------------------------------------------------------------------
# Prepared before anything starts


def prepare(lay):
    """Files real mode's processes need: the sudo shim, libvirt's folders (its
    qemu hook, QEMU_HOOK, in them), OVS's database, the namespace's hosts and resolv.conf."""
    shim = lay.run / "bin" / "sudo"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(realconf.sudo_shim())
    shim.chmod(0o755)

    root = realconf.libvirt_root(lay)
    made = []
    for target in realconf.LIBVIRT_BINDS:
        (root / target.strip("/").replace("/", "-")).mkdir(parents=True, exist_ok=True)
        if not Path(target).exists():  # a mount point is needed; removed by `down`
            Path(target).mkdir(parents=True)
            made.append(target)
    (lay.run / "made-dirs").write_text("".join(f"{d}\n" for d in made))
    etc = root / "etc-libvirt"
    shutil.rmtree(etc, ignore_errors=True)
    # The package's configuration, without its networks: the default network
    # would put 192.168.122.1 on a bridge in the root namespace.
    shutil.copytree("/etc/libvirt", etc, symlinks=True,
                    ignore=lambda d, names: ["networks"] if d.endswith("/qemu") else [])
    (etc / "qemu.conf").write_text(realconf.qemu_conf())
    hook = etc / "hooks" / "qemu"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(QEMU_HOOK)
    hook.chmod(0o755)

    rundir = realconf.ovs_rundir(lay)
    rundir.mkdir(parents=True, exist_ok=True)
    # The userspace datapath's own device, made by ovs-vswitchd and left by it.
    if subprocess.run(["ip", "link", "show", DATAPATH_DEVICE], capture_output=True, check=False).returncode:
        (lay.run / "made-datapath-device").touch()
    subprocess.run(["ovsdb-tool", "create", str(rundir / "conf.db"),
                    "/usr/share/openvswitch/vswitch.ovsschema"], check=True, capture_output=True)

    if not NETNS_ETC.parent.exists():
        NETNS_ETC.parent.mkdir()
        (lay.run / "made-etc-netns").touch()
    NETNS_ETC.mkdir(exist_ok=True)
    (NETNS_ETC / "hosts").write_text(realconf.netns_hosts())
    OWNER.write_text(f"{lay.state}\n")
    # Nothing answers DNS there: names come from hosts, lookups fail at once.
    (NETNS_ETC / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")


def libvirtd_argv(lay):
    """libvirtd and virtlogd in one process group, in a mount namespace where
    libvirt's system folders are the testbed's own."""
    root = realconf.libvirt_root(lay)
    binds = [f"mount --bind {root / t.strip('/').replace('/', '-')} {t}"
             for t in realconf.LIBVIRT_BINDS]
    script = "\n".join(["set -e", *binds, "virtlogd &", "exec libvirtd"])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


# --------------------------------------------------------------------------
# After OVS answers


def vsctl(lay, *args):
    env = {**os.environ, **{k: str(v) for k, v in realconf.ovs_env(lay).items()}}
    return subprocess.run(["ovs-vsctl", f"--db=unix:{realconf.ovsdb_socket(lay)}",
                           "--timeout=20", *map(str, args)],
                          check=True, capture_output=True, text=True, env=env).stdout


def make_bridges_and_netns(lay):
    """br-int and br-ex on the userspace datapath, and NETNS holding br-ex's
    port with the external gateway's address.  NETNS gets no route out: its
    only interfaces are that port and its loopback."""
    for bridge in BRIDGES:
        vsctl(lay, "--may-exist", "add-br", bridge, "--", "set", "bridge", bridge,
              "datapath_type=netdev")
    vsctl(lay, "--may-exist", "add-port", "br-ex", INET_PORT, "--", "set", "interface",
          INET_PORT, "type=internal")
    deadline = time.monotonic() + 20
    while subprocess.run(["ip", "link", "show", INET_PORT], capture_output=True, check=False).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Open vSwitch did not create {INET_PORT}")
        time.sleep(0.2)
    subprocess.run(["ip", "netns", "add", NETNS], check=True, capture_output=True)
    subprocess.run(["ip", "link", "set", INET_PORT, "netns", NETNS], check=True,
                   capture_output=True)
    ns_run("ip", "link", "set", "lo", "up")
    ns_run("ip", "addr", "add", f"{INET_ADDRESS}/{INET_PREFIX}", "dev", INET_PORT)
    ns_run("ip", "link", "set", INET_PORT, "up")


def netns_routes():
    """The routes of NETNS (for checks: only its own subnet, no default)."""
    return ns_run("ip", "-4", "route", "show").stdout.splitlines()


# --------------------------------------------------------------------------
# Removal, by `down`


def abandoned_by():
    """The state folder of the real testbed that made NETNS when none of its
    recorded processes runs any more (a run killed before its `down`), or None:
    no such namespace, one made by another program, or a testbed still running."""
    from testbed import group_alive, read_records

    if NETNS not in netns_list():
        return None
    try:
        state = Path(OWNER.read_text().strip())
    except OSError:
        return None
    if not state.is_absolute() or any(group_alive(r) for r in read_records(state / "pids")):
        return None
    return state


def ovs_interfaces(lay):
    """Interface names in the testbed's OVS database: asked of ovsdb-server while
    it runs, read from the database file once it is gone (a killed run)."""
    sock = realconf.ovsdb_socket(lay)
    if sock.exists():
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            out = vsctl(lay, "--bare", "--columns=name", "list", "interface")
            return [name for name in out.split() if name]
    database = realconf.ovs_rundir(lay) / "conf.db"
    query = '["Open_vSwitch",{"op":"select","table":"Interface","where":[],"columns":["name"]}]'
    with contextlib.suppress(subprocess.CalledProcessError, OSError, ValueError, LookupError):
        out = subprocess.run(["ovsdb-tool", "query", str(database), query], check=True,
                             capture_output=True, text=True).stdout
        return [row["name"] for row in json.loads(out)[0]["rows"]]
    return []


def stray_processes(lay, groups=()):
    """PIDs of processes that services started outside their process groups
    (qemu, dnsmasq, haproxy, privsep helpers): their arguments name run/.
    Members of the recorded process groups `groups` are not strays."""
    marker = (str(lay.run) + "/").encode()
    mine = {os.getpid(), os.getppid()}
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[2]) \
                    in groups:
                continue
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def kill_strays(lay, log, groups=(), grace=10.0):
    pids = stray_processes(lay, groups)
    if not pids:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    log(f"stopped {len(pids)} processes the services had started"
        + (f" ({len(left)} killed)" if left else ""))


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def agent_namespaces(lay):
    """The routers' and DHCP servers' namespaces whose ids the agents recorded in run/."""
    ids = set()
    neutron = lay.run / "neutron"
    if neutron.is_dir():
        for path in neutron.rglob("*"):
            ids.update(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                                  path.name))
    return [ns for ns in netns_list() if (m := AGENT_NETNS.match(ns)) and m.group(2) in ids]


def remove(lay, interfaces, log):
    """Everything real mode made outside its state folder."""
    removed = []
    for ns in agent_namespaces(lay) + ([NETNS] if NETNS in netns_list() else []):
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        removed.append(ns)
    links = []
    if (lay.run / "made-datapath-device").exists():
        interfaces = [*interfaces, DATAPATH_DEVICE]
        (lay.run / "made-datapath-device").unlink()
    for name in interfaces:
        if subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode == 0:
            subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
            links.append(name)
    if NETNS_ETC.exists():
        shutil.rmtree(NETNS_ETC)
    OWNER.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        for made in (lay.run / "made-dirs").read_text().split():
            with contextlib.suppress(OSError):
                Path(made).rmdir()  # only if empty
        (lay.run / "made-dirs").unlink()
    if (lay.run / "made-etc-netns").exists():
        with contextlib.suppress(OSError):
            NETNS_ETC.parent.rmdir()  # only if nothing else lives there now
        (lay.run / "made-etc-netns").unlink()
    if removed or links:
        log(f"removed namespaces {', '.join(removed) or '-'}; devices {', '.join(links) or '-'}")
