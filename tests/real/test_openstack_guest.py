"""End to end on OpenStack: `vmbinder launch` makes a server that Nova boots
under libvirt from the image `vmbinder image upload` put in Glance; cloud-init
reads the user-data from the config drive vmbinder asks for by default
(--config-drive auto; the testbed forces none); the guest gets a certificate for
its floating IP from an ACME CA (pebble in "the internet", validating http-01
through the router's NAT) at the first try; every printed URL answers through
the floating IP with the token, the certificate checked against the CA's root,
a wrong token is refused, a kernel runs code through the printed URL; from "the
internet" only 22, 80 and 443 answer on the floating IP; the public APIs answer
from inside the guest; after a soft and a hard reboot the same URL answers
again; `delete` leaves nothing owned by vmbinder.
"""

from __future__ import annotations

import json
import selectors
import socket
import ssl
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.test_local_guest import ssh_key, ssh_run
from tests.kernel import execute

from .conftest import FLAVOR, INET_ADDRESS, cli_environment, only_the_keypair_is_left, stack_memory, vmbinder

pytestmark = pytest.mark.real
TIMEOUT = 1800


def verifying(roots) -> ssl.SSLContext:
    """Checks a server's certificate, name or address included, against roots."""
    return ssl.create_default_context(cafile=str(roots))


def get(url: str, context: ssl.SSLContext, timeout: float = 20) -> int:
    """The HTTP status of GET url."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def get_json(url: str, context: ssl.SSLContext, timeout: float = 20) -> dict:
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        return json.load(resp)


def guest_run(address: str, key, console: str, command: str) -> str:
    """command's output on the server over ssh to its floating IP (host key checked)."""
    return ssh_run(address, 22, key, console, command)


def scan(address: str, batch: int = 4000, wait: float = 3.0) -> tuple[list[int], list[int]]:
    """(ports that accept a TCP connection, ports that refuse one) of address,
    over all 65535; the rest gave no answer (filtered)."""
    opened, refused = [], []
    ports = list(range(1, 65536))
    for start in range(0, len(ports), batch):
        sel = selectors.DefaultSelector()
        for port in ports[start:start + batch]:
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((address, port))
            sel.register(sock, selectors.EVENT_WRITE, port)
        deadline = time.monotonic() + wait
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(deadline - time.monotonic(), 0)):
                err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                (opened if err == 0 else refused).append(key.data)
                sel.unregister(key.fileobj)
                key.fileobj.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    return sorted(opened), sorted(refused)


def wait_answering(url: str, context: ssl.SSLContext, timeout: float = 900) -> list:
    """Poll url until it answers 200; the codes seen (None: no answer)."""
    codes = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            codes.append(get(url, context, timeout=10))
        except OSError:
            codes.append(None)
        if codes[-1] == 200:
            break
        time.sleep(3)
    return codes


def wait_rebooted(testbed, server, timeout: float = 600) -> None:
    """Until Nova has restarted the guest: ACTIVE with no task after REBOOT."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        now = testbed.admin.compute.get_server(server.id)
        seen.append((now.status, now.task_state))
        if now.status == "ACTIVE" and now.task_state is None and len(seen) > 1:
            return
        assert now.status != "ERROR", now.fault
        time.sleep(2)
    raise AssertionError(f"the reboot did not finish in {timeout:.0f} s: {seen[-5:]}")


def console_of(testbed, server) -> str:
    return testbed.admin.compute.get_server_console_output(server)["output"]


BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


def test_launch_on_openstack_boots_reads_its_config_drive_and_serves_every_url(
        real_testbed, uploaded_image, repo_url, acme_ca, tmp_path, phase):
    tb, name = real_testbed, "real-launch"
    (tmp_path / "home").mkdir()
    env = cli_environment(tmp_path / "home")
    key = ssh_key(tmp_path / "home")
    phase("set-up")

    res = vmbinder(env, "launch", "--name", name, "--image", uploaded_image, "--flavor", FLAVOR,
                   "--acme-ca", acme_ca.directory, "--acme-ca-root", str(acme_ca.roots),
                   "--format", "json", "--timeout", str(TIMEOUT), repo_url, timeout=TIMEOUT + 300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    phase("launch until every URL answers")
    phase.note(f"memory with one guest (RSS, PSS MiB): {stack_memory()}")
    try:
        server = tb.server(name)
        # Asked for by default: neither the image nor Nova forces one here.
        assert server.has_config_drive in (True, "True"), server.has_config_drive
        assert server.metadata["vmbinder:user-data-via"] == "config-drive"
        assert doc["user_data_via"] == "config-drive"
        console = console_of(tb, server)
        assert "Datasource DataSourceConfigDrive" in console, console[-3000:]
        address = doc["address"]
        (fip,) = tb.admin.network.ips(floating_ip_address=address)
        port = tb.admin.network.get_port(fip.port_id)
        assert address.startswith("203.0.113.") and port.device_id == server.id

        # The CA reached the floating IP's port 80 and certified the address itself.
        assert doc["certificate"] == {"site": address, "issuer": "acme", "root_sha256": None,
                                      "failed": []}, doc["certificate"]
        context = verifying(acme_ca.roots)
        token = doc["urls"]["lab"].rsplit("token=", 1)[1]
        for key_, url in doc["urls"].items():
            assert get(url, context) == 200, f"{key_}: {url}"
        base = doc["urls"]["lab"].split("/lab?")[0]
        assert base == f"https://{address}"
        assert get(f"{base}/api/status?token={token}", context) == 200
        assert get(f"{base}/api/status?token=wrong", context) in (401, 403)
        assert get(f"{base}/vmbinder/status.json", context) == 403
        out = execute(base, token, "import socket; print(sum(range(10)), socket.gethostname())",
                      context=context)
        assert out.split()[0] == "45", out
        phase("URLs with the CA's certificate, a wrong token, a kernel through the printed URL")

        # The security group really filters: only 22, 80 and 443 answer; every
        # other port gives no answer at all (dropped, not refused).
        opened, refused = scan(address)
        assert (opened, refused) == ([22, 80, 443], []), (opened, refused[:20])
        phase("scan of all 65535 ports from the internet")

        # The public endpoints answer from inside the guest, as on a real cloud.
        keystone = guest_run(address, key, console, "curl -s -o /dev/null -w '%{http_code}' "
                             f"http://{INET_ADDRESS}:45500/v3")
        assert keystone == "200", keystone

        for kind in ("SOFT", "HARD"):
            before = guest_run(address, key, console, BOOT_ID)
            tb.admin.compute.reboot_server(server, kind)
            wait_rebooted(tb, server)
            codes = wait_answering(f"{base}/api/status?token={token}", context)
            assert codes[-1] == 200, f"the URL did not answer again after a {kind} reboot: {codes[-5:]}"
            after = guest_run(address, key, console, BOOT_ID)  # the host keys of the first boot
            assert after != before, f"the {kind} reboot did not restart the guest"
            assert get(doc["urls"]["lab"], context) == 200
            phase(f"{kind.lower()} reboot until the same URL answers")
    finally:
        res = vmbinder(env, "delete", name, "--format", "json", timeout=300)
    assert res.returncode == 0, res.stderr
    only_the_keypair_is_left(tb, uploaded_image)
    phase("delete")
