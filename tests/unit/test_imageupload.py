"""vmbinder image upload: the folder checks, the three parts, rollback, name clashes
and --replace, against an in-memory Glance with failures on request."""

import itertools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmbinder import errors
from vmbinder.commands import image as image_commands
from vmbinder.commands import output
from vmbinder.commands.main import cli
from vmbinder.images import folder as image_folder
from vmbinder.images import upload as iu
from vmbinder.providers.openstack.glance import OWNER_PROPERTY, Found, Reading

GIB = 1024 ** 3
APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
PROJECT = "project-1"


def qcow2_header(virtual_size: int) -> bytes:
    """The first 32 bytes of a qcow2 file (magic, version 3, virtual size), padded."""
    return b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(16) + virtual_size.to_bytes(8, "big") + bytes(480)


def image_doc(**changes) -> dict:
    """image.json as `vmbinder image build --baked` writes it."""
    doc = {
        "name": "debian-12-baked", "distro": "debian-12", "baked": True,
        "created": "2026-11-23T20:05:48+00:00", "kernel": "vmlinux", "initrd": "initrd.img",
        "disk": "disk.qcow2", "root": "/dev/vda", "append": APPEND,
        "contents": {"cloud-init": "22.4.2-1+deb12u4", "jupyter-repo2docker": "2026.4.0",
                     "base-images": ["vmbinder/base:bookworm"], "kernel": "6.1.0-56-cloud-amd64"},
        "datasources": ["NoCloud", "ConfigDrive", "OpenStack", "None"],
    }
    doc.update(changes)
    return doc


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "debian-12-baked"
    path.mkdir()
    (path / "image.json").write_text(json.dumps(image_doc(), indent=2))
    (path / "vmlinux").write_bytes(b"\x7fELF" + b"k" * 5000)
    (path / "initrd.img").write_bytes(b"070701" + b"i" * 9000)
    (path / "disk.qcow2").write_bytes(qcow2_header(20 * GIB))
    return path


class FakeGlance:
    """Glance in memory. fail_at / interrupt_at name a step such as "upload x-initrd"."""

    def __init__(self, *, fail_at=None, interrupt_at=None, fail_deleting=(), status=None):
        self.fail_at, self.interrupt_at, self.status = fail_at, interrupt_at, status
        self.fail_deleting = set(fail_deleting)
        self.images: dict[str, dict] = {}
        self.calls: list[str] = []
        self._ids = (f"img-{n}" for n in itertools.count(1))

    def add(self, name, *, owner=PROJECT, props=None):
        image_id = next(self._ids)
        self.images[image_id] = {"name": name, "owner": owner, "props": dict(props or {}),
                                 "status": "active"}
        return image_id

    def add_set(self, name):
        return [self.add(iu.part_name(name, role), props={OWNER_PROPERTY: name}) for role in iu.ROLES]

    def _step(self, step):
        self.calls.append(step)
        if step == self.interrupt_at:
            raise KeyboardInterrupt
        if step == self.fail_at:
            raise errors.CloudError(f"{step} failed: HTTP {self.status or 500}: injected",
                                    details={"http_status": self.status or 500,
                                             "request_id": "req-1"})

    def project_id(self):
        self.calls.append("project")
        return PROJECT

    def named(self, name):
        self._step(f"named {name}")
        return [Found(i, d["name"], d["owner"], d["props"].get(OWNER_PROPERTY))
                for i, d in self.images.items() if d["name"] == name]

    def create(self, name, disk_format, container_format, visibility, props, min_disk=0):
        self._step(f"create {name}")
        image_id = self.add(name, props=props)
        self.images[image_id].update(disk_format=disk_format, container_format=container_format,
                                     visibility=visibility, min_disk=min_disk, status="queued")
        return image_id

    def upload(self, image_id, path, on_progress):
        self._step(f"upload {self.images[image_id]['name']}")
        with path.open("rb") as f:
            reading = Reading(f, path.stat().st_size, on_progress)
            data = b"".join(iter(lambda: reading.read(1024), b""))
        self.images[image_id].update(data=data, status="active")

    def wait_active(self, image_id, timeout):
        self._step(f"wait {self.images[image_id]['name']}")

    def delete(self, image_id):
        name = self.images[image_id]["name"]
        self.calls.append(f"delete {name}")
        if name in self.fail_deleting:
            raise RuntimeError(f"cannot delete {name}")
        del self.images[image_id]

    def by_name(self):
        return {d["name"]: {"id": i, **d} for i, d in self.images.items()}


