"""How to reach a server from here: its URLs from what the cloud recorded, the
certificate its guest settled on, and how to check it (its own CA's root,
fetched and checked against the fingerprint its console published)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vmbinder import errors, https, readiness, urls
from vmbinder.providers.base import Provider, Server
from vmbinder.spec import ACME


@dataclass(frozen=True)
class Access:
    """The URLs to print for a server, and the interfaces left out with why."""

    base: str | None
    urls: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    open_url: str | None = None


def site_host(server: Server) -> str | None:
    """The name the server serves: the one its guest settled on, else the first it
    tries (--hostname, else its address)."""
    return server.meta("site") or server.meta("hostname") or server.address


def opens(server: Server) -> tuple[str | None, str | None]:
    """What the server opens, as recorded: a file of the repository, or a URL path.
    Servers launched before the two were told apart recorded a URL path as "open"."""
    return server.meta("open-file"), server.meta("urlpath") or server.meta("open")


def access(server: Server, detected: frozenset[str] | None = None, *, with_token: bool = True) -> Access:
    """URLs from what the cloud recorded: address or settled name, TLS mode, token, open path.

    with_token=False leaves the token out, for output that people paste into
    bug reports (status, list); `launch` and `url` print it, as is their job."""
    tls = server.meta("tls") or ACME
    port = server.meta("http-port" if tls == "off" else "https-port")
    base = urls.base_url(site_host(server), tls, port)
    if base is None:
        return Access(base=None)
    token = server.meta("token") if with_token else None
    if detected is None and server.meta("interfaces"):
        detected = frozenset(server.meta("interfaces").split(","))
    shown = urls.available(detected)
    links = {i.key: urls.url_for(base, i.path, token) for i in shown}
    absent = {i.key: i.absent_reason for i in urls.INTERFACES if i not in shown}
    file, urlpath = opens(server)
    open_url = urls.open_url(base, token, file=file, urlpath=urlpath)
    return Access(base=base, urls=links, absent=absent, open_url=open_url)


def outcome(server: Server) -> https.Outcome | None:
    """The certificate the server settled on, as recorded (None: not known yet)."""
    return https.recorded_outcome(server.meta)


def record_outcome(provider: Provider, server: Server, found: https.Outcome) -> Server:
    """Keep what the guest settled on with the server, so every command, from any
    machine, prints the URL it serves."""
    if outcome(server) == found:
        return server
    return provider.set_metadata(server, found.metadata(provider.metadata_limits.value_max))


def settle(provider: Provider, server: Server) -> Server:
    """The server, with its certificate's outcome recorded once its console shows
    it (for `status` and `url` after `launch --no-wait`)."""
    if server.meta("issuer") or server.state != "active":
        return server
    found = https.last_outcome(provider.console_log(server))
    return record_outcome(provider, server, found) if found else server


def trust(server: Server, extra_roots: str | None = None, *, timeout: float = 10.0):
    """How to check the server's certificate: None over plain HTTP; its own CA's
    root, fetched and checked against the fingerprint its console published; else
    the system's roots (and a private ACME CA's). None also when the own CA's root
    cannot be fetched yet (TrustNotYet)."""
    if (server.meta("tls") or ACME) == https.OFF:
        return None
    if server.meta("issuer") != https.INTERNAL:
        return https.public_context(extra_roots)
    expected = server.meta("tls-root")
    base = access(server, with_token=False).base
    status, body, reason = readiness.fetch(base + https.ROOT_PATH,
                                           context=https.unverified_context(), timeout=timeout)
    if status != 200 or not expected:
        raise TrustNotYet(f"the server's own CA root is not available yet ({status or reason})")
    try:
        return https.pinned_context(https.check_root(body.decode(errors="replace"), expected))
    except ValueError as exc:
        raise errors.UntrustedServer(
            f"{server.name}: {exc}",
            "something between this machine and the server may be intercepting the "
            "connection; do not use the URL, and check with the cloud's console "
            f"(vmbinder status {server.name})") from None


class TrustNotYet(Exception):
    """The server's own CA root could not be fetched yet."""


def url(server: Server, ui: str | None, detected: frozenset[str] | None = None) -> str:
    """One URL: the open path when no --ui is asked for, else that interface's."""
    acc = access(server, detected)
    if acc.base is None:
        raise errors.BadRequest(
            f"{server.name} has no public address yet (status {server.state})",
            f"wait for it: vmbinder status {server.name}",
        )
    if ui is None:
        return acc.open_url or acc.urls["lab"]
    if ui not in acc.urls:
        iface = urls.BY_KEY[ui]
        raise errors.BadRequest(
            f"{iface.label} is not known to be served by {server.name}: {iface.absent_reason}",
            "use --ui tree or --ui lab",
        )
    return acc.urls[ui]
