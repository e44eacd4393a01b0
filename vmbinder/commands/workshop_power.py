"""`vmbinder workshop stop|start|shelve|unshelve FILE` and `vmbinder workshop reset
FILE SEAT`: every seat of a workshop powered at once (vmbinder.workshops.power),
and one seat made fresh (vmbinder.workshops.reset), with a live table of their
progress. Registered in the `workshop` group (vmbinder.commands.workshop)."""

from __future__ import annotations

import json
from dataclasses import replace

import click

from vmbinder.commands.launch import read_public_key, resolve_remote
from vmbinder.commands.output import format_option, print_removed, stderr
from vmbinder.commands.seat_table import LiveTable, seat_table

HELP = {
    "stop": """Power off every seat of FILE: each keeps its disk, address, token and
    work, and on a cloud still holds its cores. vmbinder workshop start FILE
    brings them back at the same URLs.""",
    "start": """Power on every stopped seat of FILE and wait until each environment
    answers, at the same URL with the same token.""",
    "shelve": """Shelve every seat of FILE: the cloud keeps each one's disk as an image
    and frees its cores; its address, token and work stay. vmbinder workshop
    unshelve FILE brings them back.""",
    "unshelve": """Bring every shelved seat of FILE back and wait until each environment
    answers, at the same URL with the same token.""",
}
#: What a stopped or shelved seat still holds (as `vmbinder status` says of a server).
HOLD = {
    "stop": "each stopped seat holds its disk, address and work; on a cloud also its cores "
            "(vmbinder workshop start {file} brings them back, vmbinder workshop shelve {file} "
            "frees the cores)",
    "shelve": "each shelved seat holds its address and work, its disk as an image; no cores "
              "(vmbinder workshop unshelve {file} brings them back)",
}
EPILOG = ("Seats are done --parallel at a time; one that fails does not stop the others, "
          "and then the command exits with 10, naming it. A seat with no server is "
          "reported missing.")


def _seat_docs(result) -> list[dict]:
    return [{"seat": r.seat.name, "participant": r.seat.participant.name if r.seat.participant else None,
             "result": r.action, "state": r.server.state if r.server else None,
             "cloud_status": r.server.cloud_status if r.server else None,
             "address": r.server.address if r.server else None,
             "seconds": round(r.seconds, 1), "ready": r.ready,
             "error": r.error.message if r.error else None,
             "hint": r.error.hint if r.error else None,
             "request_id": r.error.details.get("request_id") if r.error else None,
             "released": [removed.name for removed in r.released]}
            for r in result.seats]


def _power_command(verb: str) -> click.Command:
    wakes = verb in ("start", "unshelve")

    def run(obj, file, parallel, force, fmt, no_wait=False, timeout=1800, release_ip=False):
        from rich.markup import escape

        from vmbinder.workshops import file as ws
        from vmbinder.workshops import power as seats_power

        workshop = ws.load(file)
        progress = LiveTable(stderr(), workshop, quiet=obj.quiet or fmt == "json")
        try:
            result = seats_power.act(obj.provider, workshop, verb, reporter=progress,
                                     parallel=parallel, force=force, wait=not no_wait,
                                     timeout=timeout, release_ip=release_ip)
        finally:
            progress.stop()
        docs = _seat_docs(result)
        if fmt == "json":
            click.echo(json.dumps({"workshop": workshop.name, "verb": verb, "seats": docs}, indent=2))
        elif fmt == "value":
            for d in docs:
                click.echo(f"{d['seat']}\t{d['result']}\t{d['state'] or ''}")
        else:
            seat_table(docs, ("seat", "participant", "result", "state", "address", "seconds",
                              "error"))
            err = stderr()
            if result.missing:
                err.print(escape(f"missing (never made, or deleted): "
                                 f"{', '.join(r.seat.name for r in result.missing)}; "
                                 f"vmbinder workshop up {file} makes them"), soft_wrap=True)
            done = [r for r in result.seats if r.server is not None and r.error is None]
            if any(r.released for r in done):
                again = "start" if verb == "stop" else "unshelve"
                err.print(escape(f"addresses given back: vmbinder workshop {again} {file} gives "
                                 f"each seat a new one, and new URLs (vmbinder workshop roster "
                                 f"{file} prints them)"), soft_wrap=True)
            elif done and not wakes:
                err.print(escape(HOLD[verb].format(file=file)), soft_wrap=True)
            if done and wakes:
                err.print(escape(f"the URLs with their tokens: vmbinder workshop roster {file}"))
        if result.partly_failed:  # exit 10, after every seat's result is shown
            raise result.failure()

    params = [
        click.Argument(["file"], type=click.Path(dir_okay=False)),
        click.Option(["--parallel"], type=click.IntRange(1, 50), default=8, show_default=True,
                     help="Seats done at once."),
        click.Option(["--force"], is_flag=True,
                     help=f"{verb.capitalize()} seats other users of the project launched too."),
    ]
    if not wakes:
        params.append(click.Option(
            ["--release-ip"], is_flag=True,
            help="Give each seat's floating IP back to the cloud: the URLs stop working, and "
                 f"workshop {'start' if verb == 'stop' else 'unshelve'} gives each a new address "
                 "and new URLs."))
    if wakes:
        params += [
            click.Option(["--no-wait"], is_flag=True,
                         help="Return once the cloud says each seat runs."),
            click.Option(["--timeout"], type=click.FloatRange(min=1), default=1800,
                         show_default=True, help="Seconds to wait for each environment to answer."),
        ]
    command = click.Command(verb, params=params, help=HELP[verb], epilog=EPILOG,
                            callback=click.pass_obj(run))
    return format_option(command)


