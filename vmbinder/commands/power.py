"""`vmbinder stop|start|shelve|unshelve NAME...`: power, from the command line to power.act."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from vmbinder.commands.output import HOLDS, Progress, Quiet, format_option, print_server, stderr

if TYPE_CHECKING:
    from vmbinder.commands.context import Context

HELP = {
    "stop": """Power servers off: each keeps its disk, address and work, and on a cloud
    still holds its cores (Jetstream2 charges a stopped server half its rate).
    vmbinder start brings it back at the same URL with the same token (with
    --release-ip: at a new address, with new URLs).""",
    "start": """Power stopped servers on and wait until each environment answers, at the
    same URL with the same token (on the local target a forwarded port another
    program took meanwhile is chosen again, and the URL says so; a server stopped
    with --release-ip gets a new floating IP, and new URLs).""",
    "shelve": """Shelve servers: the cloud keeps each one's disk as an image and frees its
    cores (Jetstream2 charges nothing for a shelved server); its floating IP,
    and so its URL, and its work stay (--release-ip gives the address back:
    unshelve then gets a new one, with new URLs). vmbinder unshelve brings it back.""",
    "unshelve": """Bring shelved servers back and wait until each environment answers, at
    the same URL with the same token (shelved with --release-ip: at a new
    floating IP, with new URLs).""",
}


def _command(verb: str) -> click.Command:
    wakes = verb in ("start", "unshelve")

    def run(obj: Context, names, force, fmt, no_wait=False, timeout=1800, acme_ca_root=None,
            release_ip=False):
        from rich.markup import escape

        from vmbinder import lifecycle, power

        err = stderr()
        roots = None
        if acme_ca_root:
            with open(acme_ca_root) as fh:
                roots = fh.read()
        reporter = Quiet() if (obj.quiet or fmt == "json") else Progress(err)
        try:
            outcomes = power.act(obj.provider, verb, list(names), reporter, force=force,
                                 wait=not no_wait, timeout=timeout, extra_roots=roots,
                                 release_ip=release_ip)
        finally:
            reporter.stop()
        docs = []
        for out in outcomes:
            acc = lifecycle.access(out.server) if wakes else None
            docs.append({"name": out.server.name, "action": out.action, "status": out.server.state,
                         "cloud_status": out.server.cloud_status, "address": out.server.address,
                         "seconds": out.seconds, "ready": out.ready,
                         "urls": acc.urls if acc else None, "open_url": acc.open_url if acc else None,
                         "released": [r.name for r in out.released]})
            if fmt == "json":
                continue
            for removed in out.released:
                err.print(escape(f"released {removed.kind} {removed.name}: vmbinder "
                                 f"{'unshelve' if verb == 'shelve' else 'start'} gives "
                                 f"{out.server.name} a new one, and new URLs"), soft_wrap=True)
            said = f"{out.action} {out.server.name}" + (f" in {out.seconds:.0f} s" if out.changed else "")
            if out.server.state in HOLDS:
                said += ": it holds " + HOLDS[out.server.state].format(name=out.server.name)
            err.print(escape(said), soft_wrap=True)
            if wakes:
                print_server(fmt, out.server, acc)
        if fmt == "json":
            click.echo(json.dumps(docs, indent=2))
        elif fmt == "value" and not wakes:
            for doc in docs:
                click.echo(f"{doc['name']}\t{doc['status']}")

    params = [
        click.Argument(["names"], nargs=-1, required=True),
        click.Option(["--force"], is_flag=True,
                     help=f"{verb.capitalize()} servers other users of the project launched too."),
    ]
    if verb in ("stop", "shelve"):
        params.append(click.Option(
            ["--release-ip"], is_flag=True,
            help="Give the floating IP back to the cloud: the URL stops working, and "
                 f"{'start' if verb == 'stop' else 'unshelve'} gets a new address and prints "
                 "new URLs."))
    if wakes:
        params += [
            click.Option(["--no-wait"], is_flag=True,
                         help="Return once the cloud says the server runs."),
            click.Option(["--timeout"], type=click.FloatRange(min=1), default=1800, show_default=True,
                         help="Seconds to wait for each environment to answer."),
            click.Option(["--acme-ca-root"], type=click.Path(exists=True, dir_okay=False),
                         metavar="FILE",
                         help="PEM root(s) of the private ACME CA the server's certificate "
                              "is from (as given to launch), to check it."),
        ]
    command = click.Command(verb, params=params, help=HELP[verb],
                            callback=click.pass_obj(run))
    return format_option(command)


stop, start, shelve, unshelve = (_command(v) for v in ("stop", "start", "shelve", "unshelve"))
