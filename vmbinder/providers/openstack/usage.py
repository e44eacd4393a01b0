"""What a server holds and has held (vmbinder.costs), from Nova: a flavor's size,
and the server's instance actions."""

from __future__ import annotations

from vmbinder import lifetime
from vmbinder.costs import Action, Size
from vmbinder.providers.base import Server
from vmbinder.providers.openstack.common import cloud_errors


def size(image, flavor) -> Size:
    """A flavor's cores, memory and root disk (at least the image's min_disk)."""
    return Size(flavor.name, flavor.vcpus, flavor.ram,
                max(flavor.disk or 0, getattr(image, "min_disk", 0) or 0))


def history(conn, server: Server) -> list[Action]:
    """The server's instance actions with their start times."""
    with cloud_errors(f"reading the actions of {server.name}"):
        actions = list(conn.compute.server_actions(server.id))
    return [Action(a.action, at) for a in actions
            if (at := lifetime.parse_time(a.start_time)) is not None]