STEPS = [f"{verb} {name}" for name in ("debian-12-baked-kernel", "debian-12-baked-initrd",
                                        "debian-12-baked") for verb in ("create", "upload", "wait")]


# -- the folder is checked before any call to the cloud ---------------------------------------

def _remove(path, name):
    (path / name).unlink()


@pytest.mark.parametrize("breakage, message", [
    (lambda p: _remove(p, "image.json"), "has no image.json"),
    (lambda p: (p / "image.json").write_text("{not json"), "cannot read"),
    (lambda p: (p / "image.json").write_text("[]"), "not a JSON object"),
    (lambda p: _remove(p, "vmlinux"), "the kernel file vmlinux is missing"),
    (lambda p: _remove(p, "initrd.img"), "the initrd file initrd.img is missing"),
    (lambda p: _remove(p, "disk.qcow2"), "the disk file disk.qcow2 is missing"),
    (lambda p: (p / "vmlinux").write_bytes(b""), "is empty"),
    (lambda p: (p / "disk.qcow2").write_bytes(b"\x00" * 4096), "is not a qcow2 image"),
    (lambda p: (p / "image.json").write_text(json.dumps(image_doc(append=None))), "'append'"),
    (lambda p: (p / "image.json").write_text(json.dumps(image_doc(append="x" * 300))), "'append'"),
    # Built before images read OpenStack's datasources: on Nova the user-data is never read.
    (lambda p: (p / "image.json").write_text(json.dumps(image_doc(datasources=None))),
     "does not read OpenStack's ConfigDrive or OpenStack datasource"),
    (lambda p: (p / "image.json").write_text(json.dumps(image_doc(datasources=["NoCloud", "None"]))),
     "never see the launch's user-data"),
    (lambda p: (p / "image.json").write_text(json.dumps(image_doc(datasources=["NoCloud", "ConfigDrive"]))),
     "OpenStack datasource"),
])
def test_a_broken_folder_is_refused_naming_the_file_and_the_fix(folder, breakage, message):
    breakage(folder)
    glance = FakeGlance()
    with pytest.raises(errors.BadRequest) as info:
        iu.upload_image(glance, folder)
    assert info.value.exit_code == 2
    assert message in info.value.message
    assert "vmbinder image build" in info.value.hint
    assert glance.calls == []


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(errors.BadRequest) as info:
        iu.upload_image(FakeGlance(), tmp_path / "nope")
    assert "is not an image folder" in info.value.message and "vmbinder image build" in info.value.hint


def test_the_file_names_come_from_image_json(folder):
    (folder / "vmlinux").rename(folder / "vmlinuz-elf")
    (folder / "image.json").write_text(json.dumps(image_doc(kernel="vmlinuz-elf")))
    assert iu.read_folder(folder).files["kernel"] == folder / "vmlinuz-elf"


@pytest.mark.parametrize("name", ["", " lead", "trail ", "tab\there", "x" * 249])
def test_invalid_names_are_refused_before_any_call(folder, name):
    glance = FakeGlance()
    with pytest.raises(errors.BadRequest) as info:
        iu.upload_image(glance, folder, name=name)
    assert "--name" in info.value.hint and glance.calls == []


def test_a_folder_can_be_named_by_its_name_in_the_images_folder(folder, monkeypatch):
    monkeypatch.setenv("VMBINDER_IMAGES_DIR", str(folder.parent))
    assert image_folder.find_folder("debian-12-baked") == folder
    assert image_folder.find_folder(str(folder)) == folder
    # a path is taken as it is, even where a name would match
    assert image_folder.find_folder("./debian-12-baked") == Path("debian-12-baked")


# -- the three parts ----------------------------------------------------------------------------

