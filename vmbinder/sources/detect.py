"""The detectors: text -> Source, or None when the text is not their kind, or
BadRequest when it is but cannot be used. DETECTORS is tried in order, first
match wins; an http(s) URL goes on through _WEB_DETECTORS, a git URL last.
Each detector cites the upstream rule it copies."""

from __future__ import annotations

import re
from dataclasses import replace
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from .common import DOI_RE, Parse, Source, check_name, excerpt, github_repo, has_control, refuse, strip_git
from .links import binder_link, link_gist, other_binder_page

_GIT_SCHEMES = ("https", "http", "ssh", "git")  # BinderHub GitRepoProvider.allowed_protocols
_BARE_HOSTS = frozenset(
    {"github.com", "www.github.com", "gist.github.com", "gitlab.com", "zenodo.org",
     "www.zenodo.org", "sandbox.zenodo.org", "figshare.com", "hydroshare.org",
     "www.hydroshare.org", "mybinder.org", "codeberg.org", "nbviewer.org"}
)
#: Hosts whose repositories are public over https: their SSH URLs are read as that.
_PUBLIC_HOSTS = frozenset({"github.com", "gist.github.com", "gitlab.com", "codeberg.org",
                           "bitbucket.org"})
#: How a private repository is launched (sources/credential.py).
_PRIVATE_HOW = ("private repositories take the https URL and the token with --git-token-file "
                "FILE or --git-token-env VAR (--git-user NAME if the host wants a user name): the "
                "token goes to the server for the clone only, never into its metadata")


def _segments(path: str) -> list[str]:
    return [unquote(s) for s in path.split("/") if s]


def _tree_blob(base: Source, rest: list[str], show: str) -> Source:
    """The tail of a forge web URL: tree/<ref>[/<path>] and blob/<ref>/<path> (GitHub,
    GitLab), src/branch|tag|commit/<ref>[/<path>] (Gitea, Forgejo: Codeberg),
    releases/tag/<tag>, commit/<sha>. It names a ref and a folder or file to show,
    which is opened, not built from (repo2docker's --subdir would make that folder
    the whole build). A ref may hold '/': ref_path keeps the segments for
    remote.resolve_ref, which splits them against the remote's refs; until then the
    first segment is the ref."""
    if not rest:
        return base
    if rest[0] in ("tree", "blob") and len(rest) >= 2:
        tail = rest[1:]
    elif rest[0] == "src" and len(rest) >= 3 and rest[1] in ("branch", "tag", "commit"):
        tail = rest[2:]
    elif rest[:2] == ["releases", "tag"] and len(rest) == 3:
        return replace(base, ref=rest[2])
    elif rest[0] == "commit" and len(rest) == 2:
        return replace(base, ref=rest[1])
    else:
        raise refuse(f"{show} is a page of the repository, not a link to the repository, "
                     "a tree (branch/directory), a blob (file), a release or a commit")
    return replace(base, ref=tail[0], open="/".join(tail[1:]) or None,
                   ref_path=tuple(tail) if len(tail) > 1 else ())


def _github(u: SplitResult, text: str, parse: Parse) -> Source | None:
    if u.hostname not in ("github.com", "www.github.com"):
        return None
    segs = _segments(u.path)
    if len(segs) < 2:
        raise refuse(f"{excerpt(text)} names no repository (https://github.com/OWNER/REPO)")
    return _tree_blob(github_repo(segs[0], segs[1]), segs[2:], excerpt(text))


def _codeberg(u: SplitResult, text: str, parse: Parse) -> Source | None:
    # Forgejo and Gitea put the ref and path under src/branch|tag|commit/; a self-hosted
    # one is told apart by that path, codeberg.org by its name.
    segs = _segments(u.path)
    if u.hostname != "codeberg.org" and not (len(segs) >= 5 and segs[2] == "src"
                                              and segs[3] in ("branch", "tag", "commit")):
        return None
    if len(segs) < 2:
        raise refuse(f"{excerpt(text)} names no repository (https://{u.hostname}/OWNER/REPO)")
    owner, repo = check_name(segs[0], "owner"), check_name(strip_git(segs[1]), "repository")
    return _tree_blob(Source(f"https://{u.netloc}/{owner}/{repo}", "git"), segs[2:], excerpt(text))


