"""Snapshots on the local target: a server's disk made into an image folder.

The server is shut down cleanly (ACPI power button, then qemu's own shutdown if
the guest does not answer), its overlay is flattened with `qemu-img convert`
into `<images>/<name>/disk.qcow2` next to the image's kernel and initrd, and
the server is started again with the same command line and ports. The folder's
image.json says `snapshot_of` and carries the properties, which is how
`snapshots()` finds it; the automatic image choice never picks one.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

from vmbinder import errors
from vmbinder.providers.base import Created, Removed, Snapshot
from vmbinder.providers.local_image import IMAGE_FILE, list_images
from vmbinder.providers.local_qemu import (
    OVERLAY,
    QEMU_IMG,
    is_our_qemu,
    qmp,
    read_pid,
    stop,
)

#: Seconds the guest gets to power off after the ACPI power button.
POWERDOWN_TIMEOUT = 120.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def shut_down(folder: Path, pid: int | None, *, proc: Path, sleep, timeout: float) -> str:
    """Power the guest off; returns how ("powered off" or "stopped by qemu")."""
    if not is_our_qemu(pid, folder, proc):
        return "not running"
    try:
        qmp(folder, "system_powerdown")
    except errors.VmbinderError:
        pass
    for _ in range(int(timeout)):
        if not is_our_qemu(pid, folder, proc):
            return "powered off"
        sleep(1.0)
    # The guest did not answer: pause it (qemu flushes its disks) and end qemu.
    try:
        qmp(folder, "stop")
    except errors.VmbinderError:
        pass
    stop(pid, folder, proc=proc, sleep=sleep)
    return "stopped by qemu"


def write_image(provider, server_name: str, doc: dict, name: str, properties: dict[str, str],
                ledger) -> Snapshot:
    """The stopped server's disk, flattened, as the image folder <images>/<name>."""
    source = Path(doc["image"]["path"])
    target = provider.images / name
    provider.images.mkdir(parents=True, exist_ok=True)
    try:
        target.mkdir()
    except FileExistsError:
        raise errors.BadRequest(f"an image named {name} already exists ({target})",
                                "choose another name, or remove that folder") from None
    ledger.add(Created("snapshot", str(target), name, lambda: shutil.rmtree(target, ignore_errors=True),
                       f"rm -rf {target}"))
    if doc["image"].get("kind") == "folder":
        image_doc = json.loads((source / IMAGE_FILE).read_text())
        for key in ("kernel", "initrd"):
            if image_doc.get(key):
                _link_or_copy(source / image_doc[key], target / image_doc[key])
    else:
        image_doc = {}
    image_doc.update(name=name, disk="disk.qcow2", created=_now(), snapshot_of=server_name,
                     properties=dict(properties), baked=bool(image_doc.get("baked")))
    provider._run([QEMU_IMG, "convert", "-O", "qcow2", str(provider.folder(server_name) / OVERLAY),
                   str(target / "disk.qcow2")], provider.folder(server_name),
                  f"writing the snapshot of {server_name}")
    (target / IMAGE_FILE).write_text(json.dumps(image_doc, indent=2) + "\n")
    return Snapshot(id=str(target), name=name, properties=dict(properties),
                    created=image_doc["created"])


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def start_again(provider, server_name: str, doc: dict) -> None:
    """The server's qemu, with the command line and ports it had."""
    folder = provider.folder(server_name)
    provider._run(doc["argv"], folder, f"starting qemu for {server_name} again")
    doc["pid"] = read_pid(folder)
    provider._write(folder, doc)


def find(images: Path, properties: dict[str, str]) -> list[Snapshot]:
    found = []
    for folder in list_images(images):
        try:
            doc = json.loads((folder / IMAGE_FILE).read_text())
        except (OSError, ValueError):
            continue
        props = doc.get("properties") or {}
        if doc.get("snapshot_of") and all(props.get(k) == v for k, v in properties.items()):
            found.append(Snapshot(id=str(folder), name=folder.name, properties=dict(props),
                                  created=doc.get("created")))
    return sorted(found, key=lambda s: s.created or "", reverse=True)


def delete(snap: Snapshot) -> list[Removed]:
    folder = Path(snap.id)
    try:
        doc = json.loads((folder / IMAGE_FILE).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise errors.BadRequest(f"cannot read {folder / IMAGE_FILE}: {exc}",
                                f"remove the folder by hand if it is a snapshot: rm -rf {folder}")
    if not doc.get("snapshot_of"):
        raise errors.BadRequest(f"{folder} is an image, not a snapshot", "it is left alone")
    shutil.rmtree(folder)
    return [Removed("snapshot", snap.id, snap.name)]
