"""What servers hold and what that costs, in core-hours: the figure allocations
such as Jetstream2 charge (its service units are core-hours times a flavor
factor, 1 for CPU flavors).

Before a launch (its dry run): the cores, memory and disk of the flavor, and the
core-hours over the lifetime. After: the core-hours held so far, from the
cloud's record of the server's actions (Nova's instance actions): running and
stopped servers hold their cores, an offloaded shelved one does not. Jetstream2
charges a stopped server 50 %, a shelved one nothing. Pure: times are arguments."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

#: What Jetstream2 charges of a flavor's rate in each state.
JETSTREAM2_RATE = {"running": 1.0, "stopped": 0.5, "shelved": 0.0}
#: Nova instance actions and the state each leaves the server in.
AFTER_ACTION = {
    "create": "running", "start": "running", "unshelve": "running", "reboot": "running",
    "rebuild": "running", "resume": "running", "unpause": "running",
    "stop": "stopped", "suspend": "stopped", "pause": "stopped",
    # A cloud that offloads at once records no shelveOffload; Jetstream2 charges
    # a shelved server nothing either way.
    "shelve": "shelved", "shelveOffload": "shelved",
}


@dataclass(frozen=True)
class Size:
    """What one server holds while it runs."""

    flavor: str
    cores: int
    memory_mb: int
    disk_gb: int

    def as_dict(self) -> dict:
        return {"flavor": self.flavor, "cores": self.cores, "memory_mb": self.memory_mb,
                "disk_gb": self.disk_gb}


@dataclass(frozen=True)
class Action:
    """One entry of a server's action record: what was done, and when."""

    action: str
    at: datetime.datetime


def planned(sizes: list[Size], lifetime_s: int | None, volume_gb: int = 0) -> dict:
    """What a launch (or a workshop's seats) will hold, and the core-hours over
    its lifetime (None: no lifetime, so per hour)."""
    cores = sum(s.cores for s in sizes)
    return {
        "servers": len(sizes),
        "cores": cores,
        "memory_mb": sum(s.memory_mb for s in sizes),
        "disk_gb": sum(s.disk_gb for s in sizes),
        "volume_gb": volume_gb * len(sizes),
        "core_hours_per_hour": cores,
        "lifetime_s": lifetime_s,
        "core_hours": round(cores * lifetime_s / 3600, 1) if lifetime_s else None,
    }


def describe_plan(plan: dict) -> list[tuple[str, str]]:
    """The rows a dry run prints."""
    many = f"{plan['servers']} servers: " if plan["servers"] != 1 else ""
    holds = (f"{many}{plan['cores']} cores, {plan['memory_mb']} MB memory, "
             f"{plan['disk_gb']} GB disk" + (f", {plan['volume_gb']} GB of work volumes"
                                             if plan["volume_gb"] else ""))
    if plan["core_hours"] is not None:
        from vmbinder.lifetime import span

        cost = f"{plan['core_hours']:g} core-hours over the lifetime ({span(plan['lifetime_s'])})"
    else:
        cost = f"{plan['core_hours_per_hour']} core-hours per hour it runs (no lifetime)"
    return [("holds", holds), ("costs", cost)]


def held(actions: Iterable[Action], created: datetime.datetime | None,
         now: datetime.datetime) -> dict[str, float]:
    """Seconds spent running, stopped and shelved, from the first action (or
    created) until now."""
    spent = dict.fromkeys(JETSTREAM2_RATE, 0.0)
    # since is None exactly while state is: before the first known state.
    state, since = ("running", created) if created else (None, None)
    for act in sorted(actions, key=lambda a: a.at):
        after = AFTER_ACTION.get(act.action)
        if after is None:
            continue
        if since is not None and act.at > since:
            spent[state] += (act.at - since).total_seconds()
        since = act.at if since is None else max(since, act.at)
        state = after
    if since is not None and now > since:
        spent[state] += (now - since).total_seconds()
    return spent


def so_far(spent: dict[str, float], cores: int) -> dict:
    """Core-hours held (running and stopped) and what Jetstream2's rates make of them."""
    hours = {k: v / 3600 for k, v in spent.items()}
    return {
        "cores": cores,
        "seconds": {k: round(v) for k, v in spent.items()},
        "core_hours_held": round(cores * (hours["running"] + hours["stopped"]), 2),
        "core_hours_jetstream2": round(cores * sum(hours[k] * r for k, r in JETSTREAM2_RATE.items()), 2),
    }


def describe_so_far(doc: dict) -> str:
    from vmbinder.lifetime import span

    parts = [f"{span(doc['seconds'][k])} {k}" for k in JETSTREAM2_RATE if doc["seconds"][k]]
    return (f"{doc['core_hours_held']:g} core-hours held so far ({doc['cores']} cores; "
            f"{', '.join(parts) or 'just made'}); at Jetstream2's rates "
            f"{doc['core_hours_jetstream2']:g}")
