"""A Cinder volume driver that stores nothing, as Nova's fake driver boots nothing.

Cinder's own ``FakeLoggingVolumeDriver`` (in the wheel's ``cinder.tests``)
answers every call without touching a disk: a volume is a database row, an
attachment hands Nova a connection that leads nowhere, a deletion removes the
row. It reports a 5 GB volume group; this subclass reports 1000 GB, so the
scheduler places volumes of any size a test asks for (the project's quota
still applies). Nothing written to such a volume is kept: the guest side of
volumes is shown on the local target, whose disks are real files.
"""

from cinder.tests import fake_driver

#: The capacity the back end reports, in GB (a string, as LVM reports it).
CAPACITY_GB = "1000.00"


class NothingStoredDriver(fake_driver.FakeLoggingVolumeDriver):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend_name = self.configuration.safe_get("volume_backend_name") or "nothing"
        self.vg.vg_size = self.vg.vg_free_space = CAPACITY_GB
