"""Workshop files: every field checked before anything is created, with FILE:LINE messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmbinder.errors import BadRequest
from vmbinder.workshops import file as workshop

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "workshop.yaml"
HEAD = "name: ws\nsource: https://github.com/o/r\n"


def refused(text: str) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        workshop.parse(text, "w.yaml")
    assert info.value.exit_code == 2 and info.value.hint
    return info.value


def test_the_example_file_reads_as_documented():
    ws = workshop.load(EXAMPLE)
    assert ws.name == "genomics-101" and ws.path == EXAMPLE
    assert ws.source.repo == "https://github.com/binder-examples/requirements"
    assert ws.source.ref == "HEAD" and ws.source.open == "index.ipynb"
    assert [s.name for s in ws.seats] == ["genomics-101-01", "genomics-101-02", "genomics-101-03"]
    assert [s.participant.name for s in ws.seats] == ["Ada Lovelace", "Alan Turing", "Grace Hopper"]
    assert ws.seats[1].participant.email == "alan@example.org"
    assert [s.cloud.flavor for s in ws.seats] == ["m1.large", "m1.large", "m1.xlarge"]
    assert ws.tls == "acme" and ws.lifetime_s == 8 * 3600


@pytest.mark.parametrize("count, first, last", [(1, "ws-01", "ws-01"), (30, "ws-01", "ws-30"),
                                                (100, "ws-001", "ws-100"), (200, "ws-001", "ws-200")])
def test_seat_names_are_deterministic_and_sort(count, first, last):
    ws = workshop.parse(HEAD + f"seats: {count}\n")
    names = [s.name for s in ws.seats]
    assert (names[0], names[-1], len(names)) == (first, last, count)
    assert names == sorted(names) and [s.number for s in ws.seats] == list(range(1, count + 1))
    assert workshop.parse(HEAD + f"seats: {count}\n") == ws  # the same file, the same seats


def test_overrides_by_number_seat_name_and_participant():
    ws = workshop.parse(HEAD + "participants: [Ada, Alan, Grace]\nimage: img\nflavor: small\n"
                        "overrides:\n  '1': {flavor: big}\n  ws-02: {image: other}\n"
                        "  Grace: {hostname: Grace.Example.org.}\n")
    assert [(s.cloud.flavor, s.cloud.image, s.hostname) for s in ws.seats] == [
        ("big", "img", None), ("small", "other", None), ("small", "img", "grace.example.org")]


def test_floating_ip_config_drive_and_a_seats_network_are_cloud_keys_like_the_others():
    ws = workshop.parse(HEAD + "seats: 3\nconfig_drive: no\nfloating_ip: auto\n"
                        "overrides:\n  2: {network: public, config_drive: 'yes'}\n"
                        "  3: {floating_ip: yes, network: campus}\n")
    assert [(s.cloud.network, s.cloud.floating_ip, s.cloud.config_drive) for s in ws.seats] == [
        (None, "auto", "no"), ("public", "auto", "yes"), ("campus", "yes", "no")]
    plain = workshop.parse(HEAD + "seats: 1\n").seats[0].cloud
    assert (plain.floating_ip, plain.config_drive) == ("auto", "auto")


def test_a_workshop_opens_a_file_or_a_url_path():
    ws = workshop.parse(HEAD + "seats: 2\nurlpath: voila/render/a.ipynb?voila-theme=dark\n", "w.yaml")
    assert (ws.source.open, ws.source.urlpath) == (None, "voila/render/a.ipynb?voila-theme=dark")
    ws = workshop.parse(HEAD + "seats: 2\nopen: notebooks/a.ipynb\n", "w.yaml")
    assert (ws.source.open, ws.source.urlpath) == ("notebooks/a.ipynb", None)


@pytest.mark.parametrize("text, line, words", [
    (HEAD + "seats: 2\nconfig_drive: maybe\n", 4, "config_drive must be one of auto, yes, no"),
    (HEAD + "seats: 2\nfloating_ip: [yes]\n", 4, "floating_ip: auto"),
    (HEAD + "seats: 2\noverrides:\n  2: {floating_ip: sometimes}\n", 5, "floating_ip must be"),
    ("name: ws\nsource: https://github.com/o/r\nseats: [1\n", 4, "not valid YAML"),
    ("- a\n- b\n", None, "a mapping of keys"),
    ("source: https://github.com/o/r\nseats: 2\n", 1, "name is missing"),
    ("name: ws\nseats: 2\n", 1, "source is missing"),
    (HEAD, 1, "seats is missing"),
    ("name: Big_Name\nsource: https://github.com/o/r\nseats: 2\n", 1, "invalid name"),
    ("name: " + "a" * 60 + "\nsource: https://github.com/o/r\nseats: 2\n", 1, "invalid name"),
    ("name: ws\nsource: not a source\nseats: 2\n", 2, "source"),
    (HEAD + "ref: 'a b'\nseats: 2\n", 3, "ref 'a b'"),
    (HEAD + "seats: 2\nsubdir: ../up\n", 4, "'..'"),
    (HEAD + "seats: 2\nopen: \"a\\nb\"\n", 4, "one line"),
    (HEAD + "seats: 2\nopen: a.ipynb\nurlpath: lab\n", 4, "not both"),
    (HEAD + "seats: 2\nurlpath: 'lab#x'\n", 4, "'#'"),
    ("name: ws\nsource: 10.5281/zenodo.3242074\nseats: 2\nref: v1\n", 4, "git sources only"),
    (HEAD + "seats: 0\n", 3, "from 1 to 200"),
    (HEAD + "seats: 201\n", 3, "from 1 to 200"),
    (HEAD + "seats: thirty\n", 3, "whole number"),
    (HEAD + "seats: true\n", 3, "whole number"),
    (HEAD + "seats: 2\nparticipants: [a]\n", 3, "not both"),
    (HEAD + "participants: []\n", 3, "list of names"),
    (HEAD + "participants:\n  - Ada\n  - Ada\n", 5, "listed twice"),
    (HEAD + "participants:\n  - {name: Ada, email: nope}\n", 4, "not an email"),
    (HEAD + "participants:\n  - {name: Ada, phone: 1}\n", 4, "unknown key 'phone'"),
    (HEAD + "seats: 2\nflavour: big\n", 4, "did you mean flavor"),
    (HEAD + "seats: 2\nseats: 3\n", 4, "given twice"),
    (HEAD + "seats: 2\nflavor: [a, b]\n", 4, "text value"),
    (HEAD + "seats: 2\nref: yes\n", 4, "quoted"),
    (HEAD + "seats: 2\ntls: maybe\n", 4, "acme, internal, off"),
    (HEAD + "seats: 2\nlifetime: forever\n", 4, "90m, 8h, 3d"),
    (HEAD + "seats: 2\nlifetime: 0h\n", 4, "not a duration"),
    (HEAD + "seats: 2\nlifetime: 8h\nat_end: pause\n", 5, "shelve, stop, delete"),
    (HEAD + "seats: 2\nat_end: delete\n", 4, "add a lifetime"),
    (HEAD + "seats: 2\noverrides: [1]\n", 4, "map a seat"),
    (HEAD + "seats: 2\noverrides:\n  3: {flavor: x}\n", 5, "from 1 to 2"),
    (HEAD + "seats: 2\noverrides:\n  nobody: {flavor: x}\n", 5, "not a seat"),
    (HEAD + "seats: 2\noverrides:\n  1: {cores: 4}\n", 5, "unknown key 'cores'"),
    (HEAD + "seats: 2\noverrides:\n  1: {hostname: 'not a host'}\n", 5, "hostname"),
    (HEAD + "seats: 2\noverrides:\n  1: {flavor: a}\n  ws-01: {flavor: b}\n", 6, "twice"),
    (HEAD + "seats: 2\noverrides:\n  1: big\n", 5, "must be a mapping"),
    (HEAD + "seats: 2\nacme_ca: http://ca.example/dir\n", 4, "invalid acme_ca"),
    (HEAD + "seats: 2\ntls: internal\nacme_ca: https://ca.example/dir\n", 5, "only apply with tls acme"),
    (HEAD + "seats: 2\nwildcard_dns: 'sslip.io, a b'\n", 4, "invalid wildcard_dns entry 'a b'"),
    (HEAD + "seats: 2\nacme_ca: https://ca.example/dir\nacme_ca_root: nope.pem\n", 5,
     "cannot read acme_ca_root"),
])
def test_bad_files_are_refused_with_the_line(text, line, words):
    exc = refused(text)
    prefix = f"w.yaml:{line}: " if line else "w.yaml: "
    assert exc.message.startswith(prefix), exc.message
    assert words in exc.message + " " + exc.hint


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(BadRequest, match="no such workshop file"):
        workshop.load(tmp_path / "nope.yaml")


def test_workshop_check_prints_the_seats_and_refuses_bad_files(tmp_path):
    import json

    from click.testing import CliRunner

    from vmbinder.commands.main import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["workshop", "check", str(EXAMPLE)], catch_exceptions=False)
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith("workshop genomics-101: 3 seats of https://github.com/binder-examples")
    assert lines[-1].split()[:4] == ["genomics-101-03", "Grace", "Hopper", "m1.xlarge"]
    res = runner.invoke(cli, ["workshop", "check", "--format", "json", str(EXAMPLE)])
    doc = json.loads(res.stdout)
    assert [s["seat"] for s in doc["seats"]] == ["genomics-101-01", "genomics-101-02", "genomics-101-03"]
    assert doc["seats"][1]["email"] == "alan@example.org" and doc["lifetime_s"] == 28800
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "seats: 2\nflavour: big\n")
    res = runner.invoke(cli, ["workshop", "check", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:4: unknown key 'flavour'" in res.stderr and "did you mean flavor" in res.stderr


def test_a_private_acme_ca_for_every_seat(tmp_path):
    pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ==\n-----END CERTIFICATE-----\n"
    (tmp_path / "ca.pem").write_text(pem)
    path = tmp_path / "w.yaml"
    path.write_text("name: ws\nsource: https://github.com/o/r\nseats: 2\n"
                    "acme_ca: https://ca.example/dir\nacme_ca_root: ca.pem\nwildcard_dns: none\n")
    ws = workshop.load(path)
    assert (ws.acme.ca, ws.acme.ca_root, ws.acme.wildcard_dns) == ("https://ca.example/dir", pem, ())


def test_down_with_volumes_removes_only_this_users_work_volumes_unless_forced(monkeypatch):
    """Work volumes are found by name (<seat>-work): another user's volume of that
    name stays unless --force, as another user's seats do."""
    from vmbinder.providers.base import META, Removed, Volume
    from vmbinder.workshops import seats

    ws = workshop.parse(HEAD + "seats: 2\nvolume: 1\n")
    mine, theirs = (Volume(id=f"v{n}", name=f"{seat.name}-work", size_gb=1, status="available",
                           attached_to=(), metadata={META + "owner": owner})
                    for n, (seat, owner) in enumerate(zip(ws.seats, ("me", "someone"), strict=True)))

    class Target:
        deleted: list[str] = []

        def supports(self, verb):
            return verb == "volumes"

        def volumes(self):
            return [v for v in (mine, theirs) if v.name not in self.deleted]

        def current_owner(self):
            return "me"

        def delete_volume(self, volume):
            self.deleted.append(volume.name)
            return [Removed("volume", volume.id, volume.name)]

    monkeypatch.setattr(seats, "seats_of", lambda provider, w: {})
    monkeypatch.setattr(seats, "release_orphans", lambda provider, names: [])
    target = Target()
    removed = seats.down(target, ws, volumes=True)
    assert [r.name for r in removed] == [mine.name]
    assert [v.name for v in seats.work_volumes(target, ws)] == [theirs.name]  # kept, and said so
    removed = seats.down(target, ws, volumes=True, force=True)
    assert [r.name for r in removed] == [theirs.name] and seats.work_volumes(target, ws) == []