def test_kernel_initrd_and_disk_are_uploaded_and_point_at_each_other(folder):
    glance = FakeGlance()
    result = iu.upload_image(glance, folder)
    assert result.name == "debian-12-baked" and result.replaced == ()
    assert [(u.role, u.name, u.disk_format, u.container_format) for u in result.images] == [
        ("kernel", "debian-12-baked-kernel", "aki", "aki"),
        ("initrd", "debian-12-baked-initrd", "ari", "ari"),
        ("disk", "debian-12-baked", "qcow2", "bare"),
    ]
    assert glance.calls[:4] == ["project", "named debian-12-baked-kernel",
                                "named debian-12-baked-initrd", "named debian-12-baked"]
    assert glance.calls[4:] == STEPS  # each part active before the next is created
    images = glance.by_name()
    kernel, initrd, disk = (images[n] for n in ("debian-12-baked-kernel", "debian-12-baked-initrd",
                                                 "debian-12-baked"))
    assert kernel["data"] == (folder / "vmlinux").read_bytes()
    assert initrd["data"] == (folder / "initrd.img").read_bytes()
    assert disk["data"] == (folder / "disk.qcow2").read_bytes()
    props = disk["props"]
    assert props["kernel_id"] == kernel["id"] and props["ramdisk_id"] == initrd["id"]
    assert props["os_command_line"] == APPEND and props["hw_disk_bus"] == "virtio"
    assert disk["min_disk"] == 20
    assert props["vmbinder_repo2docker"] == "2026.4.0"
    assert props["vmbinder_kernel"] == "6.1.0-56-cloud-amd64"
    for image in (kernel, initrd, disk):
        assert image["visibility"] == "private" and image["status"] == "active"
        assert image["props"][OWNER_PROPERTY] == "debian-12-baked"
        assert image["props"]["vmbinder_baked"] == "true"
        assert (image["props"]["os_distro"], image["props"]["os_version"]) == ("debian", "12")
        assert image["props"]["architecture"] == "x86_64"
        assert all(isinstance(v, str) and len(v) <= 255 for v in image["props"].values())
    assert "kernel_id" not in kernel["props"] and "os_command_line" not in initrd["props"]


def test_name_and_visibility_can_be_chosen(folder):
    glance = FakeGlance()
    result = iu.upload_image(glance, folder, name="team-image", visibility=iu.PUBLIC)
    assert sorted(glance.by_name()) == ["team-image", "team-image-initrd", "team-image-kernel"]
    assert {i["visibility"] for i in glance.images.values()} == {"public"}
    assert {i["props"][OWNER_PROPERTY] for i in glance.images.values()} == {"team-image"}
    assert result.images[2].name == "team-image"


def test_publishing_refused_by_the_cloud_suggests_private(folder):
    glance = FakeGlance(fail_at="create x-kernel", status=403)
    with pytest.raises(errors.CloudError) as info:
        iu.upload_image(glance, folder, name="x", visibility=iu.PUBLIC)
    assert "--private" in info.value.hint and info.value.details["http_status"] == 403


def test_progress_is_reported_every_few_percent(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 100_000)
    seen = []
    with path.open("rb") as f:
        reading = Reading(f, 100_000, lambda done, size: seen.append((done, size)))
        assert len(reading) == 100_000 and reading
        while reading.read(1000):
            pass
    assert 20 <= len(seen) <= 21 and seen[-1] == (100_000, 100_000)


# -- failures roll back what this attempt created ----------------------------------------------

@pytest.mark.parametrize("step", STEPS)
def test_a_failure_at_any_step_deletes_every_part_it_created(folder, step):
    glance = FakeGlance(fail_at=step)
    with pytest.raises(errors.CloudError) as info:
        iu.upload_image(glance, folder)
    assert glance.images == {}
    assert info.value.exit_code == 4 and "injected" in info.value.message
    assert info.value.details["request_id"] == "req-1"
    if step == STEPS[0]:
        assert "nothing had been created" in info.value.hint
    else:
        assert "removed what it created: image debian-12-baked-kernel" in info.value.hint


@pytest.mark.parametrize("step", STEPS)
def test_ctrl_c_at_any_step_deletes_every_part_and_exits_130(folder, step):
    glance = FakeGlance(interrupt_at=step)
    with pytest.raises(errors.Interrupted) as info:
        iu.upload_image(glance, folder)
    assert info.value.exit_code == 130 and "upload interrupted" in info.value.message
    assert glance.images == {}


def test_a_part_that_cannot_be_deleted_is_named_with_its_command(folder):
    glance = FakeGlance(fail_at="upload debian-12-baked", fail_deleting={"debian-12-baked-initrd"})
    with pytest.raises(errors.CleanupFailed) as info:
        iu.upload_image(glance, folder)
    (initrd_id,) = glance.images
    assert info.value.exit_code == 7
    assert f"openstack image delete {initrd_id}" in info.value.message
    assert "the upload failed" in info.value.message
    assert [i["name"] for i in glance.images.values()] == ["debian-12-baked-initrd"]


