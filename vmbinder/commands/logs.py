"""`vmbinder logs`: the guest's build log (every step's commands, repo2docker's
build as readable lines), read through the server's token-protected status
service; -f follows it as it grows."""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING

import click

from vmbinder import errors
from vmbinder.commands.output import format_option, stderr
from vmbinder.commands.servers import FIND_ALL, all_option

if TYPE_CHECKING:
    from vmbinder.commands.context import Context


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing the log as it grows (Ctrl-C ends).")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=0,
              help="Only the last N lines [default: all].")
@all_option(FIND_ALL)
@format_option
@click.pass_obj
def logs(obj: Context, name, follow, lines, everyone, fmt):
    """Print the build log of a server's environment (the guest's commands and
    repo2docker's output), token-protected like the environment itself.

    It is read from the server's status service through its URL; when that
    does not answer (or the server was launched with --expose ssh), through
    SSH, the host key checked against the console; and when the status service
    does not run at all, the log file itself over SSH (with sudo)."""
    from vmbinder import guestlog, scope

    if follow and fmt == "json":
        raise errors.BadRequest("--follow prints text as it comes; it has no JSON form",
                                "leave out --format json, or --follow")
    server = scope.find(obj.provider, name, everyone=everyone, command="logs")
    reader = guestlog.Reader(obj.provider, server)
    with contextlib.closing(reader):
        _print(reader, server, follow, lines, fmt)


def _print(reader, server, follow: bool, lines: int, fmt: str) -> None:
    from vmbinder import guestlog

    text, last = "", None
    for chunk in guestlog.read_all(reader):
        text, last = text + chunk.text, chunk
    if fmt == "json":
        click.echo(json.dumps({"name": server.name, "log": guestlog.tail(text, lines),
                               "size": last.size, "phase": last.phase, "status": last.status,
                               "ready": last.ready}))
        return
    click.echo(guestlog.tail(text, lines), nl=False)
    if follow:
        try:
            guestlog.follow(reader, lambda t: click.echo(t, nl=False), sleep=time.sleep,
                            offset=last.offset)
        except KeyboardInterrupt:
            stderr().print(f"stopped following {server.name}'s log")
    elif fmt == "table" and last.status:
        stderr().print(f"{server.name}: step {last.phase} {last.status}"
                       + ("; the environment answers" if last.ready else ""))
