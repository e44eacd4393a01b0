"""The local (qemu) provider without qemu: command lines, accelerator choice,
the seed disk, images, and the server lifecycle against a stand-in process."""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from vmbinder import errors, lifecycle, rollback
from vmbinder.images import folder as img
from vmbinder.images import seed as seed_disk
from vmbinder.providers.base import (
    ACTIVE,
    BUILDING,
    STOPPED,
    UNKNOWN,
    Ledger,
    Resolved,
    Server,
)
from vmbinder.providers.local import LocalProvider
from vmbinder.providers.local import qemu as q
from vmbinder.sources import resolve_source
from vmbinder.spec import CloudChoice, LaunchSpec, make_spec

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host"


def spec(name="demo", **cloud):
    return make_spec(resolve_source("https://github.com/org/repo"), name=name,
                     cloud=CloudChoice(**cloud), tls="internal")


def make_image(images: Path, name: str, *, baked=False, created="2026-01-01T00:00:00Z",
               kernel=True) -> Path:
    folder = images / name
    folder.mkdir(parents=True)
    (folder / "disk.qcow2").write_bytes(img.QCOW2_MAGIC + b"\0" * 60)
    doc = {"name": name, "distro": "debian-12", "baked": baked, "created": created,
           "disk": "disk.qcow2", "root": "/dev/vda", "contents": {}}
    if kernel:
        (folder / "vmlinux").write_bytes(b"\x7fELF")
        (folder / "initrd.img").write_bytes(b"initrd")
        doc.update(kernel="vmlinux", initrd="initrd.img",
                   append="root=/dev/vda console=ttyS0 quiet")
    (folder / "image.json").write_text(json.dumps(doc))
    return folder


class FakeQemu:
    """Runs instead of qemu-img and qemu: makes the overlay, and for qemu starts
    a sleeping Python whose command line names the state folder, as qemu's does."""

    def __init__(self, fail_qemu: str | None = None, exit_at_once: bool = False, fail_times=99):
        self.calls: list[list[str]] = []
        self.children: list[subprocess.Popen] = []
        self.fail_qemu = fail_qemu
        self.fail_times = fail_times
        self.exit_at_once = exit_at_once

    def __call__(self, argv, *, cwd, umask, **kw):
        assert umask == 0o077
        self.calls.append(list(argv))
        folder = Path(cwd)
        if argv[0] == q.QEMU_IMG:  # create ... OVERLAY SIZE, or convert ... SOURCE TARGET
            Path(argv[-1] if argv[1] == "convert" else argv[-2]).write_bytes(img.QCOW2_MAGIC)
            return subprocess.CompletedProcess(argv, 0, "", "")
        if self.fail_qemu and self.fail_times > 0:
            self.fail_times -= 1
            return subprocess.CompletedProcess(argv, 1, "", self.fail_qemu)
        code = "pass" if self.exit_at_once else "import time; time.sleep(60)"
        child = subprocess.Popen([sys.executable, "-c", code, "-drive", f"file={folder}/overlay.qcow2"])
        self.children.append(child)
        (folder / q.CONSOLE).write_text(f"Linux version 6.1\r\ntoken={self.token}\r\n")
        (folder / q.PIDFILE).write_text(f"{child.pid}\n")
        return subprocess.CompletedProcess(argv, 0, "", "")

    token = ""

    def reap(self):
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.fixture
def env(tmp_path):
    images = tmp_path / "images"
    make_image(images, "debian-12")
    return {"HOME": str(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "state"),
            img.IMAGES_ENV: str(images)}


@pytest.fixture
def fake():
    f = FakeQemu()
    yield f
    f.reap()


def provider(env, fake, **kw):
    return LocalProvider(env=env, run=kw.pop("run", fake), accel=kw.pop("accel", "tcg"), settle=0,
                         sleep=lambda s: None, which=lambda tool: f"/usr/bin/{tool}", **kw)


@dataclass
class Launch:
    p: LocalProvider
    spec: LaunchSpec
    ledger: Ledger
    resolved: Resolved
    server: Server


