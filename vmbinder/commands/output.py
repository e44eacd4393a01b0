"""Everything the commands print, in one place.

Results go to stdout, progress and messages to stderr through rich consoles.
Here are the `--format` option (declared once, applied to every command that
prints results), the renderings of a result as a table, JSON or bare values,
the progress reporters, the per-launch debug log and the rendering of errors.
rich is imported only when something is printed, so --help stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import click

from vmbinder import errors

FORMATS = ("table", "json", "value")


def stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def format_option(f):
    """`--format table|json|value`, the same on every command that prints results."""
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        help="How to print results: a table, JSON, or bare values for scripts.",
    )(f)


class Progress:
    """One spinner with step text on stderr."""

    def __init__(self, console, verbose: bool = False):
        self.console = console
        self.verbose = verbose
        self.status = None
        self.last = ""
        self.started = time.monotonic()

    def phase(self, phase: str, detail: str = "") -> None:
        from rich.markup import escape

        logging.getLogger("vmbinder.progress").info("%s: %s", phase, detail)
        text = f"[bold]{phase}[/bold] {escape(detail)}"
        if not self.console.is_terminal:
            # No spinner in a log file: one line per step, without repeats.
            if text != self.last:
                self.console.print(f"{time.monotonic() - self.started:6.1f}s {text}")
                self.last = text
            return
        if self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def output(self, line: str) -> None:
        """A line of the guest's build log: to the debug log, and with verbose
        (launch -v) above the spinner; else only the newest shows, in the step text."""
        logging.getLogger("vmbinder.build").info("%s", line)
        if self.verbose:
            from rich.text import Text

            self.console.print(Text(line))

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


class Quiet:
    """No display (--quiet, --format json): the steps go to the debug log only."""

    def phase(self, phase: str, detail: str = "") -> None:
        logging.getLogger("vmbinder.progress").info("%s: %s", phase, detail)

    def stop(self) -> None:
        pass


class _Redact(logging.Filter):
    """Replaces the token, or with None anything shaped like a token, by <token>."""

    TOKEN_RE = re.compile(r"\b[0-9a-f]{64}\b")

    def __init__(self, secret: str | None):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = (self.TOKEN_RE.sub("<token>", message) if self.secret is None
                    else message.replace(self.secret, "<token>"))
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def debug_log(name: str, token: str | None) -> Path:
    """A debug log per launch. Request bodies (user-data, metadata) never reach
    it: the HTTP libraries log at WARNING only, and the token (any token, when
    None) is redacted."""
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    folder = base / "vmbinder" / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"launch-{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redact(token))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("keystoneauth", "openstack", "urllib3", "stevedore", "os_service_types"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


def server_doc(server, acc) -> dict:
    """A server and its URLs (acc, from lifecycle.access) as the JSON document commands print."""
    doc = {
        "name": server.name,
        "id": server.id,
        "status": server.state,
        "cloud_status": server.cloud_status,
        "address": server.address,
        "fault": server.fault,
        "created": server.created,
        "flavor": server.flavor,
        "owner": server.meta("owner"),
    }
    from vmbinder import https

    for key in ("repo", "ref", "commit", "record", "subdir", "source", "repo2docker", "version",
                "hostname", "tls"):
        doc[key] = server.meta(key)
    doc["expose"] = server.meta("expose") or "https"
    doc["expires"], doc["at_end"] = server.meta("expires"), server.meta("at-end")
    from vmbinder import lifecycle

    doc["open"], doc["urlpath"] = lifecycle.opens(server)
    found = https.recorded_outcome(server.meta)
    doc["certificate"] = found.as_dict() if found else None
    doc["user_data_via"] = server.meta("user-data-via")
    if acc is not None:
        doc["urls"] = acc.urls
        doc["open_url"] = acc.open_url
        doc["absent"] = acc.absent
    return doc


def guest_rows(server, guest: dict | None) -> list[tuple[str, str]]:
    """What status shows of the guest's own report: its step, elapsed time, the
    error of a failed step; a kept failed build says so even when the guest is silent."""
    rows = []
    if guest:
        step = f"{guest.get('phase') or 'starting'} {guest.get('status') or ''}".strip()
        rows.append(("step", "ready: the environment answers" if guest.get("ready") else step))
        if guest.get("elapsed") is not None:
            rows.append(("elapsed", f"{guest['elapsed']} s since the guest started"))
        if guest.get("error"):
            rows.append(("error", guest["error"]))
        rows += care_rows(server, guest)
    if server.meta("failed"):
        rows.append(("failed", f"the {server.meta('failed')} failed; the server is kept: "
                               f"vmbinder logs {server.name}"))
    return rows


def care_rows(server, guest: dict) -> list[tuple[str, str]]:
    """What the guest's care saw (launch --idle) and the error it met, if any."""
    from vmbinder import lifetime, reap

    rows = []
    idle = reap.idle_seconds(guest)
    if idle is not None and server.meta("idle"):
        busy = (guest.get("care_seen") or {}).get("busy")
        said = "in use now" if idle < 60 else f"idle for {lifetime.span(idle)}"
        rows.append(("activity", f"{said}{f' ({busy} cells running)' if busy else ''}; put away "
                                 f"after {lifetime.span(int(server.meta('idle')))} idle"))
    if guest.get("care_error"):
        rows.append(("care error", guest["care_error"]))
    return rows


