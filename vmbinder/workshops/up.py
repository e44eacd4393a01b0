"""`up`: every seat of a workshop file that is missing or failed, made.

It never makes a second one of a seat. run() is a sequence of steps (UpSteps):

    plan             which seats are kept, created, or recreated
    repair           failed servers removed, what hand-deleted seats left released
    check_quota      every seat's launch checked against the quota, nothing made yet
    choose_snapshot  an earlier snapshot of the same build reused, or one to make
    first_seat       the first seat alone: a configuration error shows once
    snapshot         with fan-out, the first seat's environment imaged once
    fan_out          the other seats with bounded parallelism, from the snapshot
    summary          each seat's result (UpResult)

A seat that fails after the first one is its own result, not an exception; the
caller decides what a partly failed run means (UpResult.failure()). The seats
are found as vmbinder.workshops.seats finds them. Nothing here prints.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from vmbinder import errors, lifecycle, readiness, rollback, scope
from vmbinder.guestcontract import REPO2DOCKER_VERSION
from vmbinder.providers.base import Ledger, Provider, Server, Snapshot
from vmbinder.spec import ACME, LaunchSpec, make_spec
from vmbinder.workshops.file import Seat, Workshop
from vmbinder.workshops.seats import (
    CREATED,
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
    SeatReporter,
    release_orphans,
    seats_of,
)


@dataclass
class SeatResult:
    seat: Seat
    action: str
    server: Server | None = None
    error: errors.VmbinderError | None = None
    seconds: float = 0.0


@dataclass
class UpResult:
    """What a run of `up` did: each seat's result in the file's order, the snapshot
    the seats started from and what was done to it, and the quota it checked."""

    workshop: Workshop
    seats: list[SeatResult]
    snapshot: Snapshot | None = None
    #: "reused", "made", or None when every seat built its own environment.
    snapshot_action: str | None = None
    quota: list = field(default_factory=list)
    #: The seats this run set out to make: the missing and failed ones.
    attempted: int = 0

    @property
    def kept(self) -> list[SeatResult]:
        return [r for r in self.seats if r.action == KEPT]

    @property
    def made(self) -> list[SeatResult]:
        return [r for r in self.seats if r.action in (CREATED, RECREATED)]

    @property
    def failed(self) -> list[SeatResult]:
        return [r for r in self.seats if r.action == FAILED]

    @property
    def partly_failed(self) -> bool:
        return bool(self.failed)

    def failure(self) -> errors.BatchPartlyFailed | None:
        """The error a partly failed run is reported with (exit 10): each failed seat
        and why, and the command that makes only the missing seats. None when no
        seat failed."""
        if not self.failed:
            return None
        lines = [f"  {r.seat.name}: {r.error.message}" for r in self.failed]
        return errors.BatchPartlyFailed(
            f"{len(self.failed)} of {self.attempted} seats failed; each removed what it had made:\n"
            + "\n".join(lines),
            f"run the same `vmbinder workshop up {self.workshop.path or 'FILE'}` again: it makes only "
            "the missing seats")


def build_key(workshop: Workshop, image: str | None) -> str:
    """What a snapshot holds: the source, the repo2docker that built it, the image under it."""
    s = workshop.source
    what = [s.kind, s.repo, s.commit or s.ref, s.subdir, REPO2DOCKER_VERSION, image]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


def seat_spec(workshop: Workshop, seat: Seat, *, public_key: str | None, target: Provider,
          image: str | None = None, labels: dict[str, str] | None = None,
          kept: frozenset[str] = frozenset()) -> LaunchSpec:
    """A seat's launch. A workshop file is meant for any target: its tls acme (the
    default) becomes the target's own default where Let's Encrypt cannot reach it,
    and so does its at_end where the target cannot act so (no shelving locally).
    With volume, the seat gets a new work volume <seat>-work, or the one of that
    name that is there and free (kept: a seat made again gets its work back)."""
    tls = workshop.tls
    if tls == ACME and not target.target_defaults.acme and not workshop.acme.ca:
        tls = None
    cloud = replace(seat.cloud, public_key=None if seat.cloud.key_name else public_key)
    if image:
        cloud = replace(cloud, image=image)
    values = {WORKSHOP: workshop.name, SEAT: str(seat.number), **(labels or {})}
    at_end = workshop.at_end
    if at_end not in target.target_defaults.at_end_actions:
        at_end = None
    volume = None
    if workshop.volume_gb:
        volume = f"{seat.name}-work" if f"{seat.name}-work" in kept else str(workshop.volume_gb)
    return make_spec(workshop.source, name=seat.name, cloud=cloud, hostname=seat.hostname,
                     tls=tls, acme=workshop.acme if tls == ACME else None, labels=values,
                     target=target, volume=volume, lifetime_s=workshop.lifetime_s, at_end=at_end)


class _Launcher:
    """One seat at a time: launch it, catch its failure as its result. After an
    interrupt, seats still waiting for their environment roll back and the ones
    not started yet are skipped."""

    def __init__(self, provider, reporter, *, wait, ready_timeout, cancelled, extra_roots=None):
        self.provider, self.reporter = provider, reporter
        self.wait, self.ready_timeout, self.cancelled = wait, ready_timeout, cancelled
        #: A private ACME CA's roots (the workshop's acme_ca_root), to check the seats.
        self.extra_roots = extra_roots

    def _sleep(self, seconds: float) -> None:
        if self.cancelled.wait(seconds):
            raise KeyboardInterrupt

    def __call__(self, seat: Seat, spec: LaunchSpec, action: str, wait: bool | None = None) -> SeatResult:
        if self.cancelled.is_set():
            self.reporter.seat(seat.name, SKIPPED, "interrupted before it started")
            return SeatResult(seat, SKIPPED)
        started = time.monotonic()
        try:
            launched = lifecycle.launch(self.provider, spec, SeatReporter(self.reporter, seat.name),
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
            server = lifecycle.wait_ready(
                self.provider, made.server, SeatReporter(self.reporter, seat.name),
                timeout=self.ready_timeout, clock=readiness.Clock(sleep=self._sleep),
                extra_roots=self.extra_roots)
        except errors.VmbinderError as exc:
            self.reporter.seat(seat.name, FAILED, f"after its snapshot: {exc.message}")
            return replace(made, action=FAILED, error=exc)
        except KeyboardInterrupt:
            self.reporter.seat(seat.name, SKIPPED, "interrupted while it started again")
            return made
        self.reporter.seat(seat.name, made.action, server.address or "")
        return replace(made, server=server, seconds=made.seconds + time.monotonic() - started)


class UpSteps:
    """One run of `up`, step by step: its options, and what the steps found and
    made so far. Each step reads what the ones before it left here."""

    #: Work volumes of the seats' names that are there and free (check_quota finds them).
    kept: frozenset[str] = frozenset()

    def __init__(self, provider: Provider, workshop: Workshop, *, reporter: BatchReporter,
                 public_key: str | None, parallel: int, wait: bool, fan_out: bool,
                 ready_timeout: float, built: Callable[[Server], None] | None):
        self.provider, self.workshop, self.reporter = provider, workshop, reporter
        self.public_key, self.parallel, self.wait = public_key, parallel, wait
        self.fanning, self.built = fan_out, built
        self.cancelled = threading.Event()
        self.launch = _Launcher(provider, reporter, wait=wait, ready_timeout=ready_timeout,
                                cancelled=self.cancelled, extra_roots=workshop.acme.ca_root)
        self.result = UpResult(workshop, [])
        self.existing: dict[str, Server] = {}
        self.results: dict[str, SeatResult] = {}
        #: (seat, CREATED or RECREATED) for each seat to make, in the file's order.
        self.todo: list[tuple[Seat, str]] = []
        #: Each seat's launch when it builds its own environment.
        self.specs: dict[str, LaunchSpec] = {}
        self.snapshot_props: dict[str, str] = {}
        #: Whether the first seat builds the environment the others start from.
        self.builds = False

    def plan(self) -> list[tuple[Seat, str]]:
        """Which seats to make: a seat whose server is healthy is kept (and reported
        kept), one with no server is created, one whose server failed is recreated.
        A server with a seat's name that is not this workshop's is refused before
        anything is done, and so is a failed seat another user launched, which
        recreating it would delete (as `vmbinder delete` refuses it)."""
        self.existing = seats_of(self.provider, self.workshop)
        for seat in self.workshop.seats:
            server = self.existing.get(seat.name)
            if server is not None and server.state in HEALTHY:
                self.results[seat.name] = SeatResult(seat, KEPT, server)
                self.reporter.seat(seat.name, KEPT, server.address or server.state)
            else:
                self.todo.append((seat, RECREATED if server is not None else CREATED))
        failed = [self.existing[seat.name] for seat, action in self.todo if action == RECREATED]
        scope.refuse_others(self.provider, failed, "failed seats",
                            "vmbinder delete --force " + " ".join(s.name for s in failed)
                            + ", then run up again")
        self.result.attempted = len(self.todo)
        return self.todo

    def repair(self) -> None:
        """A seat whose server failed loses it first: it is what `up` replaces, and its
        quota is freed. What seats deleted by hand left (a cloud's floating IPs) is
        released."""
        for seat, action in self.todo:
            if action == RECREATED:
                server = self.existing[seat.name]
                self.reporter.seat(seat.name, "delete", f"removing failed {server.state} server")
                self.provider.delete(server)
        release_orphans(self.provider, [seat.name for seat, _ in self.todo])

    def check_quota(self) -> None:
        """Every seat's launch, checked against the project's quota where the target
        can: QuotaExceeded before anything is made."""
        if self.workshop.volume_gb and self.provider.supports("volumes"):
            self.kept = frozenset(v.name for v in self.provider.volumes() if not v.attached_to)
        self.specs = {seat.name: seat_spec(self.workshop, seat, public_key=self.public_key,
                                           target=self.provider, kept=self.kept)
                      for seat, _ in self.todo}
        if self.provider.supports("preflight"):
            self.result.quota = self.provider.preflight(list(self.specs.values()))

    def choose_snapshot(self) -> None:
        """With fan-out (and a first seat that is waited for or checked by built), the
        environment is built once: an earlier run's snapshot of the same build
        (build_key) is reused, or else the first seat builds it, to be snapshotted,
        when other seats are to start from it."""
        first = self.todo[0][0]
        self.snapshot_props = {P_WORKSHOP: self.workshop.name,
                               P_BUILD: build_key(self.workshop, first.cloud.image)}
        use = (self.fanning and (self.wait or self.built is not None)
               and self.provider.supports("snapshot"))
        if use:
            found = self.provider.snapshots(self.snapshot_props)
            if found:
                self.result.snapshot, self.result.snapshot_action = found[0], "reused"
        self.builds = use and self.result.snapshot is None and len(self.todo) > 1

    def spec_for(self, seat: Seat) -> LaunchSpec:
        """A seat's launch: its own, or started from the snapshot when there is one."""
        snap = self.result.snapshot
        if snap is None:
            return self.specs[seat.name]
        return seat_spec(self.workshop, seat, public_key=self.public_key, target=self.provider,
                         image=snap.id, labels={FROM_SNAPSHOT: snap.id}, kept=self.kept)

    def first_seat(self) -> SeatResult:
        """The first seat alone, so that a configuration error shows once, not once per
        seat. When it fails the others are reported skipped and its error is raised."""
        (seat, action), rest = self.todo[0], self.todo[1:]
        made = self.launch(seat, self.spec_for(seat), action,
                           wait=(self.wait and self.built is None) if self.builds else None)
        self.results[seat.name] = made
        if made.action in (FAILED, SKIPPED):
            for other, _ in rest:
                self.reporter.seat(other.name, SKIPPED, f"not started: {seat.name} failed")
            raise made.error
        return made

    def snapshot(self, first: SeatResult) -> bool:
        """The first seat's environment imaged, when it was the one to build it: after
        built(server) when given, the seat is stopped, imaged and started again. A
        half-made snapshot is removed and the error raised. True when the first
        seat, stopped for its snapshot, is to be waited for again."""
        if not self.builds:
            return False
        server = first.server
        if self.built is not None:
            self.built(server)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.reporter.seat(server.name, "snapshot", "stopping, imaging and starting it again")
        ledger = Ledger()
        try:
            snap = self.provider.snapshot(server, f"{self.workshop.name}-snapshot-{stamp}",
                                          self.snapshot_props, ledger)
        except BaseException as exc:  # a half-made snapshot is removed, then the error is raised
            rollback.roll_back_or_report(ledger, lifecycle.NullReporter(), exc, what="snapshot")
            raise
        self.reporter.seat(server.name, SNAPSHOTTED, snap.name)
        self.result.snapshot, self.result.snapshot_action = snap, "made"
        return self.wait and self.built is None

    def fan_out(self, first: SeatResult, again: bool) -> None:
        """The other seats, `parallel` at a time, each its own result (and the first
        seat waited for again when `again`). After an interrupt, seats still being
        made remove what they made, the ones not started are skipped, and
        Interrupted names the seats made before it."""
        pool = ThreadPoolExecutor(max_workers=max(1, self.parallel), thread_name_prefix="seat")
        futures = []
        try:
            if again:
                futures.append((first.seat, pool.submit(self.launch.again, first)))
            for seat, action in self.todo[1:]:
                futures.append((seat, pool.submit(self.launch, seat, self.spec_for(seat), action)))
            for seat, future in futures:
                self.results[seat.name] = future.result()
        except KeyboardInterrupt:
            self.cancelled.set()
            pool.shutdown(wait=True, cancel_futures=True)
            made = [f.result().seat.name for _, f in futures if f.done() and not f.cancelled()
                    and f.result().action in (CREATED, RECREATED)]
            raise errors.Interrupted(
                "workshop up interrupted; seats still being made removed what they had made"
                + (f"; made before the interrupt: {', '.join(made)}" if made else "")) from None
        finally:
            pool.shutdown(wait=True)

    def summary(self) -> UpResult:
        """Every seat's result, kept or made or failed, in the file's order."""
        self.result.seats = [self.results[s.name] for s in self.workshop.seats
                             if s.name in self.results]
        return self.result


def run(provider: Provider, workshop: Workshop, *, reporter: BatchReporter | None = None,
        public_key: str | None = None, parallel: int = PARALLEL,
        wait: bool = True, fan_out: bool = True, ready_timeout: float = 1800,
        built: Callable[[Server], None] | None = None) -> UpResult:
    """Make the missing and failed seats, in steps (see UpSteps), and say what was
    done. Seats that failed after the first one are in the result
    (result.partly_failed, result.failure()). The first seat's own error is raised
    when it failed, with no other seat started, as is a refusal (a quota, a server
    with a seat's name from elsewhere) before anything is made.

    built(server), when given, replaces waiting for the first seat's
    environment before its snapshot (for clouds where nothing boots)."""
    with provider.remembering():
        steps = UpSteps(provider, workshop, reporter=reporter or NullBatchReporter(),
                        public_key=public_key, parallel=parallel, wait=wait, fan_out=fan_out,
                        ready_timeout=ready_timeout, built=built)
        if steps.plan():
            steps.repair()
            steps.check_quota()
            steps.choose_snapshot()
            first = steps.first_seat()
            again = steps.snapshot(first)
            steps.fan_out(first, again)
        return steps.summary()


def up(provider: Provider, workshop: Workshop, **options) -> UpResult:
    """run() with the options of run(), for a script that wants an error when some
    seats failed: BatchPartlyFailed, with the result in its details."""
    result = run(provider, workshop, **options)
    failure = result.failure()
    if failure is not None:
        failure.details["result"] = result
        raise failure
    return result
