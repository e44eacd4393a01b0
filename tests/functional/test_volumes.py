"""Volumes on the testbed's Cinder (a driver that stores nothing): made, attached
at server creation (Nova's block device mapping), kept when the server is deleted,
attached again to the next server, listed, refused while in use, removed. The
guest side (formatting, mounting) is shown on the local target, whose disks are
real files."""

from __future__ import annotations

import base64
import json

import pytest
import yaml

from .conftest import FLAVOR, IMAGE, SOURCE, connect

OTHER = "testbed-other"


def launch_args(name, *extra):
    return ("launch", "--no-wait", "--format", "json", "--name", name,
            "--image", IMAGE, "--flavor", FLAVOR, *extra, SOURCE)


def ok(result):
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def refused(result, code: int, message: str):
    assert result.returncode == code, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    assert message in " ".join(result.stderr.split()), result.stderr
    return result


def project_volumes(testbed) -> dict:
    """The member project's volumes by name, read as the admin."""
    return {v.name: v for v in testbed.admin.block_storage.volumes(
        details=True, all_projects=True, project_id=testbed.project_id)}


@pytest.fixture(autouse=True)
def no_volume_left(testbed):
    """The project has no volume before each test, and none after it."""
    assert project_volumes(testbed) == {}, "volumes left by an earlier run"
    yield
    left = project_volumes(testbed)
    for volume in left.values():
        testbed.admin.block_storage.delete_volume(volume, force=True)
    assert sorted(left) == [], f"volumes left behind: {sorted(left)}"


def launch_document(testbed, name) -> dict:
    user_data = base64.b64decode(testbed.server(name).user_data).decode()
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    return json.loads(files["/etc/vmbinder/launch.json"]["content"])


def attached_server_ids(volume) -> list[str]:
    return [a["server_id"] for a in volume.attachments or []]


def test_a_work_volume_outlives_its_server_and_follows_to_the_next(testbed, vmb, name):
    work = f"{name}-work"
    ok(vmb(*launch_args(name, "--volume", "1G")))
    server = testbed.server(name)
    volume = project_volumes(testbed)[work]
    # Made for this server, attached by Nova at creation, recorded on both sides.
    assert (volume.size, volume.status) == (1, "in-use")
    assert attached_server_ids(volume) == [server.id]
    assert [a.id for a in testbed.admin.compute.volume_attachments(server)] == [volume.id]
    assert volume.metadata == {"vmbinder:owner": testbed.user_id, "vmbinder:role": "work",
                               "vmbinder:made-for": name, "vmbinder:last-server": name}
    assert server.metadata["vmbinder:volume"] == work
    assert launch_document(testbed, name)["volumes"] == {
        "work": {"name": work, "serial": volume.id[:20], "created": True}, "data": []}
    status = json.loads(ok(vmb("status", name, "--format", "json")).stdout)
    assert (status["volume"], status["data"]) == (work, [])
    listed = {v["name"]: v for v in json.loads(ok(vmb("volumes", "--format", "json")).stdout)}
    assert listed[work]["attached_to"] == [name] and listed[work]["status"] == "in-use"
    assert (listed[work]["size_gb"], listed[work]["role"]) == (1, "work")

    # In use: neither a second server nor `volumes delete` may have it.
    second = f"{name}-b"
    refused(vmb(*launch_args(second, "--volume", work)), 2,
            f"error: volume {work} is in use by server {name}")
    refused(vmb("volumes", "delete", work), 2,
            f"error: volume {work} is attached to server {name} hint: nothing was deleted; "
            f"delete the server first (vmbinder delete {name} keeps the volume)")

    # Deleting the server keeps the volume, and says so.
    res = ok(vmb("delete", name))
    said = " ".join(res.stderr.split())
    assert (f"kept volume {work} (1 GB), the work volume of {name}: attach it to a new server "
            f"with --volume {work}; remove it with vmbinder volumes delete {work}") in said
    volume = project_volumes(testbed)[work]
    assert (volume.status, volume.attachments) == ("available", [])

    # The next server gets it by name; the guest is told it was there already.
    ok(vmb(*launch_args(second, "--volume", work)))
    volume = project_volumes(testbed)[work]
    assert attached_server_ids(volume) == [testbed.server(second).id]
    assert volume.metadata["vmbinder:last-server"] == second
    assert launch_document(testbed, second)["volumes"]["work"] == {
        "name": work, "serial": volume.id[:20], "created": False}

    res = ok(vmb("delete", second, "--delete-volumes"))
    assert f"removed volume {work} ({volume.id})" in res.stderr
    assert work not in project_volumes(testbed)


