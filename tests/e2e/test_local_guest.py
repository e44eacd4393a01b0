"""End to end: `vmbinder launch --cloud local` boots a real qemu guest from the
baked image, the real rendered cloud-init builds a repository served from this
machine, and every URL printed answers over HTTPS with the token, with a
certificate for the address itself from an ACME CA (pebble, validating
http-01 through the forwarded port 80), checked. Then what is
exposed: inside the guest (over SSH, its host key checked against the one
cloud-init printed) only 22, 80 and 443 answer on its network address; the
token is in no console line, no vmbinder log and no host `ps` line; the status
and log pages need it; code in the guest (a notebook's kernel, a shell) reaches
no port of this machine's loopback that the launch did not name. Launched with
`--idle 1m --idle-action stop`: a cell left running (its browser gone) keeps the
server up past the idle time; once it is interrupted, the server powers itself
off after a minute without activity and `vmbinder status` says stopped.

Needs root, qemu and the baked image with the container base image inside it
(tests/e2e/conftest.py builds them when missing). Missing parts fail, never skip.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def get(url: str, timeout: float = 20, *, context: ssl.SSLContext) -> tuple[int, str]:
    """GET over HTTPS, the certificate checked with context."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


#: Run in the guest: every TCP port of its network address that accepts a connection
#: from another socket.
SCAN = """
import socket, subprocess
addr = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()[0]
open_ = []
for port in range(1, 65536):
    with socket.socket() as s:
        s.settimeout(0.2)
        # A connection to itself (its own port picked as the source) is no listener.
        if s.connect_ex((addr, port)) == 0 and s.getsockname() != s.getpeername():
            open_.append(port)
print(addr, *open_)
"""


#: Run in the guest: whether a port of this machine's loopback (10.0.2.2) that
#: vmbinder did not name is reachable, and whether the repository's port is.
PROBE = """
import socket
for port in ({blocked}, {allowed}):
    try:
        socket.create_connection(("10.0.2.2", port), timeout=10).close()
        print("open")
    except OSError as exc:
        print(type(exc).__name__)
"""


