"""Snapshots on the local target: shut down, flatten into an image folder, start again."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_local_provider import env, fake, launched, make_image, provider  # noqa: F401
from vmbinder import errors
from vmbinder.providers import local_image as img
from vmbinder.providers import local_qemu as q
from vmbinder.providers.base import Ledger

PROPS = {"vmbinder_workshop": "course", "vmbinder_build": "abc123"}


def test_a_snapshot_is_an_image_folder_from_the_flattened_disk_and_the_server_runs_again(env, fake):
    run = launched(env, fake)
    folder = run.p.folder("demo")
    before = json.loads((folder / q.SERVER_JSON).read_text())["pid"]
    ledger = Ledger()
    snap = run.p.snapshot(run.server, "course-snapshot-1", PROPS, ledger)

    target = run.p.images / "course-snapshot-1"
    assert snap.id == str(target) and snap.properties == PROPS
    convert = [c for c in fake.calls if c[:2] == [q.QEMU_IMG, "convert"]]
    assert convert == [[q.QEMU_IMG, "convert", "-O", "qcow2", str(folder / q.OVERLAY),
                        str(target / "disk.qcow2")]]
    doc = json.loads((target / "image.json").read_text())
    assert doc["snapshot_of"] == "demo" and doc["properties"] == PROPS
    assert doc["kernel"] == "vmlinux" and (target / "vmlinux").read_bytes() == b"\x7fELF"
    assert (target / "initrd.img").is_file() and doc["disk"] == "disk.qcow2"
    # qemu was started again with the same command line (same ports).
    starts = [c for c in fake.calls if c[0] == q.QEMU]
    assert len(starts) == 2 and starts[0] == starts[1]
    after = json.loads((folder / q.SERVER_JSON).read_text())["pid"]
    assert after != before and run.p.get("demo").state == "active"
    assert [(i.kind, i.id) for i in ledger.items] == [("snapshot", str(target))]


def test_snapshots_are_found_by_property_and_never_chosen_by_default(env, fake):
    run = launched(env, fake)
    run.p.snapshot(run.server, "course-snapshot-1", PROPS, Ledger())
    assert [s.name for s in run.p.snapshots({"vmbinder_workshop": "course"})] == ["course-snapshot-1"]
    assert run.p.snapshots({"vmbinder_workshop": "other"}) == []
    assert img.resolve_image(None, run.p.images).name == "debian-12"
    # A seat passes the snapshot's folder as its image.
    chosen = img.resolve_image(str(run.p.images / "course-snapshot-1"), run.p.images)
    assert chosen.kernel is not None and chosen.disk.name == "disk.qcow2"


def test_deleting_a_snapshot_twice_and_refusing_a_built_image(env, fake):
    run = launched(env, fake)
    snap = run.p.snapshot(run.server, "course-snapshot-1", PROPS, Ledger())
    assert [r.kind for r in run.p.delete_snapshot(snap)] == ["snapshot"]
    assert run.p.delete_snapshot(snap) == []
    base = run.p.images / "debian-12"
    from vmbinder.providers.base import Snapshot

    with pytest.raises(errors.BadRequest):
        run.p.delete_snapshot(Snapshot(id=str(base), name="debian-12", properties={}))
    assert (base / "image.json").is_file()


def test_a_name_in_use_is_refused_and_the_server_still_runs(env, fake):
    run = launched(env, fake)
    make_image(run.p.images, "taken")
    with pytest.raises(errors.BadRequest) as info:
        run.p.snapshot(run.server, "taken", PROPS, Ledger())
    assert "already exists" in info.value.message
    assert run.p.get("demo").state == "active"


def test_the_memory_check_refuses_a_batch_larger_than_the_machine(env, fake, tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable: 4194304 kB\n")
    p = provider(env, fake, proc=proc)
    from tests.unit.test_local_provider import spec

    assert p.preflight([spec(f"s{i}", flavor="1c1g") for i in range(4)]) == []
    with pytest.raises(errors.QuotaExceeded) as info:
        p.preflight([spec(f"s{i}", flavor="2c2g") for i in range(3)])
    assert "need 6144 MB" in info.value.message and "4096 MB available" in info.value.message
