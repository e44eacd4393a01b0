"""The one part of reading a source that asks the network: the remote's refs,
from `git ls-remote` on the launching machine. They tell where a ref holding
'/' ends in a forge URL's tree/<ref>/<path>, and which commit a ref names, so
the server builds exactly that commit and records it.

When the remote cannot be asked (no git here, no answer, a private remote),
the text is read as it was parsed and the server resolves the ref itself; the
notes say so."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace

from .common import Source, excerpt, refuse
from .credential import GitCredential, git_env

#: How long the remote may take to list its refs.
TIMEOUT = 20.0
SHA_RE = re.compile(r"[0-9a-f]{40}\Z")
_SHORT_SHA_RE = re.compile(r"[0-9a-f]{7,39}\Z")
GIT_KINDS = frozenset({"git", "gist"})


@dataclass(frozen=True)
class Refs:
    """What `git ls-remote` listed: HEAD's commit, and each branch's and tag's (a
    tag's peeled commit where it is annotated), by short name."""
    head: str | None = None
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)  # refs/pull/..., refs/merge-requests/...

    def commit(self, ref: str) -> tuple[str, str] | None:
        """(commit, what ref is) for a ref as git would read it, or None."""
        if ref == "HEAD":
            return (self.head, "the default branch") if self.head else None
        if ref in self.branches:
            return self.branches[ref], "a branch"
        if ref in self.tags:
            return self.tags[ref], "a tag"
        full = ref if ref.startswith("refs/") else "refs/" + ref
        if full in self.other:
            return self.other[full], "a ref"
        return None


def parse_ls_remote(text: str) -> Refs:
    head, branches, tags, other = None, {}, {}, {}
    for line in text.splitlines():
        sha, _, name = line.partition("\t")
        if not SHA_RE.match(sha):
            continue
        if name == "HEAD":
            head = sha
        elif name.startswith("refs/heads/"):
            branches[name[len("refs/heads/"):]] = sha
        elif name.startswith("refs/tags/"):
            tag = name[len("refs/tags/"):]
            if tag.endswith("^{}"):
                tags[tag[:-3]] = sha  # the commit an annotated tag points to wins
            else:
                tags.setdefault(tag, sha)
        elif name.startswith("refs/"):
            other[name] = sha
    return Refs(head, branches, tags, other)


def ls_remote(repo: str, timeout: float = TIMEOUT,
              credential: GitCredential | None = None) -> tuple[Refs | None, str]:
    """The remote's refs, or None and why not. Never prompts: a remote that wants
    credentials it was not given counts as not answering. A credential reaches git
    in its environment only (credential.git_env)."""
    git = shutil.which("git")
    if git is None:
        return None, "git is not installed here"
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true",
           "GCM_INTERACTIVE": "never", "LC_ALL": "C",
           **(git_env(repo, credential) if credential else {})}
    try:
        res = subprocess.run([git, "ls-remote", "--", repo], capture_output=True, text=True,
                             timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {timeout:.0f} s"
    if res.returncode != 0:
        lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        return None, (lines[-1] if lines else f"git ls-remote exited {res.returncode}")[:200]
    return parse_ls_remote(res.stdout), ""


@dataclass(frozen=True)
class Resolved:
    source: Source
    notes: tuple[str, ...] = ()


def resolve(source: Source, lister=ls_remote, here=lambda url: url) -> Resolved:
    """The source with its ref split where the remote's refs say (a forge URL's
    tree/<ref>/<path>) and its commit found. Sources fetched without git, and
    remotes that do not answer, are returned as parsed, with a note. here maps
    the URL the server clones to the one this machine asks."""
    if source.kind not in GIT_KINDS:
        return Resolved(source)
    refs, why = lister(here(source.repo))
    if refs is None:
        notes = [f"could not list the refs of {source.repo} ({why}); the server resolves "
                 f"{'the ref ' + repr(source.ref) if source.ref else 'its default branch'}"]
        if source.ref_path:
            notes.append(f"took {source.ref!r} as the ref of {'/'.join(source.ref_path)!r}; "
                         "if the ref holds '/', give it with --ref")
        return Resolved(replace(source, ref_path=()), tuple(notes))
    notes = []
    if source.ref_path:
        source, note = _split(source, refs)
        notes.append(note)
    ref = source.ref or "HEAD"
    if SHA_RE.match(ref):
        return Resolved(replace(source, commit=ref), tuple(notes))
    found = refs.commit(ref)
    if found is None:
        if _SHORT_SHA_RE.match(ref):
            notes.append(f"{ref!r} is no branch or tag of {source.repo}; the server checks it "
                         "out as an abbreviated commit")
            return Resolved(source, tuple(notes))
        raise refuse(f"{source.repo} has no branch or tag {excerpt(ref)}",
                     "give a branch, a tag or a commit the remote has (git ls-remote "
                     f"{source.repo} lists them)")
    commit, what = found
    notes.append(f"{ref} is {what} of {source.repo}, at commit {commit}")
    return Resolved(replace(source, commit=commit), tuple(notes))


def _split(source: Source, refs: Refs) -> tuple[Source, str]:
    """tree/<a>/<b>/<c>: the longest a/b... the remote has as a branch or tag is the
    ref, the rest the path to open."""
    segs = source.ref_path
    # What to open is the URL's path unless --open or --urlpath said otherwise.
    from_url = source.urlpath is None and source.open == ("/".join(segs[1:]) or None)
    for i in range(len(segs), 0, -1):
        ref = "/".join(segs[:i])
        if ref in refs.branches or ref in refs.tags:
            rest = "/".join(segs[i:]) or None
            opened = f", opening {rest!r}" if rest and from_url else ""
            return (replace(source, ref=ref, open=rest if from_url else source.open, ref_path=()),
                    f"took {ref!r} as the ref of {'/'.join(segs)!r}{opened}")
    return (replace(source, ref_path=()),
            f"took {source.ref!r} as the ref of {'/'.join(segs)!r}: no branch or tag of the "
            "remote matches a longer part")
