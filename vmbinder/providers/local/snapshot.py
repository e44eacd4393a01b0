"""Snapshots on the local target: a server's disk made into an image folder.

`take` claims the folder <images>/<name> first (an existing name is refused
before the server is touched), then shuts the server down cleanly: the ACPI
power button (Debian's systemd powers off within seconds), or, when the guest
does not answer within POWERDOWN_TIMEOUT, qemu's `stop` (which flushes the
disks) and SIGTERM. The overlay is flattened with `qemu-img convert` into
<name>/disk.qcow2, next to the source image's kernel and initrd (hard links when
they can be), so the snapshot does not depend on the image it came from and
either can be removed first. The server is started again with its recorded
command line (the same ports, unless one was taken meanwhile) and the same seed,
so cloud-init does not run its first boot again.

The folder's image.json is the source image's with `snapshot_of` (the server),
`properties` (what `snapshots()` matches) and a new name and creation time; it
is written last, so a half-made folder is never taken for an image. The folder
is readable by its user only: the disk holds the first server's instance data,
its token included. The automatic image choice never picks a snapshot, and
`delete` removes nothing but snapshots.

A server started from a plain qcow2 cloud image gives a folder with the disk
only, booted by its own bootloader as the cloud image was.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

from vmbinder import errors
from vmbinder.images.folder import ImageFileError, created_now, list_images, read_image_file, write_image_file
from vmbinder.providers.base import Created, Ledger, Removed, Server, Snapshot
from vmbinder.providers.local.qemu import (
    OVERLAY,
    QEMU_IMG,
    is_our_qemu,
    qmp,
    stop,
    with_ports,
)
from vmbinder.providers.local.state import make_private, remove_folder, remove_or_fail

#: Seconds the guest gets to power off after the ACPI power button.
POWERDOWN_TIMEOUT = 180.0
#: Seconds between looks at whether qemu has exited.
POLL = 0.5
#: Seconds `qemu-img convert` may take: a built environment can be many GB.
CONVERT_TIMEOUT = 3600
DISK = "disk.qcow2"
#: A snapshot's name is a folder name under the images folder.
SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
POWERED_OFF, STOPPED_BY_QEMU, NOT_RUNNING = "powered off", "stopped by qemu", "not running"


def take(provider, server: Server, name: str, properties: dict[str, str],
         ledger: Ledger) -> Snapshot:
    """Shut the server down, flatten its disk into <images>/<name>, start it again."""
    folder = provider.folder(server.name)
    doc = provider.read_state(folder)
    if not doc.get("pid") or not doc.get("argv"):
        raise errors.BadRequest(f"{server.name} has not started: there is no disk to snapshot",
                                f"wait until it runs: vmbinder status {server.name}")
    image_doc, source = _source_image(doc)
    target = _claim(provider.images, name)
    ledger.add(Created("snapshot", str(target), name, lambda: remove_folder(target),
                       f"rm -rf {shlex.quote(str(target))}"))
    how = shut_down(folder, doc["pid"], proc=provider.proc, sleep=provider.sleep)
    try:
        snap = _write(provider, server.name, image_doc, source, target, name, properties, how)
    except BaseException as exc:
        try:
            start_again(provider, server.name)
        except errors.VmbinderError as again:
            if isinstance(exc, errors.VmbinderError):
                exc.hint = " ".join(filter(None, (
                    exc.hint, f"{server.name} did not start again either: {again.message}")))
        raise
    start_again(provider, server.name)
    return snap


def _source_image(doc: dict) -> tuple[dict, Path | None]:
    """The image.json of the image the server started from ({} for a cloud image file),
    and its folder (None for a file)."""
    image = doc.get("image") or {}
    if image.get("kind") != "folder":
        return {}, None
    source = Path(image["path"])
    try:
        image_doc = read_image_file(source)
    except ImageFileError as exc:
        raise errors.ConfigError(
            f"cannot read {exc.path}, the image this server started from: {exc.reason}",
            "a snapshot copies its kernel and settings; restore the image folder") from None
    return image_doc, source


def _claim(images: Path, name: str) -> Path:
    if not SNAPSHOT_NAME_RE.match(name or ""):
        raise errors.BadRequest(f"invalid snapshot name {name!r}",
                                "use letters, digits, '.', '_' and '-' (at most 128)")
    images.mkdir(parents=True, exist_ok=True)
    target = images / name
    if not make_private(target):
        raise errors.BadRequest(
            f"an image named {name!r} already exists ({target})",
            "choose another name; if it is an old snapshot, remove it: "
            f"rm -rf {shlex.quote(str(target))}")
    return target


def shut_down(folder: Path, pid: int | None, *, proc: Path, sleep: Callable[[float], None],
              timeout: float = POWERDOWN_TIMEOUT) -> str:
    """Bring the guest's disk to rest: the ACPI power button, waiting up to timeout
    for qemu to exit; else qemu's `stop` (it flushes the disks) and SIGTERM.
    Returns how: POWERED_OFF, STOPPED_BY_QEMU or NOT_RUNNING."""
    if not is_our_qemu(pid, folder, proc):
        return NOT_RUNNING
    try:
        qmp(folder, "system_powerdown")
    except errors.VmbinderError:
        pass  # no monitor: the fallback below
    else:
        for _ in range(int(timeout / POLL)):
            if not is_our_qemu(pid, folder, proc):
                return POWERED_OFF
            sleep(POLL)
    try:
        qmp(folder, "stop")
    except errors.VmbinderError:
        pass
    stop(pid, folder, proc=proc, sleep=sleep)
    return STOPPED_BY_QEMU


def _write(provider, server_name: str, image_doc: dict, source: Path | None, target: Path,
           name: str, properties: dict[str, str], how: str) -> Snapshot:
    """The stopped server's disk, flattened, with the source image's kernel and initrd."""
    folder = provider.folder(server_name)
    for key in ("kernel", "initrd"):
        if source is not None and image_doc.get(key):
            _link_or_copy(source / image_doc[key], target / image_doc[key])
    provider.run_tool([QEMU_IMG, "convert", "-O", "qcow2", str(folder / OVERLAY), str(target / DISK)],
                  folder, f"writing the snapshot of {server_name}", timeout=CONVERT_TIMEOUT)
    doc = {**image_doc, "name": name, "disk": DISK, "created": created_now(),
           "baked": bool(image_doc.get("baked")), "snapshot_of": server_name,
           "snapshot_shutdown": how, "properties": dict(properties)}
    write_image_file(target, doc)
    return Snapshot(id=str(target), name=name, properties=dict(properties), created=doc["created"])


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    except OSError as exc:
        raise errors.CloudError(f"cannot copy {src} into the snapshot: {exc}",
                                "check that the image folder is complete") from exc


def start_again(provider, server_name: str) -> None:
    """The server's qemu, with its recorded command line, running again."""
    folder = provider.folder(server_name)
    doc = provider.read_state(folder)  # as it is now: metadata may have changed meanwhile
    recorded, ports = list(doc["argv"]), dict(doc["ports"])
    provider.start_qemu(folder, doc, lambda now: with_ports(recorded, ports, now),
                    f"starting qemu for {server_name} again")
    provider.wait(provider.record(folder, doc), None, provider.settle, Ledger())


