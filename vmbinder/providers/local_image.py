"""What a local server boots from: guest images (a folder made by the image
builder, or a plain qcow2 cloud image) and the NoCloud seed disk."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vmbinder import errors

#: Folder of guest images; default $XDG_CACHE_HOME/vmbinder/images.
IMAGES_ENV = "VMBINDER_IMAGES_DIR"
IMAGE_FILE = "image.json"
QCOW2_MAGIC = b"QFI\xfb"


def images_dir(env: Mapping[str, str] = os.environ) -> Path:
    if env.get(IMAGES_ENV):
        return Path(env[IMAGES_ENV]).expanduser()
    cache = env.get("XDG_CACHE_HOME")
    home = Path(env.get("HOME") or Path.home())
    return (Path(cache) if cache else home / ".cache") / "vmbinder" / "images"


@dataclass(frozen=True)
class Image:
    """What to boot: a folder made by the image builder (kernel, initrd, disk,
    kernel command line), or a plain cloud image booted by its own bootloader."""

    name: str
    path: Path
    disk: Path
    disk_format: str
    virtual_size: int = 0
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    baked: bool = False
    created: str = ""


def disk_format(path: Path) -> tuple[str, int]:
    """("qcow2" or "raw", the disk's virtual size in bytes)."""
    with open(path, "rb") as f:
        header = f.read(32)
        if header[:4] == QCOW2_MAGIC and len(header) == 32:
            return "qcow2", int.from_bytes(header[24:32], "big")
        return "raw", f.seek(0, os.SEEK_END)


def load_image(folder: Path) -> Image:
    """An image folder: image.json and the files it names, relative to it."""
    folder = folder.resolve()
    try:
        doc = json.loads((folder / IMAGE_FILE).read_text())
    except (OSError, ValueError) as exc:
        doc = exc
    if not isinstance(doc, dict):
        raise errors.ConfigError(
            f"cannot read {folder / IMAGE_FILE}: {doc if isinstance(doc, Exception) else 'not a JSON object'}",
            "build the image again, or pass the path of a qcow2 cloud image to --image",
        )

    def member(key: str, required: bool) -> Path | None:
        value = doc.get(key)
        if not value:
            if required:
                raise errors.ConfigError(f"{folder / IMAGE_FILE} has no {key!r}",
                                         "build the image again")
            return None
        path = folder / value
        if not path.is_file():
            raise errors.ConfigError(f"image {folder.name}: {key} file {path} is missing",
                                     "build the image again")
        return path

    disk = member("disk", True)
    fmt, size = disk_format(disk)
    kernel = member("kernel", False)
    initrd = member("initrd", False)
    append = doc.get("append") or (f"root={doc.get('root', '/dev/vda')} console=ttyS0"
                                   if kernel else None)
    return Image(
        name=str(doc.get("name") or folder.name), path=folder, disk=disk,
        disk_format=fmt, virtual_size=size, kernel=kernel, initrd=initrd, append=append,
        baked=bool(doc.get("baked")), created=str(doc.get("created") or ""),
    )


def cloud_image(path: Path) -> Image:
    """A single qcow2 file (an Ubuntu or Debian cloud image): its own bootloader boots it."""
    path = path.resolve()
    fmt, size = disk_format(path)
    if fmt != "qcow2":
        raise errors.ConfigError(
            f"{path} is not a qcow2 image",
            f"convert it first: qemu-img convert -O qcow2 {path} {path.stem}.qcow2",
        )
    return Image(name=path.name, path=path, disk=path, disk_format=fmt, virtual_size=size)


def list_images(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if (p / IMAGE_FILE).is_file())
    except OSError:
        return []


def resolve_image(wanted: str | None, folder: Path) -> Image:
    """--image: a name under the images folder, an image folder, or a qcow2 file.
    None picks a baked image before an unbaked one, then the newest."""
    if wanted:
        as_path = Path(wanted).expanduser()
        looks_like_path = "/" in wanted or wanted.startswith((".", "~"))
        if not looks_like_path and (folder / wanted / IMAGE_FILE).is_file():
            return load_image(folder / wanted)
        if as_path.is_dir() and (as_path / IMAGE_FILE).is_file():
            return load_image(as_path)
        if as_path.is_file():
            return cloud_image(as_path)
        if as_path.is_dir():
            raise errors.ConfigError(f"{as_path} has no {IMAGE_FILE}",
                                     "pass an image folder made by the image builder")
        raise errors.ConfigError(f"image {wanted!r} not found", _choose_hint(folder))
    # Snapshots of a workshop's first seat are chosen by the workshop, never by default.
    found = [load_image(p) for p in list_images(folder) if not _is_snapshot(p)]
    if not found:
        raise errors.ConfigError(f"no --image given and no image in {folder}", _choose_hint(folder))
    return max(found, key=lambda i: (i.baked, i.created, i.name))


def _is_snapshot(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / IMAGE_FILE).read_text()).get("snapshot_of"))
    except (OSError, ValueError, AttributeError):
        return False


def _choose_hint(folder: Path) -> str:
    names = [p.name for p in list_images(folder)]
    have = ", ".join(names) if names else f"(none in {folder})"
    return (f"choose one with --image (or VMBINDER_IMAGE): {have}; --image also takes an "
            f"image folder or a qcow2 cloud image file ({IMAGES_ENV} moves the images folder)")


def write_seed(path: Path, user_data: str, meta_data: str) -> None:
    """An ISO 9660 volume labelled `cidata` holding user-data and meta-data
    (Rock Ridge and Joliet names), readable by this user only."""
    try:
        import pycdlib
    except ImportError as exc:
        raise errors.ConfigError(
            "the local target needs the pycdlib package to write the NoCloud seed",
            "pip install pycdlib (in the environment vmbinder runs from)",
        ) from exc

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, text in (("user-data", user_data), ("meta-data", meta_data)):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/{name.replace('-', '').upper()}.;1",
                   rr_name=name, joliet_path=f"/{name}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        iso.write_fp(f)
    iso.close()


def read_seed(path: Path) -> dict[str, str]:
    """The files of a seed ISO by their Rock Ridge names, and its label under "volume"."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        found = {"volume": iso.pvd.volume_identifier.decode().strip()}
        for child in iso.list_children(rr_path="/"):
            if child.is_file():
                out = io.BytesIO()
                name = child.rock_ridge.name().decode()
                iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
                found[name] = out.getvalue().decode()
        return found
    finally:
        iso.close()
