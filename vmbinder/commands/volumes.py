"""`vmbinder volumes`: the volumes vmbinder made (work volumes, `volumes create`)
or attached (data volumes, a work volume named with --volume), from their
vmbinder:* metadata on the target; `volumes create` and `volumes delete`.

Whose they are follows vmbinder.scope's rules for servers: your own by default
(vmbinder:owner), --all for everyone's, and another user's volume is deleted only
with --force. A volume vmbinder attached but did not make (no owner) is shown to
everyone, and deleted only with --force: it may be a shared data set.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from vmbinder import errors
from vmbinder.commands.output import format_option, print_removed, stderr, stdout

if TYPE_CHECKING:
    from vmbinder.commands.context import Context


# -- the rules (no printing) -----------------------------------------------------------

def owner(volume) -> str | None:
    return volume.meta("owner")


def whose(provider, volumes) -> tuple[list, list]:
    """(this user's, other users') volumes; one with no owner is everyone's, and
    on a target with one user (current_owner None) every volume is theirs."""
    user = provider.current_owner()
    theirs = [v for v in volumes if user is not None and owner(v) not in (None, user)]
    return [v for v in volumes if v not in theirs], theirs


def find(volumes, wanted: str):
    """The one volume with this name or id, else BadRequest naming those there."""
    hits = [v for v in volumes if wanted in (v.id, v.name)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise errors.BadRequest(f"more than one volume is named {wanted!r}",
                                "use its id: " + ", ".join(v.id for v in hits))
    names = ", ".join(sorted({v.name for v in volumes})) or "(none)"
    raise errors.BadRequest(f"no vmbinder volume named {wanted!r}",
                            f"vmbinder volumes here: {names} (see vmbinder volumes --all)")


def deletable(provider, volumes, force: bool) -> None:
    """BadRequest, before anything is deleted, naming volumes another user made or
    that vmbinder did not make (unless force), and those attached to a server."""
    _, theirs = whose(provider, volumes)
    foreign = [v for v in volumes if not v.made_by_vmbinder]
    if not force and (theirs or foreign):
        said = [f"{v.name} (owner {owner(v)})" for v in theirs] + [
            f"{v.name} (not made by vmbinder: attached as {v.meta('role') or 'a volume'})"
            for v in foreign]
        raise errors.BadRequest(
            "not deleting volumes that are not yours: " + ", ".join(said),
            "nothing was deleted; to delete them anyway: vmbinder volumes delete --force "
            + " ".join(v.name for v in theirs + foreign))
    attached = [v for v in volumes if v.attached_to]
    if attached:
        v = attached[0]
        where = ", ".join(v.attached_to)
        raise errors.BadRequest(
            f"volume {v.name} is attached to server {where}",
            f"nothing was deleted; delete the server first (vmbinder delete {where} keeps the "
            f"volume), then: vmbinder volumes delete {v.name}")


def after_server_delete(provider, servers, delete_volumes: bool):
    """What becomes of the work volumes of these deleted servers: (removed, kept),
    kept as (volume, why). Data volumes are never deleted; a work volume only with
    delete_volumes, when it is the user's and vmbinder made it."""
    wanted = [(s, s.meta("volume")) for s in servers if s.meta("volume")]
    if not wanted or not provider.supports("volumes"):
        return [], []
    found = provider.volumes()
    mine, _ = whose(provider, found)
    removed, kept = [], []
    for server, name in wanted:
        hits = [v for v in found if name in (v.name, v.id)]
        if not hits:
            continue
        volume = hits[0]
        if not delete_volumes:
            kept.append((volume, f"the work volume of {server.name}"))
        elif volume not in mine or not volume.made_by_vmbinder:
            kept.append((volume, f"the work volume of {server.name}, which vmbinder did not "
                                 f"make or another user made: not deleted"))
        else:
            removed += provider.delete_volume(volume)
    return removed, kept


def kept_line(volume, why: str) -> str:
    return (f"kept volume {volume.name} ({volume.size_gb} GB), {why}: attach it to a new "
            f"server with --volume {volume.name}; remove it with "
            f"vmbinder volumes delete {volume.name}")