def find(images: Path, properties: dict[str, str]) -> list[Snapshot]:
    """The snapshots in the images folder carrying all these properties, newest first."""
    found = []
    for folder in list_images(images):
        try:
            doc = read_image_file(folder)
        except ImageFileError:
            continue
        if not doc.get("snapshot_of"):
            continue
        props = doc.get("properties") or {}
        if isinstance(props, dict) and all(props.get(k) == v for k, v in properties.items()):
            found.append(Snapshot(id=str(folder), name=folder.name, properties=dict(props),
                                  created=doc.get("created")))
    return sorted(found, key=lambda s: (s.created or "", s.name), reverse=True)


def delete(snap: Snapshot) -> list[Removed]:
    """Remove a snapshot's folder; nothing when it is gone; never an image that is not one."""
    folder = Path(snap.id)
    if not folder.is_dir():
        return []
    try:
        doc = read_image_file(folder)
    except ImageFileError as exc:
        if exc.problem != exc.NOT_AN_OBJECT:
            raise errors.BadRequest(
                f"cannot read {exc.path}, so {folder} is not known to be a snapshot: {exc.reason}",
                f"if it is one, remove it by hand: rm -rf {shlex.quote(str(folder))}") from None
        doc = {}  # a JSON document, but not an image's: not a snapshot either
    if not doc.get("snapshot_of"):
        raise errors.BadRequest(f"{folder} is an image, not a snapshot: it was left alone",
                                "remove an image you built by hand if you mean to")
    remove_or_fail(folder, "snapshot", f"the snapshot {folder}")
    return [Removed("snapshot", snap.id, snap.name)]


