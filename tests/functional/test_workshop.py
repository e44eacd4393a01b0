"""Workshops against the real testbed: 30 seats up, a re-run, a seat deleted by
hand, the quota check, snapshots, roster and down, and each seat's work volume.

The testbed boots nothing, so seats are made with --no-wait; the snapshot path
runs through the Python API with a hook that says the first seat is built."""

from __future__ import annotations

import json
import time

import pytest

from vmbinder.providers.openstack import OpenStackProvider
from vmbinder.workshops.file import load
from vmbinder.workshops.up import build_key, up

from .conftest import IMAGE, MEMBER, SOURCE, connect
from .test_launch import ok
from .test_volumes import launch_document, project_volumes, refused

TINY = "m1.tiny"  # 1 vCPU, 512 MB: 30 of them fit the raised quota


def write_workshop(tmp_path, name, seats, extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nsource: {SOURCE}\nref: main\nseats: {seats}\n"
                    f"image: {IMAGE}\nflavor: {TINY}\nopen: index.ipynb\n{extra}")
    return path


def only_the_keypair_is_left(testbed):
    """down leaves nothing of the workshop; the uploaded keypair is kept on
    purpose (upload once, reuse), as by vmbinder delete: remove it as a user would."""
    left = testbed.owned()
    assert [kind for kind, _, _ in left] == ["keypair"], left
    testbed.admin.compute.delete_keypair(left[0][1], user_id=testbed.user_id)


def seats_on_cloud(testbed, workshop):
    servers = [s for s in testbed.admin.compute.servers(all_projects=True, details=True,
                                                         project_id=testbed.project_id,
                                                         tags="vmbinder")
               if (s.metadata or {}).get("vmbinder:workshop") == workshop]
    return {s.name: s for s in servers}


def test_thirty_seats_up_again_repaired_roster_and_down(testbed, vmb, quota, tmp_path, ssh_key):
    quota(compute={"instances": 35, "cores": 35, "ram": 35 * 512},
          network={"floating_ips": 35})
    path = write_workshop(tmp_path, "ws30", 30, "lifetime: 8h\n")

    started = time.monotonic()
    res = ok(vmb("workshop", "up", str(path), "--no-wait", "--format", "json", timeout=1500))
    first_up = time.monotonic() - started
    doc = json.loads(res.stdout)
    assert [s["result"] for s in doc["seats"]] == ["created"] * 30, res.stdout
    assert doc["snapshot"] is None  # --no-wait: every seat builds its own environment
    on_cloud = seats_on_cloud(testbed, "ws30")
    assert sorted(on_cloud) == [f"ws30-{i:02d}" for i in range(1, 31)]
    tokens = {s.metadata["vmbinder:token"] for s in on_cloud.values()}
    assert len(tokens) == 30
    for server in on_cloud.values():
        assert server.status == "ACTIVE"
        assert server.metadata["vmbinder:seat"] == str(int(server.name[-2:]))
        assert server.metadata["vmbinder:expires"].endswith("Z")
    fips = {ip.floating_ip_address: ip for ip in testbed.admin.network.ips(project_id=testbed.project_id)}
    assert sum(1 for ip in fips.values() if ip.port_id) == 30

    # Again: nothing new.
    res = ok(vmb("workshop", "up", str(path), "--no-wait", "--format", "json", timeout=600))
    assert [s["result"] for s in json.loads(res.stdout)["seats"]] == ["kept"] * 30
    assert {s.id for s in seats_on_cloud(testbed, "ws30").values()} == {s.id for s in on_cloud.values()}

    # A seat deleted by hand (its floating IP stays allocated) is made again,
    # and the orphaned address is released, not leaked.
    gone = on_cloud["ws30-07"]
    testbed.admin.compute.delete_server(gone)
    testbed.admin.compute.wait_for_delete(gone, wait=120)
    res = ok(vmb("workshop", "up", str(path), "--no-wait", "--format", "json", timeout=600))
    results = {s["seat"]: s["result"] for s in json.loads(res.stdout)["seats"]}
    assert results.pop("ws30-07") == "created" and set(results.values()) == {"kept"}
    again = seats_on_cloud(testbed, "ws30")
    assert len(again) == 30 and again["ws30-07"].id != gone.id
    ips = list(testbed.admin.network.ips(project_id=testbed.project_id))
    assert len(ips) == 30 and all(ip.port_id for ip in ips)

    res = ok(vmb("workshop", "status", str(path), "--format", "json"))
    assert {s["state"] for s in json.loads(res.stdout)["seats"]} == {"active"}

    # Roster without probing (the testbed's addresses are not reachable).
    res = ok(vmb("workshop", "roster", str(path), "--no-check", "--format", "json"))
    roster = json.loads(res.stdout)
    assert len(roster["seats"]) == 30
    assert {s["url"].rsplit("token=", 1)[1] for s in roster["seats"]} == tokens - {
        gone.metadata["vmbinder:token"]} | {again["ws30-07"].metadata["vmbinder:token"]}
    out = tmp_path / "roster.html"
    ok(vmb("workshop", "roster", str(path), "--no-check", "--format", "html", "-o", str(out)))
    assert out.stat().st_mode & 0o777 == 0o600 and out.read_text().count("token=") >= 30

    res = ok(vmb("workshop", "down", str(path), "--format", "json", timeout=900))
    kinds = [r["kind"] for r in json.loads(res.stdout)]
    assert kinds.count("server") == 30 and kinds.count("floating IP") == 30
    only_the_keypair_is_left(testbed)
    res = ok(vmb("workshop", "down", str(path), "--format", "json"))
    assert json.loads(res.stdout) == []
    print(f"30 seats up on the testbed in {first_up:.0f} s")


