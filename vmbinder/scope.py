"""Whose servers they are. A project's servers are everyone's in it to see (the
cloud shows them all), and each records who launched it (vmbinder:owner, see
Provider.current_owner). list, status and url show the user's own unless asked
for everyone's; delete, and workshop down, refuse another user's unless forced.
A server with no recorded owner (launched by a vmbinder that did not record one)
counts as everyone's: it is shown to all and anyone may delete it. Nothing here
prints."""

from __future__ import annotations

from vmbinder import errors
from vmbinder.providers.base import Provider, Server, find_owned, launched_by_other, owner


def whose(provider: Provider, servers: list[Server]) -> tuple[list[Server], list[Server]]:
    """(this user's, other users') among servers, each in their order."""
    user = provider.current_owner()
    return ([s for s in servers if not launched_by_other(s, user)],
            [s for s in servers if launched_by_other(s, user)])


def find(provider: Provider, name_or_id: str, *, everyone: bool = False,
         command: str = "status") -> Server:
    """The server with this name or id among this user's (with everyone, the
    project's). Another user's is refused in words that name --all for `command`."""
    found = provider.list_owned()
    if everyone:
        return find_owned(found, name_or_id)
    mine, others = whose(provider, found)
    theirs = [s for s in others if name_or_id in (s.id, s.name)]
    if theirs and not any(name_or_id in (s.id, s.name) for s in mine):
        server = theirs[0]
        raise errors.BadRequest(
            f"vmbinder server {server.name!r} was launched by another user of the project "
            f"({owner(server)})",
            f"to see it anyway: vmbinder {command} --all {name_or_id}")
    return find_owned(mine, name_or_id)


def named(provider: Provider, names: list[str], *, force: bool,
          doing: tuple[str, str, str] = ("deleting", "deleted", "delete")) -> list[Server]:
    """The servers these names or ids name, every one checked before any is touched:
    an unknown one is refused, and (unless force) one another user launched
    (refuse_others; doing as there)."""
    found = provider.list_owned()
    servers = [find_owned(found, name) for name in names]
    if not force:
        refuse_others(provider, servers, "servers",
                      f"vmbinder {doing[2]} --force " + " ".join(names), doing)
    return servers


def refuse_others(provider: Provider, servers: list[Server], kind: str, force: str,
                  doing: tuple[str, str, str] = ("deleting", "deleted", "delete")) -> None:
    """BadRequest naming the servers among these that another user launched, before
    any of them is touched; kind: what they are ("servers", "seats"), force: the
    command that does it anyway, doing: the verb's -ing form, past and plain form."""
    _, theirs = whose(provider, servers)
    if theirs:
        raise errors.BadRequest(
            f"not {doing[0]} {kind} another user of the project launched: "
            + ", ".join(f"{s.name} (owner {owner(s)})" for s in theirs),
            f"nothing was {doing[1]}; to {doing[2]} them anyway: {force}",
            details={"others": [{"name": s.name, "id": s.id, "owner": owner(s)} for s in theirs]})
