"""The HTTPS plan (which names and issuers a server tries) and how vmbinder
trusts what it got: real certificates made here, real TLS on loopback."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmbinder import https, readiness
from vmbinder.providers.base import META, Server


def C(host, issuer, profile=None):
    return https.Candidate(host, issuer, profile)


@pytest.mark.parametrize("tls, hostname, ip, kwargs, expected", [
    # The address itself first (its own rate-limit bucket), then wildcard names, then the own CA.
    ("acme", None, "203.0.113.5", {}, [
        C("203.0.113.5", "acme", "shortlived"), C("203-0-113-5.sslip.io", "acme"),
        C("203-0-113-5.nip.io", "acme"), C("203.0.113.5", "internal")]),
    ("acme", None, "203.0.113.5", {"wildcard_dns": ()}, [
        C("203.0.113.5", "acme", "shortlived"), C("203.0.113.5", "internal")]),
    ("acme", None, "203.0.113.5", {"wildcard_dns": ("nip.io",)}, [
        C("203.0.113.5", "acme", "shortlived"), C("203-0-113-5.nip.io", "acme"),
        C("203.0.113.5", "internal")]),
    # A private CA: no Let's Encrypt profile.
    ("acme", None, "10.0.0.5", {"acme_ca": "https://ca.example.org/dir", "wildcard_dns": ()}, [
        C("10.0.0.5", "acme"), C("10.0.0.5", "internal")]),
    # nip.io has no IPv6 names.
    ("acme", None, "2001:db8::1", {}, [
        C("2001:db8::1", "acme", "shortlived"), C("2001-db8--1.sslip.io", "acme"),
        C("2001:db8::1", "internal")]),
    ("acme", "nb.example.org", "203.0.113.5", {}, [
        C("nb.example.org", "acme"), C("nb.example.org", "internal")]),
    ("internal", None, "203.0.113.5", {}, [C("203.0.113.5", "internal")]),
    ("internal", "localhost", "127.0.0.1", {}, [C("localhost", "internal")]),
    ("off", None, "203.0.113.5", {}, []),
])
def test_the_plan(tls, hostname, ip, kwargs, expected):
    assert https.candidates(tls, hostname, ip, **kwargs) == expected


@pytest.mark.parametrize("name, address", [
    ("203-0-113-5.sslip.io", "203.0.113.5"),
    ("203-0-113-5.nip.io", "203.0.113.5"),
    ("2001-db8--1.sslip.io", "2001:db8::1"),
    ("nb.example.org", None),
    ("x.203-0-113-5.sslip.io", None),
    ("999-0-0-1.sslip.io", None),
    ("203.0.113.5", None),
    (None, None),
])
def test_a_wildcard_name_stands_for_its_address(name, address):
    assert https.address_in_name(name) == address
    if address:
        assert https.wildcard_name(address, name.split(".", 1)[1]) == name


def test_the_outcome_line_and_what_a_server_records_of_it():
    console = ("boot\nVMBINDER-TLS {broken\n"
               'VMBINDER-TLS {"site": "203-0-113-5.sslip.io", "issuer": "acme", "root": null, "failed": '
               '[{"host": "203.0.113.5", "issuer": "acme", "cause": "rate limited", "detail": "429"}]}\n'
               'VMBINDER-PHASE {"phase": "docker", "status": "started"}\n')
    found = https.last_outcome(console)
    assert found == https.Outcome("203-0-113-5.sslip.io", "acme",
                                  (https.Failure("203.0.113.5", "acme", "rate limited", "429"),))
    meta = found.metadata()
    assert meta == {"issuer": "acme", "site": "203-0-113-5.sslip.io", "tls-root": "",
                    "tls-failed": "203.0.113.5 (acme): rate limited"}
    back = https.recorded_outcome(meta.get)
    assert (back.site, back.issuer, back.root, [(f.host, f.cause) for f in back.failed]) == (
        "203-0-113-5.sslip.io", "acme", None, [("203.0.113.5", "rate limited")])
    plain = https.recorded_outcome(https.Outcome(None, "off").metadata().get)
    assert plain.as_dict() == {"site": None, "issuer": "off", "root_sha256": None, "failed": []}
    assert https.last_outcome("no report yet\n") is None
    assert https.recorded_outcome({}.get) is None


def test_a_long_record_is_cut_to_the_clouds_limit():
    failed = tuple(https.Failure(f"host-{i}.example.org", "acme", "refused by the CA") for i in range(9))
    meta = https.Outcome("203.0.113.5", "internal", failed, root="AB:" * 31 + "CD").metadata()
    assert all(len(v) <= 255 for v in meta.values()) and meta["tls-failed"].endswith("...")


def test_describe_names_the_issuer_and_the_root():
    assert https.describe(None) == "not known yet (the server is still getting one)"
    assert https.describe(https.Outcome("203.0.113.5", "acme")) == "Let's Encrypt for 203.0.113.5"
    assert https.describe(https.Outcome("h", "acme"), "https://ca.example/dir") == \
        "the ACME CA https://ca.example/dir for h"
    assert https.describe(https.Outcome("h", "internal", root="AB:CD")) == \
        "the server's own CA for h; its root's SHA-256 fingerprint is AB:CD"
    assert https.describe(https.Outcome(None, "off")) == "none (plain HTTP)"


# -- trust, for real ---------------------------------------------------------------


def _cert(subject, issuer_cert=None, issuer_key=None, *, ca=False, sans=()):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_cert.subject if issuer_cert else
                            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(s)) if https.is_ip(s) else x509.DNSName(s)
             for s in sans]), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def _pem(cert) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Answer(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 200 and the body answer(path, headers) gives."""

    def answer(self, path: str, headers) -> bytes:
        return b"{}"

    def do_GET(self):
        body = self.answer(self.path, self.headers)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(handler, tmp_path=None, leaf=None, key=None):
    """handler on 127.0.0.1 (over TLS with the leaf certificate and key when given):
    yields the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if leaf is not None:
        (tmp_path / "leaf.pem").write_text(_pem(leaf))
        (tmp_path / "key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()


@pytest.fixture
def own_ca_server(tmp_path):
    """An HTTPS server on 127.0.0.1 with a certificate from a fresh root, which it also
    serves at /vmbinder/root.pem, as a guest with its own CA does."""
    root, root_key = _cert("own root", ca=True)
    leaf, leaf_key = _cert("127.0.0.1", root, root_key, sans=("127.0.0.1",))

    class Handler(Answer):
        root_pem = _pem(root)

        def answer(self, path, headers):
            return (Handler.root_pem if path == "/vmbinder/root.pem" else '{"started": "x"}').encode()

    with serving(Handler, tmp_path, leaf, leaf_key) as port:
        yield port, root, Handler


def _server(port, root_fp):
    meta = {META + "tls": "acme", META + "issuer": "internal", META + "site": "127.0.0.1",
            META + "tls-root": root_fp, META + "https-port": str(port), META + "token": "t"}
    return Server("id", "demo", "active", "ACTIVE", "127.0.0.1", meta)


def test_the_own_ca_is_trusted_only_when_its_root_matches_the_console(own_ca_server):
    from vmbinder import errors, lifecycle

    port, root, handler = own_ca_server
    good = https.fingerprint(root.public_bytes(serialization.Encoding.DER))
    url = f"https://127.0.0.1:{port}/api/status"
    # Unpinned, the certificate is refused, as a browser would warn.
    assert readiness.fetch(url, context=https.public_context())[0] is None
    context = lifecycle.trust(_server(port, good))
    assert readiness.http_probe(url, context=context, expect_key="started")() == (True, "HTTP 200")
    # Another root, published or served, is refused with exit 8.
    with pytest.raises(errors.UntrustedServer) as info:
        lifecycle.trust(_server(port, "00:" * 31 + "00"))
    assert info.value.exit_code == 8 and "intercepting" in info.value.hint
    other, _ = _cert("another root", ca=True)
    handler.root_pem = _pem(other)
    with pytest.raises(errors.UntrustedServer):
        lifecycle.trust(_server(port, good))


def test_a_pinned_root_is_the_only_one_trusted(own_ca_server):
    port, root, _ = own_ca_server
    other, _ = _cert("another root", ca=True)
    context = https.pinned_context(_pem(other))
    assert readiness.fetch(f"https://127.0.0.1:{port}/", context=context)[0] is None
    assert readiness.fetch(f"https://127.0.0.1:{port}/", context=https.pinned_context(_pem(root)))[0] == 200


def test_a_wildcard_name_is_reached_at_its_address_and_checked_for_the_name(tmp_path):
    """No resolver: the name's address is in the name; the certificate must hold the name."""
    root, root_key = _cert("root", ca=True)
    leaf, leaf_key = _cert("n", root, root_key, sans=("127-0-0-1.sslip.io",))
    seen = []

    class Handler(Answer):
        def answer(self, path, headers):
            seen.append(headers["Host"])
            return b"{}"

    with serving(Handler, tmp_path, leaf, leaf_key) as port:
        pinned = https.pinned_context(_pem(root))
        assert readiness.fetch(f"https://127-0-0-1.sslip.io:{port}/x", context=pinned)[0] == 200
        assert seen == [f"127-0-0-1.sslip.io:{port}"]
        # The address itself is not a name the certificate holds.
        status, _, reason = readiness.fetch(f"https://127.0.0.1:{port}/x", context=pinned)
        assert status is None and "127.0.0.1" in reason


def test_jupyters_answer_is_told_from_an_empty_200():
    class Handler(Answer):
        body = b""

        def answer(self, path, headers):
            return Handler.body

    with serving(Handler) as port:
        probe = readiness.http_probe(f"http://127.0.0.1:{port}/api/status?token=t", expect_key="started")
        ok, detail = probe()
        assert not ok and "not Jupyter's answer" in detail
        Handler.body = b'{"started": "2026-12-04T00:00:00Z", "kernels": 0}'
        assert probe() == (True, "HTTP 200")
