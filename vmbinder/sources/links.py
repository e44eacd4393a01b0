"""mybinder.org and BinderHub launch links: /v2/<provider>/<spec> under any
host and prefix, read as BinderHub reads them (binderhub/repoproviders.py for
each provider's spec, LaunchSpec for the path to open), and the refusal of any
other mybinder.org page."""

from __future__ import annotations

import re
from dataclasses import replace
from urllib.parse import SplitResult, parse_qs, unquote

from .common import DOI_RE, NAME_RE, Parse, Source, check_name, excerpt, github_repo, refuse, strip_git
from .fields import normalize_open_file, normalize_urlpath


def _doi_or_refuse(spec: str, what: str) -> str:
    doi = unquote(spec).strip("/")
    if not DOI_RE.match(doi):
        raise refuse(f"{what} {excerpt(doi)} is not a DOI (10.<prefix>/<suffix>)")
    return doi


def _link_gh(spec: str) -> Source:
    # binderhub/repoproviders.py tokenize_spec: user/repo/ref, the ref may hold '/'
    parts = spec.split("/", 2)
    if len(parts) < 2:
        raise refuse(f"gh spec {excerpt(spec)} is not of the form owner/repo/ref")
    ref = unquote(parts[2]).strip("/") if len(parts) == 3 else ""
    return replace(github_repo(unquote(parts[0]), unquote(parts[1])), ref=ref or None)


def link_gist(spec: str) -> Source:
    # GistRepoProvider: user/gist-id[/ref]; '', HEAD, master and main all mean the
    # latest revision there, so they become no ref (a gist's branch name varies).
    parts = [unquote(p) for p in spec.strip("/").split("/")]
    if len(parts) not in (2, 3):
        raise refuse(f"gist spec {excerpt(spec)} is not of the form user/gist-id[/revision]")
    user, gist = check_name(parts[0], "gist user"), check_name(strip_git(parts[1]), "gist id")
    ref = parts[2] if len(parts) == 3 and parts[2] not in ("HEAD", "master", "main") else None
    return Source(f"https://gist.github.com/{user}/{gist}.git", "gist", ref=ref)


def _link_gl(spec: str) -> Source:
    # GitLabRepoProvider: <url-escaped namespace>/<ref>, repo https://gitlab.com/<namespace>
    quoted, _, ref = spec.partition("/")
    project = strip_git(unquote(quoted).strip("/"))
    if "/" not in project or not all(NAME_RE.match(p) for p in project.split("/")):
        raise refuse(f"gl spec {excerpt(spec)} does not start with an escaped group%2Fproject")
    return Source(f"https://gitlab.com/{project}", "git", ref=unquote(ref).strip("/") or None)


def _link_git(spec: str, parse: Parse) -> Source:
    # GitRepoProvider: <url-escaped URL>/<ref>; the URL goes to repo2docker as is.
    quoted, _, ref = spec.partition("/")
    inner = parse(unquote(quoted))
    if inner.kind not in ("git", "gist"):
        raise refuse(f"git spec {excerpt(spec)} does not hold a git repository URL")
    return replace(inner, ref=unquote(ref).strip("/") or inner.ref)


def _link_hydroshare(spec: str) -> Source:
    # HydroshareProvider: any spec holding the 32-hex resource id
    m = re.search(r"[0-9a-f]{32}", unquote(spec))
    if not m:
        raise refuse(f"hydroshare spec {excerpt(spec)} holds no 32-hex resource id")
    return Source(f"https://www.hydroshare.org/resource/{m.group()}", "hydroshare")


def _link_ckan(spec: str, parse: Parse) -> Source:
    # CKANProvider: the unescaped spec is the dataset URL, given to repo2docker as is
    inner = parse(unquote(spec))
    if inner.kind != "ckan":
        raise refuse(f"ckan spec {excerpt(spec)} is not an escaped CKAN dataset URL")
    return inner


# BinderHub passes zenodo/figshare/dataverse specs (DOIs) to repo2docker unchanged
# (get_repo_url returns the spec), so the bare DOI is the repo.
# Each takes the spec and the whole parser (git and ckan specs are themselves sources).
_LINK_PROVIDERS = {
    "gh": lambda s, _: _link_gh(s), "gist": lambda s, _: link_gist(s),
    "gl": lambda s, _: _link_gl(s), "git": _link_git,
    "zenodo": lambda s, _: Source(_doi_or_refuse(s, "zenodo spec"), "zenodo"),
    "figshare": lambda s, _: Source(_doi_or_refuse(s, "figshare spec"), "figshare"),
    "dataverse": lambda s, _: Source(_doi_or_refuse(s, "dataverse spec"), "dataverse"),
    "hydroshare": lambda s, _: _link_hydroshare(s), "ckan": _link_ckan,
}
# BinderHub routes only /v2/<provider>/<spec> (binderhub/app.py), under any prefix.
_LAUNCH_PATH = re.compile(rf"(.*?)/v2/({'|'.join(_LINK_PROVIDERS)})/(.+)\Z")
LAUNCH_IN_TEXT = re.compile(
    rf"https?://[^\s\"'<>()\[\]]*?/v2/(?:{'|'.join(_LINK_PROVIDERS)})/[^\s\"'<>()\[\]]+")


def _launch_open(query: str) -> dict:
    """What a launch link opens, as BinderHub's LaunchSpec.fromSearchParams
    (js/packages/binderhub-client/lib/spec.js) chooses: labpath=F wins, then
    filepath=F, both a file or folder of the repository; then urlpath, a URL path
    on the server."""
    q = parse_qs(query)
    for key, field, check in (("labpath", "open", normalize_open_file),
                              ("filepath", "open", normalize_open_file),
                              ("urlpath", "urlpath", normalize_urlpath)):
        if key in q:
            value = q[key][0]
            return {field: check(value, f"the link's {key}")} if value.strip("/ ") else {}
    return {}


def binder_link(u: SplitResult, text: str, parse: Parse) -> Source | None:
    m = _LAUNCH_PATH.match(u.path)
    if m is None:
        return None
    return replace(_LINK_PROVIDERS[m.group(2)](m.group(3), parse), **_launch_open(u.query))


def other_binder_page(u: SplitResult, text: str, parse: Parse) -> Source | None:
    if u.hostname == "mybinder.org" or (u.hostname or "").endswith(".mybinder.org"):
        raise refuse(f"{excerpt(text)} is not a Binder launch link (https://mybinder.org/v2/...)")
    return None
