"""The guest's home and volumes, imported and run in a scratch root: the home is
filled from the environment as built (GNU tar, as in the container), a later
build keeps what the user changed, and a work volume is formatted only when it
is empty (blkid and mkfs.ext4 run for real on disk image files)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vmbinder import launchdoc
from vmbinder.sources import Source
from vmbinder.spec import make_spec

guest = importlib.import_module("vmbinder.cloud_init.vmbinder_guest")


def document(volumes=None) -> dict:
    doc = launchdoc.document(make_spec(Source("https://github.com/o/r", "git"), name="demo"))
    doc["volumes"] = volumes or {"work": None, "data": []}
    return doc


class Recorder:
    """Stands in for guest.run: records every command; runs the home's fill (tar,
    as the container would, the image's home being `image_home`) and mkfs."""

    def __init__(self, root: Path, image_home: Path):
        self.root, self.image_home, self.calls = root, image_home, []

    def __call__(self, doc, argv, **kwargs):
        self.calls.append(argv)
        if argv[:2] == ["docker", "run"]:
            seed = argv[argv.index("-v") + 1].split(":")[0]
            script = argv[-1].replace(guest.CONTAINER_HOME, str(self.image_home))
            subprocess.run(["sh", "-c", script.replace("/seed", str(self.root) + seed)], check=True)
        elif argv[0] == "mkfs.ext4":
            subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def scratch(monkeypatch, tmp_path):
    root = tmp_path / "root"
    image_home = tmp_path / "image-home"
    image_home.mkdir()
    root.mkdir()
    monkeypatch.setattr(guest, "ROOT", str(root))
    recorder = Recorder(root, image_home)
    monkeypatch.setattr(guest, "run", recorder)
    ids = iter(f"sha256:{n}" for n in range(100))
    current = {"id": next(ids)}
    monkeypatch.setattr(guest, "image_id", lambda doc: current["id"])
    return root, image_home, recorder, lambda: current.update(id=next(ids))


def test_the_home_is_filled_once_from_the_environment_and_kept(scratch):
    root, image_home, recorder, _ = scratch
    (image_home / "index.ipynb").write_text("as built")
    (image_home / ".jupyter").mkdir()
    (image_home / ".jupyter" / "config.py").write_text("c = 1")
    doc = document()
    assert guest.ensure_home(doc) == "filled from the environment"
    home = root / "srv/vmbinder/home"
    assert (home / "index.ipynb").read_text() == "as built"
    assert (home / ".jupyter/config.py").read_text() == "c = 1"
    (fill,) = recorder.calls
    assert fill[:9] == ["docker", "run", "--rm", "--user", "0:0", "--network", "none",
                        "--entrypoint", "/bin/sh"]
    assert "-v" in fill and fill[fill.index("-v") + 1] == "/srv/vmbinder/home:/seed"
    (home / "index.ipynb").write_text("the user's edit")
    (home / "added.txt").write_text("the user's file")
    assert guest.ensure_home(doc) == "kept"  # a reboot or a restart: nothing copied
    assert len(recorder.calls) == 1
    assert (home / "index.ipynb").read_text() == "the user's edit"
    unit = guest.env_service_command(doc)
    assert " -v /srv/vmbinder/home:/home/jovyan " in unit and "/srv/vmbinder/work" not in unit


def test_another_build_keeps_what_the_user_changed_and_replaces_the_rest(scratch):
    root, image_home, recorder, rebuild = scratch
    for name in ("edited.ipynb", "untouched.ipynb", "deleted.ipynb"):
        (image_home / name).write_text(f"{name} v1")
    doc = document()
    guest.ensure_home(doc)
    home = root / "srv/vmbinder/home"
    (home / "edited.ipynb").write_text("the user's edit")
    (home / "deleted.ipynb").unlink()
    (home / "mine.txt").write_text("the user's file")
    for name in ("edited.ipynb", "untouched.ipynb", "deleted.ipynb", "new.ipynb"):
        (image_home / name).write_text(f"{name} v2")
    rebuild()
    said = guest.ensure_home(doc)
    assert said.startswith("updated for another build (1 unchanged files replaced")
    assert (home / "edited.ipynb").read_text() == "the user's edit"
    assert (home / "untouched.ipynb").read_text() == "untouched.ipynb v2"
    assert (home / "new.ipynb").read_text() == "new.ipynb v2"
    assert (home / "deleted.ipynb").read_text() == "deleted.ipynb v2"  # back from the build
    assert (home / "mine.txt").read_text() == "the user's file"


