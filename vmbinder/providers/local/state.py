"""The local provider's state folders: one per server, and the only record of it.

Each server is a folder, $XDG_STATE_HOME/vmbinder/local/<name>/ (default
~/.local/state), readable by its user only:

  server.json    id, name, created, the same vmbinder:* metadata a cloud server
                 carries (the token included), forwarded ports, image, flavor,
                 accelerator, qemu's pid and command line (which holds no secret)
  overlay.qcow2  the server's disk, backed by the image's disk
  seed.iso       the NoCloud seed: user-data and meta-data
  console.log    the serial console
  qemu.pid, qmp.sock

The folder is the only record: removing it (vmbinder delete) removes the server.
The guest is reached through user-mode networking: its ports 22, 80 and 443 are
forwarded from free ports on 127.0.0.1, recorded as vmbinder:ssh-port,
vmbinder:http-port and vmbinder:https-port.

A server is ACTIVE once its qemu process is running and still running a moment
later, as a cloud reports ACTIVE once the hypervisor started the domain; the
boot itself is followed on the console by the readiness probes.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import shlex
import shutil
from pathlib import Path

from vmbinder import errors
from vmbinder.providers.base import ACTIVE, BUILDING, ERROR, STOPPED, UNKNOWN, Server
from vmbinder.providers.local.qemu import LOOPBACK, SERVER_JSON, is_our_qemu
from vmbinder.spec import NAME_RE


def make_private(folder: Path) -> bool:
    """Make folder, readable by its user only (whatever the umask); False when it
    was there already, and then it is left as it was."""
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        return False
    os.chmod(folder, 0o700)
    return True


def claim(root: Path, name: str) -> Path:
    """Make the folder of a new server under root; BadRequest when the name is taken."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    folder = root / name
    if not make_private(folder):
        raise errors.BadRequest(
            f"a vmbinder server named {name!r} already exists ({folder})",
            f"choose another --name, or remove it first: vmbinder delete {name}",
        )
    return folder


def folders(root: Path) -> list[Path]:
    """The server folders under root, by name."""
    try:
        return sorted(p for p in root.iterdir() if p.is_dir() and NAME_RE.match(p.name))
    except FileNotFoundError:
        return []


def documents(root: Path) -> list[dict]:
    """The server.json of every server under root that has a readable one."""
    docs = []
    for folder in folders(root):
        try:
            docs.append(read_state(folder))
        except errors.VmbinderError:
            continue
    return docs


def read_state(folder: Path) -> dict:
    """The server.json of a server's folder; CloudError when it cannot be read."""
    try:
        doc = json.loads((folder / SERVER_JSON).read_text())
        if not isinstance(doc, dict) or doc.get("name") != folder.name:
            raise ValueError(f"{SERVER_JSON} does not describe {folder.name}")
        return doc
    except (OSError, ValueError) as exc:
        raise errors.CloudError(f"cannot read {folder / SERVER_JSON}: {exc}") from exc


def write_state(folder: Path, doc: dict) -> None:
    """Replace the server.json of a server's folder at once (readable by its user only)."""
    write_private_json(folder / SERVER_JSON, doc)


def write_private_json(path: Path, doc: dict) -> None:
    """Replace the JSON file at path at once, readable by its user only (a
    leftover temporary file with a wider mode is narrowed first)."""
    tmp = path.parent / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def record(folder: Path, doc: dict, proc: Path) -> Server:
    """The Server a server.json describes, its state read from its qemu process."""
    pid = doc.get("pid")
    fault = None
    if is_our_qemu(pid, folder, proc):
        state, status = ACTIVE, "RUNNING"
    elif pid:
        state, status = STOPPED, "STOPPED"
    elif doc.get("argv"):
        state, status, fault = ERROR, "FAILED", "qemu did not start"
    else:
        state, status = BUILDING, "PREPARED"
    return Server(
        id=doc["id"], name=doc["name"], state=state, cloud_status=status,
        address=LOOPBACK if state == ACTIVE else None, metadata=dict(doc.get("metadata") or {}),
        fault=fault, created=doc.get("created"), flavor=doc.get("flavor"),
    )


def broken(folder: Path, exc: Exception) -> Server:
    """A folder without a readable server.json (an interrupted launch): shown
    so that `vmbinder delete NAME` can remove it."""
    return Server(id=folder.name, name=folder.name, state=UNKNOWN, cloud_status="BROKEN",
                  address=None, metadata={}, fault=str(exc))


def remove_folder(folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)


def remove_or_fail(folder: Path, kind: str, what: str) -> None:
    """Remove folder, or CleanupFailed naming it as a leftover of this kind, with
    the command that removes it by hand."""
    try:
        remove_folder(folder)
    except OSError as exc:
        command = f"rm -rf {shlex.quote(str(folder))}"
        raise errors.CleanupFailed(
            f"could not remove {what}: {exc}", command,
            details={"leftovers": [(kind, str(folder), str(exc), command)]}) from exc


def now() -> str:
    """The time server.json records as created: UTC, to the second, with a Z."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def user() -> str:
    """The name the owner metadata records: the login name, else the uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
