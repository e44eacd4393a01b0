"""The provider contract: every verb on every provider, refusals in words, target defaults."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.unit.fakes import FakeProvider
from vmbinder import errors
from vmbinder.providers import base
from vmbinder.providers.local import LocalProvider
from vmbinder.providers.openstack import OpenStackProvider
from vmbinder.providers.openstack.common import find_or_none
from vmbinder.sources import Source
from vmbinder.spec import make_spec

PROVIDERS = (LocalProvider, OpenStackProvider, FakeProvider)
SERVER = base.Server("id-1", "demo", base.ACTIVE, "ACTIVE", None, {})


@pytest.mark.parametrize("cls", PROVIDERS)
def test_capabilities_are_the_optional_verbs_a_provider_implements(cls):
    assert cls.capabilities <= set(base.OPTIONAL)
    for verb in base.OPTIONAL + base.PLANNED:
        implemented = getattr(cls, verb) is not getattr(base.Provider, verb)
        assert implemented == (verb in cls.capabilities), verb
    for verb in base.REQUIRED:
        assert getattr(cls, verb) is not getattr(base.Provider, verb), verb


def test_every_verb_is_declared_and_an_unknown_one_is_a_mistake():
    assert set(base.VERBS) <= set(dir(base.Provider))
    assert set(base.Provider.__abstractmethods__) == set(base.REQUIRED)
    with pytest.raises(ValueError, match="not a provider verb"):
        FakeProvider().supports("fly")


def test_a_verb_the_target_does_not_do_is_refused_naming_the_verb_and_the_target():
    with pytest.raises(errors.BadRequest) as info:
        OpenStackProvider(conn=object()).reboot(SERVER)
    assert info.value.message == "reboot is not supported on the openstack target"
    assert "preflight" in info.value.hint and info.value.exit_code == 2
    with pytest.raises(errors.BadRequest) as info:
        LocalProvider().resize(SERVER, "2c4g")
    assert info.value.message == "resize is not supported on the local target"
    assert info.value.hint == "vmbinder does not resize servers on any target yet"
    assert not FakeProvider().supports("preflight") and FakeProvider().supports("delete")


def test_remembering_is_a_context_on_every_provider():
    with FakeProvider().remembering():
        pass
    with OpenStackProvider(conn=object()).remembering() as p:
        assert p._memo == {}


def test_the_target_fills_in_hostname_and_tls_left_out():
    src = Source("https://github.com/o/r", "git")
    local = make_spec(src, name="demo", target=LocalProvider())
    assert (local.hostname, local.tls) == ("localhost", "internal")
    cloud = make_spec(src, name="demo", target=OpenStackProvider(conn=object()))
    assert (cloud.hostname, cloud.tls) == (None, "acme")
    given = make_spec(src, name="demo", hostname="lab.example.org", tls="off", target=LocalProvider())
    assert (given.hostname, given.tls) == ("lab.example.org", "off")


@pytest.mark.parametrize("cls", (LocalProvider, OpenStackProvider))
def test_a_spec_the_target_cannot_record_is_refused_by_make_spec(cls):
    long = Source("https://github.com/o/r", "git", ref="r" * 300)
    with pytest.raises(errors.BadRequest, match="ref is longer than the 255 characters"):
        make_spec(long, name="demo", target=cls() if cls is LocalProvider else cls(conn=object()))
    make_spec(long, name="demo")  # without a target: the provider checks it when it prepares


def test_find_one_says_which_are_there_or_which_ids_to_use():
    a, b, c = (SimpleNamespace(id=f"id-{n}", name=name) for n, name in ((1, "x"), (2, "x"), (3, "y")))
    assert base.find_object([a, c], "y", "image", "--image") is c
    assert base.find_object([a, c], "id-1", "image", "--image") is a
    with pytest.raises(errors.ConfigError) as info:
        base.find_object([a, b, c], "x", "external network", "--external-network", id_of="network")
    assert (info.value.message, info.value.hint) == (
        "more than one external network is named 'x'",
        "pass the network's id to --external-network instead")
    with pytest.raises(errors.ConfigError) as info:
        base.find_object([], "z", "flavor", "--flavor", names=lambda: ["m1", "m2", "m1"])
    assert (info.value.message, info.value.hint) == ("flavor 'z' not found",
                                                     "choose one with --flavor: m1, m2")
    with pytest.raises(errors.BadRequest) as info:
        base.find_owned([SERVER], "nope")
    assert (info.value.message, info.value.hint) == (
        "no vmbinder server named 'nope'", "vmbinder servers here: demo (see vmbinder list)")


def test_find_asks_openstacksdk_for_the_exception_rather_than_none():
    from openstack import exceptions

    asked = []

    def finder(name_or_id, ignore_missing=True, **query):
        asked.append((name_or_id, ignore_missing, query))
        if name_or_id == "there":
            return "found"
        raise exceptions.NotFoundException("No Keypair found for gone")

    assert find_or_none(finder, "there") == "found"
    assert find_or_none(finder, "gone", project_id="p") is None
    assert asked == [("there", False, {}), ("gone", False, {"project_id": "p"})]


def test_ssh_target_is_optional_and_a_target_without_it_refuses_in_words():
    assert "ssh_target" in base.OPTIONAL and "ssh_target" not in base.PLANNED
    assert LocalProvider.capabilities >= {"ssh_target"}
    assert OpenStackProvider.capabilities >= {"ssh_target"}
    with pytest.raises(errors.BadRequest) as info:
        FakeProvider().ssh_target(SERVER)
    assert info.value.message == "ssh_target is not supported on the fake target"
    server = base.Server("id-1", "demo", base.ACTIVE, "ACTIVE", "203.0.113.9",
                         {"vmbinder:ssh-port": "40022", "vmbinder:login-user": "debian"})
    assert LocalProvider().ssh_target(server) == base.SshTarget("127.0.0.1", 40022, "debian")
    assert OpenStackProvider(conn=object()).ssh_target(server) == base.SshTarget("203.0.113.9", 22,
                                                                                  "debian")


def test_a_console_nova_has_not_made_yet_is_empty_and_a_gone_server_is_an_error():
    """Nova answers 404 with its ConsoleNotAvailable words, or 409 with its
    InstanceNotReady ones, for a server whose guest it is starting (both seen after
    `start` on real compute), and 404 otherwise for a server that is gone."""
    from openstack import exceptions

    answers = {"starting": exceptions.NotFoundException(
                   "Guest does not have a console available."),
               "booting": exceptions.ConflictException("Instance id-3 is not ready"),
               "gone": exceptions.NotFoundException("Instance id-2 could not be found.")}

    def console(server_id, length=None):
        raise answers[server_id]

    conn = SimpleNamespace(compute=SimpleNamespace(get_server_console_output=console))
    provider = OpenStackProvider(conn=conn)
    for state in ("starting", "booting"):
        assert provider.console_log(base.Server(state, "demo", base.ACTIVE, "ACTIVE", None, {})) == ""
    with pytest.raises(errors.CloudError, match="could not be found"):
        provider.console_log(base.Server("gone", "demo", base.ACTIVE, "ACTIVE", None, {}))
