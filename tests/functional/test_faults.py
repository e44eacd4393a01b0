"""Faults between vmbinder and the testbed, and what vmbinder does about them.

A mitmproxy on loopback (the fault_proxy fixture, tests/functional/faultproxy.py)
answers in the cloud's place, drops requests or holds their answers. Every case
ends with conftest's check, through the admin API, that nothing owned by
vmbinder is left. Quota, floating IP and no-valid-host faults are in
test_launch.py.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from vmbinder.providers.openstack.common import RETRY_DEFAULTS

from .conftest import CLOUDS, FLAVOR, IMAGE, ROOT, SOURCE, TESTBED

SERVERS = r"/servers$"
SERVER = r"/servers/[0-9a-f-]{36}$"


def launch(name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vmbinder", "launch", "--format", "json", "--name", name,
            "--image", IMAGE, "--flavor", FLAVOR, *extra, SOURCE]


def run(argv: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def seen(proxy, method: str, path: str, fault: str | None = "any") -> int:
    return proxy.count(method, path, fault)


@pytest.fixture
def via_proxy(cli_env, fault_proxy, tmp_path):
    """cli_env through the proxy, with a clouds.yaml whose api_timeout is 5 s."""
    doc = yaml.safe_load(CLOUDS.read_text())
    for cloud in doc["clouds"].values():
        cloud["api_timeout"] = 5
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump(doc))
    return fault_proxy.through({**cli_env, "OS_CLIENT_CONFIG_FILE": str(clouds)})


def test_busy_answers_and_dropped_reads_are_tried_again_and_the_launch_goes_on(
        via_proxy, fault_proxy, name):
    fault_proxy.set(
        {"method": "POST", "path": SERVERS, "action": "status", "status": 503,
         "retry_after": 0, "times": 2},
        {"method": "POST", "path": "/floatingips$", "action": "status", "status": 429,
         "retry_after": 1, "times": 1},
        {"method": "GET", "path": "/servers/detail$", "action": "status", "status": 502, "times": 1},
        {"method": "GET", "path": "/networks$", "action": "reset", "times": 1},
        {"method": "GET", "path": "/flavors", "action": "blackhole", "seconds": 30, "times": 1},
    )
    res = run(launch(name, "--no-wait"), via_proxy)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["name"] == name
    # Each fault fired, and the request was sent again until it went through.
    assert seen(fault_proxy, "POST", SERVERS, "status") == 2
    assert seen(fault_proxy, "POST", SERVERS, None) == 1
    assert seen(fault_proxy, "POST", "/floatingips$") == 2
    assert seen(fault_proxy, "GET", "/networks$", "reset") == 1
    assert seen(fault_proxy, "GET", "/flavors", "blackhole") == 1
    assert seen(fault_proxy, "GET", "/flavors", None) >= 1
    fault_proxy.set()
    res = run([sys.executable, "-m", "vmbinder", "delete", name], via_proxy)
    assert res.returncode == 0, res.stderr


def test_a_cloud_that_stays_busy_gets_a_clear_message_and_a_rollback(via_proxy, fault_proxy, name):
    fault_proxy.set({"method": "POST", "path": SERVERS, "action": "status", "status": 503,
                     "retry_after": 0})
    res = run(launch(name, "--no-wait"), via_proxy)
    assert res.returncode == 4, res.stderr
    assert f"creating server {name} failed: HTTP 503" in res.stderr
    assert "overloaded or restarting" in res.stderr
    assert "removed what it created" in res.stderr and "floating IP" in res.stderr
    # The first try and as many more as vmbinder allows.
    assert seen(fault_proxy, "POST", SERVERS) == 1 + RETRY_DEFAULTS["status_code_retries"]


def test_a_server_error_is_final(via_proxy, fault_proxy, name):
    fault_proxy.set({"method": "POST", "path": SERVERS, "action": "status", "status": 500})
    res = run(launch(name, "--no-wait"), via_proxy)
    assert res.returncode == 4, res.stderr
    assert f"creating server {name} failed: HTTP 500" in res.stderr
    assert seen(fault_proxy, "POST", SERVERS) == 1


def test_a_create_whose_answer_is_lost_is_not_sent_again_and_what_it_made_is_removed(
        via_proxy, fault_proxy, name):
    # Nova makes the server, the answer never comes: after api_timeout (5 s)
    # vmbinder stops, and its rollback finds the server by name and token.
    fault_proxy.set({"method": "POST", "path": SERVERS, "action": "hold_response",
                     "seconds": 60, "times": 1})
    res = run(launch(name, "--no-wait"), via_proxy)
    assert res.returncode == 4, res.stderr
    assert "did not answer in time" in res.stderr
    assert "removed what it created" in res.stderr and f"server {name}" in res.stderr
    assert seen(fault_proxy, "POST", SERVERS) == 1


# Ctrl-C while each of launch's calls is under way: the cloud has acted on the
# request (it is sent), its answer is held. The launch waits for the environment,
# which never answers on the testbed (nothing boots).
PHASES = {
    "looking up the image": ("GET", r"/images"),
    "making the keypair": ("POST", r"/os-keypairs$"),
    "making the security group": ("POST", r"/security-groups$"),
    "allocating the floating IP": ("POST", r"/floatingips$"),
    "creating the server": ("POST", SERVERS),
    "waiting for ACTIVE": ("GET", SERVER),
    "attaching the floating IP": ("PUT", r"/floatingips/[0-9a-f-]{36}$"),
    "waiting for the environment": ("POST", r"/servers/[0-9a-f-]{36}/action$"),
}


def _ctrl_c_as_from_a_terminal() -> None:
    # A shell without job control starts its background commands with SIGINT
    # ignored, and children inherit that: a test run started so would see
    # vmbinder carry on through the signal. Ctrl-C reaches it from a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("phase", list(PHASES))
def test_ctrl_c_at_each_phase_of_launch_leaves_nothing(fault_proxy, cli_env, ssh_key, name, phase):
    method, path = PHASES[phase]
    fault_proxy.set({"method": method, "path": path, "action": "hold_response",
                     "seconds": 120, "times": 1})
    proc = subprocess.Popen(launch(name), env=fault_proxy.through(cli_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_from_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while not seen(fault_proxy, method, path, "hold_response"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"no {method} {path} was sent"
            time.sleep(0.2)
        time.sleep(1)  # the request has reached the service
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and out == ""
    if phase != "looking up the image":
        assert "removed what it created" in err, err


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_list_rides_out_a_restart_of_the_compute_api(vmb, cli_env, name):
    res = vmb("launch", "--no-wait", "--name", name, "--image", IMAGE, "--flavor", FLAVOR, SOURCE)
    assert res.returncode == 0, res.stderr
    python = TESTBED / "venv" / "bin" / "python"
    restart = subprocess.Popen([str(python), str(ROOT / "testbed" / "testbed.py"), "restart",
                                "nova-api", "--pause", "3"],
                               env={**cli_env, "VMBINDER_TESTBED_DIR": str(TESTBED)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    nova = _nova_port()
    deadline = time.monotonic() + 60
    while _port_open(nova):  # list once the compute API is gone
        assert time.monotonic() < deadline and restart.poll() is None, restart.communicate()
        time.sleep(0.1)
    listed = vmb("list", "--format", "json")
    said, _ = restart.communicate(timeout=180)
    assert restart.returncode == 0, said
    assert listed.returncode == 0, listed.stderr
    assert [s["name"] for s in json.loads(listed.stdout)] == [name]
    assert vmb("delete", name).returncode == 0


def _nova_port() -> int:
    sys.path.insert(0, str(ROOT / "testbed"))
    try:
        from configs import PORTS
    finally:
        sys.path.remove(str(ROOT / "testbed"))
    return PORTS["nova-api"]


def test_a_floating_ip_pool_with_no_address_left_is_refused_and_rolled_back(
        testbed, vmb, ssh_key, name):
    a = testbed.admin
    net = a.network.create_network(name=f"{name}-pool", is_router_external=True)
    try:
        a.network.create_subnet(network_id=net.id, ip_version=4, cidr="198.51.100.0/29",
                                gateway_ip="198.51.100.1", enable_dhcp=False,
                                allocation_pools=[{"start": "198.51.100.2", "end": "198.51.100.2"}])
        taken = a.network.create_ip(floating_network_id=net.id)  # the pool's only address
        try:
            res = vmb("launch", "--no-wait", "--name", name, "--image", IMAGE, "--flavor", FLAVOR,
                      "--external-network", net.name, SOURCE)
        finally:
            a.network.delete_ip(taken)
    finally:
        for subnet in a.network.subnets(network_id=net.id):
            a.network.delete_subnet(subnet)
        a.network.delete_network(net)
    assert res.returncode == 4, res.stderr
    assert f"allocating a floating IP on {net.name} failed" in res.stderr
    assert "No more IP addresses" in res.stderr
    assert "removed what it created" in res.stderr and "keypair" in res.stderr