def test_data_volumes_are_attached_and_never_deleted_with_the_server(testbed, vmb, name):
    data = f"{name}-ds"
    made = json.loads(ok(vmb("volumes", "create", data, "--size", "2", "--format", "json")).stdout)
    assert (made["name"], made["size_gb"], made["status"]) == (data, 2, "available")
    ok(vmb(*launch_args(name, "--volume", "1", "--data", data)))
    server = testbed.server(name)
    volumes = project_volumes(testbed)
    assert server.metadata["vmbinder:data"] == data
    assert attached_server_ids(volumes[data]) == [server.id]
    assert volumes[data].metadata["vmbinder:role"] == "data"
    assert launch_document(testbed, name)["volumes"]["data"] == [
        {"name": data, "serial": volumes[data].id[:20]}]
    assert sorted(a.id for a in testbed.admin.compute.volume_attachments(server)) == \
        sorted(v.id for v in volumes.values())

    res = ok(vmb("delete", name, "--delete-volumes", "--format", "json"))
    removed = json.loads(res.stdout)
    assert {"kind": "volume", "id": volumes[f"{name}-work"].id, "name": f"{name}-work"} in removed
    left = project_volumes(testbed)
    assert list(left) == [data] and left[data].status == "available"
    listed = json.loads(ok(vmb("volumes", "--format", "json")).stdout)
    assert [(v["name"], v["last_server"], v["attached_to"]) for v in listed] == [(data, name, [])]

    res = ok(vmb("volumes", "delete", data))
    assert f"removed volume {data}" in res.stderr
    assert project_volumes(testbed) == {}


def test_a_failed_launch_removes_the_volume_it_made_but_not_one_that_was_there(
        testbed, vmb, name):
    there = f"{name}-there"
    ok(vmb("volumes", "create", there, "--size", "1"))
    res = vmb("launch", "--no-wait", "--name", name, "--image", IMAGE, "--flavor", "x1.toobig",
              "--volume", "1", SOURCE)
    refused(res, 4, "No valid host")
    assert f"volume {name}-work" in " ".join(res.stderr.split())  # said removed
    assert list(project_volumes(testbed)) == [there]

    res = vmb("launch", "--no-wait", "--name", name, "--image", IMAGE, "--flavor", "x1.toobig",
              "--volume", there, SOURCE)
    refused(res, 4, "No valid host")
    volume = project_volumes(testbed)[there]
    assert (volume.status, volume.attachments) == ("available", [])
    ok(vmb("volumes", "delete", there))


def test_volumes_not_found_or_another_users_are_refused(testbed, vmb, name):
    mine = f"{name}-mine"
    ok(vmb("volumes", "create", mine, "--size", "1"))
    refused(vmb(*launch_args(name, "--volume", "nosuch")), 3,
            f"error: volume 'nosuch' not found hint: available volumes: {mine}; or give a size "
            "in GB for a new one, such as --volume 10")
    refused(vmb(*launch_args(name, "--data", "nosuch")), 3,
            f"error: volume 'nosuch' not found hint: available volumes: {mine}")
    assert testbed.owned() == []  # refused before anything was made

    # Another user of the project makes one: listed with --all only, not deletable
    # without --force, not anyone else's work volume, but usable as data.
    other = connect(OTHER)
    theirs = f"{name}-theirs"
    other.block_storage.wait_for_status(other.block_storage.create_volume(
        name=theirs, size=1, metadata={"vmbinder:owner": other.current_user_id}),
        "available", interval=0.5, wait=60)
    assert [v["name"] for v in json.loads(ok(vmb("volumes", "--format", "json")).stdout)] == [mine]
    everyone = json.loads(ok(vmb("volumes", "--all", "--format", "json")).stdout)
    assert {v["name"]: v["owner"] for v in everyone} == {
        mine: testbed.user_id, theirs: other.current_user_id}
    refused(vmb(*launch_args(name, "--volume", theirs)), 2,
            f"error: volume {theirs} was made by another user of the project")
    refused(vmb("volumes", "delete", mine, theirs), 2,
            f"error: not deleting volumes that are not yours: {theirs} (owner "
            f"{other.current_user_id}) hint: nothing was deleted; to delete them anyway: "
            f"vmbinder volumes delete --force {theirs}")
    assert sorted(project_volumes(testbed)) == sorted([mine, theirs])
    ok(vmb("volumes", "delete", "--force", mine, theirs))
    assert project_volumes(testbed) == {}