def ssh_key(home):
    """An ed25519 key in HOME/.ssh, where vmbinder takes the public key from."""
    import paramiko
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    folder = home / ".ssh"
    folder.mkdir(mode=0o700)
    private = folder / "id_ed25519"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    (folder / "id_ed25519.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b" e2e\n")
    return paramiko.Ed25519Key.from_private_key_file(str(private))


def guest_run(port: int, key, console: str, command: str) -> str:
    """command's output in the guest over the forwarded ssh port on loopback."""
    return ssh_run("127.0.0.1", port, key, console, command)


def ssh_run(address: str, port: int, key, console: str, command: str) -> str:
    """command's output on a guest, as the image's default user; its host key
    must be the one cloud-init printed on the console."""
    import paramiko

    block = console.split("-----BEGIN SSH HOST KEY KEYS-----")[-1].split("-----END SSH HOST KEY KEYS-----")[0]
    printed = [line.split()[1] for line in block.splitlines() if line.startswith("ssh-ed25519 ")]
    assert printed, "cloud-init printed no ed25519 host key on the console"
    client = paramiko.SSHClient()
    client.get_host_keys().add(address if port == 22 else f"[{address}]:{port}", "ssh-ed25519",
                               paramiko.Ed25519Key(data=base64.b64decode(printed[-1])))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(address, port=port, username="debian", pkey=key, timeout=30,
                   allow_agent=False, look_for_keys=False)
    try:
        _, stdout, stderr = client.exec_command(command, timeout=300)
        out = stdout.read().decode()
        assert stdout.channel.recv_exit_status() == 0, stderr.read().decode()
        return out
    finally:
        client.close()


def test_launch_on_the_local_target_serves_every_url_it_prints(cli_env, baked_image, test_repo, tmp_path,
                                                               acme_ca):
    name = "e2e-local"
    ca = acme_ca(name)
    context = ssl.create_default_context(cafile=str(ca.roots))
    pkey = ssh_key(tmp_path / "home")
    ps_lines: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbinder", "--cloud", "local", "launch", "--name", name,
         "--image", str(baked_image), "--format", "json", "--timeout", "2400",
         "--idle", "1m", "--idle-action", "stop",
         "--acme-ca", ca.directory, "--acme-ca-root", str(ca.roots), test_repo],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status_pages = []
    try:
        # While it builds, the URL already answers with the status page.
        state_file = tmp_path / "state" / "vmbinder" / "local" / name / "server.json"
        deadline = time.monotonic() + 2400
        while proc.poll() is None and time.monotonic() < deadline:
            ps_lines += subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                       text=True, check=True).stdout.splitlines()
            if state_file.exists():
                meta = json.loads(state_file.read_text())["metadata"]
                port = meta.get("vmbinder:https-port")
                if port:
                    try:
                        code, body = get(f"https://127.0.0.1:{port}/", timeout=5, context=context)
                        if "being prepared" in body:
                            status_pages.append(code)
                    except OSError:
                        pass
            time.sleep(5)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    doc = json.loads(out)
    # A long cell, started at once (the idle time counts from when the environment
    # was ready) and left running: the server is busy, whatever else happens.
    from tests.kernel import interrupt, kernel_state, start_cell

    token = doc["urls"]["lab"].rsplit("token=", 1)[1]
    base = doc["urls"]["lab"].split("/lab?")[0]
    busy = start_cell(base, token, "import time; time.sleep(3600)", context=context)
    busy_since = time.monotonic()
    assert status_pages, "the status page never answered while the environment was built"
    # The certificate is the CA's, for the address itself, at the first try.
    assert doc["certificate"] == {"site": "127.0.0.1", "issuer": "acme", "root_sha256": None,
                                  "failed": []}, err
    assert sum(relay.connections for relay in ca.relays) >= 1, "the CA never validated through the guest"
    for key, url in doc["urls"].items():
        assert url.startswith("https://127.0.0.1:"), url
        code, _ = get(url, context=context)
        assert code == 200, f"{key}: {url} answered {code}"
    served = ssl.get_server_certificate(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(served.encode())
    assert "Pebble" in cert.issuer.rfc4514_string()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert get(f"{base}/api/status?token={token}", context=context)[0] == 200
    assert get(f"{base}/api/status?token=wrong", context=context)[0] in (401, 403)
    assert get(f"{base}/vmbinder/status.json?token=wrong", context=context)[0] == 403
    assert get(f"{base}/vmbinder/status.json", context=context)[0] == 403

    # The launch asked the repository which commit HEAD is; the guest built that one.
    here = test_repo.replace("10.0.2.2", "127.0.0.1")
    head = subprocess.run(["git", "ls-remote", here, "HEAD"], capture_output=True, text=True,
                          check=True).stdout.split()[0]
    assert doc["commit"] == head, err
    assert f"at commit {head}" in err
    code, body = get(f"{base}/vmbinder/status.json?token={token}", context=context)
    built = json.loads(body)["commit"]
    assert code == 200 and built and head.startswith(built), body

    # The status and log pages: the log only with the token.
    code, page = get(f"{base}/vmbinder/page", context=context)
    assert code == 200 and "<h2>Log</h2>" not in page
    code, page = get(f"{base}/vmbinder/page?token={token}", context=context)
    assert code == 200 and "<h2>Log</h2>" in page

    # The token is in no console line, no vmbinder log and no host process's arguments.
    state = tmp_path / "state" / "vmbinder"
    console = (state / "local" / name / "console.log").read_text(errors="replace")
    assert token not in console
    logs = list((state / "logs").glob("*.log"))
    assert logs, "vmbinder wrote no debug log"
    assert not [p for p in logs if token in p.read_text(errors="replace")]
    assert len(ps_lines) > 100, "ps was hardly sampled"
    assert not [line for line in ps_lines if token in line]

    # From outside the guest, only ssh, http and https answer: Jupyter (8888)
    # and the status service (8081) listen on the guest's loopback only.
    meta = json.loads(state_file.read_text())["metadata"]
    addr, *open_ports = guest_run(int(meta["vmbinder:ssh-port"]), pkey, console,
                                  f"python3 -c {shlex.quote(SCAN)}").split()
    socket.inet_aton(addr)  # the guest's own network address
    assert sorted(map(int, open_ports)) == [22, 80, 443], (addr, open_ports)
    assert "127.0.0.1:8888" in guest_run(int(meta["vmbinder:ssh-port"]), pkey, console, "ss -Hltn")

    # Code in the guest reaches this machine's loopback (10.0.2.2) only at the ports
    # the launch named there (the repository's, the CA's): a listener vmbinder did
    # not set up is refused, from a notebook's kernel and from the guest itself.
    from urllib.parse import urlsplit

    from tests.kernel import execute

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0)
        probe = PROBE.format(blocked=listener.getsockname()[1], allowed=urlsplit(test_repo).port)
        from_kernel = execute(base, token, probe, context=context).split()
        from_guest = guest_run(int(meta["vmbinder:ssh-port"]), pkey, console,
                               f"python3 -c {shlex.quote(probe)}").split()
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert from_kernel == from_guest == ["ConnectionRefusedError", "open"], (from_kernel, from_guest)

    # `vmbinder ssh` and `vmbinder tunnel` through the CLI (see check_ssh_and_tunnel).
    check_ssh_and_tunnel(cli_env, name, state / "local" / name / "console.log", token)

    # Busy past the idle time (and a look of the guest's), it runs on; interrupted,
    # it is idle, and after a minute it powers itself off.
    time.sleep(max(0.0, 100 - (time.monotonic() - busy_since)))
    assert kernel_state(base, token, busy, context=context) == "busy"
    assert json.loads(vmbinder(cli_env, "status", name, "--format", "json").stdout)[
        "status"] == "active"
    code, body = get(f"{base}/vmbinder/status.json?token={token}", context=context)
    seen = json.loads(body)["care_seen"]
    assert code == 200 and seen["busy"] == 1 and seen["checked"] - seen["last"] < 60, seen
    interrupt(base, token, busy, context=context)
    deadline = time.monotonic() + 400
    while (status := json.loads(vmbinder(cli_env, "status", name, "--format", "json").stdout)
           ["status"]) != "stopped":
        assert time.monotonic() < deadline, f"{name} did not power itself off: {status}"
        time.sleep(10)
    console = (state / "local" / name / "console.log").read_text(errors="replace")
    assert re.search(r"vmbinder care: stop: idle for [12] min", console), console[-2000:]

    res = subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", "delete", name],
                         env=cli_env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr


