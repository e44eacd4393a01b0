"""Private repositories: the token's options and refusals, where the token goes
(the launch document only, a dry run shows <token>), how git gets it (its
environment, never a command line) against a real git smart-HTTP server that
wants basic authentication (tests/gitserver.py), and the guest forgetting it
after the build, run in a scratch root."""

from __future__ import annotations

import base64
import importlib
import json
import os
import pickle
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.gitserver import serve
from tests.unit.test_guest_script import Guest, jupyter, unpack  # noqa: F401 (jupyter: a fixture)
from vmbinder import cloudinit, launchdoc, lifecycle
from vmbinder.commands.main import cli
from vmbinder.errors import BadRequest
from vmbinder.sources import GitCredential, Source, parse_source, remote
from vmbinder.sources.credential import HELPER, git_env
from vmbinder.spec import MetadataLimits, make_spec, recorded

guest_script = importlib.import_module("vmbinder.cloud_init.vmbinder_guest")
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ghp_Pr1vateT0kenForTests_0123456789abcdef"
USER = "x-access-token"
URL = "https://git.example.org/group/private.git"


@pytest.fixture
def http_git(monkeypatch):
    """git may use http here (tests/conftest.py allows file and git:// only)."""
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "file:git:http")
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")


@pytest.fixture
def private_repo(http_git):
    with serve(ROOT / "examples" / "local-repo", user=USER, token=TOKEN) as served:
        yield served


def run(*args, env=None):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False, env=env)


def token_file(folder: Path, text: str, mode: int = 0o600) -> Path:
    path = folder / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


# -- the options ---------------------------------------------------------------------

def test_the_token_file_becomes_the_credential_in_the_launch_document(tmp_path):
    path = token_file(tmp_path, TOKEN + "\n")  # the line break echo and editors write
    res = run("launch", "--dry-run", "--format", "json", "--git-token-file", str(path), URL)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["git_credential"] == {"username": USER, "password": "<token>"}
    assert TOKEN not in res.output
    assert doc["user_data_b64_bytes"] == len(base64.b64encode(doc["user_data"].encode()))
    shown, _ = unpack(doc["user_data"])
    assert shown["git_credential"] == {"username": USER, "password": "<token>"}


@pytest.mark.parametrize("fmt", ["table", "json", "value"])
def test_no_dry_run_output_shows_the_token(tmp_path, fmt):
    res = run("launch", "--dry-run", "--format", fmt, "--git-token-env", "PRIVATE_TOKEN",
              "--git-user", "oauth2", URL, env={"PRIVATE_TOKEN": TOKEN})
    assert res.exit_code == 0, res.output
    assert TOKEN not in res.output and TOKEN[4:20] not in res.output
    if fmt == "value":  # the user-data itself
        assert unpack(res.stdout)[0]["git_credential"] == {"username": "oauth2", "password": "<token>"}


