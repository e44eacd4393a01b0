"""Cinder volumes: the work volume a launch makes or attaches, the data volumes it
attaches, and `vmbinder volumes`.

A volume's vmbinder:* metadata is the only record of it: vmbinder:owner (the
Keystone user who made it; only on volumes vmbinder made), vmbinder:role (work
or data), vmbinder:made-for (the server a work volume was made for) and
vmbinder:last-server (the last server it was attached to). A server boots with
its volumes in block_device_mapping_v2, never deleted with it; libvirt gives
each disk the volume's id, cut to 20 characters, as its serial, which the guest
finds at /dev/disk/by-id/virtio-<serial>.
"""

from __future__ import annotations

import time

from vmbinder import errors
from vmbinder.guestcontract import VOLUME_SERIAL_MAX
from vmbinder.providers.base import (
    DATA,
    META,
    WORK,
    Created,
    Ledger,
    Removed,
    Volume,
    VolumeUse,
    ambiguous,
    candidates,
    launched_by_other,
    volume_metadata,
)
from vmbinder.providers.openstack.common import cloud_errors, find_or_none, in_flight, openstacksdk
from vmbinder.spec import VOLUME_NAME_RE, LaunchSpec

#: Cinder's states of a volume that is (being) attached or detached.
BUSY = ("in-use", "attaching", "detaching", "reserved")
#: Seconds a made volume may take to become available, and a detached one to be free.
SETTLE = 300


def serial(volume_id: str) -> str:
    """The serial libvirt gives the volume's disk: its id, cut to 20 characters."""
    return volume_id[:VOLUME_SERIAL_MAX]


def record(raw, server_names: dict[str, str] | None = None) -> Volume:
    names = server_names or {}
    attached = tuple(names.get(a.get("server_id"), a.get("server_id") or "?")
                     for a in raw.attachments or [])
    return Volume(id=raw.id, name=raw.name or raw.id, size_gb=raw.size or 0,
                  status=raw.status or "", attached_to=attached,
                  metadata={k: v for k, v in (raw.metadata or {}).items() if k.startswith(META)},
                  created=raw.created_at, multiattach=bool(raw.is_multiattach))


def doc_name(raw) -> str:
    """The name the launch document gives the volume: its own, else its id (a data
    volume's name is a folder on the server)."""
    return raw.name if raw.name and VOLUME_NAME_RE.match(raw.name) else raw.id


def listed(conn, server_names) -> list[Volume]:
    """The project's volumes that carry vmbinder:* metadata. server_names() maps
    server ids to names, asked only when one of them is attached."""
    with cloud_errors("listing volumes"):
        raws = [v for v in conn.block_storage.volumes(details=True)
                if any(k.startswith(META) for k in (v.metadata or {}))]
    names = server_names() if any(v.attachments for v in raws) else {}
    return [record(v, names) for v in raws]


def _find(conn, wanted: str, option: str):
    """The project's volume with this id or name (one list, matched here: clouds
    differ in the filters they let a member use); ConfigError listing the
    available ones when there is none, or several of that name."""
    with cloud_errors("listing volumes"):
        raws = list(conn.block_storage.volumes(details=True))
    hits = [v for v in raws if v.id == wanted] or [v for v in raws if v.name == wanted]
    if len(hits) > 1:
        raise ambiguous("volume", wanted, option)
    if not hits:
        hint = f"available volumes: {candidates(v.name for v in raws if v.status == 'available')}"
        if option == "--volume":
            hint += "; or give a size in GB for a new one, such as --volume 10"
        raise errors.ConfigError(f"volume {wanted!r} not found", hint)
    return hits[0]


