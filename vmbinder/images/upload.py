"""Upload an image folder made by `vmbinder image build` into OpenStack's Glance.

The folder's disk is a bare ext4 filesystem with no bootloader: it boots with
its own kernel and initrd (direct kernel boot). In Glance that is the AKI/ARI
convention, which Nova's libvirt driver honours, so one folder becomes three
images:

- ``<name>-kernel``: vmlinux, disk and container format ``aki``;
- ``<name>-initrd``: initrd.img, ``ari``;
- ``<name>``: disk.qcow2, ``qcow2``/``bare``, whose ``kernel_id`` and
  ``ramdisk_id`` name the two above and whose ``os_command_line`` is the
  kernel command line from image.json.

Every part carries ``vmbinder_image=<name>``: that is how a later upload knows
which images it may replace. If a part fails, or on Ctrl-C, the parts this
attempt created are deleted; ``--replace`` deletes the older set only once the
new one is active.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmbinder import __version__, errors
from vmbinder.images.folder import IMAGE_FILE, ImageFileError, disk_format, images_dir, read_image_file
from vmbinder.providers.base import Created, Ledger
from vmbinder.providers.openstack.glance import OWNER_PROPERTY, Found, Glance

KERNEL, INITRD, DISK = "kernel", "initrd", "disk"
ROLES = (KERNEL, INITRD, DISK)
#: role -> (image.json key and default file, Glance disk_format, container_format, name suffix)
PARTS = {
    KERNEL: ("kernel", "vmlinux", "aki", "aki", "-kernel"),
    INITRD: ("initrd", "initrd.img", "ari", "ari", "-initrd"),
    DISK: ("disk", "disk.qcow2", "qcow2", "bare", ""),
}
#: Glance refuses longer names and property values.
VALUE_MAX = 255
#: The image builder installs linux-image-cloud-amd64. Glance's common property
#: `architecture` is read by Nova as hw_architecture.
ARCHITECTURE = "x86_64"
PRIVATE, PUBLIC = "private", "public"
ACTIVE_TIMEOUT = 600
GIB = 1024 ** 3
# Phases of an upload, for the progress display.
CHECK, UPLOAD, REPLACE = "check", "upload", "replace"
BUILD_HINT = "build it (again) with: sudo vmbinder image build [--baked]"
#: What an image needs to read user-data on Nova: a config drive or the metadata service.
OPENSTACK_DATASOURCES = ("ConfigDrive", "OpenStack")

if TYPE_CHECKING:  # vmbinder.lifecycle loads jinja2 and yaml: imported when an upload runs
    from vmbinder.lifecycle import Reporter


@dataclass(frozen=True)
class ImageFolder:
    """A folder made by the image builder, checked: every file present, the disk qcow2."""

    path: Path
    name: str
    distro: str
    baked: bool
    created: str
    append: str
    contents: dict
    files: dict  # role -> Path
    disk_size: int  # the disk's virtual size in bytes


@dataclass(frozen=True)
class Uploaded:
    role: str
    id: str
    name: str
    disk_format: str
    container_format: str


@dataclass(frozen=True)
class Result:
    name: str
    images: tuple[Uploaded, ...]
    replaced: tuple[Found, ...] = ()


def read_folder(folder: Path) -> ImageFolder:
    """Check an image folder without touching the cloud; BadRequest naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise errors.BadRequest(
            f"{folder} is not an image folder",
            f"give the folder `vmbinder image build` wrote (such as {images_dir()}/debian-12-baked) "
            f"or its name there; {BUILD_HINT}")
    try:
        doc = read_image_file(folder)
    except ImageFileError as exc:
        message = {exc.MISSING: f"{folder} has no {IMAGE_FILE}",
                   exc.NOT_AN_OBJECT: f"{exc.path} is not a JSON object"}.get(exc.problem, exc.message)
        raise errors.BadRequest(message, BUILD_HINT) from None
    files = {}
    for role in ROLES:
        key, default = PARTS[role][:2]
        path = folder / str(doc.get(key) or default)
        if not path.is_file():
            raise errors.BadRequest(f"image {folder.name}: the {role} file {path.name} is missing "
                                    f"({path})", BUILD_HINT)
        if path.stat().st_size == 0:
            raise errors.BadRequest(f"image {folder.name}: the {role} file {path} is empty", BUILD_HINT)
        files[role] = path
    try:
        fmt, size = disk_format(files[DISK])
    except OSError as exc:
        raise errors.BadRequest(f"cannot read {files[DISK]}: {exc.strerror}", BUILD_HINT) from None
    if fmt != "qcow2":
        raise errors.BadRequest(f"{files[DISK]} is not a qcow2 image", BUILD_HINT)
    append = doc.get("append")
    if not isinstance(append, str) or not append.strip() or len(append) > VALUE_MAX:
        raise errors.BadRequest(
            f"{folder / IMAGE_FILE} has no usable 'append' (the kernel command line, at most "
            f"{VALUE_MAX} characters)", BUILD_HINT)
    sources = doc.get("datasources")
    missing = [d for d in OPENSTACK_DATASOURCES if d not in (sources if isinstance(sources, list) else [])]
    if missing:
        raise errors.BadRequest(
            f"image {folder.name}: its cloud-init does not read OpenStack's "
            f"{' or '.join(missing)} datasource (it lists {sources or 'only NoCloud'}), so on Nova "
            f"it would boot and never see the launch's user-data",
            "build it again with this version of `vmbinder image build`, which lists NoCloud, "
            "ConfigDrive and OpenStack")
    contents = doc.get("contents")
    return ImageFolder(
        path=folder, name=str(doc.get("name") or folder.name), distro=str(doc.get("distro") or ""),
        baked=bool(doc.get("baked")), created=str(doc.get("created") or ""), append=append.strip(),
        contents=contents if isinstance(contents, dict) else {}, files=files, disk_size=size,
    )


