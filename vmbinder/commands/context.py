"""The Context every command gets: which cloud the root options chose, whether
to be quiet, and the provider for that target (made when first asked for)."""

from __future__ import annotations

import os
from pathlib import Path

#: The cloud name that means "a qemu VM on this machine".
LOCAL = "local"


class Context:
    """What the root options chose, for every command: the cloud, quiet, and its provider."""

    def __init__(self, os_cloud: str | None, quiet: bool):
        self.os_cloud = os_cloud
        self.quiet = quiet
        self._provider = None

    @property
    def named_local(self) -> bool:
        """Whether the local target was asked for by name (not only the default)."""
        return self.os_cloud == LOCAL

    @property
    def is_local(self) -> bool:
        return self.os_cloud == LOCAL or (self.os_cloud is None and not openstack_configured())

    @property
    def provider(self):
        if self._provider is None:
            if self.is_local:
                from vmbinder.providers.local import LocalProvider

                self._provider = LocalProvider()
            else:
                from vmbinder.providers.openstack import OpenStackProvider

                self._provider = OpenStackProvider(self.os_cloud)
        return self._provider


def openstack_configured() -> bool:
    """Whether the openstack CLI would find credentials: OS_* variables or a clouds.yaml."""
    if any(os.environ.get(k) for k in ("OS_AUTH_URL", "OS_CLIENT_CONFIG_FILE")):
        return True
    # The folders openstacksdk's config loader searches, looked up now (its own
    # list is fixed when it is imported).
    folders = (Path.cwd(), Path.home() / ".config" / "openstack", Path("/etc/xdg/openstack"),
               Path("/etc/openstack"))
    return any((f / f"clouds.{ext}").exists() for f in folders for ext in ("yaml", "yml", "json"))
