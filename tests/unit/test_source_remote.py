"""Asking a git source's remote for its refs (vmbinder.sources.remote), against a
real repository made here with git."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from vmbinder.errors import BadRequest
from vmbinder.sources import parse_source, resolve_source
from vmbinder.sources.remote import ls_remote, parse_ls_remote, resolve

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main",
       "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A repository with main, feature/x (two commits on), an annotated tag v1 and a
    light tag v0; its commits by name."""
    repo = tmp_path_factory.mktemp("remote")
    git(repo, "init", "-q")
    (repo / "docs").mkdir()
    (repo / "docs" / "a.ipynb").write_text("{}")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "one")
    git(repo, "tag", "v0")
    git(repo, "tag", "-a", "v1", "-m", "release one")
    git(repo, "checkout", "-qb", "feature/x")
    (repo / "b.txt").write_text("b")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "two")
    git(repo, "checkout", "-q", "main")
    commits = {name: git(repo, "rev-parse", f"{name}^{{commit}}") for name in ("main", "feature/x", "v1")}
    return repo, commits


def forge(repo: Path, tail: str):
    """A GitHub tree/blob URL's parse, pointed at the repository made here."""
    return replace(parse_source(f"https://github.com/o/r/{tail}"), repo=str(repo))


def test_the_refs_are_listed_with_annotated_tags_peeled(remote):
    repo, commits = remote
    refs, why = ls_remote(str(repo))
    assert why == ""
    assert refs.head == commits["main"]
    assert refs.branches == {"main": commits["main"], "feature/x": commits["feature/x"]}
    assert refs.tags["v1"] == commits["v1"] == refs.tags["v0"]


def test_a_ref_holding_a_slash_is_split_where_the_remote_says(remote):
    repo, commits = remote
    found = resolve(forge(repo, "tree/feature/x/docs"))
    assert (found.source.ref, found.source.open, found.source.commit) == (
        "feature/x", "docs", commits["feature/x"])
    assert any("took 'feature/x' as the ref of 'feature/x/docs', opening 'docs'" in n
               for n in found.notes)
    assert any(f"feature/x is a branch of {repo}, at commit {commits['feature/x']}" in n
               for n in found.notes)


@pytest.mark.parametrize("tail, ref, opened", [
    ("blob/main/docs/a.ipynb", "main", "docs/a.ipynb"),
    ("tree/feature/x", "feature/x", None),
    ("tree/v1/docs", "v1", "docs"),
])
def test_the_longest_ref_the_remote_has_wins(remote, tail, ref, opened):
    repo, commits = remote
    found = resolve(forge(repo, tail))
    assert (found.source.ref, found.source.open) == (ref, opened)
    assert found.source.commit == commits["main" if ref == "v1" else ref]


def test_an_open_option_is_kept_when_the_ref_is_split(remote):
    repo, commits = remote
    source = replace(resolve_source("https://github.com/o/r/tree/feature/x/docs", open_path="b.txt"),
                     repo=str(repo))
    found = resolve(source)
    assert (found.source.ref, found.source.open) == ("feature/x", "b.txt")


def test_a_ref_option_says_where_the_url_path_begins():
    source = resolve_source("https://github.com/o/r/tree/feature/x/docs", ref="feature/x")
    assert (source.ref, source.open, source.ref_path) == ("feature/x", "docs", ())


def test_no_ref_is_the_default_branch_and_a_commit_is_itself(remote):
    repo, commits = remote
    plain = resolve(replace(parse_source("https://github.com/o/r"), repo=str(repo)))
    assert (plain.source.ref, plain.source.commit) == (None, commits["main"])
    pinned = resolve(replace(parse_source("https://github.com/o/r"), repo=str(repo),
                             ref=commits["feature/x"]))
    assert pinned.source.commit == commits["feature/x"]


def test_a_ref_the_remote_does_not_have_is_refused_before_anything_is_made(remote):
    repo, _ = remote
    with pytest.raises(BadRequest) as info:
        resolve(replace(parse_source("https://github.com/o/r"), repo=str(repo), ref="mian"))
    assert info.value.exit_code == 2
    assert "has no branch or tag 'mian'" in info.value.message
    assert "git ls-remote" in info.value.hint


def test_an_abbreviated_commit_is_left_to_the_server(remote):
    repo, commits = remote
    found = resolve(replace(parse_source("https://github.com/o/r"), repo=str(repo),
                            ref=commits["main"][:10]))
    assert found.source.commit is None and found.source.ref == commits["main"][:10]
    assert "abbreviated commit" in found.notes[-1]


def test_a_remote_that_cannot_be_asked_leaves_the_source_as_parsed(tmp_path):
    source = replace(forge(tmp_path, "tree/feature/x/docs"), repo=str(tmp_path / "nothing"))
    found = resolve(source)
    assert (found.source.ref, found.source.open, found.source.commit) == ("feature", "x/docs", None)
    assert "could not list the refs" in found.notes[0] and "the server resolves" in found.notes[0]
    assert "give it with --ref" in found.notes[1]


def test_git_refusing_the_transport_is_a_remote_that_cannot_be_asked():
    # The tests allow git only file:// and git:// (tests/conftest.py): no query leaves.
    found = resolve(parse_source("https://github.com/o/r"))
    assert found.source.commit is None
    assert "transport 'https' not allowed" in found.notes[0]


def test_sources_fetched_without_git_are_not_asked():
    asked = []
    found = resolve(parse_source("10.5281/zenodo.3242074"), lister=lambda url: asked.append(url))
    assert asked == [] and found.notes == ()


def test_the_url_the_guest_clones_is_asked_where_this_machine_reaches_it():
    from vmbinder.providers.local import LocalProvider

    seen = []
    local = LocalProvider.__new__(LocalProvider)
    resolve(parse_source("git://10.0.2.2:9418/repo.git"),
            lister=lambda url: (seen.append(url), (None, "x"))[1], here=local.url_from_here)
    assert seen == ["git://127.0.0.1:9418/repo.git"]


def test_ls_remote_output_other_refs_and_noise():
    sha = "a" * 40
    refs = parse_ls_remote(f"{sha}\tHEAD\n{sha}\trefs/pull/7/head\nwarning: x\n{'b' * 40}\trefs/tags/t\n")
    assert refs.commit("pull/7/head") == (sha, "a ref")
    assert refs.commit("t") == ("b" * 40, "a tag")
    assert refs.commit("nope") is None
