"""`vmbinder ssh` and `vmbinder tunnel` against a real SSH server in this process
(paramiko's server side on 127.0.0.1, with exec, pty, shell and direct-tcpip):
the host keys read from the console, pinning and its refusals, the login user,
run with its output and exit status, an interactive shell on a pty, and the
tunnel carrying concurrent connections, through the CLI's exit codes and words."""

from __future__ import annotations

import _thread
import base64
import fcntl
import http.client
import http.server
import io
import json
import logging
import os
import socket
import struct
import subprocess
import termios
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import paramiko
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.unit.fakes import FakeProvider
from vmbinder import errors, remote
from vmbinder.commands.context import Context
from vmbinder.commands.main import cli
from vmbinder.providers.base import ACTIVE, META, Ledger, Resolved, Server, SshTarget
from vmbinder.providers.local import LocalProvider
from vmbinder.providers.local.provider import login_user as local_login_user
from vmbinder.providers.openstack import distros
from vmbinder.providers.openstack.provider import OpenStackProvider
from vmbinder.sources import Source
from vmbinder.spec import make_spec

TOKEN = "ab" * 32


def ed25519_key() -> tuple[paramiko.PKey, bytes]:
    """A new ed25519 key as paramiko's, and as an OpenSSH private key file."""
    private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    return paramiko.Ed25519Key.from_private_key(io.StringIO(private.decode())), private


def ecdsa_key() -> paramiko.PKey:
    private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    return paramiko.ECDSAKey.from_private_key(io.StringIO(private.decode()))


def block(*keys, prefix: str = "") -> str:
    """The console lines cloud-init prints for these host keys."""
    lines = [remote.BEGIN, *(f"{k.get_name()} {k.get_base64()} root@demo" for k in keys), remote.END]
    return "".join(f"{prefix}{line}\n" for line in lines)


# -- an SSH server in this process ---------------------------------------------------

class Behaviour(paramiko.ServerInterface):
    """What the test server allows: one user and key; exec runs sh -c here; a shell
    echoes in capitals until Ctrl-D (exit 7; its input's end: exit 0)."""

    def __init__(self, sshd: SSHServer):
        self.sshd = sshd
        self.targets: dict[int, socket.socket] = {}

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        ok = username == self.sshd.user and key.asbytes() == self.sshd.client_key.asbytes()
        self.sshd.attempts.append((username, key.get_name()))
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else \
            paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        threading.Thread(target=execute, args=(channel, command.decode()), daemon=True).start()
        return True

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes):
        self.sshd.ptys.append((term.decode() if isinstance(term, bytes) else term, width, height))
        return True

    def check_channel_window_change_request(self, channel, width, height, pixelwidth, pixelheight):
        self.sshd.ptys.append(("resize", width, height))
        return True

    def check_channel_shell_request(self, channel):
        threading.Thread(target=capitals, args=(channel,), daemon=True).start()
        return True

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        try:
            self.targets[chanid] = socket.create_connection(destination, timeout=5)
        except OSError:
            return paramiko.OPEN_FAILED_CONNECT_FAILED
        self.sshd.forwards.append(destination)
        return paramiko.OPEN_SUCCEEDED


def execute(channel, command: str) -> None:
    proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)

    def copy(source, send):
        while data := os.read(source.fileno(), 4096):
            send(data)

    def feed():
        while data := channel.recv(4096):
            proc.stdin.write(data)
            proc.stdin.flush()
        proc.stdin.close()

    threads = [threading.Thread(target=copy, args=(proc.stdout, channel.sendall)),
               threading.Thread(target=copy, args=(proc.stderr, channel.sendall_stderr))]
    threading.Thread(target=feed, daemon=True).start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.send_exit_status(proc.wait())
    channel.close()


def capitals(channel) -> None:
    while data := channel.recv(1024):
        if b"\x04" in data:
            channel.sendall(data.split(b"\x04")[0].upper())
            channel.send_exit_status(7)
            channel.close()
            return
        channel.sendall(data.upper())
    channel.send_exit_status(0)
    channel.close()


