"""End to end on OpenStack: `vmbinder launch` makes a server that Nova boots
under libvirt from the image `vmbinder image upload` put in Glance; cloud-init
reads the user-data from the config drive vmbinder asks for by default
(--config-drive auto; the testbed forces none); the guest gets a certificate for
its floating IP from an ACME CA (pebble in "the internet", validating http-01
through the router's NAT) at the first try; every printed URL answers through
the floating IP with the token, the certificate checked against the CA's root,
a wrong token is refused, a kernel runs code through the printed URL; from "the
internet" only 22, 80 and 443 answer on the floating IP; the public APIs answer
from inside the guest; `vmbinder ssh` runs commands through the floating IP, the
host key checked against the console, and returns their exit status; `vmbinder
tunnel` carries Jupyter to this machine's loopback; a file and an edited
notebook saved through Jupyter's contents API are in the server's home; the
notebook's kernel cannot reach the cloud's metadata service, which the server
itself can.

Allocation care on that server, launched with `--idle 1m --idle-action
shelve`: a cell left running from the launch on keeps it up through every
check above, well past the idle time. `vmbinder stop --release-ip` (Nova's
stop) gives its floating IP back; `vmbinder start` (Nova's start, a hard
reboot under libvirt: the guest's qemu starts again) attaches a new one, waits
until the guest, which asked the metadata service for its new address, has a
certificate for it from the ACME CA, and prints the new URLs, which answer
with the same token and the same work, on a new boot; `vmbinder ssh` still
finds the host key it checks. Left idle, the guest shelves itself through Nova
with its restricted credential; `vmbinder unshelve` brings it back from the
image Nova kept, at the same URL with the same token, the work still there.
Stop and start keeping the floating IP are tests/functional/test_power.py's.
`delete` leaves nothing owned by vmbinder.

A second launch, beside the first (both guests boot at once, which costs less
wall time than one after the other), builds a repository whose build fails:
its server is kept, with exit 6 and the commands to read its log and remove it;
`list`, `status` and `logs` show it, the log read through the server's
token-protected status service; `delete` removes it. `vmbinder ssh` after the
first start is checked last in its part, so that a failure there leaves the rest
shown.

A third launch, with a lifetime of a minute and `--at-end delete`, deletes
itself: its guest reaches Keystone and Nova through the public endpoints with
the application credential vmbinder made for it (restricted to that server),
and `vmbinder reap` then removes that credential and the floating IP it left.
"""

from __future__ import annotations

import json
import re
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_local_guest import ssh_key, ssh_run
from tests.kernel import execute, kernel_state, start_cell
from vmbinder import errors
from vmbinder.guestcontract import LAYOUT

from .conftest import (
    FAILS_ON_PURPOSE,
    FLAVOR,
    INET_ADDRESS,
    cli_environment,
    only_the_keypair_is_left,
    stack_memory,
    vmbinder,
)

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


def console_of(testbed, server) -> str:
    return testbed.admin.compute.get_server_console_output(server)["output"]


BOOT_ID = "cat /proc/sys/kernel/random/boot_id"
#: The cloud's metadata service, which holds the server's user-data (and so its token).
USER_DATA_URL = "http://169.254.169.254/openstack/latest/user_data"
#: Run in the notebook's kernel: what asking the metadata service gives.
METADATA_PROBE = f"""
import urllib.error, urllib.request
try:
    with urllib.request.urlopen("{USER_DATA_URL}", timeout=5) as resp:
        print("answered", resp.status)
except urllib.error.HTTPError as exc:
    print("answered", exc.code)
except OSError as exc:
    reason = getattr(exc, "reason", exc)
    print("failed", type(reason).__name__, getattr(reason, "errno", None), reason)
"""
#: What this test saves in the home through Jupyter, as JupyterLab saves files.
EDITED = "# edited on the server"
KEPT = "kept across reboots\n"


def assert_no_metadata(out: str) -> None:
    """METADATA_PROBE's output says the connection failed: refused, unreachable or no answer."""
    words = out.split()
    assert words[0] == "failed", f"the kernel reached the metadata service: {out}"
    assert words[1] in ("ConnectionRefusedError", "TimeoutError") or words[2] in ("101", "113"), out


