"""Volumes on the local target: qcow2 disk images beside the servers' folders.

Each volume is two files in the volumes folder, $XDG_STATE_HOME/vmbinder/volumes/
(beside local/, readable by its user only):

  <name>.qcow2   the disk
  <name>.json    id, name, size, created, the serial its disk gets, and the
                 vmbinder:* metadata a Cinder volume carries (owner, role,
                 made-for, last-server)

Which server holds a volume is not recorded with it: a server's server.json
lists the volumes it was started with, so a volume is attached while a server
folder names it, and free once that server is deleted. qemu gives each disk
the volume's serial (20 characters), which the guest finds at
/dev/disk/by-id/virtio-<serial>; data volumes are attached read-only
(readonly=on), so several servers may share one.
"""

from __future__ import annotations

import json
import os
import shlex
import uuid
from pathlib import Path

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
    candidates,
    volume_metadata,
)
from vmbinder.providers.local import state
from vmbinder.providers.local.qemu import INSTALL_HINT, QEMU_IMG, qemu_opt
from vmbinder.spec import VOLUME_NAME_RE

DISK, RECORD = ".qcow2", ".json"
#: Where mkfs.ext4 is when PATH (a user's) leaves out the sbin folders.
SBIN = ("/usr/sbin", "/sbin")


def volumes_root(server_root: Path) -> Path:
    """The volumes folder beside the servers' folders (state_root: .../vmbinder/local)."""
    return server_root.parent / "volumes"


def disk_of(root: Path, name: str) -> Path:
    return root / f"{name}{DISK}"


