"""`vmbinder reap`: act on expired servers (vmbinder.reap), for people and for cron."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import click

from vmbinder.commands.output import Progress, Quiet, format_option, stderr
from vmbinder.lifetime import AT_END

if TYPE_CHECKING:
    from vmbinder.commands.context import Context

SAID = {"done": {"shelve": "shelved", "stop": "stopped", "delete": "deleted",
                 "forget": "removed"},
        "would": {"shelve": "would shelve", "stop": "would stop", "delete": "would delete"}}


@click.command()
@click.option("--expired", is_flag=True,
              help="Servers whose lifetime has ended (launch --lifetime, a workshop's "
                   "lifetime) [default, unless --idle alone is given].")
@click.option("--idle", is_flag=True,
              help="Running servers whose guest has seen no Jupyter activity for their "
                   "--idle time (asked through their URL).")
@click.option("--idle-for", metavar="DURATION",
              help="With --idle: the idle time of servers launched without --idle "
                   "[default: those are left alone].")
@click.option("--action", type=click.Choice(AT_END),
              help="What to do with them [default: what each server's --at-end says].")
@click.option("--all", "everyone", is_flag=True,
              help="The servers of every user of the project [default: yours].")
@click.option("--dry-run", is_flag=True, help="Print what would be done; do nothing.")
@format_option
@click.pass_obj
def reap(obj: Context, expired, idle, idle_for, action, everyone, dry_run, fmt):
    """Shelve, stop or delete the servers whose lifetime has ended, or idle ones.

    Safe from cron: it never asks, runs of one cloud never overlap (a second one
    exits 75 at once), and the exit code is 10 when a server could not be acted on.
    A deleted server's work volume is kept."""
    from rich.markup import escape

    from vmbinder import errors, lifetime
    from vmbinder import reap as reaping

    if idle_for and not idle:
        raise errors.BadRequest("--idle-for is given but not --idle",
                                "add --idle, or leave --idle-for out")
    limit = lifetime.duration(idle_for, "--idle-for") if idle_for else None

    err = stderr()
    target = "local" if obj.is_local else (obj.os_cloud or "env")
    reporter = Quiet() if (obj.quiet or fmt == "json") else Progress(err)
    try:
        with reaping.lock(re.sub(r"[^A-Za-z0-9._-]", "_", target)):
            results = reaping.reap(obj.provider, action=action, everyone=everyone,
                                   dry_run=dry_run, reporter=reporter,
                                   expired_ones=expired or not idle, idle_ones=idle,
                                   idle_for=limit)
            # Servers that deleted themselves (--at-end delete) leave their credential.
            swept = obj.provider.sweep() if not dry_run and obj.provider.supports("sweep") else []
    finally:
        reporter.stop()
    docs = [{"name": r.server.name, "owner": r.server.meta("owner"), "why": r.why,
             "action": r.action, "result": r.result, "detail": r.detail,
             "kept_volume": r.server.meta("volume") if r.action == "delete" else None}
            for r in results]
    docs += [{"name": r.name, "owner": None, "why": "its server is gone", "action": "forget",
              "result": "done", "detail": f"{r.kind} {r.id}", "kept_volume": None,
              "kind": r.kind} for r in swept]
    if fmt == "json":
        click.echo(json.dumps(docs, indent=2))
    elif fmt == "value":
        for d in docs:
            click.echo(f"{d['name']}\t{d['action']}\t{d['result']}")
    else:
        for d in docs:
            said = SAID.get(d["result"], {}).get(d["action"]) or f"could not {d['action']}"
            line = f"{said} {d.get('kind', '')} {d['name']}: {d['why']}".replace("  ", " ")
            if d["detail"]:
                line += f" ({d['detail']})"
            if d["kept_volume"] and d["result"] in ("done", "would"):
                line += f"; its work volume {d['kept_volume']} is kept"
            err.print(escape(line), soft_wrap=True)
        if not docs:
            err.print("nothing to do: no server's lifetime has ended" if not idle else
                      "nothing to do: no server's lifetime has ended and none is idle")
    failed = [d["name"] for d in docs if d["result"] == "failed"]
    if failed:
        raise errors.BatchPartlyFailed(
            f"{len(failed)} of {len(docs)} servers could not be acted on: "
            + ", ".join(failed),
            "see each one's reason above; vmbinder status NAME shows it, and the next "
            "reap tries again")
