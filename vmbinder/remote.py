"""SSH to a server, its host key pinned to its console: `vmbinder ssh` and `vmbinder tunnel`.

The only host keys trusted are the ones cloud-init printed on the server's
serial console (the `-----BEGIN SSH HOST KEY KEYS-----` block), which only the
cloud's API shows. The newest block counts: a server started from a snapshot
makes and prints keys of its own. Nothing is asked of the user and nothing is
read from or written to ~/.ssh/known_hosts; a server offering another key is
refused (UntrustedServer).

Here are the console's keys, the login user and the keys to log in with, the
pinned connection (Session) and what it does: run a command, an interactive
shell, forward local connections to a port on the server. Its size is that of
one connection and its three uses, which share the byte-copying loops; the
parsing of the console is what the other half checks against. paramiko is
imported only when a connection is made, so --help stays fast.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmbinder import errors, urls
from vmbinder.guestcontract import JUPYTER_ADDRESS
from vmbinder.providers.base import ACTIVE, Provider, Server, SshTarget
from vmbinder.reach import Access, opens

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
#: A key line, wherever it starts on the console line (a logger may prefix it).
_KEY_RE = re.compile(r"(?<![\w@.-])(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521))"
                     r"\s+([A-Za-z0-9+/]+={0,2})(?![A-Za-z0-9+/=])")
#: The host key algorithms that sign with each kind of key.
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}
#: The private keys tried without -i: those whose .pub `launch` uploads by default.
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
#: Seconds to wait for the server to answer and to finish the handshake.
CONNECT_TIMEOUT = 20.0
CHUNK = 32768


@dataclass(frozen=True)
class HostKey:
    """One host key as the console printed it: its kind and its wire-format blob."""

    kind: str
    blob: bytes

    @property
    def fingerprint(self) -> str:
        """As `ssh-keygen -l` and ssh's own messages show it."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    def __str__(self) -> str:
        return f"{self.kind} {self.fingerprint}"


def _fields(blob: bytes) -> list[bytes] | None:
    """The length-prefixed strings a key blob is made of; None when it is not exactly that."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            return None
        size = int.from_bytes(blob[at:at + 4], "big")
        if at + 4 + size > len(blob):
            return None
        out.append(blob[at + 4:at + 4 + size])
        at += 4 + size
    return out


def _host_key(kind: str, text: str) -> HostKey | None:
    """The key of a console line, or None when the line was cut or garbled."""
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    fields = _fields(blob)
    if not fields or len(fields) < 2 or fields[0] != kind.encode():
        return None
    if kind == "ssh-ed25519" and (len(fields) != 2 or len(fields[1]) != 32):
        return None
    return HostKey(kind, blob)


def console_host_keys(console: str) -> list[HostKey]:
    """The host keys of the newest complete block cloud-init printed on the console;
    [] when there is none yet. Lines cut short or garbled are passed over."""
    newest: list[HostKey] | None = None
    block: list[HostKey] | None = None
    for line in console.splitlines():
        if BEGIN in line:
            block = []
        elif block is not None and END in line:
            newest, block = block, None
        elif block is not None:
            found = _KEY_RE.search(line)
            key = _host_key(*found.groups()) if found else None
            if key and key not in block:
                block.append(key)
    return newest or []


def login_user(server: Server, target: SshTarget, given: str | None) -> str:
    """--user, else the image's login user the launch recorded."""
    if given or target.user:
        return given or target.user
    raise errors.BadRequest(
        f"{server.name} records no login user: its image did not say who logs in",
        "pass the image's user with --user (such as ubuntu, debian, centos or cloud-user)")


def _paramiko():
    try:
        import paramiko
    except ImportError:
        raise errors.ConfigError("SSH needs paramiko, which is not installed",
                                 "install it: pip install paramiko") from None
    # Its transport thread logs each failure with a traceback, which Python would
    # print on stderr for want of a handler; vmbinder's own error says it in words.
    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return paramiko


@dataclass
class Identity:
    """A key to log in with, and how to name it in messages."""

    label: str
    key: object