def launched(env, fake, s=None, **kw) -> Launch:
    p = provider(env, fake, **kw)
    s = s or spec()
    fake.token = s.token
    ledger = Ledger()
    resolved = p.prepare(s, ledger)
    server = p.create(s, resolved, "#cloud-config\nruncmd: [[echo, hi]]\n", ledger)
    return Launch(p, s, ledger, resolved, server)


# -- flavor -----------------------------------------------------------------------

@pytest.mark.parametrize("text, cpus, memory", [
    (None, 2, 2048), ("2c4g", 2, 4096), ("4c3072m", 4, 3072), ("4G", 2, 4096), ("1c", 1, 2048),
    (" 8c16g ", 8, 16384),
])
def test_flavor_format(text, cpus, memory):
    assert q.parse_flavor(text) == q.Flavor(cpus, memory)


@pytest.mark.parametrize("text", ["m1.small", "c", "2c4", "0c2g", "2c100m", "2g4c", "65c"])
def test_bad_flavors_are_refused_with_the_format(text):
    with pytest.raises(errors.BadRequest) as info:
        q.parse_flavor(text)
    assert "2c4g" in info.value.hint


def test_flavor_names():
    assert q.Flavor(2, 4096).name == "2c4g"
    assert q.Flavor(4, 3000).name == "4c3000m"


# -- acceleration -----------------------------------------------------------------

@pytest.fixture
def sysfs(tmp_path):
    (tmp_path / "module" / "kvm").mkdir(parents=True)
    (tmp_path / "kvm").write_text("")
    return tmp_path


def test_plain_kvm_is_used(sysfs):
    assert q.detect_accel({}, dev_kvm=sysfs / "kvm", sys_module=sysfs / "module",
                          probe=lambda dev: True) == "kvm"


def test_nested_pvm_counts_as_no_kvm(sysfs):
    (sysfs / "module" / "kvm_pvm").mkdir()
    assert q.detect_accel({}, dev_kvm=sysfs / "kvm", sys_module=sysfs / "module",
                          probe=lambda dev: True) == "tcg"


def test_unusable_kvm_falls_back_to_tcg(sysfs):
    # a regular file opens but does not answer the KVM ioctl; a missing one does not open
    assert q.detect_accel({}, dev_kvm=sysfs / "kvm", sys_module=sysfs / "module") == "tcg"
    assert q.detect_accel({}, dev_kvm=sysfs / "none", sys_module=sysfs / "module") == "tcg"
    assert not q.kvm_usable(sysfs / "kvm")


def test_the_environment_overrides_detection(sysfs):
    (sysfs / "module" / "kvm_pvm").mkdir()
    kw = {"dev_kvm": sysfs / "kvm", "sys_module": sysfs / "module", "probe": lambda dev: False}
    assert q.detect_accel({q.ACCEL_ENV: "KVM"}, **kw) == "kvm"
    assert q.detect_accel({q.ACCEL_ENV: "tcg"}, **kw) == "tcg"
    with pytest.raises(errors.ConfigError, match="not one of kvm, tcg"):
        q.detect_accel({q.ACCEL_ENV: "hvf"}, **kw)


# -- command line -----------------------------------------------------------------

PORTS = {"ssh-port": 40022, "http-port": 40080, "https-port": 40443}


def argv_for(tmp_path, accel, image=None):
    image = image or img.load_image(make_image(tmp_path / "images", "img"))
    return q.qemu_argv(name="demo", image=image, state=tmp_path / "st", ports=PORTS,
                       flavor=q.Flavor(2, 2048), accel=accel)


def after(argv, option):
    return [argv[i + 1] for i, a in enumerate(argv) if a == option]