def test_an_unreadable_part_is_a_bad_request_and_rolls_back(folder, monkeypatch):
    glance = FakeGlance()

    def unreadable(image_id, path, on_progress):
        raise errors.BadRequest(f"cannot read {path}: Permission denied", "check the file")

    monkeypatch.setattr(glance, "upload", unreadable)
    with pytest.raises(errors.BadRequest) as info:
        iu.upload_image(glance, folder)
    assert "removed what it created: image debian-12-baked-kernel" in info.value.hint
    assert glance.images == {}


# -- name clashes and --replace -----------------------------------------------------------------

def test_an_earlier_upload_of_the_same_name_is_refused_without_replace(folder):
    glance = FakeGlance()
    old = glance.add_set("debian-12-baked")
    with pytest.raises(errors.BadRequest) as info:
        iu.upload_image(glance, folder)
    assert info.value.exit_code == 2
    assert "already exist" in info.value.message and old[2] in info.value.message
    assert "--replace" in info.value.hint and "--name" in info.value.hint
    assert sorted(glance.images) == sorted(old)
    assert not [c for c in glance.calls if c.startswith("create")]


@pytest.mark.parametrize("owner, props, why", [
    (PROJECT, {}, "not from a vmbinder upload"),
    ("another-project", {OWNER_PROPERTY: "debian-12-baked"}, "not from a vmbinder upload"),
    (PROJECT, {OWNER_PROPERTY: "debian-12"}, "part of the vmbinder upload 'debian-12'"),
])
def test_an_image_that_is_not_this_uploads_is_never_replaced(folder, owner, props, why):
    glance = FakeGlance()
    theirs = glance.add("debian-12-baked-kernel", owner=owner, props=props)
    with pytest.raises(errors.BadRequest) as info:
        iu.upload_image(glance, folder, replace=True)
    assert why in info.value.message and theirs in info.value.message
    assert "--name" in info.value.hint
    assert list(glance.images) == [theirs]


def test_replace_deletes_the_old_set_once_the_new_one_is_active(folder):
    glance = FakeGlance()
    old = glance.add_set("debian-12-baked")
    result = iu.upload_image(glance, folder, replace=True)
    assert sorted(f.id for f in result.replaced) == sorted(old)
    assert not set(old) & set(glance.images)
    assert sorted(glance.by_name()) == ["debian-12-baked", "debian-12-baked-initrd",
                                        "debian-12-baked-kernel"]
    deletes = [c for c in glance.calls if c.startswith("delete")]
    assert glance.calls.index(deletes[0]) > glance.calls.index("wait debian-12-baked")
    assert deletes[0] == "delete debian-12-baked"  # the disk first: it names the others


def test_replace_keeps_the_old_set_when_the_new_upload_fails(folder):
    glance = FakeGlance(fail_at="upload debian-12-baked")
    old = glance.add_set("debian-12-baked")
    with pytest.raises(errors.CloudError):
        iu.upload_image(glance, folder, replace=True)
    assert sorted(glance.images) == sorted(old)


def test_replace_names_an_old_image_it_could_not_delete(folder):
    glance = FakeGlance(fail_deleting={"debian-12-baked-kernel"})
    old_kernel = glance.add_set("debian-12-baked")[0]
    with pytest.raises(errors.CleanupFailed) as info:
        iu.upload_image(glance, folder, replace=True)
    assert f"openstack image delete {old_kernel}" in info.value.message
    assert "uploaded debian-12-baked" in info.value.message
    assert len(glance.by_name()) == 3 and len(glance.images) == 4  # the new set, and the leftover


def test_replace_with_nothing_to_replace_just_uploads(folder):
    glance = FakeGlance()
    assert iu.upload_image(glance, folder, replace=True).replaced == ()
    assert len(glance.images) == 3


# -- the command --------------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_local_target_has_nothing_to_upload(folder):
    res = run("--cloud", "local", "image", "upload", str(folder))
    assert res.exit_code == 2
    assert "nothing to upload" in res.stderr and "--os-cloud" in res.stderr and res.stdout == ""


def test_without_a_cloud_the_command_says_how_to_name_one(folder):
    res = run("image", "upload", str(folder))
    assert res.exit_code == 3 and "OS_CLOUD" in res.stderr


