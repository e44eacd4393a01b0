"""A workshop's roster: each seat's URL (token included) as CSV, JSON or a
printable HTML page with one card and QR code per seat. Pure: no I/O."""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import asdict, dataclass

FORMATS = ("csv", "json", "html")
COLUMNS = ("seat", "number", "participant", "email", "url", "lab_url", "expires")
#: A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Entry:
    seat: str
    number: int
    participant: str | None
    email: str | None
    url: str
    lab_url: str | None = None
    expires: str | None = None


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def to_csv(workshop_name: str, entries: list[Entry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in entries:
        row = asdict(e)
        writer.writerow([_cell(row[c]) if c in ("participant", "email") else row[c] or ""
                         for c in COLUMNS])
    return out.getvalue()


def to_json(workshop_name: str, entries: list[Entry]) -> str:
    return json.dumps({"workshop": workshop_name, "seats": [asdict(e) for e in entries]},
                      indent=2) + "\n"


def qr_svg(url: str) -> str:
    """The URL as an inline SVG QR code (segno)."""
    import segno

    return segno.make(url, error="m").svg_inline(scale=3, omitsize=True)


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #000; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } p.meta { margin: 0 0 1em; color: #444; }
.cards { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; }
.card { border: 1px solid #888; border-radius: 6px; padding: .8em; break-inside: avoid;
        page-break-inside: avoid; display: flex; gap: .8em; align-items: flex-start; }
.card svg { width: 33mm; height: 33mm; flex: none; }
.who { font-size: 1.15em; font-weight: bold; } .seat { color: #444; margin: .2em 0 .5em; }
.url { font-family: monospace; font-size: .8em; word-break: break-all; }
@media print { body { margin: 0; } .cards { gap: 6mm; } .card { height: 80mm; } }
"""


def _card(e: Entry) -> str:
    who = html.escape(e.participant or f"Seat {e.number}")
    extra = f"<div class=seat>expires {html.escape(e.expires)}</div>" if e.expires else ""
    return (f'<div class="card"><div>{qr_svg(e.url)}</div><div>'
            f'<div class="who">{who}</div><div class="seat">{html.escape(e.seat)}</div>{extra}'
            f'<div class="url"><a href="{html.escape(e.url, quote=True)}">{html.escape(e.url)}</a>'
            "</div></div></div>")


def to_html(workshop_name: str, entries: list[Entry], *, source: str | None = None) -> str:
    name = html.escape(workshop_name)
    meta = f"{len(entries)} seats" + (f" of {html.escape(source)}" if source else "")
    body = ("\n".join(_card(e) for e in entries) if entries
            else "<p>No seat answered: nothing to hand out yet.</p>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>Workshop {name}</title><style>{STYLE}</style></head><body>\n"
            f'<h1>Workshop {name}</h1><p class="meta">{meta}. Open your link, or scan its code.</p>\n'
            f'<div class="cards">\n{body}\n</div></body></html>\n')


def render(fmt: str, workshop_name: str, entries: list[Entry], source: str | None = None) -> str:
    if fmt == "csv":
        return to_csv(workshop_name, entries)
    if fmt == "json":
        return to_json(workshop_name, entries)
    if fmt == "html":
        return to_html(workshop_name, entries, source=source)
    raise ValueError(f"unknown roster format {fmt!r}; use one of {', '.join(FORMATS)}")
