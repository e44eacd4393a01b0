"""How a server gets its certificate, and how vmbinder trusts what it got.

The plan (`candidates`) is a list of (name, issuer) the guest tries in order,
each with a bounded wait (cloud-init/vmbinder_guest.py, step `tls`):

1. a certificate from an ACME CA (Let's Encrypt unless --acme-ca) for the
   public address itself: each IPv4 address is its own rate-limit bucket at
   Let's Encrypt, so no other user's launches can use it up;
2. the same for a name under each wildcard-DNS service (203-0-113-5.sslip.io,
   then 203-0-113-5.nip.io), whose allowances are shared by everyone;
3. the server's own CA (Caddy's internal issuer): the guest prints its root's
   SHA-256 fingerprint on the console, which only the cloud's API shows, and
   vmbinder trusts that root and no other for the server.

With --hostname the plan is that name from the ACME CA, then from the
server's own CA. The guest reports the outcome on the console
(OUTCOME_PREFIX); `Outcome` reads it back, with why each earlier try failed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import ssl
from dataclasses import dataclass

from vmbinder.guestcontract import console_reports

#: Let's Encrypt's production directory: the ACME CA unless --acme-ca names another.
LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
#: Wildcard-DNS services tried, in order, after the address itself (--wildcard-dns).
WILDCARD_DNS = ("sslip.io", "nip.io")
#: Services that also answer for IPv6 names (2001-db8--1.sslip.io).
IPV6_WILDCARD_DNS = ("sslip.io",)
#: Let's Encrypt issues certificates for IP addresses only under this profile (160 hours).
IP_PROFILE = "shortlived"
#: Seconds the guest waits for each ACME try before it takes the next.
ACME_WAIT = 120
#: Starts the console line on which the guest reports its certificate (twin in vmbinder_guest.py).
OUTCOME_PREFIX = "VMBINDER-TLS "
#: Where the guest's status service serves the root of its own CA (no token: it is public).
ROOT_PATH = "vmbinder/root.pem"

ACME, INTERNAL, OFF = "acme", "internal", "off"


@dataclass(frozen=True)
class Candidate:
    """One name and issuer to try."""

    host: str
    issuer: str
    #: The ACME profile to ask for (Let's Encrypt's IP certificates need one).
    profile: str | None = None

    def as_dict(self) -> dict:
        return {"host": self.host, "issuer": self.issuer, "profile": self.profile}


def is_ip(host: str | None) -> bool:
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def wildcard_name(ip: str, service: str) -> str:
    """`203.0.113.5` -> `203-0-113-5.sslip.io` (IPv6: `2001-db8--1.sslip.io`)."""
    label = str(ipaddress.ip_address(ip)).replace(".", "-").replace(":", "-")
    return f"{label}.{service}"


def address_in_name(host: str | None, services=WILDCARD_DNS) -> str | None:
    """The address a wildcard-DNS name stands for (what its DNS would answer), else None."""
    for service in services:
        label, dot, rest = (host or "").partition(".")
        if dot and rest == service:
            for text in (label.replace("-", "."), label.replace("-", ":")):
                if is_ip(text):
                    return str(ipaddress.ip_address(text))
    return None


def candidates(tls: str, hostname: str | None, public_ip: str | None, *,
               wildcard_dns=WILDCARD_DNS, acme_ca: str | None = None) -> list[Candidate]:
    """The names and issuers a server tries, in order ([] for plain HTTP)."""
    if tls == OFF:
        return []
    if hostname:
        hosts = [hostname]
    elif public_ip:
        public_ip = str(ipaddress.ip_address(public_ip))
        services = wildcard_dns if ipaddress.ip_address(public_ip).version == 4 else [
            s for s in wildcard_dns if s in IPV6_WILDCARD_DNS]
        hosts = [public_ip, *(wildcard_name(public_ip, s) for s in services)]
    else:
        hosts = ["localhost"]  # a dry run: no address yet
    own_ca = Candidate(hosts[0], INTERNAL)
    if tls == INTERNAL:
        return [own_ca]
    profile = IP_PROFILE if acme_ca is None else None
    return [*(Candidate(h, ACME, profile if is_ip(h) else None) for h in hosts), own_ca]


def issuer_label(issuer: str | None, acme_ca: str | None = None) -> str:
    if issuer == ACME:
        return "Let's Encrypt" if not acme_ca else f"the ACME CA {acme_ca}"
    if issuer == INTERNAL:
        return "the server's own CA"
    if issuer == OFF:
        return "none (plain HTTP)"
    return "not known yet"


def describe(found: Outcome | None, acme_ca: str | None = None) -> str:
    """One line for people: which issuer and name, and the root to compare with a
    browser's warning when it is the server's own CA."""
    if found is None:
        return "not known yet (the server is still getting one)"
    if found.issuer == OFF:
        return issuer_label(OFF)
    line = f"{issuer_label(found.issuer, acme_ca)} for {found.site}"
    if found.root:
        line += f"; its root's SHA-256 fingerprint is {found.root}"
    return line


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate, as browsers show it (AB:CD:...)."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


@dataclass(frozen=True)
class Failure:
    host: str
    issuer: str
    #: A short cause: rate limited, port 80 unreachable, CA unreachable, refused by the CA, ...
    cause: str
    #: What the CA (or Caddy) said, shortened.
    detail: str = ""

    def describe(self) -> str:
        return f"{self.host} ({self.issuer}): {self.cause}"


@dataclass(frozen=True)
class Outcome:
    """What the guest settled on: the name it serves, the issuer, and why the
    tries before it failed."""

    site: str | None
    issuer: str
    failed: tuple[Failure, ...] = ()
    #: The SHA-256 fingerprint of the server's own CA root (issuer internal).
    root: str | None = None

    @classmethod
    def from_json(cls, doc: dict) -> Outcome:
        failed = tuple(Failure(str(f.get("host")), str(f.get("issuer")), str(f.get("cause")),
                               str(f.get("detail") or "")) for f in doc.get("failed") or []
                       if isinstance(f, dict))
        return cls(site=doc.get("site"), issuer=str(doc.get("issuer")), failed=failed,
                   root=doc.get("root"))

    def failed_summary(self) -> str:
        return "; ".join(f.describe() for f in self.failed)

    def as_dict(self) -> dict:
        return {"site": self.site, "issuer": self.issuer, "root_sha256": self.root,
                "failed": [{"host": f.host, "issuer": f.issuer, "cause": f.cause,
                            **({"detail": f.detail} if f.detail else {})} for f in self.failed]}

    def metadata(self, limit: int = 255) -> dict[str, str]:
        """What a server records of it (vmbinder:* keys without the prefix, OUTCOME_KEYS)."""
        values = dict(zip(OUTCOME_KEYS, (self.issuer, self.site or "", self.root or "",
                                         self.failed_summary()), strict=True))
        return {k: v if len(v) <= limit else v[:limit - 3] + "..." for k, v in values.items()}


#: The keys of the server's metadata that record an Outcome.
OUTCOME_KEYS = ("issuer", "site", "tls-root", "tls-failed")


def last_outcome(console: str, address: str | None = None) -> Outcome | None:
    """The newest certificate report in a console tail (the guest repeats it); with
    address, the newest for that address (one for another address, or a wildcard
    DNS name of one, is from before the server's floating IP was replaced)."""
    found = next((d for d in console_reports(console, OUTCOME_PREFIX)
                  if d.get("issuer") and not (address and for_another(d.get("site"), address))), None)
    return Outcome.from_json(found) if found else None


def for_another(site: str | None, address: str) -> bool:
    """Whether site (a certificate's name) stands for an address other than address."""
    named = str(ipaddress.ip_address(site)) if is_ip(site) else address_in_name(site)
    return named is not None and is_ip(address) and named != str(ipaddress.ip_address(address))


FAILURE_RE = re.compile(r"^(.+) \((\w+)\): (.+)$")


def recorded_outcome(meta) -> Outcome | None:
    """The outcome a server recorded (meta: its vmbinder:* getter), or None."""
    issuer = meta("issuer")
    if not issuer:
        return None
    failed = tuple(Failure(*m.groups()) for m in (
        FAILURE_RE.match(part) for part in (meta("tls-failed") or "").split("; ")) if m)
    return Outcome(site=meta("site") or None, issuer=issuer, failed=failed,
                   root=meta("tls-root") or None)


# -- trust -------------------------------------------------------------------------


def public_context(extra_roots: str | None = None) -> ssl.SSLContext:
    """The system's roots, and a private ACME CA's (--acme-ca-root) when given."""
    context = ssl.create_default_context()
    if extra_roots:
        context.load_verify_locations(cadata=extra_roots)
    return context


def pinned_context(root_pem: str) -> ssl.SSLContext:
    """Trust this root, and only it (the server's own CA)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=root_pem)
    return context


def unverified_context() -> ssl.SSLContext:
    """For fetching the public root whose fingerprint is then checked; never for the token."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def check_root(pem: str, expected: str) -> str:
    """pem when it is one certificate whose fingerprint is expected, else ValueError."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError as exc:
        raise ValueError(f"the server's root is not a PEM certificate ({exc})") from None
    got = fingerprint(der)
    if got != expected:
        raise ValueError(f"the server's root has fingerprint {got}, but its console "
                         f"published {expected}")
    return pem
