"""Stop, start, shelve and unshelve: every name checked before anything changes,
another user's server only with --force, a server already there left alone,
the environment waited for after start; Nova's calls and waits on OpenStack
(offload when the cloud keeps shelved servers, the wrong verb for a state
refused with the right one); the commands' output."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from tests.unit.test_scope import ME, THEM, Project, server
from vmbinder import errors, lifecycle, power
from vmbinder.commands.main import cli
from vmbinder.providers.base import ACTIVE, SHELVED, STOPPED, Server
from vmbinder.providers.openstack import power as nova_power
from vmbinder.providers.openstack.common import state_of


class Powered(Project):
    capabilities = frozenset({"stop", "start", "shelve", "unshelve"})

    def _to(self, server, state):
        self.calls.append(f"{state} {server.name}")
        done = replace(server, state=state, cloud_status=state.upper())
        self.servers[server.id] = done
        return done

    def stop(self, server):
        return self._to(server, STOPPED)

    def start(self, server):
        return self._to(server, ACTIVE)

    def shelve(self, server):
        return self._to(server, SHELVED)

    def unshelve(self, server):
        return self._to(server, ACTIVE)


@pytest.fixture
def waited(monkeypatch):
    """lifecycle.wait_ready, recorded: the environment of each server answers."""
    seen = []

    def wait_ready(provider, server, reporter, *, timeout, extra_roots=None, **kw):
        seen.append((server.name, server.state, timeout, extra_roots))
        return server

    monkeypatch.setattr(lifecycle, "wait_ready", wait_ready)
    return seen


def test_stop_then_start_waits_for_the_environment_and_says_what_changed(waited):
    cloud = Powered(server("a", ME), server("b", ME, state=STOPPED))
    out = power.act(cloud, "stop", ["a", "b"])
    assert [(o.server.name, o.server.state, o.action) for o in out] == [
        ("a", STOPPED, "stopped"), ("b", STOPPED, "already stopped")]
    assert waited == []  # stopping waits for nothing more
    out = power.act(cloud, "start", ["a"], timeout=90, extra_roots="PEM")
    assert [(o.action, o.ready) for o in out] == [("started", True)]
    assert waited == [("a", ACTIVE, 90, "PEM")]
    out = power.act(cloud, "start", ["b"], wait=False)
    assert out[0].ready is None and waited == [("a", ACTIVE, 90, "PEM")]


def test_an_unknown_name_or_another_users_server_changes_nothing(waited):
    cloud = Powered(server("mine", ME), server("theirs", THEM))
    with pytest.raises(errors.BadRequest):
        power.act(cloud, "shelve", ["mine", "nosuch"])
    with pytest.raises(errors.BadRequest) as info:
        power.act(cloud, "shelve", ["mine", "theirs"])
    assert info.value.message == ("not shelving servers another user of the project launched: "
                                  f"theirs (owner {THEM})")
    assert info.value.hint == ("nothing was shelved; to shelve them anyway: "
                               "vmbinder shelve --force mine theirs")
    assert not [c for c in cloud.calls if c.startswith("shelved")]
    out = power.act(cloud, "shelve", ["mine", "theirs"], force=True)
    assert [o.server.state for o in out] == [SHELVED, SHELVED]


def test_a_target_without_the_verb_refuses_it_before_looking_anything_up():
    cloud = Project(server("a", ME))
    with pytest.raises(errors.BadRequest) as info:
        power.act(cloud, "shelve", ["a"])
    assert info.value.message == "shelve is not supported on the fake target"
    assert cloud.calls == []


def test_shelved_is_a_state_of_its_own_on_openstack():
    assert state_of("SHELVED_OFFLOADED") == state_of("SHELVED") == SHELVED
    assert state_of("SHUTOFF") == STOPPED


# -- Nova ------------------------------------------------------------------------------

class Nova:
    """A scripted Nova: each action moves the server's status, recorded in calls."""

    def __init__(self, status: str, *, offload_time_zero: bool = True):
        self.status, self.offload, self.calls = status, offload_time_zero, []
        self.compute = SimpleNamespace(
            get_server=self.get, wait_for_server=self.wait,
            stop_server=lambda sid: self.to("stop", "SHUTOFF"),
            start_server=lambda sid: self.to("start", "ACTIVE"),
            shelve_server=lambda sid: self.to("shelve", "SHELVED_OFFLOADED" if self.offload else "SHELVED"),
            shelve_offload_server=lambda sid: self.to("offload", "SHELVED_OFFLOADED"),
            unshelve_server=lambda sid: self.to("unshelve", "ACTIVE"))

    def to(self, call, status):
        """Nova takes its time: the next read still shows the old status."""
        self.calls.append(call)
        self.pending, self.reads = status, 0

    def get(self, server_id):
        if getattr(self, "pending", None) and self.reads > 0:
            self.status, self.pending = self.pending, None
        self.reads = getattr(self, "reads", 0) + 1
        return SimpleNamespace(id=server_id, status=self.status, task_state=None)

    def wait(self, raw, status, **kw):
        self.calls.append(f"wait {status}")
        self.status, self.pending = self.pending or self.status, None
        assert self.status == status
        return SimpleNamespace(id=raw.id, status=self.status, task_state=None)


SRV = Server("srv-1", "demo", ACTIVE, "ACTIVE", "203.0.113.20", {})


