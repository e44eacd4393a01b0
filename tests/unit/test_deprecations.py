"""A deprecated call made from vmbinder's code fails the run (pyproject's filterwarnings and
tests/deprecations.py), and openstacksdk's own warnings do not."""

from __future__ import annotations

import warnings

import pytest

from tests import deprecations


def test_a_deprecation_attributed_to_a_vmbinder_module_is_an_error():
    from openstack import warnings as os_warnings

    for category in (DeprecationWarning, PendingDeprecationWarning,
                     os_warnings.RemovedInSDK60Warning, os_warnings.LegacyAPIWarning):
        with pytest.raises(category):
            warnings.warn_explicit("old", category, "openstack.py", 1,
                                   module="vmbinder.providers.openstack")


def _as_vmbinder_code(source: str):
    """A function whose frames are in a vmbinder module's file, as vmbinder's own calls are."""
    scope: dict = {}
    exec(compile(source, str(deprecations.PACKAGE / "providers" / "openstack.py"), "exec"), scope)
    return scope["call"]


@pytest.mark.filterwarnings("ignore:The ignore_missing parameter")
def test_a_deprecated_openstacksdk_call_from_vmbinder_code_is_recorded():
    from openstack.compute.v2.keypair import Keypair

    call = _as_vmbinder_code(
        "def call(cls):\n"
        "    try:\n"
        "        cls.find(None, 'k', ignore_missing=True)\n"  # warns, then wants a session
        "    except ValueError:\n"
        "        pass\n")
    with deprecations.watch() as seen:
        call(Keypair)
    assert len(seen) == 1 and seen[0].startswith(
        "RemovedInSDK60Warning through vmbinder/providers/openstack.py:3: The ignore_missing")


@pytest.mark.filterwarnings("ignore:The ignore_missing parameter")
def test_openstacksdk_own_warnings_and_calls_from_elsewhere_are_not():
    from openstack.compute.v2.keypair import Keypair

    call = _as_vmbinder_code("def call(cls):\n    return cls(name='k')\n")
    with deprecations.watch() as seen:
        call(Keypair)  # Resource.__init__ warns about its own _compute_attributes
        try:
            Keypair.find(None, "k", ignore_missing=True)  # not through vmbinder
        except ValueError:
            pass
    assert seen == []


@pytest.mark.filterwarnings("ignore:The ignore_missing parameter")
def test_a_deprecated_call_openstacksdk_makes_itself_below_vmbinder_is_not_recorded():
    from openstack.image.v2.image import Image

    call = _as_vmbinder_code(
        "def call(cls, ignore):\n"
        "    try:\n"
        "        cls.find(None, 'i', ignore_missing=ignore)\n"
        "    except ValueError:\n"
        "        pass\n")
    with deprecations.watch() as seen:
        call(Image, False)  # Image.find searches with ignore_missing=True on its own
    assert seen == []
