"""Build a Debian 12 guest image for the local qemu target, natively on the host.

Everything heavy happens here, as root, at host speed: debootstrap, apt, pip.
Under qemu's TCG the same work takes many times longer inside the guest.

The output folder is a contract the local qemu provider reads (image.json):
the uncompressed ELF kernel ``vmlinux`` (skips the bzImage decompressor and
any bootloader), ``initrd.img`` and a qcow2 disk holding one ext4 filesystem
with no partition table (``root=/dev/vda``). Files copied verbatim into the
rootfs live in ``guest/rootfs/``.
"""

from __future__ import annotations

import datetime as dt
import json
import lzma
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import time
import zlib
from importlib import resources
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmbinder import errors
from vmbinder.guestcontract import (BASE_IMAGES_DIR, REPO2DOCKER_VENV, REPO2DOCKER_VERSION,
                                    TRIXIE_PIN, docker_import_argv)
from vmbinder.providers.local_image import images_dir

#: Debian packages the build runs on the host.
BUILD_PACKAGES = ("debootstrap", "qemu-utils", "e2fsprogs", "zstd", "lz4", "xz-utils")
#: Everything to install on a host (the setup script): the build, plus qemu and
#: genisoimage for guest/boot-check.sh and the local qemu target.
HOST_PACKAGES = (*BUILD_PACKAGES, "qemu-system-x86", "genisoimage")
#: Host tools checked before anything starts.
HOST_TOOLS = ("debootstrap", "chroot", "mkfs.ext4", "qemu-img", "lz4", "unzstd")

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBOOTSTRAP_INCLUDE = ("systemd-sysv", "udev", "dbus", "kmod", "iproute2", "ifupdown",
                       "isc-dhcp-client", "netbase", "ca-certificates", "openssh-server",
                       "sudo", "curl")
GUEST_PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools", "cloud-init",
                  "systemd-timesyncd", "python3-venv")
BAKED_PACKAGES = ("docker.io", "apparmor", "xz-utils", "caddy", "git")
#: Debian 12 has no buildx; Debian 13's static binary works with docker 20.10.
BAKED_FROM_TRIXIE = ("docker-buildx",)
# REPO2DOCKER_VERSION, REPO2DOCKER_VENV, BASE_IMAGES_DIR (where the guest looks for
# container base images to `docker import`), TRIXIE_PIN and docker_import_argv are
# guestcontract.py's, shared with the guest script.
BASE_VENV = "/srv/venv"
BASE_PIP_PACKAGES = ("jupyterlab", "notebook", "jupyter-server")
APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
DISK_SIZE = "20G"
#: guest/ in the repository, shipped in the package as vmbinder.guest.
GUEST_DIR = Path(str(resources.files("vmbinder.guest")))
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_APT = Path("/etc/apt")
CHROOT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C", "LANG": "C",
              "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

#: The image's own cloud-init settings (from guest/rootfs).
CLOUD_CFG = "/etc/cloud/cloud.cfg.d/90_vmbinder.cfg"

Log = Callable[[str], None]


def datasource_list(cfg: Path) -> list[str]:
    """The datasource_list of a cloud-init config file ([] when it has none)."""
    import yaml

    try:
        doc = yaml.safe_load(cfg.read_text())
    except (OSError, yaml.YAMLError):
        return []
    found = doc.get("datasource_list") if isinstance(doc, dict) else None
    return [str(d) for d in found] if isinstance(found, list) else []


@dataclass
class ImageInfo:
    name: str
    distro: str
    baked: bool
    created: str
    kernel: str = "vmlinux"
    initrd: str = "initrd.img"
    disk: str = "disk.qcow2"
    root: str = "/dev/vda"
    append: str = APPEND
    contents: dict = field(default_factory=dict)
    #: Where the image's cloud-init looks for user-data (its datasource_list).
    datasources: list = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