@pytest.mark.parametrize("start, verb, calls, end", [
    ("ACTIVE", "stop", ["stop", "wait SHUTOFF"], "SHUTOFF"),
    ("SHUTOFF", "stop", [], "SHUTOFF"),
    ("SHUTOFF", "start", ["start", "wait ACTIVE"], "ACTIVE"),
    ("ACTIVE", "shelve", ["shelve"], "SHELVED_OFFLOADED"),
    ("SHUTOFF", "shelve", ["shelve"], "SHELVED_OFFLOADED"),
    ("SHELVED_OFFLOADED", "shelve", [], "SHELVED_OFFLOADED"),
    ("SHELVED_OFFLOADED", "unshelve", ["unshelve", "wait ACTIVE"], "ACTIVE"),
    ("SHELVED", "unshelve", ["unshelve", "wait ACTIVE"], "ACTIVE"),
])
def test_nova_is_asked_once_and_waited_for(start, verb, calls, end, monkeypatch):
    monkeypatch.setattr(nova_power.time, "sleep", lambda s: None)
    nova = Nova(start)
    raw = getattr(nova_power, verb)(nova, SRV, timeout=5)
    assert nova.calls == calls and raw.status == end


def test_a_cloud_that_keeps_shelved_servers_on_their_host_is_told_to_offload(monkeypatch):
    monkeypatch.setattr(nova_power.time, "sleep", lambda s: None)
    nova = Nova("ACTIVE", offload_time_zero=False)
    assert nova_power.shelve(nova, SRV, timeout=5).status == "SHELVED_OFFLOADED"
    assert nova.calls == ["shelve", "offload", "wait SHELVED_OFFLOADED"]


@pytest.mark.parametrize("status, verb, right", [
    ("SHELVED_OFFLOADED", "start", "vmbinder unshelve demo"),
    ("SHELVED_OFFLOADED", "stop", "vmbinder unshelve demo"),
    ("SHUTOFF", "unshelve", "vmbinder start demo"),
])
def test_the_wrong_verb_for_the_state_names_the_right_one(status, verb, right):
    nova = Nova(status)
    with pytest.raises(errors.BadRequest) as info:
        getattr(nova_power, verb)(nova, SRV, timeout=5)
    assert info.value.message == f"cannot {verb} demo: it is {status}"
    assert info.value.hint.endswith(right) and nova.calls == []


# -- the commands ----------------------------------------------------------------------

@pytest.fixture
def run_cli(monkeypatch, waited, tmp_path):
    from vmbinder.commands import main as cli_module

    cloud = Powered(server("mine", ME), server("theirs", THEM))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(cli_module.Context, "provider", property(lambda self: cloud))

    def run(*args):
        return CliRunner().invoke(cli, ["--cloud", "x", *args], catch_exceptions=False)

    run.cloud = cloud
    return run


def test_stop_says_what_the_server_still_holds_and_start_prints_its_urls(run_cli):
    res = run_cli("stop", "mine")
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert "stopped mine in 0 s: it holds its disk, address and work; on a cloud also its cores " \
           "(vmbinder start mine)" in said
    res = run_cli("status", "mine")
    rows = dict(line.split(None, 1) for line in res.stdout.splitlines() if line.strip())
    assert (rows["status"], rows["holds"]) == (
        "stopped", "its disk, address and work; on a cloud also its cores (vmbinder start mine)")
    res = run_cli("start", "mine")
    assert res.exit_code == 0, res.output
    assert "started mine" in res.stderr
    assert "lab url      http://203.0.113.7/lab?token=t0k" in res.stdout, res.stdout


def test_shelve_json_for_scripts_and_refusals_exit_2(run_cli):
    res = run_cli("shelve", "--format", "json", "mine")
    docs = json.loads(res.stdout)
    assert [(d["name"], d["action"], d["status"], d["urls"]) for d in docs] == [
        ("mine", "shelved", SHELVED, None)]
    res = run_cli("unshelve", "--format", "json", "--no-wait", "mine")
    doc = json.loads(res.stdout)[0]
    assert (doc["action"], doc["ready"]) == ("unshelved", None)
    assert doc["urls"]["lab"] == "http://203.0.113.7/lab?token=t0k"
    res = run_cli("stop", "theirs")
    assert res.exit_code == 2 and "not stopping servers another user" in res.stderr


class StoppedMeanwhile(Powered):
    """A server that stops running as it starts (shelved by its idle care, or by
    hand), after which Nova has no console for it; or that is deleted."""

    def __init__(self, *servers, then=SHELVED):
        super().__init__(*servers)
        self.then = then

    def start(self, server):
        started = super().start(server)
        if self.then is None:
            del self.servers[server.id]
        else:
            self.servers[server.id] = replace(started, state=self.then, cloud_status="SHELVED_OFFLOADED")
        return started

    def console_log(self, server, lines=None):
        raise errors.CloudError(f"reading the console of {server.name} failed: HTTP 404: "
                                f"Instance {server.id} could not be found.")


def test_a_server_that_stops_running_during_starts_wait_is_said_to_have():
    cloud = StoppedMeanwhile(server("a", ME, state=STOPPED))
    with pytest.raises(errors.CloudError) as info:
        power.act(cloud, "start", ["a"], timeout=60)
    assert info.value.message == ("a is shelved now (SHELVED_OFFLOADED): it stopped running while "
                                  "vmbinder waited for its environment")
    assert info.value.hint == "why, and how to bring it back: vmbinder status a"
    gone = StoppedMeanwhile(server("b", ME, state=STOPPED), then=None)
    with pytest.raises(errors.CloudError, match="b was deleted while vmbinder waited"):
        power.act(gone, "start", ["b"], timeout=60)
    # Running, the cloud's own error stands.
    up = StoppedMeanwhile(server("c", ME, state=STOPPED), then=ACTIVE)
    with pytest.raises(errors.CloudError, match="HTTP 404: Instance id-c could not be found"):
        power.act(up, "start", ["c"], timeout=60)
