"""Volumes without a cloud: the options and their refusals, the launch document's
volumes, the local target's volume records and qemu disks, and what `delete` and
`volumes` say, against fake providers."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from tests.unit.fakes import FakeProvider
from tests.unit.test_local_provider import env, fake, launched, provider, spec  # noqa: F401 (fixtures)
from vmbinder import cloudinit, errors, launchdoc, lifecycle, rollback
from vmbinder.commands import volumes as volume_commands
from vmbinder.commands.main import cli
from vmbinder.providers.base import DATA, META, WORK, Ledger, Removed, Volume, VolumeUse
from vmbinder.providers.local import volumes as local_volumes
from vmbinder.sources import resolve_source
from vmbinder.spec import make_spec, volume_size

SOURCE = "https://github.com/org/repo"


# -- the options --------------------------------------------------------------------

@pytest.mark.parametrize("text, size", [("10", 10), ("10G", 10), ("10GB", 10), ("10gib", 10),
                                        ("2 GB", 2), ("work", None), ("demo-work", None),
                                        ("10T", None)])
def test_volume_is_a_size_or_a_name(text, size):
    assert volume_size(text) == size


def make(**kw):
    return make_spec(resolve_source(SOURCE), name="demo", **kw)


def test_a_size_names_the_new_volume_after_the_server():
    s = make(volume="5G", data=["shared", "more"])
    assert (s.volume_size, s.work_volume_name, s.data) == (5, "demo-work", ("shared", "more"))
    s = make(volume="old-work")
    assert (s.volume_size, s.work_volume_name) == (None, "old-work")
    assert make().work_volume_name is None


@pytest.mark.parametrize("kw, message, hint", [
    ({"volume": "0"}, "invalid --volume size 0 GB", "give 1 to 16384 GB, such as --volume 10"),
    ({"volume": "99999"}, "invalid --volume size 99999 GB", "give 1 to 16384 GB, such as --volume 10"),
    ({"volume": "my work"}, "invalid --volume 'my work'",
     "give a volume's name (letters, digits, '.', '_' and '-', at most 128) or its id; or a "
     "size in GB for a new one, such as --volume 10"),
    ({"data": ["a/b"]}, "invalid --data 'a/b'",
     "give a volume's name (letters, digits, '.', '_' and '-', at most 128) or its id"),
    ({"data": ["x", "x"]}, "--data x is given twice", "give each data volume once"),
    ({"volume": "x", "data": ["x"]}, "volume x is given both as --volume and as --data",
     "a volume is either the server's work volume (read-write) or a data volume (read-only)"),
])
def test_bad_volume_options_are_refused_in_words(kw, message, hint):
    with pytest.raises(errors.BadRequest) as info:
        make(**kw)
    assert (info.value.message, info.value.hint, info.value.exit_code) == (message, hint, 2)


def test_the_cli_refuses_before_asking_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    res = CliRunner().invoke(cli, ["--cloud", "local", "launch", "--dry-run", "--volume", "x",
                                   "--data", "x", SOURCE], catch_exceptions=False)
    assert res.exit_code == 2
    assert "error: volume x is given both as --volume and as --data" in res.output


def test_a_dry_run_shows_the_volumes_asked_for():
    res = CliRunner().invoke(cli, ["--cloud", "local", "launch", "--dry-run", "--format", "json",
                                   "--volume", "3", "--data", "ds", SOURCE],
                             catch_exceptions=False)
    doc = json.loads(res.output)
    assert (doc["volume"], doc["data"]) == ("3", ["ds"])


# -- the launch document ------------------------------------------------------------

def test_the_launch_document_names_each_volume_by_its_serial():
    s = make(volume="1")
    uses = (VolumeUse("id-w", "demo-work", WORK, "0123456789abcdef0123", created=True),
            VolumeUse("id-d", "shared", DATA, "fedcba98765432100000"))
    doc = launchdoc.document(s, "203.0.113.9", volumes=uses)
    assert doc["volumes"] == {
        "work": {"name": "demo-work", "serial": "0123456789abcdef0123", "created": True},
        "data": [{"name": "shared", "serial": "fedcba98765432100000"}]}
    assert doc["guest"]["volume_by_id"] == "/dev/disk/by-id"
    assert launchdoc.document(make(), "203.0.113.9")["volumes"] == {"work": None, "data": []}
    text = cloudinit.render(s, "203.0.113.9", volumes=uses)
    assert '"serial":"0123456789abcdef0123"' in text.replace("\\", "")


class VolumeFake(FakeProvider):
    """The fake provider with volumes: prepare resolves --volume and --data."""

    capabilities = frozenset({"volumes", "create_volume", "delete_volume"})

    def __init__(self, **kw):
        super().__init__(**kw)
        self.vols: dict[str, Volume] = {}

    def prepare(self, spec, ledger):
        resolved = super().prepare(spec, ledger)
        uses = []
        if spec.volume_size:
            name = spec.work_volume_name
            self.vols[name] = Volume("v-" + name, name, spec.volume_size, "available", (),
                                     {META + "owner": "me", META + "role": WORK})
            ledger.add(type(ledger.items[0])("volume", "v-" + name, name,
                                              lambda: self.vols.pop(name, None)))
            uses.append(VolumeUse("v-" + name, name, WORK, ("v-" + name)[:20], created=True))
        for d in spec.data:
            uses.append(VolumeUse("v-" + d, d, DATA, ("v-" + d)[:20]))
        self._step("volumes")
        return replace(resolved, volumes=tuple(uses))

    def create(self, spec, resolved, user_data, ledger):
        server = super().create(spec, resolved, user_data, ledger)
        meta = {META + "volume": spec.work_volume_name} if spec.volume else {}
        return self.set_metadata(server, {k.removeprefix(META): v for k, v in meta.items()})

    def current_owner(self):
        return "me"

    def volumes(self):
        return list(self.vols.values())

    def create_volume(self, name, size_gb, *, from_dir=None):
        self.vols[name] = Volume("v-" + name, name, size_gb, "available", (), {META + "owner": "me"})
        return self.vols[name]

    def delete_volume(self, volume):
        self.vols.pop(volume.name)
        return [Removed("volume", volume.id, volume.name)]


def test_a_launch_hands_the_volumes_to_the_user_data_and_a_failure_removes_what_it_made():
    p = VolumeFake()
    launched_ = lifecycle.launch(p, make(volume="2", data=["ds"]), wait=False)
    user_data = p.user_data[launched_.server.id]
    assert '"created":true' in user_data.replace("\\", "") and "v-ds" in user_data
    assert launched_.server.meta("volume") == "demo-work"
    failing = VolumeFake(fail_at="create")
    with pytest.raises(errors.CloudError) as info:
        lifecycle.launch(failing, replace(make(volume="2"), name="other"), wait=False)
    assert failing.vols == {} and "volume other-work" in info.value.hint


def test_delete_keeps_the_work_volume_and_says_how_to_remove_it():
    p = VolumeFake()
    server = lifecycle.launch(p, make(volume="2"), wait=False).server
    removed, kept = volume_commands.after_server_delete(p, [server], delete_volumes=False)
    assert removed == [] and [v.name for v, _ in kept] == ["demo-work"]
    assert volume_commands.kept_line(*kept[0]) == (
        "kept volume demo-work (2 GB), the work volume of demo: attach it to a new server with "
        "--volume demo-work; remove it with vmbinder volumes delete demo-work")
    removed, kept = volume_commands.after_server_delete(p, [server], delete_volumes=True)
    assert (removed, kept, p.vols) == ([Removed("volume", "v-demo-work", "demo-work")], [], {})


def test_volumes_delete_refuses_others_and_attached_ones_before_deleting_any():
    p = VolumeFake()
    mine = p.create_volume("mine", 1)
    theirs = replace(mine, id="v-theirs", name="theirs", metadata={META + "owner": "you"})
    found = replace(mine, id="v-found", name="found", metadata={META + "role": DATA})
    held = replace(mine, id="v-held", name="held", attached_to=("srv",))
    with pytest.raises(errors.BadRequest) as info:
        volume_commands.deletable(p, [mine, theirs, found], force=False)
    assert info.value.message == ("not deleting volumes that are not yours: theirs (owner you), "
                                  "found (not made by vmbinder: attached as data)")
    assert info.value.hint.endswith("vmbinder volumes delete --force theirs found")
    volume_commands.deletable(p, [mine, theirs, found], force=True)
    with pytest.raises(errors.BadRequest, match="volume held is attached to server srv"):
        volume_commands.deletable(p, [held], force=True)
    assert volume_commands.whose(p, [mine, theirs, found]) == ([mine, found], [theirs])


# -- the local target ----------------------------------------------------------------

def test_local_volumes_are_disks_with_a_record_beside_the_servers(env, fake, tmp_path):
    p = provider(env, fake)
    made = p.create_volume("ds", 3)
    root = tmp_path / "state" / "vmbinder" / "volumes"
    assert p.volumes_root == root
    assert fake.calls[-1] == ["qemu-img", "create", "-q", "-f", "qcow2", str(root / "ds.qcow2"), "3G"]
    doc = json.loads((root / "ds.json").read_text())
    assert (doc["name"], doc["size_gb"], len(doc["serial"]), doc["metadata"]) == (
        "ds", 3, 20, {"vmbinder:owner": doc["metadata"]["vmbinder:owner"]})
    assert oct((root / "ds.json").stat().st_mode & 0o777) == "0o600"
    assert [(v.name, v.status, v.attached_to) for v in p.volumes()] == [("ds", "available", ())]
    assert made.made_by_vmbinder
    with pytest.raises(errors.BadRequest, match="a volume named 'ds' already exists"):
        p.create_volume("ds", 1)


def test_a_local_launch_attaches_its_disks_by_serial_and_the_data_read_only(env, fake):
    p = provider(env, fake)
    data = p.create_volume("ds", 1)
    lau = launched(env, fake, s=replace(spec(), volume="2", data=("ds",)))
    work = next(v for v in lau.p.volumes() if v.name == "demo-work")
    argv = next(c for c in fake.calls if c[0] == "qemu-system-x86_64")
    root = p.volumes_root
    serials = {d["name"]: d["serial"] for d in local_volumes.documents(root)}
    assert argv[-8:] == [
        "-drive", f"file={root / 'demo-work.qcow2'},format=qcow2,if=none,id=vol0",
        "-device", f"virtio-blk-pci,drive=vol0,serial={serials['demo-work']},addr=0x10",
        "-drive", f"file={root / 'ds.qcow2'},format=qcow2,if=none,id=vol1,readonly=on",
        "-device", f"virtio-blk-pci,drive=vol1,serial={serials['ds']},addr=0x11"]
    assert [(u.name, u.role, u.created) for u in lau.resolved.volumes] == [
        ("demo-work", WORK, True), ("ds", DATA, False)]
    assert lau.server.meta("volume") == "demo-work" and lau.server.meta("data") == "ds"
    assert work.attached_to == ("demo",) and work.status == "in-use"
    # In use: a second server may share the data volume, never the work volume.
    with pytest.raises(errors.BadRequest) as info:
        lau.p.prepare(replace(spec("second"), volume="demo-work"), Ledger())
    assert info.value.message == "volume demo-work is in use by server demo"
    with pytest.raises(errors.BadRequest, match="volume demo-work is attached to server demo"):
        lau.p.delete_volume(work)
    assert data.name == "ds"
    # Deleting the server frees both, keeps both.
    lau.p.delete(lau.server)
    assert sorted((v.name, v.status) for v in lau.p.volumes()) == [
        ("demo-work", "available"), ("ds", "available")]
    work = next(v for v in lau.p.volumes() if v.name == "demo-work")
    assert lau.p.delete_volume(work) == [Removed("volume", work.id, "demo-work")]
    assert not (root / "demo-work.qcow2").exists()


def test_a_local_rollback_removes_the_volume_it_made_but_not_one_that_was_there(env, fake):
    p = provider(env, fake)
    p.create_volume("kept", 1)
    for s, left in ((replace(spec(), volume="1"), ["kept"]),
                    (replace(spec(), volume="kept"), ["kept"])):
        ledger = Ledger()
        p.prepare(s, ledger)
        assert rollback.rollback(ledger, lifecycle.NullReporter()) == []
        assert [v.name for v in p.volumes()] == left


def test_a_local_volume_not_there_is_refused_with_the_candidates(env, fake):
    p = provider(env, fake)
    p.create_volume("ds", 1)
    with pytest.raises(errors.ConfigError) as info:
        p.prepare(replace(spec(), data=("nope",)), Ledger())
    assert (info.value.message, info.value.hint) == (
        "volume 'nope' not found", "volumes here: ds (see vmbinder volumes)")
    assert not (p.root / "demo").exists()


# -- workshops -----------------------------------------------------------------------

WORKSHOP = "name: course\nsource: https://github.com/org/repo\nseats: 2\n"


def test_a_workshop_gives_every_seat_its_own_work_volume_and_down_keeps_them():
    from vmbinder.workshops import file, seats, up

    w = file.parse(WORKSHOP + "volume: 3G\n")
    p = VolumeFake()
    specs = [up.seat_spec(w, seat, public_key=None, target=p) for seat in w.seats]
    assert [(s.volume_size, s.work_volume_name) for s in specs] == [
        (3, "course-01-work"), (3, "course-02-work")]
    # A seat made again gets the volume its name kept.
    again = up.seat_spec(w, w.seats[0], public_key=None, target=p, kept=frozenset({"course-01-work"}))
    assert (again.volume, again.volume_size) == ("course-01-work", None)
    for s in specs:  # what their launches made; the servers are gone
        p.create_volume(s.work_volume_name, 3)
    p.create_volume("course-03-work", 3)  # not a seat's
    assert seats.down(p, w) == []
    assert [v.name for v in seats.work_volumes(p, w)] == ["course-01-work", "course-02-work"]
    removed = seats.down(p, w, volumes=True)
    assert [r.name for r in removed] == ["course-01-work", "course-02-work"]
    assert list(p.vols) == ["course-03-work"]
    with pytest.raises(errors.BadRequest) as info:
        file.parse(WORKSHOP + "volume: lots\n", "w.yaml")
    assert "w.yaml:4: volume 'lots' is not a size in GB" in str(info.value.message)
