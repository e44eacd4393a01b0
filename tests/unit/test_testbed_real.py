"""The testbed's real-compute mode, the parts that need no running testbed: the
services' configuration, the namespace's host names, the sudo shim, what `up
--real` refuses to start without or takes down first, what `down` picks to
remove, and libvirt's qemu hook (in a network namespace of its own). tests/real
runs it for real."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

from vmbinder.https import wildcard_name

TESTBED = Path(__file__).resolve().parents[2] / "testbed"


@pytest.fixture(scope="module")
def tb():
    sys.path.insert(0, str(TESTBED))
    try:
        import configs
        import dataplane
        import realconf

        yield configs, realconf, dataplane
    finally:
        sys.path.remove(str(TESTBED))


def _layout(configs, tmp_path, real):
    lay = configs.Layout(tmp_path / "state", "pw", real=real)
    for name in ("glance/glance-api-paste.ini", "neutron/api-paste.ini", "nova/api-paste.ini",
                 "cinder/api-paste.ini"):
        (lay.venv / "etc" / name).parent.mkdir(parents=True, exist_ok=True)
        (lay.venv / "etc" / name).write_text("[pipeline:main]\n")
    configs.write_all(lay)
    return lay


def _ini(path):
    conf = configparser.RawConfigParser()
    conf.read(path)
    return conf


def test_real_mode_runs_libvirt_and_the_ovs_agents_fake_mode_neither(tb, tmp_path):
    configs, realconf, _ = tb
    fake = _layout(configs, tmp_path / "fake", real=False)
    assert _ini(fake.etc / "nova/nova.conf")["DEFAULT"]["compute_driver"] == \
        "testbed_fake.CloudInitFakeDriver"
    assert _ini(fake.etc / "neutron/plugins/ml2/ml2_conf.ini")["ml2"]["mechanism_drivers"] == \
        "testbed_bindall"
    assert not (fake.etc / "neutron/openvswitch_agent.ini").exists()
    assert fake.public_url("keystone") == fake.url("keystone") == "http://127.0.0.1:45500"

    real = _layout(configs, tmp_path / "real", real=True)
    nova = _ini(real.etc / "nova/nova.conf")
    assert nova["DEFAULT"]["compute_driver"] == "libvirt.LibvirtDriver"
    assert nova["libvirt"]["virt_type"] == "qemu" and nova["libvirt"]["cpu_mode"] == "none"
    assert nova["libvirt"]["connection_uri"] == \
        f"qemu:///system?socket={real.run}/libvirt/run-libvirt/libvirt-sock"
    assert nova["DEFAULT"]["force_config_drive"] == "false"
    # Nova's metadata proxy and Neutron's metadata agent share one secret.
    agent = _ini(real.etc / "neutron/metadata_agent.ini")["DEFAULT"]
    assert nova["neutron"]["metadata_proxy_shared_secret"] == agent["metadata_proxy_shared_secret"]
    assert agent["nova_metadata_port"] == str(configs.PORTS["nova-metadata"])
    ml2 = _ini(real.etc / "neutron/plugins/ml2/ml2_conf.ini")["ml2"]
    assert ml2["mechanism_drivers"] == "testbed_openvswitch" and ml2["project_network_types"] == "local"
    ovs = _ini(real.etc / "neutron/openvswitch_agent.ini")["ovs"]
    assert ovs["datapath_type"] == "netdev" and ovs["bridge_mappings"] == "public:br-ex"
    assert ovs["ovsdb_connection"] == f"unix:{real.run}/ovs/db.sock"
    neutron = _ini(real.etc / "neutron/neutron.conf")
    assert neutron["DEFAULT"]["dhcp_agent_notification"] == "true"
    # Servers on the provider network (public, no router interface) get metadata from DHCP's namespace.
    assert _ini(real.etc / "neutron/dhcp_agent.ini")["DEFAULT"]["enable_isolated_metadata"] == "true"
    # Services reach Nova through the internal endpoint: the public one is in the namespace.
    assert neutron["nova"]["endpoint_type"] == "internal"
    assert real.public_url("keystone", "/v3") == "http://203.0.113.1:45500/v3"
    assert real.auth_url == "http://127.0.0.1:45500/v3"


def test_the_namespace_names_the_floating_ips_as_vmbinder_does(tb):
    _, realconf, _ = tb
    hosts = dict(reversed(line.split()) for line in realconf.netns_hosts().splitlines())
    for ip in ("203.0.113.10", "203.0.113.167", "203.0.113.250"):
        assert hosts[wildcard_name(ip, "sslip.io")] == ip


def test_the_sudo_shim_drops_sudos_options_and_runs_the_command(tb, tmp_path):
    _, realconf, _ = tb
    shim = tmp_path / "sudo"
    shim.write_text(realconf.sudo_shim())
    shim.chmod(0o755)
    out = subprocess.run([str(shim), "-E", "-n", "--", "echo", "-n", "ran"], capture_output=True,
                         text=True, check=True).stdout
    assert out == "ran"
    assert subprocess.run([str(shim), "printf", "%s", "a b"], capture_output=True, text=True,
                          check=True).stdout == "a b"


def test_up_real_names_every_missing_prerequisite(tb, tmp_path, monkeypatch):
    _, realconf, dataplane = tb
    monkeypatch.setattr(dataplane.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(dataplane.shutil, "which",
                        lambda cmd, path=None: None if cmd in ("ovs-vswitchd", "haproxy") else cmd)
    monkeypatch.setattr(dataplane, "netns_list", lambda: [realconf.NETNS])
    problems = dataplane.missing_prerequisites("false")  # a "python" that cannot import libvirt
    text = "\n".join(problems)
    assert "needs root" in text
    assert "commands not found: ovs-vswitchd, haproxy (run testbed/install --real)" in text
    assert "no libvirt-python" in text
    assert f"network namespace {realconf.NETNS} already exists: run testbed/down" in text


def test_down_removes_only_the_namespaces_of_this_testbeds_routers_and_networks(tb, tmp_path,
                                                                                monkeypatch):
    configs, realconf, dataplane = tb
    lay = configs.Layout(tmp_path / "state", "pw", real=True)
    router, network, other = ("11111111-2222-3333-4444-555555555555",
                              "66666666-7777-8888-9999-000000000000",
                              "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
    (lay.run / "neutron" / "external" / "pids").mkdir(parents=True)
    (lay.run / "neutron" / "external" / "pids" / f"{router}.pid.haproxy").write_text("1\n")
    (lay.run / "neutron" / "dhcp" / network).mkdir(parents=True)
    monkeypatch.setattr(dataplane, "netns_list", lambda: [
        f"qrouter-{router}", f"qdhcp-{network}", f"qrouter-{other}", realconf.NETNS, "mine"])
    assert sorted(dataplane.agent_namespaces(lay)) == [f"qdhcp-{network}", f"qrouter-{router}"]


def test_a_namespace_a_killed_testbed_left_is_taken_down_one_in_use_or_not_ours_is_not(
        tb, tmp_path, monkeypatch):
    """`up --real` takes down the testbed that made the namespace only when none
    of its recorded processes runs: a run killed before its `down`."""
    _, realconf, dataplane = tb
    import testbed

    owner = tmp_path / "netns-owner"
    monkeypatch.setattr(dataplane, "OWNER", owner)
    namespaces = []
    monkeypatch.setattr(dataplane, "netns_list", lambda: namespaces)
    state = tmp_path / "other" / ".testbed"
    owner.write_text(f"{state}\n")
    assert dataplane.abandoned_by() is None  # no namespace: nothing to take down
    namespaces.append(realconf.NETNS)
    service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                               start_new_session=True)
    try:
        testbed.write_record(state / "pids", 1, "rabbitmq", service.pid)
        assert dataplane.abandoned_by() is None  # its testbed still runs
    finally:
        service.kill()
        service.wait()
    assert dataplane.abandoned_by() == state  # killed: left behind
    owner.unlink()
    assert dataplane.abandoned_by() is None  # made by another program


def test_strays_are_processes_naming_the_run_folder_outside_the_recorded_groups(tb, tmp_path):
    configs, _, dataplane = tb
    lay = configs.Layout(tmp_path / "state", "pw", real=True)
    lay.run.mkdir(parents=True)
    marker = f"{lay.run}/instances/disk"
    argv = [sys.executable, "-c", "import time; time.sleep(60)", marker]
    stray = subprocess.Popen(argv, start_new_session=True)
    grouped = subprocess.Popen(argv, start_new_session=True)
    try:
        found = dataplane.stray_processes(lay, groups={grouped.pid})
        assert stray.pid in found and grouped.pid not in found
    finally:
        stray.kill()
        grouped.kill()
        stray.wait()
        grouped.wait()


def test_the_real_compute_group_fails_outside_the_namespace_before_sending_anything(tmp_path):
    """Run where the floating IPs do not answer, tests/real stops at its first
    fixture, naming the namespace, with every test an error and none passed."""
    root = TESTBED.parent
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(root / "tests" / "real")], cwd=root, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                      "HOME": str(tmp_path)}, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "network namespace vmbinder-inet" in res.stdout
    assert " passed" not in res.stdout and " error" in res.stdout


DOMAIN = """<domain type='qemu'><name>instance-00000001</name><devices>
  <interface type='ethernet'><mac address='fa:16:3e:00:00:01'/>
    <target dev='tapvmb0' managed='no'/><model type='virtio'/></interface>