POWER = tuple(_power_command(v) for v in ("stop", "start", "shelve", "unshelve"))


@click.command("reset")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("seat")
@click.option("--no-wait", is_flag=True,
              help="Return once the new server is ACTIVE (then it builds its own environment).")
@click.option("--timeout", type=click.FloatRange(min=1), default=1800, show_default=True,
              help="Seconds the new server may take to answer.")
@click.option("--public-key", type=click.Path(dir_okay=False), metavar="FILE",
              help="OpenSSH public key for the seat [default: ~/.ssh/id_ed25519.pub, ...].")
@click.option("--force", is_flag=True, help="Reset a seat another user of the project launched.")
@click.option("--delete-volumes", is_flag=True,
              help="Also delete the seat's work volume: its home starts empty (kept by default).")
@click.option("--format", "fmt", type=click.Choice(("csv", "json", "html")), default="csv",
              show_default=True, help="The seat's new roster entry as CSV, JSON or an HTML card.")
@click.pass_obj
def reset(obj, file, seat, no_wait, timeout, public_key, force, delete_volumes, fmt) -> None:
    """Make SEAT of FILE fresh: delete its server and make it again, as `workshop up`
    does (from the workshop's snapshot when there is one), with a new token; print
    its new roster entry. SEAT is a seat's name, its number or its participant.

    Only that seat's server and its address are removed. Its work volume (`volume:`
    in FILE) is kept and attached to the new server, unless --delete-volumes;
    without one, the files on the seat's disk go with its server."""
    from rich.markup import escape

    from vmbinder.workshops import file as ws
    from vmbinder.workshops import reset as seat_reset
    from vmbinder.workshops import roster

    workshop = ws.load(file)
    wanted = seat_reset.find_seat(workshop, seat)  # an unknown seat, refused before the cloud
    provider = obj.provider
    workshop = replace(workshop, source=resolve_remote(workshop.source, provider, obj.quiet))
    key = None if wanted.cloud.key_name else read_public_key(public_key)
    progress = LiveTable(stderr(), replace(workshop, seats=(wanted,)), quiet=obj.quiet)
    try:
        result = seat_reset.reset(provider, workshop, wanted.name, reporter=progress, public_key=key,
                                  wait=not no_wait, ready_timeout=timeout, force=force,
                                  delete_volume=delete_volumes)
    finally:
        progress.stop()
    err = stderr()
    print_removed("table", result.removed, err)
    made = (f"from snapshot {result.snapshot.name}" if result.snapshot
            else "building its own environment" if no_wait else "with its own build")
    err.print(escape(f"reset {wanted.name} in {result.seconds:.0f} s: new server {result.server.id} "
                     f"{made}, with a new token"), soft_wrap=True)
    if result.kept_volume:
        err.print(escape(f"kept work volume {result.kept_volume}, attached to the new server: the "
                         "seat's home is as it was (--delete-volumes gives it a new, empty one)"),
                  soft_wrap=True)
    elif not workshop.volume_gb:
        err.print("the seat had no work volume: the files on its disk went with its old server")
    entry = result.entry
    if entry is None:
        err.print(escape(f"{wanted.name} has no URL yet: vmbinder workshop status {file}"))
        return
    text = roster.render(fmt, workshop.name, [entry], source=workshop.source.repo)
    click.echo(text, nl=not text.endswith("\n"))
