"""`vmbinder image upload` against the real testbed: three images in Glance that
point at each other, a server launched from them, clashes, --replace, and a
part Glance refuses.

The folder is a small stand-in for `vmbinder image build`'s output: the
testbed's Nova runs the fake driver, so nothing boots and only the cloud side
(Glance's records, Nova's use of kernel_id and ramdisk_id) is checked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import FLAVOR, IMAGE, SOURCE
from .test_launch import ok

APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
#: image.json as `vmbinder image build --baked --base-container` writes it.
IMAGE_JSON = {
    "name": "debian-12-baked", "distro": "debian-12", "baked": True,
    "created": "2026-11-23T20:05:48+00:00", "kernel": "vmlinux", "initrd": "initrd.img",
    "disk": "disk.qcow2", "root": "/dev/vda", "append": APPEND,
    "contents": {
        "apparmor": "3.0.8-3", "caddy": "2.6.2-5", "cloud-init": "22.4.2-1+deb12u4",
        "docker-buildx": "0.13.1+ds1-3", "docker.io": "20.10.24+dfsg1-1+deb12u1+b6",
        "git": "1:2.39.5-0+deb12u3", "linux-image-cloud-amd64": "6.1.192-2",
        "python3": "3.11.2-1+b1", "systemd": "252.39-1~deb12u2", "xz-utils": "5.4.1-1+deb12u2",
        "jupyter-repo2docker": "2026.4.0", "base-images": ["vmbinder/base:bookworm"],
        "kernel": "6.1.0-56-cloud-amd64",
    },
    "datasources": ["NoCloud", "ConfigDrive", "OpenStack", "None"],
}


def qemu_img(*args: str) -> None:
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is missing: apt-get install qemu-utils", pytrace=False)
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "debian-12-baked"
    folder.mkdir()
    (folder / "image.json").write_text(json.dumps(IMAGE_JSON, indent=2) + "\n")
    (folder / "vmlinux").write_bytes(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 16)
    (folder / "initrd.img").write_bytes(b"070701" + bytes(range(255, -1, -1)) * 32)
    qemu_img("create", "-f", "qcow2", str(folder / "disk.qcow2"), "16M")
    return folder


def uploaded(res) -> dict[str, dict]:
    return {i["role"]: i for i in json.loads(ok(res).stdout)["images"]}


def test_upload_launch_clash_and_replace(testbed, vmb, name, image_folder):
    a = testbed.admin
    parts = uploaded(vmb("image", "upload", str(image_folder), "--name", name, "--format", "json"))
    assert [(r, parts[r]["name"]) for r in parts] == [
        ("kernel", f"{name}-kernel"), ("initrd", f"{name}-initrd"), ("disk", name)]

    # What Glance recorded, read back as the admin.
    kernel, initrd, disk = (a.image.get_image(parts[r]["id"]) for r in ("kernel", "initrd", "disk"))
    assert (kernel.disk_format, kernel.container_format) == ("aki", "aki")
    assert (initrd.disk_format, initrd.container_format) == ("ari", "ari")
    assert (disk.disk_format, disk.container_format) == ("qcow2", "bare")
    assert (disk.kernel_id, disk.ramdisk_id) == (kernel.id, initrd.id)
    assert disk.os_command_line == APPEND and disk.min_disk == 1
    assert disk.virtual_size == 16 * 2**20
    for image, file in ((kernel, "vmlinux"), (initrd, "initrd.img"), (disk, "disk.qcow2")):
        assert image.status == "active" and image.visibility == "private"
        assert image.owner == testbed.project_id
        assert image.properties["vmbinder_image"] == name
        assert (image.os_distro, image.os_version, image.architecture) == ("debian", "12", "x86_64")
        assert a.image.download_image(image).content == (image_folder / file).read_bytes()
    assert kernel.kernel_id is None and kernel.os_command_line is None

    # A launch by name boots the disk, and Nova takes the kernel and initrd from it.
    ok(vmb("launch", "--no-wait", "--format", "json", "--name", name, "--image", name,
           "--flavor", FLAVOR, SOURCE))
    server = testbed.server(name)
    assert server.image.id == disk.id
    assert (server.kernel_id, server.ramdisk_id) == (kernel.id, initrd.id)
    ok(vmb("delete", name))

    # The same name again: refused, nothing changed; with --replace, one set, all new.
    again = vmb("image", "upload", str(image_folder), "--name", name)
    assert again.returncode == 2, again.stderr
    assert "already exist" in again.stderr and "--replace" in again.stderr and again.stdout == ""
    old = {i.id for i in testbed.images(name)}
    assert old == {kernel.id, initrd.id, disk.id}
    new = uploaded(vmb("image", "upload", str(image_folder), "--name", name, "--replace",
                       "--format", "json"))
    now = testbed.images(name)
    assert sorted(i.name for i in now) == sorted([name, f"{name}-kernel", f"{name}-initrd"])
    assert {i.id for i in now} == {p["id"] for p in new.values()} and not old & {i.id for i in now}
    assert a.image.get_image(new["disk"]["id"]).kernel_id == new["kernel"]["id"]

    # Remove them as an administrator would, so the leak check sees a clean project.
    for image in now:
        a.image.delete_image(image.id)
    assert testbed.owned() == []


def test_a_part_glance_refuses_leaves_no_image_behind(testbed, vmb, name, image_folder, tmp_path):
    # Glance inspects a bare container's contents: a qcow2 with a backing file fails its
    # safety check, after the kernel and the initrd were uploaded.
    qemu_img("create", "-f", "raw", str(tmp_path / "base.raw"), "1M")
    (image_folder / "disk.qcow2").unlink()
    qemu_img("create", "-f", "qcow2", "-b", str(tmp_path / "base.raw"), "-F", "raw",
             str(image_folder / "disk.qcow2"), "16M")
    res = vmb("image", "upload", str(image_folder), "--name", name)
    assert res.returncode == 4, res.stderr
    assert "Glance refused" in res.stderr and "safety checks" in res.stderr
    assert "HTTP 415" in res.stderr and "request id req-" in res.stderr
    assert (f"removed what it created: image {name}-kernel, image {name}-initrd, image {name}"
            in res.stderr)
    assert res.stdout == ""
    left = [i.name for i in testbed.admin.image.images(owner=testbed.project_id)
            if i.name.startswith(name)]
    assert left == []


def test_an_image_not_uploaded_by_vmbinder_is_never_replaced(testbed, vmb, image_folder):
    before = testbed.admin.image.find_image(IMAGE, ignore_missing=False)
    for extra in ((), ("--replace",)):
        res = vmb("image", "upload", str(image_folder), "--name", IMAGE, *extra)
        assert res.returncode == 2, res.stderr
        assert "is not from a vmbinder upload" in res.stderr and before.id in res.stderr
    assert testbed.admin.image.get_image(before.id).status == "active"
    assert [i.name for i in testbed.admin.image.images(owner=testbed.project_id)] == []


def test_public_needs_an_administrator_and_leaves_nothing(testbed, vmb, name, image_folder):
    res = vmb("image", "upload", str(image_folder), "--name", name, "--public")
    assert res.returncode == 4, res.stderr
    assert "HTTP 403" in res.stderr and "publicize_image" in res.stderr
    assert "--private" in res.stderr and "nothing had been created" in res.stderr
    assert testbed.images(name) == []