def test_the_quota_check_refuses_a_too_large_workshop_with_nothing_made(testbed, vmb, quota, tmp_path):
    quota(compute={"instances": 5}, network={"floating_ips": 6})
    path = write_workshop(tmp_path, "wsbig", 8)
    res = vmb("workshop", "up", str(path), "--no-wait")
    assert res.returncode == 4, res.stderr
    assert "quota is too small for 8 servers (8 x m1.tiny)" in res.stderr
    assert "instances: needs 8, 5 left of 5" in res.stderr
    assert "floating IPs: needs 8, 6 left of 6" in res.stderr
    assert "cores" not in res.stderr  # only the short ones are named
    assert testbed.owned() == []


def test_the_quota_check_counts_the_seats_work_volumes(testbed, vmb, quota, tmp_path,
                                                       no_work_volume_left):
    quota(volume={"gigabytes": 5})
    path = write_workshop(tmp_path, "wsgb", 3, "volume: 2\n")
    res = vmb("workshop", "up", str(path), "--no-wait")
    assert res.returncode == 4, res.stderr
    said = " ".join(res.stderr.split())
    assert "quota is too small for 3 servers" in said and "volume GB: needs 6, 5 left of 5" in said
    assert "volumes:" not in said and "instances" not in said  # only the short ones are named
    assert testbed.owned() == [] and project_volumes(testbed) == {}