def test_tcg_command_line(tmp_path):
    argv = argv_for(tmp_path, "tcg")
    assert argv[0] == "qemu-system-x86_64"
    assert after(argv, "-accel") == ["tcg,thread=multi"]
    assert after(argv, "-cpu") == ["max"]
    assert after(argv, "-smp") == ["2"] and after(argv, "-m") == ["2048"]
    assert after(argv, "-netdev") == [
        "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40080-:80"
        + ",hostfwd=tcp:127.0.0.1:40443-:443"]
    assert after(argv, "-serial") == [f"file:{tmp_path}/st/console.log"]
    assert after(argv, "-pidfile") == [f"{tmp_path}/st/qemu.pid"]
    assert after(argv, "-qmp") == ["unix:qmp.sock,server=on,wait=off"]
    assert after(argv, "-drive") == [
        f"file={tmp_path}/st/overlay.qcow2,format=qcow2,if=virtio",
        f"file={tmp_path}/st/seed.iso,format=raw,if=virtio,readonly=on"]
    assert "-daemonize" in argv and after(argv, "-display") == ["none"]
    assert after(argv, "-kernel") == [f"{tmp_path}/images/img/vmlinux"]
    assert after(argv, "-initrd") == [f"{tmp_path}/images/img/initrd.img"]
    assert after(argv, "-append") == ["root=/dev/vda console=ttyS0 quiet"]


def test_kvm_command_line(tmp_path):
    argv = argv_for(tmp_path, "kvm")
    assert after(argv, "-accel") == ["kvm"] and after(argv, "-cpu") == ["host"]


def test_a_cloud_image_boots_with_its_own_bootloader(tmp_path):
    disk = tmp_path / "noble.img"
    disk.write_bytes(img.QCOW2_MAGIC + b"\0" * 60)
    argv = argv_for(tmp_path, "tcg", img.cloud_image(disk))
    assert "-kernel" not in argv and "-append" not in argv


def test_commas_in_paths_are_doubled_in_drive_options(tmp_path):
    image = img.load_image(make_image(tmp_path / "images", "img"))
    argv = q.qemu_argv(name="demo", image=image, state=tmp_path / "a,b", ports=PORTS,
                       flavor=q.Flavor(), accel="tcg")
    assert after(argv, "-drive")[0] == f"file={tmp_path}/a,,b/overlay.qcow2,format=qcow2,if=virtio"


# -- images -----------------------------------------------------------------------

def test_image_by_name_by_folder_and_cloud_image(tmp_path):
    images = tmp_path / "images"
    folder = make_image(images, "debian-12")
    assert img.resolve_image("debian-12", images).kernel == folder / "vmlinux"
    assert img.resolve_image(str(folder), tmp_path / "elsewhere").path == folder
    disk = tmp_path / "noble-server-cloudimg-amd64.img"
    disk.write_bytes(img.QCOW2_MAGIC + b"\0" * 60)
    image = img.resolve_image(str(disk), images)
    assert (image.disk, image.kernel, image.disk_format) == (disk, None, "qcow2")


def test_no_image_given_picks_baked_then_newest(tmp_path):
    images = tmp_path / "images"
    make_image(images, "old-baked", baked=True, created="2026-01-01")
    make_image(images, "new-plain", created="2026-06-01")
    assert img.resolve_image(None, images).name == "old-baked"
    make_image(images, "new-baked", baked=True, created="2026-03-01")
    assert img.resolve_image(None, images).name == "new-baked"


def test_a_missing_image_lists_the_images_found(tmp_path):
    images = tmp_path / "images"
    make_image(images, "debian-12")
    make_image(images, "debian-12-baked")
    with pytest.raises(errors.ConfigError) as info:
        img.resolve_image("ubuntu", images)
    assert info.value.message == "image 'ubuntu' not found"
    assert "debian-12, debian-12-baked" in info.value.hint
    with pytest.raises(errors.ConfigError) as info:
        img.resolve_image(None, tmp_path / "empty")
    assert f"(none in {tmp_path / 'empty'})" in info.value.hint


def qcow2_header(size: int) -> bytes:
    return img.QCOW2_MAGIC + b"\0" * 20 + size.to_bytes(8, "big")


