"""A workshop's seats powered at once (vmbinder.workshops.power) and one seat made
fresh (vmbinder.workshops.reset), against an in-memory provider: each seat its
own result, a failed seat failing the batch with exit 10 while the others are
done, missing seats reported, bounded parallelism, another user's seats
refused; reset's refusals before anything is removed, its new token, its
snapshot and the work volume it keeps; the commands' output."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import replace

import pytest

from tests.unit.test_batch import FILE, BatchFake, workshop
from vmbinder import errors, lifecycle, readiness
from vmbinder.providers.base import ACTIVE, META, SHELVED, STOPPED, Removed, Volume
from vmbinder.workshops import power as seats_power
from vmbinder.workshops import reset as seat_reset
from vmbinder.workshops.file import parse
from vmbinder.workshops.up import up

ME, THEM = "u-me", "u-them"


class Powered(BatchFake):
    """BatchFake with the power verbs (each failing on request for some seats), the
    seats' work volumes, and a user."""

    capabilities = BatchFake.capabilities | {"stop", "start", "shelve", "unshelve", "volumes",
                                             "delete_volume"}

    def __init__(self, *, refuse=None, user=None, detach_after=0, **kw):
        super().__init__(**kw)
        #: {(verb, seat): error} raised when that verb is asked of that seat.
        self.refuse = dict(refuse or {})
        self.user = user
        self.at_once = 0
        self.most_power_at_once = 0
        self.vols: dict[str, Volume] = {}
        #: Reads of volumes() a deleted server's volume stays attached for.
        self.detach_after = detach_after
        self.detaching: dict[str, int] = {}
        self.made_volumes = 0

    def current_owner(self):
        return self.user

    def _power(self, server, verb, state):
        with self.lock:
            self.at_once += 1
            self.most_power_at_once = max(self.most_power_at_once, self.at_once)
            self.events.append((verb, server.name))
        try:
            time.sleep(0.02)
            if (verb, server.name) in self.refuse:
                raise self.refuse[(verb, server.name)]
            done = replace(server, state=state, cloud_status=state.upper())
            self.servers[server.id] = done
            return done
        finally:
            with self.lock:
                self.at_once -= 1

    def stop(self, server):
        return self._power(server, "stop", STOPPED)

    def start(self, server):
        return self._power(server, "start", ACTIVE)

    def shelve(self, server):
        return self._power(server, "shelve", SHELVED)

    def unshelve(self, server):
        return self._power(server, "unshelve", ACTIVE)

    # -- work volumes: made or attached by name at create, freed a while after delete

    def create(self, spec, resolved, user_data, ledger):
        if spec.volume and not spec.volume_size:
            assert not self.vols[spec.volume].attached_to, f"{spec.volume} is attached"
        server = super().create(spec, resolved, user_data, ledger)
        if spec.volume:
            name = spec.work_volume_name
            self.made_volumes += 1
            old = self.vols.get(name) or Volume(f"vol-{self.made_volumes}", name,
                                                int(spec.volume_size or 1), "available", (),
                                                {META + "owner": "someone"})
            self.vols[name] = replace(old, status="in-use", attached_to=(spec.name,))
            self.servers[server.id] = replace(server, metadata={**server.metadata,
                                                                META + "volume": name})
        return server

    def delete(self, server):
        for name, vol in self.vols.items():
            if server.name in vol.attached_to:
                self.detaching[name] = self.detach_after
        return super().delete(server)

    def volumes(self):
        for name, left in list(self.detaching.items()):
            if left <= 0:
                self.vols[name] = replace(self.vols[name], status="available", attached_to=())
                del self.detaching[name]
            else:
                self.detaching[name] = left - 1
        return list(self.vols.values())

    def delete_volume(self, volume):
        assert not volume.attached_to
        del self.vols[volume.name]
        return [Removed("volume", volume.id, volume.name)]


def made(seats=3, extra="", **kw) -> tuple[Powered, object]:
    ws = workshop(seats, extra)
    p = Powered(**kw)
    up(p, ws, wait=False, fan_out=False)
    return p, ws


def on_cloud(p) -> dict:
    return {s.name: s for s in p.servers.values()}


@pytest.fixture
def waited(monkeypatch):
    """lifecycle.wait_ready, recorded: each seat's environment answers."""
    seen = []

    def wait_ready(provider, server, reporter, *, timeout, extra_roots=None, clock=None, **kw):
        seen.append((server.name, server.state, timeout))
        return server

    monkeypatch.setattr(lifecycle, "wait_ready", wait_ready)
    return seen