FILE = "<file>"
REFUSALS = [
    # (token file text and mode | None, extra args, env, message, hint)
    ((TOKEN, 0o644), [], {}, f"--git-token-file {FILE} may be read or changed by others (mode 0644); "
     "a token file must be its owner's alone", f"make it private: chmod 600 {FILE}"),
    ((TOKEN, 0o640), [], {}, f"--git-token-file {FILE} may be read or changed by others (mode 0640); "
     "a token file must be its owner's alone", f"make it private: chmod 600 {FILE}"),
    (("", 0o600), [], {}, f"--git-token-file {FILE} holds an empty token",
     "the file must hold the token alone, on one line (a final line break is fine)"),
    (("\n", 0o600), [], {}, f"--git-token-file {FILE} holds an empty token",
     "the file must hold the token alone, on one line (a final line break is fine)"),
    ((TOKEN + "\n" + TOKEN + "\n", 0o600), [], {},
     f"--git-token-file {FILE} holds a token with a space or line break in it",
     "the file must hold the token alone, on one line (a final line break is fine)"),
    ((TOKEN + "\n\n", 0o600), [], {},
     f"--git-token-file {FILE} holds a token with a space or line break in it",
     "the file must hold the token alone, on one line (a final line break is fine)"),
    (("token: " + TOKEN, 0o600), [], {},
     f"--git-token-file {FILE} holds a token with a space or line break in it",
     "the file must hold the token alone, on one line (a final line break is fine)"),
    ((TOKEN + '"', 0o600), [], {},
     f"--git-token-file {FILE} holds a token with characters other than letters, digits, '-', "
     "'.', '_', '~', '+', '/' and a trailing '=' (RFC 6750's token characters, which every "
     "forge's tokens use)",
     "the file must hold the token alone, on one line (a final line break is fine)"),
    (None, ["--git-token-file", "/nonexistent/token"], {},
     "cannot read --git-token-file /nonexistent/token: No such file or directory",
     "the file must hold the token alone, on one line (a final line break is fine)"),
    (None, ["--git-token-env", "PRIVATE_TOKEN"], {},
     "--git-token-env PRIVATE_TOKEN: the environment variable PRIVATE_TOKEN is not set",
     "export PRIVATE_TOKEN first, or give the token in a file with --git-token-file"),
    (None, ["--git-token-env", "PRIVATE_TOKEN"], {"PRIVATE_TOKEN": ""},
     "the environment variable PRIVATE_TOKEN holds an empty token",
     "the variable must hold the token alone, without spaces or line breaks"),
    (None, ["--git-token-env", "PRIVATE_TOKEN"], {"PRIVATE_TOKEN": TOKEN + "\n"},
     "the environment variable PRIVATE_TOKEN holds a token with a space or line break in it",
     "the variable must hold the token alone, without spaces or line breaks"),
    (None, ["--git-token-env", "PRIVATE_TOKEN"], {"PRIVATE_TOKEN": "x" * 1025},
     "the environment variable PRIVATE_TOKEN holds 1025 characters; a token has at most 1024",
     "the variable must hold the token alone, without spaces or line breaks"),
    *[(None, ["--git-token-env", value], {},
       "--git-token-env names no environment variable that is set (what was given is not "
       "shown: it may be the token itself)",
       "give the name of the variable that holds the token, e.g. --git-token-env GITHUB_TOKEN, "
       "not the token") for value in (TOKEN, "glpat-" + TOKEN[4:], "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCD")],
    ((TOKEN, 0o600), ["--git-token-env", "PRIVATE_TOKEN"], {"PRIVATE_TOKEN": TOKEN},
     "--git-token-file and --git-token-env both give the token", "give one of them"),
    (None, ["--git-user", "me"], {},
     "--git-user is the user name sent with a token, but no token was given",
     "give the token with --git-token-file FILE or --git-token-env VAR"),
    ((TOKEN, 0o600), ["--git-user", "me:you"], {},
     "--git-user 'me:you' is not a user name git can send",
     "give 1 to 255 letters, digits or '-', '.', '_', '~', '+', '@' (no ':' or spaces), or "
     "leave it out for x-access-token"),
]


@pytest.mark.parametrize("given, extra, env, message, hint", REFUSALS)
def test_a_bad_token_is_refused_before_anything_is_made(tmp_path, given, extra, env, message, hint):
    args = list(extra)
    if given is not None:
        path = token_file(tmp_path, *given)
        args = ["--git-token-file", str(path), *args]
    state = tmp_path / "state"
    res = run("--cloud", "local", "launch", *args, URL,
              env={**env, "XDG_STATE_HOME": str(state), "PRIVATE_TOKEN": env.get("PRIVATE_TOKEN")})
    assert res.exit_code == 2
    assert res.stdout == ""
    shown = res.stderr.replace(str(tmp_path / "token"), FILE)
    assert shown == f"error: {message}\nhint: {hint}\n"
    assert TOKEN not in res.stderr and TOKEN[4:] not in res.stderr
    assert not (state / "vmbinder").exists(), "something was made"