def server_run(env: dict, name: str, command: str) -> str:
    """command's output on the server through `vmbinder ssh NAME -- command`
    (vmbinder checks the host key against the console); it must exit 0."""
    res = vmbinder(env, "ssh", name, "--", command, timeout=300)
    assert res.returncode == 0, f"vmbinder ssh {name} -- {command}: exit {res.returncode}\n{res.stderr}"
    return res.stdout


def contents(base: str, token: str, context: ssl.SSLContext, path: str, method: str = "GET",
             body: dict | None = None) -> dict:
    """Jupyter's contents API on path in the home (what JupyterLab opens and saves with)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}/api/contents/{path}?token={token}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60, context=context) as resp:
        return json.loads(resp.read())


def save_work(base: str, token: str, context: ssl.SSLContext) -> None:
    """Edit the repository's notebook and add a file in a new folder."""
    notebook = contents(base, token, context, "index.ipynb")["content"]
    notebook["cells"] = [{"cell_type": "markdown", "metadata": {}, "source": EDITED}]
    contents(base, token, context, "index.ipynb", "PUT",
             {"type": "notebook", "format": "json", "content": notebook})
    contents(base, token, context, "notes", "PUT", {"type": "directory"})
    contents(base, token, context, "notes/kept.txt", "PUT",
             {"type": "file", "format": "text", "content": KEPT})


def work_is_there(base: str, token: str, context: ssl.SSLContext) -> None:
    notebook = contents(base, token, context, "index.ipynb")["content"]
    assert [c["source"] for c in notebook["cells"]] == [EDITED], notebook["cells"]
    assert contents(base, token, context, "notes/kept.txt")["content"] == KEPT


def spawn(env: dict, folder: Path, *args: str) -> subprocess.Popen:
    """`vmbinder ARGS` running in the background, its stdout and stderr going to
    files in folder (a pipe nobody reads while it runs could fill up)."""
    with open(folder / "stdout", "w") as out, open(folder / "stderr", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "vmbinder", *args], env=env, stdout=out,
                                stderr=err, text=True)


def ended(proc: subprocess.Popen, folder: Path, timeout: float = TIMEOUT + 300) -> tuple[str, str]:
    """(stdout, stderr) of a spawned command, once it has ended."""
    proc.wait(timeout=timeout)
    return (folder / "stdout").read_text(), (folder / "stderr").read_text()


