"""`up`: every seat of a workshop file that is missing or failed, made.

It never makes a second one of a seat: a quota check first, the first seat
alone, then the rest with bounded parallelism, each seat its own result. With
fan-out, the first seat's environment is built once and snapshotted, and the
others start from the snapshot; a later `up` reuses it while the source is
unchanged. The seats are found as vmbinder.workshops.seats finds them. Nothing
here prints.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from vmbinder import api, errors, readiness
from vmbinder.providers.base import Ledger, Provider, Server, Snapshot
from vmbinder.spec import ACME, LaunchSpec, make_spec
from vmbinder.workshops.file import Seat, Workshop
from vmbinder.workshops.seats import (
    CREATED,
    EXPIRES,
    FAILED,
    FROM_SNAPSHOT,
    HEALTHY,
    KEPT,
    P_BUILD,
    P_WORKSHOP,
    PARALLEL,
    RECREATED,
    SEAT,
    SKIPPED,
    SNAPSHOTTED,
    WORKSHOP,
    BatchReporter,
    NullBatchReporter,
    release_orphans,
    seats_of,
)


class _SeatReporter:
    """A launch's phases, reported as one seat's row."""

    def __init__(self, batch: BatchReporter, name: str):
        self.batch, self.name = batch, name

    def phase(self, phase: str, detail: str = "") -> None:
        self.batch.seat(self.name, phase, detail)


@dataclass
class SeatResult:
    seat: Seat
    action: str
    server: Server | None = None
    error: errors.VmbinderError | None = None
    seconds: float = 0.0


@dataclass
class UpResult:
    workshop: Workshop
    seats: list[SeatResult]
    snapshot: Snapshot | None = None
    #: "reused", "made", or None when every seat built its own environment.
    snapshot_action: str | None = None
    quota: list = field(default_factory=list)

    @property
    def failed(self) -> list[SeatResult]:
        return [r for r in self.seats if r.action == FAILED]


def build_key(workshop: Workshop, image: str | None) -> str:
    """What a snapshot holds: the source, the repo2docker that built it, the image under it."""
    s = workshop.source
    from vmbinder import REPO2DOCKER_VERSION

    what = [s.kind, s.repo, s.ref, s.subdir, REPO2DOCKER_VERSION, image]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def _spec(workshop: Workshop, seat: Seat, *, public_key: str | None, target: Provider,
          image: str | None = None, labels: dict[str, str] | None = None) -> LaunchSpec:
    """A seat's launch. A workshop file is meant for any target: its tls acme (the
    default) becomes the target's own default where Let's Encrypt cannot reach it."""
    tls = workshop.tls
    if tls == ACME and not target.target_defaults.acme:
        tls = None
    cloud = replace(seat.cloud, public_key=None if seat.cloud.key_name else public_key)
    if image:
        cloud = replace(cloud, image=image)
    values = {WORKSHOP: workshop.name, SEAT: str(seat.number), **(labels or {})}
    if workshop.lifetime_s:
        end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=workshop.lifetime_s)
        values[EXPIRES] = end.isoformat(timespec="minutes").replace("+00:00", "Z")
    return make_spec(workshop.source, name=seat.name, cloud=cloud, hostname=seat.hostname,
                     tls=tls, labels=values, target=target)


class _Launcher:
    """One seat at a time: launch it, catch its failure as its result. After an
    interrupt, seats still waiting for their environment roll back and the ones
    not started yet are skipped."""

    def __init__(self, provider, reporter, *, wait, ready_timeout, cancelled):
        self.provider, self.reporter = provider, reporter
        self.wait, self.ready_timeout, self.cancelled = wait, ready_timeout, cancelled

    def _sleep(self, seconds: float) -> None:
        if self.cancelled.wait(seconds):
            raise KeyboardInterrupt

    def __call__(self, seat: Seat, spec: LaunchSpec, action: str, wait: bool | None = None) -> SeatResult:
        if self.cancelled.is_set():
            self.reporter.seat(seat.name, SKIPPED, "interrupted before it started")
            return SeatResult(seat, SKIPPED)
        started = time.monotonic()
        try:
            launched = api.launch(self.provider, spec, _SeatReporter(self.reporter, seat.name),
                                  wait=self.wait if wait is None else wait,
                                  ready_timeout=self.ready_timeout,
                                  clock=readiness.Clock(sleep=self._sleep))
        except errors.Interrupted as exc:
            self.reporter.seat(seat.name, SKIPPED, exc.message)
            return SeatResult(seat, SKIPPED, error=exc, seconds=time.monotonic() - started)
        except errors.VmbinderError as exc:
            self.reporter.seat(seat.name, FAILED, exc.message)
            return SeatResult(seat, FAILED, error=exc, seconds=time.monotonic() - started)
        self.reporter.seat(seat.name, action, launched.server.address or "")
        return SeatResult(seat, action, launched.server, seconds=time.monotonic() - started)

    def again(self, made: SeatResult) -> SeatResult:
        """The seat that was snapshotted, waited for until it answers again."""
        seat, started = made.seat, time.monotonic()
        try:
            server = api.wait_ready(self.provider, made.server, _SeatReporter(self.reporter, seat.name),
                                    timeout=self.ready_timeout, clock=readiness.Clock(sleep=self._sleep))
        except errors.VmbinderError as exc:
            self.reporter.seat(seat.name, FAILED, f"after its snapshot: {exc.message}")
            return replace(made, action=FAILED, error=exc)
        except KeyboardInterrupt:
            self.reporter.seat(seat.name, SKIPPED, "interrupted while it started again")
            return made
        self.reporter.seat(seat.name, made.action, server.address or "")
        return replace(made, server=server, seconds=made.seconds + time.monotonic() - started)


def up(provider: Provider, workshop: Workshop, *, reporter: BatchReporter | None = None,
       public_key: str | None = None, parallel: int = PARALLEL,
       wait: bool = True, fan_out: bool = True, ready_timeout: float = 1800,
       built: Callable[[Server], None] | None = None) -> UpResult:
    """Make the missing and failed seats. BatchPartlyFailed when some failed
    (result in its details); the first seat's own error when it failed, with no
    other seat started.

    built(server), when given, replaces waiting for the first seat's
    environment before its snapshot (for clouds where nothing boots)."""
    with provider.remembering():
        return _up(provider, workshop, reporter=reporter or NullBatchReporter(),
                   public_key=public_key, parallel=parallel, wait=wait,
                   fan_out=fan_out, ready_timeout=ready_timeout, built=built)


def _up(provider, workshop, *, reporter, public_key, parallel, wait, fan_out,
        ready_timeout, built) -> UpResult:
    existing = seats_of(provider, workshop)
    results: dict[str, SeatResult] = {}
    todo: list[tuple[Seat, str]] = []
    for seat in workshop.seats:
        server = existing.get(seat.name)
        if server is not None and server.state in HEALTHY:
            results[seat.name] = SeatResult(seat, KEPT, server)
            reporter.seat(seat.name, KEPT, server.address or server.state)
        else:
            todo.append((seat, RECREATED if server is not None else CREATED))
    outcome = UpResult(workshop, [])
    if not todo:
        outcome.seats = [results[s.name] for s in workshop.seats]
        return outcome
    # A seat in ERROR is removed first: it is what `up` replaces, and its quota is freed.
    for seat, action in todo:
        if action == RECREATED:
            reporter.seat(seat.name, "delete", f"removing failed {existing[seat.name].state} server")
            provider.delete(existing[seat.name])
    release_orphans(provider, [seat.name for seat, _ in todo])

    plain = {seat.name: _spec(workshop, seat, public_key=public_key, target=provider)
             for seat, _ in todo}
    if provider.supports("preflight"):
        outcome.quota = provider.preflight(list(plain.values()))

    key = build_key(workshop, todo[0][0].cloud.image)
    snap_props = {P_WORKSHOP: workshop.name, P_BUILD: key}
    use_snapshot = fan_out and (wait or built is not None) and provider.supports("snapshot")
    if use_snapshot:
        found = provider.snapshots(snap_props)
        if found:
            outcome.snapshot, outcome.snapshot_action = found[0], "reused"
    cancelled = threading.Event()
    launch = _Launcher(provider, reporter, wait=wait, ready_timeout=ready_timeout, cancelled=cancelled)

    def spec_for(seat: Seat) -> LaunchSpec:
        if outcome.snapshot is None:
            return plain[seat.name]
        return _spec(workshop, seat, public_key=public_key, target=provider, image=outcome.snapshot.id,
                     labels={FROM_SNAPSHOT: outcome.snapshot.id})

    # The first seat alone: a configuration error shows once, not once per seat.
    (first, first_action), rest = todo[0], todo[1:]
    builds = use_snapshot and outcome.snapshot is None and len(rest) > 0
    result = launch(first, spec_for(first), first_action,
                    wait=(wait and built is None) if builds else None)
    results[first.name] = result
    if result.action in (FAILED, SKIPPED):
        for seat, _ in rest:
            reporter.seat(seat.name, SKIPPED, f"not started: {first.name} failed")
        raise result.error
    if builds:
        outcome.snapshot = _snapshot(provider, workshop, result.server, snap_props, reporter, built)
        outcome.snapshot_action = "made"
        if wait and built is None:  # it was stopped for the snapshot: wait for it again too
            rest = [(first, "again"), *rest]

    pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="seat")
    futures = []
    try:
        for seat, action in rest:
            if action == "again":
                futures.append((seat, pool.submit(launch.again, result)))
            else:
                futures.append((seat, pool.submit(launch, seat, spec_for(seat), action)))
        for seat, future in futures:
            results[seat.name] = future.result()
    except KeyboardInterrupt:
        cancelled.set()
        pool.shutdown(wait=True, cancel_futures=True)
        made = [f.result().seat.name for _, f in futures if f.done() and not f.cancelled()
                and f.result().action in (CREATED, RECREATED)]
        raise errors.Interrupted(
            "workshop up interrupted; seats still being made removed what they had made"
            + (f"; made before the interrupt: {', '.join(made)}" if made else "")) from None
    finally:
        pool.shutdown(wait=True)
    outcome.seats = [results[s.name] for s in workshop.seats if s.name in results]
    if outcome.failed:
        lines = [f"  {r.seat.name}: {r.error.message}" for r in outcome.failed]
        raise errors.BatchPartlyFailed(
            f"{len(outcome.failed)} of {len(todo)} seats failed; each removed what it had made:\n"
            + "\n".join(lines),
            f"run the same `vmbinder workshop up {workshop.path or 'FILE'}` again: it makes only "
            "the missing seats", details={"result": outcome})
    return outcome


def _snapshot(provider: Provider, workshop: Workshop, server: Server, props: dict[str, str],
              reporter: BatchReporter, built: Callable[[Server], None] | None) -> Snapshot:
    if built is not None:
        built(server)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    reporter.seat(server.name, "snapshot", "stopping, imaging and starting it again")
    ledger = Ledger()
    try:
        snap = provider.snapshot(server, f"{workshop.name}-snapshot-{stamp}", props, ledger)
    except BaseException as exc:  # a half-made snapshot is removed, then the error is raised
        api.roll_back_or_report(ledger, api.NullReporter(), exc, what="snapshot")
        raise
    reporter.seat(server.name, SNAPSHOTTED, snap.name)
    return snap
