"""Stop, start, shelve and unshelve servers by name. Every name is checked first:
an unknown one, or (unless force) a server another user launched, refuses them
all before anything changes. Then each server in turn; after start and
unshelve its environment is waited for, as after a launch, at the same URL with
the same token (the address stays: see the providers' stop and shelve).
act_on is one server's verb, for callers that find and check the servers
themselves (a workshop's seats, many at once)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from vmbinder import lifecycle, readiness, scope
from vmbinder.providers.base import ACTIVE, SHELVED, STOPPED, Provider, Server

VERBS = ("stop", "start", "shelve", "unshelve")
#: The state each verb brings a server to.
AFTER = {"stop": STOPPED, "start": ACTIVE, "shelve": SHELVED, "unshelve": ACTIVE}
#: The verbs after which the environment is waited for.
WAKES = ("start", "unshelve")
DONE = {"stop": "stopped", "start": "started", "shelve": "shelved", "unshelve": "unshelved"}
DOING = {"stop": "stopping", "start": "starting", "shelve": "shelving", "unshelve": "unshelving"}


@dataclass(frozen=True)
class Outcome:
    server: Server
    verb: str
    #: False when the server was in that state already (nothing was asked of the cloud).
    changed: bool
    seconds: float
    #: Whether its environment answered (start and unshelve that waited), else None.
    ready: bool | None = None

    @property
    def action(self) -> str:
        return DONE[self.verb] if self.changed else f"already {AFTER[self.verb]}"


def check(provider: Provider, verb: str) -> None:
    """ValueError for a verb that is not a power verb; the target's refusal of one
    it does not do."""
    if verb not in VERBS:
        raise ValueError(f"{verb!r} is not one of {VERBS}")
    if not provider.supports(verb):
        raise provider.unsupported(verb)


def act_on(provider: Provider, verb: str, server: Server, reporter: lifecycle.Reporter | None = None,
           *, wait: bool = True, timeout: float = 1800, extra_roots: str | None = None,
           clock: readiness.Clock | None = None) -> Outcome:
    """verb on one server already found and checked (see act, and the workshop
    seats of vmbinder.workshops.power); with wait, start and unshelve return once
    the environment answers. clock: the wait's (its sleep may end it early)."""
    check(provider, verb)
    reporter = reporter or lifecycle.NullReporter()
    t0 = time.monotonic()
    changed = server.state != AFTER[verb]
    reporter.phase(verb, f"{DOING[verb]} {server.name}")
    server = getattr(provider, verb)(server)
    ready = None
    if verb in WAKES and wait:
        server = lifecycle.wait_ready(provider, server, reporter, timeout=timeout,
                                      extra_roots=extra_roots, clock=clock or readiness.Clock())
        ready = True
    return Outcome(server, verb, changed, round(time.monotonic() - t0, 1), ready)


def act(provider: Provider, verb: str, names: list[str], reporter: lifecycle.Reporter | None = None,
        *, force: bool = False, wait: bool = True, timeout: float = 1800,
        extra_roots: str | None = None) -> list[Outcome]:
    """verb on each named server; with wait, start and unshelve return once the
    environment answers (ReadyTimeout, naming the server, when it does not)."""
    check(provider, verb)
    servers = scope.named(provider, names, force=force, doing=(DOING[verb], DONE[verb], verb))
    return [act_on(provider, verb, server, reporter, wait=wait, timeout=timeout,
                   extra_roots=extra_roots) for server in servers]