def read(root: Path, name: str) -> dict | None:
    try:
        doc = json.loads((root / f"{name}{RECORD}").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("name") == name else None


def write(root: Path, doc: dict) -> None:
    state.write_private_json(root / f"{doc['name']}{RECORD}", doc)


def documents(root: Path) -> list[dict]:
    try:
        names = sorted(p.name[:-len(RECORD)] for p in root.iterdir() if p.name.endswith(RECORD)
                       and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    return [doc for doc in (read(root, n) for n in names) if doc]


def holders(server_root: Path) -> dict[str, list[tuple[str, str]]]:
    """Volume name -> (server name, role) of every server folder that names it."""
    held: dict[str, list[tuple[str, str]]] = {}
    for doc in state.documents(server_root):
        for vol in doc.get("volumes") or []:
            held.setdefault(vol.get("name"), []).append((doc["name"], vol.get("role") or WORK))
    return held


def record(doc: dict, held: list[tuple[str, str]]) -> Volume:
    return Volume(id=doc["id"], name=doc["name"], size_gb=int(doc.get("size_gb") or 0),
                  status="in-use" if held else "available",
                  attached_to=tuple(server for server, _ in held),
                  metadata=dict(doc.get("metadata") or {}), created=doc.get("created"),
                  multiattach=True)


def listed(root: Path, server_root: Path) -> list[Volume]:
    held = holders(server_root)
    return [record(doc, held.get(doc["name"], [])) for doc in documents(root)]


def find(root: Path, wanted: str, option: str) -> dict:
    """The volume record with this name or id; ConfigError listing those there."""
    docs = documents(root)
    hits = [d for d in docs if wanted in (d["name"], d["id"])]
    if not hits:
        hint = f"volumes here: {candidates(d['name'] for d in docs)} (see vmbinder volumes)"
        if option == "--volume":
            hint += "; or give a size in GB for a new one, such as --volume 10"
        raise errors.ConfigError(f"volume {wanted!r} not found", hint)
    return hits[0]


def existing(root: Path, server_root: Path, wanted: str, role: str) -> VolumeUse:
    """The volume --volume or --data names, free to attach: a work volume attached to
    no server, a data volume attached to none as a work volume (read-only, it can be
    shared)."""
    doc = find(root, wanted, "--volume" if role == WORK else "--data")
    held = holders(server_root).get(doc["name"], [])
    busy = held if role == WORK else [(s, r) for s, r in held if r == WORK]
    if busy:
        where = ", ".join(s for s, _ in busy)
        raise errors.BadRequest(
            f"volume {doc['name']} is in use by server {where}",
            f"a volume is attached to one server at a time: delete that server first "
            f"(vmbinder delete {where} keeps its volume), or choose another volume")
    if not disk_of(root, doc["name"]).exists():
        raise errors.ConfigError(f"volume {doc['name']} has no disk ({disk_of(root, doc['name'])})",
                                 f"remove its record: vmbinder volumes delete {doc['name']}")
    return VolumeUse(id=doc["id"], name=doc["name"], role=role, serial=doc["serial"],
                     created=False, size_gb=doc.get("size_gb"))


def named(root: Path, server_root: Path, spec, limits) -> tuple[VolumeUse, ...]:
    """The volumes --volume NAME and --data name, found and free to attach; a new
    work volume's name checked free."""
    wanted = [(spec.volume, WORK)] if spec.volume and not spec.volume_size else []
    uses = tuple(existing(root, server_root, name, role)
                 for name, role in wanted + [(d, DATA) for d in spec.data])
    if spec.volume_size:
        name = spec.work_volume_name
        claim(root, name, f"attach it with --volume {name}, or delete it first: "
                          f"vmbinder volumes delete {name}")
    volume_metadata(uses, limits)  # too long to record: refused now
    return uses


def work_volume(provider, spec, ledger: Ledger) -> VolumeUse:
    """The new work volume <name>-work, in ledger (a failed launch removes it)."""
    doc = make(provider, provider.volumes_root, spec.work_volume_name, spec.volume_size,
               {f"{META}owner": state.user(), f"{META}role": WORK, f"{META}made-for": spec.name},
               ledger=ledger)
    return VolumeUse(id=doc["id"], name=doc["name"], role=WORK, serial=doc["serial"],
                     created=True, size_gb=spec.volume_size)


def create(provider, name: str, size_gb: int, from_dir: str | None) -> Volume:
    """`vmbinder volumes create`: an empty disk, or an ext4 filesystem of a folder's files."""
    if provider.which(QEMU_IMG) is None:
        raise errors.ConfigError(f"{QEMU_IMG} not found on PATH", INSTALL_HINT)
    claim(provider.volumes_root, name, "choose another name")
    doc = make(provider, provider.volumes_root, name, size_gb, {f"{META}owner": state.user()},
               from_dir=from_dir)
    return record(doc, [])


def claim(root: Path, name: str, what: str) -> None:
    """Refuse a name that is taken, or that is not one a file can have."""
    if not VOLUME_NAME_RE.match(name):
        raise errors.BadRequest(f"invalid volume name {name!r}",
                                "use letters, digits, '.', '_' and '-' (at most 128)")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    if read(root, name) is not None or disk_of(root, name).exists():
        raise errors.BadRequest(f"a volume named {name!r} already exists ({disk_of(root, name)})",
                                what)


def make(provider, root: Path, name: str, size_gb: int, metadata: dict[str, str], *,
         from_dir: str | None = None, ledger: Ledger | None = None) -> dict:
    """A new volume: an empty qcow2 disk, or (from_dir) an ext4 filesystem holding
    that folder's files (mkfs.ext4 -d), and its record. In ledger when given."""
    disk = disk_of(root, name)
    doc = {"id": str(uuid.uuid4()), "name": name, "size_gb": size_gb, "created": state.now(),
           "serial": uuid.uuid4().hex[:VOLUME_SERIAL_MAX], "metadata": metadata}
    if ledger is not None:
        ledger.add(Created("volume", doc["id"], name, lambda: remove_files(root, name),
                           f"rm -f {shlex.quote(str(disk))} {shlex.quote(str(root / (name + RECORD)))}"))
    try:
        if from_dir:
            _from_dir(provider, root, name, size_gb, from_dir)
        else:
            provider.run_tool([QEMU_IMG, "create", "-q", "-f", "qcow2", str(disk), f"{size_gb}G"],
                              root, f"creating volume {name}")
        os.chmod(disk, 0o600)
        write(root, doc)
    except BaseException:
        if ledger is None:
            remove_files(root, name)
        raise
    return doc


def _from_dir(provider, root: Path, name: str, size_gb: int, folder: str) -> None:
    source = Path(folder).expanduser()
    if not source.is_dir():
        raise errors.BadRequest(f"--from-dir {folder}: not a folder", "give a folder to copy")
    mkfs = provider.which("mkfs.ext4") or next(
        (str(Path(d) / "mkfs.ext4") for d in SBIN if (Path(d) / "mkfs.ext4").exists()), None)
    if mkfs is None:
        raise errors.ConfigError("mkfs.ext4 not found", "install it: sudo apt-get install e2fsprogs")
    raw = root / f".{name}.raw"
    try:
        with open(raw, "wb") as f:
            f.truncate(size_gb << 30)
        provider.run_tool([mkfs, "-q", "-F", "-t", "ext4", "-L", name[:16], "-d", str(source),
                           str(raw)], root, f"filling volume {name} from {source}", timeout=1800)
        provider.run_tool([QEMU_IMG, "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                           str(disk_of(root, name))], root, f"converting volume {name}",
                          timeout=1800)
    finally:
        raw.unlink(missing_ok=True)


def remove_files(root: Path, name: str) -> None:
    disk_of(root, name).unlink(missing_ok=True)
    (root / f"{name}{RECORD}").unlink(missing_ok=True)


def mark_used(root: Path, uses, server: str) -> None:
    """Record on each volume the server it is attached to now, and how."""
    for use in uses:
        doc = read(root, use.name)
        if doc is not None:
            doc["metadata"] = {**(doc.get("metadata") or {}), f"{META}last-server": server,
                               f"{META}role": use.role}
            write(root, doc)


def delete(root: Path, volume: Volume) -> list[Removed]:
    if volume.attached_to:
        where = ", ".join(volume.attached_to)
        raise errors.BadRequest(
            f"volume {volume.name} is attached to server {where}",
            f"delete the server first (vmbinder delete {where} keeps the volume), then: "
            f"vmbinder volumes delete {volume.name}")
    try:
        remove_files(root, volume.name)
    except OSError as exc:
        command = f"rm -f {shlex.quote(str(disk_of(root, volume.name)))}"
        raise errors.CleanupFailed(f"could not remove volume {volume.name}: {exc}", command,
                                   details={"leftovers": [("volume", volume.id, str(exc), command)]}
                                   ) from exc
    return [Removed("volume", volume.id, volume.name)]


#: The PCI slot of the first volume's disk. Devices given with -device are made
#: before the -drive if=virtio disks, so without a slot of their own the volumes
#: would take the first slots and the kernel would call one of them /dev/vda,
#: where images built by `vmbinder image build` look for their root.
FIRST_SLOT = 0x10
MAX_VOLUMES = 0x1F - FIRST_SLOT + 1


def qemu_args(root: Path, volumes: list[dict]) -> list[str]:
    """qemu's options for the server's volumes (server.json's "volumes"): each a
    virtio disk with its serial, on a PCI slot after the server's own disks, the
    data volumes read-only."""
    if len(volumes) > MAX_VOLUMES:
        raise errors.BadRequest(f"{len(volumes)} volumes are more than a local server can have",
                                f"attach at most {MAX_VOLUMES}")
    argv = []
    for n, vol in enumerate(volumes):
        drive = f"vol{n}"
        ro = ",readonly=on" if vol.get("role") == DATA else ""
        argv += ["-drive", f"file={qemu_opt(disk_of(root, vol['name']))},format=qcow2,if=none,"
                           f"id={drive}{ro}",
                 "-device", f"virtio-blk-pci,drive={drive},serial={vol['serial']},"
                            f"addr={FIRST_SLOT + n:#x}"]
    return argv