def test_snapshot_fan_out_on_the_testbed(testbed, vmb, tmp_path, ssh_key):
    """The first seat is snapshotted (stopped, imaged, started), the others boot
    from the snapshot; a later up reuses it; down --snapshot removes it."""
    path = write_workshop(tmp_path, "wsfan", 3)
    workshop = load(path)
    provider = OpenStackProvider(conn=connect(MEMBER))
    built = []
    result = up(provider, workshop, public_key=ssh_key, wait=False, built=built.append)
    assert [s.name for s in built] == ["wsfan-01"] and result.snapshot_action == "made"
    snap = result.snapshot
    image = testbed.admin.image.get_image(snap.id)
    assert image.status == "active" and image.visibility == "private"
    assert image.properties["vmbinder_workshop"] == "wsfan"
    assert image.properties["vmbinder_build"] == build_key(workshop, IMAGE)
    assert image.properties["vmbinder_snapshot_of"] == "wsfan-01"
    seats = seats_on_cloud(testbed, "wsfan")
    assert seats["wsfan-01"].status == "ACTIVE"  # started again after its snapshot
    base = testbed.admin.image.find_image(IMAGE).id
    assert seats["wsfan-01"].image.id == base
    for name in ("wsfan-02", "wsfan-03"):
        assert seats[name].image.id == snap.id and seats[name].metadata["vmbinder:snapshot"] == snap.id

    # A seat deleted by hand comes back from the same snapshot, with a new token.
    old = seats["wsfan-03"]
    ok(vmb("delete", "wsfan-03"))
    again = up(provider, workshop, public_key=ssh_key, wait=False, built=built.append)
    assert again.snapshot_action == "reused" and len(built) == 1
    new = seats_on_cloud(testbed, "wsfan")["wsfan-03"]
    assert new.image.id == snap.id
    assert new.metadata["vmbinder:token"] != old.metadata["vmbinder:token"]

    res = ok(vmb("workshop", "down", str(path), "--snapshot", "--format", "json", timeout=600))
    removed = json.loads(res.stdout)
    assert [r["id"] for r in removed if r["kind"] == "snapshot"] == [snap.id]
    only_the_keypair_is_left(testbed)


@pytest.fixture
def no_work_volume_left(testbed):
    """The project has no volume before the test, and none after it (the check of
    conftest does not look at volumes). A volume left attached is freed first: the
    servers holding it are removed, as Cinder deletes no attached volume."""
    assert project_volumes(testbed) == {}, "volumes left by an earlier run"
    yield
    left = project_volumes(testbed)
    if left:
        testbed.remove([r for r in testbed.owned() if r[0] == "server"])
        deadline = time.monotonic() + 120
        while any(v.attachments for v in project_volumes(testbed).values()) \
                and time.monotonic() < deadline:
            time.sleep(1)
        for volume in project_volumes(testbed).values():
            testbed.admin.block_storage.delete_volume(volume, force=True)
    assert sorted(left) == [], f"volumes left behind: {sorted(left)}"


def work_volumes_of(testbed, seats) -> dict:
    """Each seat's work volume <seat>-work, read as the admin; no other volume is there."""
    volumes = project_volumes(testbed)
    assert sorted(volumes) == sorted(f"{seat}-work" for seat in seats), sorted(volumes)
    return {seat: volumes[f"{seat}-work"] for seat in seats}


