"""Orchestration: launch, status, urls, delete. Takes a provider and a progress
reporter; prints nothing and never exits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from vmbinder import cloudinit, errors, https, launchdoc, readiness, scope, urls
from vmbinder.providers.base import Ledger, Provider, Removed, Resolved, Server, find_owned
from vmbinder.spec import ACME, LaunchSpec

log = logging.getLogger(__name__)

# Phases of a launch, in order; every progress event is tagged with one.
RESOLVE, CREATE, BOOT, ENVIRONMENT, READY, ROLLBACK = (
    "resolve", "create", "boot", "environment", "ready", "rollback")
PHASES = (RESOLVE, CREATE, BOOT, ENVIRONMENT, READY)

#: The longest public address a server can get (IPv6, written out in full).
LONGEST_ADDRESS = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


class Reporter(Protocol):
    def phase(self, phase: str, detail: str = "") -> None: ...


class NullReporter:
    def phase(self, phase: str, detail: str = "") -> None:
        pass


@dataclass(frozen=True)
class Access:
    """The URLs to print for a server, and the interfaces left out with why."""

    base: str | None
    urls: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    open_url: str | None = None


@dataclass(frozen=True)
class Launched:
    server: Server
    resolved: Resolved | None
    access: Access
    ready: bool

    @property
    def outcome(self) -> https.Outcome | None:
        """The certificate the server settled on (None before it settled)."""
        return outcome(self.server)

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.resolved.warnings if self.resolved else ()


def dry_run(spec: LaunchSpec) -> dict:
    """Everything a launch would send, created nowhere."""
    user_data = cloudinit.render(spec)
    doc = launchdoc.request(spec)
    del doc["token"], doc["public_ip"]  # made at launch time
    return {
        **doc,
        "user_data": user_data,
        "user_data_b64_bytes": cloudinit.b64_size(user_data),
    }


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


def rollback(ledger: Ledger, reporter: Reporter) -> list[tuple[str, str, str, str]]:
    """Remove what this attempt created, newest first. Returns the leftovers as
    (kind, id, error, command to remove it)."""
    leftovers = []
    for item in reversed(ledger.items):
        reporter.phase(ROLLBACK, f"removing {item.kind} {item.name}")
        try:
            item.remove()
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            log.warning("could not remove %s %s: %s", item.kind, item.id, exc)
            leftovers.append((item.kind, item.id, str(exc), item.command))
    ledger.items.clear()
    return leftovers


class _Watch:
    """A launch's wait: the guest's phase and certificate outcome from the
    console, then Jupyter's own answer through the URL, checked as trust() says."""

    def __init__(self, provider: Provider, server: Server, extra_roots: str | None):
        self.provider, self.server, self.extra_roots = provider, server, extra_roots
        self.found: https.Outcome | None = None
        self.context = None
        self.trusted = False

    def console(self) -> str:
        text = self.provider.console_log(self.server, lines=200)
        self.found = https.last_outcome(text) or self.found
        return text

    def certificate(self) -> tuple[bool, str]:
        if self.found is None:
            return False, "waiting for the certificate"
        if not self.trusted:
            self.server = record_outcome(self.provider, self.server, self.found)
            try:
                self.context = trust(self.server, self.extra_roots)
            except TrustNotYet as exc:
                return False, str(exc)
            self.trusted = True
        return True, f"certificate from {https.issuer_label(self.found.issuer)}"

    def answers(self) -> tuple[bool, str]:
        url = urls.url_for(access(self.server).base, "api/status", self.server.meta("token"))
        return readiness.http_probe(url, context=self.context, expect_key="started")()

    def probes(self) -> list[readiness.Probe]:
        return [readiness.console_probe(self.console), self.certificate, self.answers]

    def record_interfaces(self) -> Server:
        """Ask the guest which interfaces answered, and which record version a DOI
        source was fetched at, and keep both on the server, so `url` and `status`
        print only those interfaces and the record, from any machine."""
        server = self.server
        status = readiness.fetch_json(
            urls.url_for(access(server).base, "vmbinder/status.json", server.meta("token")),
            context=self.context)
        found = [k for k in status.get("interfaces") or [] if k in urls.BY_KEY]
        values = {"interfaces": ",".join(found)} if found else {}
        record = status.get("record")
        if isinstance(record, str) and record.isprintable() and not server.meta("record"):
            values["record"] = record[:self.provider.metadata_limits.value_max]
        return self.provider.set_metadata(server, values) if values else server


def wait_ready(provider: Provider, server: Server, reporter: Reporter, *, timeout: float,
               clock: readiness.Clock = readiness.Clock(), extra_roots: str | None = None) -> Server:
    """Wait until the server's environment answers; record its certificate's outcome
    and which interfaces it serves. extra_roots: a private ACME CA's (PEM)."""
    watch = _Watch(provider, server, extra_roots)
    readiness.wait_until(
        watch.probes(), timeout=timeout, clock=clock,
        on_progress=lambda detail: reporter.phase(ENVIRONMENT, detail),
    )
    server = watch.record_interfaces()
    reporter.phase(READY, "the environment answers")
    return server


