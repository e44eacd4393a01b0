"""Every seat of a workshop stopped, started, shelved or unshelved at once.

act() finds the seats as vmbinder.workshops.seats does, refuses (unless forced)
before anything changes when another user launched some of them, then does the
verb on each seat's server, `parallel` at a time, through vmbinder.power
(act_on): after start and unshelve each seat's environment is waited for, at
the same URL with the same token. Each seat is its own result: one that fails
does not stop the others, and a seat with no server (never made, or deleted) is
reported missing. The caller decides what a partly failed run means
(PowerResult.failure(), exit 10). Nothing here prints.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vmbinder import errors, power, readiness, scope
from vmbinder.providers.base import Provider, Removed, Server
from vmbinder.workshops.file import Seat, Workshop
from vmbinder.workshops.seats import (
    FAILED,
    PARALLEL,
    SKIPPED,
    BatchReporter,
    NullBatchReporter,
    SeatReporter,
    seats_of,
)

#: A seat with no server: never made, or deleted.
MISSING = "missing"


@dataclass
class SeatPower:
    """What the verb did to one seat: its action (power.Outcome.action, such as
    "stopped" or "already stopped"; else missing, failed or skipped), its
    server as it is now, and the error when it failed."""

    seat: Seat
    action: str
    server: Server | None = None
    error: errors.VmbinderError | None = None
    seconds: float = 0.0
    #: Whether its environment answered (start and unshelve that waited), else None.
    ready: bool | None = None
    #: The addresses given back (stop and shelve with release_ip).
    released: tuple[Removed, ...] = ()


@dataclass
class PowerResult:
    workshop: Workshop
    verb: str
    #: Each seat's result, in the file's order.
    seats: list[SeatPower]

    @property
    def failed(self) -> list[SeatPower]:
        return [r for r in self.seats if r.action == FAILED]

    @property
    def missing(self) -> list[SeatPower]:
        return [r for r in self.seats if r.action == MISSING]

    @property
    def partly_failed(self) -> bool:
        return bool(self.failed)

    def failure(self) -> errors.BatchPartlyFailed | None:
        """The error a partly failed run is reported with (exit 10): each failed seat,
        why and what to do about it, and the command to run again. None when no
        seat failed."""
        if not self.failed:
            return None
        verb, path = self.verb, self.workshop.path or "FILE"
        tried = len(self.seats) - len(self.missing)
        lines = []
        for r in self.failed:
            rid = r.error.details.get("request_id")
            lines.append(f"  {r.seat.name}: {r.error.message}" + (f" (request id {rid})" if rid else ""))
            if r.error.hint:
                lines += [f"    {line}" for line in r.error.hint.splitlines()]
        return errors.BatchPartlyFailed(
            f"{len(self.failed)} of {tried} seats failed to {verb}; the others are "
            f"{power.AFTER[verb]}:\n" + "\n".join(lines),
            f"once the cause is fixed, run the same `vmbinder workshop {verb} {path}` again: "
            f"it leaves the seats that are {power.AFTER[verb]} as they are",
            details={"failed": {r.seat.name: r.error.message for r in self.failed}})


class _Worker:
    """One seat at a time: the verb on its server, its failure caught as its result.
    After an interrupt, seats still waiting for their environment stop waiting and
    the ones not started yet are skipped."""

    def __init__(self, provider: Provider, verb: str, reporter: BatchReporter, *, wait: bool,
                 timeout: float, extra_roots: str | None, release_ip: bool = False):
        self.provider, self.verb, self.reporter = provider, verb, reporter
        self.wait, self.timeout, self.extra_roots = wait, timeout, extra_roots
        self.release_ip = release_ip
        self.cancelled = threading.Event()

    def _sleep(self, seconds: float) -> None:
        if self.cancelled.wait(seconds):
            raise KeyboardInterrupt

    def __call__(self, seat: Seat, server: Server) -> SeatPower:
        if self.cancelled.is_set():
            self.reporter.seat(seat.name, SKIPPED, "interrupted before it started")
            return SeatPower(seat, SKIPPED, server)
        started = time.monotonic()
        try:
            out = power.act_on(self.provider, self.verb, server, SeatReporter(self.reporter, seat.name),
                               wait=self.wait, timeout=self.timeout, extra_roots=self.extra_roots,
                               clock=readiness.Clock(sleep=self._sleep), release_ip=self.release_ip)
        except errors.VmbinderError as exc:
            self.reporter.seat(seat.name, FAILED, exc.message)
            return SeatPower(seat, FAILED, server, exc, time.monotonic() - started)
        except KeyboardInterrupt:
            self.reporter.seat(seat.name, SKIPPED, "interrupted while waiting for its environment")
            return SeatPower(seat, SKIPPED, server, seconds=time.monotonic() - started)
        self.reporter.seat(seat.name, out.action, out.server.address or out.server.state)
        return SeatPower(seat, out.action, out.server, seconds=out.seconds, ready=out.ready,
                         released=out.released)


def act(provider: Provider, workshop: Workshop, verb: str, *,
        reporter: BatchReporter | None = None, parallel: int = PARALLEL, force: bool = False,
        wait: bool = True, timeout: float = 1800, release_ip: bool = False) -> PowerResult:
    """verb (stop, start, shelve or unshelve) on every seat of the workshop that has a
    server, `parallel` at a time. With wait, start and unshelve wait until each
    seat's environment answers (timeout: seconds, for each seat); the workshop's
    private ACME CA roots, if any, check its certificate. release_ip (stop and
    shelve): each seat's floating IP is given back first (power.act_on). A target
    that does not do the verb (or has no address to give back), and (unless force)
    seats another user launched, are refused before any seat changes. An
    interrupt ends it with Interrupted, naming the seats done before it."""
    power.check(provider, verb, release_ip)
    reporter = reporter or NullBatchReporter()
    with provider.remembering():
        found = seats_of(provider, workshop)
        if not force:
            scope.refuse_others(provider, list(found.values()), "seats",
                                f"vmbinder workshop {verb} --force {workshop.path or 'FILE'}",
                                (power.DOING[verb], power.DONE[verb], verb))
        results: dict[str, SeatPower] = {}
        for seat in workshop.seats:
            if seat.name not in found:
                results[seat.name] = SeatPower(seat, MISSING)
                reporter.seat(seat.name, MISSING, "no server: never made, or deleted")
        worker = _Worker(provider, verb, reporter, wait=wait, timeout=timeout,
                         extra_roots=workshop.acme.ca_root, release_ip=release_ip)
        pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="seat")
        futures = [(seat, pool.submit(worker, seat, found[seat.name]))
                   for seat in workshop.seats if seat.name in found]
        try:
            for seat, future in futures:
                results[seat.name] = future.result()
        except KeyboardInterrupt:
            worker.cancelled.set()
            pool.shutdown(wait=True, cancel_futures=True)
            done = [seat.name for seat, f in futures if f.done() and not f.cancelled()
                    and f.result().action not in (FAILED, SKIPPED)]
            raise errors.Interrupted(
                f"workshop {verb} interrupted; seats not started were left as they were"
                + (f"; done before the interrupt: {', '.join(done)}" if done else "")) from None
        finally:
            pool.shutdown(wait=True)
    return PowerResult(workshop, verb, [results[s.name] for s in workshop.seats])