def test_a_broken_folder_exits_2_before_connecting(folder, monkeypatch):
    (folder / "initrd.img").unlink()
    monkeypatch.setattr(iu.Glance, "conn", property(lambda self: pytest.fail("connected")))
    res = run("--os-cloud", "mine", "image", "upload", str(folder))
    assert res.exit_code == 2
    assert "initrd.img is missing" in res.stderr and "vmbinder image build" in res.stderr


@pytest.fixture
def fake_cloud(monkeypatch):
    glance = FakeGlance()
    monkeypatch.setattr(iu, "Glance", lambda cloud: glance)
    return glance


def test_table_output_lists_the_three_images(folder, fake_cloud):
    res = run("--os-cloud", "mine", "image", "upload", str(folder))
    assert res.exit_code == 0, res.stderr
    ids = {d["name"]: d["id"] for d in fake_cloud.by_name().values()}
    rows = [line.split() for line in res.stdout.splitlines()]
    assert rows == [["kernel", ids["debian-12-baked-kernel"], "debian-12-baked-kernel"],
                    ["initrd", ids["debian-12-baked-initrd"], "debian-12-baked-initrd"],
                    ["disk", ids["debian-12-baked"], "debian-12-baked"]]
    assert "vmbinder launch --image debian-12-baked" in res.stderr


def test_json_and_value_output(folder, fake_cloud):
    res = run("--os-cloud", "mine", "image", "upload", str(folder), "--name", "x", "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["name"] == "x" and doc["replaced"] == []
    assert [(i["role"], i["name"], i["disk_format"]) for i in doc["images"]] == [
        ("kernel", "x-kernel", "aki"), ("initrd", "x-initrd", "ari"), ("disk", "x", "qcow2")]
    assert set(fake_cloud.images) == {i["id"] for i in doc["images"]}
    res = run("--os-cloud", "mine", "image", "upload", str(folder), "--name", "x", "--replace",
              "--format", "value")
    rows = [line.split("\t") for line in res.stdout.splitlines()]
    assert [(r[0], r[2]) for r in rows] == [("kernel", "x-kernel"), ("initrd", "x-initrd"), ("disk", "x")]
    assert {r[1] for r in rows} == set(fake_cloud.images)


def test_a_public_upload_says_what_the_image_holds(folder, fake_cloud):
    res = run("--os-cloud", "mine", "image", "upload", str(folder), "--public")
    assert res.exit_code == 0, res.stderr
    assert "every project of this cloud can boot these images" in res.stderr
    assert "CA certificates" in res.stderr and "apt sources" in res.stderr
    private = run("--os-cloud", "mine", "image", "upload", str(folder), "--name", "y")
    assert "every project" not in private.stderr


def test_a_clash_exits_2_with_the_hint(folder, fake_cloud):
    fake_cloud.add_set("debian-12-baked")
    res = run("--os-cloud", "mine", "image", "upload", str(folder))
    assert res.exit_code == 2 and "--replace" in res.stderr and res.stdout == ""


def test_upload_has_help_and_the_same_formats_as_every_command():
    res = run("image", "upload", "--help")
    assert res.exit_code == 0 and "--replace" in res.stdout and "--public / --private" in res.stdout
    fmt = next(p for p in image_commands.upload_command.params if p.name == "fmt")
    assert tuple(fmt.type.choices) == output.FORMATS


@pytest.mark.parametrize("distro, props, label", [
    ("debian-12", ("debian", "12"), "Debian 12"),
    ("debian-13", ("debian", "13"), "Debian 13"),
    ("ubuntu-24.04", ("ubuntu", "24.04"), "Ubuntu 24.04"),
    ("", (None, None), "Debian 12"),  # no distro: the name (debian-12-baked) says it
])
def test_the_disk_carries_its_distribution_for_the_default_image_choice(folder, distro, props, label):
    from dataclasses import replace
    from types import SimpleNamespace

    from vmbinder.providers.openstack import distros

    image = replace(iu.read_folder(folder), distro=distro)
    disk = iu.properties(image, "debian-12-baked", iu.DISK)
    assert (disk.get("os_distro"), disk.get("os_version")) == props
    record = SimpleNamespace(name="debian-12-baked", os_distro=disk.get("os_distro"),
                             os_version=disk.get("os_version"), properties=disk)
    assert distros.PREFERRED[distros.rank(record)].label == label
