"""A Nova fake driver whose console shows a simulated cloud-init log.

Stock ``fake.FakeDriver`` answers every console request with a constant.  This
subclass renders, for each server, a console that looks like a finished
cloud-init run and contains the server's decoded user_data, so that code
which follows cloud-init progress through the console can be tested.
Nothing is booted and nothing in the user_data is executed.

Nova loads ``compute_driver`` only from the ``nova.virt`` namespace, so the
testbed installs a one-line shim, ``nova/virt/testbed_fake.py``, and sets
``compute_driver = testbed_fake.CloudInitFakeDriver``.
"""

import base64
import binascii
import datetime
import gzip

from nova import exception
from nova.virt import fake

CLOUD_INIT_VERSION = "22.4.2"


def decode_user_data(user_data):
    """Return the user_data of a server as text ('' when there is none)."""
    if not user_data:
        return ""
    try:
        raw = base64.b64decode(user_data, validate=False)
    except (binascii.Error, ValueError):
        raw = user_data.encode() if isinstance(user_data, str) else user_data
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            pass
    return raw.decode("utf-8", errors="replace")


def _stamp(moment):
    return moment.strftime("%a, %d %b %Y %H:%M:%S +0000")


def render_console(instance, now=None):
    """Render the simulated console log of one instance.

    An active server shows a complete cloud-init run ending with the
    ``Cloud-init ... finished at ...`` line; a server that is still building,
    or that failed, shows only the early boot lines.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    start = getattr(instance, "launched_at", None) or now
    # The same text at every read, as a real console that has gone quiet.
    finished = start + datetime.timedelta(seconds=9)
    name = getattr(instance, "hostname", None) or instance.uuid
    ci = f"Cloud-init v. {CLOUD_INIT_VERSION}"
    lines = [
        "[    0.000000] Linux version 6.1.0-testbed (SIMULATED CONSOLE: "
        "testbed fake driver, nothing boots, nothing is executed)",
        f"[    0.000000] Command line: root=LABEL=rootfs console=ttyS0 "
        f"instance={instance.uuid}",
    ]
    state = getattr(instance, "vm_state", None)
    if state != "active":
        lines.append(f"[    0.500000] testbed: server is in state "
                     f"{state or 'unknown'}; cloud-init has not run")
        return "\n".join(lines) + "\n"
    lines += [
        f"{ci} running 'init-local' at {_stamp(start)}. Up 3.10 seconds.",
        f"{ci} running 'init' at {_stamp(start)}. Up 4.20 seconds.",
        f"ci-info: hostname {name}",
        f"{ci} running 'modules:config' at {_stamp(start)}. Up 6.30 seconds.",
        "----- BEGIN USER DATA (decoded; simulated, not executed) -----",
    ]
    lines.extend(decode_user_data(instance.user_data).splitlines())
    lines += [
        "----- END USER DATA -----",
        f"{ci} running 'modules:final' at {_stamp(start)}. Up 8.40 seconds.",
        f"{ci} finished at {_stamp(finished)}. Datasource "
        f"DataSourceOpenStackLocal [net,ver=2].  Up 12.50 seconds",
    ]
    return "\n".join(lines) + "\n"


class CloudInitFakeDriver(fake.FakeDriver):
    """FakeDriver with a per-server, cloud-init-like console log, and snapshots
    that end up active in Glance, as a real driver's do."""

    def snapshot(self, context, instance, image_id, update_task_state):
        """Upload a small, plainly fake disk the way the libvirt driver uploads
        the real one: the image Nova created (queued, with the caller's
        properties) becomes active, kernel_id/ramdisk_id carried over."""
        import io

        from nova.compute import task_states
        from nova.image import glance

        if instance.uuid not in self.instances:
            raise exception.InstanceNotRunning(instance_id=instance.uuid)
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        update_task_state(task_state=task_states.IMAGE_UPLOADING,
                          expected_state=task_states.IMAGE_PENDING_UPLOAD)
        image_api = glance.API()
        current = image_api.get(context, image_id)
        source = instance.image_meta
        properties = {"image_location": "snapshot", "image_state": "available",
                      "owner_id": instance.project_id}
        for key in ("kernel_id", "ramdisk_id"):
            if getattr(instance, key, None):
                properties[key] = getattr(instance, key)
        metadata = {
            "name": current["name"],
            "disk_format": (source.disk_format if source.obj_attr_is_set("disk_format")
                            else "raw"),
            "container_format": (source.container_format
                                 if source.obj_attr_is_set("container_format") else "bare"),
            "properties": properties,
        }
        data = (f"testbed snapshot of instance {instance.uuid}: not a bootable disk\n"
                .encode() * 64)
        image_api.update(context, image_id, metadata, io.BytesIO(data), purge_props=False)

    def get_console_output(self, context, instance):
        # Bytes: the compute manager encodes a str as latin-1, which fails on
        # other characters; it decodes the bytes as ASCII with replacement.
        return render_console(instance).encode("utf-8")
