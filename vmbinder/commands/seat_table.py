"""A workshop's seats on the terminal: the live table of a batch's progress
(make, remove, power) and the table of its results."""

from __future__ import annotations

import logging
import threading
import time

import click

from vmbinder.workshops import file as ws

#: The style of a seat's row in the live table, by its state.
STYLES = {"failed": "red", "created": "green", "recreated": "green", "kept": "cyan",
          "deleted": "green", "snapshotted": "green", "missing": "yellow",
          "stopped": "green", "started": "green", "shelved": "green", "unshelved": "green"}


class LiveTable:
    """The batch's progress: a live table on a terminal, one line per change otherwise."""

    def __init__(self, console, workshop: ws.Workshop, quiet: bool = False):
        self.console, self.quiet = console, quiet
        self.people = {s.name: s.participant.name if s.participant else "" for s in workshop.seats}
        self.rows = {s.name: ("waiting", "") for s in workshop.seats}
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.live = None
        if console.is_terminal and not quiet:
            from rich.live import Live

            self.live = Live(self._table(), console=console, refresh_per_second=4)
            self.live.start()

    def _table(self):
        from rich.table import Table
        from rich.text import Text

        table = Table("seat", "participant", "state", "detail", box=None)
        for name, (state, detail) in self.rows.items():
            style = STYLES.get(state, "")
            # Text: names and details are shown as written, never read as rich markup.
            table.add_row(Text(name), Text(self.people.get(name, "")), Text(state, style=style),
                          Text(detail[:80]))
        return table

    def seat(self, name: str, state: str, detail: str = "") -> None:
        logging.getLogger("vmbinder.progress").info("%s %s: %s", name, state, detail)
        with self.lock:
            if self.rows.get(name) == (state, detail):
                return
            self.rows[name] = (state, detail)
            if self.live is not None:
                self.live.update(self._table())
            elif not self.quiet:
                from rich.markup import escape

                self.console.print(f"{time.monotonic() - self.started:6.1f}s {name} "
                                   f"[bold]{state}[/] {escape(detail)}")

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def seat_table(rows: list[dict], keys: tuple[str, ...]) -> None:
    """One row per seat, one column per key, to stdout; "-" for nothing."""
    widths = {k: max(len(k), *(len(str(r.get(k) or "-")) for r in rows)) for k in keys} if rows else {}
    click.echo("  ".join(k.ljust(widths.get(k, len(k))) for k in keys).rstrip())
    for row in rows:
        click.echo("  ".join(str(row.get(k) or "-").ljust(widths[k]) for k in keys).rstrip())
