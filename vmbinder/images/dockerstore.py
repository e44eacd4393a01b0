"""A baked image's Docker store, filled while the image is built: the base
images (tarballs with their sidecars) imported by the image's own dockerd,
started in the build's chroot. Natively this takes seconds; in the guest,
under TCG, the same import took minutes of every launch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from vmbinder import errors
from vmbinder.cloud_init.vmbinder_guest import docker_import_argv
from vmbinder.guestcontract import BASE_IMAGES_DIR
from vmbinder.images.rootfs import CHROOT_ENV, Log, Runner

#: The image's own dockerd, started in the chroot only to fill its image store:
#: no network of its own, a private socket, its runtime state on a tmpfs. The
#: storage driver is the guest's, so a host filesystem without it fails here
#: rather than leaving images the guest's daemon cannot see.
BAKE_RUN = "/run/vmbinder-bake"
BAKE_SOCKET = f"unix://{BAKE_RUN}/docker.sock"
DOCKERD_ARGS = ("--host", BAKE_SOCKET, "--exec-root", BAKE_RUN, "--pidfile", f"{BAKE_RUN}/dockerd.pid",
                "--storage-driver", "overlay2", "--iptables=false", "--ip6tables=false",
                "--bridge=none", "--ip-masq=false")
DOCKER_DATA = "var/lib/docker"
#: What the guest's daemon finds in DOCKER_DATA: the images and their layers.
#: The rest of what the bake's daemon left (networks, buildkit's and containerd's
#: state, its engine id) is made again by the guest's own at its first start.
DOCKER_KEPT = ("image", "overlay2")
DOCKERD_START = 120


def start_dockerd(root: Path, logfile: Path) -> subprocess.Popen:
    """The image's dockerd in the chroot (its own process group, so its containerd stops with it)."""
    with open(logfile, "ab") as out:
        return subprocess.Popen(["chroot", str(root), "dockerd", *DOCKERD_ARGS], env=CHROOT_ENV,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _mounts_at_or_under(path: Path) -> list[str]:
    """Mount points at path or below it, deepest first."""
    top = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        points = [m.split()[1] for m in mounts]
    return sorted((p for p in points if p == top or p.startswith(top + "/")), key=len, reverse=True)


def load_base_images(root: Path, sidecars: Sequence[Path], run: Runner, log: Log,
                     logfile: Path, *, deadline: float = DOCKERD_START) -> None:
    """`docker import` each base image (as its sidecar says) into the image's own
    Docker store. The guest still imports a tarball whose image is missing
    (pruned, or an image built without Docker)."""
    runtime, cgroup = root / BAKE_RUN.lstrip("/"), root / "sys/fs/cgroup"
    runtime.mkdir(parents=True, exist_ok=True)
    daemon = None
    try:
        run(["mount", "-t", "tmpfs", "tmpfs", str(runtime)])
        run(["mount", "--rbind", "/sys/fs/cgroup", str(cgroup)])  # dockerd needs the cgroups
        daemon = start_dockerd(root, logfile)
        socket = runtime / "docker.sock"
        until = time.monotonic() + deadline
        while not socket.exists():
            if daemon.poll() is not None or time.monotonic() > until:
                tail = "\n".join(Path(logfile).read_text(errors="replace").splitlines()[-10:])
                raise errors.BuildFailed(
                    f"the image's dockerd did not start (to load the base images):\n{tail}",
                    f"The full log is {logfile}. The build needs cgroups at /sys/fs/cgroup "
                    "and a filesystem with overlay support under the build folder.")
            time.sleep(0.5)
        docker = ["chroot", str(root), "docker", "-H", BAKE_SOCKET]
        run([*docker, "version"])  # waits for the daemon to serve
        for sidecar_file in sidecars:
            sidecar = json.loads(Path(sidecar_file).read_text())
            tarball = f"{BASE_IMAGES_DIR}/{sidecar['tarball']}"
            run([*docker, *docker_import_argv(tarball, sidecar)[1:]])
            log(f"loaded {sidecar['name']}")
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        for point in [*_mounts_at_or_under(root / DOCKER_DATA), *_mounts_at_or_under(runtime),
                      *_mounts_at_or_under(cgroup)]:
            run(["umount", "--lazy", point], check=False)
        if not _mounts_at_or_under(runtime):  # never through a mount
            shutil.rmtree(runtime, ignore_errors=True)
    data = root / DOCKER_DATA
    repositories = data / "image/overlay2/repositories.json"
    names = [json.loads(Path(s).read_text())["name"] for s in sidecars]
    found = repositories.read_text() if repositories.exists() else ""
    missing = [n for n in names if f'"{n}"' not in found]
    if missing:
        raise errors.BuildFailed(f"the base images are not in the image's Docker store: {missing}",
                                 f"Look at {logfile} and the build log.")
    for entry in data.iterdir():
        if entry.name in DOCKER_KEPT:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
