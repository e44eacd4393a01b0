"""`vmbinder ssh` and `vmbinder tunnel`: SSH to a server, its host key checked
against the keys its console printed (see vmbinder.remote)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vmbinder.commands.output import emit, format_option, stderr
from vmbinder.commands.servers import FIND_ALL, all_option

if TYPE_CHECKING:
    from vmbinder.commands.context import Context


def login_options(f):
    """--user and -i/--identity, the same on ssh and tunnel."""
    f = click.option("-i", "--identity", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
                     help="Private key to log in with [default: ~/.ssh/id_ed25519, id_ecdsa, "
                          "id_rsa, and the SSH agent's keys].")(f)
    return click.option("--user", "-l", metavar="USER",
                         help="User to log in as [default: the image's login user, recorded "
                              "at launch].")(f)


def _session(obj: Context, name: str, everyone: bool, user, identity, command: str):
    from vmbinder import remote, scope

    server = scope.find(obj.provider, name, everyone=everyone, command=command)
    ask = None
    if sys.stdin.isatty():
        def ask(path: Path) -> str:
            return click.prompt(f"passphrase for {path}", hide_input=True, default="",
                                show_default=False, err=True)
    session = remote.connect(obj.provider, server, user=user,
                             identity=Path(identity) if identity else None, passphrase=ask)
    return server, session


@click.command()
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@login_options
@all_option(FIND_ALL)
@format_option
@click.pass_obj
def ssh(obj: Context, name, command, user, identity, everyone, fmt):
    """Log in to a server over SSH, or run COMMAND there (after --).

    The server's host key must be one that cloud-init printed on its console:
    nothing is asked and ~/.ssh/known_hosts is neither read nor written. With
    COMMAND, its words are joined with spaces and run by the login shell, as
    ssh does; its output comes back as it is written and its exit status is
    vmbinder's (with --format json: once it ends, one JSON document with its
    stdout, stderr and exit status). Without, an interactive shell.

    \b
      vmbinder ssh NAME
      vmbinder ssh NAME -- docker ps -a
    """
    if fmt == "json" and not command:
        from vmbinder import errors

        raise errors.BadRequest("a shell has no results to print as JSON",
                                "give a COMMAND after --, or leave --format out")
    server, session = _session(obj, name, everyone, user, identity, "ssh")
    with session:
        sys.stdout.flush()
        sys.stderr.flush()
        if command:
            stdin = None if sys.stdin.isatty() else sys.stdin.buffer
            out, err = ((io.BytesIO(), io.BytesIO()) if fmt == "json"
                        else (sys.stdout.buffer, sys.stderr.buffer))
            status = session.run(" ".join(command), stdin=stdin, stdout=out, stderr=err)
            if fmt == "json":
                click.echo(json.dumps({
                    "name": server.name, "command": " ".join(command), "exit_status": status,
                    "stdout": out.getvalue().decode(errors="replace"),
                    "stderr": err.getvalue().decode(errors="replace")}))
        else:
            status = session.shell(sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno(),
                                   term=os.environ.get("TERM") or "xterm")
    if status:
        sys.exit(status)


@click.command()
@click.argument("name")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Port on this machine's 127.0.0.1 [default: a free one].")
@login_options
@all_option(FIND_ALL)
@format_option
@click.pass_obj
def tunnel(obj: Context, name, port, user, identity, everyone, fmt):
    """Reach a server's Jupyter over SSH, on this machine's 127.0.0.1.

    Forwards 127.0.0.1:PORT here to Jupyter on the server (its loopback, plain
    HTTP) through SSH, the host key checked against the server's console, and
    prints the URLs with the token. For servers whose HTTPS port is not public;
    it works for every server. Runs until Ctrl-C.
    """
    from vmbinder import remote

    server, session = _session(obj, name, everyone, user, identity, "tunnel")
    err = stderr()
    with session, remote.listen(port) as listener:
        port = listener.getsockname()[1]
        acc = remote.tunnel_access(server, port)
        rows = [("open url", acc.open_url)] if acc.open_url else []
        rows += [(f"{k} url", v) for k, v in acc.urls.items()]
        doc = {"name": server.name, "port": port, "open_url": acc.open_url, "urls": acc.urls}
        if fmt == "json":
            click.echo(json.dumps(doc))  # one line, for a program reading it while this runs
        else:
            emit(fmt, doc, rows, value=acc.open_url or acc.urls["lab"])
        host, remote_port = remote.jupyter_address()
        err.print(f"forwarding 127.0.0.1:{port} to Jupyter on {server.name} ({host}:{remote_port} "
                  "there) over SSH; press Ctrl-C to stop", soft_wrap=True)

        def refused(message: str) -> None:
            from rich.markup import escape

            err.print(f"[yellow]warning:[/] {escape(message)}; is the environment running? "
                      f"vmbinder status {server.name}", soft_wrap=True)

        try:
            session.forward(listener, (host, remote_port), on_error=refused)
        except KeyboardInterrupt:
            err.print(f"tunnel to {server.name} closed")
