"""Whose servers the commands show and delete: the user's own by default, the
project's with --all; another user's is deleted only with --force. A server
with no recorded owner is everyone's, and so is every server of a target with
one user (the local one)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.unit.fakes import FakeProvider
from tests.unit.test_batch import BatchFake, workshop
from vmbinder import errors, lifecycle, scope
from vmbinder.providers.base import ACTIVE, ERROR, META, Server
from vmbinder.workshops import seats
from vmbinder.workshops.up import run

ME, THEM = "u-me", "u-them"


def server(name, owner=None, state=ACTIVE, **meta):
    values = {META + "token": "t0k", META + "tls": "off", **{META + k: v for k, v in meta.items()}}
    if owner:
        values[META + "owner"] = owner
    return Server(f"id-{name}", name, state, state.upper(), "203.0.113.7", values)


class Project(FakeProvider):
    """A cloud project's servers, seen by user ME (user None: a target with one user)."""

    def __init__(self, *servers: Server, user: str | None = ME):
        super().__init__()
        self.user = user
        self.servers = {s.id: s for s in servers}

    def current_owner(self):
        return self.user


def shared() -> Project:
    return Project(server("mine", ME), server("theirs", THEM), server("old"))


def test_a_user_sees_their_own_servers_and_those_with_no_recorded_owner():
    mine, others = scope.whose(shared(), list(shared().servers.values()))
    assert [s.name for s in mine] == ["mine", "old"] and [s.name for s in others] == ["theirs"]
    one_user = Project(server("a", "someone"), server("b"), user=None)
    assert [s.name for s in scope.whose(one_user, list(one_user.servers.values()))[0]] == ["a", "b"]


def test_another_users_server_is_refused_by_name_naming_the_owner_and_all():
    project = shared()
    assert scope.find(project, "mine").name == "mine"
    assert scope.find(project, "old").name == "old"
    with pytest.raises(errors.BadRequest) as info:
        scope.find(project, "theirs", command="url")
    assert info.value.message == ("vmbinder server 'theirs' was launched by another user of "
                                  f"the project ({THEM})")
    assert info.value.hint == "to see it anyway: vmbinder url --all theirs"
    assert info.value.exit_code == 2  # as for a name that is not there
    assert scope.find(project, "id-theirs", everyone=True).name == "theirs"
    with pytest.raises(errors.BadRequest) as info:
        scope.find(project, "nope")
    assert "no vmbinder server named 'nope'" in info.value.message
    assert "theirs" not in info.value.hint  # the candidates are the user's own


def test_delete_of_another_users_server_is_refused_and_nothing_is_deleted():
    project = shared()
    with pytest.raises(errors.BadRequest) as info:
        lifecycle.delete(project, ["mine", "theirs", "old"])
    assert info.value.message == ("not deleting servers another user of the project launched: "
                                  f"theirs (owner {THEM})")
    assert info.value.hint == ("nothing was deleted; to delete them anyway: "
                               "vmbinder delete --force mine theirs old")
    assert len(project.servers) == 3
    removed = lifecycle.delete(project, ["mine", "old"])
    assert sorted(r.name for r in removed) == ["mine", "old"]
    removed = lifecycle.delete(project, ["theirs"], force=True)
    assert [r.name for r in removed] == ["theirs"] and project.servers == {}


def test_on_a_target_with_one_user_every_server_is_theirs():
    project = Project(server("a", "someone-else"), user=None)
    assert scope.find(project, "a").name == "a"
    assert [r.name for r in lifecycle.delete(project, ["a"])] == ["a"]


# -- the commands -----------------------------------------------------------------

@pytest.fixture
def cli(monkeypatch, tmp_path):
    from vmbinder.commands import main as cli_module

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")

    def invoke(provider, *args):
        monkeypatch.setattr(cli_module.Context, "provider", property(lambda self: provider))
        return CliRunner().invoke(cli_module.cli, ["--cloud", "x", *args], catch_exceptions=False)

    return invoke