@pytest.mark.parametrize("source, kind", [
    ("10.5281/zenodo.3242074", "doi"),
    ("https://zenodo.org/records/3242074", "zenodo"),
    ("swh:1:dir:" + "a" * 40, "swh"),
    ("https://figshare.com/articles/dataset/title/9782777", "figshare"),
])
def test_a_token_is_for_git_sources_only(tmp_path, source, kind):
    res = run("launch", "--dry-run", "--git-token-env", "PRIVATE_TOKEN", source,
              env={"PRIVATE_TOKEN": TOKEN})
    assert res.exit_code == 2
    assert res.stderr == (f"error: a git token is for private git repositories; {source!r} is a "
                          f"{kind} source, fetched from the data repository without one\n"
                          "hint: leave out --git-token-file, --git-token-env and --git-user\n")


def test_git_protocol_urls_send_no_token():
    res = run("launch", "--dry-run", "--git-token-env", "PRIVATE_TOKEN",
              "git://git.example.org/private.git", env={"PRIVATE_TOKEN": TOKEN})
    assert res.exit_code == 2
    assert res.stderr == ("error: 'git://git.example.org/private.git' is fetched over git://, which "
                          "sends no token\nhint: give the repository's https:// URL\n")


def test_a_token_over_plain_http_elsewhere_than_this_machine_is_warned_of(monkeypatch, tmp_path):
    """The warning comes before anything is made; the cloud part is replaced here."""
    seen = {}

    def stop(provider, spec, reporter, **kw):
        seen["spec"] = spec
        raise BadRequest("stopped here", "")
    monkeypatch.setattr(lifecycle, "launch", stop)
    monkeypatch.setattr(remote, "ls_remote", lambda repo, timeout=0, credential=None: (None, "x"))
    for url, warned in (("http://git.example.org/p.git", True), ("http://10.0.2.2:8080/p.git", False)):
        res = run("--cloud", "local", "launch", "--git-token-env", "PRIVATE_TOKEN", url,
                  env={"PRIVATE_TOKEN": TOKEN, "XDG_STATE_HOME": str(tmp_path)})
        assert res.exit_code == 2
        assert ("the server sends the git token to it in clear text" in res.stderr) == warned
        assert seen["spec"].git_credential == GitCredential(USER, TOKEN)


def test_the_credential_urls_refusal_names_the_new_options():
    with pytest.raises(BadRequest) as info:
        parse_source(f"https://me:{TOKEN}@github.com/o/r")
    assert TOKEN not in info.value.message + info.value.hint
    assert "--git-token-file FILE or --git-token-env VAR" in info.value.hint


# -- where the token goes -------------------------------------------------------------

