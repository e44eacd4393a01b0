"""Orchestration: launch, status, urls, delete. Takes a provider and a progress
reporter; prints nothing and never exits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from vmbinder import cloudinit, errors, launchdoc, readiness, urls
from vmbinder.providers.base import Ledger, Provider, Removed, Resolved, Server
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


def access(server: Server, detected: frozenset[str] | None = None, *, with_token: bool = True) -> Access:
    """URLs from what the cloud recorded: address, host name, TLS mode, token, open path.

    with_token=False leaves the token out, for output that people paste into
    bug reports (status, list); `launch` and `url` print it, as is their job."""
    tls = server.meta("tls") or ACME
    port = server.meta("http-port" if tls == "off" else "https-port")
    base = urls.base_url(server.address, server.meta("hostname"), tls, port)
    if base is None:
        return Access(base=None)
    token = server.meta("token") if with_token else None
    if detected is None and server.meta("interfaces"):
        detected = frozenset(server.meta("interfaces").split(","))
    shown = urls.available(detected)
    links = {i.key: urls.url_for(base, i.path, token) for i in shown}
    absent = {i.key: i.absent_reason for i in urls.INTERFACES if i not in shown}
    open_path = server.meta("open")
    open_url = urls.url_for(base, open_path, token) if open_path else None
    return Access(base=base, urls=links, absent=absent, open_url=open_url)


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


def _record_interfaces(provider: Provider, server: Server) -> Server:
    """Ask the guest which interfaces answered and keep the answer on the server,
    so `url` and `status` print only those, from any machine."""
    acc = access(server)
    status = readiness.fetch_json(
        urls.url_for(acc.base, "vmbinder/status.json", server.meta("token")),
        verify=server.meta("tls") == ACME)
    found = [k for k in status.get("interfaces") or [] if k in urls.BY_KEY]
    if not found:
        return server
    return provider.set_metadata(server, {"interfaces": ",".join(found)})


def _ready_probes(provider: Provider, server: Server) -> list[readiness.Probe]:
    acc = access(server)
    probes = [readiness.console_probe(lambda: provider.console_log(server, lines=200))]
    if acc.base:
        status_url = urls.url_for(acc.base, "api/status", server.meta("token"))
        probes.append(readiness.http_probe(status_url, verify=server.meta("tls") == ACME))
    return probes


def wait_ready(provider: Provider, server: Server, reporter: Reporter, *, timeout: float,
               clock: readiness.Clock = readiness.Clock()) -> Server:
    """Wait until the server's environment answers; record which interfaces it serves."""
    readiness.wait_until(
        _ready_probes(provider, server), timeout=timeout, clock=clock,
        on_progress=lambda detail: reporter.phase(ENVIRONMENT, detail),
    )
    server = _record_interfaces(provider, server)
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
            server = wait_ready(provider, server, reporter, timeout=ready_timeout, clock=clock)
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


def delete(provider: Provider, names: list[str], reporter: Reporter | None = None) -> list[Removed]:
    """Delete each named server and its floating IP; all names are checked first."""
    reporter = reporter or NullReporter()
    servers = [provider.get(name) for name in names]
    removed: list[Removed] = []
    for server in servers:
        reporter.phase("delete", f"deleting {server.name}")
        removed += provider.delete(server)
    return removed
