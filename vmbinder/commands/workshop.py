"""`vmbinder workshop check|up|status|roster|down`: the seats of a workshop file
(see vmbinder.workshops), with a live table of their progress. Its power
commands and reset are in vmbinder.commands.workshop_power."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import click

from vmbinder.commands.launch import planned_costs, read_public_key, resolve_remote
from vmbinder.commands.output import debug_log, format_option, print_removed, stderr
from vmbinder.commands.seat_table import LiveTable, seat_table
from vmbinder.commands.workshop_power import POWER
from vmbinder.commands.workshop_power import reset as reset_
from vmbinder.workshops import file as ws


def plan(workshop: ws.Workshop) -> dict:
    """What `up` would make of the file: the source and one entry per seat."""
    source = workshop.source
    return {
        "name": workshop.name,
        "file": str(workshop.path) if workshop.path else None,
        "source": {"repo": source.repo, "kind": source.kind, "ref": source.ref,
                   "subdir": source.subdir, "open": source.open, "urlpath": source.urlpath},
        "tls": workshop.tls,
        "acme_ca": workshop.acme.ca,
        "wildcard_dns": list(workshop.acme.wildcard_dns),
        "lifetime_s": workshop.lifetime_s,
        "seats": [{"seat": s.name, "number": s.number,
                   "participant": s.participant.name if s.participant else None,
                   "email": s.participant.email if s.participant else None,
                   "hostname": s.hostname,
                   **{k: v for k, v in asdict(s.cloud).items()
                      if k in ("image", "flavor", "network", "external_network", "floating_ip",
                               "config_drive", "key_name")}}
                  for s in workshop.seats],
    }


@click.group("workshop")
def workshop() -> None:
    """Many seats of one repository, described in one YAML file."""


@workshop.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@format_option
def check(file, fmt) -> None:
    """Check a workshop FILE without touching the cloud and print its seats."""
    _print_plan(plan(ws.load(file)), fmt)


def _print_plan(doc: dict, fmt: str, rows: list[tuple[str, str]] = ()) -> None:
    """The plan's seats (and the rows after them, such as a dry run's costs)."""
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
    for key, value in rows:
        click.echo(f"{key}: {value}")


# -- making, reading and removing the seats ---------------------------------------------

def _load(obj, file):
    workshop = ws.load(file)
    return workshop, obj.provider


def _certificate(server) -> dict | None:
    """The certificate a seat's server got, as its guest reported it (None before)."""
    from vmbinder import https

    found = https.recorded_outcome(server.meta) if server else None
    return found.as_dict() if found else None


def _certificate_cell(doc: dict | None) -> str | None:
    """The table's short form: the name or address, and who issued it."""
    if not doc:
        return None
    return f"{doc['site']} ({doc['issuer']})" if doc["site"] else doc["issuer"]


def _seat_docs(results) -> list[dict]:
    return [{"seat": r.seat.name, "participant": r.seat.participant.name if r.seat.participant else None,
             "result": r.action, "address": r.server.address if r.server else None,
             "certificate": _certificate(r.server),
             "seconds": round(r.seconds, 1), "error": r.error.message if r.error else None}
            for r in results]


@workshop.command("up")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--parallel", type=click.IntRange(1, 50), default=8, show_default=True,
              help="Seats made at once after the first one.")
@click.option("--no-fan-out", is_flag=True,
              help="Build the environment on every seat instead of once, snapshotted.")
@click.option("--no-wait", is_flag=True,
              help="Return once every seat is ACTIVE (then every seat builds its own environment).")
@click.option("--timeout", type=click.FloatRange(min=1), default=1800, show_default=True,
              help="Seconds each seat may take to answer.")
@click.option("--public-key", type=click.Path(dir_okay=False), metavar="FILE",
              help="OpenSSH public key for every seat [default: ~/.ssh/id_ed25519.pub, ...].")
@click.option("--dry-run", is_flag=True,
              help="Print the seats, what they would hold and the core-hours; make nothing.")
@format_option
@click.pass_obj
def up(obj, file, parallel, no_fan_out, no_wait, timeout, public_key, dry_run, fmt) -> None:
    """Make every seat of FILE that is missing or failed; run it again to repair."""
    from vmbinder.workshops import up as workshop_up

    workshop, provider = _load(obj, file)
    if dry_run:  # reads flavors and images at most: nothing is made
        specs = [workshop_up.seat_spec(workshop, seat, public_key=None, target=provider)
                 for seat in workshop.seats]
        doc = plan(workshop)
        doc["holds"], rows = planned_costs(provider, specs, workshop.lifetime_s, workshop.volume_gb)
        _print_plan(doc, fmt, rows)
        return
    # Every seat builds the commit the ref names now, asked of the remote once.
    workshop = replace(workshop, source=resolve_remote(workshop.source, provider,
                                                          obj.quiet or fmt == "json"))
    key = None if any(s.cloud.key_name for s in workshop.seats) else read_public_key(public_key)
    log_path = debug_log(f"workshop-{workshop.name}", None)
    progress = LiveTable(stderr(), workshop, quiet=obj.quiet or fmt == "json")
    try:
        result = workshop_up.run(provider, workshop, reporter=progress, public_key=key,
                                 parallel=parallel, wait=not no_wait,
                                 fan_out=not no_fan_out, ready_timeout=timeout)
    finally:
        progress.stop()
    docs = _seat_docs(result.seats)
    if fmt == "json":
        click.echo(json.dumps({"workshop": workshop.name, "seats": docs,
                               "snapshot": result.snapshot.id if result.snapshot else None,
                               "snapshot_action": result.snapshot_action}, indent=2))
    elif fmt == "value":
        for d in docs:
            click.echo(f"{d['seat']}\t{d['result']}\t{d['address'] or ''}")
    else:
        from rich.markup import escape

        seat_table(docs, ("seat", "participant", "result", "address", "seconds", "error"))
        err = stderr()
        if result.snapshot is not None:
            err.print(f"snapshot {escape(result.snapshot.name)} ({result.snapshot_action})")
        err.print(f"debug log: {escape(str(log_path))}\nthe URLs with their tokens: vmbinder "
                  f"workshop roster {escape(str(file))}")
    if result.partly_failed:  # exit 10, after every seat's result is shown
        raise result.failure()


