"""Costs: what a dry run says launches will hold and their core-hours over the
lifetime; the core-hours a server has held so far, from its action record
(running and stopped hold cores, offloaded shelved ones do not), and what
Jetstream2's rates (stopped 50 %, shelved 0 %) make of them."""

from __future__ import annotations

import datetime
import json

from click.testing import CliRunner

from tests.unit.test_power import Powered
from tests.unit.test_scope import ME, server
from vmbinder import costs, lifetime
from vmbinder.commands.main import cli
from vmbinder.costs import Action, Size

T0 = datetime.datetime(2026, 12, 7, 8, 0, tzinfo=datetime.timezone.utc)


def at(hours: float) -> datetime.datetime:
    return T0 + datetime.timedelta(hours=hours)


def test_a_plan_adds_up_its_servers_and_counts_core_hours_over_the_lifetime():
    plan = costs.planned([Size("m1.medium", 2, 4096, 20)] * 3, 8 * 3600, volume_gb=10)
    assert plan == {"servers": 3, "cores": 6, "memory_mb": 12288, "disk_gb": 60, "volume_gb": 30,
                    "core_hours_per_hour": 6, "lifetime_s": 28800, "core_hours": 48.0}
    assert costs.describe_plan(plan) == [
        ("holds", "3 servers: 6 cores, 12288 MB memory, 60 GB disk, 30 GB of work volumes"),
        ("costs", "48 core-hours over the lifetime (8 h)")]
    one = costs.planned([Size("m1.small", 1, 2048, 20)], None)
    assert costs.describe_plan(one) == [
        ("holds", "1 cores, 2048 MB memory, 20 GB disk"),
        ("costs", "1 core-hours per hour it runs (no lifetime)")]


def test_held_walks_the_actions_and_shelved_time_holds_no_cores():
    actions = [Action("create", at(0)), Action("stop", at(2)), Action("start", at(3)),
               Action("shelve", at(4)), Action("shelveOffload", at(4)),
               Action("attach_interface", at(5)), Action("unshelve", at(10))]
    spent = costs.held(actions, at(0), at(11))
    assert {k: v / 3600 for k, v in spent.items()} == {"running": 4.0, "stopped": 1.0,
                                                       "shelved": 6.0}
    doc = costs.so_far(spent, 2)
    assert (doc["core_hours_held"], doc["core_hours_jetstream2"]) == (10.0, 9.0)
    assert costs.describe_so_far(doc) == (
        "10 core-hours held so far (2 cores; 4 h running, 1 h stopped, 6 h shelved); "
        "at Jetstream2's rates 9")


def test_held_without_actions_counts_from_creation_and_a_new_server_has_held_nothing():
    assert costs.held([], at(0), at(1.5))["running"] == 5400
    assert costs.describe_so_far(costs.so_far(costs.held([], at(0), at(0)), 4)) == (
        "0 core-hours held so far (4 cores; just made); at Jetstream2's rates 0")


class Counted(Powered):
    capabilities = Powered.capabilities | {"history", "sizes"}

    def history(self, server):
        return [Action("create", at(0)), Action("stop", at(1))]

    def sizes(self, specs):
        return [Size("m1.large", 4, 8192, 40) for _ in specs]


def run(cloud, monkeypatch, tmp_path, *args):
    from vmbinder.commands import main as cli_module

    monkeypatch.setattr(cli_module.Context, "provider", property(lambda self: cloud))
    monkeypatch.setattr(lifetime, "now", lambda: at(3))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    return CliRunner().invoke(cli, ["--cloud", "x", *args], catch_exceptions=False)


def test_status_says_the_core_hours_held_so_far(monkeypatch, tmp_path):
    from dataclasses import replace

    cloud = Counted(replace(server("a", ME), cores=4, created=T0.isoformat()))
    res = run(cloud, monkeypatch, tmp_path, "status", "a")
    rows = dict(line.split(None, 1) for line in res.stdout.splitlines() if line.strip())
    assert rows["used"] == ("12 core-hours held so far (4 cores; 1 h running, 2 h stopped); "
                            "at Jetstream2's rates 8")
    doc = json.loads(run(cloud, monkeypatch, tmp_path, "status", "a", "--format", "json").stdout)
    assert doc["usage"]["seconds"] == {"running": 3600, "stopped": 7200, "shelved": 0}


def test_a_dry_run_says_what_the_launch_holds_and_costs(monkeypatch, tmp_path):
    res = run(Counted(), monkeypatch, tmp_path, "launch", "--dry-run", "--key-name", "k",
              "--lifetime", "90m", "--volume", "5", "https://github.com/org/repo")
    rows = dict(line.split(None, 1) for line in res.stdout.splitlines() if len(line.split()) > 1)
    assert rows["holds"] == "4 cores, 8192 MB memory, 40 GB disk, 5 GB of work volumes"
    assert rows["costs"] == "6 core-hours over the lifetime (1 h 30 min)"
    res = run(Powered(), monkeypatch, tmp_path, "launch", "--dry-run", "--format", "json",
              "--key-name", "k", "https://github.com/org/repo")
    assert json.loads(res.stdout)["holds"] is None


def test_a_workshop_dry_run_says_what_its_seats_hold_and_cost(monkeypatch, tmp_path):
    path = tmp_path / "ws.yaml"
    path.write_text("name: ws\nsource: https://github.com/org/repo\nseats: 3\nlifetime: 8h\n"
                    "volume: 10\nkey_name: k\n")
    cloud = Counted()
    res = run(cloud, monkeypatch, tmp_path, "workshop", "up", str(path), "--dry-run")
    assert res.exit_code == 0, res.output
    rows = dict(line.split(": ", 1) for line in res.stdout.splitlines() if ": " in line)
    assert rows["holds"] == "3 servers: 12 cores, 24576 MB memory, 120 GB disk, 30 GB of work volumes"
    assert rows["costs"] == "96 core-hours over the lifetime (8 h)"
    doc = json.loads(run(cloud, monkeypatch, tmp_path, "workshop", "up", str(path), "--dry-run",
                         "--format", "json").stdout)
    assert [s["seat"] for s in doc["seats"]] == ["ws-01", "ws-02", "ws-03"]
    assert (doc["holds"]["servers"], doc["holds"]["core_hours"]) == (3, 96.0)
    assert cloud.calls == [] and cloud.servers == {}  # nothing prepared, nothing made