</devices></domain>
"""


@pytest.mark.parametrize(("operation", "made", "logged"), [
    ("started", "", "up (was down)"), ("started", "ip link set tapvmb0 up && ", "up (was up)"),
    ("prepare", "", None)])
def test_the_qemu_hook_brings_a_started_guests_taps_up(tb, tmp_path, operation, made, logged):
    """In a network namespace of its own: a tap made down, as os-vif's was once
    left, is up after the hook ran for the guest's start, and left alone otherwise;
    its log says whether the tap had been down."""
    _, _, dataplane = tb
    hook = tmp_path / "qemu"
    hook.write_text(dataplane.QEMU_HOOK)
    hook.chmod(0o755)
    script = (f"ip tuntap add dev tapvmb0 mode tap && {made}"
              f"{hook} instance-00000001 {operation} begin - && ip -o link show tapvmb0")
    log = tmp_path / "qemu-hook.log"
    res = subprocess.run(["unshare", "--net", "sh", "-c", script], input=DOMAIN,
                         capture_output=True, text=True, timeout=30, check=False,
                         env={"PATH": "/usr/bin:/bin", "TESTBED_HOOK_LOG": str(log)})
    assert res.returncode == 0, res.stderr
    flags = res.stdout.split("<", 1)[1].split(">", 1)[0].split(",")
    assert ("UP" in flags) is bool(logged), res.stdout
    assert (log.read_text().endswith(f"instance-00000001: tapvmb0 {logged}\n") if logged
            else not log.exists())
