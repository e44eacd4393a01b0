"""The image a launch gets without --image, against the testbed's Glance: the
member's own images, whose properties and names disagree, are chosen by their
properties, and images of different names for the best distribution are
refused, listing them."""

from __future__ import annotations

import json
import warnings

import pytest

from .conftest import FLAVOR, SOURCE, connect
from .test_launch import ok


@pytest.fixture
def member_images(testbed):
    """Make private images of the member's project (1 MiB, raw); removed afterwards."""
    member = connect("testbed")
    made = []

    def make(name: str, **props):
        from openstack import warnings as os_warnings

        with warnings.catch_warnings():
            # openstacksdk's own create_image looks the name up the deprecated way
            warnings.simplefilter("ignore", os_warnings.RemovedInSDK60Warning)
            image = member.image.create_image(name, data=bytes(1024 * 1024), disk_format="raw",
                                              container_format="bare", visibility="private",
                                              wait=True, **props)
        made.append(image)
        return image

    yield make
    for image in made:
        testbed.admin.image.delete_image(image, ignore_missing=True)


def launch(vmb, name):
    return vmb("launch", "--no-wait", "--format", "json", "--name", name, "--flavor", FLAVOR, SOURCE)


def test_properties_choose_the_image_and_several_names_are_refused(testbed, vmb, name,
                                                                  member_images):
    # The testbed's public debian-12 says Debian 12 by its properties.
    member_images("ubuntu-24.04-lts-old", os_distro="debian", os_version="11")
    member_images("Debian 13 (trixie)", os_distro="ubuntu", os_version="20.04")
    gold = member_images("golden-2026", os_distro="ubuntu", os_version="22.04")
    out = json.loads(ok(launch(vmb, name)).stdout)
    assert out["name"] == name
    assert testbed.server(name).image.id == gold.id
    ok(vmb("delete", name))

    member_images("Ubuntu 22.04 GPU")  # no properties: its name says Ubuntu 22.04 too
    res = launch(vmb, name + "-b")
    assert res.returncode == 3, res.stderr
    assert "no --image given and 2 images are Ubuntu 22.04: 'Ubuntu 22.04 GPU', " \
           "'golden-2026'" in res.stderr
    assert "choose one with --image (or VMBINDER_IMAGE): Ubuntu 22.04 GPU, golden-2026" \
           in res.stderr
    assert "nothing had been created" in res.stderr and res.stdout == ""
