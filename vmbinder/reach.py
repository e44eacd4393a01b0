"""How to reach a server from here: its URLs from what the cloud recorded, the
certificate its guest settled on, and how to check it (its own CA's root,
fetched and checked against the fingerprint its console published)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from vmbinder import errors, https, readiness, urls
from vmbinder.guestcontract import JUPYTER_ADDRESS, STATUS_ADDRESS
from vmbinder.providers.base import Provider, Server
from vmbinder.spec import ACME, EXPOSE_SSH


@dataclass(frozen=True)
class Access:
    """The URLs to print for a server, and the interfaces left out with why."""

    base: str | None
    urls: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    open_url: str | None = None
    #: Launched with --expose ssh: nothing is served publicly, `vmbinder tunnel` reaches it.
    ssh_only: bool = False


def ssh_only(server: Server) -> bool:
    """Was the server launched with --expose ssh (port 22 only, no public URL)?"""
    return server.meta("expose") == EXPOSE_SSH


def tunnel_hint(server: Server) -> str:
    return (f"{server.name} was launched with --expose ssh: only SSH reaches it; "
            f"vmbinder tunnel {server.name} forwards it to this machine and prints its URLs")


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
    bug reports (status, list); `launch` and `url` print it, as is their job.
    A server launched with --expose ssh has none (base None, ssh_only)."""
    if ssh_only(server):
        return Access(base=None, ssh_only=True)
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
    if server.meta("issuer") or server.state != "active" or ssh_only(server):
        return server
    found = https.last_outcome(provider.console_log(server), server.address)
    return record_outcome(provider, server, found) if found else server


def trust(server: Server, extra_roots: str | None = None, *, timeout: float = 10.0):
    """How to check the server's certificate: None over plain HTTP; its own CA's
    root, fetched and checked against the fingerprint its console published; else
    the system's roots (and a private ACME CA's). None also when the own CA's root
    cannot be fetched yet (TrustNotYet)."""
    if (server.meta("tls") or ACME) == https.OFF or ssh_only(server):
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
    if acc.ssh_only:
        raise errors.BadRequest(f"{server.name} has no public URL", tunnel_hint(server))
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


def guest_get(server: Server, path: str, query: str = "", *, context=None, through=None,
              timeout: float = 10.0, limit: int = 1 << 20) -> tuple[int | None, bytes, str]:
    """GET path (the token added) from the server's own services, as readiness.fetch
    answers: over its URL, checked with context (see trust); or, through an SSH
    connection (remote.Through, for --expose ssh), from the service on its
    loopback that the guest's proxy would route path to: /vmbinder/* to its
    status service, the rest to Jupyter."""
    token = server.meta("token")
    if through is None:
        return readiness.fetch(urls.url_for(access(server).base, path, token, query),
                               context=context, timeout=timeout, limit=limit)
    parts = urlsplit(urls.url_for("http://server/", path, token, query))
    address = STATUS_ADDRESS if path.lstrip("/").startswith("vmbinder/") else JUPYTER_ADDRESS
    return through.get(address, f"{parts.path}?{parts.query}" if parts.query else parts.path,
                       timeout=timeout, limit=limit)


def guest_json(server: Server, path: str, **how) -> dict:
    """A JSON document of the server's own services (guest_get); {} when it cannot be had."""
    status, body, _ = guest_get(server, path, **how)
    return readiness.json_object(body) if status == 200 else {}
