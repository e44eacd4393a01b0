"""Glance, through openstacksdk: the few calls `vmbinder image upload` makes.

Configured as the `openstack` CLI is (--os-cloud / OS_CLOUD, clouds.yaml, OS_*
variables); failures become CloudError with the HTTP status and request id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vmbinder import errors
from vmbinder.providers.openstack.common import cloud_errors, connect

#: The property that marks an image as vmbinder's; its value is the upload's name.
OWNER_PROPERTY = "vmbinder_image"


@dataclass(frozen=True)
class Found:
    """An image already in Glance with one of the names an upload will use."""

    id: str
    name: str
    owner: str | None
    vmbinder_image: str | None


class Reading:
    """A file being uploaded, telling on_progress(done, size) every 5 % read."""

    def __init__(self, f, size: int, on_progress):
        self.f, self.size, self.on_progress = f, size, on_progress
        self.done, self.step = 0, -1

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.done += len(data)
        step = self.done * 20 // self.size if self.size else 20
        if step != self.step:
            self.step = step
            self.on_progress(self.done, self.size)
        return data

    def __len__(self) -> int:  # the HTTP library's Content-Length
        return self.size

    def __bool__(self) -> bool:
        return True


class Glance:
    """Images by name, and create, upload, wait for active, delete; one connection, made
    when first needed (tests pass conn)."""

    def __init__(self, cloud: str | None = None, *, conn=None):
        self.cloud_name = cloud
        self._conn = conn

    @property
    def conn(self):
        if self._conn is None:
            self._conn = connect(self.cloud_name)
        return self._conn

    def project_id(self) -> str:
        with cloud_errors("reading the current project"):
            return self.conn.current_project_id

    def named(self, name: str) -> list[Found]:
        with cloud_errors(f"looking up images named {name}"):
            return [Found(i.id, i.name, i.owner, (i.properties or {}).get(OWNER_PROPERTY))
                    for i in self.conn.image.images(name=name)]

    def create(self, name: str, disk_format: str, container_format: str, visibility: str,
               props: dict[str, str], min_disk: int = 0) -> str:
        from openstack.image.v2.image import Image

        attrs = dict(name=name, disk_format=disk_format, container_format=container_format,
                     visibility=visibility, **props)
        if min_disk:
            attrs["min_disk"] = min_disk
        with cloud_errors(f"creating image {name}"):
            return Image.new(**attrs).create(self.conn.image).id

    def upload(self, image_id: str, path: Path, on_progress) -> None:
        from openstack import exceptions
        from openstack.image.v2.image import Image

        try:
            f = path.open("rb")
        except OSError as exc:
            raise errors.BadRequest(f"cannot read {path}: {exc.strerror}",
                                    "check the file and its permissions") from None
        size = path.stat().st_size
        with f, cloud_errors(f"uploading {path.name}"):
            response = Image.new(id=image_id).upload(
                self.conn.image, data=Reading(f, size, on_progress), size=size)
            if response.status_code in (400, 415) and "text/plain" in response.headers.get(
                    "content-type", ""):
                # Glance checks the contents against disk_format; its reason is the body's last line.
                raise errors.CloudError(
                    f"Glance refused {path}: HTTP {response.status_code}: "
                    f"{response.text.strip().splitlines()[-1].strip()}",
                    f"look at the file with: qemu-img info {path} (a qcow2 disk must have no "
                    f"backing file)",
                    details={"http_status": response.status_code,
                             "request_id": response.headers.get("x-openstack-request-id")})
            exceptions.raise_from_response(response)

    def wait_active(self, image_id: str, timeout: float) -> None:
        with cloud_errors(f"waiting for image {image_id} to become active"):
            image = self.conn.image.get_image(image_id)
            self.conn.image.wait_for_status(image, "active", failures=["killed", "deleted"],
                                            interval=2, wait=timeout)

    def delete(self, image_id: str) -> None:
        self.conn.image.delete_image(image_id, ignore_missing=True)
