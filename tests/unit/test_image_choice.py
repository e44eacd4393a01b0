"""The image a launch gets on OpenStack without --image, chosen from listed
Glance records: their os_distro/os_version properties first, then their names
in the forms clouds use; several names for the best distribution are refused.
The same choice against the testbed's Glance is in tests/functional."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vmbinder import errors
from vmbinder.providers.openstack import distros, resolve


def image(name, created="2026-01-01T00:00:00Z", disk_format="qcow2", **props):
    return SimpleNamespace(id=f"id-{name}-{created}", name=name, disk_format=disk_format,
                           container_format="bare", created_at=created,
                           os_distro=props.pop("os_distro", None),
                           os_version=props.pop("os_version", None), properties=props)


# -- the default image ------------------------------------------------------------------

@pytest.mark.parametrize("name, label", [
    ("Featured-Ubuntu24", "Ubuntu 24.04"),
    ("Featured-Ubuntu22", "Ubuntu 22.04"),
    ("ubuntu-24.04-lts", "Ubuntu 24.04"),
    ("Ubuntu 24.04 LTS", "Ubuntu 24.04"),
    ("Ubuntu-24.04.1", "Ubuntu 24.04"),
    ("ubuntu2404", "Ubuntu 24.04"),
    ("ubuntu-noble-server", "Ubuntu 24.04"),
    ("Ubuntu 22.04.3 LTS", "Ubuntu 22.04"),
    ("ubuntu-22.04-jammy", "Ubuntu 22.04"),
    ("Debian 13 (trixie)", "Debian 13"),
    ("debian-13-genericcloud-amd64", "Debian 13"),
    ("debian-13-baked", "Debian 13"),
    ("Debian 12.5", "Debian 12"),
    ("debian-12-genericcloud", "Debian 12"),
    ("debian-12-baked", "Debian 12"),
    ("debian-12", "Debian 12"),
    ("debian-bookworm", "Debian 12"),
    # not one of them
    ("Ubuntu 24.10", None), ("ubuntu-20.04", None), ("Kubuntu 24.04", None),
    ("debian-120", None), ("Debian 11", None), ("CentOS-Stream-9", None), ("my-image", None),
])
def test_image_names_clouds_use_are_read_as_their_distribution(name, label):
    rank = distros.rank(image(name))
    assert (distros.PREFERRED[rank].label if rank is not None else None) == label


@pytest.mark.parametrize("name, os_distro, os_version, label", [
    ("my-favourite-image", "ubuntu", "24.04", "Ubuntu 24.04"),
    ("ubuntu-24.04-lts", "debian", "12", "Debian 12"),          # the name misleads
    ("Ubuntu 24.04", "centos", "9", None),                      # so does this one
    ("gold", "Debian", "13.1", "Debian 13"),
    ("gold", "debian", "trixie", "Debian 13"),
    ("gold", "ubuntu", "22.04.4", "Ubuntu 22.04"),
    ("gold", "ubuntu", "24.10", None),
    ("Featured-Ubuntu24", "ubuntu", None, "Ubuntu 24.04"),      # no version: the name says it
    ("Featured-Debian12", "ubuntu", None, None),                # ... within the distribution
])
def test_glance_properties_say_what_an_image_is_before_its_name(name, os_distro, os_version, label):
    rank = distros.rank(image(name, os_distro=os_distro, os_version=os_version))
    assert (distros.PREFERRED[rank].label if rank is not None else None) == label


def conn_with_images(images):
    return SimpleNamespace(image=SimpleNamespace(images=lambda **query: iter(images)))


def test_the_best_distribution_wins_and_of_one_name_the_newest():
    images = [
        image("debian-12-genericcloud"),
        image("Featured-Ubuntu22", "2026-03-01T00:00:00Z"),
        image("Featured-Ubuntu22", "2026-05-01T00:00:00Z"),
        image("Featured-Ubuntu22", "2026-04-01T00:00:00Z"),
        image("ubuntu-24.04-kernel", disk_format="aki"),
    ]
    chosen = resolve.image(conn_with_images(images), None)
    assert (chosen.name, chosen.created_at) == ("Featured-Ubuntu22", "2026-05-01T00:00:00Z")


def test_properties_choose_over_misleading_names():
    images = [image("ubuntu-24.04-old", os_distro="debian", os_version="12"),
              image("golden-2026", os_distro="debian", os_version="13"),
              image("Ubuntu 22.04 (tools)", os_distro="debian", os_version="11")]
    assert resolve.image(conn_with_images(images), None).name == "golden-2026"


def test_images_of_different_names_in_the_best_distribution_are_not_guessed_between():
    images = [image("Ubuntu 24.04"), image("Ubuntu 24.04 GPU", "2026-06-01T00:00:00Z"),
              image("debian-12")]
    with pytest.raises(errors.ConfigError) as info:
        resolve.image(conn_with_images(images), None)
    exc = info.value
    assert exc.message == "no --image given and 2 images are Ubuntu 24.04: 'Ubuntu 24.04', " \
                          "'Ubuntu 24.04 GPU'"
    assert exc.hint == "choose one with --image (or VMBINDER_IMAGE): Ubuntu 24.04, Ubuntu 24.04 GPU"
    assert exc.exit_code == 3


def test_snapshots_are_never_the_default_image():
    images = [image("debian-12"),
              image("seat-snapshot", "2026-09-01T00:00:00Z", os_distro="debian", os_version="12",
                    image_type="snapshot"),
              image("ws-snapshot-2026", "2026-09-02T00:00:00Z", vmbinder_snapshot_of="ws-01",
                    os_distro="debian", os_version="12")]
    assert resolve.image(conn_with_images(images), None).name == "debian-12"


def test_with_nothing_that_matches_what_there_is_is_listed():
    images = [image("CentOS-Stream-9"), image("Ubuntu 20.04"), image("x-kernel", disk_format="aki")]
    with pytest.raises(errors.ConfigError) as info:
        resolve.image(conn_with_images(images), None)
    assert "no Ubuntu 24.04/22.04 or Debian 13/12 image found" in info.value.message
    assert info.value.hint.endswith("CentOS-Stream-9, Ubuntu 20.04")