def check_name(name: str) -> str:
    longest = max(len(p[4]) for p in PARTS.values())
    if not name or name != name.strip() or not name.isprintable() or len(name) + longest > VALUE_MAX:
        raise errors.BadRequest(
            f"invalid image name {name!r}",
            f"use --name with printable characters, no spaces at either end, at most "
            f"{VALUE_MAX - longest} characters")
    return name


def part_name(name: str, role: str) -> str:
    return name + PARTS[role][4]


def properties(image: ImageFolder, name: str, role: str) -> dict[str, str]:
    """Glance properties of one part (kernel_id and ramdisk_id are added once known)."""
    props = {OWNER_PROPERTY: name, "vmbinder_role": role, "vmbinder_version": __version__,
             "vmbinder_baked": "true" if image.baked else "false", "architecture": ARCHITECTURE}
    distro, _, version = image.distro.rpartition("-")  # "debian-12"
    if distro and version:
        props.update(os_distro=distro, os_version=version)
    if role == DISK:
        # root=/dev/vda in the command line needs a virtio-blk disk.
        props.update(os_command_line=image.append, hw_disk_bus="virtio")
        info = {"vmbinder_created": image.created, "vmbinder_kernel": image.contents.get("kernel"),
                "vmbinder_repo2docker": image.contents.get("jupyter-repo2docker")}
        props.update({k: v for k, v in info.items() if isinstance(v, str) and 0 < len(v) <= VALUE_MAX})
    return props


