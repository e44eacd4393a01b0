"""One seat of a workshop made fresh: its server deleted, then made again as `up`
makes a missing seat (from the workshop's snapshot when there is one), with a
new token.

Everything that can refuse is asked before anything is removed: the seat named
(by its name, its number or its participant), its server there, launched by
this user (unless forced), and its new launch valid. Only that seat's server
(and its floating IP or port) is removed. Its work volume (`volume:` in the
file) holds the participant's home, so it is kept and attached to the new
server, unless asked otherwise (delete_volume). Nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from vmbinder import errors, readiness, scope
from vmbinder.providers.base import Provider, Removed, Server, Snapshot, Volume
from vmbinder.workshops import roster
from vmbinder.workshops.file import Seat, Workshop
from vmbinder.workshops.seats import (
    FAILED,
    BatchReporter,
    NullBatchReporter,
    roster_entry,
    seats_of,
)
from vmbinder.workshops.up import run, seat_spec

#: Seconds a deleted seat's work volume may take to be detached.
DETACH_TIMEOUT = 300


@dataclass
class ResetResult:
    seat: Seat
    #: The seat's server before, removed.
    old: Server
    #: The seat's new server.
    server: Server
    removed: list[Removed] = field(default_factory=list)
    #: The work volume kept and attached to the new server, if any.
    kept_volume: str | None = None
    #: The snapshot the new server started from (None: it built its own environment).
    snapshot: Snapshot | None = None
    seconds: float = 0.0

    @property
    def entry(self) -> roster.Entry | None:
        """The seat's new roster entry (None when its server has no URL)."""
        return roster_entry(self.seat, self.server)


def find_seat(workshop: Workshop, wanted: str) -> Seat:
    """The seat a user names: its name, its number, or its participant's name, as
    the file's overrides name seats."""
    text = str(wanted).strip()
    for seat in workshop.seats:
        if (text == seat.name or (text.isdigit() and int(text) == seat.number)
                or (seat.participant and text == seat.participant.name)):
            return seat
    first, last = workshop.seats[0].name, workshop.seats[-1].name
    raise errors.BadRequest(
        f"workshop {workshop.name} has no seat {text!r}",
        f"name a seat ({first} .. {last}), its number (1 to {len(workshop.seats)}) or its "
        f"participant; vmbinder workshop check {workshop.path or 'FILE'} lists them")


def _work_volume(provider: Provider, workshop: Workshop, seat: Seat) -> Volume | None:
    if not workshop.volume_gb or not provider.supports("volumes"):
        return None
    return next((v for v in provider.volumes() if v.name == f"{seat.name}-work"), None)


def _until_detached(provider: Provider, name: str, timeout: float, clock: readiness.Clock,
                    path) -> Volume | None:
    """The volume of this name once no server holds it (a deleted server's volume
    takes a moment to be detached); None when it is gone."""
    deadline = clock.now() + timeout
    while True:
        volume = next((v for v in provider.volumes() if v.name == name), None)
        if volume is None or not volume.attached_to:
            return volume
        if clock.now() > deadline:
            raise errors.CloudError(
                f"work volume {name} is still attached to {', '.join(volume.attached_to)} "
                f"{timeout:.0f} s after its server was deleted",
                "the cloud may be slow to detach it: once `vmbinder volumes` shows it "
                f"available, `vmbinder workshop up {path}` makes the seat again with it")
        clock.sleep(2)


def reset(provider: Provider, workshop: Workshop, wanted: str, *, reporter: BatchReporter | None = None,
          public_key: str | None = None, wait: bool = True, ready_timeout: float = 1800,
          force: bool = False, delete_volume: bool = False,
          built: Callable[[Server], None] | None = None,
          clock: readiness.Clock = readiness.Clock()) -> ResetResult:
    """Make the seat `wanted` (see find_seat) fresh: delete its server, then make it
    as `up` makes a missing seat (up.run: the snapshot of the same build when there
    is one and the seat is waited for, a new token, the seat's work volume back).
    Refuses, with nothing removed, an unknown seat, a seat with no server, and
    (unless force) a seat another user launched. delete_volume: the seat's work
    volume is deleted too, and the new server gets a new, empty one. When the new
    server fails, its launch removes what it made and the error says the seat is
    to be made again with `up`. built: as for up.run."""
    reporter = reporter or NullBatchReporter()
    started = clock.now()
    seat = find_seat(workshop, wanted)
    path = workshop.path or "FILE"
    with provider.remembering():
        old = seats_of(provider, workshop).get(seat.name)
        if old is None:
            raise errors.BadRequest(
                f"seat {seat.name} of workshop {workshop.name} has no server to reset "
                "(it was never made, or was deleted)",
                f"make it with: vmbinder workshop up {path} (it makes only the missing seats)")
        if not force:
            scope.refuse_others(provider, [old], "seats",
                                f"vmbinder workshop reset --force {path} {seat.name}",
                                ("resetting", "reset", "reset"))
        seat_spec(workshop, seat, public_key=public_key, target=provider)  # refused now, not later
        reporter.seat(seat.name, "delete", f"removing server {old.id}")
        removed = provider.delete(old)
        volume = _work_volume(provider, workshop, seat)
        if volume is not None:
            reporter.seat(seat.name, "delete", f"waiting for {volume.name} to be detached")
            volume = _until_detached(provider, volume.name, DETACH_TIMEOUT, clock, path)
        if volume is not None and delete_volume:
            removed += provider.delete_volume(volume)
            volume = None
        try:
            made = run(provider, replace(workshop, seats=(seat,)), reporter=reporter,
                       public_key=public_key, parallel=1, wait=wait, ready_timeout=ready_timeout,
                       built=built)
            (result,) = made.seats
            if result.action == FAILED:
                raise result.error
        except errors.VmbinderError as exc:
            exc.hint = "\n".join(filter(None, (
                exc.hint, f"the seat's old server ({old.id}) was removed; make the seat again "
                          f"with: vmbinder workshop up {path}")))
            raise
    return ResetResult(seat, old, result.server, removed, volume.name if volume else None,
                       made.snapshot, round(clock.now() - started, 1))