class SSHServer:
    """paramiko's server side on 127.0.0.1: host_key, one user with client_key."""

    def __init__(self, host_key, client_key, user="debian"):
        self.host_key, self.client_key, self.user = host_key, client_key, user
        self.attempts, self.ptys, self.forwards = [], [], []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.transports = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.host_key)
            behaviour = Behaviour(self)
            self.transports.append(transport)
            try:
                transport.start_server(server=behaviour)
            except (paramiko.SSHException, EOFError):
                continue
            threading.Thread(target=self.channels, args=(transport, behaviour), daemon=True).start()

    def channels(self, transport, behaviour):
        while transport.is_active():
            chan = transport.accept(0.5)
            if chan is not None and chan.get_id() in behaviour.targets:
                target = behaviour.targets.pop(chan.get_id())
                threading.Thread(target=remote._splice, args=(target, chan), daemon=True).start()

    def close(self):
        self.listener.close()
        for t in self.transports:
            t.close()


class SshProvider(FakeProvider):
    """The fake provider, with its one server reached at the test SSH server."""

    capabilities = frozenset({"ssh_target"})

    def __init__(self, port: int, console: str, metadata: dict | None = None, state=ACTIVE):
        super().__init__(console=console)
        self.port = port
        meta = {META + "token": TOKEN, META + "tls": "internal", META + "login-user": "debian"}
        meta.update({META + k: v for k, v in (metadata or {}).items()})
        meta = {k: v for k, v in meta.items() if v is not None}
        self.servers["id-1"] = Server("id-1", "demo", state, state.upper(), "127.0.0.1", meta)

    def ssh_target(self, server):
        return SshTarget("127.0.0.1", self.port, server.meta("login-user"))