def test_list_shows_the_users_servers_and_all_the_projects_with_their_owners(cli):
    project = shared()
    res = cli(project, "list", "--format", "json")
    assert res.exit_code == 0
    assert [(d["name"], d["owner"]) for d in json.loads(res.stdout)] == [("mine", ME), ("old", None)]
    res = cli(project, "list", "--all", "--format", "json")
    assert [(d["name"], d["owner"]) for d in json.loads(res.stdout)] == [
        ("mine", ME), ("theirs", THEM), ("old", None)]
    res = cli(project, "list")
    assert "theirs" not in res.stdout and "owner" not in res.stdout
    assert "1 more launched by other users of the project: vmbinder list --all" in res.stderr
    res = cli(project, "list", "--all")
    assert "owner" in res.stdout and THEM in res.stdout and "you" in res.stdout
    assert "more launched" not in res.stderr
    values = cli(project, "list", "--all", "--format", "value").stdout.splitlines()
    assert [line.split("\t")[0::4] for line in values] == [["mine", ME], ["theirs", THEM], ["old", ""]]
    res = cli(Project(server("theirs", THEM)), "list")
    assert "no vmbinder servers of yours in this project" in res.stderr


def test_status_and_url_of_another_users_server_need_all(cli):
    project = shared()
    for command in ("status", "url"):
        res = cli(project, command, "theirs")
        assert res.exit_code == 2 and res.stdout == ""
        assert "launched by another user" in res.stderr
        assert f"vmbinder {command} --all theirs" in res.stderr
        assert cli(project, command, "--all", "theirs").exit_code == 0
        assert cli(project, command, "old").exit_code == 0
    assert cli(project, "url", "--all", "theirs").stdout.startswith("http://203.0.113.7/")
    assert json.loads(cli(project, "status", "mine", "--format", "json").stdout)["owner"] == ME


def test_delete_of_another_users_server_needs_force(cli):
    project = shared()
    res = cli(project, "delete", "mine", "theirs")
    assert res.exit_code == 2 and "not deleting servers" in res.stderr
    assert "vmbinder delete --force mine theirs" in res.stderr
    assert len(project.servers) == 3
    res = cli(project, "delete", "--force", "mine", "theirs", "--format", "value")
    assert res.exit_code == 0 and res.stdout.count("server\t") == 2
    assert [s.name for s in project.servers.values()] == ["old"]


# -- workshops: the seats are found whoever launched them ----------------------------

class Seats(BatchFake):
    def __init__(self, user=ME):
        super().__init__()
        self.user = user

    def current_owner(self):
        return self.user

    def hand_to(self, owner, *names, state=None):
        """The seats, as if another user had launched them."""
        for sid, s in list(self.servers.items()):
            if s.name in names:
                meta = {**s.metadata, META + "owner": owner}
                self.servers[sid] = Server(s.id, s.name, state or s.state, s.cloud_status,
                                           s.address, meta)


def test_workshop_status_sees_every_seat_and_down_of_another_users_needs_force():
    p = Seats()
    ws = workshop(3)
    run(p, ws, wait=False, fan_out=False)
    p.hand_to(THEM, "course-02")
    assert [st.state for st in seats.status(p, ws)] == [ACTIVE] * 3
    with pytest.raises(errors.BadRequest) as info:
        seats.down(p, ws)
    assert info.value.message == ("not deleting seats another user of the project launched: "
                                  f"course-02 (owner {THEM})")
    assert "vmbinder workshop down --force" in info.value.hint
    assert len(p.servers) == 3  # none removed
    removed = seats.down(p, ws, force=True)
    assert sorted(r.name for r in removed) == ["course-01", "course-02", "course-03"]


def test_workshop_up_keeps_another_users_seat_and_refuses_to_replace_a_failed_one():
    p = Seats()
    ws = workshop(2)
    run(p, ws, wait=False, fan_out=False)
    p.hand_to(THEM, "course-01")
    assert [r.action for r in run(p, ws, wait=False, fan_out=False).seats] == ["kept", "kept"]
    p.hand_to(THEM, "course-01", state=ERROR)
    with pytest.raises(errors.BadRequest) as info:
        run(p, ws, wait=False, fan_out=False)
    assert "course-01 (owner u-them)" in info.value.message
    assert "vmbinder delete --force course-01, then run up again" in info.value.hint
    assert len(p.servers) == 2 and ("delete", "course-01") not in p.events
