"""A seat's snapshot on OpenStack, against a scripted Nova and Glance: the
server is started again only once Nova has ended its snapshot task, and an
imaging failure is the error reported even when starting again fails too."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vmbinder import errors
from vmbinder.providers.base import Ledger, Server
from vmbinder.providers.openstack import power, snapshots

SERVER = Server("srv-1", "ws-01", "active", "ACTIVE", "203.0.113.20", {})


class Cloud:
    def __init__(self, *, uploading: int, image_fails: bool = False, start_fails: bool = False):
        self.uploading, self.image_fails, self.start_fails = uploading, image_fails, start_fails
        self.status, self.calls = "ACTIVE", []
        self.compute = SimpleNamespace(
            get_server=self.get_server, stop_server=self.stop, start_server=self.start,
            wait_for_server=lambda raw, status, **kw: self.calls.append(f"wait {status}"),
            create_server_image=self.create_image)
        self.image = SimpleNamespace(wait_for_status=self.wait_image,
                                     delete_image=lambda *a, **kw: None)

    def get_server(self, server_id):
        task = None
        if self.status == "SHUTOFF" and self.uploading and "image" in self.calls:
            self.uploading -= 1
            task = "image_uploading"
        return SimpleNamespace(id=server_id, status=self.status, task_state=task)

    def stop(self, server_id):
        self.calls.append("stop")
        self.status = "SHUTOFF"

    def start(self, server_id):
        self.calls.append("start")
        if self.uploading:
            raise AssertionError("started while Nova was still uploading the snapshot")
        if self.start_fails:
            from openstack.exceptions import ConflictException

            raise ConflictException("Cannot 'start' instance")
        self.status = "ACTIVE"

    def create_image(self, server_id, name, metadata):
        self.calls.append("image")
        return SimpleNamespace(id="img-1")

    def wait_image(self, image, **kw):
        if self.image_fails:
            from openstack.exceptions import ResourceFailure

            raise ResourceFailure("image went to killed")
        return SimpleNamespace(id="img-1", name="ws-snapshot", created_at=None,
                               properties={"vmbinder_snapshot_of": "ws-01"})


def test_the_server_starts_again_once_nova_has_ended_its_snapshot_task(monkeypatch):
    monkeypatch.setattr(power.time, "sleep", lambda s: None)
    cloud = Cloud(uploading=3)
    snap = snapshots.snapshot(cloud, SERVER, "ws-snapshot", {}, Ledger(), timeout=60)
    assert snap.id == "img-1" and cloud.uploading == 0
    assert cloud.calls == ["stop", "image", "start"]


def test_an_imaging_failure_is_reported_even_when_starting_again_fails(monkeypatch):
    monkeypatch.setattr(power.time, "sleep", lambda s: None)
    cloud = Cloud(uploading=0, image_fails=True, start_fails=True)
    ledger = Ledger()
    with pytest.raises(errors.CloudError) as info:
        snapshots.snapshot(cloud, SERVER, "ws-snapshot", {}, ledger, timeout=60)
    assert "snapshotting ws-01 failed" in info.value.message
    assert "image went to killed" in info.value.message
    assert "start" in cloud.calls  # it was tried
    assert [i.kind for i in ledger.items] == ["snapshot"]  # for the rollback
