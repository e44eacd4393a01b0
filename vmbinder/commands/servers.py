"""`vmbinder list`, `status`, `url` and `delete`: the servers this project owns,
the user's own unless --all (--force for delete; see vmbinder.scope)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from vmbinder.commands.output import (
    Progress,
    Quiet,
    format_option,
    print_removed,
    print_server,
    server_doc,
    stderr,
    stdout,
)

if TYPE_CHECKING:
    from vmbinder.commands.context import Context


def all_option(help_text: str):
    """`--all`: the servers of every user of the project, not only yours."""
    return click.option("--all", "everyone", is_flag=True, help=help_text)


#: --all of status and url.
FIND_ALL = "Find NAME among the servers of every user of the project [default: yours]."


@click.command("list")
@all_option("Every vmbinder server of the project, with who launched it [default: yours].")
@format_option
@click.pass_obj
def list_(obj: Context, everyone, fmt):
    """List your vmbinder servers in this project (--all: everyone's)."""
    from vmbinder import lifecycle, scope

    servers = obj.provider.list_owned()
    mine, others = scope.whose(obj.provider, servers)
    shown = servers if everyone else mine
    user = obj.provider.current_owner()
    docs = [server_doc(s, lifecycle.access(s, with_token=False)) for s in shown]
    keys = ("name", "status", "address", "repo") + (("owner",) if everyone else ())
    if fmt == "json":
        click.echo(json.dumps(docs, indent=2))
    elif fmt == "value":
        for d in docs:
            click.echo("\t".join(str(d[k] or "") for k in keys))
    else:
        from rich.table import Table
        from rich.text import Text

        columns = ("name", "status", "address", "source", "ref", "created")
        table = Table(*columns, *(("owner",) if everyone else ()))
        for column in table.columns:
            column.overflow = "fold"  # wrap long values, never cut them
        for d in docs:
            # Text: what servers record is shown as written, never read as rich markup.
            row = [Text(d[k] or "") for k in ("name", "status", "address", "repo", "ref", "created")]
            if everyone:
                row.append(Text("you" if user and d["owner"] == user else d["owner"] or ""))
            table.add_row(*row)
        stdout().print(table)
        if not docs:
            stderr().print("no vmbinder servers of yours in this project" if others
                           else "no vmbinder servers in this project")
        if others and not everyone:
            stderr().print(f"{len(others)} more launched by other users of the project: "
                           "vmbinder list --all")


@click.command()
@click.argument("name")
@all_option(FIND_ALL)
@format_option
@click.pass_obj
def status(obj: Context, name, everyone, fmt):
    """Show a server's state, address, source and URLs."""
    from vmbinder import lifecycle, scope

    # What the guest reports now (its step, a failure), asked through its URL, or
    # through SSH for --expose ssh; once it is ready, what it found is recorded.
    server, guest = lifecycle.observe(obj.provider, scope.find(obj.provider, name,
                                                               everyone=everyone))
    acc = lifecycle.access(server, with_token=False)
    work, data = server.meta("volume"), [d for d in (server.meta("data") or "").split(",") if d]
    usage = used(obj.provider, server)
    if fmt == "json":
        click.echo(json.dumps({**server_doc(server, acc), "volume": work, "data": data,
                               "guest": guest, "failed": server.meta("failed"), "usage": usage},
                              indent=2))
        return
    print_server(fmt, server, acc, guest=guest, usage=usage)
    if fmt == "table":
        from rich.markup import escape

        if work or data:
            said = [f"work volume {work} (kept when the server is deleted)"] if work else []
            said += [f"data volumes {', '.join(data)} (read-only)"] if data else []
            stderr().print(escape("volumes: " + "; ".join(said)))
        if not acc.ssh_only:
            stderr().print(f"URLs without the token; with it: vmbinder url {server.name}")


def used(provider, server) -> dict | None:
    """The core-hours the server has held so far (vmbinder.costs), where the
    target keeps its actions and says its cores; None elsewhere."""
    from vmbinder import costs, lifetime

    if not (server.cores and provider.supports("history")):
        return None
    spent = costs.held(provider.history(server), lifetime.parse_time(server.created),
                       lifetime.now())
    return costs.so_far(spent, server.cores)


@click.command()
@click.argument("name")
@click.option("--ui", type=click.Choice(("tree", "lab", "rstudio", "shiny", "nteract")),
              help="Which interface [default: the launch's open path, else lab].")
@all_option(FIND_ALL)
@format_option
@click.pass_obj
def url(obj: Context, name, ui, everyone, fmt):
    """Print the URL of a server's environment, token included."""
    from vmbinder import https, lifecycle, scope

    server = lifecycle.settle(obj.provider, scope.find(obj.provider, name, everyone=everyone,
                                                           command="url"))
    link = lifecycle.url(server, ui)
    found = lifecycle.outcome(server)
    if fmt == "json":
        click.echo(json.dumps({"name": server.name, "ui": ui, "url": link,
                               "certificate": found.as_dict() if found else None}))
        return
    click.echo(link)
    if fmt == "table" and server.meta("tls"):
        from rich.markup import escape

        stderr().print(f"certificate: {escape(https.describe(found, server.meta('acme-ca')))}")
        if found and found.issuer == https.INTERNAL:
            stderr().print("a browser warns about this certificate: open the warning's "
                           "certificate details and compare the root's SHA-256 fingerprint")


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True,
              help="Delete servers other users of the project launched too.")
@click.option("--delete-volumes", is_flag=True,
              help="Delete their work volumes too (never their data volumes).")
@format_option
@click.pass_obj
def delete(obj: Context, names, force, delete_volumes, fmt):
    """Delete servers and their floating IPs.

    A server another user of the project launched is deleted only with --force.
    Its work volume is kept (and named) unless --delete-volumes."""
    from rich.markup import escape

    from vmbinder import lifecycle
    from vmbinder.commands import volumes

    err = stderr()
    provider = obj.provider
    # Read before they go: which work volume each server has (vmbinder:volume).
    servers = [s for s in provider.list_owned() if s.name in names or s.id in names]
    reporter = Quiet() if (obj.quiet or fmt == "json") else Progress(err)
    try:
        removed = lifecycle.delete(provider, list(names), reporter, force=force)
        more, kept = volumes.after_server_delete(provider, servers, delete_volumes)
    finally:
        reporter.stop()
    print_removed(fmt, removed + more, err)
    for volume, why in kept:
        err.print(escape(volumes.kept_line(volume, why)))