@workshop.command("status")
@click.argument("file", type=click.Path(dir_okay=False))
@format_option
@click.pass_obj
def status(obj, file, fmt) -> None:
    """Each seat's server: state, address, certificate, expiry and whether it came
    from the snapshot."""
    from vmbinder.workshops import seats

    workshop, provider = _load(obj, file)
    docs = [{"seat": st.seat.name, "participant": st.seat.participant.name if st.seat.participant else None,
             "state": st.state, "address": st.server.address if st.server else None,
             "expires": st.server.meta(seats.EXPIRES) if st.server else None,
             "snapshot": st.server.meta(seats.FROM_SNAPSHOT) if st.server else None,
             "certificate": _certificate(st.server),
             "fault": st.server.fault if st.server else None}
            for st in seats.status(provider, workshop)]
    if fmt == "json":
        click.echo(json.dumps({"workshop": workshop.name, "seats": docs}, indent=2))
    elif fmt == "value":
        for d in docs:
            click.echo(f"{d['seat']}\t{d['state']}\t{d['address'] or ''}")
    else:
        seat_table([{**d, "certificate": _certificate_cell(d["certificate"])} for d in docs],
               ("seat", "participant", "state", "address", "certificate", "expires", "fault"))


@workshop.command("roster")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(("csv", "json", "html")), default="csv",
              show_default=True, help="CSV, JSON, or a printable HTML page with a card per seat.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="PATH",
              help="Write to PATH (mode 0600: it holds the tokens) instead of stdout.")
@click.option("--no-check", is_flag=True,
              help="List every seat with an address, without checking that its URL answers.")
@click.pass_obj
def roster_(obj, file, fmt, output, no_check) -> None:
    """The URL of each seat, token included, for the seats whose URL answers."""
    from vmbinder.workshops import roster, seats

    workshop, provider = _load(obj, file)
    entries, left_out = seats.roster_entries(provider, workshop, check=not no_check)
    text = roster.render(fmt, workshop.name, entries, source=workshop.source.repo)
    if output:
        import os

        from vmbinder import errors

        # The tokens are for the instructor: a file that was there is made private
        # too, and a symbolic link (which could point anywhere) is not followed.
        try:
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise errors.BadRequest(f"cannot write the roster to {output}: {exc.strerror}",
                                    "give a path to a regular file (not a symbolic link)") from None
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, 0)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=not text.endswith("\n"))
    from rich.markup import escape

    err = stderr()
    err.print(f"{len(entries)} of {len(workshop.seats)} seats listed"
              + (f" in {escape(str(output))}" if output else ""))
    for st in left_out:
        why = ("no server (run workshop up)" if st.server is None
               else f"{st.state}" if st.state != "active" else "its URL did not answer")
        err.print(f"  left out {st.seat.name}: {escape(why)}")


@workshop.command("down")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--snapshot", "snapshots", is_flag=True, help="Also delete the workshop's snapshots.")
@click.option("--force", is_flag=True,
              help="Delete seats other users of the project launched too.")
@click.option("--delete-volumes", is_flag=True,
              help="Also delete the seats' work volumes (kept by default).")
@format_option
@click.pass_obj
def down(obj, file, snapshots, force, delete_volumes, fmt) -> None:
    """Delete every seat of FILE and its floating IP (and snapshots with --snapshot).

    The seats' work volumes (`volume:` in FILE) are kept unless --delete-volumes."""
    from vmbinder.workshops import seats

    workshop, provider = _load(obj, file)
    progress = LiveTable(stderr(), workshop, quiet=obj.quiet or fmt == "json")
    try:
        removed = seats.down(provider, workshop, snapshots=snapshots, reporter=progress,
                             force=force, volumes=delete_volumes)
        kept = seats.work_volumes(provider, workshop)
    finally:
        progress.stop()
    print_removed(fmt, removed, stderr())
    if kept:
        from rich.markup import escape

        many = f"{len(kept)} work volume{'s' if len(kept) != 1 else ''}"
        how = (f"other users made them: vmbinder workshop down --delete-volumes --force {file} "
               "removes them too" if delete_volumes
               else f"vmbinder workshop down --delete-volumes {file} removes them")
        stderr().print(escape(f"kept {many}: {', '.join(v.name for v in kept)} ({how})"))
    if fmt not in ("json", "value") and not removed:
        stderr().print(f"nothing of workshop {workshop.name} was left to remove")


for command in (*POWER, reset_):
    workshop.add_command(command)
