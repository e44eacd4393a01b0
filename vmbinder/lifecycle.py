"""Orchestration: launch, status, urls, delete. Takes a provider and a progress
reporter; prints nothing and never exits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Protocol

from vmbinder import cloudinit, errors, https, launchdoc, readiness, scope, urls
from vmbinder.providers.base import ACTIVE, Ledger, Provider, Removed, Resolved, Server

# How to reach a server, used by every command through this module.
from vmbinder.reach import (  # noqa: F401
    Access,
    TrustNotYet,
    access,
    guest_get,
    guest_json,
    opens,
    outcome,
    record_outcome,
    settle,
    site_host,
    ssh_only,
    trust,
    url,
)
from vmbinder.rollback import roll_back_or_report
from vmbinder.spec import LaunchSpec

log = logging.getLogger(__name__)

# Phases of a launch, in order; every progress event is tagged with one.
RESOLVE, CREATE, BOOT, ENVIRONMENT, READY = "resolve", "create", "boot", "environment", "ready"
PHASES = (RESOLVE, CREATE, BOOT, ENVIRONMENT, READY)

#: The longest public address a server can get (IPv6, written out in full).
LONGEST_ADDRESS = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


class Reporter(Protocol):
    def phase(self, phase: str, detail: str = "") -> None: ...


class NullReporter:
    def phase(self, phase: str, detail: str = "") -> None:
        pass


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
    """Everything a launch would send, created nowhere; a git token shown as <token>
    (the user-data with the real one is rendered too, so its size is checked)."""
    if spec.git_credential is not None:
        cloudinit.render(spec)
        spec = replace(spec, git_credential=spec.git_credential.shown())
    user_data = cloudinit.render(spec)
    doc = launchdoc.request(spec)
    del doc["token"], doc["public_ip"]  # made at launch time
    return {
        **doc,
        "user_data": user_data,
        "user_data_b64_bytes": cloudinit.b64_size(user_data),
    }


class _Watch:
    """A launch's wait: the guest's phase and certificate outcome from the
    console, then Jupyter's own answer through the URL, checked as trust() says.
    A server launched with --expose ssh asks for no certificate and serves no
    URL: Jupyter is asked through SSH, its host key checked against the console."""

    def __init__(self, provider: Provider, server: Server, extra_roots: str | None):
        self.provider, self.server, self.extra_roots = provider, server, extra_roots
        # A server started again has its certificate's outcome recorded already.
        self.found: https.Outcome | None = https.recorded_outcome(server.meta)
        self.context = None
        self.trusted = False
        self.log, self.log_offset, self.newest = None, 0, ""
        self.on_output = lambda line: None
        self.through = None
        if ssh_only(server):
            from vmbinder import remote

            self.through = remote.Through(provider, server)

    def close(self) -> None:
        if self.through is not None:
            self.through.close()

    def console(self) -> str:
        try:
            text = self.provider.console_log(self.server, lines=200)
        except errors.CloudError:
            self.still_running()
            raise
        self.found = https.last_outcome(text, self.server.address) or self.found
        return text

    def still_running(self) -> None:
        """A console the cloud cannot give: a server that was stopped, shelved or
        deleted during the wait is said to be so (the cloud's own error otherwise)."""
        name = self.server.name
        try:
            now = self.provider.get(self.server.id)
        except errors.BadRequest:
            raise errors.CloudError(f"{name} was deleted while vmbinder waited for its environment",
                                    "vmbinder list shows what is left") from None
        except errors.VmbinderError:
            return
        if now.state != ACTIVE:
            raise errors.CloudError(
                f"{name} is {now.state} now ({now.cloud_status}): it stopped running while "
                "vmbinder waited for its environment",
                f"why, and how to bring it back: vmbinder status {name}")

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
        try:
            answer = guest_get(self.server, "api/status", context=self.context,
                               through=self.through, timeout=5)
        except (errors.ConfigError, errors.UntrustedServer):
            raise  # no key to log in with, or a host key that is not the console's
        except errors.VmbinderError as exc:  # SSH does not answer yet
            return False, f"waiting for SSH: {exc.message}"
        return readiness.judge(*answer, expect_key="started")

    def build_output(self) -> tuple[bool, str]:
        """The guest's build log as it grows, once its certificate can be checked:
        the newest line is kept for the progress line, every line goes to
        on_output. Never holds the wait up: a log that cannot be read is skipped."""
        if self.found is None and self.through is None:
            return True, ""
        if self.log is None:
            from vmbinder import guestlog

            self.log = guestlog.Reader(self.provider, self.server, self.extra_roots,
                                       through=self.through)
        try:
            chunk = self.log.read(self.log_offset)
        except (errors.ConfigError, errors.UntrustedServer):
            raise  # through SSH: no key to log in with, or not the console's host key
        except Exception as exc:  # noqa: BLE001 - progress only; the probes below decide
            log.debug("could not read the build log: %s", exc)
            return True, ""
        if chunk is not None and chunk.text:
            self.log_offset = chunk.offset
            lines = [ln for ln in chunk.text.splitlines() if ln.strip()]
            for line in lines:
                self.on_output(line)
            self.newest = lines[-1] if lines else self.newest
        return True, ""

    def probes(self) -> list[readiness.Probe]:
        if self.through is not None:
            return [self.build_output, readiness.console_probe(self.console), self.answers]
        return [self.build_output, readiness.console_probe(self.console), self.certificate,
                self.answers]

    def record_interfaces(self) -> Server:
        """Ask the guest which interfaces answered, and which record version a DOI
        source was fetched at, and keep both on the server (record_status)."""
        status = guest_json(self.server, "vmbinder/status.json", context=self.context,
                            through=self.through)
        return record_status(self.provider, self.server, status)


def record_status(provider: Provider, server: Server, status: dict) -> Server:
    """Keep what the guest's status says once it is ready (the interfaces that
    answered, the record version a DOI source was fetched at) on the server, so
    `url` and `status` print only those interfaces and the record, from any machine."""
    found = [k for k in status.get("interfaces") or [] if k in urls.BY_KEY]
    values = {"interfaces": ",".join(found)} if found else {}
    record = status.get("record")
    if isinstance(record, str) and record.isprintable() and not server.meta("record"):
        values["record"] = record[:provider.metadata_limits.value_max]
    values = {k: v for k, v in values.items() if server.meta(k) != v}
    return provider.set_metadata(server, values) if values else server


#: What `status` shows of the guest's own report (its status.json).
GUEST_KEYS = ("phase", "status", "ready", "elapsed", "error", "commit")


def observe(provider: Provider, server: Server, extra_roots: str | None = None
            ) -> tuple[Server, dict | None]:
    """The server with its certificate's outcome recorded (settle), and what its
    guest reports now through the URL (phase, step status, elapsed seconds, the
    commit it built, the error of a failed step), or None when it does not answer
    yet. Once the guest is ready, what it found is recorded (record_status): by
    whichever command sees it first, after `launch --no-wait` too."""
    server = settle(provider, server)
    # Only a guest whose script has started is asked (its phase lines are on the
    # console): nothing is sent to an address where no guest answers yet.
    if server.state != "active" or readiness.last_phase(
            provider.console_log(server, lines=500)) is None:
        return server, None
    if ssh_only(server):
        from vmbinder import remote

        through = remote.Through(provider, server)
        try:
            status = guest_json(server, "vmbinder/status.json", through=through, timeout=10)
        except errors.VmbinderError as exc:
            log.info("%s does not answer over SSH: %s", server.name, exc.message)
            status = {}
        finally:
            through.close()
    elif access(server, with_token=False).base is None:
        return server, None
    else:
        try:
            context = trust(server, extra_roots, timeout=5)
        except TrustNotYet:
            return server, None
        status = guest_json(server, "vmbinder/status.json", context=context, timeout=5)
    if not status:
        return server, None
    if status.get("ready") and not server.meta("interfaces"):
        server = record_status(provider, server, status)
    return server, {k: status.get(k) for k in GUEST_KEYS}


def wait_ready(provider: Provider, server: Server, reporter: Reporter, *, timeout: float,
               clock: readiness.Clock = readiness.Clock(), extra_roots: str | None = None) -> Server:
    """Wait until the server's environment answers; record its certificate's outcome
    and which interfaces it serves. extra_roots: a private ACME CA's (PEM)."""
    watch = _Watch(provider, server, extra_roots)
    watch.on_output = getattr(reporter, "output", watch.on_output)

    def progress(detail: str) -> None:
        reporter.phase(ENVIRONMENT, f"{detail}: {watch.newest}" if watch.newest else detail)

    try:
        readiness.wait_until(watch.probes(), timeout=timeout, clock=clock, on_progress=progress)
        server = watch.record_interfaces()
    finally:
        watch.close()
    reporter.phase(READY, "the environment answers" + (" (through SSH)" if watch.through else ""))
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
    keep_failed_build: bool = False,
    clock: readiness.Clock = readiness.Clock(),
) -> Launched:
    """Create the server and (unless wait is False) wait for the environment.

    On any failure or interrupt, everything this attempt created is removed
    (unless keep_on_failure), and the error says so or names the leftovers.
    With keep_failed_build, a server that came up but whose environment failed
    to build or did not answer in time is kept, its failure recorded, so its
    logs can be read (cloud failures still roll back)."""
    reporter = reporter or NullReporter()
    # User-data Nova would refuse is refused before the cloud is asked anything:
    # rendered with the longest address there is, it is as big as it can get.
    cloudinit.render(spec, LONGEST_ADDRESS, credential=launchdoc.LONGEST_CREDENTIAL,
                     follow_address=True)
    ledger = Ledger()
    up = None  # the server once ACTIVE: from then on a failure is the guest's
    try:
        reporter.phase(RESOLVE, f"finding image, flavor and networks on {provider.kind}")
        resolved = provider.prepare(spec, ledger)
        for warning in resolved.warnings:
            reporter.phase(RESOLVE, f"warning: {warning}")
        user_data = cloudinit.render(spec, resolved.public_ip, volumes=resolved.volumes,
                                     credential=resolved.credential,
                                     follow_address=resolved.floating_ip_id is not None)
        reporter.phase(CREATE, f"creating server {spec.name} ({resolved.flavor_name}, {resolved.image_name})")
        server = provider.create(spec, resolved, user_data, ledger)
        reporter.phase(BOOT, f"waiting for {spec.name} to become ACTIVE")
        server = up = provider.wait(server, resolved, active_timeout, ledger)
        if server.meta("user-data-via"):
            reporter.phase(BOOT, _user_data_via(spec, server.meta("user-data-via")))
        if wait:
            reporter.phase(ENVIRONMENT, "building the environment")
            server = wait_ready(provider, server, reporter, timeout=ready_timeout, clock=clock,
                                extra_roots=spec.acme.ca_root)
    except BaseException as exc:
        if keep_failed_build and up is not None and isinstance(
                exc, (errors.BuildFailed, errors.ReadinessTimeout)):
            raise kept_failed(provider, up, exc) from None
        if keep_on_failure and not isinstance(exc, KeyboardInterrupt) and ledger.items:
            kept = ", ".join(f"{i.kind} {i.name}" for i in ledger.items)
            if isinstance(exc, errors.VmbinderError):
                exc.hint = f"{exc.hint or ''}\nkept for inspection: {kept}".strip()
            raise
        roll_back_or_report(ledger, reporter, exc)
        raise
    return Launched(server=server, resolved=resolved, access=access(server), ready=wait)