def _load_key(path: Path, passphrase: Callable[[Path], str | None] | None):
    """The private key at path; None when it is encrypted and no passphrase is given."""
    paramiko = _paramiko()
    password = None
    while True:
        try:
            return paramiko.PKey.from_path(path, password)
        except TypeError:  # encrypted, and no password given
            password = passphrase(path) if passphrase else None
            if not password:
                return None
        except (ValueError, paramiko.SSHException) as exc:
            if password is not None:
                raise errors.BadRequest(f"cannot decrypt {path}: wrong passphrase",
                                        "try again, or add it to the agent: ssh-add") from None
            hint = (f"pass the private key, not the public one: -i {str(path)[:-4]}"
                    if path.suffix == ".pub" else "pass an OpenSSH or PEM private key with -i")
            raise errors.BadRequest(f"{path} is not a private key vmbinder can read ({exc})",
                                    hint) from None
        except OSError as exc:
            raise errors.BadRequest(f"cannot read {path}: {exc.strerror}", "check -i") from None


def identities(identity: Path | None, *, home: Path | None = None,
               passphrase: Callable[[Path], str | None] | None = None) -> tuple[list[Identity], list[str]]:
    """The keys to try and what was passed over, in words. With identity: that key
    only. Without: ~/.ssh/id_ed25519, id_ecdsa and id_rsa (the keys `launch`
    uploads), then the SSH agent's."""
    skipped: list[str] = []
    if identity is not None:
        key = _load_key(Path(identity), passphrase)
        if key is None:
            raise errors.BadRequest(f"{identity} is encrypted and no passphrase was given",
                                    f"add it to the SSH agent (ssh-add {identity}) and leave -i out, "
                                    "or run vmbinder on a terminal to be asked for it")
        return [Identity(str(identity), key)], skipped
    found = []
    folder = (home or Path.home()) / ".ssh"
    for name in DEFAULT_IDENTITIES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            key = _load_key(path, None)
        except errors.BadRequest as exc:
            skipped.append(exc.message)
            continue
        if key is None:
            skipped.append(f"{path} (encrypted: add it to the agent with ssh-add, or pass -i)")
        else:
            found.append(Identity(str(path), key))
    if os.environ.get("SSH_AUTH_SOCK"):
        paramiko = _paramiko()
        try:
            agent_keys = paramiko.Agent().get_keys()
        except paramiko.SSHException:
            agent_keys = ()
        held = {i.key.asbytes() for i in found}
        found += [Identity(f"the agent's {k.get_name()} key {HostKey(k.get_name(), k.asbytes()).fingerprint}",
                           k) for k in agent_keys if k.asbytes() not in held]
    return found, skipped


def connect(provider: Provider, server: Server, *, user: str | None = None,
            identity: Path | None = None, home: Path | None = None,
            passphrase: Callable[[Path], str | None] | None = None,
            timeout: float = CONNECT_TIMEOUT) -> Session:
    """An SSH session to the server as its login user (or user), its host key one
    the console printed, logged in with identity (else the default keys)."""
    if server.state != ACTIVE:
        raise errors.BadRequest(f"{server.name} is not running (status {server.state})",
                                f"see why: vmbinder status {server.name}")
    if not provider.supports("ssh_target"):
        raise provider.unsupported("ssh_target")
    target = provider.ssh_target(server)
    who = login_user(server, target, user)
    pinned = console_host_keys(provider.console_log(server))
    if not pinned:
        raise errors.BadRequest(
            f"{server.name} has printed no SSH host keys on its console yet, so its host "
            "key cannot be checked",
            f"cloud-init prints them once it has set the server up: wait, and follow it "
            f"with vmbinder status {server.name}")
    keys, skipped = identities(identity, home=home, passphrase=passphrase)
    if not keys:
        said = f" ({'; '.join(skipped)})" if skipped else ""
        raise errors.ConfigError(
            f"no SSH key to log in to {server.name} with: no SSH agent and no usable "
            f"~/.ssh/{', '.join(DEFAULT_IDENTITIES)}{said}",
            "pass the private key of the key the server was launched with: -i FILE")
    transport = _handshake(server, target, pinned, timeout)
    try:
        _authenticate(transport, server, target, who, keys, skipped)
    except BaseException:
        transport.close()
        raise
    return Session(transport, server.name)


