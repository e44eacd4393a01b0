"""Snapshots on OpenStack: Glance images made from a stopped server, listed by
their properties and deleted, so that a batch's seats can start from one."""

from __future__ import annotations

import contextlib

from vmbinder import errors
from vmbinder.providers.base import Created, Ledger, Removed, Server, Snapshot
from vmbinder.providers.openstack.common import cloud_errors, find_or_none
from vmbinder.providers.openstack.power import wait_for, wait_idle

#: The property every vmbinder snapshot carries: the server it was made from.
SNAPSHOT_OF = "vmbinder_snapshot_of"


def _record(image) -> Snapshot:
    props = {k: str(v) for k, v in (image.properties or {}).items() if k.startswith("vmbinder_")}
    return Snapshot(id=image.id, name=image.name, properties=props, created=image.created_at)


def _start_again(conn, server: Server, timeout: float) -> None:
    with cloud_errors(f"starting {server.name} again after its snapshot"):
        wait_idle(conn, server, timeout)
        conn.compute.start_server(server.id)
        wait_for(conn, server, "ACTIVE", timeout)


def snapshot(conn, server: Server, name: str, properties: dict[str, str], ledger: Ledger,
             timeout: float) -> Snapshot:
    """Stop the server (a snapshot of a quiet disk), image it, start it again
    (also when imaging failed, whose error is then the one raised)."""
    with cloud_errors(f"stopping {server.name} to snapshot it"):
        if conn.compute.get_server(server.id).status != "SHUTOFF":
            conn.compute.stop_server(server.id)
        wait_for(conn, server, "SHUTOFF", timeout)
    try:
        with cloud_errors(f"snapshotting {server.name}"):
            image = conn.compute.create_server_image(
                server.id, name, metadata={**properties, SNAPSHOT_OF: server.name})
            image_id = image.id
            ledger.add(Created(
                "snapshot", image_id, name,
                lambda: conn.image.delete_image(image_id, ignore_missing=True),
                f"openstack image delete {image_id}",
            ))
            image = conn.image.wait_for_status(
                image, status="active", failures=["killed", "deleted"], interval=2, wait=timeout)
    except BaseException:
        with contextlib.suppress(Exception):  # the imaging error is the one to report
            _start_again(conn, server, timeout)
        raise
    _start_again(conn, server, timeout)
    return _record(image)


def snapshots(conn, properties: dict[str, str]) -> list[Snapshot]:
    with cloud_errors("listing snapshots"):
        images = [i for i in conn.image.images(owner=conn.current_project_id)
                  if (i.properties or {}).get(SNAPSHOT_OF)
                  and all((i.properties or {}).get(k) == v for k, v in properties.items())
                  and i.status == "active"]
    return [_record(i) for i in sorted(images, key=lambda i: i.created_at or "", reverse=True)]


def delete_snapshot(conn, snap: Snapshot) -> list[Removed]:
    with cloud_errors(f"deleting snapshot {snap.name}"):
        image = find_or_none(conn.image.find_image, snap.id)
        if image is None:
            return []
        if not (image.properties or {}).get(SNAPSHOT_OF):
            raise errors.BadRequest(f"image {snap.name} ({snap.id}) is not a vmbinder snapshot",
                                    "delete it with the openstack CLI if you mean it")
        conn.image.delete_image(image.id, ignore_missing=True)
    return [Removed("snapshot", snap.id, snap.name)]