# -- power -----------------------------------------------------------------------------

def test_every_seat_stopped_then_started_each_its_own_result_and_a_missing_seat_reported(waited):
    p, ws = made(3)
    p.delete(on_cloud(p)["course-03"])
    result = seats_power.act(p, ws, "stop")
    assert [(r.seat.name, r.action, r.server.state if r.server else None) for r in result.seats] == [
        ("course-01", "stopped", STOPPED), ("course-02", "stopped", STOPPED),
        ("course-03", "missing", None)]
    assert not result.partly_failed and result.failure() is None
    assert [r.seat.name for r in result.missing] == ["course-03"]
    again = seats_power.act(p, ws, "stop")
    assert [r.action for r in again.seats] == ["already stopped", "already stopped", "missing"]
    assert waited == []  # stopping waits for no environment

    started = seats_power.act(p, ws, "start", timeout=90)
    assert [(r.action, r.ready) for r in started.seats] == [
        ("started", True), ("started", True), ("missing", None)]
    assert sorted(waited) == [("course-01", ACTIVE, 90), ("course-02", ACTIVE, 90)]
    unwaited = seats_power.act(p, ws, "shelve")
    assert {s.state for s in p.servers.values()} == {SHELVED}
    unwaited = seats_power.act(p, ws, "unshelve", wait=False)
    assert [r.ready for r in unwaited.seats] == [None, None, None] and len(waited) == 2
    assert {s.state for s in p.servers.values()} == {ACTIVE}


def test_one_seat_failing_leaves_the_others_done_and_the_batch_fails_with_10():
    refusal = errors.BadRequest("cannot start course-02: it is SHELVED_OFFLOADED",
                                "a shelved server comes back with: vmbinder unshelve course-02")
    p, ws = made(3, refuse={("start", "course-02"): refusal})
    seats_power.act(p, ws, "stop")
    result = seats_power.act(p, ws, "start", wait=False)
    assert [(r.seat.name, r.action) for r in result.seats] == [
        ("course-01", "started"), ("course-02", "failed"), ("course-03", "started")]
    assert {n: s.state for n, s in on_cloud(p).items()} == {
        "course-01": ACTIVE, "course-02": STOPPED, "course-03": ACTIVE}
    failure = result.failure()
    assert isinstance(failure, errors.BatchPartlyFailed) and failure.exit_code == 10
    assert failure.message == (
        "1 of 3 seats failed to start; the others are active:\n"
        "  course-02: cannot start course-02: it is SHELVED_OFFLOADED\n"
        "    a shelved server comes back with: vmbinder unshelve course-02")
    assert failure.hint == ("once the cause is fixed, run the same `vmbinder workshop start "
                            "FILE` again: it leaves the seats that are active as they are")
    assert failure.details["failed"] == {"course-02": refusal.message}


def test_seats_are_done_at_most_parallel_at_a_time():
    p, ws = made(6)
    seats_power.act(p, ws, "stop", parallel=2)
    assert p.most_power_at_once == 2
    seats_power.act(p, ws, "start", parallel=1, wait=False)
    assert p.most_power_at_once == 2 and {s.state for s in p.servers.values()} == {ACTIVE}


def test_another_users_seats_are_refused_before_any_changes_unless_forced():
    p, ws = made(3, user=ME)
    theirs = on_cloud(p)["course-02"]
    p.set_metadata(theirs, {"owner": THEM})
    with pytest.raises(errors.BadRequest) as info:
        seats_power.act(p, ws, "shelve")
    assert info.value.message == ("not shelving seats another user of the project launched: "
                                  f"course-02 (owner {THEM})")
    assert info.value.hint == ("nothing was shelved; to shelve them anyway: "
                               "vmbinder workshop shelve --force FILE")
    assert not [e for e in p.events if e[0] == "shelve"]
    result = seats_power.act(p, ws, "shelve", force=True)
    assert [r.action for r in result.seats] == ["shelved"] * 3


def test_a_target_without_the_verb_refuses_it_before_looking_for_seats():
    p = BatchFake()
    with pytest.raises(errors.BadRequest) as info:
        seats_power.act(p, workshop(2), "shelve")
    assert info.value.message == "shelve is not supported on the fake target"
    assert p.calls == []


