"""Snapshots on the local target: shut down, flatten into an image folder, start again."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.unit.test_local_provider import (  # noqa: F401
    TAKEN,
    FakeQemu,
    env,
    fake,
    launched,
    make_image,
    provider,
    qcow2_header,
    spec,
)
from vmbinder import errors, lifecycle, rollback
from vmbinder.images import folder as img
from vmbinder.images import seed as seed_disk
from vmbinder.providers.base import ACTIVE, STOPPED, Ledger, Snapshot
from vmbinder.providers.local import qemu as q
from vmbinder.providers.local import snapshot as ls

PROPS = {"vmbinder_workshop": "course", "vmbinder_build": "abc123"}


class Monitor:
    """A QMP monitor on the server's qmp.sock: records the commands, and runs
    on[command]() before answering (to power the stand-in guest off)."""

    def __init__(self, folder, on=None):
        self.got: list[str] = []
        self.on = on or {}
        self.fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(f"/proc/self/fd/{self.fd}/{q.QMP_SOCKET}")
        self.sock.listen(4)
        self.sock.settimeout(0.05)
        self.done = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.done:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with conn, conn.makefile("rwb") as f:
                f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
                f.flush()
                for line in f:
                    command = json.loads(line)["execute"]
                    self.got.append(command)
                    if command in self.on:
                        self.on[command]()
                    f.write(b'{"return": {}}\n')
                    f.flush()

    def close(self):
        self.done = True
        self.thread.join(timeout=5)
        self.sock.close()
        os.close(self.fd)


def power_off(fake):
    """What the guest does on the ACPI power button: qemu exits."""
    def off():
        child = fake.children[-1]
        child.terminate()
        child.wait()
    return off


class Runner:
    """The fake qemu and qemu-img, with `qemu-img convert` writing a qcow2 header
    (or failing with convert_error) and qemu failing from its restart_fails-th start."""

    def __init__(self, fake, convert_error=None, restart_fails=None, restart_fails_times=99):
        self.fake, self.convert_error = fake, convert_error
        self.restart_fails, self.times = restart_fails, restart_fails_times
        self.starts = 0

    def __call__(self, argv, **kw):
        if argv[:2] == [q.QEMU_IMG, "convert"]:
            self.fake.calls.append(list(argv))
            if isinstance(self.convert_error, Exception):
                raise self.convert_error
            if self.convert_error:
                return subprocess.CompletedProcess(argv, 1, "", self.convert_error)
            assert kw["timeout"] == ls.CONVERT_TIMEOUT
            with open(argv[-1], "wb") as f:
                f.write(qcow2_header(20 << 30))
            return subprocess.CompletedProcess(argv, 0, "", "")
        if argv[0] == q.QEMU:
            self.starts += 1
            if self.restart_fails and self.starts > 1 and self.times > 0:
                self.times -= 1
                self.fake.calls.append(list(argv))
                return subprocess.CompletedProcess(argv, 1, "", self.restart_fails)
        return self.fake(argv, **kw)


def seat(env, fake, *, run_kw=None, s=None):
    """A running stand-in server "demo", its provider using Runner."""
    runner = Runner(fake, **(run_kw or {}))
    return launched(env, fake, s=s, run=runner)


def snap_of(run, name="course-snapshot-1", props=PROPS, ledger=None):
    return run.p.snapshot(run.server, name, props, ledger if ledger is not None else Ledger())


def doc_of(run, name="demo"):
    return json.loads((run.p.folder(name) / q.SERVER_JSON).read_text())


def qemu_starts(fake):
    return [c for c in fake.calls if c[0] == q.QEMU]


def converts(fake):
    return [c for c in fake.calls if c[:2] == [q.QEMU_IMG, "convert"]]


# -- taking a snapshot -------------------------------------------------------------

def test_a_clean_power_off_then_a_flattened_image_folder_then_the_same_qemu_again(env, fake):
    run = seat(env, fake)
    folder = run.p.folder("demo")
    before = doc_of(run)
    first = fake.children[0]
    monitor = Monitor(folder, {"system_powerdown": power_off(fake)})
    ledger = Ledger()
    try:
        snap = snap_of(run, ledger=ledger)
    finally:
        monitor.close()

    assert monitor.got == ["qmp_capabilities", "system_powerdown"]  # no `stop`: it powered off
    assert first.returncode == -signal.SIGTERM  # by power_off(), not by the provider's stop()
    target = run.p.images / "course-snapshot-1"
    assert snap == Snapshot(id=str(target), name="course-snapshot-1", properties=PROPS,
                            created=snap.created)
    assert converts(fake) == [[q.QEMU_IMG, "convert", "-O", "qcow2", str(folder / q.OVERLAY),
                               str(target / "disk.qcow2")]]
    image = json.loads((target / "image.json").read_text())
    base = json.loads((run.p.images / "debian-12" / "image.json").read_text())
    assert image == {**base, "name": "course-snapshot-1", "created": snap.created,
                     "snapshot_of": "demo", "snapshot_shutdown": "powered off",
                     "properties": PROPS, "disk": "disk.qcow2", "baked": False}
    # kernel and initrd are hard links to the source image's (same filesystem)
    for name in ("vmlinux", "initrd.img"):
        assert (target / name).stat().st_ino == (run.p.images / "debian-12" / name).stat().st_ino
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert not (target / ".image.json.tmp").exists()

    # started again with the recorded command line: same ports, same overlay, same seed
    starts = qemu_starts(fake)
    assert len(starts) == 2 and starts[1] == starts[0] == before["argv"]
    after = doc_of(run)
    assert after["pid"] == fake.children[1].pid != before["pid"]
    assert after["ports"] == before["ports"] and after["metadata"] == before["metadata"]
    assert run.p.get("demo").state == ACTIVE

    assert [(i.kind, i.id, i.name) for i in ledger.items] == [
        ("snapshot", str(target), "course-snapshot-1")]
    assert ledger.items[0].command == f"rm -rf {target}"
    ledger.items[0].remove()
    assert not target.exists() and run.p.get("demo").state == ACTIVE


def test_a_guest_that_ignores_the_power_button_is_paused_and_ended(env, fake):
    run = seat(env, fake)
    first = fake.children[0]
    monitor = Monitor(run.p.folder("demo"))  # answers, but the guest stays on
    try:
        snap = snap_of(run)
    finally:
        monitor.close()
    assert monitor.got == ["qmp_capabilities", "system_powerdown", "qmp_capabilities", "stop"]
    assert first.wait(timeout=5) == -signal.SIGTERM
    image = json.loads((run.p.images / snap.name / "image.json").read_text())
    assert image["snapshot_shutdown"] == "stopped by qemu"
    assert run.p.get("demo").state == ACTIVE


def test_without_a_monitor_qemu_is_ended_at_once(env, fake):
    run = seat(env, fake)
    slept = []

    def sleep(seconds):  # the short waits for qemu to go are real: it takes a moment to exit
        slept.append(seconds)
        time.sleep(min(seconds, 0.1))

    run.p.sleep = sleep
    snap_of(run)
    assert ls.POLL not in slept  # no waiting for a power-off that was never asked for
    assert sum(slept) < 5
    assert fake.children[0].wait(timeout=5) == -signal.SIGTERM
    assert run.p.get("demo").state == ACTIVE


def test_the_power_off_wait_is_bounded(tmp_path):
    waits = []
    folder = tmp_path / "st"
    folder.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              f"{folder}/overlay.qcow2"])
    monitor = Monitor(folder)
    try:
        how = ls.shut_down(folder, child.pid, proc=Path("/proc"), sleep=waits.append,
                           timeout=30)
    finally:
        monitor.close()
        child.kill()
        child.wait()
    assert how == ls.STOPPED_BY_QEMU
    assert waits[:61].count(ls.POLL) == 60 and "stop" in monitor.got


def test_a_name_in_use_or_invalid_is_refused_before_the_server_is_touched(env, fake):
    run = seat(env, fake)
    taken = make_image(run.p.images, "taken")
    pid = doc_of(run)["pid"]
    for name, said in (("taken", "already exists"), ("../escape", "invalid snapshot name"),
                       ("a/b", "invalid snapshot name"), ("", "invalid snapshot name")):
        ledger = Ledger()
        with pytest.raises(errors.BadRequest) as info:
            snap_of(run, name, ledger=ledger)
        assert said in info.value.message and ledger.items == []
    assert doc_of(run)["pid"] == pid and fake.children[0].poll() is None
    assert len(qemu_starts(fake)) == 1 and converts(fake) == []
    assert json.loads((taken / "image.json").read_text())["name"] == "taken"
    assert not (run.p.images.parent / "escape").exists()


def test_a_server_that_never_started_is_refused(env, fake):
    p = provider(env, fake)
    s = spec()
    p.prepare(s, Ledger())
    with pytest.raises(errors.BadRequest, match="has not started"):
        p.snapshot(p.get("demo"), "snap", PROPS, Ledger())
    assert not (p.images / "snap").exists()


def test_a_failed_convert_starts_the_server_again_and_rollback_removes_the_folder(env, fake):
    run = seat(env, fake, run_kw={"convert_error": "qemu-img: error while writing: No space left"})
    ledger = Ledger()
    with pytest.raises(errors.CloudError) as info:
        snap_of(run, ledger=ledger)
    assert "No space left" in info.value.message
    target = run.p.images / "course-snapshot-1"
    assert not (target / "image.json").exists()  # never taken for an image
    assert run.p.snapshots({}) == []
    assert run.p.get("demo").state == ACTIVE and len(qemu_starts(fake)) == 2
    assert rollback.rollback(ledger, lifecycle.NullReporter()) == []
    assert not target.exists()


def test_a_failed_convert_and_restart_say_both(env, fake):
    run = seat(env, fake, run_kw={"convert_error": "No space left on device",
                                  "restart_fails": "qemu-system-x86_64: some failure"})
    with pytest.raises(errors.CloudError) as info:
        snap_of(run)
    assert "No space left" in info.value.message
    assert "demo did not start again either" in info.value.hint
    assert run.p.get("demo").state == STOPPED


def test_a_convert_that_takes_too_long_says_so(env, fake):
    slow = subprocess.TimeoutExpired(["qemu-img"], ls.CONVERT_TIMEOUT)
    run = seat(env, fake, run_kw={"convert_error": slow})
    with pytest.raises(errors.CloudError) as info:
        snap_of(run)
    assert info.value.message == (
        f"writing the snapshot of demo failed: it took more than {ls.CONVERT_TIMEOUT} s")
    assert "disk space" in info.value.hint and run.p.get("demo").state == ACTIVE


def test_a_restart_that_fails_is_an_error_and_the_snapshot_is_in_the_ledger(env, fake):
    run = seat(env, fake, run_kw={"restart_fails": "qemu-system-x86_64: some failure"})
    ledger = Ledger()
    with pytest.raises(errors.CloudError, match="starting qemu for demo again failed"):
        snap_of(run, ledger=ledger)
    assert [i.kind for i in ledger.items] == ["snapshot"]
    rollback.rollback(ledger, lifecycle.NullReporter())
    assert not (run.p.images / "course-snapshot-1").exists()


def test_a_port_taken_while_it_was_off_is_chosen_again(env, fake):
    run = seat(env, fake, run_kw={"restart_fails": TAKEN, "restart_fails_times": 1})
    before = doc_of(run)
    snap_of(run)
    after = doc_of(run)
    assert set(after["ports"].values()).isdisjoint(before["ports"].values())
    assert after["metadata"]["vmbinder:http-port"] == str(after["ports"]["http-port"])
    retried = qemu_starts(fake)[-1]
    assert retried == q.with_ports(before["argv"], before["ports"], after["ports"])
    assert retried != before["argv"] and after["argv"] == retried
    assert run.p.get("demo").state == ACTIVE


def test_with_ports_changes_only_the_forwards():
    old = {"ssh-port": 40022, "http-port": 40080, "https-port": 40443}
    new = {"ssh-port": 50022, "http-port": 50080, "https-port": 50443}
    forwards = ",".join(f"hostfwd=tcp:127.0.0.1:{{}}-:{guest}" for guest in (22, 80, 443))
    argv = ["qemu", "-m", "40080", "-netdev",
            "user,id=net0," + forwards.format(40022, 40080, 40443), "-device", "x"]
    assert q.with_ports(argv, old, new) == [
        "qemu", "-m", "40080", "-netdev", "user,id=net0," + forwards.format(50022, 50080, 50443),
        "-device", "x"]


# -- starting from a snapshot --------------------------------------------------------

def test_a_seat_starts_from_the_snapshot_folder(env, fake):
    run = seat(env, fake)
    snap = snap_of(run)
    p = run.p
    seat2 = spec("seat2", image=snap.id)
    ledger = Ledger()
    resolved = p.prepare(seat2, ledger)
    assert resolved.image_id == snap.id and resolved.image_name == "course-snapshot-1"
    p.create(seat2, resolved, "#cloud-config\n", ledger)
    folder = p.folder("seat2")
    overlay = [c for c in fake.calls if c[:2] == [q.QEMU_IMG, "create"]][-1]
    assert overlay[overlay.index("-b") + 1] == f"{snap.id}/disk.qcow2"
    assert overlay[overlay.index("-F") + 1] == "qcow2"
    argv = qemu_starts(fake)[-1]
    assert argv[argv.index("-kernel") + 1] == f"{snap.id}/vmlinux"
    assert argv[argv.index("-append") + 1] == "root=/dev/vda console=ttyS0 quiet"
    # its own instance: a new id in its seed, the same disk underneath
    assert seed_disk.read_seed(folder / q.SEED)["meta-data"].startswith(
        f"instance-id: {doc_of(run, 'seat2')['id']}")
    assert doc_of(run, "seat2")["id"] != doc_of(run)["id"]
    # and a snapshot of a seat that came from a snapshot works the same way
    again = p.snapshot(p.get("seat2"), "course-snapshot-2", PROPS, Ledger())
    assert json.loads((p.images / again.name / "image.json").read_text())["snapshot_of"] == "seat2"


def test_a_cloud_image_file_gives_a_folder_booted_by_its_bootloader(env, fake, tmp_path):
    disk = tmp_path / "noble.img"
    disk.write_bytes(qcow2_header(3 << 30))
    run = seat(env, fake, s=spec(image=str(disk)))
    snap = snap_of(run)
    target = run.p.images / snap.name
    assert sorted(p.name for p in target.iterdir()) == ["disk.qcow2", "image.json"]
    image = img.resolve_image(snap.id, run.p.images)
    assert (image.kernel, image.initrd, image.append) == (None, None, None)
    assert image.disk == target / "disk.qcow2" and image.disk_format == "qcow2"
    seat2 = spec("seat2", image=snap.id)
    ledger = Ledger()
    run.p.create(seat2, run.p.prepare(seat2, ledger), "#cloud-config\n", ledger)
    assert "-kernel" not in qemu_starts(fake)[-1]


def test_an_image_folder_with_properties_loads(tmp_path):
    folder = make_image(tmp_path / "images", "x")
    doc = json.loads((folder / "image.json").read_text())
    doc.update(properties={"a": "b"}, snapshot_of="demo", snapshot_shutdown="powered off")
    (folder / "image.json").write_text(json.dumps(doc))
    assert img.load_image(folder).kernel == folder / "vmlinux"


# -- finding and deleting --------------------------------------------------------------

def test_snapshots_are_found_by_property_newest_first_and_never_chosen_by_default(env, fake):
    run = seat(env, fake)
    base = run.p.images / "debian-12"
    doc = json.loads((base / "image.json").read_text())
    (base / "image.json").write_text(json.dumps({**doc, "baked": True}))
    run.p.snapshot(run.server, "course-snapshot-1", PROPS, Ledger())
    run.p.snapshot(run.p.get("demo"), "course-snapshot-2",
                   {**PROPS, "vmbinder_build": "def456"}, Ledger())
    older = run.p.images / "course-snapshot-1" / "image.json"
    older.write_text(json.dumps({**json.loads(older.read_text()),
                                 "created": "2020-01-01T00:00:00+00:00"}))
    # an image that carries properties but is no snapshot is never listed
    plain = make_image(run.p.images, "plain")
    (plain / "image.json").write_text(json.dumps({**doc, "properties": PROPS}))

    workshop = {"vmbinder_workshop": "course"}
    assert [s.name for s in run.p.snapshots(workshop)] == ["course-snapshot-2", "course-snapshot-1"]
    assert [s.name for s in run.p.snapshots(PROPS)] == ["course-snapshot-1"]
    assert run.p.snapshots({"vmbinder_workshop": "other"}) == []
    assert run.p.snapshots(workshop)[1].properties == PROPS
    # both snapshots are baked and newer than the base, and still not the default
    assert json.loads((run.p.images / "course-snapshot-2" / "image.json").read_text())["baked"]
    assert img.resolve_image(None, run.p.images).name == "debian-12"
    assert img.resolve_image("course-snapshot-1", run.p.images).name == "course-snapshot-1"


def test_deleting_a_snapshot_twice_and_refusing_what_is_not_one(env, fake, tmp_path):
    run = seat(env, fake)
    snap = snap_of(run)
    assert [r.kind for r in run.p.delete_snapshot(snap)] == ["snapshot"]
    assert run.p.delete_snapshot(snap) == []
    assert not (run.p.images / "course-snapshot-1").exists()

    base = run.p.images / "debian-12"
    with pytest.raises(errors.BadRequest, match="is an image, not a snapshot"):
        run.p.delete_snapshot(Snapshot(id=str(base), name="debian-12", properties={}))
    assert (base / "image.json").is_file() and (base / "disk.qcow2").is_file()

    unreadable = tmp_path / "half"
    unreadable.mkdir()
    (unreadable / "disk.qcow2").write_bytes(b"x")
    with pytest.raises(errors.BadRequest, match="not known to be a snapshot") as info:
        run.p.delete_snapshot(Snapshot(id=str(unreadable), name="half", properties={}))
    assert f"rm -rf {unreadable}" in info.value.hint and unreadable.exists()


def test_delete_snapshot_returns_what_it_removed(env, fake):
    run = seat(env, fake)
    snap = snap_of(run)
    removed = run.p.delete_snapshot(snap)
    assert [(r.kind, r.id, r.name) for r in removed] == [("snapshot", snap.id, snap.name)]


# -- memory ------------------------------------------------------------------------------

def test_the_memory_check_refuses_a_batch_larger_than_the_machine(env, fake, tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal: 8000000 kB\nMemAvailable: 4194304 kB\n")
    p = provider(env, fake, proc=proc)

    assert p.preflight([spec(f"s{i}", flavor="1c1g") for i in range(4)]) == []
    with pytest.raises(errors.QuotaExceeded) as info:
        p.preflight([spec(f"s{i}", flavor="2c2g") for i in range(3)])
    assert "need 6144 MB" in info.value.message and "4096 MB available" in info.value.message
