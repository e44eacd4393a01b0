"""An ACME CA for the tests: Debian's `pebble` (Let's Encrypt's test CA) with
`pebble-challtestsrv` as the DNS it asks, and a relay that carries its
validation connections to a guest.

Pebble validates http-01 by connecting to the identifier's address (an IP
address, or what the challenge DNS answers for a name) on its `httpPort`, and
tls-alpn-01 on its `tlsPort`. A guest's ports 80 and 443 are wherever the test
says (the local target forwards them to loopback ports): `Relay` listens where
pebble connects and carries each connection there.

What differs from Let's Encrypt: pebble 2.4 knows no profiles, so certificates
for addresses are asked for without `profile shortlived` (vmbinder leaves the
profile out for any CA given with --acme-ca); it issues from a root it makes
at start, served on its management port, which goes into the roots file
vmbinder and the guest trust (--acme-ca-root) with the root of its own
listener's certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _listener_certificate(folder: Path, addresses: list[str]) -> Path:
    """A root and a certificate for pebble's own listener, valid for addresses."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def make(name, key, issuer=None, issuer_key=None, sans=()):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer.subject if issuer else subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None),
                                  critical=True))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(a)) for a in sans]), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = make("pebble listener root (test)", root_key)
    cert = make("pebble", key, root, root_key, addresses)
    pem = serialization.Encoding.PEM
    (folder / "listener-root.pem").write_bytes(root.public_bytes(pem))
    (folder / "listener.pem").write_bytes(cert.public_bytes(pem))
    (folder / "listener.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / "listener-root.pem"


class Relay:
    """Listens on (host, port) and carries each connection to target(), which says
    where the guest's port is now (None: refuse the connection)."""

    def __init__(self, host: str, port: int, target: Callable[[], tuple[str, int] | None]):
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        where = self.target()
        if where is None:
            client.close()
            return
        try:
            upstream = socket.create_connection(where, timeout=10)
        except OSError:
            client.close()
            return
        self.connections += 1

        def pump(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self.sock.close()


class Pebble:
    """A running pebble and its challenge DNS."""

    def __init__(self, directory: str, roots: Path, management: str, log: Path):
        #: The ACME directory URL, as guests reach it (--acme-ca).
        self.directory = directory
        #: The listener's root and the issuing root, one PEM file (--acme-ca-root).
        self.roots = roots
        self.management = management
        self.log = log

    def issuing_root(self) -> str:
        context = ssl.create_default_context(cafile=str(self.roots))
        with urllib.request.urlopen(f"{self.management}/roots/0", context=context, timeout=10) as resp:
            return resp.read().decode()


@contextmanager
def pebble(folder: Path, *, listen: str = "127.0.0.1", seen_as: str = "10.0.2.2",
           http_port: int | None = None, tls_port: int | None = None, dns_answer: str = "127.0.0.1",
           blocklist: tuple[str, ...] = ()):
    """Start pebble on listen (guests reach it at seen_as), validating on
    http_port/tls_port of whatever address an identifier has, names answered by
    the challenge DNS with dns_answer, refusing names under blocklist."""
    for tool in ("pebble", "pebble-challtestsrv"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/setup (Debian package pebble)"
    folder.mkdir(parents=True, exist_ok=True)
    listener_root = _listener_certificate(folder, sorted({listen, seen_as, "127.0.0.1"}))
    port, management, dns = (_free_port(listen), _free_port(listen), _free_port("127.0.0.1"))
    config = {"pebble": {
        "listenAddress": f"{listen}:{port}", "managementListenAddress": f"{listen}:{management}",
        "certificate": str(folder / "listener.pem"), "privateKey": str(folder / "listener.key"),
        "httpPort": http_port or 5002, "tlsPort": tls_port or 5001, "ocspResponderURL": "",
        "externalAccountBindingRequired": False, "domainBlocklist": list(blocklist)}}
    (folder / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
           "PEBBLE_AUTHZREUSE": "0"}
    log = folder / "pebble.log"
    procs = []
    try:
        with open(folder / "challtestsrv.log", "w") as out:
            procs.append(subprocess.Popen(
                ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "",
                 "-tlsalpn01", "", "-management", f"127.0.0.1:{_free_port('127.0.0.1')}",
                 "-defaultIPv4", dns_answer, "-defaultIPv6", ""], stdout=out, stderr=subprocess.STDOUT))
        with open(log, "w") as out:
            procs.append(subprocess.Popen(
                ["pebble", "-config", str(folder / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"],
                stdout=out, stderr=subprocess.STDOUT, env=env))
        deadline = time.monotonic() + 30
        while "Listening on" not in log.read_text():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                f"pebble did not start: {log.read_text()}"
            time.sleep(0.2)
        running = Pebble(f"https://{seen_as}:{port}/dir", folder / "roots.pem",
                         f"https://{listen}:{management}", log)
        (folder / "roots.pem").write_text(listener_root.read_text())  # to fetch the issuing root
        (folder / "roots.pem").write_text(listener_root.read_text() + running.issuing_root())
        yield running
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
