"""`vmbinder list`, `status`, `url` and `delete`: the servers this project owns."""

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


@click.command("list")
@format_option
@click.pass_obj
def list_(obj: Context, fmt):
    """List the vmbinder servers of this project."""
    from vmbinder import lifecycle

    servers = obj.provider.list_owned()
    docs = [server_doc(s, lifecycle.access(s, with_token=False)) for s in servers]
    if fmt == "json":
        click.echo(json.dumps(docs, indent=2))
    elif fmt == "value":
        for d in docs:
            click.echo("\t".join(str(d[k] or "") for k in ("name", "status", "address", "repo")))
    else:
        from rich.table import Table

        table = Table("name", "status", "address", "source", "ref", "created")
        for column in table.columns:
            column.overflow = "fold"  # wrap long values, never cut them
        for d in docs:
            table.add_row(d["name"], d["status"], d["address"] or "", d["repo"] or "",
                          d["ref"] or "", d["created"] or "")
        stdout().print(table)
        if not docs:
            stderr().print("no vmbinder servers in this project")


@click.command()
@click.argument("name")
@format_option
@click.pass_obj
def status(obj: Context, name, fmt):
    """Show a server's state, address, source and URLs."""
    from vmbinder import lifecycle

    server = lifecycle.settle(obj.provider, obj.provider.get(name))
    print_server(fmt, server, lifecycle.access(server, with_token=False))
    if fmt == "table":
        stderr().print(f"URLs without the token; with it: vmbinder url {server.name}")


@click.command()
@click.argument("name")
@click.option("--ui", type=click.Choice(("tree", "lab", "rstudio", "shiny", "nteract")),
              help="Which interface [default: the launch's open path, else lab].")
@format_option
@click.pass_obj
def url(obj: Context, name, ui, fmt):
    """Print the URL of a server's environment, token included."""
    from vmbinder import https, lifecycle

    server = lifecycle.settle(obj.provider, obj.provider.get(name))
    link = lifecycle.url(server, ui)
    found = lifecycle.outcome(server)
    if fmt == "json":
        click.echo(json.dumps({"name": server.name, "ui": ui, "url": link,
                               "certificate": found.as_dict() if found else None}))
        return
    click.echo(link)
    if fmt == "table" and server.meta("tls"):
        stderr().print(f"certificate: {https.describe(found, server.meta('acme-ca'))}")
        if found and found.issuer == https.INTERNAL:
            stderr().print("a browser warns about this certificate: open the warning's "
                           "certificate details and compare the root's SHA-256 fingerprint")


@click.command()
@click.argument("names", nargs=-1, required=True)
@format_option
@click.pass_obj
def delete(obj: Context, names, fmt):
    """Delete servers and their floating IPs."""
    from vmbinder import lifecycle

    err = stderr()
    reporter = Quiet() if (obj.quiet or fmt == "json") else Progress(err)
    try:
        removed = lifecycle.delete(obj.provider, list(names), reporter)
    finally:
        reporter.stop()
    print_removed(fmt, removed, err)
