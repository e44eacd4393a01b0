"""Lifetimes: how long a server may hold its resources, and what happens then.

A launch with --lifetime (or a workshop's lifetime) records when it ends,
vmbinder:expires (UTC, to the minute), and what then happens to it,
vmbinder:at-end: shelve (no cores held), stop, or delete. `vmbinder status`
counts down to it and `vmbinder reap --expired` acts on servers past it.
Pure: the time is an argument."""

from __future__ import annotations

import datetime
import re

from vmbinder.errors import BadRequest

SHELVE, STOP, DELETE = "shelve", "stop", "delete"
AT_END = (SHELVE, STOP, DELETE)
#: What an idle server does: never delete (idleness is no reason to lose work).
IDLE_ACTIONS = (SHELVE, STOP)
#: What each action does, in a sentence's middle ("... then it is <said>").
SAID = {SHELVE: "shelved", STOP: "stopped", DELETE: "deleted"}

DURATION_RE = re.compile(r"\A(\d{1,5})\s*(m|min|h|d)\Z")
UNITS = {"m": 60, "min": 60, "h": 3600, "d": 86400}
#: How a duration is written, for messages.
WRITTEN = "minutes, hours or days: 90m, 8h, 3d"


def parse_duration(text: str) -> int | None:
    """Seconds for 90m, 8h, 3d; None when text is not such a duration (or is zero)."""
    m = DURATION_RE.match(text.strip().lower())
    if not m or int(m.group(1)) == 0:
        return None
    return int(m.group(1)) * UNITS[m.group(2)]


def duration(text: str, option: str) -> int:
    """parse_duration, or BadRequest naming the option."""
    seconds = parse_duration(text)
    if seconds is None:
        raise BadRequest(f"invalid {option} {text!r}: not a duration", f"write {WRITTEN}")
    return seconds


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def expires_at(seconds: int, start: datetime.datetime) -> str:
    """When a lifetime of seconds from start ends, as recorded: 2026-12-07T05:42Z."""
    end = start + datetime.timedelta(seconds=seconds)
    return end.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")


def parse_time(text: str | None) -> datetime.datetime | None:
    """A recorded time (vmbinder:expires, a server's created), else None."""
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def span(seconds: float) -> str:
    """1 d 2 h, 7 h 58 min, 12 min, 0 min: a duration as a person reads it."""
    minutes = int(abs(seconds) // 60)
    days, hours, mins = minutes // 1440, minutes % 1440 // 60, minutes % 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {mins} min" if mins else f"{hours} h"
    return f"{mins} min"


def left(expires: datetime.datetime, at: datetime.datetime) -> float:
    """Seconds left until expires (negative once past)."""
    return (expires - at).total_seconds()


def countdown(expires_text: str | None, action: str | None, at: datetime.datetime) -> str | None:
    """`ends 2026-12-07T05:42Z (in 7 h 58 min), then it is shelved`, or `ended ...
    ago`; None for a server without a lifetime."""
    expires = parse_time(expires_text)
    if expires is None:
        return None
    seconds = left(expires, at)
    when = f"in {span(seconds)}" if seconds > 0 else f"{span(seconds)} ago"
    verb = "ends" if seconds > 0 else "ended"
    then = f", then it is {SAID[action]}" if action in SAID else ""
    return f"{verb} {expires_text} ({when}){then}"


def expired(expires_text: str | None, at: datetime.datetime) -> bool:
    expires = parse_time(expires_text)
    return expires is not None and left(expires, at) <= 0