def _nbviewer(u: SplitResult, text: str, parse: Parse) -> Source | None:
    # nbviewer.org/github/OWNER/REPO[/blob|tree/REF/PATH] and /gist/[USER/]ID show a
    # repository's notebook; /url/ and /urls/ show a file at a URL, no repository.
    if u.hostname not in ("nbviewer.org", "nbviewer.jupyter.org"):
        return None
    segs = _segments(u.path)
    if len(segs) >= 3 and segs[0] == "github":
        return _tree_blob(github_repo(segs[1], segs[2]), segs[3:], excerpt(text))
    if 2 <= len(segs) <= 4 and segs[0] == "gist":
        return link_gist("/".join(segs[1:])) if len(segs) > 2 else \
            Source(f"https://gist.github.com/{check_name(segs[1], 'gist id')}.git", "gist")
    raise refuse(f"{excerpt(text)} shows a notebook file, not a repository",
                 "give the repository the notebook is in, with --open for the notebook")


def _software_heritage(u: SplitResult, text: str, parse: Parse) -> Source | None:
    # The archive's browser: /swh:1:dir:HASH;.../ (a SWHID in the path) or
    # /browse/directory|revision/HASH/; an origin page names no fixed content.
    if u.hostname != "archive.softwareheritage.org":
        return None
    m = re.search(r"swh:1:(?:dir|rev):[0-9a-fA-F]{40}", unquote(u.path))
    if m:
        return parse(m.group())
    m = re.match(r"/browse/(directory|revision)/([0-9a-f]{40})/?\Z", u.path)
    if m:
        return parse(f"swh:1:{m.group(1)[:3]}:{m.group(2)}")
    raise refuse(f"{excerpt(text)} is a Software Heritage page without a fixed directory or "
                 "revision", "copy the swh:1:dir:... id from the page's Permalinks tab")


def _gist(u: SplitResult, text: str, parse: Parse) -> Source | None:
    if u.hostname != "gist.github.com":
        return None
    segs = _segments(u.path)
    if not 1 <= len(segs) <= 3:
        raise refuse(f"{excerpt(text)} is not a gist link (https://gist.github.com/USER/ID)")
    if len(segs) == 1:
        return Source(f"https://gist.github.com/{check_name(strip_git(segs[0]), 'gist id')}.git", "gist")
    return link_gist("/".join(segs))


def _gitlab(u: SplitResult, text: str, parse: Parse) -> Source | None:
    if "/-/" in u.path:
        project, _, tail = u.path.partition("/-/")
    elif u.hostname == "gitlab.com":
        project, tail = u.path, ""
    else:
        return None
    project = strip_git("/".join(_segments(project)))
    if "/" not in project:
        raise refuse(f"{excerpt(text)} names no GitLab project (https://gitlab.com/GROUP/PROJECT)")
    base_url = "https://gitlab.com" if u.hostname == "gitlab.com" else f"{u.scheme}://{u.netloc}"
    return _tree_blob(Source(f"{base_url}/{project}", "git"), _segments(tail), excerpt(text))


