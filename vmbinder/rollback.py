"""Undoing a failed attempt: what a launch, an upload or a snapshot created (its
Ledger) removed newest first, and the error saying what was removed or naming
each leftover with the command that removes it."""

from __future__ import annotations

import logging
from typing import Protocol

from vmbinder import errors
from vmbinder.providers.base import Ledger

log = logging.getLogger(__name__)

#: The phase every progress event of a rollback is tagged with.
ROLLBACK = "rollback"


class Reporter(Protocol):  # lifecycle.Reporter, as far as a rollback uses it
    def phase(self, phase: str, detail: str = "") -> None: ...


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