# -- reset -----------------------------------------------------------------------------

def test_a_seat_is_named_by_its_name_its_number_or_its_participant():
    ws = parse(FILE.format(seats=1).replace("seats: 1\n", "participants: [Ada, Grace, Alan]\n"),
               "ws.yaml")
    assert [seat_reset.find_seat(ws, w).name for w in ("course-02", "2", "02", "Grace")] == [
        "course-02"] * 4
    with pytest.raises(errors.BadRequest) as info:
        seat_reset.find_seat(ws, "Bob")
    assert info.value.message == "workshop course has no seat 'Bob'"
    assert info.value.hint == ("name a seat (course-01 .. course-03), its number (1 to 3) or its "
                               "participant; vmbinder workshop check FILE lists them")
    with pytest.raises(errors.BadRequest):
        seat_reset.find_seat(ws, "4")


def test_reset_refuses_an_unknown_seat_a_seat_not_made_and_another_users_with_nothing_removed():
    p, ws = made(3, user=ME)
    p.delete(on_cloud(p)["course-03"])
    before = dict(p.servers)
    events = len(p.events)
    with pytest.raises(errors.BadRequest) as info:
        seat_reset.reset(p, ws, "course-09")
    assert info.value.message == "workshop course has no seat 'course-09'"
    with pytest.raises(errors.BadRequest) as info:
        seat_reset.reset(p, ws, "3")
    assert info.value.message == ("seat course-03 of workshop course has no server to reset "
                                  "(it was never made, or was deleted)")
    assert info.value.hint == ("make it with: vmbinder workshop up FILE (it makes only the "
                               "missing seats)")
    p.set_metadata(on_cloud(p)["course-02"], {"owner": THEM})
    before = dict(p.servers)
    with pytest.raises(errors.BadRequest) as info:
        seat_reset.reset(p, ws, "course-02")
    assert info.value.hint == ("nothing was reset; to reset them anyway: "
                               "vmbinder workshop reset --force FILE course-02")
    assert p.servers == before and len(p.events) == events


def test_reset_makes_one_seat_again_with_a_new_token_and_leaves_the_others():
    p, ws = made(3)
    old = on_cloud(p)
    result = seat_reset.reset(p, ws, "course-02", wait=False)
    new = on_cloud(p)
    assert result.old.id == old["course-02"].id and result.server.id == new["course-02"].id
    assert new["course-02"].id != old["course-02"].id
    assert new["course-02"].meta("token") != old["course-02"].meta("token")
    assert new["course-02"].meta("workshop") == "course" and new["course-02"].meta("seat") == "2"
    for seat in ("course-01", "course-03"):
        assert new[seat] == old[seat]
    assert [r.kind for r in result.removed] == ["server"] and result.kept_volume is None
    entry = result.entry
    assert (entry.seat, entry.number) == ("course-02", 2)
    assert entry.url.endswith(f"token={new['course-02'].meta('token')}")
    assert p.events[-3:] == [("delete", "course-02"), ("create", "course-02"), ("active", "course-02")]


def test_reset_starts_the_seat_from_the_workshops_snapshot(waited):
    ws = workshop(3)
    p = Powered()
    up(p, ws, wait=False, built=lambda server: None)
    (snap,) = p.snaps.values()
    result = seat_reset.reset(p, ws, "course-01", ready_timeout=60)
    assert result.snapshot == snap and len(p.snaps) == 1
    assert p.specs["course-01"].cloud.image == snap.id
    assert dict(p.specs["course-01"].labels)["snapshot"] == snap.id
    assert waited == [("course-01", ACTIVE, 60)]  # waited for, as up waits


def test_reset_keeps_the_seats_work_volume_once_detached_or_deletes_it_when_asked():
    p, ws = made(2, "volume: 1\n", detach_after=3)
    vol = p.vols["course-02-work"]
    slept = []
    clock = readiness.Clock(now=lambda: len(slept) * 2.0, sleep=slept.append)
    result = seat_reset.reset(p, ws, "course-02", wait=False, clock=clock)
    assert slept == [2, 2]  # until the deleted server's volume was detached
    assert result.kept_volume == "course-02-work"
    assert p.specs["course-02"].volume == "course-02-work"  # attached again by name
    assert p.vols["course-02-work"].id == vol.id
    assert p.vols["course-02-work"].attached_to == ("course-02",)

    result = seat_reset.reset(p, ws, "2", wait=False, delete_volume=True, clock=clock)
    assert result.kept_volume is None
    assert [r.kind for r in result.removed] == ["server", "volume"]
    assert p.specs["course-02"].volume == "1"  # a new, empty one
    assert p.vols["course-02-work"].id != vol.id
    assert p.vols["course-01-work"].attached_to == ("course-01",)


