"""Which distribution a Glance image holds, the image a launch gets when
--image is not given, and the user `vmbinder ssh` logs in as.

Glance's `os_distro` and `os_version` properties say what an image is where the
cloud set them, and then its name does not count: an image named like Ubuntu
whose properties say Debian 12 is Debian 12. Without them the name does, in the
forms clouds use: `Featured-Ubuntu24`, `ubuntu-24.04-lts`, `Ubuntu 24.04 LTS`,
`Debian 13 (trixie)`, `debian-12-genericcloud`, vmbinder's own
`debian-12-baked`. The kernel and initrd parts of an upload, and snapshots, are
never chosen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmbinder import errors
from vmbinder.providers.base import candidates
from vmbinder.providers.openstack.common import bootable


@dataclass(frozen=True)
class Distro:
    label: str
    #: Glance's os_distro for it (lower case, as Glance's common properties have it).
    os_distro: str
    #: os_version values that name it: a number (with or without a point release) or a codename.
    versions: tuple[str, ...]
    #: How image names spell it.
    name: re.Pattern


def _named(distro: str, number: str, codename: str) -> re.Pattern:
    """distro then its number with any separator or none (`Ubuntu24`, `ubuntu-24.04`,
    `Debian 13`) and no other digits after it (`Ubuntu 24.10` is not 24), or its codename."""
    return re.compile(
        rf"(?<![a-z]){distro}[\s_.-]*(?:{number}(?![\d.])|{codename}(?![a-z]))", re.I)


#: The distributions a launch takes by default, best first.
PREFERRED = (
    Distro("Ubuntu 24.04", "ubuntu", ("24.04", "noble"),
           _named("ubuntu", r"24(?:\.?04(?:\.\d+)?)?", "noble")),
    Distro("Ubuntu 22.04", "ubuntu", ("22.04", "jammy"),
           _named("ubuntu", r"22(?:\.?04(?:\.\d+)?)?", "jammy")),
    Distro("Debian 13", "debian", ("13", "trixie"), _named("debian", r"13(?:\.\d+)?", "trixie")),
    Distro("Debian 12", "debian", ("12", "bookworm"), _named("debian", r"12(?:\.\d+)?", "bookworm")),
)
WANTED = "Ubuntu 24.04/22.04 or Debian 13/12"


def _property(image, key: str) -> str:
    value = getattr(image, key, None) or (getattr(image, "properties", None) or {}).get(key)
    return str(value or "").strip().lower()


def _version_is(value: str, names: tuple[str, ...]) -> bool:
    return any(value == v or value.startswith((f"{v}.", f"{v} ", f"{v}-")) for v in names)


def rank(image) -> int | None:
    """The index in PREFERRED of the distribution image holds, or None."""
    os_distro, os_version = _property(image, "os_distro"), _property(image, "os_version")
    name = image.name or ""
    for index, distro in enumerate(PREFERRED):
        if os_distro and os_distro != distro.os_distro:
            continue  # its properties say it is something else
        if os_distro and os_version:
            hit = _version_is(os_version, distro.versions)
        else:
            hit = bool(distro.name.search(name))
        if hit:
            return index
    return None


def is_snapshot(image) -> bool:
    """A server's snapshot (Nova marks them image_type=snapshot; vmbinder's own carry
    vmbinder_snapshot_of): it holds someone's disk, not a fresh system."""
    return (_property(image, "image_type") == "snapshot"
            or bool(_property(image, "vmbinder_snapshot_of")))


def choose(images) -> object:
    """The image a launch gets without --image: of the bootable images that are not
    snapshots, those of the best distribution in PREFERRED; the newest when they
    share one name (clouds replace an image under its name). Images of different
    names there (`Ubuntu 24.04` and `Ubuntu 24.04 GPU`) are not guessed between:
    ConfigError listing them, as when nothing matches (listing what there is)."""
    usable = [i for i in bootable(images) if not is_snapshot(i)]
    ranked = [(r, i) for i in usable if (r := rank(i)) is not None]
    if not ranked:
        raise errors.ConfigError(
            f"no --image given and no {WANTED} image found",
            f"choose one with --image (or VMBINDER_IMAGE): {candidates(i.name for i in usable)}",
        )
    best = min(r for r, _ in ranked)
    top = [i for r, i in ranked if r == best]
    names = sorted({i.name or i.id for i in top})
    if len(names) > 1:
        raise errors.ConfigError(
            f"no --image given and {len(names)} images are {PREFERRED[best].label}: "
            + ", ".join(repr(n) for n in names),
            f"choose one with --image (or VMBINDER_IMAGE): {candidates(names)}",
            details={"candidates": names},
        )
    return max(top, key=lambda i: i.created_at or "")


#: The login user of each distribution's cloud images (cloud-init's default_user there).
LOGIN_USERS = {"ubuntu": "ubuntu", "debian": "debian"}
#: A user name as useradd takes it; an image property that is not one is passed over.
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def login_user(image) -> str | None:
    """The user `vmbinder ssh` logs in as on servers of image: its os_admin_user
    property when set, else its distribution's (by os_distro, else as rank reads
    it); None when neither says."""
    admin = getattr(image, "os_admin_user", None) or (
        getattr(image, "properties", None) or {}).get("os_admin_user")
    admin = str(admin or "").strip()
    if admin and _USER_RE.fullmatch(admin):
        return admin
    os_distro = _property(image, "os_distro")
    if os_distro:
        return LOGIN_USERS.get(os_distro)
    found = rank(image)
    return None if found is None else LOGIN_USERS.get(PREFERRED[found].os_distro)
