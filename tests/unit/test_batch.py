"""Workshop seats (vmbinder.workshops.up and .seats) against an in-memory provider: which seats are
made, in which order, what a re-run does, failures, snapshots, roster, down."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import pytest

from tests.unit.fakes import FakeProvider
from vmbinder import errors, lifetime
from vmbinder.providers.base import ERROR, META, Removed, Snapshot
from vmbinder.spec import MetadataLimits, TargetDefaults, recorded
from vmbinder.workshops import seats
from vmbinder.workshops.file import parse
from vmbinder.workshops.up import build_key, run, up

FILE = """
name: course
source: https://github.com/org/course
ref: v1
seats: {seats}
flavor: m1.small
"""


def workshop(seats=4, extra=""):
    return parse(FILE.format(seats=seats) + extra, "ws.yaml")


class BatchFake(FakeProvider):
    """FakeProvider plus labels, thread safety, per-seat failures and snapshots."""

    capabilities = frozenset({"preflight", "snapshot", "snapshots", "delete_snapshot"})

    def __init__(self, *, fail_seats=(), **kw):
        super().__init__(**kw)
        self.lock = threading.Lock()
        self.fail_seats = set(fail_seats)
        self.snaps: dict[str, Snapshot] = {}
        self.specs = {}
        self.events = []  # (event, name) in order
        self.active = 0
        self.most_at_once = 0
        self.preflights = []

    def _make(self, ledger, kind, name):
        with self.lock:
            return super()._make(ledger, kind, name)

    def _step(self, name):
        with self.lock:
            super()._step(name)

    def create(self, spec, resolved, user_data, ledger):
        with self.lock:
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
            self.events.append(("create", spec.name))
        try:
            time.sleep(0.01)
            if spec.name in self.fail_seats:
                raise errors.CloudError(f"creating server {spec.name} failed: HTTP 500")
            server = super().create(spec, resolved, user_data, ledger)
            labels = {META + k: v for k, v in recorded(spec, MetadataLimits(255)).items()}
            server = replace(server, metadata={**server.metadata, **labels})
            self.servers[server.id] = server
            self.specs[spec.name] = spec
            return server
        finally:
            with self.lock:
                self.active -= 1

    def wait(self, server, resolved, timeout, ledger):
        done = super().wait(server, resolved, timeout, ledger)
        self.events.append(("active", server.name))
        return done

    def preflight(self, specs):
        self.preflights.append([s.name for s in specs])
        if len(specs) > 50:
            raise errors.QuotaExceeded(f"instances: needs {len(specs)}, 50 left of 50")
        return []

    def snapshot(self, server, name, properties, ledger):
        self.events.append(("snapshot", server.name))
        snap = Snapshot(id=f"snap-{len(self.snaps) + 1}", name=name, properties=dict(properties))
        self.snaps[snap.id] = snap
        return snap

    def snapshots(self, properties):
        return [s for s in reversed(self.snaps.values())
                if all(s.properties.get(k) == v for k, v in properties.items())]

    def delete_snapshot(self, snap):
        return [Removed("snapshot", snap.id, snap.name)] if self.snaps.pop(snap.id, None) else []

    def delete(self, server):
        self.events.append(("delete", server.name))
        return super().delete(server)


def names(provider):
    return sorted(s.name for s in provider.servers.values())


def test_up_makes_every_seat_first_one_alone_with_its_labels_and_own_token():
    p = BatchFake()
    result = up(p, workshop(5), wait=False, fan_out=False, parallel=2)
    assert names(p) == [f"course-0{i}" for i in range(1, 6)]
    assert [r.action for r in result.seats] == ["created"] * 5
    # The first seat is ACTIVE before any other seat is created.
    assert p.events[:2] == [("create", "course-01"), ("active", "course-01")]
    assert p.most_at_once <= 2
    tokens = {s.meta("token") for s in p.servers.values()}
    assert len(tokens) == 5
    for server in p.servers.values():
        assert server.meta("workshop") == "course"
        assert server.meta("seat") == str(int(server.name[-2:]))
    assert p.preflights == [[f"course-0{i}" for i in range(1, 6)]]


def test_a_second_up_makes_nothing_and_a_missing_or_failed_seat_is_made_again():
    p = BatchFake()
    up(p, workshop(4), wait=False, fan_out=False)
    again = up(p, workshop(4), wait=False, fan_out=False)
    assert [r.action for r in again.seats] == ["kept"] * 4
    assert len(p.servers) == 4 and len(p.preflights) == 1
    # One seat deleted by hand, one gone to ERROR.
    by_name = {s.name: s for s in p.servers.values()}
    p.delete(by_name["course-02"])
    p.servers[by_name["course-03"].id] = replace(by_name["course-03"], state=ERROR)
    repaired = up(p, workshop(4), wait=False, fan_out=False)
    assert {r.seat.name: r.action for r in repaired.seats} == {
        "course-01": "kept", "course-02": "created", "course-03": "recreated", "course-04": "kept"}
    assert names(p) == ["course-01", "course-02", "course-03", "course-04"]
    assert ("delete", "course-03") in p.events
    assert p.preflights[-1] == ["course-02", "course-03"]


def test_the_first_seat_failing_stops_the_batch_with_nothing_else_made():
    p = BatchFake(fail_seats={"course-01"})
    with pytest.raises(errors.CloudError) as info:
        up(p, workshop(6), wait=False, fan_out=False)
    assert "course-01" in info.value.message
    assert p.servers == {}
    assert [e for e in p.events if e[0] == "create"] == [("create", "course-01")]
    assert p.resources == {}, "the failed seat's floating IP, key and group were not removed"


def test_a_later_seat_failing_leaves_the_others_and_says_the_batch_partly_failed():
    p = BatchFake(fail_seats={"course-03"})
    with pytest.raises(errors.BatchPartlyFailed) as info:
        up(p, workshop(4), wait=False, fan_out=False)
    assert info.value.exit_code == 10
    assert "1 of 4 seats failed" in info.value.message and "course-03" in info.value.message
    result = info.value.details["result"]
    assert {r.seat.name: r.action for r in result.seats}["course-03"] == "failed"
    assert names(p) == ["course-01", "course-02", "course-04"]
    assert not [r for r in p.resources.values() if r["name"] == "course-03"]
    # Running up again makes only the failed seat.
    p.fail_seats.clear()
    again = up(p, workshop(4), wait=False, fan_out=False)
    assert [r.seat.name for r in again.seats if r.action == "created"] == ["course-03"]


def test_run_returns_a_partly_failed_result_and_up_raises_its_failure():
    p = BatchFake(fail_seats={"course-02"})
    result = run(p, workshop(3), wait=False, fan_out=False)
    assert result.partly_failed and result.attempted == 3
    assert [r.seat.name for r in result.made] == ["course-01", "course-03"]
    assert [r.seat.name for r in result.failed] == ["course-02"]
    failure = result.failure()
    assert failure.exit_code == 10 and failure.message.startswith("1 of 3 seats failed")
    assert "course-02: creating server course-02 failed" in failure.message
    p.fail_seats.clear()
    again = run(p, workshop(3), wait=False, fan_out=False)
    assert not again.partly_failed and again.failure() is None and again.attempted == 1
    assert [r.seat.name for r in again.kept] == ["course-01", "course-03"]


def test_the_quota_check_refuses_before_anything_is_made():
    p = BatchFake()
    with pytest.raises(errors.QuotaExceeded):
        up(p, workshop(60), wait=False, fan_out=False)
    assert p.servers == {} and p.resources == {} and "create" not in p.calls


def test_fan_out_builds_once_snapshots_and_starts_the_rest_from_the_snapshot():
    p = BatchFake()
    checked = []
    result = up(p, workshop(4), wait=False, built=checked.append)
    assert [s.name for s in checked] == ["course-01"]
    assert result.snapshot_action == "made"
    (snap,) = p.snaps.values()
    assert snap.properties == {"vmbinder_workshop": "course",
                               "vmbinder_build": build_key(workshop(4), None)}
    assert p.events.index(("snapshot", "course-01")) < p.events.index(("create", "course-02"))
    assert p.specs["course-01"].cloud.image is None
    for seat in ("course-02", "course-03", "course-04"):
        assert p.specs[seat].cloud.image == snap.id
        assert dict(p.specs[seat].labels)["snapshot"] == snap.id
    # A later up with a seat missing reuses the snapshot: no second one.
    p.delete(next(s for s in p.servers.values() if s.name == "course-04"))
    again = up(p, workshop(4), wait=False, built=checked.append)
    assert again.snapshot_action == "reused" and len(p.snaps) == 1
    assert p.specs["course-04"].cloud.image == snap.id


def test_a_changed_ref_needs_a_new_snapshot():
    old, new = workshop(2), parse(FILE.format(seats=2).replace("ref: v1", "ref: v2"), "ws.yaml")
    assert build_key(old, None) != build_key(new, None)
    assert build_key(old, None) != build_key(old, "other-image")
    p = BatchFake()
    up(p, old, wait=False, built=lambda s: None)
    seats.down(p, old)
    up(p, new, wait=False, built=lambda s: None)
    assert len(p.snaps) == 2


def test_without_waiting_and_no_build_hook_every_seat_builds_its_own():
    p = BatchFake()
    result = up(p, workshop(3), wait=False)
    assert result.snapshot is None and p.snaps == {}
    assert all(p.specs[n].cloud.image is None for n in p.specs)


def test_a_server_with_a_seat_name_from_elsewhere_is_refused():
    p = BatchFake()
    from vmbinder import lifecycle
    from vmbinder.sources import resolve_source
    from vmbinder.spec import make_spec

    lifecycle.launch(p, make_spec(resolve_source("https://github.com/org/other"), name="course-02"),
                     wait=False)
    with pytest.raises(errors.BadRequest) as info:
        up(p, workshop(3), wait=False)
    assert "course-02" in info.value.message and "not a seat of workshop course" in info.value.message
    assert names(p) == ["course-02"]


def test_down_removes_every_seat_then_nothing_and_snapshots_only_when_asked():
    p = BatchFake()
    up(p, workshop(3), wait=False, built=lambda s: None)
    removed = seats.down(p, workshop(3))
    assert sorted(r.name for r in removed if r.kind == "server") == ["course-01", "course-02", "course-03"]
    assert p.servers == {} and len(p.snaps) == 1
    assert seats.down(p, workshop(3)) == []
    gone = seats.down(p, workshop(3), snapshots=True)
    assert [r.kind for r in gone] == ["snapshot"] and p.snaps == {}


def test_roster_lists_only_seats_whose_url_answers_with_participants():
    text = FILE.format(seats=1).replace("seats: 1\n", "participants: [Ada, Grace, Alan]\n")
    ws = parse(text + "open: index.ipynb\n", "ws.yaml")
    p = BatchFake()
    up(p, ws, wait=False, fan_out=False)
    asked = []

    def answers(server, url):
        asked.append(url)
        return server.name != "course-02"

    entries, left_out = seats.roster_entries(p, ws, answers=answers)
    assert [(e.seat, e.participant) for e in entries] == [("course-01", "Ada"), ("course-03", "Alan")]
    assert [s.seat.name for s in left_out] == ["course-02"]
    tokens = {s.name: s.meta("token") for s in p.servers.values()}
    for e in entries:
        assert e.url.endswith(f"lab/tree/index.ipynb?token={tokens[e.seat]}")
    assert len(asked) == 3 and all("token=" in u for u in asked)
    unchecked, _ = seats.roster_entries(p, ws, check=False, answers=answers)
    assert len(unchecked) == 3 and len(asked) == 3


def test_lifetime_is_recorded_as_an_expiry_time():
    p = BatchFake()
    up(p, workshop(1, "lifetime: 8h\n"), wait=False)
    (server,) = p.servers.values()
    left = lifetime.parse_time(server.meta("expires")) - lifetime.now()
    assert 8 * 3600 - 120 < left.total_seconds() <= 8 * 3600, server.meta("expires")
    assert server.meta("at-end") == "shelve"


def test_the_at_end_of_a_workshop_is_recorded_or_the_targets_own_where_it_cannot():
    p = BatchFake()
    up(p, workshop(1, "lifetime: 90m\nat_end: delete\n"), wait=False)
    assert [s.meta("at-end") for s in p.servers.values()] == ["delete"]
    p = BatchFake()
    p.target_defaults = TargetDefaults(at_end="stop", at_end_actions=("stop",))
    up(p, workshop(1, "lifetime: 90m\nat_end: shelve\n"), wait=False)
    assert [s.meta("at-end") for s in p.servers.values()] == ["stop"]


def test_an_interrupt_during_the_first_seat_leaves_nothing():
    p = BatchFake(interrupt_at="wait")
    with pytest.raises(errors.Interrupted):
        up(p, workshop(3), wait=False)
    assert p.servers == {} and p.resources == {}


# -- the commands -------------------------------------------------------------------------

@pytest.fixture
def cli_with(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from vmbinder.commands import main as cli_module

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "ws.yaml"
    path.write_text(FILE.format(seats=3))

    def run(provider, *args):
        monkeypatch.setattr(cli_module.Context, "provider", property(lambda self: provider))
        return CliRunner().invoke(cli_module.cli, ["--cloud", "x", "workshop", *args, str(path)],
                                  catch_exceptions=False)

    return run


def test_up_command_prints_each_seat_and_exits_10_when_some_failed(cli_with):
    p = BatchFake(fail_seats={"course-02"})
    res = cli_with(p, "up", "--no-wait", "--format", "json")
    assert res.exit_code == 10, res.output
    doc = json.loads(res.stdout)
    assert [(s["seat"], s["result"]) for s in doc["seats"]] == [
        ("course-01", "created"), ("course-02", "failed"), ("course-03", "created")]
    assert "course-02" in res.stderr and "1 of 3 seats failed" in res.stderr
    res = cli_with(BatchFake(), "up", "--no-wait")
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0].split() == ["seat", "participant", "result", "address",
                                                 "seconds", "error"]


def test_status_roster_and_down_commands(cli_with, tmp_path):
    p = BatchFake()
    assert cli_with(p, "up", "--no-wait").exit_code == 0
    res = cli_with(p, "status", "--format", "value")
    assert [line.split("\t")[:2] for line in res.stdout.splitlines()] == [
        ["course-01", "active"], ["course-02", "active"], ["course-03", "active"]]
    out = tmp_path / "roster.csv"
    res = cli_with(p, "roster", "--no-check", "--format", "csv", "-o", str(out))
    assert res.exit_code == 0 and "3 of 3 seats listed" in res.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_text().count("token=") == 6 and res.stdout == ""  # url and lab_url
    res = cli_with(p, "down", "--format", "value")
    assert res.exit_code == 0 and res.stdout.count("server\t") == 3
    res = cli_with(p, "down")
    assert res.exit_code == 0 and "nothing of workshop course was left" in res.stderr


def test_the_roster_file_is_private_even_when_it_was_there_and_no_link_is_followed(cli_with, tmp_path):
    p = BatchFake()
    assert cli_with(p, "up", "--no-wait").exit_code == 0
    out = tmp_path / "roster.csv"
    out.write_text("an old, longer roster that anyone could read\n" * 20)
    out.chmod(0o644)
    res = cli_with(p, "roster", "--no-check", "--format", "csv", "-o", str(out))
    assert res.exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o600
    assert "anyone could read" not in out.read_text() and out.read_text().count("token=") == 6
    target = tmp_path / "elsewhere.txt"
    target.write_text("")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    res = cli_with(p, "roster", "--no-check", "--format", "csv", "-o", str(link))
    assert res.exit_code == 2 and "symbolic link" in res.stderr
    assert target.read_text() == ""


def test_down_tries_a_seat_again_after_a_dropped_connection_but_not_after_a_refusal():
    p = BatchFake()
    up(p, workshop(2), wait=False, fan_out=False)
    failures = {"course-01": [errors.CloudError("reset", details={"transient": True})],
                "course-02": [errors.CloudError("HTTP 403", details={"http_status": 403})]}
    original = p.delete

    def flaky(server):
        if failures.get(server.name):
            raise failures[server.name].pop()
        return original(server)

    p.delete = flaky
    with pytest.raises(errors.CleanupFailed) as info:
        seats.down(p, workshop(2))
    assert "course-02: HTTP 403" in info.value.message and "course-01" not in info.value.message
    assert names(p) == ["course-02"]


def test_waiting_fan_out_waits_for_the_snapshotted_seat_to_answer_again(monkeypatch):
    from vmbinder import lifecycle

    p = BatchFake()
    waited = []

    def wait_ready(provider, server, reporter, *, timeout, clock, extra_roots=None):
        p.events.append(("answers", server.name))
        waited.append(server.name)
        return server

    monkeypatch.setattr(lifecycle, "wait_ready", wait_ready)
    result = up(p, workshop(3))
    assert result.snapshot_action == "made"
    assert sorted(waited) == ["course-01", "course-01", "course-02", "course-03"]
    snap = p.events.index(("snapshot", "course-01"))
    assert p.events.index(("answers", "course-01")) < snap
    assert ("answers", "course-01") in p.events[snap + 1:]
    assert [r.action for r in result.seats] == ["created"] * 3


def test_a_failed_snapshot_removes_what_it_made_and_starts_no_other_seat():
    from vmbinder.providers.base import Created

    p = BatchFake()
    removed = []

    def failing_snapshot(server, name, properties, ledger):
        ledger.add(Created("snapshot", "img-1", name, lambda: removed.append("img-1"), "rm img-1"))
        raise errors.CloudError("snapshotting course-01 failed: HTTP 500")

    p.snapshot = failing_snapshot
    with pytest.raises(errors.CloudError) as info:
        up(p, workshop(3), wait=False, built=lambda s: None)
    assert removed == ["img-1"] and "removed what it created: snapshot" in info.value.hint
    assert names(p) == ["course-01"]


def test_up_and_status_show_each_seats_certificate_once_its_guest_reported_it(cli_with):
    p = BatchFake()
    doc = json.loads(cli_with(p, "up", "--no-wait", "--format", "json").stdout)
    assert [s["certificate"] for s in doc["seats"]] == [None, None, None]  # nothing reported yet
    first = next(s for s in p.servers.values() if s.name == "course-01")
    p.set_metadata(first, {"issuer": "acme", "site": "203-0-113-7.nip.io",
                           "tls-failed": "203.0.113.7 (acme): rate limited"})
    seats_ = json.loads(cli_with(p, "status", "--format", "json").stdout)["seats"]
    assert seats_[0]["certificate"] == {
        "site": "203-0-113-7.nip.io", "issuer": "acme", "root_sha256": None,
        "failed": [{"host": "203.0.113.7", "issuer": "acme", "cause": "rate limited"}]}
    assert [s["certificate"] for s in seats_[1:]] == [None, None]
    table = cli_with(p, "status").stdout.splitlines()
    assert table[0].split() == ["seat", "participant", "state", "address", "certificate",
                                "expires", "fault"]
    assert "203-0-113-7.nip.io (acme)" in table[1] and "(acme)" not in table[2]


def test_values_that_look_like_rich_markup_are_shown_as_written():
    import io

    from rich.console import Console

    from vmbinder.commands.workshop import LiveTable

    ws = parse("name: course\nsource: https://github.com/org/course\n"
               "participants:\n  - '[/]'\n  - '[bold red]Ada[/bold red]'\n", "ws.yaml")
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    table = LiveTable(console, ws)
    table.seat("course-01", "failed", "the CA said: [/] no [link=x]")
    console.print(table._table())
    shown = out.getvalue()
    assert "[/]" in shown and "[bold red]Ada[/bold red]" in shown and "[link=x]" in shown


def test_list_shows_what_servers_recorded_as_written(monkeypatch):
    from click.testing import CliRunner

    from vmbinder.commands import main as cli_module
    from vmbinder.providers.base import META, Server

    p = FakeProvider()
    p.servers["id1"] = Server("id1", "demo", "active", "ACTIVE", "203.0.113.7",
                              {META + "repo": "https://example.org/[/]x", META + "ref": "[bold]v1"})
    monkeypatch.setattr(cli_module.Context, "provider", property(lambda self: p))
    res = CliRunner().invoke(cli_module.cli, ["--cloud", "x", "list"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "[bold]v1" in res.stdout and "[/]x" in res.stdout
