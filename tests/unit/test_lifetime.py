"""Lifetimes: --lifetime and --at-end checked and recorded, the countdown status
shows, and reap acting on the servers past theirs (their own action, or the
one given; one failing leaves the others done; a second reap waits for nothing)."""

from __future__ import annotations

import datetime
import json

import pytest
from click.testing import CliRunner

from tests.unit.test_power import Powered
from tests.unit.test_scope import ME, THEM, server
from vmbinder import errors, lifetime, reap
from vmbinder.commands.main import cli
from vmbinder.providers.base import ACTIVE, SHELVED, STOPPED
from vmbinder.sources import resolve_source
from vmbinder.spec import TargetDefaults, make_spec

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)
PAST, FUTURE = "2026-12-07T11:48Z", "2026-12-07T19:58Z"


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("8h", 28800), ("3d", 259200),
                                           ("45 min", 2700), ("2H", 7200)])
def test_durations_people_write(text, seconds):
    assert lifetime.duration(text, "--lifetime") == seconds


@pytest.mark.parametrize("text", ["0h", "8", "1w", "-2h", "h", "1.5h", "99999999h"])
def test_a_duration_that_is_not_one_is_refused_naming_the_option(text):
    with pytest.raises(errors.BadRequest) as info:
        lifetime.duration(text, "--lifetime")
    assert info.value.message == f"invalid --lifetime {text!r}: not a duration"
    assert info.value.hint == "write minutes, hours or days: 90m, 8h, 3d"


def test_the_countdown_before_and_after_the_end():
    assert lifetime.countdown(FUTURE, "shelve", NOW) == \
        f"ends {FUTURE} (in 7 h 58 min), then it is shelved"
    assert lifetime.countdown(PAST, None, NOW) == f"ended {PAST} (12 min ago)"
    assert lifetime.countdown("2026-12-09T13:00Z", "delete", NOW).endswith(
        "(in 2 d 1 h), then it is deleted")
    assert lifetime.countdown(None, "stop", NOW) is None
    assert lifetime.countdown("soon", "stop", NOW) is None
    assert lifetime.expired(PAST, NOW) and not lifetime.expired(FUTURE, NOW)
    assert not lifetime.expired(None, NOW) and not lifetime.expired("garbage", NOW)


class Target:
    def __init__(self, defaults):
        self.target_defaults = defaults
        from vmbinder.spec import MetadataLimits

        self.metadata_limits = MetadataLimits(255)


def test_a_lifetime_is_recorded_with_its_end_and_the_target_default_action():
    src = resolve_source("https://github.com/org/repo")
    spec = make_spec(src, name="x", lifetime_s=3600, target=Target(TargetDefaults()))
    end = lifetime.parse_time(spec.expires)
    assert abs((end - lifetime.now()).total_seconds() - 3600) < 120
    assert spec.at_end == "shelve"
    local = Target(TargetDefaults(at_end="stop", at_end_actions=("stop",)))
    assert make_spec(src, name="x", lifetime_s=60, target=local).at_end == "stop"
    assert make_spec(src, name="x", target=local).expires is None


def test_at_end_without_a_lifetime_or_one_the_target_cannot_do_is_refused():
    src = resolve_source("https://github.com/org/repo")
    with pytest.raises(errors.BadRequest) as info:
        make_spec(src, name="x", at_end="delete")
    assert info.value.message == "--at-end is given but no --lifetime"
    local = Target(TargetDefaults(at_end="stop", at_end_actions=("stop",)))
    with pytest.raises(errors.BadRequest) as info:
        make_spec(src, name="x", lifetime_s=60, at_end="shelve", target=local)
    assert (info.value.message, info.value.hint) == (
        "invalid --at-end 'shelve' on this target", "use stop here")


def project():
    return Powered(
        server("old", ME, expires=PAST, **{"at-end": "stop"}),
        server("gone", ME, state=SHELVED, expires=PAST, **{"at-end": "shelve"}),
        server("young", ME, expires=FUTURE),
        server("forever", ME),
        server("theirs", THEM, expires=PAST),
        server("plain", ME, expires=PAST),
    )


def test_reap_acts_on_the_expired_as_each_says_and_leaves_the_rest():
    cloud = project()
    done = reap.reap(cloud, at=NOW)
    # "gone" is shelved already, as its lifetime wants: left alone and not listed.
    assert [(r.server.name, r.action, r.result) for r in done] == [
        ("old", "stop", "done"), ("plain", "shelve", "done")]
    assert cloud.get("old").state == STOPPED and cloud.get("plain").state == SHELVED
    assert cloud.get("young").state == ACTIVE and cloud.get("theirs").state == ACTIVE
    assert done[0].why == f"ended {PAST} (12 min ago)"
    # Once acted on, a lifetime's end is recorded: a server brought back runs on.
    assert [cloud.get(n).meta("ended") for n in ("old", "gone", "plain")] == [
        "stop", None, "shelve"]
    assert reap.reap(cloud, at=NOW) == []
    everyone = reap.reap(cloud, at=NOW, everyone=True, action="delete")
    # Asked to delete: the shelved one goes too (its lifetime's end had not acted).
    assert [(r.server.name, r.result) for r in everyone] == [("gone", "done"), ("theirs", "done")]
    assert sorted(s.name for s in cloud.list_owned()) == ["forever", "old", "plain", "young"]


