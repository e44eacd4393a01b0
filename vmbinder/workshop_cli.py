"""`vmbinder workshop ...`: commands for a workshop file (see vmbinder.workshop)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from vmbinder import workshop as ws

FORMATS = ("table", "json", "value")  # as vmbinder.cli.FORMATS, which imports this module


def plan(workshop: ws.Workshop) -> dict:
    """What `up` would make of the file: the source and one entry per seat."""
    source = workshop.source
    return {
        "name": workshop.name,
        "file": str(workshop.path) if workshop.path else None,
        "source": {"repo": source.repo, "kind": source.kind, "ref": source.ref,
                   "subdir": source.subdir, "open": source.open},
        "tls": workshop.tls,
        "lifetime_s": workshop.lifetime_s,
        "seats": [{"seat": s.name, "number": s.number,
                   "participant": s.participant.name if s.participant else None,
                   "email": s.participant.email if s.participant else None,
                   "hostname": s.hostname,
                   **{k: v for k, v in asdict(s.cloud).items()
                      if k in ("image", "flavor", "network", "external_network", "key_name")}}
                  for s in workshop.seats],
    }


@click.group("workshop")
def workshop() -> None:
    """Many seats of one repository, described in one YAML file."""


@workshop.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="How to print results: a table, JSON, or bare values for scripts.")
def check(file, fmt) -> None:
    """Check a workshop FILE without touching the cloud and print its seats."""
    doc = plan(ws.load(file))
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    if fmt == "value":
        for seat in doc["seats"]:
            click.echo("\t".join(str(seat[k] or "") for k in ("seat", "participant", "flavor")))
        return
    src = doc["source"]
    click.echo(f"workshop {doc['name']}: {len(doc['seats'])} seats of {src['repo']}"
               + (f" at {src['ref']}" if src["ref"] else "")
               + (f", tls {doc['tls']}")
               + (f", lifetime {doc['lifetime_s'] // 3600} h {doc['lifetime_s'] % 3600 // 60} min"
                  if doc["lifetime_s"] else ""))
    keys = ("seat", "participant", "flavor", "image", "hostname")
    widths = {k: max(len(k), *(len(str(s[k] or "-")) for s in doc["seats"])) for k in keys}
    click.echo("  ".join(k.ljust(widths[k]) for k in keys).rstrip())
    for seat in doc["seats"]:
        click.echo("  ".join(str(seat[k] or "-").ljust(widths[k]) for k in keys).rstrip())