def _refuse_busy(raw, role: str, server_names) -> None:
    """BadRequest when the volume is attached to a server (a data volume that
    several servers may attach at once, multiattach, aside), or not usable."""
    if role == DATA and raw.is_multiattach and raw.status in ("available", "in-use"):
        return
    if raw.status in BUSY or raw.attachments:
        names = server_names() if raw.attachments else {}
        where = ", ".join(names.get(a.get("server_id"), a.get("server_id") or "?")
                          for a in raw.attachments or []) or "a server"
        raise errors.BadRequest(
            f"volume {raw.name or raw.id} is in use by server {where}",
            f"a volume is attached to one server at a time: delete that server first "
            f"(vmbinder delete {where} keeps its volume), or choose another volume")
    if raw.status != "available":
        raise errors.BadRequest(f"volume {raw.name or raw.id} is {raw.status}, not available",
                                "choose another volume (vmbinder volumes lists them)")


def named(conn, spec: LaunchSpec, user: str | None, server_names, limits) -> tuple[VolumeUse, ...]:
    """The volumes --volume NAME and --data name, each found and free to attach."""
    wanted = [(spec.volume, WORK)] if spec.volume and not spec.volume_size else []
    uses = tuple(existing(conn, name, role, user, server_names)
                 for name, role in wanted + [(d, DATA) for d in spec.data])
    volume_metadata(uses, limits)  # too long to record: refused now
    return uses


def existing(conn, wanted: str, role: str, user: str | None, server_names) -> VolumeUse:
    """The volume --volume or --data names, checked free to attach. A work volume
    another user made is refused: work follows its owner."""
    option = "--volume" if role == WORK else "--data"
    raw = _find(conn, wanted, option)
    _refuse_busy(raw, role, server_names)
    vol = record(raw)
    if role == WORK and launched_by_other(vol, user):
        raise errors.BadRequest(
            f"volume {vol.name} was made by another user of the project ({vol.meta('owner')})",
            "attach a work volume of your own, or give a size for a new one (--volume 10); "
            "their volume can be a --data volume, read-only")
    return VolumeUse(id=raw.id, name=doc_name(raw), role=role, serial=serial(raw.id),
                     created=False, size_gb=raw.size)


def work_volume(conn, spec: LaunchSpec, user: str | None, ledger: Ledger,
                timeout: float = SETTLE) -> VolumeUse:
    """The new work volume <name>-work of spec.volume_size GB, made and available,
    in ledger (a failed launch removes it). A volume of that name already there (a
    server of that name kept it) is refused: attach it by name instead."""
    name = spec.work_volume_name
    with cloud_errors(f"looking up volume {name}"):
        there = [v for v in conn.block_storage.volumes(details=True) if v.name == name]
    if there:
        raise errors.BadRequest(
            f"a volume named {name!r} already exists ({there[0].id})",
            f"attach it with --volume {name}, or delete it first: vmbinder volumes delete {name}")
    meta = {f"{META}owner": user, f"{META}role": WORK, f"{META}made-for": spec.name}
    bs = conn.block_storage
    command = f"openstack volume delete {name}"
    with cloud_errors(f"creating volume {name}"), in_flight(
            ledger, "volume", name, lambda: _sweep(conn, name, spec.name), command):
        raw = bs.create_volume(name=name, size=spec.volume_size,
                               description=f"vmbinder work volume of {spec.name}",
                               metadata={k: v for k, v in meta.items() if v})
    volume_id = raw.id
    ledger.add(Created("volume", volume_id, name, lambda: remove(conn, volume_id, timeout),
                       f"openstack volume delete {volume_id}"))
    _wait_available(conn, raw, name, timeout)
    return VolumeUse(id=volume_id, name=name, role=WORK, serial=serial(volume_id), created=True,
                     size_gb=spec.volume_size)


def _wait_available(conn, raw, name: str, timeout: float):
    sdk = openstacksdk()
    try:
        with cloud_errors(f"waiting for volume {name}"):
            return conn.block_storage.wait_for_status(raw, "available", failures=["error"],
                                                      interval=1, wait=timeout)
    except errors.CloudError as exc:
        if isinstance(exc.__cause__, sdk.exceptions.ResourceFailure):
            raise errors.CloudError(
                f"volume {name} went to error: the cloud could not make it",
                "the cloud may have no room for it: try a smaller --volume, or ask its "
                "administrators", details={"volume_id": raw.id}) from exc
        raise