def launch(
    provider: Provider,
    spec: LaunchSpec,
    reporter: Reporter | None = None,
    *,
    wait: bool = True,
    active_timeout: float = 600,
    ready_timeout: float = 1800,
    keep_on_failure: bool = False,
    clock: readiness.Clock = readiness.Clock(),
) -> Launched:
    """Create the server and (unless wait is False) wait for the environment.

    On any failure or interrupt, everything this attempt created is removed
    (unless keep_on_failure), and the error says so or names the leftovers."""
    reporter = reporter or NullReporter()
    # User-data Nova would refuse is refused before the cloud is asked anything:
    # rendered with the longest address there is, it is as big as it can get.
    cloudinit.render(spec, LONGEST_ADDRESS)
    ledger = Ledger()
    try:
        reporter.phase(RESOLVE, f"finding image, flavor and networks on {provider.kind}")
        resolved = provider.prepare(spec, ledger)
        for warning in resolved.warnings:
            reporter.phase(RESOLVE, f"warning: {warning}")
        user_data = cloudinit.render(spec, resolved.public_ip)
        reporter.phase(CREATE, f"creating server {spec.name} ({resolved.flavor_name}, {resolved.image_name})")
        server = provider.create(spec, resolved, user_data, ledger)
        reporter.phase(BOOT, f"waiting for {spec.name} to become ACTIVE")
        server = provider.wait(server, resolved, active_timeout, ledger)
        if server.meta("user-data-via"):
            reporter.phase(BOOT, _user_data_via(spec, server.meta("user-data-via")))
        if wait:
            reporter.phase(ENVIRONMENT, "building the environment")
            server = wait_ready(provider, server, reporter, timeout=ready_timeout, clock=clock,
                                extra_roots=spec.acme.ca_root)
    except BaseException as exc:
        if keep_on_failure and not isinstance(exc, KeyboardInterrupt) and ledger.items:
            kept = ", ".join(f"{i.kind} {i.name}" for i in ledger.items)
            if isinstance(exc, errors.VmbinderError):
                exc.hint = f"{exc.hint or ''}\nkept for inspection: {kept}".strip()
            raise
        roll_back_or_report(ledger, reporter, exc)
        raise
    return Launched(server=server, resolved=resolved, access=access(server), ready=wait)


def _user_data_via(spec: LaunchSpec, via: str) -> str:
    """The progress line saying which way the server's user-data went."""
    line = f"{spec.name} reads its user-data from the {via.replace('-', ' ')}"
    if spec.cloud.config_drive == "auto" and via != "config-drive":
        line = f"the cloud refused a config drive: {line}"
    return line


def roll_back_or_report(ledger: Ledger, reporter: Reporter, exc: BaseException,
                        what: str = "launch") -> None:
    """After `what` failed with exc: remove what the ledger holds, then say so in
    the error (or raise CleanupFailed naming each leftover, or Interrupted)."""
    made = [f"{i.kind} {i.name}" for i in ledger.items]
    leftovers = rollback(ledger, reporter)
    if leftovers:
        lines = [f"  {kind} {id_}: {err}\n    remove it with: {cmd}" for kind, id_, err, cmd in leftovers]
        raise errors.CleanupFailed(
            f"the {what} failed ({_describe(exc)}) and cleaning up left these behind:\n"
            + "\n".join(lines),
            "run the commands above (with the same OS_CLOUD) to remove them",
            details={"leftovers": leftovers},
        ) from exc
    cleaned = f"removed what it created: {', '.join(made)}" if made else "nothing had been created"
    if isinstance(exc, KeyboardInterrupt):
        raise errors.Interrupted(f"{what} interrupted; {cleaned}") from exc
    if isinstance(exc, errors.VmbinderError):
        exc.hint = f"{exc.hint}\n{cleaned}" if exc.hint else cleaned
    elif isinstance(exc, Exception):
        raise errors.VmbinderError(f"{what} failed: {_describe(exc)}; {cleaned}") from exc


def _describe(exc: BaseException) -> str:
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc) or type(exc).__name__


def delete(provider: Provider, names: list[str], reporter: Reporter | None = None, *,
           force: bool = False) -> list[Removed]:
    """Delete each named server and its floating IP. Every name is checked first:
    an unknown one, or (unless force) a server another user launched (see
    scope), is refused before anything is deleted."""
    reporter = reporter or NullReporter()
    found = provider.list_owned()
    servers = [find_owned(found, name) for name in names]
    if not force:
        scope.refuse_others(provider, servers, "servers",
                            "vmbinder delete --force " + " ".join(names))
    removed: list[Removed] = []
    for server in servers:
        reporter.phase("delete", f"deleting {server.name}")
        removed += provider.delete(server)
    return removed
