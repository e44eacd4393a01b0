"""The local provider's qemu parts that do not depend on a launch: the flavor
format, choosing an accelerator, the command line, and the qemu process (is it
ours, stop it, talk to it over QMP)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from vmbinder import errors
from vmbinder.images.folder import Image
from vmbinder.spec import EXPOSE_SSH

#: Debian/Ubuntu packages that provide the programs this provider runs.
HOST_PACKAGES = ("qemu-system-x86", "qemu-utils")
QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
INSTALL_HINT = f"install qemu: sudo apt-get install {' '.join(HOST_PACKAGES)}"

#: `kvm` or `tcg`: overrides what detect_accel() finds.
ACCEL_ENV = "VMBINDER_QEMU_ACCEL"
ACCELS = ("kvm", "tcg")

DEFAULT_CPUS = 2
DEFAULT_MEMORY_MB = 2048
MIN_MEMORY_MB = 512
MAX_CPUS = 64
#: Virtual size of each server's disk (a qcow2 overlay: only what the guest writes takes space).
OVERLAY_SIZE = "20G"
OVERLAY_BYTES = 20 << 30
LOOPBACK = "127.0.0.1"
#: The address of this machine's loopback as qemu user-mode networking shows it to the guest.
HOST_FROM_GUEST = "10.0.2.2"
#: (metadata key, guest port) of every port forwarded from the host's loopback.
FORWARDS = (("ssh-port", 22), ("http-port", 80), ("https-port", 443))


def forwarded_for(expose: str) -> tuple[str, ...]:
    """The FORWARDS a server gets: all of them, or with --expose ssh its port 22 only."""
    return tuple(key for key, guest in FORWARDS if expose != EXPOSE_SSH or guest == 22)

# Files in a server's state folder.
SERVER_JSON = "server.json"
OVERLAY = "overlay.qcow2"
SEED = "seed.iso"
CONSOLE = "console.log"
PIDFILE = "qemu.pid"
#: Relative to the state folder: qemu is started there, and a unix socket path
#: is limited to 107 bytes, which a long home folder can exceed.
QMP_SOCKET = "qmp.sock"

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


def state_root(env: Mapping[str, str] = os.environ) -> Path:
    """$XDG_STATE_HOME/vmbinder/local, default ~/.local/state/vmbinder/local."""
    base = env.get("XDG_STATE_HOME")
    home = Path(env.get("HOME") or Path.home())
    return (Path(base) if base else home / ".local" / "state") / "vmbinder" / "local"


# -- flavor -----------------------------------------------------------------------


@dataclass(frozen=True)
class Flavor:
    cpus: int = DEFAULT_CPUS
    memory_mb: int = DEFAULT_MEMORY_MB

    @property
    def name(self) -> str:
        mem = self.memory_mb
        return f"{self.cpus}c{mem // 1024}g" if mem % 1024 == 0 else f"{self.cpus}c{mem}m"


FLAVOR_RE = re.compile(r"^(?:(\d+)c)?(?:(\d+)([gm]))?$", re.IGNORECASE)
FLAVOR_HELP = ("CPUs and memory as <N>c<M>g or <N>c<M>m, e.g. 2c4g (2 vCPUs, 4 GiB) or "
               "4c3072m; either part may be left out (4g, 1c); default "
               f"{Flavor().name}")


def parse_flavor(text: str | None) -> Flavor:
    if not text:
        return Flavor()
    m = FLAVOR_RE.match(text.strip())
    if not m or not (m.group(1) or m.group(2)):
        raise errors.BadRequest(f"invalid --flavor {text!r} for the local target", FLAVOR_HELP)
    cpus = int(m.group(1)) if m.group(1) else DEFAULT_CPUS
    memory = DEFAULT_MEMORY_MB
    if m.group(2):
        memory = int(m.group(2)) * (1024 if m.group(3).lower() == "g" else 1)
    if not 1 <= cpus <= MAX_CPUS or memory < MIN_MEMORY_MB:
        raise errors.BadRequest(
            f"--flavor {text!r} asks for {cpus} CPUs and {memory} MB",
            f"use 1 to {MAX_CPUS} CPUs and at least {MIN_MEMORY_MB} MB; {FLAVOR_HELP}",
        )
    return Flavor(cpus, memory)


# -- acceleration -----------------------------------------------------------------


def kvm_usable(dev: Path) -> bool:
    """Can this process open /dev/kvm and does it speak the stable KVM API?"""
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, KVM_GET_API_VERSION) == KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def detect_accel(
    env: Mapping[str, str] = os.environ,
    *,
    dev_kvm: Path = Path("/dev/kvm"),
    sys_module: Path = Path("/sys/module"),
    probe: Callable[[Path], bool] = kvm_usable,
) -> str:
    """KVM when /dev/kvm works and is not PVM, otherwise TCG: "kvm" or "tcg".

    PVM (the kvm_pvm module: KVM nested inside a cloud VM without hardware
    virtualisation) accepts the ioctls but runs an ordinary distribution
    kernel far slower than plain TCG, so it counts as no KVM."""
    forced = (env.get(ACCEL_ENV) or "").strip().lower()
    if forced:
        if forced not in ACCELS:
            raise errors.ConfigError(f"{ACCEL_ENV}={env[ACCEL_ENV]!r} is not one of "
                                     f"{', '.join(ACCELS)}", f"unset {ACCEL_ENV} to detect it")
        return forced
    if (sys_module / "kvm_pvm").exists():
        return "tcg"
    return "kvm" if probe(dev_kvm) else "tcg"


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


# -- ports and the command line ---------------------------------------------------


def free_ports(count: int, exclude: set[int] = frozenset()) -> list[int]:
    """Ports nothing listens on at 127.0.0.1, all different. Another program can
    still take one before qemu binds it; create() reports that clearly."""
    held, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
            if port not in exclude:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def qemu_opt(value: str | Path) -> str:
    """A value inside a comma-separated qemu option list (commas are doubled)."""
    return str(value).replace(",", ",,")


def qemu_argv(*, name: str, image: Image, state: Path, ports: Mapping[str, int],
              flavor: Flavor, accel: str) -> list[str]:
    """The qemu command line. It holds no secret: the user-data (and the token in
    it) reaches the guest only through the seed disk."""
    forwards = ",".join(f"hostfwd=tcp:{LOOPBACK}:{ports[key]}-:{guest}"
                        for key, guest in FORWARDS if key in ports)
    argv = [
        QEMU, "-name", f"vmbinder-{name}", "-nodefaults", "-display", "none",
        *accel_args(accel), "-smp", str(flavor.cpus), "-m", str(flavor.memory_mb),
        "-daemonize", "-pidfile", str(state / PIDFILE),
        "-serial", f"file:{state / CONSOLE}",
        "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
        "-drive", f"file={qemu_opt(state / OVERLAY)},format=qcow2,if=virtio",
        "-drive", f"file={qemu_opt(state / SEED)},format=raw,if=virtio,readonly=on",
        "-netdev", f"user,id=net0,{forwards}",
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
    ]
    if image.kernel:
        argv += ["-kernel", str(image.kernel)]
        if image.initrd:
            argv += ["-initrd", str(image.initrd)]
        argv += ["-append", image.append or "console=ttyS0"]
    return argv


def with_ports(argv: list[str], old: Mapping[str, int], new: Mapping[str, int]) -> list[str]:
    """A recorded command line with its forwarded host ports changed from old to new."""
    out = list(argv)
    i = out.index("-netdev") + 1
    for key, guest in FORWARDS:
        if key not in old:
            continue
        out[i] = out[i].replace(f"hostfwd=tcp:{LOOPBACK}:{old[key]}-:{guest}",
                                f"hostfwd=tcp:{LOOPBACK}:{new[key]}-:{guest}")
    return out


def overlay_argv(image: Image, state: Path) -> list[str]:
    """qemu-img's command for the server's disk: 20 GiB, or the image's size if larger."""
    size = OVERLAY_SIZE if image.virtual_size <= OVERLAY_BYTES else str(image.virtual_size)
    return [QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", image.disk_format,
            str(state / OVERLAY), size]