_ZENODO_PATH = r"/(?:records?/[A-Za-z0-9-]+|doi/10\.\d+[^?#]*)"
# kind, what it is, hosts, the host repo2docker expects, path it can fetch, an example.
_DATA_REPOS = (
    # repo2docker contentproviders/zenodo.py: <host>/record/, /records/ or /doi/ and the
    # record id is the last segment, so anything after it (files/..., a query) is cut.
    ("zenodo", "Zenodo record", {"zenodo.org", "www.zenodo.org"}, "zenodo.org", _ZENODO_PATH,
     "https://zenodo.org/records/<number>"),
    ("zenodo", "Zenodo record", {"sandbox.zenodo.org"}, "sandbox.zenodo.org", _ZENODO_PATH,
     "https://sandbox.zenodo.org/records/<number>"),
    ("zenodo", "CaltechDATA record", {"data.caltech.edu"}, "data.caltech.edu", r"/records/[A-Za-z0-9-]+",
     "https://data.caltech.edu/records/<id>"),
    # figshare.py: https://figshare.com/articles/ and its url_regex (code, dataset, software)
    # An institution's portal (<inst>.figshare.com) shows figshare.com's articles by
    # their global ids, so its URL becomes figshare.com's, which repo2docker fetches.
    ("figshare", "Figshare article", {"figshare.com", "www.figshare.com", "*.figshare.com"},
     "figshare.com",
     r"/articles/(?:(?:code|dataset|software)/)?[^/]+/\d+(?:/\d+)?/?\Z",
     "https://figshare.com/articles/<code|dataset|software>/<title>/<id>[/<version>]"),
    # hydroshare.py: <host>/resource/<id>, the id being the last segment
    ("hydroshare", "HydroShare resource", {"hydroshare.org", "www.hydroshare.org"},
     "www.hydroshare.org", r"/resource/[0-9a-f]{32}/?\Z",
     "https://www.hydroshare.org/resource/<32 hex digits>"),
)


def _zenodo_badge(u: SplitResult, text: str, parse: Parse) -> Source | None:
    # Zenodo's DOI badge image, https://zenodo.org/badge/DOI/<doi>.svg, names its DOI.
    m = re.match(r"/badge/DOI/(10\.\d+/.+)\.svg\Z", unquote(u.path))
    return parse(m.group(1)) if u.hostname in ("zenodo.org", "www.zenodo.org") and m else None


def _data_repo(u: SplitResult, text: str, parse: Parse) -> Source | None:
    for kind, noun, hosts, host, pattern, example in _DATA_REPOS:
        if u.hostname in hosts or any(
                h.startswith("*.") and (u.hostname or "").endswith(h[1:]) for h in hosts):
            m = re.match(pattern, u.path)
            if m is None:
                raise refuse(f"{excerpt(text)} is not a {noun} link repo2docker can fetch "
                             f"({example}, or give its DOI)")
            return Source(f"https://{host}{m.group().rstrip('/')}", kind)
    return None


def _dataverse(u: SplitResult, text: str, parse: Parse) -> Source | None:
    # repo2docker contentproviders/dataverse.py parse_dataverse_url: these four paths on
    # a host in the Dataverse installations list (which it downloads; not checked here).
    by_id = u.path.rstrip("/") in ("/dataset.xhtml", "/file.xhtml", "/citation") \
        and "persistentId" in parse_qs(u.query)
    if not by_id and not re.match(r"/api/access/datafile/\d+/?\Z", u.path):
        return None
    query = f"?{u.query}" if by_id else ""
    return Source(f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}{query}", "dataverse")


def _ckan(u: SplitResult, text: str, parse: Parse) -> Source | None:
    # repo2docker contentproviders/ckan.py: '/dataset/' in the path (it then asks the
    # server); the query may carry activity_id, so it is kept.
    if "/dataset/" not in u.path or u.path.endswith(".git"):
        return None
    return Source(text.split("#", 1)[0].rstrip("/"), "ckan")


def _git_url(u: SplitResult, text: str, parse: Parse) -> Source | None:
    if not u.path.strip("/"):
        raise refuse(f"{excerpt(text)} names a host but no repository path")
    return Source(text.rstrip("/"), "git")


# For http(s) URLs, in order; other schemes go straight to _git_url.
_WEB_DETECTORS = (_github, _gist, _gitlab, _codeberg, _nbviewer, _software_heritage, binder_link,
                  other_binder_page, _zenodo_badge, _data_repo, _dataverse, _ckan, _git_url)