def test_a_work_volume_never_detached_ends_the_reset_naming_it():
    p, ws = made(2, "volume: 1\n", detach_after=10**6)
    slept = []
    clock = readiness.Clock(now=lambda: len(slept) * 2.0, sleep=slept.append)
    with pytest.raises(errors.CloudError) as info:
        seat_reset.reset(p, ws, "course-01", wait=False, clock=clock)
    assert info.value.message == ("work volume course-01-work is still attached to course-01 "
                                  "300 s after its server was deleted")
    assert "vmbinder workshop up FILE` makes the seat again with it" in info.value.hint
    assert len(slept) == 151 and p.vols["course-01-work"].status == "in-use"


def test_a_reset_whose_new_server_fails_says_the_old_one_is_gone_and_how_to_make_the_seat():
    p, ws = made(2)
    p.fail_seats.add("course-02")
    with pytest.raises(errors.CloudError) as info:
        seat_reset.reset(p, ws, "course-02", wait=False)
    assert "course-02" not in on_cloud(p)
    old_id = info.value.hint.split("old server (", 1)[1].split(")", 1)[0]
    assert old_id.startswith("id-")
    assert info.value.hint.endswith(f"the seat's old server ({old_id}) was removed; make the "
                                    "seat again with: vmbinder workshop up FILE")


# -- the commands ----------------------------------------------------------------------

@pytest.fixture
def cli(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from vmbinder.commands import main as cli_module
    from vmbinder.commands import workshop_power

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(workshop_power, "resolve_remote", lambda source, provider, quiet: source)
    path = tmp_path / "ws.yaml"
    path.write_text(FILE.format(seats=3))

    def run(provider, *args):
        monkeypatch.setattr(cli_module.Context, "provider", property(lambda self: provider))
        args = [str(path) if a == "FILE" else a for a in args]
        return CliRunner().invoke(cli_module.cli, ["--cloud", "x", "workshop", *args],
                                  catch_exceptions=False)

    run.path = path
    return run


def test_workshop_stop_prints_each_seat_and_exits_10_naming_the_failed_one(cli):
    refusal = errors.CloudError("stopping course-03 failed: HTTP 409: conflict",
                                details={"http_status": 409, "request_id": "req-9"})
    p = Powered(refuse={("stop", "course-03"): refusal})
    assert cli(p, "up", "--no-wait", "FILE").exit_code == 0
    res = cli(p, "stop", "FILE", "--format", "json")
    assert res.exit_code == 10, res.output
    doc = json.loads(res.stdout)
    assert (doc["workshop"], doc["verb"]) == ("course", "stop")
    assert [(s["seat"], s["result"], s["state"], s["error"], s["request_id"])
            for s in doc["seats"]] == [
        ("course-01", "stopped", STOPPED, None, None), ("course-02", "stopped", STOPPED, None, None),
        ("course-03", "failed", ACTIVE, refusal.message, "req-9")]
    said = " ".join(res.stderr.split())
    assert "1 of 3 seats failed to stop; the others are stopped: course-03: stopping course-03 " \
           "failed: HTTP 409: conflict (request id req-9)" in said
    assert f"run the same `vmbinder workshop stop {cli.path}` again" in said

    p.refuse.clear()
    res = cli(p, "stop", "FILE")
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.stdout.splitlines()]
    assert rows[0] == ["seat", "participant", "result", "state", "address", "seconds", "error"]
    assert [(r[0], r[2:4]) for r in rows[1:]] == [
        ("course-01", ["already", "stopped"]), ("course-02", ["already", "stopped"]),
        ("course-03", ["stopped", "stopped"])]
    assert f"(vmbinder workshop start {cli.path} brings them back" in " ".join(res.stderr.split())