def _existing(glance: Glance, name: str, replace: bool) -> tuple[Found, ...]:
    """vmbinder's images of this set, to replace; refuses any other image with one of its names."""
    project = glance.project_id()
    found = [f for role in ROLES for f in glance.named(part_name(name, role))]
    for f in found:
        if f.vmbinder_image != name or f.owner != project:
            whose = (f"is part of the vmbinder upload {f.vmbinder_image!r}" if f.vmbinder_image
                     and f.owner == project else "is not from a vmbinder upload in this project")
            raise errors.BadRequest(
                f"an image named {f.name!r} already exists ({f.id}) and {whose}",
                "choose another name with --name (--replace replaces only the images of an "
                "earlier upload of the same name)")
    if found and not replace:
        raise errors.BadRequest(
            f"vmbinder images named {name!r} already exist: "
            + ", ".join(f"{f.name} ({f.id})" for f in found),
            "add --replace to delete them once the new images are active, or choose another "
            "--name")
    return tuple(found)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def _put(glance: Glance, ledger: Ledger, reporter: Reporter, role: str, name: str, path: Path,
         props: dict[str, str], visibility: str, timeout: float, min_disk: int = 0) -> Uploaded:
    _, _, disk_fmt, container_fmt, _ = PARTS[role]
    reporter.phase(UPLOAD, f"creating image {name} ({disk_fmt})")
    try:
        image_id = glance.create(name, disk_fmt, container_fmt, visibility, props, min_disk)
    except errors.CloudError as exc:
        if visibility == PUBLIC and exc.details.get("http_status") == 403:
            exc.hint = "public images are usually for administrators: upload with --private"
        raise
    ledger.add(Created("image", image_id, name, lambda: glance.delete(image_id),
                       f"openstack image delete {image_id}"))

    def progress(done: int, size: int) -> None:
        reporter.phase(UPLOAD, f"{name}: {_size(done)} of {_size(size)}")

    glance.upload(image_id, path, progress)
    reporter.phase(UPLOAD, f"waiting for {name} to become active")
    glance.wait_active(image_id, timeout)
    return Uploaded(role, image_id, name, disk_fmt, container_fmt)


def _delete_replaced(glance: Glance, name: str, old: tuple[Found, ...], reporter: Reporter) -> None:
    leftovers = []
    for f in sorted(old, key=lambda f: f.name != name):  # the disk first: it names the others
        reporter.phase(REPLACE, f"deleting the replaced image {f.name} ({f.id})")
        try:
            glance.delete(f.id)
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            leftovers.append(("image", f.id, str(exc), f"openstack image delete {f.id}"))
    if leftovers:
        lines = [f"  image {id_}: {err}\n    remove it with: {cmd}" for _, id_, err, cmd in leftovers]
        raise errors.CleanupFailed(
            f"uploaded {name}, but could not delete the images it replaces:\n" + "\n".join(lines),
            "run the commands above (with the same OS_CLOUD) to remove them",
            details={"leftovers": leftovers})


def upload_image(glance: Glance, folder: Path, *, name: str | None = None, replace: bool = False,
                 visibility: str = PRIVATE, reporter: Reporter | None = None,
                 timeout: float = ACTIVE_TIMEOUT) -> Result:
    """Upload the kernel, the initrd and the disk of an image folder, each active
    before the next; the folder is checked before any call to the cloud."""
    from vmbinder.lifecycle import NullReporter
    from vmbinder.rollback import roll_back_or_report

    reporter = reporter or NullReporter()
    image = read_folder(folder)
    name = check_name(image.name if name is None else name)
    reporter.phase(CHECK, f"looking for images named {name}")
    old = _existing(glance, name, replace)
    ledger = Ledger()
    made: dict[str, Uploaded] = {}
    try:
        for role in ROLES:
            props = properties(image, name, role)
            min_disk = 0
            if role == DISK:
                props.update(kernel_id=made[KERNEL].id, ramdisk_id=made[INITRD].id)
                min_disk = math.ceil(image.disk_size / GIB)
            made[role] = _put(glance, ledger, reporter, role, part_name(name, role),
                              image.files[role], props, visibility, timeout, min_disk)
    except BaseException as exc:
        roll_back_or_report(ledger, reporter, exc, what="upload")
        raise
    if old:
        _delete_replaced(glance, name, old, reporter)
    return Result(name, tuple(made[r] for r in ROLES), old)