def _swhid(text: str, parse: Parse) -> Source | None:
    if not text.lower().startswith("swh:"):
        return None
    m = re.match(r"swh:(\d+):([a-z]+):([0-9a-f]{40})(;.*)?\Z", text, re.IGNORECASE)
    if m is None:
        raise refuse(f"{excerpt(text)} is not a valid Software Heritage id",
                     "swh:1:dir:<40 hex digits> or swh:1:rev:<40 hex digits>")
    version, kind, digest = m.group(1), m.group(2).lower(), m.group(3).lower()
    if version != "1" or kind not in ("dir", "rev"):
        raise refuse(f"Software Heritage id {excerpt(text)} is a swh:{version}:{kind} object; "
                     "repo2docker fetches only directories and revisions",
                     "use the swh:1:dir:... or swh:1:rev:... id shown by the archive")
    # repo2docker contentproviders/swhid.py reads only the core id before ';' and fetches
    # by its hash; qualifiers (origin, visit, anchor, path) change nothing it downloads,
    # so they are dropped: a shorter argument and the same image name for the same content.
    return Source(f"swh:1:{kind}:{digest}", "swh")


def _doi(text: str, parse: Parse) -> Source | None:
    # repo2docker utils.doi_regexp: an optional 'doi:' or (dx.)doi.org prefix, then
    # 10.NNNN/...; its DOI providers take the bare form and resolve it via doi.org.
    m = re.match(r"(doi:\s*|(?:https?://)?(?:dx\.|www\.)?doi\.org/)?(10\.\d+.*)\Z", text, re.IGNORECASE)
    if m is None:
        return None
    doi = m.group(2)
    if m.group(1) and "doi.org" in m.group(1).lower():
        doi = unquote(re.split(r"[?#]", doi, maxsplit=1)[0])
    doi = doi.rstrip("/")
    if not DOI_RE.match(doi) or has_control(doi):
        raise refuse(f"{excerpt(text)} is not a DOI (10.<prefix>/<suffix>)")
    return Source(doi, "doi")


def _shorthand(text: str, parse: Parse) -> Source | None:
    m = re.match(r"gh:([^/]+)/([^/]+?)/?\Z", text)
    return github_repo(m.group(1), m.group(2)) if m else None


def _ssh(host: str, path: str, text: str, parse: Parse) -> Source:
    """An SSH URL: the server has no key to clone with, so a public host's becomes
    its https form; any other is refused."""
    host = host.lower()
    if host not in _PUBLIC_HOSTS:
        raise refuse(f"{excerpt(text)} is an SSH URL; the server has no SSH key to clone it "
                     f"with", f"give the repository's https URL if it is public; {_PRIVATE_HOW}")
    return parse(f"https://{host}/{strip_git(path.strip('/'))}")


def _scp_like(text: str, parse: Parse) -> Source | None:
    # git's scp-like syntax user@host:path
    m = re.match(r"[\w.-]+@([\w.-]+):(?!//)(.+)\Z", text)
    return _ssh(m.group(1), m.group(2), text, parse) if m else None


def _url(text: str, parse: Parse) -> Source | None:
    if "://" not in text:
        if text.split("/", 1)[0].lower() not in _BARE_HOSTS:
            return None
        text = "https://" + text
    try:
        u = urlsplit(text)
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise refuse(f"{excerpt(text)} is not a valid URL: {exc}") from None
    if not u.scheme:
        return None
    if u.scheme not in _GIT_SCHEMES:
        raise refuse(f"{excerpt(text)} uses the {u.scheme}: scheme; sources are fetched over "
                     "https, http, ssh or git")
    if not u.hostname:
        raise refuse(f"{excerpt(text)} has no host name")
    if u.scheme == "ssh":
        return _ssh(u.hostname, u.path, text, parse)
    if u.username is not None or u.password is not None:
        shown = excerpt(text.replace(u.netloc.rpartition("@")[0], "***", 1))
        what = "a password or token" if u.password is not None else "a user name or token"
        raise refuse(f"{shown} has {what} in it; it would be stored in the server's metadata, "
                     "which everyone in the project can read",
                     f"give the URL without credentials; {_PRIVATE_HOW}")
    if u.scheme not in ("http", "https"):
        return _git_url(u, text, parse)
    for detect in _WEB_DETECTORS:
        source = detect(u, text, parse)
        if source is not None:
            return source
    return None


DETECTORS = (_swhid, _doi, _shorthand, _scp_like, _url)
