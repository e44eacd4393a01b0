"""`vmbinder reap`: put away the servers whose lifetime has ended, or that are
idle, from any machine with the project's credentials, safely from cron.

Each server past its vmbinder:expires is shelved, stopped or deleted: as its
vmbinder:at-end says (the target's default when it says nothing), or as the
action given; then vmbinder:ended records that it was, so a server brought back
afterwards runs on (the guest records it too when it acted itself). With idle,
each running server whose guest reports no Jupyter activity for its --idle time
(or idle_for, for those launched without one) is put away as its
vmbinder:idle-action says. A server already there is left alone, so reap can
run every few minutes. One server failing does not stop the others; the caller
sees which. Runs never overlap: the second waits for nothing and says the first
holds the lock. A deleted server's work volume is kept, as with `vmbinder delete`."""

from __future__ import annotations

import datetime
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmbinder import errors, lifetime, power, scope
from vmbinder.lifetime import DELETE, SHELVE, STOP
from vmbinder.providers.base import ACTIVE, SHELVED, STOPPED, Provider, Server

#: The state each action leaves a server in (deleted: gone).
LEAVES = {SHELVE: SHELVED, STOP: STOPPED}
#: Results of one server.
ACTED, WOULD, FAILED = "done", "would", "failed"


@dataclass(frozen=True)
class Reaped:
    server: Server
    #: Why it was chosen: "expired 2026-12-07T05:42Z (12 min ago)".
    why: str
    action: str
    #: ACTED, WOULD (a dry run) or FAILED.
    result: str
    detail: str = ""


def lock_path(target: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return base / "vmbinder" / f"reap-{target}.lock"


@contextmanager
def lock(target: str) -> Iterator[Path]:
    """Hold the reap lock of one cloud (target), or raise Busy at once."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.Busy(f"another vmbinder reap of {target} is running (it holds {path})",
                       "nothing was done; the next run acts on what is left") from None
        yield path


def expired(servers: list[Server], at: datetime.datetime) -> list[tuple[Server, str]]:
    """The servers past their lifetime at `at` whose end has not acted yet, each with why."""
    return [(s, lifetime.countdown(s.meta("expires"), None, at) or "")
            for s in servers if lifetime.expired(s.meta("expires"), at) and not s.meta("ended")]


def idle_seconds(guest: dict | None) -> float | None:
    """How long the guest has seen no Jupyter activity, by its own report (None:
    it does not say: not ready, not answering, or not watching)."""
    seen = (guest or {}).get("care_seen") or {}
    if not (guest or {}).get("ready") or "last" not in seen or "checked" not in seen:
        return None
    return seen["checked"] - max(seen["last"], seen.get("watching_since") or 0)


def idle(provider: Provider, servers: list[Server], idle_for: int | None,
         observe=None) -> list[tuple[Server, str]]:
    """The running servers idle for at least their --idle (else idle_for), each with why."""
    from vmbinder import lifecycle

    observe = observe or lifecycle.observe
    found = []
    for server in servers:
        limit = int(server.meta("idle") or 0) or idle_for
        if not limit or server.state != ACTIVE:
            continue
        try:
            _, guest = observe(provider, server)
        except errors.VmbinderError:
            continue
        seconds = idle_seconds(guest)
        if seconds is not None and seconds >= limit:
            found.append((server, f"idle for {lifetime.span(seconds)} (limit {lifetime.span(limit)})"))
    return found


def action_for(provider: Provider, server: Server, action: str | None) -> str:
    """The action given, else the server's recorded at-end, else the target's default."""
    return action or server.meta("at-end") or provider.target_defaults.at_end


def reap(provider: Provider, *, action: str | None = None, everyone: bool = False,
         dry_run: bool = False, at: datetime.datetime | None = None, reporter=None,
         expired_ones: bool = True, idle_ones: bool = False, idle_for: int | None = None,
         observe=None) -> list[Reaped]:
    """Act on every expired server, and with idle_ones every idle one (this
    user's; with everyone, the project's)."""
    at = at or lifetime.now()
    if action and action != DELETE and not provider.supports(action):
        raise provider.unsupported(action)
    servers = provider.list_owned()
    if not everyone:
        servers = scope.whose(provider, servers)[0]
    results = []
    chosen = expired(servers, at) if expired_ones else []
    for server, why in chosen:
        verb = action_for(provider, server, action)
        if verb != DELETE and server.state == LEAVES.get(verb):
            continue  # as its lifetime wants it already (shelved or stopped by hand)
        results.append(_one(provider, server, why, verb, dry_run, reporter, record_end=True))
    if idle_ones:
        taken = {s.id for s, _ in chosen}
        for server, why in idle(provider, [s for s in servers if s.id not in taken], idle_for,
                                observe):
            verb = action or server.meta("idle-action") or provider.target_defaults.at_end
            results.append(_one(provider, server, why, verb, dry_run, reporter))
    return results


def _one(provider: Provider, server: Server, why: str, verb: str, dry_run: bool,
         reporter, record_end: bool = False) -> Reaped:
    """One server put away; with record_end, vmbinder:ended recorded first (Nova
    takes no metadata once a server is shelved), and cleared if the action fails."""
    if verb != DELETE and not provider.supports(verb):
        return Reaped(server, why, verb, FAILED, str(provider.unsupported(verb).message))
    if dry_run:
        return Reaped(server, why, verb, WOULD)
    recorded = False
    try:
        if record_end and verb != DELETE:
            server, recorded = provider.set_metadata(server, {"ended": verb}), True
        if verb == DELETE:
            removed = provider.delete(server)
            detail = ", ".join(f"{r.kind} {r.name or r.id}" for r in removed)
        else:
            out = power.act_on(provider, verb, server, reporter, wait=False)
            server, detail = out.server, f"{out.seconds:.0f} s"
    except errors.VmbinderError as exc:
        if recorded:
            try:
                server = provider.set_metadata(server, {"ended": ""})
            except errors.VmbinderError:
                pass  # reported below; the next reap finds it ended and leaves it
        return Reaped(server, why, verb, FAILED, exc.message)
    return Reaped(server, why, verb, ACTED, detail)