# -- vmbinder ssh and vmbinder tunnel ----------------------------------------------------

def vmbinder(cli_env, *args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", *args], env=cli_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def check_ssh_and_tunnel(cli_env, name: str, console_path, token: str) -> None:
    """`vmbinder ssh NAME -- COMMAND` logs in as the recorded user (debian) with the
    key in HOME/.ssh, the host key checked against the console's newest block: the
    guest's own key file is that key; the command's output and exit status come
    back. `vmbinder tunnel NAME --port P` carries concurrent connections to Jupyter
    on the guest's loopback: JupyterLab answers 200 on the printed URL and a kernel
    runs code through it; Ctrl-C ends it with exit 0."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.kernel import execute
    from vmbinder import remote
    from vmbinder.providers.local.qemu import free_ports

    # cloud-init prints the host keys after the guest script's run, which may end
    # after the environment answers: wait for them.
    deadline = time.monotonic() + 300
    console = console_path.read_text(errors="replace")
    while remote.END not in console and time.monotonic() < deadline:
        time.sleep(5)
        console = console_path.read_text(errors="replace")
    printed = [k for k in remote.console_host_keys(console) if k.kind == "ssh-ed25519"]
    assert printed, "cloud-init printed no ed25519 host key on the console"

    res = vmbinder(cli_env, "ssh", name, "--", "whoami; cat /etc/ssh/ssh_host_ed25519_key.pub")
    assert res.returncode == 0, res.stderr
    user, key_line = res.stdout.splitlines()
    assert user == "debian"
    assert base64.b64decode(key_line.split()[1]) == printed[0].blob
    res = vmbinder(cli_env, "ssh", name, "--", "echo out; echo err >&2; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert not (Path(cli_env["HOME"]) / ".ssh" / "known_hosts").exists()

    (port,) = free_ports(1)
    proc = subprocess.Popen([sys.executable, "-m", "vmbinder", "--cloud", "local", "tunnel", name,
                             "--port", str(port)], env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        rows = {}
        while "lab url" not in rows:
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=30)
                raise AssertionError(f"the tunnel printed no lab url: {proc.stderr.read()}")
            key, _, value = line.strip().partition("  ")
            rows[key] = value.strip()
        base = f"http://127.0.0.1:{port}"
        assert rows["lab url"] == f"{base}/lab?token={token}"
        plain = ssl.create_default_context()  # the tunnel is plain HTTP: no certificate to check
        with ThreadPoolExecutor(6) as pool:  # a browser opens several connections at once
            codes = list(pool.map(lambda url: get(url, timeout=60, context=plain)[0],
                                  [rows["lab url"]] * 3 + [f"{base}/api/status?token={token}"] * 3))
        assert codes == [200] * 6, codes
        assert get(f"{base}/api/status?token=wrong", context=plain)[0] in (401, 403)
        assert execute(base, token, "print(6 * 7)", context=plain).split() == ["42"]
        proc.send_signal(2)  # Ctrl-C
        proc.wait(timeout=30)
        err = proc.stderr.read()
        assert proc.returncode == 0, err
        assert f"forwarding 127.0.0.1:{port} to Jupyter on {name}" in err
        assert f"tunnel to {name} closed" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
