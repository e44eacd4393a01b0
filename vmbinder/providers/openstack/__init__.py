"""The OpenStack target: servers made through openstacksdk (provider), the
connection and error mapping the other modules share (common), quota checks
(quotas), snapshots as Glance images (snapshots) and image uploads (glance)."""

from vmbinder.providers.openstack.provider import OpenStackProvider

__all__ = ["OpenStackProvider"]