def occurrences(value, needle, path=()):
    """The key paths of a JSON document whose value holds needle."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in occurrences(v, needle, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in occurrences(v, needle, (*path, i))]
    return [path] if isinstance(value, str) and needle in value else []


def private_spec(**kw):
    src = Source(repo=kw.pop("repo", URL), kind="git", given=URL)
    return make_spec(src, name="private", git_credential=GitCredential(USER, TOKEN), **kw)


def test_the_token_is_in_the_launch_documents_credential_only():
    spec = private_spec()
    doc = launchdoc.document(spec, "203.0.113.9")
    assert occurrences(doc, TOKEN) == [("git_credential", "password")]
    assert doc["git_credential"] == {"username": USER, "password": TOKEN}
    user_data = cloudinit.render(spec, "203.0.113.9")
    assert user_data.count(TOKEN) == 1
    files = {f["path"]: f for f in yaml.safe_load(user_data)["write_files"]}
    assert files["/etc/vmbinder/launch.json"]["permissions"] == "0600"
    assert TOKEN in files["/etc/vmbinder/launch.json"]["content"]
    # Never what the server records (its metadata), nor the spec's repr.
    meta = recorded(spec, MetadataLimits(value_max=255))
    assert not [k for k, v in meta.items() if TOKEN in v]
    assert TOKEN not in repr(spec) and TOKEN not in repr(spec.git_credential)
    # A launch without one says so.
    assert launchdoc.document(make_spec(Source(URL, "git"), name="public"))["git_credential"] is None


def test_a_dry_run_renders_the_placeholder():
    doc = lifecycle.dry_run(private_spec())
    assert not occurrences(doc, TOKEN)
    assert doc["git_credential"] == {"username": USER, "password": "<token>"}
    assert doc["user_data_b64_bytes"] == len(base64.b64encode(doc["user_data"].encode()))


def test_the_launching_machine_asks_the_private_remote_with_the_token(private_repo):
    cred = GitCredential(USER, TOKEN)
    refs, why = remote.ls_remote(private_repo.here)
    assert refs is None and "Authentication failed" in why  # git asked nobody: GIT_ASKPASS=true
    refs, why = remote.ls_remote(private_repo.here, credential=GitCredential(USER, "wrong"))
    assert refs is None and "Authentication failed" in why and "wrong" not in why
    refs, why = remote.ls_remote(private_repo.here, credential=cred)
    assert refs is not None and refs.head and refs.branches["main"] == refs.head, why
    found = remote.resolve(Source(private_repo.url, "git"),
                           lister=partial(remote.ls_remote, credential=cred),
                           here=lambda url: url.replace("10.0.2.2", "127.0.0.1"))
    assert found.source.commit == refs.head


# -- the test server ------------------------------------------------------------------

def test_the_git_server_wants_the_user_and_token(private_repo, tmp_path):
    base = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    plain = subprocess.run(["git", "ls-remote", private_repo.here], capture_output=True,
                           text=True, env=base, check=False)
    assert plain.returncode == 128 and "could not read Username" in plain.stderr
    assert private_repo.requests == [("GET", "/repo.git/info/refs", False)]
    wrong = subprocess.run(["git", "ls-remote", private_repo.here], capture_output=True, text=True,
                           env={**base, **git_env(private_repo.here, GitCredential(USER, "nope"))},
                           check=False)
    assert wrong.returncode == 128 and "Authentication failed" in wrong.stderr
    good = subprocess.run(["git", "ls-remote", private_repo.here], capture_output=True, text=True,
                          env={**base, **git_env(private_repo.here, GitCredential(USER, TOKEN))},
                          check=False)
    assert good.returncode == 0, good.stderr
    assert "\tHEAD\n" in good.stdout and "\trefs/heads/main\n" in good.stdout
    assert private_repo.requests[-1][2], "the last request came without the token"


# -- the guest ------------------------------------------------------------------------

def guest_doc(url=URL, credential=True):
    spec = private_spec(repo=url) if credential else make_spec(Source(url, "git"), name="public")
    doc, _ = unpack(cloudinit.render(spec, "203.0.113.9"))
    return doc


def test_the_guest_gives_repo2docker_the_token_in_its_environment_only():
    doc = guest_doc()
    argv = guest_script.repo2docker_argv(doc)
    assert not [a for a in argv if TOKEN in a]
    env = guest_script.repo2docker_env(doc)
    assert env["GIT_CREDENTIAL_ENV"] == f"username={USER}\npassword={TOKEN}"  # repo2docker's format
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    # The twin on the launching machine sets exactly the same.
    assert {k: v for k, v in env.items() if k.startswith("GIT_CONFIG") or k == "GIT_CREDENTIAL_ENV"} \
        == git_env(URL, GitCredential(USER, TOKEN))
    assert env["GIT_CONFIG_KEY_1"] == "credential.https://git.example.org.helper"
    assert guest_script.GIT_HELPER == HELPER
    public = guest_script.repo2docker_env(guest_doc(credential=False))
    assert "GIT_CREDENTIAL_ENV" not in public or public["GIT_CREDENTIAL_ENV"] == os.environ.get(
        "GIT_CREDENTIAL_ENV")


def test_git_clones_with_the_guests_environment_and_no_command_line_holds_the_token(
        private_repo, tmp_path):
    """The real git, as repo2docker runs it (`git clone URL DIR`), in the environment
    the guest gives repo2docker; a credential helper configured for the user (a
    `store`, which would write the token to ~/.git-credentials) is never asked.
    GIT_TRACE shows every command git runs, the credential helper's included."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    env = guest_script.repo2docker_env(guest_doc(private_repo.url))
    env.update(HOME=str(home), GIT_TRACE="1")
    here = private_repo.url.replace("10.0.2.2", "127.0.0.1")
    env["GIT_CONFIG_KEY_1"] = env["GIT_CONFIG_KEY_1"].replace("10.0.2.2", "127.0.0.1")
    done = subprocess.run(["git", "clone", here, str(tmp_path / "clone")], capture_output=True,
                          text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "clone" / "Dockerfile").exists()
    assert "run_command: 'f() {" in done.stderr or "run_command: f() {" in done.stderr, done.stderr
    assert TOKEN not in done.stdout + done.stderr
    assert not (home / ".git-credentials").exists()
    assert TOKEN not in (tmp_path / "clone" / ".git" / "config").read_text()
    assert [r for r in private_repo.requests if r[2]], "git never authenticated"
    # Without the token the same clone fails without asking anyone.
    env.pop("GIT_CREDENTIAL_ENV")
    failed = subprocess.run(["git", "clone", here, str(tmp_path / "again")], capture_output=True,
                            text=True, env=env, check=False)
    assert failed.returncode == 128