def guest(last, checked, ready=True, since=0.0):
    return {"ready": ready, "care_seen": {"last": last, "checked": checked,
                                          "watching_since": since, "busy": 0}}


def test_reap_idle_asks_each_guest_and_acts_on_those_idle_past_their_time():
    cloud = Powered(server("quiet", ME, idle="3600", **{"idle-action": "stop"}),
                    server("busy", ME, idle="3600"), server("unwatched", ME),
                    server("asleep", ME, state=STOPPED, idle="60"))
    reports = {"quiet": guest(1000.0, 1000.0 + 7200), "busy": guest(5000.0, 5100.0),
               "unwatched": guest(0.0, 99999.0)}
    observe = lambda provider, s: (s, reports.get(s.name))  # noqa: E731
    done = reap.reap(cloud, at=NOW, expired_ones=False, idle_ones=True, observe=observe)
    assert [(r.server.name, r.action, r.result, r.why) for r in done] == [
        ("quiet", "stop", "done", "idle for 2 h (limit 1 h)")]
    assert cloud.get("busy").state == ACTIVE and cloud.get("quiet").state == STOPPED
    more = reap.reap(cloud, at=NOW, expired_ones=False, idle_ones=True, idle_for=600,
                     observe=observe, dry_run=True)
    assert [(r.server.name, r.action, r.result) for r in more] == [("unwatched", "shelve", "would")]
    assert reap.idle_seconds(guest(10.0, 100.0, ready=False)) is None
    assert reap.idle_seconds({"ready": True}) is None
    assert reap.idle_seconds(guest(10.0, 100.0, since=40.0)) == 60.0


def test_a_dry_run_changes_nothing():
    cloud = project()
    done = reap.reap(cloud, at=NOW, dry_run=True)
    assert [(r.server.name, r.result) for r in done] == [("old", "would"), ("plain", "would")]
    assert cloud.calls == [] and cloud.get("old").state == ACTIVE


class OneFails(Powered):
    def shelve(self, server):
        if server.name == "plain":
            raise errors.CloudError("shelving plain failed: HTTP 409: conflict")
        return super().shelve(server)


@pytest.fixture
def run_cli(monkeypatch, tmp_path):
    from vmbinder.commands import main as cli_module

    def run(cloud, *args):
        monkeypatch.setattr(cli_module.Context, "provider", property(lambda self: cloud))
        return CliRunner().invoke(cli, ["--cloud", "x", *args], catch_exceptions=False)

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(lifetime, "now", lambda: NOW)
    return run


def test_reap_command_one_failure_exits_10_after_the_others_are_done(run_cli):
    cloud = OneFails(*project().servers.values())
    res = run_cli(cloud, "reap", "--all", "--format", "json")
    assert res.exit_code == 10, res.output
    docs = {d["name"]: d for d in json.loads(res.stdout)}
    assert (docs["plain"]["result"], docs["plain"]["detail"]) == (
        "failed", "shelving plain failed: HTTP 409: conflict")
    assert cloud.get("plain").meta("ended") == ""  # taken back: the next reap tries again
    assert docs["theirs"]["result"] == "done" and cloud.get("theirs").state == SHELVED
    assert "1 of 3 servers could not be acted on: plain" in " ".join(res.stderr.split())


def test_reap_command_says_what_it_did_and_keeps_work_volumes(run_cli):
    cloud = Powered(server("old", ME, expires=PAST, volume="old-work"))
    res = run_cli(cloud, "reap", "--action", "delete")
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert f"deleted old: ended {PAST}" in said and "its work volume old-work is kept" in said
    res = run_cli(cloud, "reap")
    assert res.exit_code == 0 and "nothing to do: no server's lifetime has ended" in res.stderr


def test_a_second_reap_of_the_same_cloud_exits_75_at_once(run_cli):
    with reap.lock("x"):
        res = run_cli(project(), "reap")
    assert res.exit_code == 75, res.output
    assert "another vmbinder reap of x is running" in " ".join(res.stderr.split())
    assert run_cli(project(), "reap").exit_code == 0


def test_status_counts_down_to_the_end(run_cli):
    cloud = Powered(server("young", ME, expires=FUTURE, **{"at-end": "delete"}))
    res = run_cli(cloud, "status", "young")
    rows = dict(line.split(None, 1) for line in res.stdout.splitlines() if line.strip())
    assert rows["lifetime"] == f"ends {FUTURE} (in 7 h 58 min), then it is deleted"
    doc = json.loads(run_cli(cloud, "status", "young", "--format", "json").stdout)
    assert (doc["expires"], doc["at_end"]) == (FUTURE, "delete")


def test_status_says_what_the_guests_care_saw():
    from vmbinder.commands.output import care_rows

    watched = server("w", ME, idle="7200")
    assert care_rows(watched, guest(1000.0, 1000.0 + 1800)) == [
        ("activity", "idle for 30 min; put away after 2 h idle")]
    busy = {**guest(5000.0, 5010.0), "care_error": "RuntimeError: Nova refused (HTTP 401)"}
    busy["care_seen"]["busy"] = 2
    assert care_rows(watched, busy) == [
        ("activity", "in use now (2 cells running); put away after 2 h idle"),
        ("care error", "RuntimeError: Nova refused (HTTP 401)")]
    assert care_rows(server("plain", ME), guest(1000.0, 9000.0)) == []