def volume_doc(volume) -> dict:
    return {
        "name": volume.name,
        "id": volume.id,
        "size_gb": volume.size_gb,
        "status": volume.status,
        "attached_to": list(volume.attached_to),
        "role": volume.meta("role"),
        "last_server": volume.meta("last-server"),
        "made_for": volume.meta("made-for"),
        "made_by_vmbinder": volume.made_by_vmbinder,
        "owner": owner(volume),
        "created": volume.created,
    }


# -- the commands ----------------------------------------------------------------------

@click.group(invoke_without_command=True)
@click.option("--all", "everyone", is_flag=True,
              help="Every user's volumes in the project, with who made them [default: yours].")
@format_option
@click.pass_context
def volumes(ctx, everyone, fmt):
    """List the volumes vmbinder made or attached (work volumes, data volumes).

    A server's work volume outlives it: `vmbinder delete` keeps it, and
    `launch --volume NAME` attaches it to the next server."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Context = ctx.obj
    provider = obj.provider
    found = provider.volumes()
    mine, others = whose(provider, found)
    shown = found if everyone else mine
    user = provider.current_owner()
    docs = [volume_doc(v) for v in shown]
    keys = ("name", "size_gb", "status", "attached_to", "role", "last_server") + (
        ("owner",) if everyone else ())
    if fmt == "json":
        click.echo(json.dumps(docs, indent=2))
    elif fmt == "value":
        for d in docs:
            click.echo("\t".join(",".join(d[k]) if isinstance(d[k], list) else str(d[k] or "")
                                 for k in keys))
    else:
        from rich.table import Table
        from rich.text import Text

        table = Table("name", "size", "status", "attached to", "role", "last server",
                      *(("owner",) if everyone else ()))
        for column in table.columns:
            column.overflow = "fold"
        for d in docs:
            row = [Text(d["name"]), Text(f"{d['size_gb']} GB"), Text(d["status"]),
                   Text(", ".join(d["attached_to"])), Text(d["role"] or ""),
                   Text(d["last_server"] or "")]
            if everyone:
                row.append(Text("you" if user and d["owner"] == user else d["owner"] or ""))
            table.add_row(*row)
        stdout().print(table)
        if not docs:
            stderr().print("no vmbinder volumes of yours here" if others
                           else "no vmbinder volumes here")
        if others and not everyone:
            stderr().print(f"{len(others)} more made by other users of the project: "
                           "vmbinder volumes --all")


@volumes.command("create")
@click.argument("name")
@click.option("--size", type=click.IntRange(min=1), required=True, metavar="GB",
              help="Size in GB.")
@click.option("--from-dir", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Local target: an ext4 filesystem holding this folder's files (a data "
                   "set for --data); without it the volume is empty.")
@format_option
@click.pass_obj
def create(obj: Context, name, size, from_dir, fmt):
    """Make a volume NAME, for `launch --volume NAME` or `--data NAME`."""
    from vmbinder import spec

    spec.validate_volume_name(name, "volume name")
    spec.validate_volume_size(size, "--size")
    volume = obj.provider.create_volume(name, size, from_dir=from_dir)
    doc = volume_doc(volume)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    elif fmt == "value":
        click.echo(volume.id)
    else:
        stderr().print(f"made volume {volume.name} ({volume.size_gb} GB, {volume.id})")


@volumes.command("delete")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True,
              help="Delete volumes another user made, or that vmbinder did not make, too.")
@format_option
@click.pass_obj
def delete(obj: Context, names, force, fmt):
    """Delete volumes no server is attached to (their data is lost).

    Every name is checked first: when one is refused, nothing is deleted."""
    provider = obj.provider
    found = provider.volumes()
    chosen = [find(found, name) for name in names]
    deletable(provider, chosen, force)
    removed = []
    for volume in chosen:
        removed += provider.delete_volume(volume)
    print_removed(fmt, removed, stderr())
