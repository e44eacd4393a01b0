"""The rootfs a guest image is built from, on the build host: the host checks,
a command runner that logs everything, the apt sources taken from the host,
debootstrap, and a chroot with /dev, /proc and /sys mounted (always unmounted
again) in which guest/provision.sh runs its steps."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vmbinder import errors
from vmbinder.guestcontract import TRIXIE_PIN

#: Debian packages the build runs on the host.
BUILD_PACKAGES = ("debootstrap", "qemu-utils", "e2fsprogs", "zstd", "lz4", "xz-utils")
#: Everything to install on a host (the setup script): the build, plus qemu and
#: genisoimage for guest/boot-check.sh and the local qemu target.
HOST_PACKAGES = (*BUILD_PACKAGES, "qemu-system-x86", "genisoimage")
#: Host tools checked before anything starts.
HOST_TOOLS = ("debootstrap", "chroot", "mkfs.ext4", "qemu-img", "lz4", "unzstd")


@dataclass(frozen=True)
class Distro:
    """A Debian release `image build` makes: its name (``debian-12``, in image.json
    and the image's name), its suite, the suite its docker-buildx comes from
    when it has none of its own (pinned low: guestcontract.TRIXIE_PIN), and the
    packages docker.io needs beside it (Debian 13 moved the docker command to
    docker-cli, which docker.io only recommends)."""

    name: str
    suite: str
    buildx_from: str | None = None
    docker_extra: tuple[str, ...] = ()


DISTROS = {d.name: d for d in (Distro("debian-12", "bookworm", buildx_from="trixie"),
                               Distro("debian-13", "trixie", docker_extra=("docker-cli",)))}
DEFAULT_DISTRO = "debian-12"
SUITE = DISTROS[DEFAULT_DISTRO].suite
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: guest/ in the repository, shipped in the package as vmbinder.guest.
GUEST_DIR = Path(str(resources.files("vmbinder.guest")))
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_APT = Path("/etc/apt")
CHROOT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C", "LANG": "C",
              "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

Log = Callable[[str], None]


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
    A host of another Debian release has no entries for ``suite``: its Debian
    entries are kept with their suite changed (a bookworm host's mirrors serve
    trixie too).
    """
    keep = _suite_entries(host_files, suite)
    for other in (d.suite for d in DISTROS.values() if d.suite != suite):
        if keep:
            break
        keep = {n: _swap_suite(t, other, suite)
                for n, t in _suite_entries(host_files, other).items()}
    return keep


def _swap_suite(text: str, old: str, new: str) -> str:
    """Entries with ``old`` (and old-updates, old-security) changed to ``new``."""
    def line(ln: str) -> str:
        if not re.match(r"(?i)(suites:|deb\s)", ln):
            return ln
        return " ".join(new + w[len(old):] if w.split("-")[0] == old else w
                        for w in ln.split(" "))
    return "\n".join(line(ln) for ln in text.splitlines()) + "\n"


def _suite_entries(host_files: dict[str, str], suite: str) -> dict[str, str]:
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


#: user:password@ (or token@) in a URL: the image, which others may boot, never keeps it.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s\"'@]+@")


def host_apt_settings(conf_files: dict[str, str]) -> dict[str, str]:
    """The host's apt.conf.d files that say how to reach the archive (Acquire::...),
    without the user names and passwords their URLs hold (a proxy's login)."""
    return {n: _USERINFO.sub(r"\g<scheme>", t) for n, t in conf_files.items()
            if re.search(r"^\s*Acquire::", t, re.MULTILINE)}


def _read_dir(path: Path, pattern: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.glob(pattern)) if p.is_file()}


def _guest_apt_sources(from_host: bool, suite: str) -> dict[str, str]:
    """The host's Debian entries, or deb.debian.org when asked (or the host has none)."""
    found = guest_sources({**_read_dir(HOST_APT / "sources.list.d", "*"),
                           **_read_dir(HOST_APT, "sources.list")}, suite) if from_host else {}
    return found or {"debian.sources": (
        f"Types: deb\nURIs: {DEFAULT_MIRROR}\nSuites: {suite} {suite}-updates\n"
        f"Components: main\nSigned-By: {KEYRING}\n")}


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
    """Bind /dev, /dev/pts, /proc, /sys and block service starts; always unmount.
    The rootfs is bound onto itself first, so its / is a mount point as a
    system's is (dockerd's layer extraction makes / private, which fails otherwise)."""
    mounts = [(["--bind", str(root)], ""), (["--bind", "/dev"], "dev"), (["--bind", "/dev/pts"], "dev/pts"),
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
def fresh_rootfs(work: Path, include: Sequence[str], *, apt_sources_from_host: bool,
                 baked: bool, ca_files: Sequence[Path], run: Runner, log: Log,
                 distro: Distro = DISTROS[DEFAULT_DISTRO]):
    """debootstrap a fresh rootfs of distro in work/rootfs with the host's mirrors
    (or deb.debian.org) and CAs, then yield it and a runner inside it; unmounts
    on the way out whatever happens."""
    suite = distro.suite
    sources = _guest_apt_sources(apt_sources_from_host, suite)
    host_conf = _read_dir(HOST_APT / "apt.conf.d", "*") if apt_sources_from_host else {}
    root = _prepare_workdir(work)
    mirror = mirror_of(sources)
    with _sigterm_as_interrupt():
        with step(log, f"debootstrap {suite} minbase from {mirror}"):
            run(["debootstrap", "--variant=minbase", f"--include={','.join(include)}",
                 "--components=main", suite, str(root), mirror])
        _write_apt_config(root, sources, mirror, bool(baked and distro.buildx_from),
                          host_conf)
        with chroot(root, run, log) as in_chroot:
            dest = root / HOST_CA_DIR.relative_to("/")
            dest.mkdir(parents=True, exist_ok=True)
            for ca in ca_files:
                shutil.copy(ca, dest / (Path(ca).stem + ".crt"))
            shutil.copy(GUEST_DIR / "rootfs/etc/pip.conf", root / "etc/pip.conf")
            in_chroot.step("ca")
            yield root, in_chroot
            in_chroot.step("trim")


def _write_apt_config(root: Path, sources: dict[str, str], mirror: str, pin_trixie: bool,
                      host_conf: dict[str, str]) -> None:
    apt = root / "etc/apt"
    (apt / "sources.list").write_text("")
    for name, text in sources.items():
        (apt / "sources.list.d" / name).write_text(text)
    for name, text in host_apt_settings(host_conf).items():
        (apt / "apt.conf.d" / name).write_text(text)
    shutil.copytree(GUEST_DIR / "rootfs/etc/apt", apt, dirs_exist_ok=True)
    if pin_trixie:  # docker-buildx for a release that has none
        (apt / "sources.list.d/trixie.sources").write_text(trixie_sources(mirror))
        (apt / "preferences.d").mkdir(exist_ok=True)
        (apt / "preferences.d/trixie-pin").write_text(TRIXIE_PIN)