def test_the_disk_is_20g_or_the_image_size_if_larger(tmp_path):
    disk = tmp_path / "small.qcow2"
    disk.write_bytes(qcow2_header(2 << 30))
    image = img.cloud_image(disk)
    assert (image.disk_format, image.virtual_size) == ("qcow2", 2 << 30)
    assert q.overlay_argv(image, tmp_path)[-2:] == [f"{tmp_path}/overlay.qcow2", "20G"]
    disk.write_bytes(qcow2_header(30 << 30))
    assert q.overlay_argv(img.cloud_image(disk), tmp_path)[-1] == str(30 << 30)
    assert q.overlay_argv(img.cloud_image(disk), tmp_path)[:9] == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disk), "-F", "qcow2"]


def test_broken_images_are_configuration_errors(tmp_path):
    images = tmp_path / "images"
    (make_image(images, "nokernel") / "vmlinux").unlink()
    with pytest.raises(errors.ConfigError, match="kernel file .* is missing"):
        img.resolve_image("nokernel", images)
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 512)
    with pytest.raises(errors.ConfigError, match="not a qcow2 image"):
        img.resolve_image(str(raw), images)
    (images / "bad").mkdir()
    (images / "bad" / "image.json").write_text("[1]")
    with pytest.raises(errors.ConfigError, match="not a JSON object"):
        img.resolve_image("bad", images)


def test_images_folder_default_and_override(tmp_path):
    assert img.images_dir({"HOME": "/h"}) == Path("/h/.cache/vmbinder/images")
    assert img.images_dir({"HOME": "/h", "XDG_CACHE_HOME": "/c"}) == Path("/c/vmbinder/images")
    assert img.images_dir({img.IMAGES_ENV: "/var/tmp/imgs"}) == Path("/var/tmp/imgs")
    assert q.state_root({"HOME": "/h"}) == Path("/h/.local/state/vmbinder/local")


# -- seed -------------------------------------------------------------------------

def test_seed_round_trip_and_mode(tmp_path):
    path = tmp_path / "seed.iso"
    user_data = "#cloud-config\nruncmd: [[echo, 'é']]\n"
    seed_disk.write_seed(path, user_data, "instance-id: abc\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert seed_disk.read_seed(path) == {"volume": "cidata", "user-data": user_data,
                                 "meta-data": "instance-id: abc\n"}


def test_without_pycdlib_the_seed_is_a_configuration_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycdlib", None)
    with pytest.raises(errors.ConfigError) as info:
        seed_disk.write_seed(tmp_path / "seed.iso", "#cloud-config\n", "")
    assert info.value.hint.startswith("pip install pycdlib")


# -- prepare ----------------------------------------------------------------------

def test_prepare_claims_a_private_folder_and_three_ports(env, fake):
    p = provider(env, fake)
    ledger = Ledger()
    resolved = p.prepare(spec(public_key=PUBLIC_KEY), ledger)
    folder = Path(env["XDG_STATE_HOME"]) / "vmbinder" / "local" / "demo"
    assert resolved.public_ip == "127.0.0.1"
    assert resolved.image_name == "debian-12" and resolved.flavor_id == "2c2g"
    assert resolved.key_name.startswith("vmbinder-")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "server.json").stat().st_mode) == 0o600
    doc = json.loads((folder / "server.json").read_text())
    ports = [int(doc["metadata"][f"vmbinder:{k}"]) for k in ("ssh-port", "http-port", "https-port")]
    assert len(set(ports)) == 3 and all(1024 < port < 65536 for port in ports)
    assert doc["metadata"]["vmbinder:tls"] == "internal"
    assert [i.kind for i in ledger.items] == ["state folder"]
    assert rollback.rollback(ledger, lifecycle.NullReporter()) == []
    assert not folder.exists()