def test_workshop_start_values_and_a_missing_seat_named_with_the_command_that_makes_it(cli, waited):
    p = Powered()
    assert cli(p, "up", "--no-wait", "FILE").exit_code == 0
    p.delete(on_cloud(p)["course-01"])
    assert cli(p, "stop", "FILE", "--format", "value").exit_code == 0
    res = cli(p, "start", "FILE", "--format", "value", "--timeout", "30")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == ["course-01\tmissing\t", "course-02\tstarted\tactive",
                                       "course-03\tstarted\tactive"]
    assert sorted(waited) == [("course-02", ACTIVE, 30), ("course-03", ACTIVE, 30)]
    res = cli(p, "start", "FILE")
    said = " ".join(res.stderr.split())
    assert f"missing (never made, or deleted): course-01; vmbinder workshop up {cli.path} " \
           "makes them" in said
    assert f"the URLs with their tokens: vmbinder workshop roster {cli.path}" in said


def test_workshop_reset_prints_the_new_roster_line_and_refuses_an_unknown_seat(cli):
    p = Powered()
    assert cli(p, "up", "--no-wait", "FILE").exit_code == 0
    old = on_cloud(p)
    res = cli(p, "reset", "FILE", "nobody")
    assert res.exit_code == 2
    said = " ".join(res.stderr.split())
    assert "workshop course has no seat 'nobody'" in said
    assert f"vmbinder workshop check {cli.path} lists them" in said
    assert on_cloud(p) == old

    res = cli(p, "reset", "FILE", "3", "--no-wait")
    assert res.exit_code == 0, res.output
    new = on_cloud(p)["course-03"]
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [(r["seat"], r["number"]) for r in rows] == [("course-03", "3")]
    assert rows[0]["url"].endswith(f"token={new.meta('token')}")
    assert new.meta("token") != old["course-03"].meta("token")
    said = " ".join(res.stderr.split())
    assert f"removed server course-03 ({old['course-03'].id})" in said
    assert f"new server {new.id} building its own environment, with a new token" in said
    assert "the seat had no work volume: the files on its disk went with its old server" in said
    res = cli(p, "reset", "FILE", "course-01", "--no-wait", "--format", "json")
    doc = json.loads(res.stdout)
    assert [s["seat"] for s in doc["seats"]] == ["course-01"]
    assert doc["seats"][0]["url"].endswith(f"token={on_cloud(p)['course-01'].meta('token')}")


class ReleasingSeats(Powered):
    """Powered whose seats have floating IPs to give back."""

    capabilities = Powered.capabilities | {"release_ip"}

    def release_ip(self, server):
        with self.lock:
            self.events.append(("release", server.name))
        done = replace(server, address=None, metadata={**server.metadata, "vmbinder:released": "ext"})
        self.servers[server.id] = done
        return done, [Removed("floating IP", f"fip-{server.name}", server.address)]


def test_workshop_stop_release_ip_gives_every_seats_address_back_first_and_says_what_start_does(cli):
    p = ReleasingSeats()
    assert cli(p, "up", "--no-wait", "FILE").exit_code == 0
    addresses = {s.name: s.address for s in p.servers.values()}
    assert all(addresses.values())
    res = cli(p, "stop", "FILE", "--release-ip", "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {s["seat"]: (s["result"], s["address"], s["released"]) for s in doc["seats"]} == {
        name: ("stopped", None, [address]) for name, address in addresses.items()}
    for name in addresses:  # each seat's address given back before it was stopped
        assert p.events.index(("release", name)) < p.events.index(("stop", name))
    p2 = ReleasingSeats()
    assert cli(p2, "up", "--no-wait", "FILE").exit_code == 0
    res = cli(p2, "shelve", "FILE", "--release-ip")
    assert res.exit_code == 0, res.output
    said = " ".join(res.stderr.split())
    assert f"addresses given back: vmbinder workshop unshelve {cli.path} gives each seat a new " \
           f"one, and new URLs (vmbinder workshop roster {cli.path} prints them)" in said
    assert "holds its address" not in said


def test_workshop_release_ip_is_refused_where_seats_have_no_floating_ip_with_nothing_done(cli):
    p = Powered()
    assert cli(p, "up", "--no-wait", "FILE").exit_code == 0
    before = dict(p.servers)
    res = cli(p, "stop", "FILE", "--release-ip")
    assert res.exit_code == 2, res.output
    assert "no floating IP to give back" in " ".join(res.stderr.split())
    assert p.servers == before and not [e for e in p.events if e[0] == "stop"]
