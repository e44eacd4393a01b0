"""An image folder: image.json and the files it names, relative to it.

`vmbinder image build` makes them, local snapshots are them, the local target
boots them and `vmbinder image upload` sends them to Glance. This module reads
and writes image.json (one reader, one atomic writer), lists the folders of the
images folder and finds one by name or path. A plain qcow2 cloud image file is
booted as an image too.
"""

from __future__ import annotations

import datetime
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


class ImageFileError(errors.ConfigError):
    """An image folder's image.json is missing, cannot be read or parsed, or is not
    a JSON object. The message is "cannot read <path>: <reason>"; a caller that says
    it in its own words, or as another error, uses path, problem and reason."""

    MISSING, UNREADABLE, NOT_AN_OBJECT = "missing", "unreadable", "not an object"

    def __init__(self, path: Path, problem: str, reason: str):
        super().__init__(f"cannot read {path}: {reason}")
        self.path, self.problem, self.reason = path, problem, reason


def read_image_file(folder: Path) -> dict:
    """The parsed image.json of folder; ImageFileError when there is none to use."""
    path = folder / IMAGE_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ImageFileError(path, ImageFileError.MISSING, str(exc)) from None
    except (OSError, ValueError) as exc:
        raise ImageFileError(path, ImageFileError.UNREADABLE, str(exc)) from None
    if not isinstance(doc, dict):
        raise ImageFileError(path, ImageFileError.NOT_AN_OBJECT, "not a JSON object")
    return doc


def write_image_file(folder: Path, doc: dict) -> None:
    """Write folder's image.json whole or not at all (a temporary file renamed over
    it), so a half-written file is never taken for an image."""
    tmp = folder / f".{IMAGE_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, folder / IMAGE_FILE)


def created_now() -> str:
    """image.json's `created`: UTC to the second, the same for built images and
    snapshots, so they sort together."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def load_image(folder: Path) -> Image:
    """An image folder: image.json and the files it names, relative to it."""
    folder = folder.resolve()
    try:
        doc = read_image_file(folder)
    except ImageFileError as exc:
        exc.hint = "build the image again, or pass the path of a qcow2 cloud image to --image"
        raise

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
    """The image folders in folder (those with an image.json), by name."""
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
        return bool(read_image_file(folder).get("snapshot_of"))
    except ImageFileError:
        return False


def _choose_hint(folder: Path) -> str:
    names = [p.name for p in list_images(folder)]
    have = ", ".join(names) if names else f"(none in {folder})"
    return (f"choose one with --image (or VMBINDER_IMAGE): {have}; --image also takes an "
            f"image folder or a qcow2 cloud image file ({IMAGES_ENV} moves the images folder)")


def find_folder(given: str, images: Path | None = None) -> Path:
    """`image upload`'s FOLDER as typed: a path, or else the name of a folder in the
    images folder. (--image, in resolve_image, tries the name first.)"""
    path = Path(given).expanduser()
    images = images or images_dir()
    if not path.is_dir() and "/" not in given and (images / given).is_dir():
        return images / given
    return path