def test_a_duplicate_name_is_refused(env, fake):
    p = provider(env, fake)
    p.prepare(spec(), Ledger())
    ledger = Ledger()
    with pytest.raises(errors.BadRequest) as info:
        p.prepare(spec(), ledger)
    assert info.value.message.startswith("a vmbinder server named 'demo' already exists")
    assert info.value.hint == "choose another --name, or remove it first: vmbinder delete demo"
    assert ledger.items == []


def test_missing_qemu_names_the_packages(env, fake):
    p = LocalProvider(env=env, run=fake, which=lambda tool: None)
    with pytest.raises(errors.ConfigError) as info:
        p.prepare(spec(), Ledger())
    assert info.value.message == "qemu-system-x86_64 and qemu-img not found on PATH"
    assert "apt-get install qemu-system-x86 qemu-utils" in info.value.hint


def test_cloud_only_options_are_refused(env, fake):
    with pytest.raises(errors.BadRequest, match="--network names a cloud resource"):
        provider(env, fake).prepare(spec(network="private"), Ledger())


@pytest.mark.parametrize("option, field, why", [
    ("--config-drive", "config_drive", "NoCloud seed disk"),
    ("--floating-ip", "floating_ip", "forwarded on this machine's loopback"),
])
def test_config_drive_and_floating_ip_are_refused_in_words_but_auto(env, fake, option, field, why):
    for value in ("yes", "no"):
        ledger = Ledger()
        with pytest.raises(errors.BadRequest) as info:
            provider(env, fake).prepare(spec(**{field: value}), ledger)
        assert info.value.message.startswith(f"{option} {value} is for OpenStack")
        assert why in info.value.message and f"leave {option} out" in info.value.hint
        assert ledger.items == []
    assert not (Path(env["XDG_STATE_HOME"]) / "vmbinder").exists()  # nothing was claimed
    provider(env, fake).prepare(spec(**{field: "auto"}), Ledger())


def test_ports_of_other_servers_are_not_reused(env, fake, monkeypatch):
    p = provider(env, fake)
    p.prepare(spec("one"), Ledger())
    taken = {int(v) for k, v in p.get("one").metadata.items() if k.endswith("-port")}
    seen = []
    real = q.free_ports

    def spy(count, exclude=frozenset()):
        seen.append(set(exclude))
        return real(count, exclude)

    monkeypatch.setattr("vmbinder.providers.local.provider.free_ports", spy)
    p.prepare(spec("two"), Ledger())
    assert seen == [taken]


# -- create, wait, list, delete ---------------------------------------------------

def test_create_writes_seed_and_overlay_and_starts_qemu_without_the_token(env, fake):
    run = launched(env, fake, spec(public_key=PUBLIC_KEY))
    folder = run.p.folder("demo")
    overlay, qemu = fake.calls
    assert overlay[:2] == ["qemu-img", "create"] and overlay[-1] == "20G"
    assert overlay[overlay.index("-b") + 1] == f"{env[img.IMAGES_ENV]}/debian-12/disk.qcow2"
    assert qemu[0] == "qemu-system-x86_64"
    assert not any(run.spec.token in arg for arg in qemu)
    seed = seed_disk.read_seed(folder / "seed.iso")
    assert seed["user-data"] == "#cloud-config\nruncmd: [[echo, hi]]\n"
    meta = yaml.safe_load(seed["meta-data"])
    assert meta == {"instance-id": run.server.id, "local-hostname": "demo",
                    "public-keys": [PUBLIC_KEY]}
    doc = json.loads((folder / "server.json").read_text())
    assert doc["argv"] == qemu and doc["pid"] == fake.children[0].pid
    assert run.server.state == ACTIVE and run.server.meta("token") == run.spec.token
    assert [i.kind for i in run.ledger.items] == ["state folder", "qemu process"]
    for made in ("server.json", "seed.iso", "console.log", "qemu.pid"):
        assert stat.S_IMODE((folder / made).stat().st_mode) == 0o600, made