def port_taken(said: str) -> bool:
    """Did qemu fail because a forwarded port is in use?"""
    return "host forwarding" in said or "Address already in use" in said


def qemu_hint(said: str) -> str | None:
    """What to do about what qemu or qemu-img printed when it failed."""
    if port_taken(said):
        return "another program took a forwarded port after it was chosen: launch again"
    if "kvm" in said.lower():
        return "run without KVM: VMBINDER_QEMU_ACCEL=tcg"
    if "backing" in said or "Could not open" in said:
        return "check that the image's disk is readable"
    return None


# -- the qemu process -------------------------------------------------------------


def is_our_qemu(pid: int | None, state: Path, proc: Path = Path("/proc")) -> bool:
    """True when pid is a live process whose command line names this state
    folder: a pid that was reused by another program is never ours."""
    if not pid:
        return False
    try:
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]):
        return False
    marker = os.fsencode(qemu_opt(state))
    return any(marker in arg for arg in cmdline.split(b"\0"))


def stop(pid: int | None, state: Path, *, timeout: float = 15.0, proc: Path = Path("/proc"),
         sleep: Callable[[float], None] = time.sleep) -> bool:
    """SIGTERM our qemu, SIGKILL it if it is still there after timeout.
    Returns False when there was nothing of ours to stop."""
    if not is_our_qemu(pid, state, proc):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError as exc:
            raise errors.CleanupFailed(
                f"not allowed to stop qemu process {pid}: {exc}",
                f"stop it as its owner: kill {pid}",
            ) from exc
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not is_our_qemu(pid, state, proc):
                return True
            sleep(0.1)
    raise errors.CleanupFailed(f"qemu process {pid} did not exit", f"kill -9 {pid}")


def console_tail(path: Path, lines: int | None = None, max_bytes: int = 1 << 20) -> str:
    """The end of a console log (at most max_bytes, then the last `lines` lines)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    return "\n".join(text.splitlines()[-lines:]) if lines else text


def read_pid(state: Path) -> int | None:
    try:
        return int((state / PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return None


def qmp(state: Path, command: str, arguments: dict | None = None, *, timeout: float = 10.0):
    """Run one QMP command on the server's monitor socket; returns its "return" value."""
    dirfd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                # Through the folder's descriptor: short, whatever the folder's length.
                sock.connect(f"/proc/self/fd/{dirfd}/{QMP_SOCKET}")
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    raise
                raise errors.CloudError(f"the qemu monitor of {state.name} does not answer ({exc})",
                                        f"is it running? vmbinder status {state.name}") from exc
            stream = sock.makefile("rwb")
            _qmp_read(stream)  # the greeting
            for execute, args in (("qmp_capabilities", None), (command, arguments)):
                msg = {"execute": execute, **({"arguments": args} if args else {})}
                stream.write(json.dumps(msg).encode() + b"\n")
                stream.flush()
                reply = _qmp_read(stream)
                if "error" in reply:
                    err = reply["error"]
                    raise errors.CloudError(f"qemu refused {execute}: {err.get('desc', err)}")
            return reply.get("return")
    finally:
        os.close(dirfd)


def _qmp_read(stream) -> dict:
    while True:
        line = stream.readline()
        if not line:
            raise errors.CloudError("the qemu monitor closed the connection")
        msg = json.loads(line)
        if "event" not in msg:
            return msg