@pytest.fixture
def keys(clean_environment, monkeypatch):
    """The host's key and the user's, in ~/.ssh/id_ed25519 of the test's home."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    host, _ = ed25519_key()
    client, private = ed25519_key()
    folder = clean_environment / ".ssh"
    folder.mkdir(mode=0o700)
    (folder / "id_ed25519").write_bytes(private)
    (folder / "id_ed25519").chmod(0o600)
    return SimpleNamespace(host=host, client=client, home=clean_environment)


@pytest.fixture
def sshd(keys):
    server = SSHServer(keys.host, keys.client)
    yield server
    server.close()


def use(monkeypatch, provider) -> None:
    monkeypatch.setattr(Context, "provider", property(lambda self: provider))


def run(*args, **kw):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kw)


# -- the console's host keys ---------------------------------------------------------

def test_the_newest_complete_block_counts_and_lines_cut_short_are_passed_over():
    old, new, other = ed25519_key()[0], ed25519_key()[0], ecdsa_key()
    cut = f"ssh-ed25519 {other.get_base64()}"[:40]
    console = ("boot noise\n" + block(old) + "more noise\n"
               + remote.BEGIN + "\n" + cut + "\n" + f"{other.get_name()} {other.get_base64()} x\n"
               + f"ssh-ed25519 {new.get_base64()} root@demo\n" + remote.END + "\n"
               # a block still being printed when the console was read: not yet counted
               + remote.BEGIN + "\nssh-ed25519 AAAA")
    found = remote.console_host_keys(console)
    assert [k.blob for k in found] == [other.asbytes(), new.asbytes()]
    assert [k.kind for k in found] == ["ecdsa-sha2-nistp256", "ssh-ed25519"]
    assert found[1].fingerprint == new.fingerprint  # as ssh-keygen -l writes it


def test_keys_behind_a_loggers_prefix_are_read_and_a_console_without_keys_has_none():
    key = ed25519_key()[0]
    for prefix in ("ec2: ", "<14>Dec  5 08:30:01 ec2: ", "[   12.345678] cloud-init[812]: "):
        assert [k.blob for k in remote.console_host_keys(block(key, prefix=prefix))] == [key.asbytes()]
    assert remote.console_host_keys("") == []
    assert remote.console_host_keys("Booting\nlogin:\n") == []
    assert remote.console_host_keys(remote.BEGIN + "\nssh-ed25519 AAAAC3Nz\n" + remote.END) == []
    garbled = base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x10" + b"x" * 16).decode()
    assert remote.console_host_keys(f"{remote.BEGIN}\nssh-ed25519 {garbled}\n{remote.END}\n") == []


# -- the login user ------------------------------------------------------------------

def test_the_login_user_is_the_one_recorded_unless_user_is_given():
    server = Server("id-1", "demo", ACTIVE, "ACTIVE", "192.0.2.1", {})
    assert remote.login_user(server, SshTarget("192.0.2.1", 22, "ubuntu"), None) == "ubuntu"
    assert remote.login_user(server, SshTarget("192.0.2.1", 22, "ubuntu"), "root") == "root"
    with pytest.raises(errors.BadRequest) as info:
        remote.login_user(server, SshTarget("192.0.2.1", 22, None), None)
    assert info.value.message == "demo records no login user: its image did not say who logs in"
    assert "--user" in info.value.hint


@pytest.mark.parametrize("image, user", [
    ({"name": "whatever", "properties": {"os_admin_user": "cloud-user", "os_distro": "centos"}},
     "cloud-user"),
    ({"name": "Ubuntu 24.04", "os_admin_user": "admin"}, "admin"),
    ({"name": "debian-12-baked", "properties": {"os_distro": "ubuntu", "os_version": "24.04"}}, "ubuntu"),
    ({"name": "Ubuntu 22.04 LTS"}, "ubuntu"),
    ({"name": "debian-12-baked"}, "debian"),
    ({"name": "Debian 13 (trixie)", "properties": {"os_admin_user": "not a user"}}, "debian"),
    ({"name": "my-image", "properties": {"os_distro": "ubuntu"}}, "ubuntu"),
    ({"name": "centos-stream-9"}, None),
    ({"name": "x", "properties": {"os_distro": "fedora"}}, None),
])
def test_openstack_takes_os_admin_user_else_the_distributions_user(image, user):
    assert distros.login_user(SimpleNamespace(**image)) == user


def test_openstack_records_the_login_user_on_the_server_it_makes():
    created = []

    def create_server(**attrs):
        created.append(attrs)
        return SimpleNamespace(id="srv-1", name=attrs["name"], status="BUILD", task_state=None,
                               addresses={}, metadata=attrs["metadata"], fault=None,
                               created_at=None, flavor=None)

    conn = SimpleNamespace(current_user_id="u-1", compute=SimpleNamespace(create_server=create_server))
    spec = make_spec(Source("https://github.com/o/r", "git"), name="demo")
    for login, recorded in (("ubuntu", "ubuntu"), (None, None)):
        resolved = Resolved("img", "Ubuntu 24.04", "flv", "m1.small", "net-1", "public", None, None,
                            None, ("vmbinder",), "203.0.113.40", None, login_user=login)
        server = OpenStackProvider(conn=conn).create(spec, resolved, "#cloud-config\n", Ledger())
        assert server.meta("login-user") == recorded
        assert created[-1]["metadata"].get("vmbinder:login-user") == recorded


def test_the_local_target_records_debian_for_its_debian_images(tmp_path):
    from tests.unit.test_local_provider import make_image

    folder = make_image(tmp_path / "images", "debian-12-baked", baked=True)
    assert local_login_user(folder) == "debian"
    doc = json.loads((folder / "image.json").read_text())
    (folder / "image.json").write_text(json.dumps({**doc, "distro": "ubuntu-24.04"}))
    assert local_login_user(folder) is None
    assert local_login_user(folder / "disk.qcow2") is None  # a plain cloud image says nothing

    images = tmp_path / "other"
    make_image(images, "debian-13-baked", baked=True)
    env = {"HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
           "VMBINDER_IMAGES_DIR": str(images)}
    provider = LocalProvider(env=env, accel="tcg", which=lambda tool: f"/usr/bin/{tool}")
    spec = make_spec(Source("https://github.com/o/r", "git"), name="demo", tls="internal")
    provider.prepare(spec, Ledger())
    doc = json.loads((tmp_path / "state" / "vmbinder" / "local" / "demo" / "server.json").read_text())
    meta = doc["metadata"]
    assert meta["vmbinder:login-user"] == "debian"
    target = provider.ssh_target(Server("id", "demo", ACTIVE, "running", "127.0.0.1", meta))
    assert target == SshTarget("127.0.0.1", int(meta["vmbinder:ssh-port"]), "debian")


# -- run, through the CLI ------------------------------------------------------------

def test_a_command_runs_with_its_output_streams_and_exit_status(keys, sshd, monkeypatch):
    use(monkeypatch, SshProvider(sshd.port, block(keys.host)))
    res = run("ssh", "demo", "--", "echo out; echo err >&2; exit 3")
    assert (res.exit_code, res.stdout, res.stderr) == (3, "out\n", "err\n")
    res = run("ssh", "demo", "--", "tr", "a-z", "A-Z", input=b"piped in\n")
    assert (res.exit_code, res.stdout) == (0, "PIPED IN\n")
    res = run("ssh", "demo", "--format", "json", "--", "echo out; echo err >&2; exit 3")
    assert res.exit_code == 3 and json.loads(res.stdout) == {
        "name": "demo", "command": "echo out; echo err >&2; exit 3", "exit_status": 3,
        "stdout": "out\n", "stderr": "err\n"}
    res = run("ssh", "demo", "--format", "json")
    assert res.exit_code == 2 and "a shell has no results to print as JSON" in res.stderr
    assert sshd.attempts[-1] == ("debian", "ssh-ed25519")
    assert not (keys.home / ".ssh" / "known_hosts").exists()


def test_output_comes_as_it_is_written(keys, sshd):
    provider = SshProvider(sshd.port, block(keys.host))

    class Clock(io.RawIOBase):
        def __init__(self):
            self.chunks = []

        def write(self, data):
            self.chunks.append((time.monotonic(), bytes(data)))
            return len(data)

    out, err = Clock(), Clock()
    with remote.connect(provider, provider.get("demo")) as session:
        status = session.run("echo first; sleep 1.5; echo second", stdout=out, stderr=err)
    ended = time.monotonic()
    assert status == 0 and b"".join(c for _, c in out.chunks) == b"first\nsecond\n"
    assert out.chunks[0][1] == b"first\n" and ended - out.chunks[0][0] > 1.0


def test_the_user_given_wins_and_a_refused_login_names_the_user_and_keys_tried(keys, sshd, monkeypatch):
    use(monkeypatch, SshProvider(sshd.port, block(keys.host)))
    res = run("ssh", "--user", "root", "demo", "--", "true")
    assert res.exit_code == 3
    assert f"error: demo refused root@127.0.0.1:{sshd.port} with the keys tried: " \
           f"{keys.home}/.ssh/id_ed25519" in res.stderr
    assert "hint: log in with the key the server was launched with (-i FILE" in res.stderr
    assert "the launch recorded: debian" in res.stderr
    assert sshd.attempts[-1] == ("root", "ssh-ed25519")

    other, private = ed25519_key()
    (keys.home / "other").write_bytes(private)
    res = run("ssh", "-i", str(keys.home / "other"), "demo", "--", "true")
    assert res.exit_code == 3 and f"keys tried: {keys.home}/other" in res.stderr
    res = run("ssh", "-i", str(keys.home / ".ssh" / "id_ed25519"), "demo", "--", "exit 0")
    assert res.exit_code == 0, res.stderr


def test_without_a_recorded_user_ssh_asks_for_one(keys, sshd, monkeypatch):
    use(monkeypatch, SshProvider(sshd.port, block(keys.host), {"login-user": None}))
    res = run("ssh", "demo", "--", "true")
    assert res.exit_code == 2
    assert "error: demo records no login user: its image did not say who logs in" in res.stderr
    assert run("ssh", "--user", "debian", "demo", "--", "true").exit_code == 0


def test_no_key_at_all_is_a_configuration_error(keys, sshd, monkeypatch):
    (keys.home / ".ssh" / "id_ed25519").unlink()
    use(monkeypatch, SshProvider(sshd.port, block(keys.host)))
    res = run("ssh", "demo", "--", "true")
    assert res.exit_code == 3 and "no SSH key to log in to demo with" in res.stderr
    assert "-i FILE" in res.stderr


# -- pinning -------------------------------------------------------------------------

def test_no_keys_on_the_console_yet_is_refused_with_a_hint(keys, sshd, monkeypatch):
    use(monkeypatch, SshProvider(sshd.port, "cloud-init is running\n" + remote.BEGIN + "\n"))
    res = run("ssh", "demo", "--", "true")
    assert res.exit_code == 2
    assert "error: demo has printed no SSH host keys on its console yet" in res.stderr
    assert "wait, and follow it with vmbinder status demo" in res.stderr
    assert sshd.attempts == [] and sshd.transports == []  # nothing was sent to the server


def test_a_host_key_that_differs_is_refused_as_untrusted(keys, sshd, monkeypatch):
    printed = ed25519_key()[0]
    # The server's real key was printed once, then the server printed a new one.
    use(monkeypatch, SshProvider(sshd.port, block(keys.host) + block(printed)))
    res = run("ssh", "demo", "--", "true")
    assert res.exit_code == 8
    assert f"error: the SSH host key of demo (127.0.0.1:{sshd.port}) is not one its console " \
           f"printed: it offers ssh-ed25519 {keys.host.fingerprint}" in res.stderr
    assert f"the console printed ssh-ed25519 {printed.fingerprint}" in res.stderr
    assert "may be intercepting the connection" in res.stderr
    assert sshd.attempts == []  # no key was offered to it
    assert not (keys.home / ".ssh" / "known_hosts").exists()


def test_a_server_without_the_kind_of_key_printed_is_refused_as_untrusted(keys, sshd, monkeypatch):
    use(monkeypatch, SshProvider(sshd.port, block(ecdsa_key())))
    res = run("ssh", "demo", "--", "true")
    assert res.exit_code == 8
    assert "it has none of the kinds of key its console printed" in res.stderr


def test_refused_and_unanswered_connections_say_so(keys, monkeypatch):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    use(monkeypatch, SshProvider(port, block(keys.host)))
    res = run("ssh", "demo", "--", "true")
    assert res.exit_code == 4
    assert f"error: demo: 127.0.0.1:{port} refused the connection" in res.stderr
    assert "hint: the server may still be starting: wait, and see vmbinder status demo" in res.stderr

    def silent(address, timeout):
        raise TimeoutError("timed out")

    monkeypatch.setattr(remote.socket, "create_connection", silent)
    res = run("ssh", "demo", "--", "true")
    assert res.exit_code == 5
    assert f"error: demo: no answer from 127.0.0.1:{port} in 20 s" in res.stderr
    assert "--ssh-cidr" in res.stderr


def test_a_server_that_closes_before_the_handshake_is_a_cloud_failure(keys, monkeypatch):
    mute = socket.create_server(("127.0.0.1", 0))
    closer = threading.Thread(target=lambda: mute.accept()[0].close(), daemon=True)
    closer.start()
    port = mute.getsockname()[1]
    use(monkeypatch, SshProvider(port, block(keys.host)))
    res = run("ssh", "demo", "--", "true")
    mute.close()
    assert res.exit_code == 4
    assert f"the SSH handshake with 127.0.0.1:{port} failed: " in res.stderr
    assert "failed: \n" not in res.stderr  # it says how
    # paramiko's own traceback of it is not printed for want of a logging handler
    assert logging.getLogger("paramiko").handlers


def test_a_stopped_server_or_a_target_without_ssh_is_refused(keys, monkeypatch):
    use(monkeypatch, SshProvider(1, block(keys.host), state="stopped"))
    res = run("ssh", "demo", "--", "true")
    assert res.exit_code == 2 and "error: demo is not running (status stopped)" in res.stderr
    provider = FakeProvider(console=block(keys.host))
    provider.servers["id-1"] = Server("id-1", "demo", ACTIVE, "ACTIVE", "192.0.2.1", {})
    use(monkeypatch, provider)
    res = run("tunnel", "demo")
    assert res.exit_code == 2 and "error: ssh_target is not supported on the fake target" in res.stderr


def test_the_ssh_targets_of_the_two_providers():
    server = Server("id-1", "demo", ACTIVE, "ACTIVE", "203.0.113.5",
                    {META + "login-user": "ubuntu", META + "ssh-port": "40022"})
    assert OpenStackProvider(conn=object()).ssh_target(server) == SshTarget("203.0.113.5", 22, "ubuntu")
    assert LocalProvider().ssh_target(server) == SshTarget("127.0.0.1", 40022, "ubuntu")
    nowhere = Server("id-1", "demo", "building", "BUILD", None, {})
    with pytest.raises(errors.BadRequest, match="demo has no address yet"):
        OpenStackProvider(conn=object()).ssh_target(nowhere)


# -- the interactive shell -----------------------------------------------------------

def test_the_shell_runs_on_a_raw_pty_of_the_terminals_size_and_restores_it(keys, sshd):
    provider = SshProvider(sshd.port, block(keys.host))
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    before = termios.tcgetattr(slave)
    seen = bytearray()

    def typist():
        deadline = time.monotonic() + 10
        while termios.tcgetattr(slave)[3] & termios.ICANON and time.monotonic() < deadline:
            time.sleep(0.02)
        # raw: Ctrl-D reaches the server as a byte, nothing is echoed here
        os.write(master, b"hello\x04")
        while b"HELLO" not in seen and time.monotonic() < deadline:
            seen.extend(os.read(master, 1024))

    t = threading.Thread(target=typist, daemon=True)
    t.start()
    try:
        with remote.connect(provider, provider.get("demo")) as session:
            status = session.shell(slave, slave, slave, term="xterm-256color")
        t.join(10)
        assert status == 7
        assert bytes(seen) == b"HELLO"
        assert sshd.ptys[0] == ("xterm-256color", 111, 33)
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_a_shell_without_a_terminal_gets_its_input_and_no_pty(keys, sshd):
    provider = SshProvider(sshd.port, block(keys.host))
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    os.write(write_in, b"no pty here")
    os.close(write_in)
    with remote.connect(provider, provider.get("demo")) as session:
        status = session.shell(read_in, write_out, write_out)
    os.close(write_out)
    assert (status, os.read(read_out, 100)) == (0, b"NO PTY HERE")
    assert sshd.ptys == []
    os.close(read_in)
    os.close(read_out)


# -- the tunnel ----------------------------------------------------------------------

class Jupyter(http.server.ThreadingHTTPServer):
    """Stands in for Jupyter on the server: answers slowly, counting how many
    requests it holds at once."""

    def __init__(self):
        self.lock, self.now, self.most, self.paths = threading.Lock(), 0, 0, []
        super().__init__(("127.0.0.1", 0), JupyterHandler)


class JupyterHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        server = self.server
        with server.lock:
            server.now += 1
            server.most = max(server.most, server.now)
            server.paths.append(self.path)
        time.sleep(0.4)
        with server.lock:
            server.now -= 1
        body = f"jupyter {self.path}".encode()
        self.send_response(200 if f"token={TOKEN}" in self.path else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def jupyter():
    server = Jupyter()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_tunnel_carries_concurrent_connections_and_ctrl_c_ends_it(keys, sshd, jupyter, monkeypatch):
    use(monkeypatch, SshProvider(sshd.port, block(keys.host), {"open-file": "index.ipynb"}))
    monkeypatch.setattr(remote, "jupyter_address", lambda: jupyter.server_address[:2])
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    answers = []
    real_forward = remote.Session.forward

    def forward(self, listener, to, **kw):
        def browser():  # a browser opens several connections at once
            try:
                urls = [f"http://127.0.0.1:{port}/lab?token={TOKEN}"] * 6 \
                    + [f"http://127.0.0.1:{port}/api/status?token=wrong"]
                with ThreadPoolExecutor(8) as pool:
                    answers.extend(pool.map(fetch, urls))
            finally:
                _thread.interrupt_main()  # Ctrl-C

        threading.Thread(target=browser, daemon=True).start()
        return real_forward(self, listener, to, **kw)

    monkeypatch.setattr(remote.Session, "forward", forward)
    res = run("tunnel", "demo", "--port", str(port))
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"open url  http://127.0.0.1:{port}/lab/tree/index.ipynb?token={TOKEN}",
        f"tree url  http://127.0.0.1:{port}/tree?token={TOKEN}",
        f"lab url   http://127.0.0.1:{port}/lab?token={TOKEN}",
    ]
    there = "{}:{}".format(*jupyter.server_address[:2])  # where Jupyter is, on the server
    assert f"forwarding 127.0.0.1:{port} to Jupyter on demo ({there} there)" in res.stderr
    assert "tunnel to demo closed" in res.stderr
    assert answers[:6] == [(200, f"jupyter /lab?token={TOKEN}")] * 6
    assert answers[6] == (403, "jupyter /api/status?token=wrong")
    assert jupyter.most >= 3, "the tunnel carried the connections one after another"
    assert len(sshd.forwards) == 7 and set(sshd.forwards) == {jupyter.server_address[:2]}


def test_the_tunnel_prints_json_and_a_port_in_use_is_refused(keys, sshd, jupyter, monkeypatch):
    use(monkeypatch, SshProvider(sshd.port, block(keys.host)))
    taken = socket.create_server(("127.0.0.1", 0))
    res = run("tunnel", "demo", "--port", str(taken.getsockname()[1]))
    taken.close()
    assert res.exit_code == 2 and "cannot listen on 127.0.0.1:" in res.stderr
    assert "choose another --port, or leave it out for a free one" in res.stderr

    def interrupted(self, *args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(remote.Session, "forward", interrupted)
    res = run("tunnel", "demo", "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["open_url"] is None and doc["urls"]["lab"] == f"http://127.0.0.1:{doc['port']}/lab?token={TOKEN}"


def test_a_connection_the_server_cannot_open_is_reported_and_the_rest_goes_on(keys, sshd, jupyter):
    provider = SshProvider(sshd.port, block(keys.host))
    closed = socket.create_server(("127.0.0.1", 0))
    nowhere = closed.getsockname()[:2]
    closed.close()
    said, stop = [], threading.Event()
    with remote.connect(provider, provider.get("demo")) as session:
        for target, expect in ((nowhere, None), (jupyter.server_address[:2], 200)):
            listener = remote.listen(None)
            port = listener.getsockname()[1]
            t = threading.Thread(target=session.forward, args=(listener, target),
                                 kwargs={"on_error": said.append, "stop": stop}, daemon=True)
            t.start()
            if expect is None:
                with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
                    fetch(f"http://127.0.0.1:{port}/lab?token={TOKEN}")
            else:
                assert fetch(f"http://127.0.0.1:{port}/lab?token={TOKEN}")[0] == expect
            stop.set()
            t.join(5)
            stop.clear()
            listener.close()
    assert len(said) == 1 and said[0].startswith(f"demo did not open a connection to {nowhere[0]}:")


def test_a_lost_connection_ends_the_tunnel_with_a_cloud_failure(keys, sshd):
    provider = SshProvider(sshd.port, block(keys.host))
    session = remote.connect(provider, provider.get("demo"))
    sshd.close()
    deadline = time.monotonic() + 10
    while session.transport.is_active() and time.monotonic() < deadline:
        time.sleep(0.05)
    with remote.listen(None) as listener, pytest.raises(errors.CloudError) as info:
        session.forward(listener, ("127.0.0.1", 8888))
    assert info.value.message == "the SSH connection to demo was lost"
    session.close()

