"""The OpenStack target. provider: OpenStackProvider, its verbs and the server
itself; resolve: the image, flavor, networks and keypair a server is made from;
network: its security group and floating IP; quotas: a batch's quota check;
snapshots: Glance images made from a server; glance: the calls of
`vmbinder image upload`; common: connecting, error mapping and the helpers the
others share."""

from vmbinder.providers.openstack.provider import OpenStackProvider

__all__ = ["OpenStackProvider"]