def kept_failed(provider: Provider, server: Server, exc: errors.VmbinderError) -> errors.VmbinderError:
    """The failure of a server kept after its build failed (or its environment
    did not answer in time): recorded on it (vmbinder:failed), for status and
    list, and the error's hint says how to read its logs and remove it."""
    what = "timeout" if isinstance(exc, errors.ReadinessTimeout) else "build"
    try:
        provider.set_metadata(server, {"failed": what})
    except Exception as err:  # noqa: BLE001 - the failure itself is what the user must see
        log.warning("could not record the failure on %s: %s", server.name, err)
    name = server.name
    exc.hint = "\n".join(filter(None, (
        exc.hint,
        f"the server {name} is kept so you can see what happened: vmbinder logs {name} "
        f"(the whole build log), vmbinder ssh {name}",
        f"remove it with: vmbinder delete {name} (launch --delete-on-failure removes a "
        "failed launch's server by itself)")))
    exc.details = {**(exc.details or {}), "kept": name}
    return exc


def _user_data_via(spec: LaunchSpec, via: str) -> str:
    """The progress line saying which way the server's user-data went."""
    line = f"{spec.name} reads its user-data from the {via.replace('-', ' ')}"
    if spec.cloud.config_drive == "auto" and via != "config-drive":
        line = f"the cloud refused a config drive: {line}"
    return line


def delete(provider: Provider, names: list[str], reporter: Reporter | None = None, *,
           force: bool = False) -> list[Removed]:
    """Delete each named server and its floating IP. Every name is checked first:
    an unknown one, or (unless force) a server another user launched (see
    scope), is refused before anything is deleted."""
    reporter = reporter or NullReporter()
    servers = scope.named(provider, names, force=force)
    removed: list[Removed] = []
    for server in servers:
        reporter.phase("delete", f"deleting {server.name}")
        removed += provider.delete(server)
    return removed