def test_each_seat_gets_its_work_volume_kept_by_down_and_back_on_the_next_up(
        testbed, vmb, tmp_path, ssh_key, no_work_volume_left):
    seats = ["wsvol-01", "wsvol-02", "wsvol-03"]
    path = write_workshop(tmp_path, "wsvol", 3, "volume: 1\n")
    res = ok(vmb("workshop", "up", str(path), "--no-wait", "--format", "json", timeout=600))
    assert [s["result"] for s in json.loads(res.stdout)["seats"]] == ["created"] * 3, res.stdout
    on_cloud = seats_on_cloud(testbed, "wsvol")
    assert sorted(on_cloud) == seats
    volumes = work_volumes_of(testbed, seats)
    for seat in seats:
        server, volume = on_cloud[seat], volumes[seat]
        # Made for this seat alone, 1 GB, attached by Nova when it made the seat.
        assert (volume.size, volume.status) == (1, "in-use")
        assert [a["server_id"] for a in volume.attachments] == [server.id]
        assert [a.id for a in testbed.admin.compute.volume_attachments(server)] == [volume.id]
        assert volume.metadata == {"vmbinder:owner": testbed.user_id, "vmbinder:role": "work",
                                   "vmbinder:made-for": seat, "vmbinder:last-server": seat}
        assert server.metadata["vmbinder:volume"] == f"{seat}-work"
        assert launch_document(testbed, seat)["volumes"]["work"] == {
            "name": f"{seat}-work", "serial": volume.id[:20], "created": True}
    listed = json.loads(ok(vmb("volumes", "--format", "json")).stdout)
    assert sorted((v["name"], v["size_gb"], v["status"], v["attached_to"], v["role"])
                  for v in listed) == [(f"{seat}-work", 1, "in-use", [seat], "work")
                                       for seat in seats]

    # Again: every seat kept, and no second volume.
    res = ok(vmb("workshop", "up", str(path), "--no-wait", "--format", "json", timeout=600))
    assert [s["result"] for s in json.loads(res.stdout)["seats"]] == ["kept"] * 3, res.stdout
    assert {s: v.id for s, v in work_volumes_of(testbed, seats).items()} == \
        {s: v.id for s, v in volumes.items()}

    # down removes the seats, keeps their volumes, and names them.
    res = ok(vmb("workshop", "down", str(path), timeout=600))
    said = " ".join(res.stderr.split())
    assert "kept 3 work volumes: " in said, res.stderr
    kept = said.split("kept 3 work volumes: ", 1)[1].split(" (", 1)[0]
    assert sorted(kept.split(", ")) == [f"{seat}-work" for seat in seats], res.stderr
    assert f"(vmbinder workshop down --delete-volumes {path} removes them)" in said
    assert "removed volume" not in said
    assert seats_on_cloud(testbed, "wsvol") == {}
    after = work_volumes_of(testbed, seats)
    for seat in seats:
        assert after[seat].id == volumes[seat].id
        assert (after[seat].status, after[seat].attachments) == ("available", [])
    listed = json.loads(ok(vmb("volumes", "--format", "json")).stdout)
    assert sorted((v["name"], v["status"], v["attached_to"], v["last_server"]) for v in listed) \
        == [(f"{seat}-work", "available", [], seat) for seat in seats]

    # One volume removed as a user would; the next up gives that seat a new one
    # and the other seats their own back.
    res = ok(vmb("volumes", "delete", "wsvol-03-work"))
    assert f"removed volume wsvol-03-work ({volumes['wsvol-03'].id})" in res.stderr
    res = ok(vmb("workshop", "up", str(path), "--no-wait", "--format", "json", timeout=600))
    assert [s["result"] for s in json.loads(res.stdout)["seats"]] == ["created"] * 3, res.stdout
    on_cloud = seats_on_cloud(testbed, "wsvol")
    again = work_volumes_of(testbed, seats)
    for seat in seats:
        assert [a["server_id"] for a in again[seat].attachments] == [on_cloud[seat].id]
        assert again[seat].size == 1
    for seat in ("wsvol-01", "wsvol-02"):
        assert again[seat].id == volumes[seat].id
        assert launch_document(testbed, seat)["volumes"]["work"]["created"] is False
    assert again["wsvol-03"].id != volumes["wsvol-03"].id
    assert launch_document(testbed, "wsvol-03")["volumes"]["work"]["created"] is True

    # down --delete-volumes removes them with the seats; nothing is left.
    res = ok(vmb("workshop", "down", str(path), "--delete-volumes", "--format", "json",
                 timeout=600))
    removed = json.loads(res.stdout)
    assert sorted((r["id"], r["name"]) for r in removed if r["kind"] == "volume") == \
        sorted((v.id, v.name) for v in again.values())
    assert sum(r["kind"] == "server" for r in removed) == 3
    assert "kept" not in res.stderr
    assert project_volumes(testbed) == {}
    assert json.loads(ok(vmb("volumes", "--format", "json")).stdout) == []
    only_the_keypair_is_left(testbed)


@pytest.mark.parametrize("size", ["lots", "0", "20000"])
def test_an_invalid_volume_is_refused_before_anything_is_made(
        testbed, vmb, tmp_path, ssh_key, no_work_volume_left, size):
    path = write_workshop(tmp_path, "wsbadvol", 2, f"volume: {size}\n")
    for command in (("check",), ("up", "--no-wait")):
        refused(vmb("workshop", *command, str(path)), 2,
                f"error: {path}:8: volume '{size}' is not a size in GB hint: give each seat's "
                "work volume size, 1 to 16384: volume: 10")
    assert testbed.owned() == []
    assert project_volumes(testbed) == {}