#: Stands in for repo2docker: records its arguments (as the guest tests' recorder
#: does) and which git credential it was given; R2D_FAIL makes the build fail,
#: R2D_LEAK makes it print the credential, as a careless tool might.
R2D = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["RECORD"], "a") as fh:
    fh.write(json.dumps(["repo2docker"] + args) + "\\n")
if args == ["--version"]:
    print(os.environ["R2D_VERSION"])
    sys.exit(0)
with open(os.environ["R2D_ENV"], "w") as fh:
    json.dump({{k: v for k, v in os.environ.items() if k.startswith("GIT_")}}, fh)
if os.environ.get("R2D_LEAK"):
    print("cloning with", os.environ.get("GIT_CREDENTIAL_ENV"))
sys.exit(int(os.environ.get("R2D_FAIL", "0")))
"""


def private_guest(tmp_path, jupyter):  # noqa: F811 (jupyter: the fixture's value)
    guest = Guest(tmp_path, jupyter, private_spec())
    r2d = guest.root / "opt/vmbinder/repo2docker/bin/repo2docker"
    r2d.write_text(R2D.format(python=sys.executable))
    # cloud-init's copies of the user-data, as it keeps them.
    user_data = cloudinit.render(guest.spec, "203.0.113.9").encode()
    instance = guest.root / "var/lib/cloud/instances/i-0001"
    (instance / "scripts").mkdir(parents=True)
    (instance / "user-data.txt").write_bytes(user_data)
    (instance / "user-data.txt.i").write_bytes(b"Content-Type: text/cloud-config\n\n" + user_data)
    (instance / "cloud-config.txt").write_bytes(user_data)
    (instance / "obj.pkl").write_bytes(pickle.dumps({"userdata_raw": user_data,
                                                     "text": user_data.decode()}))
    (instance / "scripts" / "runcmd").write_text("python3 /usr/local/lib/vmbinder/vmbinder-guest.py run\n")
    (guest.root / "var/lib/cloud/instance").symlink_to(instance)
    run_dir = guest.root / "run/cloud-init"
    run_dir.mkdir(parents=True)
    (run_dir / "combined-cloud-config.json").write_text(json.dumps({"write_files": [
        {"content": json.dumps(guest.doc)}]}))
    elsewhere = guest.root / "etc/unrelated.txt"
    elsewhere.write_text(f"not cloud-init's: {TOKEN}\n")
    return guest, instance


def copies(guest) -> dict[str, bytes]:
    return {str(p.relative_to(guest.root)): p.read_bytes()
            for top in ("var/lib/cloud", "run/cloud-init") for p in (guest.root / top).rglob("*")
            if p.is_file() and not p.is_symlink()}


def test_after_the_build_the_guest_forgets_the_token(tmp_path, jupyter):  # noqa: F811
    guest, instance = private_guest(tmp_path, jupyter)
    before = copies(guest)
    assert sum(TOKEN.encode() in data for data in before.values()) == 5  # all but runcmd
    res = guest.run(R2D_ENV=str(tmp_path / "r2d-env.json"))
    assert res.returncode == 0, res.stderr
    # repo2docker had it, in its environment.
    given = json.loads((tmp_path / "r2d-env.json").read_text())
    assert given["GIT_CREDENTIAL_ENV"] == f"username={USER}\npassword={TOKEN}"
    for call in guest.calls():
        assert TOKEN not in " ".join(call), f"the token in the arguments of {call[0]}"
    # The launch document: the same, without it, still 0600.
    launch = guest.root / "etc/vmbinder/launch.json"
    now = json.loads(launch.read_text())
    assert now == {**guest.doc, "git_credential": None}
    assert launch.stat().st_mode & 0o777 == 0o600
    # cloud-init's copies: every occurrence masked in place, lengths kept.
    after = copies(guest)
    assert after.keys() == before.keys()
    mask = b"*" * len(TOKEN)
    for path, data in after.items():
        assert TOKEN.encode() not in data, path
        assert data == before[path].replace(TOKEN.encode(), mask), path
    cached = pickle.loads((instance / "obj.pkl").read_bytes())
    assert mask.decode() in cached["text"] and len(cached["userdata_raw"]) == len(cached["text"])
    assert (guest.root / "var/lib/cloud/instance").is_symlink()
    # Not cloud-init's, not touched.
    assert TOKEN in (guest.root / "etc/unrelated.txt").read_text()
    # Nothing the guest wrote holds it: logs, state, console, units.
    for path in guest.root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "unrelated.txt":
            assert TOKEN.encode() not in path.read_bytes(), path
    assert guest.state()["ready"] is True
    # A second run finds nothing to forget and changes nothing.
    assert guest.run(R2D_ENV=str(tmp_path / "r2d-env.json")).returncode == 0
    assert json.loads(launch.read_text()) == now


def test_a_failed_build_forgets_it_too_and_the_report_hides_it(tmp_path, jupyter):  # noqa: F811
    guest, _ = private_guest(tmp_path, jupyter)
    res = guest.run(R2D_ENV=str(tmp_path / "r2d-env.json"), R2D_FAIL="1", R2D_LEAK="1")
    assert res.returncode == 1
    state = guest.state()
    assert (state["phase"], state["status"]) == ("build", "failed")
    # The commands log got what the careless build printed; the report hides it.
    assert TOKEN in (guest.root / "var/log/vmbinder/commands.log").read_text()
    assert "cloning with username=x-access-token" in "\n".join(state["log"])
    assert any("password=<token>" in line for line in state["log"])
    console = (guest.root / "dev/console").read_text()
    assert TOKEN not in console and TOKEN not in json.dumps(state)
    assert json.loads((guest.root / "etc/vmbinder/launch.json").read_text())["git_credential"] is None
    assert not [p for p, data in copies(guest).items() if TOKEN.encode() in data]


def test_a_server_started_from_a_snapshot_forgets_the_token_without_building(tmp_path, jupyter):  # noqa: F811
    guest, _ = private_guest(tmp_path, jupyter)
    docker = guest.bin / "docker"
    docker.write_text(docker.read_text().replace("sys.exit(0 if built else 1)", "sys.exit(0)"))
    assert guest.run(R2D_ENV=str(tmp_path / "r2d-env.json")).returncode == 0
    assert not (tmp_path / "r2d-env.json").exists(), "it built"
    assert json.loads((guest.root / "etc/vmbinder/launch.json").read_text())["git_credential"] is None
    assert not [p for p, data in copies(guest).items() if TOKEN.encode() in data]