#: What a server that does not run still holds (status), and how it comes back.
HOLDS = {
    "stopped": "its disk, address and work; on a cloud also its cores (vmbinder start {name})",
    "shelved": "its address and work, its disk as an image; no cores (vmbinder unshelve {name})",
}


def print_server(fmt: str, server, acc, guest: dict | None = None, usage: dict | None = None) -> None:
    """One server for launch and status: aligned lines, JSON, or its URL (else its
    address); with the certificate it got and why earlier tries failed, and what
    the guest reports (status)."""
    from vmbinder import https, lifetime

    doc = server_doc(server, acc)
    if guest is not None or server.meta("failed"):
        doc["guest"], doc["failed"] = guest, server.meta("failed")
    found = https.recorded_outcome(server.meta)
    rows = [(k, doc[k]) for k in ("name", "id", "status", "address", "repo", "ref", "commit", "record",
                                   "subdir", "open", "urlpath", "repo2docker", "user_data_via", "fault")
            if doc[k]]
    if not server.address and server.meta("released"):
        rows.insert(3, ("address", "released: vmbinder start (or unshelve, when shelved) gives "
                                   "it a new one"))
    if server.state in HOLDS:
        rows.insert(3, ("holds", HOLDS[server.state].format(name=server.name)))
    ends = lifetime.countdown(doc["expires"], doc["at_end"], lifetime.now())
    if ends:
        rows.insert(3, ("lifetime", ends))
    if usage is not None:
        from vmbinder import costs

        doc["usage"] = usage
        rows.insert(3, ("used", costs.describe_so_far(usage)))
    rows += guest_rows(server, guest)
    if server.meta("tls") and not (acc and acc.ssh_only):
        rows.append(("certificate", https.describe(found, server.meta("acme-ca"))))
    for failure in found.failed if found else ():
        rows.append(("tried first", failure.describe()))
    urls = [(f"{k} url", v) for k, v in (acc.urls if acc else {}).items()]
    if acc and acc.open_url:
        urls.insert(0, ("open url", acc.open_url))
    absent = [(f"{k}", f"not shown: {why}") for k, why in (acc.absent if acc else {}).items()]
    if acc and acc.ssh_only:
        urls.append(("reach it", f"vmbinder tunnel {server.name} (--expose ssh: only SSH is "
                                 "open; the tunnel prints the URLs)"))
    value = acc.open_url or acc.urls.get("lab") if acc and acc.base else server.address
    emit(fmt, doc, rows + urls + absent, value=value or "")


def emit(fmt: str, doc, rows, value=None) -> None:
    """doc as JSON, the rows as aligned `key  value` lines, or value (else every row's value)."""
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2, sort_keys=False))
    elif fmt == "value":
        click.echo(value if value is not None else "\n".join(str(v) for _, v in rows))
    else:
        # Plain aligned lines, never wrapped, so a URL can be copied whole.
        width = max((len(key) for key, _ in rows), default=0)
        for key, val in rows:
            click.echo(f"{key:<{width}}  {'' if val is None else val}")


def print_removed(fmt: str, removed, err) -> None:
    """What a delete or a workshop down removed: JSON, tab-separated values or lines on err."""
    docs = [{"kind": r.kind, "id": r.id, "name": r.name} for r in removed]
    if fmt == "json":
        click.echo(json.dumps(docs, indent=2))
    elif fmt == "value":
        for d in docs:
            click.echo(f"{d['kind']}\t{d['id']}\t{d['name']}")
    else:
        from rich.markup import escape

        for d in docs:
            err.print(f"removed {d['kind']} {escape(d['name'] or '')} ({d['id']})")


def render_error(exc: errors.VmbinderError) -> None:
    """An error's message, the cloud's HTTP status and request id, and its hint, on stderr."""
    from rich.markup import escape

    err = stderr()
    err.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
    status = exc.details.get("http_status")
    request_id = exc.details.get("request_id")
    if request_id:
        err.print(f"  (HTTP {status}, request id {request_id})", soft_wrap=True)
    if exc.hint:
        err.print(f"[bold]hint:[/] {escape(exc.hint)}", soft_wrap=True)