def _where(target: SshTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"


def _handshake(server: Server, target: SshTarget, pinned: list[HostKey], timeout: float):
    """The SSH transport to target, once its host key is one of pinned."""
    paramiko = _paramiko()
    where = _where(target)
    booting = f"the server may still be starting: wait, and see vmbinder status {server.name}"
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except TimeoutError:
        raise errors.ReadinessTimeout(
            f"{server.name}: no answer from {where} in {timeout:.0f} s",
            f"{booting}; port 22 may also be closed to this machine (launch --ssh-cidr)") from None
    except ConnectionRefusedError:
        raise errors.CloudError(f"{server.name}: {where} refused the connection", booting) from None
    except OSError as exc:
        raise errors.CloudError(f"{server.name}: cannot reach {where}: {exc.strerror or exc}",
                                booting) from None
    transport = paramiko.Transport(sock)
    kinds = {k.kind for k in pinned}
    options = transport.get_security_options()
    options.key_types = [t for t in options.key_types
                         if t in kinds or any(t in _ALGORITHMS.get(k, ()) for k in kinds)]
    transport.banner_timeout = transport.handshake_timeout = timeout
    try:
        transport.start_client(timeout=timeout)
        offered = transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        transport.close()
        if "no acceptable host key" in str(exc):
            raise _untrusted(server, where, "it has none of the kinds of key its console printed",
                             pinned) from None
        raise errors.CloudError(f"{server.name}: the SSH handshake with {where} failed: "
                                f"{_said(exc)}", booting) from None
    if offered.asbytes() not in {k.blob for k in pinned}:
        transport.close()
        raise _untrusted(server, where, "it offers "
                         + str(HostKey(offered.get_name(), offered.asbytes())), pinned)
    return transport


def _untrusted(server: Server, where: str, why: str, pinned: list[HostKey]) -> errors.UntrustedServer:
    return errors.UntrustedServer(
        f"the SSH host key of {server.name} ({where}) is not one its console printed: {why}; "
        f"the console printed {', '.join(str(k) for k in pinned)}",
        "something between this machine and the server may be intercepting the connection: "
        f"do not log in; compare with the server's console (vmbinder status {server.name})")


def _authenticate(transport, server: Server, target: SshTarget, user: str,
                  keys: list[Identity], skipped: list[str]) -> None:
    paramiko = _paramiko()
    tried = []
    for identity in keys:
        if not transport.is_active():
            break
        try:
            transport.auth_publickey(user, identity.key)
        except paramiko.BadAuthenticationType as exc:
            raise errors.ConfigError(
                f"{server.name} takes no SSH key for {user} (only {', '.join(exc.allowed_types)})",
                "log in as the image's user with --user") from None
        except (paramiko.SSHException, EOFError, OSError):
            tried.append(identity.label)
            continue
        if transport.is_authenticated():
            return
    recorded = target.user or "none"
    also = f"; passed over: {'; '.join(skipped)}" if skipped else ""
    raise errors.ConfigError(
        f"{server.name} refused {user}@{_where(target)} with the keys tried: "
        f"{', '.join(tried) or 'none'}{also}",
        "log in with the key the server was launched with (-i FILE, or ssh-add it to the "
        f"agent) as the image's user (--user; the launch recorded: {recorded})")


class Session:
    """A logged-in SSH connection to one server, its host key checked."""

    def __init__(self, transport, name: str):
        self.transport = transport
        self.name = name
        transport.set_keepalive(30)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def run(self, command: str, *, stdout, stderr, stdin=None) -> int:
        """Run command on the server (by the login user's shell, as ssh does), copying
        its output to stdout and stderr (binary files) as it comes and stdin (a binary
        file, or None for none) to it; its exit status (255 when it gave none)."""
        chan = self.transport.open_session(timeout=CONNECT_TIMEOUT)
        try:
            chan.exec_command(command)
            if stdin is None:
                chan.shutdown_write()
            else:
                threading.Thread(target=_feed, args=(stdin, chan), daemon=True).start()
            errs = threading.Thread(target=_drain, args=(chan.recv_stderr, stderr), daemon=True)
            errs.start()
            _drain(chan.recv, stdout)
            errs.join()
            status = chan.recv_exit_status()
        finally:
            chan.close()
        return status if status >= 0 else 255

    def shell(self, stdin_fd: int, stdout_fd: int, stderr_fd: int, term: str = "xterm") -> int:
        """The login shell: on a terminal with a pty of its size, the terminal in raw
        mode (and put back as it was at the end), its size followed; its exit status."""
        chan = self.transport.open_session(timeout=CONNECT_TIMEOUT)
        interactive = os.isatty(stdin_fd)
        saved = None
        try:
            if interactive:
                import termios
                import tty

                size = os.get_terminal_size(stdout_fd if os.isatty(stdout_fd) else stdin_fd)
                chan.get_pty(term=term, width=size.columns, height=size.lines)
                saved = termios.tcgetattr(stdin_fd)
            chan.invoke_shell()
            if interactive:
                tty.setraw(stdin_fd)
            with _following_size(chan, stdout_fd if os.isatty(stdout_fd) else stdin_fd, interactive):
                _shuttle(chan, stdin_fd, stdout_fd, stderr_fd)
            status = chan.recv_exit_status()
        finally:
            if saved is not None:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            chan.close()
        return status if status >= 0 else 255

    def get(self, address: str, target: str, *, timeout: float = CONNECT_TIMEOUT,
            limit: int = 1 << 22) -> tuple[int | None, bytes, str]:
        """GET target from address (host:port, a service on the server's loopback)
        through this connection: (HTTP status, body, reason), as readiness.fetch
        says it; the status is None when nothing answered there."""
        paramiko = _paramiko()
        host, port = address.rsplit(":", 1)
        try:
            chan = self.transport.open_channel("direct-tcpip", (host, int(port)), ("127.0.0.1", 0),
                                               timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            return None, b"", _said(exc)
        try:
            chan.settimeout(timeout)
            # HTTP/1.0: the answer ends with the connection, never in chunks.
            chan.sendall(f"GET {target} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
            data = b""
            while len(data) <= limit + 65536 and (piece := chan.recv(CHUNK)):
                data += piece
        except (OSError, EOFError, paramiko.SSHException) as exc:
            return None, b"", _said(exc)
        finally:
            chan.close()
        head, _, body = data.partition(b"\r\n\r\n")
        words = head.split(b"\r\n", 1)[0].split(None, 2)
        if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
            return None, b"", "not an HTTP answer" if data else "the connection was closed"
        return int(words[1]), body[:limit], (words[2] if len(words) > 2 else b"").decode(errors="replace")

    def forward(self, listener: socket.socket, remote: tuple[str, int], *,
                on_error: Callable[[str], None] = lambda message: None,
                stop: threading.Event | None = None) -> None:
        """Until stop is set (or KeyboardInterrupt): every connection accepted on
        listener gets a channel of its own to remote on the server. CloudError when
        the SSH connection is lost."""
        listener.settimeout(0.5)
        while stop is None or not stop.is_set():
            if not self.transport.is_active():
                raise errors.CloudError(f"the SSH connection to {self.name} was lost",
                                        f"start it again; see vmbinder status {self.name}")
            try:
                conn, peer = listener.accept()
            except (TimeoutError, BlockingIOError):
                continue
            threading.Thread(target=self._carry, args=(conn, peer, remote, on_error),
                             daemon=True).start()

    def _carry(self, conn: socket.socket, peer, remote: tuple[str, int], on_error) -> None:
        paramiko = _paramiko()
        conn.settimeout(None)
        try:
            chan = self.transport.open_channel("direct-tcpip", remote, peer[:2],
                                               timeout=CONNECT_TIMEOUT)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            on_error(f"{self.name} did not open a connection to {remote[0]}:{remote[1]}: "
                     f"{_said(exc)}")
            conn.close()
            return
        try:
            _splice(conn, chan)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            chan.close()
            conn.close()


def _said(exc: BaseException) -> str:
    """An exception in words; paramiko's EOFError and some of its errors have none."""
    return str(exc) or ("the connection was closed" if isinstance(exc, EOFError)
                        else type(exc).__name__)


def _feed(source, chan) -> None:
    """source (a binary file) into the channel, then its end."""
    try:
        while data := (source.read1(CHUNK) if hasattr(source, "read1") else source.read(CHUNK)):
            chan.sendall(data)
        chan.shutdown_write()
    except (OSError, EOFError):
        pass


def _drain(read: Callable[[int], bytes], out) -> None:
    while data := read(CHUNK):
        out.write(data)
        out.flush()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _shuttle(chan, stdin_fd: int, stdout_fd: int, stderr_fd: int) -> None:
    """The terminal's bytes to the channel and the channel's back, until it closes
    (paramiko's demos/interactive.py)."""
    sources = [chan, stdin_fd]
    while True:
        ready, _, _ = select.select(sources, [], [])
        if chan in ready:
            while chan.recv_stderr_ready():
                _write_all(stderr_fd, chan.recv_stderr(CHUNK))
            if chan.recv_ready():
                _write_all(stdout_fd, chan.recv(CHUNK))
            elif chan.eof_received or chan.closed:
                return
        if stdin_fd in ready:
            data = os.read(stdin_fd, 4096)
            if data:
                chan.sendall(data)
            else:
                chan.shutdown_write()
                sources.remove(stdin_fd)


@contextlib.contextmanager
def _following_size(chan, fd: int, active: bool):
    """While in it, the pty follows the terminal's size (SIGWINCH)."""
    import signal

    before = None
    if active and threading.current_thread() is threading.main_thread():
        def resize(signum, frame):
            size = os.get_terminal_size(fd)
            chan.resize_pty(width=size.columns, height=size.lines)

        before = signal.signal(signal.SIGWINCH, resize)
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGWINCH, before)


def _splice(conn: socket.socket, chan) -> None:
    """Bytes both ways between a local connection and its channel; each side's end
    is passed on to the other, and it is over when both have ended."""
    other = {conn: chan, chan: conn}
    open_ = [conn, chan]
    while open_:
        ready, _, _ = select.select(open_, [], [])
        for source in ready:
            data = source.recv(CHUNK)
            if data:
                other[source].sendall(data)
                continue
            open_.remove(source)
            if source is conn:
                chan.shutdown_write()
            else:
                conn.shutdown(socket.SHUT_WR)


# -- the tunnel -------------------------------------------------------------------------

def jupyter_address() -> tuple[str, int]:
    """Where Jupyter listens on the server (guestcontract.JUPYTER_ADDRESS)."""
    host, port = JUPYTER_ADDRESS.rsplit(":", 1)
    return host, int(port)


def listen(port: int | None) -> socket.socket:
    """A listening socket on this machine's 127.0.0.1:port (None: a free port)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port or 0))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise errors.BadRequest(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}",
                                "choose another --port, or leave it out for a free one") from None
    return sock


def tunnel_access(server: Server, port: int) -> Access:
    """The server's URLs (token included) through a tunnel on this machine's port:
    the interfaces it serves, and its open path (see lifecycle.access)."""
    base = f"http://127.0.0.1:{port}/"
    token = server.meta("token")
    detected = frozenset(server.meta("interfaces").split(",")) if server.meta("interfaces") else None
    shown = urls.available(detected)
    file, urlpath = opens(server)
    return Access(base=base, urls={i.key: urls.url_for(base, i.path, token) for i in shown},
                  absent={i.key: i.absent_reason for i in urls.INTERFACES if i not in shown},
                  open_url=urls.open_url(base, token, file=file, urlpath=urlpath))


class Through:
    """The server's own HTTP services (Jupyter, the status service), reached over
    SSH: for servers launched with --expose ssh, where nothing answers publicly.
    Connects when first asked, and again after the connection was lost."""

    def __init__(self, provider: Provider, server: Server):
        self.provider, self.server = provider, server
        self.session: Session | None = None

    def get(self, address: str, target: str, *, timeout: float = CONNECT_TIMEOUT,
            limit: int = 1 << 22) -> tuple[int | None, bytes, str]:
        """As Session.get; the connection's failures raise (see connect). timeout
        is the request's: connecting has CONNECT_TIMEOUT, as ssh has."""
        return self.connection().get(address, target, timeout=timeout, limit=limit)

    def connection(self, timeout: float = CONNECT_TIMEOUT) -> Session:
        """The session, connected (again) when needed."""
        if self.session is None or not self.session.transport.is_active():
            self.close()
            self.session = connect(self.provider, self.server, timeout=timeout)
        return self.session

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