def test_wait_lists_gets_and_redacts(env, fake):
    run = launched(env, fake)
    p = run.p
    done = p.wait(run.server, run.resolved, 60, run.ledger)
    assert (done.state, done.cloud_status, done.address) == (ACTIVE, "RUNNING", "127.0.0.1")
    assert done.meta("https-port") == str(json.loads(
        (p.folder("demo") / "server.json").read_text())["ports"]["https-port"])
    (listed,) = p.list_owned()
    assert listed == done == p.get("demo") == p.get(done.id)
    assert p.console_log(done) == "Linux version 6.1\ntoken=<token>\n"
    assert p.console_log(done, lines=1) == "token=<token>"
    with pytest.raises(errors.BadRequest, match="no vmbinder server named 'other'") as info:
        p.get("other")
    assert "demo" in info.value.hint


def test_delete_stops_qemu_and_removes_the_folder(env, fake):
    p = launched(env, fake).p
    child = fake.children[0]
    removed = p.delete(p.get("demo"))
    assert [(r.kind, r.name) for r in removed] == [("qemu process", "demo"), ("server", "demo")]
    assert child.wait(timeout=5) != 0
    assert not p.folder("demo").exists()
    assert p.list_owned() == []


def test_rollback_stops_qemu_and_removes_the_folder(env, fake):
    run = launched(env, fake)
    assert rollback.rollback(run.ledger, lifecycle.NullReporter()) == []
    assert fake.children[0].wait(timeout=5) != 0
    assert not run.p.folder("demo").exists()


def test_a_qemu_that_exits_is_an_error_with_the_console(env):
    fake = FakeQemu(exit_at_once=True)
    run = launched(env, fake)
    fake.children[0].wait()
    with pytest.raises(errors.CloudError) as info:
        run.p.wait(run.server, run.resolved, 60, run.ledger)
    assert info.value.message == "qemu for demo exited while starting"
    assert "Linux version 6.1" in info.value.hint and run.spec.token not in info.value.hint
    assert run.p.get("demo").state == STOPPED
    fake.reap()


TAKEN = "qemu-system-x86_64: Could not set up host forwarding rule 'tcp:127.0.0.1:40022-:22'"


def test_a_port_taken_meanwhile_is_chosen_again(env):
    fake = FakeQemu(fail_qemu=TAKEN, fail_times=1)
    p = provider(env, fake)
    ledger = Ledger()
    s = spec()
    resolved = p.prepare(s, ledger)
    chosen = p.read_state(p.folder("demo"))["ports"]
    try:
        server = p.create(s, resolved, "#cloud-config\n", ledger)
    finally:
        fake.reap()
    now = p.read_state(p.folder("demo"))["ports"]
    assert set(now.values()).isdisjoint(chosen.values())
    assert server.meta("https-port") == str(now["https-port"])
    first, second = (argv[argv.index("-netdev") + 1] for argv in fake.calls[1:])
    assert f":{chosen['ssh-port']}-:22" in first and f":{now['ssh-port']}-:22" in second


def test_a_qemu_that_does_not_start_reports_why(env):
    fake = FakeQemu(fail_qemu="qemu-system-x86_64: Could not set up host forwarding rule")
    p = provider(env, fake)
    ledger = Ledger()
    s = spec()
    resolved = p.prepare(s, ledger)
    with pytest.raises(errors.CloudError) as info:
        p.create(s, resolved, "#cloud-config\n", ledger)
    assert "host forwarding" in info.value.message and "launch again" in info.value.hint
    assert len(fake.calls) == 1 + 3  # qemu-img, then qemu with three sets of ports


def test_a_reused_pid_is_never_killed(env, fake):
    p = launched(env, fake).p
    folder = p.folder("demo")
    doc = json.loads((folder / "server.json").read_text())
    doc["pid"] = os.getpid()  # this test process: alive, but not our qemu
    (folder / "server.json").write_text(json.dumps(doc))
    assert not q.is_our_qemu(os.getpid(), folder)
    assert p.get("demo").state == STOPPED
    assert [r.kind for r in p.delete(p.get("demo"))] == ["server"]


