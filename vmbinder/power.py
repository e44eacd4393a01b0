"""Stop, start, shelve and unshelve servers by name. Every name is checked first:
an unknown one, or (unless force) a server another user launched, refuses them
all before anything changes. Then each server in turn; after start and
unshelve its environment is waited for, as after a launch, at the same URL with
the same token (the address stays: see the providers' stop and shelve), unless
stop or shelve released it (release_ip): then start and unshelve give the server
a new one, and new URLs. act_on is one server's verb, for callers that find and
check the servers themselves (a workshop's seats, many at once)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from vmbinder import errors, lifecycle, readiness, scope
from vmbinder.providers.base import ACTIVE, SHELVED, STOPPED, Provider, Removed, Server

VERBS = ("stop", "start", "shelve", "unshelve")
#: The state each verb brings a server to.
AFTER = {"stop": STOPPED, "start": ACTIVE, "shelve": SHELVED, "unshelve": ACTIVE}
#: The verbs after which the environment is waited for.
WAKES = ("start", "unshelve")
#: The verbs that can release the server's address (release_ip).
RELEASES = ("stop", "shelve")
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
    #: What release_ip gave back to the cloud (its floating IP).
    released: tuple[Removed, ...] = ()

    @property
    def action(self) -> str:
        return DONE[self.verb] if self.changed else f"already {AFTER[self.verb]}"


def check(provider: Provider, verb: str, release_ip: bool = False) -> None:
    """ValueError for a verb that is not a power verb (or releases no address with
    release_ip); the target's refusal of one it does not do."""
    if verb not in VERBS or (release_ip and verb not in RELEASES):
        raise ValueError(f"{verb!r} is not one of {RELEASES if release_ip else VERBS}")
    if not provider.supports(verb):
        raise provider.unsupported(verb)
    if release_ip and not provider.supports("release_ip"):
        raise errors.BadRequest(f"--release-ip: servers on the {provider.kind} target have no "
                                "floating IP to give back", f"{verb} without --release-ip")


def act_on(provider: Provider, verb: str, server: Server, reporter: lifecycle.Reporter | None = None,
           *, wait: bool = True, timeout: float = 1800, extra_roots: str | None = None,
           clock: readiness.Clock | None = None, release_ip: bool = False) -> Outcome:
    """verb on one server already found and checked (see act, and the workshop
    seats of vmbinder.workshops.power); with wait, start and unshelve return once
    the environment answers. clock: the wait's (its sleep may end it early).
    release_ip (stop and shelve): the server's address is given back first."""
    check(provider, verb, release_ip)
    reporter = reporter or lifecycle.NullReporter()
    t0 = time.monotonic()
    changed = server.state != AFTER[verb]
    released: list[Removed] = []
    if release_ip:
        reporter.phase(verb, f"releasing the address of {server.name}")
        server, released = provider.release_ip(server)
        changed = True
    reporter.phase(verb, f"{DOING[verb]} {server.name}")
    server = getattr(provider, verb)(server)
    ready = None
    if verb in WAKES and wait:
        server = lifecycle.wait_ready(provider, server, reporter, timeout=timeout,
                                      extra_roots=extra_roots, clock=clock or readiness.Clock())
        ready = True
    return Outcome(server, verb, changed, round(time.monotonic() - t0, 1), ready, tuple(released))


def act(provider: Provider, verb: str, names: list[str], reporter: lifecycle.Reporter | None = None,
        *, force: bool = False, wait: bool = True, timeout: float = 1800,
        extra_roots: str | None = None, release_ip: bool = False) -> list[Outcome]:
    """verb on each named server; with wait, start and unshelve return once the
    environment answers (ReadyTimeout, naming the server, when it does not)."""
    check(provider, verb, release_ip)
    servers = scope.named(provider, names, force=force, doing=(DOING[verb], DONE[verb], verb))
    return [act_on(provider, verb, server, reporter, wait=wait, timeout=timeout,
                   extra_roots=extra_roots, release_ip=release_ip) for server in servers]