class Runner:
    """Runs host commands, appending each with its output to a log file.

    Tests inject a fake with the same call signature."""

    def __init__(self, logfile: Path):
        self.logfile = Path(logfile)

    def __call__(self, argv: Sequence[str], *, env: dict | None = None,
                 capture: bool = False, check: bool = True) -> str:
        # Its own process group, so an interrupt stops apt and dpkg too, not only
        # the chroot'ed shell, before the mounts they hold are taken away.
        proc = subprocess.Popen(list(argv), env=env, text=True, errors="replace",
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = proc.communicate()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        with self.logfile.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n{out}[exit {proc.returncode}]\n")
        if check and proc.returncode != 0:
            tail = "\n".join(out.splitlines()[-20:])
            raise errors.BuildFailed(
                f"{' '.join(argv[:3])} ... exited with {proc.returncode}:\n{tail}",
                f"The full log is {self.logfile}. Fix the cause and build again.")
        return out if capture else ""


def preflight(*, euid: int | None = None, which: Callable | None = None) -> None:
    """Refuse early, naming the fix: not root, or a host tool missing."""
    which = which or shutil.which
    if (os.geteuid() if euid is None else euid) != 0:
        raise errors.BadRequest(
            "building a guest image needs root (debootstrap, chroot, bind mounts)",
            "Run it as root: sudo vmbinder image build ...")
    missing = [tool for tool in HOST_TOOLS if which(tool) is None]
    if missing:
        raise errors.ConfigError(
            f"host tools missing: {', '.join(missing)}",
            f"apt-get install {' '.join(BUILD_PACKAGES)}")
    if not (GUEST_DIR / "provision.sh").is_file():
        raise errors.ConfigError(f"the guest files are missing: {GUEST_DIR}/provision.sh",
                                 "Run vmbinder from a checkout or an install that ships guest/.")


def _stanzas(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"\n\s*\n", text) if s.strip()]


def _field(stanza: str, name: str) -> list[str]:
    m = re.search(rf"^{name}:\s*(.*)$", stanza, re.MULTILINE | re.IGNORECASE)
    return m.group(1).split() if m else []


def guest_sources(host_files: dict[str, str], suite: str = SUITE) -> dict[str, str]:
    """Keep the host's apt entries for ``suite`` (and -updates, -security).

    Entries for other suites or third-party repositories (keys the guest lacks)
    are dropped. deb822 ``*.sources`` and one-line ``*.list`` are both handled.
    """
    keep: dict[str, str] = {}
    for name, text in host_files.items():
        if name.endswith(".sources"):
            body = [s for s in _stanzas(text)
                    if any(x.split("-")[0] == suite for x in _field(s, "Suites"))
                    and "deb" in _field(s, "Types")]
            if body:
                keep[name] = "\n\n".join(body) + "\n"
        elif name.endswith(".list"):
            lines = [ln for ln in text.splitlines() if ln.strip().startswith("deb ")
                     and any(w.split("-")[0] == suite for w in ln.split()[2:4])]
            if lines:
                keep[name] = "\n".join(lines) + "\n"
    return keep


def mirror_of(sources: dict[str, str]) -> str:
    """The first plain Debian archive URI among the kept sources, for debootstrap."""
    for name, text in sources.items():
        if name.endswith(".sources"):
            uris = [u for s in _stanzas(text) for u in _field(s, "URIs")]
        else:
            uris = [re.sub(r"^deb\s+(\[[^\]]*\]\s+)?", "", ln).split()[0]
                    for ln in text.splitlines() if ln.startswith("deb ")]
        for uri in uris:
            if not uri.rstrip("/").endswith("-security"):
                return uri
    return DEFAULT_MIRROR


def trixie_sources(mirror: str) -> str:
    return (f"Types: deb\nURIs: {mirror}\nSuites: trixie\nComponents: main\n"
            f"Signed-By: {KEYRING}\n")


def host_apt_settings(conf_files: dict[str, str]) -> dict[str, str]:
    """The host's apt.conf.d files that say how to reach the archive (Acquire::...)."""
    return {n: t for n, t in conf_files.items() if re.search(r"^\s*Acquire::", t, re.MULTILINE)}


def _read_dir(path: Path, pattern: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.glob(pattern)) if p.is_file()}