def test_leftover_folders_are_listed_and_deletable(env, fake):
    p = provider(env, fake)
    p.prepare(spec("half"), Ledger())
    (p.root / "broken").mkdir()
    states = {s.name: s.state for s in p.list_owned()}
    assert states == {"half": BUILDING, "broken": UNKNOWN}
    p.delete(p.get("broken"))
    p.delete(p.get("half"))
    assert p.list_owned() == []


# -- QMP --------------------------------------------------------------------------

def test_reboot_resets_over_qmp_even_from_a_long_folder(env, fake, tmp_path):
    long_root = tmp_path / ("x" * 60) / ("y" * 60)
    p = provider(env, fake, state_dir=long_root)
    p.prepare(spec(), Ledger())
    folder = p.folder("demo")
    assert len(str(folder / "qmp.sock")) > 108
    got = []
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    server = socket.socket(socket.AF_UNIX)
    server.bind(f"/proc/self/fd/{fd}/qmp.sock")
    server.listen(1)

    def monitor():
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(b'{"QMP": {"version": {}, "capabilities": []}}\n')
            f.flush()
            for line in f:
                got.append(json.loads(line)["execute"])
                f.write(b'{"event": "RESET", "data": {}}\n{"return": {}}\n')
                f.flush()

    thread = threading.Thread(target=monitor)
    thread.start()
    try:
        p.reboot(p.get("demo"))
    finally:
        thread.join(timeout=5)
        server.close()
        os.close(fd)
    assert got == ["qmp_capabilities", "system_reset"]


def test_reboot_of_a_stopped_server_says_so(env, fake):
    p = provider(env, fake)
    p.prepare(spec(), Ledger())
    with pytest.raises(errors.CloudError, match="does not answer"):
        p.reboot(p.get("demo"))


def test_set_metadata_is_kept_in_the_server_record(env, fake):
    run = launched(env, fake)
    p = run.p
    done = p.wait(run.server, run.resolved, 60, run.ledger)
    updated = p.set_metadata(done, {"interfaces": "tree,lab"})
    assert updated.meta("interfaces") == "tree,lab"
    assert p.get("demo").meta("interfaces") == "tree,lab"
    assert p.get("demo").meta("token") == run.spec.token
    assert (p.folder("demo") / "server.json").stat().st_mode & 0o777 == 0o600


def test_a_folder_that_cannot_be_removed_is_a_leftover_with_its_command(tmp_path, monkeypatch):
    from vmbinder.providers.local import state

    folder = tmp_path / "it's"
    folder.mkdir()

    def refuse(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(state.shutil, "rmtree", refuse)
    with pytest.raises(errors.CleanupFailed) as info:
        state.remove_or_fail(folder, "snapshot", f"the snapshot {folder}")
    command = f"rm -rf '{tmp_path}/it'\"'\"'s'"
    assert info.value.message == f"could not remove the snapshot {folder}: [Errno 13] Permission denied"
    assert info.value.hint == command
    assert info.value.details["leftovers"] == [("snapshot", str(folder), "[Errno 13] Permission denied",
                                                command)]


def test_stop_powers_the_guest_off_and_start_boots_it_with_the_same_ports(env, fake):
    run = launched(env, fake)
    p = run.p
    done = p.wait(run.server, run.resolved, 60, run.ledger)
    first = fake.children[0]
    stopped = p.stop(done)
    assert (stopped.state, stopped.address) == (STOPPED, None)
    assert first.wait(timeout=5) is not None  # no monitor here: qemu's process was ended
    assert p.stop(stopped).state == STOPPED  # already off: nothing to do
    started = p.start(stopped)
    assert (started.state, started.address) == (ACTIVE, "127.0.0.1")
    assert len(fake.children) == 2 and fake.children[1].poll() is None
    assert started.meta("https-port") == done.meta("https-port")
    assert fake.calls[-1] == json.loads((p.folder("demo") / "server.json").read_text())["argv"]
    assert p.start(started) == started and len(fake.children) == 2  # running: nothing to do