def wait_created(testbed, name: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until Nova has the server name (its security group and keypair are then
    there, for a second launch to find), or the launch that makes it has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(s.name == name for s in testbed.admin.compute.servers(
                all_projects=True, project_id=testbed.project_id, tags="vmbinder")):
            return
        time.sleep(2)


def check_deleted_itself(tb, env: dict, name: str, proc: subprocess.Popen, folder: Path,
                         timeout: float = 900) -> None:
    """The launch of a server with a one-minute lifetime and --at-end delete
    returned once it was ACTIVE; its guest then deleted it through Nova with its
    own credential (nothing else here deletes it), which vmbinder recorded on it;
    reap removes that credential and its floating IP, which the guest cannot."""
    out, err = ended(proc, folder)
    assert proc.returncode == 0, err
    server_id = json.loads(out)["id"]
    deadline = time.monotonic() + timeout
    while any(s.id == server_id for s in tb.admin.compute.servers(
            all_projects=True, project_id=tb.project_id)):
        assert time.monotonic() < deadline, f"{name} did not delete itself in {timeout:.0f} s"
        time.sleep(5)
    res = vmbinder(env, "reap", "--format", "json", timeout=300)
    assert res.returncode == 0, res.stderr
    removed = sorted((d["action"], d["kind"]) for d in json.loads(res.stdout))
    assert removed == [("forget", "application credential"), ("forget", "floating IP")], res.stdout


def check_failed_build(env: dict, name: str, code: int, stderr: str, beside: str) -> None:
    """A launch whose build failed (its exit code and stderr): exit 6 with the
    commands to read its log and remove it; `list` (beside the other server,
    `beside`), `status` and `logs` show the kept server, its log read through
    the status service; `delete` removes it."""
    def cli(*args: str) -> str:
        res = vmbinder(env, *args, timeout=300)
        assert res.returncode == 0, f"vmbinder {' '.join(args)}: exit {res.returncode}\n{res.stderr}"
        return res.stdout

    assert code == errors.BuildFailed.exit_code == 6, stderr
    assert "error: the guest step 'build' failed:" in stderr, stderr
    assert f"vmbinder logs {name}" in stderr, stderr
    assert f"remove it with: vmbinder delete {name}" in stderr, stderr

    listed = json.loads(cli("list", "--format", "json"))
    assert sorted((s["name"], s["status"]) for s in listed) == [(name, "active"), (beside, "active")], listed
    status = json.loads(cli("status", name, "--format", "json"))
    assert status["failed"] == "build", status
    assert (status["guest"]["phase"], status["guest"]["status"]) == ("build", "failed"), status

    log = cli("logs", name)
    printed = [line for line in log.splitlines()
               if line.rstrip().endswith(FAILS_ON_PURPOSE) and "echo" not in line]
    assert printed, f"the failing step's own output is not in the log: {log[-3000:]}"
    tail = json.loads(cli("logs", name, "-n", "3", "--format", "json"))
    assert tail["name"] == name and len(tail["log"].splitlines()) == 3, tail
    assert (tail["phase"], tail["status"], tail["ready"]) == ("build", "failed", False), tail

    cli("delete", name, "--format", "json")
    assert [s["name"] for s in json.loads(cli("list", "--format", "json"))] == [beside]


def check_tunnel(env: dict, name: str, token: str, wait: float = 120) -> None:
    """`vmbinder tunnel NAME --format json` prints one line with its port and
    URLs first, carries Jupyter's API to this machine's loopback (plain HTTP),
    and ends with exit 0 on Ctrl-C (SIGINT)."""
    proc = subprocess.Popen([sys.executable, "-m", "vmbinder", "tunnel", name, "--format", "json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=wait)
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"the tunnel printed nothing in {wait:.0f} s "
                                 f"(exit {proc.returncode}): {err}")
        doc = json.loads(line)
        local = f"http://127.0.0.1:{doc['port']}"
        assert doc["name"] == name and doc["urls"]["lab"] == f"{local}/lab?token={token}", doc
        with urllib.request.urlopen(f"{local}/api/status?token={token}", timeout=60) as resp:
            assert resp.status == 200
            assert "started" in json.loads(resp.read()), "not Jupyter's own answer"
        try:
            urllib.request.urlopen(f"{local}/api/status?token=wrong", timeout=60).close()
            raise AssertionError("Jupyter took a wrong token through the tunnel")
        except urllib.error.HTTPError as exc:
            assert exc.code in (401, 403), exc.code
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert f"tunnel to {name} closed" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def woken(env: dict, verb: str, name: str, roots) -> dict:
    """`vmbinder start|unshelve NAME` once the environment answers: its result."""
    res = vmbinder(env, verb, name, "--format", "json", "--acme-ca-root", str(roots),
                   "--timeout", "900", timeout=1000)
    assert res.returncode == 0, res.stderr
    (doc,) = json.loads(res.stdout)
    return doc


def check_idle_shelve(tb, env: dict, name: str, server, urls: dict, roots, phase) -> None:
    """The server, launched with --idle 1m --idle-action shelve and started again
    with nothing running (urls: what that start printed): idle, it shelves itself;
    unshelved, the same URL answers with the same token and the work there."""
    context = verifying(roots)
    token = urls["lab"].rsplit("token=", 1)[1]
    base = urls["lab"].split("/lab?")[0]
    # The guest shelves itself (its log, read after the unshelve below, says so;
    # nothing else here shelves it).
    deadline = time.monotonic() + 900
    while (status := tb.admin.compute.get_server(server.id).status) != "SHELVED_OFFLOADED":
        assert time.monotonic() < deadline and status != "ERROR", f"{name} did not shelve itself: {status}"
        time.sleep(5)
    listed = {d["name"]: d for d in json.loads(vmbinder(env, "list", "--format", "json").stdout)}
    assert listed[name]["status"] == "shelved", listed
    phase("idle for --idle 1m, the guest shelved itself with its credential")

    back = woken(env, "unshelve", name, roots)
    assert back["ready"] and back["urls"] == urls, back
    assert get(back["urls"]["lab"], context) == 200
    work_is_there(base, token, context)
    log = server_run(env, name, f"sudo cat {LAYOUT['log_dir']}/guest.log")
    assert re.search(r"care: shelve: idle for [12] min", log), log[-3000:]
    phase("unshelve: the same URL answers, the work there")


def test_launch_on_openstack_boots_reads_its_config_drive_and_serves_every_url(
        real_testbed, uploaded_image, repo_url, failing_repo_url, acme_ca, tmp_path, phase):
    tb, name, failed, ending = real_testbed, "real-launch", "real-failed", "real-ends"
    (tmp_path / "home").mkdir()
    env = cli_environment(tmp_path / "home")
    key = ssh_key(tmp_path / "home")
    phase("set-up")

    launch = failing = ends = None
    try:
        for folder in ("launch", "failing", "ends"):
            (tmp_path / folder).mkdir()
        launch = spawn(env, tmp_path / "launch", "launch", "--name", name, "--image", uploaded_image,
                       "--flavor", FLAVOR, "--acme-ca", acme_ca.directory, "--acme-ca-root",
                       str(acme_ca.roots), "--format", "json", "--timeout", str(TIMEOUT),
                       "--idle", "1m", "--idle-action", "shelve", repo_url)
        # The failing build boots beside it, once the group and keypair they share are
        # made; the server's own CA (--tls internal) lets `status` and `logs` check its
        # certificate against the root its console vouches for.
        wait_created(tb, name, launch)
        failing = spawn(env, tmp_path / "failing", "launch", "--name", failed, "--image",
                        uploaded_image, "--flavor", FLAVOR, "--tls", "internal", "--timeout",
                        str(TIMEOUT), failing_repo_url)
        # Its lifetime has ended by the time its guest's care service starts.
        ends = spawn(env, tmp_path / "ends", "launch", "--name", ending, "--image", uploaded_image,
                     "--flavor", FLAVOR, "--tls", "internal", "--no-wait", "--lifetime", "1m",
                     "--at-end", "delete", "--format", "json", repo_url)
        out, err = ended(launch, tmp_path / "launch")
        assert launch.returncode == 0, err
        doc = json.loads(out)
        # A cell left running (its browser gone): the server is busy through every check below.
        context = verifying(acme_ca.roots)
        token = doc["urls"]["lab"].rsplit("token=", 1)[1]
        base = doc["urls"]["lab"].split("/lab?")[0]
        busy = start_cell(base, token, "import time; time.sleep(3600)", context=context)
        busy_since = time.monotonic()
        phase("launch until every URL answers (a failing build launched beside it)")
        phase.note(f"memory with two guests (RSS, PSS MiB): {stack_memory()}")
        _, err = ended(failing, tmp_path / "failing")
        phase("the failing build's launch ends")
        check_failed_build(env, failed, failing.returncode, err, beside=name)
        phase("list, status, logs and delete of the failed build's server")
        check_deleted_itself(tb, env, ending, ends, tmp_path / "ends")
        phase("a server whose lifetime ended deleted itself; reap removed what it left")

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
        for key_, url in doc["urls"].items():
            assert get(url, context) == 200, f"{key_}: {url}"
        assert base == f"https://{address}"
        assert get(f"{base}/api/status?token={token}", context) == 200
        assert get(f"{base}/api/status?token=wrong", context) in (401, 403)
        assert get(f"{base}/vmbinder/status.json", context) == 403
        out = execute(base, token, "import socket; print(sum(range(10)), socket.gethostname())",
                      context=context)
        assert out.split()[0] == "45", out
        phase("URLs with the CA's certificate, a wrong token, a kernel through the printed URL")

        # Work saved in Jupyter is in the server's home folder, bound into the container.
        save_work(base, token, context)
        work_is_there(base, token, context)
        assert server_run(env, name, "sudo cat /srv/vmbinder/home/notes/kept.txt") == KEPT
        # `vmbinder ssh` reaches the same server as the test's own pinned connection,
        # and the command's exit status comes back, in JSON too.
        assert server_run(env, name, BOOT_ID) == guest_run(address, key, console, BOOT_ID)
        res = vmbinder(env, "ssh", name, "--format", "json", "--", "false", timeout=300)
        assert res.returncode == 1, res.stderr
        assert json.loads(res.stdout) == {"name": name, "command": "false", "exit_status": 1,
                                          "stdout": "", "stderr": ""}, res.stdout
        check_tunnel(env, name, token)
        phase("work saved through the contents API, vmbinder ssh and vmbinder tunnel")

        # The server reaches the cloud's metadata service (as root: the guest refuses
        # it to every other user there too); the notebook's kernel, which runs
        # whatever the repository or its user asks, does not.
        code = server_run(env, name, f"sudo curl -s -o /dev/null -w '%{{http_code}}' {USER_DATA_URL}")
        assert code == "200", code
        assert_no_metadata(execute(base, token, METADATA_PROBE, context=context))
        phase("the metadata service: the server reaches it, the kernel does not")

        # The security group really filters: only 22, 80 and 443 answer; every
        # other port gives no answer at all (dropped, not refused).
        opened, refused = scan(address)
        assert (opened, refused) == ([22, 80, 443], []), (opened, refused[:20])
        phase("scan of all 65535 ports from the internet")

        # The public endpoints answer from inside the guest, as on a real cloud.
        keystone = guest_run(address, key, console, "curl -s -o /dev/null -w '%{http_code}' "
                             f"http://{INET_ADDRESS}:45500/v3")
        assert keystone == "200", keystone

        # Busy past the idle time: the running cell kept it up, and the guest's care saw it.
        time.sleep(max(0.0, 100 - (time.monotonic() - busy_since)))
        assert kernel_state(base, token, busy, context=context) == "busy"
        assert tb.admin.compute.get_server(server.id).status == "ACTIVE"
        seen = get_json(f"{base}/vmbinder/status.json?token={token}", context)["care_seen"]
        assert seen["busy"] == 1 and seen["checked"] - seen["last"] < 60, seen
        phase.note(f"busy past --idle 1m: {time.monotonic() - busy_since:.0f} s after the cell started")

        # Stopped with its address given back, and started: Nova's start under
        # libvirt is a hard reboot (the guest's qemu starts again, and its console
        # log starts empty, while the host key `vmbinder ssh` checks must still be
        # on it). `start` attaches a new floating IP, and waits until the guest,
        # which asked the metadata service for it, has a certificate for it.
        before = guest_run(address, key, console, BOOT_ID)
        res = vmbinder(env, "stop", name, "--release-ip", "--format", "json", timeout=600)
        assert res.returncode == 0, res.stderr
        (stopped,) = json.loads(res.stdout)
        assert (stopped["status"], stopped["released"]) == ("stopped", [address]), stopped
        assert tb.admin.compute.get_server(server.id).status == "SHUTOFF"
        assert not list(tb.admin.network.ips(id=fip.id))
        started = woken(env, "start", name, acme_ca.roots)
        (new_fip,) = tb.admin.network.ips(port_id=fip.port_id)
        address = new_fip.floating_ip_address
        assert new_fip.id != fip.id and started["ready"] and started["address"] == address, started
        old_base, base = base, f"https://{address}"
        assert started["urls"] == {k: v.replace(old_base, base) for k, v in doc["urls"].items()}, started
        for key_, url in started["urls"].items():
            assert get(url, context) == 200, f"{key_}: {url}"  # the certificate is for the new address
        status = json.loads(vmbinder(env, "status", name, "--format", "json").stdout)
        assert (status["certificate"]["site"], status["certificate"]["issuer"]) == (address, "acme"), status
        after = guest_run(address, key, console, BOOT_ID)  # the host keys of the first boot
        assert after != before, "the guest did not boot again"
        work_is_there(base, token, context)
        # Checked once the work is: see below.
        through_cli = vmbinder(env, "ssh", name, "--", BOOT_ID, timeout=300)
        phase("stop --release-ip, then start at a new floating IP with its certificate, "
              "on a new boot, the same token and the work there")
        assert_no_metadata(execute(base, token, METADATA_PROBE, context=context))
        assert (through_cli.returncode, through_cli.stdout) == (0, after), \
            f"vmbinder ssh {name} after the start: exit {through_cli.returncode}: {through_cli.stderr}"

        check_idle_shelve(tb, env, name, server, started["urls"], acme_ca.roots, phase)
    finally:
        for proc in (launch, failing, ends):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Ctrl-C: the launch removes what it made
                proc.wait(timeout=300)
        res = vmbinder(env, "delete", name, "--format", "json", timeout=300)
        for other in (failed, ending):
            if any(s.name == other for s in tb.admin.compute.servers(
                    all_projects=True, project_id=tb.project_id, tags="vmbinder")):
                vmbinder(env, "delete", other, "--format", "json", timeout=300)
    assert res.returncode == 0, res.stderr
    only_the_keypair_is_left(tb, uploaded_image)
    phase("delete")
