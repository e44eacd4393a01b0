"""Stop, start, shelve and unshelve servers by name. Every name is checked first:
an unknown one, or (unless force) a server another user launched, refuses them
all before anything changes. Then each server in turn; after start and
unshelve its environment is waited for, as after a launch, at the same URL with
the same token (the address stays: see the providers' stop and shelve)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from vmbinder import lifecycle, scope
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


def act(provider: Provider, verb: str, names: list[str], reporter: lifecycle.Reporter | None = None,
        *, force: bool = False, wait: bool = True, timeout: float = 1800,
        extra_roots: str | None = None) -> list[Outcome]:
    """verb on each named server; with wait, start and unshelve return once the
    environment answers (ReadyTimeout, naming the server, when it does not)."""
    if verb not in VERBS:
        raise ValueError(f"{verb!r} is not one of {VERBS}")
    if not provider.supports(verb):
        raise provider.unsupported(verb)
    reporter = reporter or lifecycle.NullReporter()
    servers = scope.named(provider, names, force=force, doing=(DOING[verb], DONE[verb], verb))
    outcomes = []
    for server in servers:
        t0 = time.monotonic()
        changed = server.state != AFTER[verb]
        reporter.phase(verb, f"{DOING[verb]} {server.name}")
        server = getattr(provider, verb)(server)
        ready = None
        if verb in WAKES and wait:
            server = lifecycle.wait_ready(provider, server, reporter, timeout=timeout,
                                          extra_roots=extra_roots)
            ready = True
        outcomes.append(Outcome(server, verb, changed, round(time.monotonic() - t0, 1), ready))
    return outcomes
