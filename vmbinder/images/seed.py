"""The NoCloud seed disk a local server boots with: an ISO 9660 volume labelled
`cidata` holding the launch's user-data and meta-data."""

from __future__ import annotations

import io
import os
from pathlib import Path

from vmbinder import errors


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
