"""A workshop's seats on the cloud: found, listed and removed.

    status  each seat's server, state and address
    roster  each seat's URL with its token, for the seats whose URL answers
    down    removes every seat, and the snapshot when asked

The seats are found by what the cloud records on them (vmbinder:workshop and
vmbinder:seat), as every other command finds its servers, whoever launched
them: a workshop's seats are its instructors'. Removing seats another user of
the project launched is refused unless forced, as `vmbinder delete` refuses
(scope.refuse_others). Making them is vmbinder.workshops.up. Nothing here
prints.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from vmbinder import errors, lifecycle, readiness, scope
from vmbinder.providers.base import ACTIVE, BUILDING, SHELVED, STOPPED, Provider, Removed, Server
from vmbinder.workshops.file import Seat, Workshop

#: Seats made or removed at once (after the first one, for `up`).
PARALLEL = 8
#: Labels on a seat's server: its workshop, its number, the snapshot it started from, its expiry.
WORKSHOP, SEAT, FROM_SNAPSHOT, EXPIRES = "workshop", "seat", "snapshot", "expires"
#: Snapshot properties: the workshop, and what was built (see up.build_key).
P_WORKSHOP, P_BUILD = "vmbinder_workshop", "vmbinder_build"
HEALTHY = (ACTIVE, BUILDING, STOPPED, SHELVED)
# What happened to a seat in `up`.
KEPT, CREATED, RECREATED, FAILED, SKIPPED = "kept", "created", "recreated", "failed", "skipped"
SNAPSHOTTED = "snapshotted"


class BatchReporter(Protocol):
    def seat(self, name: str, state: str, detail: str = "") -> None: ...


class NullBatchReporter:
    def seat(self, name: str, state: str, detail: str = "") -> None:
        pass


class SeatReporter:
    """One server's phases (a launch's, a power verb's), reported as one seat's row."""

    def __init__(self, batch: BatchReporter, name: str):
        self.batch, self.name = batch, name

    def phase(self, phase: str, detail: str = "") -> None:
        self.batch.seat(self.name, phase, detail)


def seats_of(provider: Provider, workshop: Workshop) -> dict[str, Server]:
    """The workshop's servers by seat name. A server with a seat's name that is
    not this workshop's seat is refused: `up` would otherwise make a second one."""
    names = {s.name for s in workshop.seats}
    found: dict[str, Server] = {}
    for server in provider.list_owned():
        if server.name not in names:
            continue
        if server.meta(WORKSHOP) != workshop.name:
            raise errors.BadRequest(
                f"a vmbinder server named {server.name} exists and is not a seat of workshop "
                f"{workshop.name}", f"remove it first (vmbinder delete {server.name}) or rename "
                "the workshop")
        found[server.name] = server
    return found


def release_orphans(provider: Provider, names: list[str]) -> list[Removed]:
    """What seats deleted by hand left (a cloud's floating IPs), removed."""
    return provider.release_orphans(names) if provider.supports("release_orphans") else []


def _retrying(call: Callable[[], list[Removed]], attempts: int = 4) -> list[Removed]:
    """An idempotent removal, tried again after a dropped connection or a 502-504."""
    import tenacity

    for attempt in tenacity.Retrying(
        retry=tenacity.retry_if_exception(
            lambda e: isinstance(e, errors.VmbinderError) and e.details.get("transient")),
        wait=tenacity.wait_exponential(multiplier=0.5, max=8),
        stop=tenacity.stop_after_attempt(attempts), reraise=True,
    ):
        with attempt:
            return call()
    return []  # not reached: the last attempt returns or raises


@dataclass(frozen=True)
class SeatStatus:
    seat: Seat
    server: Server | None

    @property
    def state(self) -> str:
        return self.server.state if self.server else "missing"


def status(provider: Provider, workshop: Workshop) -> list[SeatStatus]:
    found = seats_of(provider, workshop)
    return [SeatStatus(seat, found.get(seat.name)) for seat in workshop.seats]


def _answers(server: Server, url: str, extra_roots: str | None = None) -> bool:
    """Does the seat's URL answer, its certificate checked as lifecycle.trust says?"""
    try:
        context = lifecycle.trust(server, extra_roots)
    except lifecycle.TrustNotYet:
        return False
    ok, _ = readiness.http_probe(url, context=context)()
    return ok


