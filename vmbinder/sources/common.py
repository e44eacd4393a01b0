"""The Source record, the forms and kinds of source accepted, and the small
helpers the detectors and link parsers share: message excerpts, the refusal,
name checks and the GitHub repository URL."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from vmbinder.errors import BadRequest

ACCEPTED_FORMS = """\
Accepted sources (one example each):
  git URL               https://git.example.org/group/project.git
  git over ssh          git@github.com:owner/repo.git  (public hosts only, fetched over https)
  GitHub repository     https://github.com/owner/repo  (also github.com/owner/repo, gh:owner/repo)
  GitHub branch/folder  https://github.com/owner/repo/tree/main/notebooks  (the folder is opened)
  GitHub file to open   https://github.com/owner/repo/blob/main/index.ipynb
  GitLab                https://gitlab.com/group/sub/project/-/tree/main/binder
  Codeberg, Forgejo     https://codeberg.org/owner/repo/src/branch/main/index.ipynb
  GitHub gist           https://gist.github.com/user/0123456789abcdef0123456789abcdef
  nbviewer              https://nbviewer.org/github/owner/repo/blob/main/index.ipynb
  DOI                   10.5281/zenodo.3242074  (also doi:10.5281/..., https://doi.org/10.5281/..., its badge)
  Zenodo record         https://zenodo.org/records/3242074
  Figshare article      https://figshare.com/articles/dataset/title/9782777
  Dataverse dataset     https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP
  HydroShare resource   https://www.hydroshare.org/resource/8f7c2f0341ef4180b0dbe97f59130756
  CKAN dataset          https://demo.ckan.org/dataset/sample-dataset-1
  Software Heritage     swh:1:dir:<40 hex digits>  (or swh:1:rev:..., or its archive page)
  Binder launch link    https://mybinder.org/v2/gh/owner/repo/HEAD?labpath=index.ipynb
  Binder badge          [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/owner/repo/HEAD)"""

KINDS = ("git", "doi", "zenodo", "figshare", "dataverse", "hydroshare", "swh", "gist", "ckan")
# repo2docker fetches these without git, so its --ref means nothing to them.
# (CKAN is left out: its detection here is a guess from the URL path.)
NO_REF_KINDS = frozenset({"doi", "zenodo", "figshare", "dataverse", "hydroshare", "swh"})
MAX_LEN = 255
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")
DOI_RE = re.compile(r"10\.\d+(?:\.\d+)*/\S+\Z")


@dataclass(frozen=True)
class Source:
    repo: str            # exactly what repo2docker will be given: a URL, a bare DOI or a SWHID
    kind: str            # one of KINDS
    ref: str | None = None
    subdir: str | None = None
    open: str | None = None     # a file or folder of the repository, opened in JupyterLab
    urlpath: str | None = None  # or a URL path on the server, with an optional query
    #: A forge URL's segments after tree/ or blob/ (ref and path, split where a ref
    #: holding '/' ends: remote.resolve_ref); empty when the text named the ref alone.
    ref_path: tuple[str, ...] = ()
    #: The commit the ref named when the launch asked the remote (remote.resolve).
    commit: str | None = None
    given: str = ""             # what the user typed, stripped


#: The whole parser (parse.parse_source), handed to every detector: a Binder
#: link's git or ckan spec is itself a source, read by the same rules.
Parse = Callable[[str], Source]


def excerpt(text: str, limit: int = 60) -> str:
    """The text as a message shows it: quoted, cut after `limit` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def refuse(message: str, hint: str = ACCEPTED_FORMS) -> BadRequest:
    return BadRequest(message, hint)


def has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def strip_git(name: str) -> str:
    return name.removesuffix(".git")


def check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value) or value.startswith("-"):
        raise refuse(f"{what} {excerpt(value)} is not a valid name")
    return value


def github_repo(owner: str, repo: str) -> Source:
    owner, repo = check_name(owner, "GitHub owner"), check_name(strip_git(repo), "GitHub repository")
    return Source(f"https://github.com/{owner}/{repo}", "git")