def _guest_apt_sources(from_host: bool) -> dict[str, str]:
    """The host's Debian entries, or deb.debian.org when asked (or the host has none)."""
    found = guest_sources({**_read_dir(HOST_APT / "sources.list.d", "*"),
                           **_read_dir(HOST_APT, "sources.list")}) if from_host else {}
    return found or {"debian.sources": (
        f"Types: deb\nURIs: {DEFAULT_MIRROR}\nSuites: {SUITE} {SUITE}-updates\n"
        f"Components: main\nSigned-By: {KEYRING}\n")}


_MAGICS = (("gzip", b"\x1f\x8b"), ("xz", b"\xfd7zXZ\x00"), ("zstd", b"\x28\xb5\x2f\xfd"),
           ("lz4", b"\x02\x21\x4c\x18"), ("lzma", b"\x5d\x00\x00"))


def _decompress(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return zlib.decompressobj(wbits=31).decompress(data)
    if kind in ("xz", "lzma"):
        fmt = lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE
        return lzma.LZMADecompressor(fmt).decompress(data)
    # zstd and the kernel's legacy lz4 frames: Debian's command-line tools. Trailing
    # bytes (the kernel appends the uncompressed size) make them exit non-zero
    # after a complete output, so the result is judged by its ELF header instead.
    argv = {"zstd": ["unzstd", "-c"], "lz4": ["lz4", "-dc"]}[kind]
    return subprocess.run(argv, input=data, capture_output=True, check=False).stdout


def _payloads(bzimage: bytes):
    """Where the compressed kernel may start: the boot header's exact payload first,
    then every compression magic in the file, as scripts/extract-vmlinux scans."""
    view = memoryview(bzimage)
    if bzimage[0x202:0x206] == b"HdrS":
        start = ((bzimage[0x1F1] or 4) + 1) * 512
        offset, length = struct.unpack_from("<II", bzimage, 0x248)
        yield view[start + offset:start + offset + length]
    for _, magic in _MAGICS:
        for m in re.finditer(re.escape(magic), bzimage):
            yield view[m.start():]


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage (vmlinuz)."""
    for payload in _payloads(bzimage):
        for kind, magic in _MAGICS:
            if bytes(payload[:len(magic)]) == magic:
                try:
                    out = _decompress(kind, bytes(payload))
                except (OSError, EOFError, lzma.LZMAError, zlib.error):
                    continue
                if out[:4] == b"\x7fELF":
                    return out
    raise errors.BuildFailed("no ELF kernel found inside the compressed kernel image",
                             "The kernel package may use a compression this does not know.")


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM unwinds like Ctrl-C, so the finally blocks unmount."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


class InChroot:
    """Runs a command, or a step of guest/provision.sh, inside the rootfs."""

    SCRIPT = "/tmp/vmbinder-provision.sh"

    def __init__(self, root: Path, run: Runner):
        self.root, self.run = root, run

    def __call__(self, argv: Sequence[str], *, capture: bool = False) -> str:
        return self.run(["chroot", str(self.root), *argv], env=CHROOT_ENV, capture=capture)

    def step(self, *args: str) -> str:
        shutil.copy(GUEST_DIR / "provision.sh", self.root / self.SCRIPT.lstrip("/"))
        return self(["/bin/sh", self.SCRIPT, *args])


@contextmanager
def chroot(root: Path, run: Runner, log: Log):
    """Bind /dev, /dev/pts, /proc, /sys and block service starts; always unmount."""
    mounts = [(["--bind", "/dev"], "dev"), (["--bind", "/dev/pts"], "dev/pts"),
              (["-t", "proc", "proc"], "proc"), (["-t", "sysfs", "sysfs"], "sys")]
    policy = root / "usr/sbin/policy-rc.d"
    done: list[Path] = []
    try:
        for args, sub in mounts:
            run(["mount", *args, str(root / sub)])
            done.append(root / sub)
        policy.write_text("#!/bin/sh\n# no services start while the image is built\nexit 101\n")
        policy.chmod(0o755)
        yield InChroot(root, run)
    finally:
        policy.unlink(missing_ok=True)
        for target in reversed(done):
            try:
                run(["umount", str(target)])
            except errors.VmbinderError:
                log(f"umount {target} failed; detaching it lazily")
                run(["umount", "--lazy", str(target)], check=False)


@contextmanager
def step(log: Log, what: str):
    log(f"{what} ...")
    t0 = time.monotonic()
    yield
    log(f"{what}: done in {time.monotonic() - t0:.0f} s")


def _newest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise errors.BuildFailed(f"no {pattern} in {folder}", "Check the kernel install step.")
    return found[-1]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _dpkg_versions(root: Path, packages: Sequence[str], run: Runner) -> dict[str, str]:
    out = run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
               "-f", "${Package} ${Version}\n", *packages], capture=True, check=False)
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        return [m.split()[1] for m in mounts if m.split()[1].startswith(prefix)]


def _prepare_workdir(work: Path) -> Path:
    """A fresh work folder; never deletes through a mount left by an earlier run."""
    if work.exists():
        if _mounts_under(work):
            raise errors.BuildFailed(
                f"{work} still has mounts from an earlier build: {_mounts_under(work)}",
                f"Unmount them first: umount -R {work}/rootfs/*")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work / "rootfs"


@contextmanager
def _rootfs(work: Path, include: Sequence[str], *, sources: dict[str, str], host_conf: dict,
            baked: bool, ca_files: Sequence[Path], run: Runner, log: Log):
    """debootstrap a fresh rootfs with the host's mirrors and CAs, then yield a
    runner inside it; unmounts on the way out whatever happens."""
    root = _prepare_workdir(work)
    mirror = mirror_of(sources)
    with _sigterm_as_interrupt():
        with step(log, f"debootstrap {SUITE} minbase from {mirror}"):
            run(["debootstrap", "--variant=minbase", f"--include={','.join(include)}",
                 "--components=main", SUITE, str(root), mirror])
        _write_apt_config(root, sources, mirror, baked, host_conf)
        with chroot(root, run, log) as in_chroot:
            dest = root / HOST_CA_DIR.relative_to("/")
            dest.mkdir(parents=True, exist_ok=True)
            for ca in ca_files:
                shutil.copy(ca, dest / (Path(ca).stem + ".crt"))
            shutil.copy(GUEST_DIR / "rootfs/etc/pip.conf", root / "etc/pip.conf")
            in_chroot.step("ca")
            yield root, in_chroot
            in_chroot.step("trim")


def build_image(output_dir: Path, *, baked: bool, ca_files: list[Path],
                apt_sources_from_host: bool = True, repo2docker_version: str,
                log: Log, run: Runner | None = None, disk_size: str = DISK_SIZE,
                keep_rootfs: bool = False, base_images: Sequence[Path] = ()) -> ImageInfo:
    """Build the image into output_dir (image.json, vmlinux, initrd.img, disk.qcow2).

    base_images are container base tarballs (each with its .json sidecar) put
    in the guest's BASE_IMAGES_DIR, where the guest script imports them into
    Docker before a build: no registry is needed."""
    preflight()
    output_dir = Path(output_dir)
    run = run or Runner(output_dir / "build.log")
    log(f"full log: {output_dir / 'build.log'}")
    host_conf = _read_dir(HOST_APT / "apt.conf.d", "*") if apt_sources_from_host else {}
    with _rootfs(output_dir / "work", DEBOOTSTRAP_INCLUDE, baked=baked, run=run, log=log,
                 sources=_guest_apt_sources(apt_sources_from_host), host_conf=host_conf,
                 ca_files=ca_files) as (root, in_chroot):
        with step(log, "apt-get install " + " ".join(GUEST_PACKAGES)):
            in_chroot.step("apt", *GUEST_PACKAGES)
        if baked:
            _bake(root, in_chroot, repo2docker_version, run, log)
        shutil.copytree(GUEST_DIR / "rootfs", root, dirs_exist_ok=True)
        for tarball in base_images:
            folder = root / BASE_IMAGES_DIR.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            for part in (Path(tarball), Path(f"{tarball}.json")):
                shutil.copy(part, folder / part.name)
        in_chroot.step("finish")
    contents = _dpkg_versions(root, ("linux-image-cloud-amd64", "cloud-init", "python3",
                                     "systemd", *((*BAKED_PACKAGES, *BAKED_FROM_TRIXIE)
                                                  if baked else ())), run)
    if baked:
        contents["jupyter-repo2docker"] = repo2docker_version
    if base_images:
        contents["base-images"] = [json.loads(Path(f"{t}.json").read_text())["name"]
                                   for t in base_images]
    with step(log, "extract vmlinux and initrd.img"):
        kernel = _newest(root / "boot", "vmlinuz-*")
        initrd = _newest(root / "boot", "initrd.img-*")
        (output_dir / "vmlinux").write_bytes(extract_vmlinux(kernel.read_bytes()))
        shutil.copy(initrd, output_dir / "initrd.img")
        contents["kernel"] = kernel.name.removeprefix("vmlinuz-")
    with step(log, f"mkfs.ext4 -d and qemu-img convert ({disk_size} sparse)"):
        make_disk(root, output_dir, disk_size, run, keep_raw=keep_rootfs)
    info = ImageInfo(name=f"debian-12-{'baked' if baked else 'stock'}", distro="debian-12",
                     baked=baked, created=_now(), contents=contents,
                     datasources=datasource_list(root / CLOUD_CFG.lstrip("/")))
    (output_dir / "image.json").write_text(info.to_json())
    if not keep_rootfs:
        shutil.rmtree(output_dir / "work")
    return info


def _write_apt_config(root: Path, sources: dict[str, str], mirror: str, baked: bool,
                      host_conf: dict[str, str]) -> None:
    apt = root / "etc/apt"
    (apt / "sources.list").write_text("")
    for name, text in sources.items():
        (apt / "sources.list.d" / name).write_text(text)
    for name, text in host_apt_settings(host_conf).items():
        (apt / "apt.conf.d" / name).write_text(text)
    shutil.copytree(GUEST_DIR / "rootfs/etc/apt", apt, dirs_exist_ok=True)
    if baked:
        (apt / "sources.list.d/trixie.sources").write_text(trixie_sources(mirror))
        (apt / "preferences.d").mkdir(exist_ok=True)
        (apt / "preferences.d/trixie-pin").write_text(TRIXIE_PIN)


def _bake(root: Path, in_chroot, r2d_version: str, run: Runner, log: Log) -> None:
    with step(log, "bake " + " ".join((*BAKED_PACKAGES, *BAKED_FROM_TRIXIE))):
        in_chroot.step("apt", *BAKED_PACKAGES)
        in_chroot.step("apt-from", "trixie", *BAKED_FROM_TRIXIE)
    with step(log, f"bake jupyter-repo2docker=={r2d_version} in {REPO2DOCKER_VENV}"):
        in_chroot.step("venv", REPO2DOCKER_VENV, f"jupyter-repo2docker=={r2d_version}")
    versions = _dpkg_versions(root, (*BAKED_PACKAGES, *BAKED_FROM_TRIXIE), run)
    versions["jupyter-repo2docker"] = r2d_version
    baked = {"repo2docker_venv": REPO2DOCKER_VENV, "packages": versions, "created": _now()}
    (root / "etc/vmbinder").mkdir(parents=True, exist_ok=True)
    (root / "etc/vmbinder/baked.json").write_text(json.dumps(baked, indent=2) + "\n")


def make_disk(root: Path, output_dir: Path, size: str, run: Runner, *,
              keep_raw: bool = False) -> None:
    """One ext4 filesystem filled from the rootfs, no partition table, as sparse qcow2."""
    raw = output_dir / "work/disk.raw"
    raw.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", "vmbinder-root", "-d", str(root), str(raw), size])
    run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(output_dir / "disk.qcow2")])
    if not keep_raw:
        raw.unlink()


def base_container_changes(venv: str = BASE_VENV) -> list[str]:
    """The Dockerfile lines `docker import --change` needs: a tarball carries no config,
    and /etc/profile.d is never read by `docker run` or a Dockerfile's RUN."""
    return [f"ENV PATH={venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8", "ENV HOME=/home/jovyan", "ENV SHELL=/bin/bash",
            "USER 1000", "WORKDIR /home/jovyan", "EXPOSE 8888",
            'CMD ["jupyter", "lab", "--ip=0.0.0.0", "--no-browser"]']


def build_base_container(output_tar: Path, *, ca_files: list[Path], log: Log,
                         apt_sources_from_host: bool = True, run: Runner | None = None,
                         keep_rootfs: bool = False) -> dict:
    """A rootfs tarball for `docker import`, with Jupyter in a venv owned by jovyan (1000)."""
    preflight()
    output_tar = Path(output_tar)
    run = run or Runner(Path(f"{output_tar}.log"))
    log(f"full log: {output_tar}.log")
    work = output_tar.parent / (output_tar.name + ".work")
    with _rootfs(work, ("python3-venv", "ca-certificates"), baked=False, run=run, log=log,
                 sources=_guest_apt_sources(apt_sources_from_host), ca_files=ca_files,
                 host_conf=_read_dir(HOST_APT / "apt.conf.d", "*") if apt_sources_from_host
                 else {}) as (root, in_chroot):
        with step(log, f"pip install {' '.join(BASE_PIP_PACKAGES)} in {BASE_VENV}"):
            in_chroot.step("venv", BASE_VENV, *BASE_PIP_PACKAGES)
        in_chroot.step("user", "jovyan", "1000", BASE_VENV)
        freeze = in_chroot([f"{BASE_VENV}/bin/pip", "freeze"], capture=True)
        in_chroot.step("finish")
    wanted = {p.replace("-", "_").lower() for p in BASE_PIP_PACKAGES}
    versions = {k: v for k, v in (ln.split("==", 1) for ln in freeze.splitlines() if "==" in ln)
                if k.replace("-", "_").lower() in wanted}
    with step(log, f"tar the rootfs into {output_tar}"):
        compress = {".gz": ["--gzip"], ".xz": ["--xz"], ".zst": ["--zstd"]}.get(
            output_tar.suffix, [])
        run(["tar", "--numeric-owner", "--xattrs", *compress, "-C", str(root),
             "-cf", str(output_tar), "."])
    doc = {"name": "vmbinder/base:bookworm", "distro": "debian-12", "created": _now(),
           "tarball": output_tar.name, "venv": BASE_VENV, "user": "jovyan", "uid": 1000,
           "changes": base_container_changes(), "contents": versions}
    Path(str(output_tar) + ".json").write_text(json.dumps(doc, indent=2) + "\n")
    if not keep_rootfs:
        shutil.rmtree(work)
    return doc


def _invoking_user(env=os.environ) -> tuple[int, int, str] | None:
    """Who ran `sudo vmbinder image build`: the images belong in their cache, to them."""
    if env.get("SUDO_UID") and env.get("SUDO_USER"):
        return int(env["SUDO_UID"]), int(env["SUDO_GID"]), pwd.getpwnam(env["SUDO_USER"]).pw_dir
    return None


def default_output(baked: bool, env=os.environ) -> Path:
    user = _invoking_user(env)
    folder = images_dir({**env, "HOME": user[2]} if user else env)
    return folder / f"debian-12-{'baked' if baked else 'stock'}"


def host_ca_files() -> list[Path]:
    return sorted(HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []


def build_image_folder(output: Path, *, baked: bool, ca_files: list[Path],
                       apt_sources_from_host: bool = True, repo2docker_version: str,
                       base_container: bool = False, keep_rootfs: bool = False,
                       log: Log) -> ImageInfo:
    """What `vmbinder image build` makes: the image in output (with a container base
    image inside it when base_container), owned by the user who ran sudo."""
    preflight()
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    base_images = []
    if base_container:  # built first, so the image carries it
        tarball = output / "base-container.tar.gz"
        build_base_container(tarball, ca_files=ca_files, log=log,
                             apt_sources_from_host=apt_sources_from_host, keep_rootfs=keep_rootfs)
        base_images.append(tarball)
    info = build_image(output, baked=baked, ca_files=ca_files,
                       apt_sources_from_host=apt_sources_from_host,
                       repo2docker_version=repo2docker_version, log=log,
                       keep_rootfs=keep_rootfs, base_images=base_images)
    log(f"image {info.name} built in {time.monotonic() - t0:.0f} s")
    user = _invoking_user()
    if user:  # the results, not a kept rootfs: that must stay root's
        for path in [output, *output.iterdir()]:
            if not path.name.endswith("work"):
                os.chown(path, user[0], user[1])
    return info