def roster_entries(provider: Provider, workshop: Workshop, *, check: bool = True,
                   answers: Callable[[Server, str], bool] | None = None,
                   parallel: int = 16) -> tuple[list, list[SeatStatus]]:
    """(entries for the seats whose URL answered, the seats left out). With
    check=False every seat with an address is listed, unchecked. answers(server,
    url) says whether a URL answers (default: a GET, the certificate checked)."""
    answers = answers or (lambda server, url: _answers(server, url, workshop.acme.ca_root))
    seats = status(provider, workshop)
    candidates = []
    for st in seats:
        if st.server is None or st.server.state != ACTIVE:
            continue
        acc = lifecycle.access(st.server)
        if acc.base is None:
            continue
        candidates.append((st, acc))
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        verdicts = list(pool.map(
            lambda pair: (not check) or answers(pair[0].server, pair[1].urls["lab"]), candidates))
    entries, listed = [], set()
    for (st, acc), good in zip(candidates, verdicts, strict=True):
        if not good:
            continue
        entries.append(roster_entry(st.seat, st.server, acc))
        listed.add(st.seat.name)
    return entries, [st for st in seats if st.seat.name not in listed]


def roster_entry(seat: Seat, server: Server, acc=None):
    """The seat's roster entry (its URL with the token), unchecked; None when the
    server has no URL (no address yet)."""
    from vmbinder.workshops import roster

    acc = acc or lifecycle.access(server)
    if acc.base is None:
        return None
    person = seat.participant
    return roster.Entry(
        seat=seat.name, number=seat.number,
        participant=person.name if person else None, email=person.email if person else None,
        url=acc.open_url or acc.urls["lab"], lab_url=acc.urls["lab"],
        expires=server.meta(EXPIRES))


def down(provider: Provider, workshop: Workshop, *, snapshots: bool = False,
         reporter: BatchReporter | None = None, parallel: int = PARALLEL,
         force: bool = False, volumes: bool = False) -> list[Removed]:
    """Remove every seat of the workshop (its floating IP with it) and, with
    snapshots=True, its snapshots, with volumes=True the seats' work volumes (see
    work_volumes; else they are kept; other users' only with force). Safe to run
    again: then it removes nothing. Seats another user launched are refused,
    before any is removed, unless force."""
    reporter = reporter or NullBatchReporter()
    found = seats_of(provider, workshop)
    if not force:
        scope.refuse_others(
            provider, list(found.values()), "seats",
            f"vmbinder workshop down --force {workshop.path or 'FILE'}")
    errors_seen: list[tuple[str, errors.VmbinderError]] = []

    def remove(server: Server) -> list[Removed]:
        reporter.seat(server.name, "delete", "deleting")
        try:
            gone = _retrying(lambda: provider.delete(server))
        except errors.VmbinderError as exc:
            reporter.seat(server.name, FAILED, exc.message)
            errors_seen.append((server.name, exc))
            return []
        reporter.seat(server.name, "deleted", "")
        return gone

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        removed = [r for batch in pool.map(remove, found.values()) for r in batch]
    removed += release_orphans(provider, [s.name for s in workshop.seats])
    if snapshots:
        for snap in provider.snapshots({P_WORKSHOP: workshop.name}):
            removed += provider.delete_snapshot(snap)
    if volumes:
        # Another user's volumes of the same names stay, unless force (as for seats).
        user = provider.current_owner()
        for volume in work_volumes(provider, workshop):
            if force or user is None or volume.meta("owner") in (None, user):
                removed += provider.delete_volume(volume)
    if errors_seen:
        raise errors.CleanupFailed(
            "could not remove these seats:\n"
            + "\n".join(f"  {name}: {exc.message}" for name, exc in errors_seen),
            "run the same `vmbinder workshop down` again; if it still fails, see the hint of "
            "each error", details={"removed": removed})
    return removed


def work_volumes(provider: Provider, workshop: Workshop) -> list:
    """The seats' work volumes (<seat>-work) that vmbinder made and no server holds."""
    if not workshop.volume_gb or not provider.supports("volumes"):
        return []
    names = {f"{seat.name}-work" for seat in workshop.seats}
    return [v for v in provider.volumes()
            if v.name in names and v.made_by_vmbinder and not v.attached_to]