def _sweep(conn, name: str, server: str) -> None:
    """Volumes of this name made for this server: what a create call that failed or
    was interrupted may have made."""
    for raw in conn.block_storage.volumes(details=True):
        if raw.name == name and (raw.metadata or {}).get(f"{META}made-for") == server:
            remove(conn, raw.id, SETTLE)


def remove(conn, volume_id: str, timeout: float) -> None:
    """Delete the volume once no server holds it (a deleted server's volume takes a
    moment to be detached), and wait until it is gone."""
    bs = conn.block_storage
    deadline = time.monotonic() + timeout
    raw = find_or_none(bs.find_volume, volume_id)
    while raw is not None and (raw.status in BUSY or raw.attachments):
        if time.monotonic() > deadline:
            raise errors.CleanupFailed(
                f"volume {raw.name or volume_id} is still {raw.status} after {timeout:.0f} s",
                f"delete it once it is detached: openstack volume delete {volume_id}")
        time.sleep(1)
        raw = find_or_none(bs.find_volume, volume_id)
    if raw is None:
        return
    bs.delete_volume(raw, ignore_missing=True)
    bs.wait_for_delete(raw, interval=1, wait=timeout)


def mark_used(conn, uses: tuple[VolumeUse, ...], server: str) -> None:
    """Record on each volume the server it is attached to now (vmbinder:last-server)
    and how (vmbinder:role): `vmbinder volumes` lists what vmbinder attached too."""
    for use in uses:
        with cloud_errors(f"recording metadata on volume {use.name}"):
            conn.block_storage.set_volume_metadata(
                use.id, **{f"{META}last-server": server, f"{META}role": use.role})


def block_devices(image_id: str, uses: tuple[VolumeUse, ...]) -> list[dict]:
    """block_device_mapping_v2 of a server booted from an image with these volumes:
    Nova wants the image as boot device 0 once any mapping is given; the volumes
    are extra disks, never deleted with the server."""
    return [
        {"uuid": image_id, "source_type": "image", "destination_type": "local",
         "boot_index": 0, "delete_on_termination": True},
        *({"uuid": u.id, "source_type": "volume", "destination_type": "volume",
           "boot_index": -1, "delete_on_termination": False} for u in uses),
    ]


def create(conn, name: str, size_gb: int, user: str | None) -> Volume:
    """`vmbinder volumes create`: an empty volume (Cinder cannot fill one from a
    folder here), made and available."""
    with cloud_errors(f"looking up volume {name}"):
        there = [v for v in conn.block_storage.volumes(details=True) if v.name == name]
    if there:
        raise errors.BadRequest(f"a volume named {name!r} already exists ({there[0].id})",
                                "choose another name")
    with cloud_errors(f"creating volume {name}"):
        raw = conn.block_storage.create_volume(name=name, size=size_gb,
                                               description="vmbinder volume",
                                               metadata={f"{META}owner": user or "unknown"})
    raw = _wait_available(conn, raw, name, SETTLE)
    return record(raw)


def delete(conn, volume: Volume, timeout: float = SETTLE) -> list[Removed]:
    """Remove a volume no server holds; BadRequest naming the server while one does."""
    if volume.attached_to:
        where = ", ".join(volume.attached_to)
        raise errors.BadRequest(
            f"volume {volume.name} is attached to server {where}",
            f"delete the server first (vmbinder delete {where} keeps the volume), then: "
            f"vmbinder volumes delete {volume.name}")
    with cloud_errors(f"deleting volume {volume.name}"):
        remove(conn, volume.id, timeout)
    return [Removed("volume", volume.id, volume.name)]