def test_a_link_in_the_home_never_lets_the_update_remove_a_file_outside_it(scratch, tmp_path):
    root, image_home, _, rebuild = scratch
    (image_home / "sub").mkdir()
    (image_home / "sub" / "f.txt").write_text("v1")
    doc = document()
    guest.ensure_home(doc)
    home = root / "srv/vmbinder/home"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("v1")
    st = (home / "sub/f.txt").stat()
    os.utime(outside / "f.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.rmtree(home / "sub")
    (home / "sub").symlink_to(outside)  # the user (or the image) made sub a link
    rebuild()
    guest.ensure_home(doc)
    assert (outside / "f.txt").read_text() == "v1"


def disk(path: Path, size_mb: int = 8) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size_mb << 20)
    return path


def attach(root: Path, serial: str, image: Path) -> None:
    by_id = root / "dev/disk/by-id"
    by_id.mkdir(parents=True, exist_ok=True)
    (by_id / f"virtio-{serial}").symlink_to(image)




def test_an_empty_work_volume_is_formatted_once_and_mounted_at_every_boot(scratch, tmp_path):
    for tool in ("blkid", "mkfs.ext4"):
        assert shutil.which(tool), f"{tool} is missing (util-linux, e2fsprogs)"
    root, _, recorder, _ = scratch
    attach(root, "0123456789abcdef0123", disk(tmp_path / "work.img"))
    doc = document({"work": {"name": "demo-work", "serial": "0123456789abcdef0123", "created": True},
                    "data": []})
    assert guest.ensure_volumes(doc) == "demo-work formatted"
    assert guest.probe_device("/dev/disk/by-id/virtio-0123456789abcdef0123") == "ext4"
    fstab = (root / "etc/fstab").read_text()
    assert ("/dev/disk/by-id/virtio-0123456789abcdef0123 /srv/vmbinder/volume auto "
            "defaults,nofail,x-systemd.device-timeout=30s 0 2 # vmbinder volume\n") in fstab
    assert ["mount", "/srv/vmbinder/volume"] in recorder.calls
    assert guest.ensure_volumes(doc) == "demo-work (ext4) kept"  # never formatted again
    assert [c[0] for c in recorder.calls].count("mkfs.ext4") == 1
    assert guest.home_dir(doc) == "/srv/vmbinder/volume/home"
    assert "RequiresMountsFor=/srv/vmbinder/volume\n" == guest.mounts_needed(doc)


@pytest.mark.parametrize("content, found", [
    (b"\x55\xaa", "a partition table"),
    (b"some user data", "data of no known kind"),
])
def test_a_volume_that_holds_anything_else_is_never_formatted(scratch, tmp_path, content, found):
    root, _, recorder, _ = scratch
    image = disk(tmp_path / "used.img")
    with open(image, "r+b") as fh:
        if content == b"\x55\xaa":  # an MBR with one Linux partition
            fh.seek(446)
            fh.write(bytes([0, 0, 2, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little")
                     + (4096).to_bytes(4, "little"))
            fh.seek(510)
        fh.write(content)
    attach(root, "used", image)
    doc = document({"work": {"name": "old", "serial": "used", "created": False}, "data": []})
    with pytest.raises(RuntimeError, match=f"volume old holds {found} and no filesystem: "
                                           "vmbinder formats only empty volumes"):
        guest.ensure_volumes(doc)
    assert not [c for c in recorder.calls if c[0] == "mkfs.ext4"]


def test_data_volumes_are_mounted_read_only_in_the_home(scratch, tmp_path):
    root, _, recorder, _ = scratch
    for name in ("one", "two"):
        image = disk(tmp_path / f"{name}.img")
        subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
        attach(root, name, image)
    doc = document({"work": None, "data": [{"name": "one", "serial": "one"}]})
    guest.ensure_volumes(doc)
    assert "/srv/vmbinder/data/one auto ro,noload,nofail" in (root / "etc/fstab").read_text()
    assert " -v /srv/vmbinder/data/one:/home/jovyan/data:ro " in guest.env_service_command(doc)
    both = document({"work": None, "data": [{"name": "one", "serial": "one"},
                                            {"name": "two", "serial": "two"}]})
    command = guest.env_service_command(both)
    assert " -v /srv/vmbinder/data/one:/home/jovyan/data/one:ro" in command
    assert " -v /srv/vmbinder/data/two:/home/jovyan/data/two:ro" in command
    assert guest.mounts_needed(both) == "RequiresMountsFor=/srv/vmbinder/data/one /srv/vmbinder/data/two\n"


def test_a_missing_volume_is_named(scratch, monkeypatch):
    monkeypatch.setattr(guest, "DEVICE_WAIT", 0)
    doc = document({"work": {"name": "demo-work", "serial": "nothere", "created": True}, "data": []})
    with pytest.raises(RuntimeError, match="volume demo-work is not attached: no "
                                           "/dev/disk/by-id/virtio-nothere after 0 s"):
        guest.ensure_volumes(doc)
