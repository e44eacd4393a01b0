"""What the user typed -> a Source: the exact string repo2docker is given,
plus the ref, subdirectory and URL path to open that the text implied.

Detection is a table of detect-then-parse functions tried in order, first
match wins, refusal last (the shape of repo2docker's content providers). A
detector returns None when the text is not its kind and raises BadRequest
when it is its kind but unusable. Pure: no I/O.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, replace
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from .errors import BadRequest

ACCEPTED_FORMS = """\
Accepted sources (one example each):
  git URL               https://git.example.org/group/project.git
  git over ssh          git@github.com:owner/repo.git  or  ssh://git@host:2222/owner/repo.git
  GitHub repository     https://github.com/owner/repo  (also github.com/owner/repo, gh:owner/repo)
  GitHub branch + dir   https://github.com/owner/repo/tree/main/binder
  GitHub file to open   https://github.com/owner/repo/blob/main/index.ipynb
  GitLab                https://gitlab.com/group/sub/project/-/tree/main/binder
  GitHub gist           https://gist.github.com/user/0123456789abcdef0123456789abcdef
  DOI                   10.5281/zenodo.3242074  (also doi:10.5281/..., https://doi.org/10.5281/...)
  Zenodo record         https://zenodo.org/records/3242074
  Figshare article      https://figshare.com/articles/dataset/title/9782777
  Dataverse dataset     https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP
  HydroShare resource   https://www.hydroshare.org/resource/8f7c2f0341ef4180b0dbe97f59130756
  CKAN dataset          https://demo.ckan.org/dataset/sample-dataset-1
  Software Heritage     swh:1:dir:<40 hex digits>  (or swh:1:rev:<40 hex digits>)
  Binder launch link    https://mybinder.org/v2/gh/owner/repo/HEAD?labpath=index.ipynb
  Binder badge          [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/owner/repo/HEAD)"""

KINDS = ("git", "doi", "zenodo", "figshare", "dataverse", "hydroshare", "swh", "gist", "ckan")
# repo2docker fetches these without git, so its --ref means nothing to them.
# (CKAN is left out: its detection here is a guess from the URL path.)
NO_REF_KINDS = frozenset({"doi", "zenodo", "figshare", "dataverse", "hydroshare", "swh"})
# First URL path segment of the Jupyter and proxied interfaces a user may open.
UI_PREFIXES = frozenset(
    {"tree", "lab", "doc", "notebooks", "edit", "view", "voila",
     "rstudio", "shiny", "proxy", "files", "nteract"}
)
MAX_LEN = 255
_MARKUP_MAX = 2048  # badge markup around a launch link may be longer than a source
_GIT_SCHEMES = ("https", "http", "ssh", "git")  # BinderHub GitRepoProvider.allowed_protocols
_BARE_HOSTS = frozenset(
    {"github.com", "www.github.com", "gist.github.com", "gitlab.com", "zenodo.org",
     "www.zenodo.org", "sandbox.zenodo.org", "figshare.com", "hydroshare.org",
     "www.hydroshare.org", "mybinder.org"}
)
_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_DOI = re.compile(r"10\.\d+(?:\.\d+)*/\S+\Z")
_REF_HINT = "give a branch, tag or commit, e.g. main, v1.2.3, feature/x, HEAD or a 40-hex commit sha"
_SUBDIR_HINT = "give a relative directory inside the repository, e.g. binder or env/py311"
_OPEN_HINT = ("give a file in the repository (index.ipynb, ./notebooks/intro.ipynb) or a Jupyter "
              "URL path (lab, tree/data, doc/tree/report.ipynb, rstudio/, voila/render/app.ipynb)")


@dataclass(frozen=True)
class Source:
    repo: str            # exactly what repo2docker will be given: a URL, a bare DOI or a SWHID
    kind: str            # one of KINDS
    ref: str | None = None
    subdir: str | None = None
    open: str | None = None   # URL path to open after launch, no leading slash
    given: str = ""           # what the user typed, stripped


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _refuse(message: str, hint: str = ACCEPTED_FORMS) -> BadRequest:
    return BadRequest(message, hint)


def has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


# ---------------------------------------------------------------- field checks

def _check(value: str, what: str, hint: str, rules) -> str:
    for broken, why in rules:
        if broken(value):
            raise _refuse(f"{what} {_show(value)} {why}", hint)
    return value


_REF_RULES = (  # git check-ref-format
    (lambda r: not 1 <= len(r) <= MAX_LEN, f"must be 1 to {MAX_LEN} characters long"),
    (lambda r: has_control(r) or any(c.isspace() for c in r), "contains whitespace or control characters"),
    (lambda r: r.startswith("-"), "starts with '-' and would be read as an option"),
    (lambda r: set(r) & set("~^:?*[\\"), "contains one of ~ ^ : ? * [ \\, which git does not allow"),
    (lambda r: any(s in r for s in ("..", "@{", "//")) or r == "@",
     "contains '..', '@{' or '//' (or is '@'), which git does not allow"),
    (lambda r: r.startswith("/") or r.endswith(("/", ".")),
     "starts with '/' or ends with '/' or '.', which git does not allow"),
    (lambda r: any(p.startswith(".") or p.endswith(".lock") for p in r.split("/")),
     "has a part starting with '.' or ending with '.lock', which git does not allow"),
)
_SUBDIR_RULES = (
    (lambda d: not 1 <= len(d) <= MAX_LEN, f"must be 1 to {MAX_LEN} characters long"),
    (has_control, "contains control characters"),
    (lambda d: d.startswith("/"), "is absolute; it must be relative to the repository"),
    (lambda d: ".." in d.split("/"), "has a '..' component; it must stay inside the repository"),
    (lambda d: d.lstrip("./").startswith("-"), "starts with '-' and would be read as an option"),
)
_URL_PATH_RULES = (
    (lambda p: len(p) > MAX_LEN, f"is longer than {MAX_LEN} characters"),
    (has_control, "contains control characters"),
    (lambda p: "?" in p or "#" in p,
     "contains '?' or '#'; a query string or fragment cannot be passed through, only a path"),
    (lambda p: ".." in p.split("/"), "has a '..' component"),
    (lambda p: "://" in p, "is a URL, not a path inside the server"),
)


def validate_ref(ref: str) -> str:
    """A branch, tag or commit, by git check-ref-format's rules."""
    return _check(ref, "ref", _REF_HINT, _REF_RULES)


def validate_subdir(subdir: str) -> str | None:
    """A relative POSIX directory; './a/b/' -> 'a/b'; '.' -> None (the top)."""
    _check(subdir, "subdir", _SUBDIR_HINT, _SUBDIR_RULES)
    return "/".join(p for p in subdir.split("/") if p not in ("", ".")) or None


def _check_url_path(path: str, what: str) -> str:
    """Checks a decoded URL path inside the Jupyter server (no leading '/')."""
    return _check(path, what, _OPEN_HINT, _URL_PATH_RULES)


def normalize_open_path(path: str) -> str:
    """--open value -> URL path: a path starting with a Jupyter UI prefix is kept, anything
    else is a file in the repository, opened in JupyterLab (lab/tree/<path>). A leading
    './' forces the file reading (./notebooks/a.ipynb). Takes decoded text; %XX escapes
    pasted from a browser are decoded once."""
    text = unquote(path.strip())
    is_file = text.startswith("./")
    text = text.lstrip("/")
    while text.startswith("./"):
        text = text[2:].lstrip("/")
    if not text:
        raise _refuse(f"open path {_show(path)} is empty", _OPEN_HINT)
    _check_url_path(text, "open path")
    if not is_file and text.split("/", 1)[0] in UI_PREFIXES:
        return text
    return _check_url_path("lab/tree/" + text, "open path")


# ---------------------------------------------------------------- helpers

def _segments(path: str) -> list[str]:
    return [unquote(s) for s in path.split("/") if s]


def _strip_git(name: str) -> str:
    return name.removesuffix(".git")


def _name(value: str, what: str) -> str:
    if not _NAME.match(value) or value.startswith("-"):
        raise _refuse(f"{what} {_show(value)} is not a valid name")
    return value


def _github_repo(owner: str, repo: str) -> Source:
    owner, repo = _name(owner, "GitHub owner"), _name(_strip_git(repo), "GitHub repository")
    return Source(f"https://github.com/{owner}/{repo}", "git")


def _tree_blob(base: Source, rest: list[str], show: str) -> Source:
    """The tail of a forge web URL: tree/<ref>[/<dir>], blob/<ref>/<file>, commit/<sha>.
    The first segment is taken as the ref: a ref holding '/' must be given with --ref."""
    if not rest:
        return base
    if rest[0] == "tree" and len(rest) >= 2:
        return replace(base, ref=rest[1], subdir="/".join(rest[2:]) or None)
    if rest[0] == "blob" and len(rest) >= 3:
        return replace(base, ref=rest[1], open="lab/tree/" + "/".join(rest[2:]))
    if rest[0] == "commit" and len(rest) == 2:
        return replace(base, ref=rest[1])
    raise _refuse(f"{show} is a page of the repository, not a link to the repository, "
                  "a tree (branch/directory), a blob (file) or a commit")


def _doi_or_refuse(spec: str, what: str) -> str:
    doi = unquote(spec).strip("/")
    if not _DOI.match(doi):
        raise _refuse(f"{what} {_show(doi)} is not a DOI (10.<prefix>/<suffix>)")
    return doi


# ---------------------------------------------------------------- Binder links

def _link_gh(spec: str) -> Source:
    # binderhub/repoproviders.py tokenize_spec: user/repo/ref, the ref may hold '/'
    parts = spec.split("/", 2)
    if len(parts) < 2:
        raise _refuse(f"gh spec {_show(spec)} is not of the form owner/repo/ref")
    ref = unquote(parts[2]).strip("/") if len(parts) == 3 else ""
    return replace(_github_repo(unquote(parts[0]), unquote(parts[1])), ref=ref or None)


def _link_gist(spec: str) -> Source:
    # GistRepoProvider: user/gist-id[/ref]; '', HEAD, master and main all mean the
    # latest revision there, so they become no ref (a gist's branch name varies).
    parts = [unquote(p) for p in spec.strip("/").split("/")]
    if len(parts) not in (2, 3):
        raise _refuse(f"gist spec {_show(spec)} is not of the form user/gist-id[/revision]")
    user, gist = _name(parts[0], "gist user"), _name(_strip_git(parts[1]), "gist id")
    ref = parts[2] if len(parts) == 3 and parts[2] not in ("HEAD", "master", "main") else None
    return Source(f"https://gist.github.com/{user}/{gist}.git", "gist", ref=ref)


def _link_gl(spec: str) -> Source:
    # GitLabRepoProvider: <url-escaped namespace>/<ref>, repo https://gitlab.com/<namespace>
    quoted, _, ref = spec.partition("/")
    project = _strip_git(unquote(quoted).strip("/"))
    if "/" not in project or not all(_NAME.match(p) for p in project.split("/")):
        raise _refuse(f"gl spec {_show(spec)} does not start with an escaped group%2Fproject")
    return Source(f"https://gitlab.com/{project}", "git", ref=unquote(ref).strip("/") or None)


def _link_git(spec: str) -> Source:
    # GitRepoProvider: <url-escaped URL>/<ref>; the URL goes to repo2docker as is.
    quoted, _, ref = spec.partition("/")
    inner = parse_source(unquote(quoted))
    if inner.kind not in ("git", "gist"):
        raise _refuse(f"git spec {_show(spec)} does not hold a git repository URL")
    return replace(inner, ref=unquote(ref).strip("/") or inner.ref)


def _link_hydroshare(spec: str) -> Source:
    # HydroshareProvider: any spec holding the 32-hex resource id
    m = re.search(r"[0-9a-f]{32}", unquote(spec))
    if not m:
        raise _refuse(f"hydroshare spec {_show(spec)} holds no 32-hex resource id")
    return Source(f"https://www.hydroshare.org/resource/{m.group()}", "hydroshare")


def _link_ckan(spec: str) -> Source:
    # CKANProvider: the unescaped spec is the dataset URL, given to repo2docker as is
    inner = parse_source(unquote(spec))
    if inner.kind != "ckan":
        raise _refuse(f"ckan spec {_show(spec)} is not an escaped CKAN dataset URL")
    return inner


# BinderHub passes zenodo/figshare/dataverse specs (DOIs) to repo2docker unchanged
# (get_repo_url returns the spec), so the bare DOI is the repo.
_LINK_PROVIDERS = {
    "gh": _link_gh, "gist": _link_gist, "gl": _link_gl, "git": _link_git,
    "zenodo": lambda s: Source(_doi_or_refuse(s, "zenodo spec"), "zenodo"),
    "figshare": lambda s: Source(_doi_or_refuse(s, "figshare spec"), "figshare"),
    "dataverse": lambda s: Source(_doi_or_refuse(s, "dataverse spec"), "dataverse"),
    "hydroshare": _link_hydroshare, "ckan": _link_ckan,
}
# BinderHub routes only /v2/<provider>/<spec> (binderhub/app.py), under any prefix.
_LAUNCH_PATH = re.compile(rf"(.*?)/v2/({'|'.join(_LINK_PROVIDERS)})/(.+)\Z")
_LAUNCH_IN_TEXT = re.compile(
    rf"https?://[^\s\"'<>()\[\]]*?/v2/(?:{'|'.join(_LINK_PROVIDERS)})/[^\s\"'<>()\[\]]+")


def _launch_open(query: str) -> str | None:
    """The URL path a launch link opens. As BinderHub's LaunchSpec.fromSearchParams
    (js/packages/binderhub-client/lib/spec.js): labpath=F wins and means doc/tree/F,
    then filepath=F means tree/F (one trailing '/' of F trimmed), then urlpath;
    the leading '/' is dropped."""
    q = parse_qs(query)
    if "labpath" in q:
        path = "doc/tree/" + q["labpath"][0].removesuffix("/").lstrip("/")
    elif "filepath" in q:
        path = "tree/" + q["filepath"][0].removesuffix("/").lstrip("/")
    elif "urlpath" in q:
        path = q["urlpath"][0].lstrip("/")
    else:
        return None
    return _check_url_path(path, "the link's path to open") if path else None


# ---------------------------------------------------------------- URL detectors

def _binder_link(u: SplitResult, text: str) -> Source | None:
    m = _LAUNCH_PATH.match(u.path)
    if m is None:
        return None
    return replace(_LINK_PROVIDERS[m.group(2)](m.group(3)), open=_launch_open(u.query))


def _other_binder_page(u: SplitResult, text: str) -> Source | None:
    if u.hostname == "mybinder.org" or (u.hostname or "").endswith(".mybinder.org"):
        raise _refuse(f"{_show(text)} is not a Binder launch link (https://mybinder.org/v2/...)")
    return None


def _github(u: SplitResult, text: str) -> Source | None:
    if u.hostname not in ("github.com", "www.github.com"):
        return None
    segs = _segments(u.path)
    if len(segs) < 2:
        raise _refuse(f"{_show(text)} names no repository (https://github.com/OWNER/REPO)")
    return _tree_blob(_github_repo(segs[0], segs[1]), segs[2:], _show(text))


def _gist(u: SplitResult, text: str) -> Source | None:
    if u.hostname != "gist.github.com":
        return None
    segs = _segments(u.path)
    if not 1 <= len(segs) <= 3:
        raise _refuse(f"{_show(text)} is not a gist link (https://gist.github.com/USER/ID)")
    if len(segs) == 1:
        return Source(f"https://gist.github.com/{_name(_strip_git(segs[0]), 'gist id')}.git", "gist")
    return _link_gist("/".join(segs))


def _gitlab(u: SplitResult, text: str) -> Source | None:
    if "/-/" in u.path:
        project, _, tail = u.path.partition("/-/")
    elif u.hostname == "gitlab.com":
        project, tail = u.path, ""
    else:
        return None
    project = _strip_git("/".join(_segments(project)))
    if "/" not in project:
        raise _refuse(f"{_show(text)} names no GitLab project (https://gitlab.com/GROUP/PROJECT)")
    base_url = "https://gitlab.com" if u.hostname == "gitlab.com" else f"{u.scheme}://{u.netloc}"
    return _tree_blob(Source(f"{base_url}/{project}", "git"), _segments(tail), _show(text))


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
    ("figshare", "Figshare article", {"figshare.com", "www.figshare.com"}, "figshare.com",
     r"/articles/(?:(?:code|dataset|software)/)?[^/]+/\d+(?:/\d+)?/?\Z",
     "https://figshare.com/articles/<code|dataset|software>/<title>/<id>[/<version>]"),
    # hydroshare.py: <host>/resource/<id>, the id being the last segment
    ("hydroshare", "HydroShare resource", {"hydroshare.org", "www.hydroshare.org"},
     "www.hydroshare.org", r"/resource/[0-9a-f]{32}/?\Z",
     "https://www.hydroshare.org/resource/<32 hex digits>"),
)


def _data_repo(u: SplitResult, text: str) -> Source | None:
    for kind, noun, hosts, host, pattern, example in _DATA_REPOS:
        if u.hostname in hosts:
            m = re.match(pattern, u.path)
            if m is None:
                raise _refuse(f"{_show(text)} is not a {noun} link repo2docker can fetch "
                              f"({example}, or give its DOI)")
            return Source(f"https://{host}{m.group().rstrip('/')}", kind)
    return None


def _dataverse(u: SplitResult, text: str) -> Source | None:
    # repo2docker contentproviders/dataverse.py parse_dataverse_url: these four paths on
    # a host in the Dataverse installations list (which it downloads; not checked here).
    by_id = u.path.rstrip("/") in ("/dataset.xhtml", "/file.xhtml", "/citation") \
        and "persistentId" in parse_qs(u.query)
    if not by_id and not re.match(r"/api/access/datafile/\d+/?\Z", u.path):
        return None
    query = f"?{u.query}" if by_id else ""
    return Source(f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}{query}", "dataverse")


def _ckan(u: SplitResult, text: str) -> Source | None:
    # repo2docker contentproviders/ckan.py: '/dataset/' in the path (it then asks the
    # server); the query may carry activity_id, so it is kept.
    if "/dataset/" not in u.path or u.path.endswith(".git"):
        return None
    return Source(text.split("#", 1)[0].rstrip("/"), "ckan")


def _git_url(u: SplitResult, text: str) -> Source | None:
    if not u.path.strip("/"):
        raise _refuse(f"{_show(text)} names a host but no repository path")
    return Source(text.rstrip("/"), "git")


# For http(s) URLs, in order; other schemes go straight to _git_url.
_WEB_DETECTORS = (_github, _gist, _gitlab, _binder_link, _other_binder_page, _data_repo,
                  _dataverse, _ckan, _git_url)


# ---------------------------------------------------------------- text detectors

def _swhid(text: str) -> Source | None:
    if not text.lower().startswith("swh:"):
        return None
    m = re.match(r"swh:(\d+):([a-z]+):([0-9a-f]{40})(;.*)?\Z", text, re.IGNORECASE)
    if m is None:
        raise _refuse(f"{_show(text)} is not a valid Software Heritage id",
                      "swh:1:dir:<40 hex digits> or swh:1:rev:<40 hex digits>")
    version, kind, digest = m.group(1), m.group(2).lower(), m.group(3).lower()
    if version != "1" or kind not in ("dir", "rev"):
        raise _refuse(f"Software Heritage id {_show(text)} is a swh:{version}:{kind} object; "
                      "repo2docker fetches only directories and revisions",
                      "use the swh:1:dir:... or swh:1:rev:... id shown by the archive")
    # repo2docker contentproviders/swhid.py reads only the core id before ';' and fetches
    # by its hash; qualifiers (origin, visit, anchor, path) change nothing it downloads,
    # so they are dropped: a shorter argument and the same image name for the same content.
    return Source(f"swh:1:{kind}:{digest}", "swh")


def _doi(text: str) -> Source | None:
    # repo2docker utils.doi_regexp: an optional 'doi:' or (dx.)doi.org prefix, then
    # 10.NNNN/...; its DOI providers take the bare form and resolve it via doi.org.
    m = re.match(r"(doi:\s*|(?:https?://)?(?:dx\.|www\.)?doi\.org/)?(10\.\d+.*)\Z", text, re.IGNORECASE)
    if m is None:
        return None
    doi = m.group(2)
    if m.group(1) and "doi.org" in m.group(1).lower():
        doi = unquote(re.split(r"[?#]", doi, maxsplit=1)[0])
    doi = doi.rstrip("/")
    if not _DOI.match(doi) or has_control(doi):
        raise _refuse(f"{_show(text)} is not a DOI (10.<prefix>/<suffix>)")
    return Source(doi, "doi")


def _shorthand(text: str) -> Source | None:
    m = re.match(r"gh:([^/]+)/([^/]+?)/?\Z", text)
    return _github_repo(m.group(1), m.group(2)) if m else None


def _scp_like(text: str) -> Source | None:
    # git's scp-like syntax user@host:path; repo2docker hands it to git clone as is.
    m = re.match(r"[\w.-]+@([\w.-]+):(?!//)(.+)\Z", text)
    if m is None:
        return None
    return Source(text.rstrip("/"), "gist" if m.group(1).lower() == "gist.github.com" else "git")


def _url(text: str) -> Source | None:
    if "://" not in text:
        if text.split("/", 1)[0].lower() not in _BARE_HOSTS:
            return None
        text = "https://" + text
    try:
        u = urlsplit(text)
        u.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _refuse(f"{_show(text)} is not a valid URL: {exc}") from None
    if not u.scheme:
        return None
    if u.scheme not in _GIT_SCHEMES:
        raise _refuse(f"{_show(text)} uses the {u.scheme}: scheme; sources are fetched over "
                      "https, http, ssh or git")
    if not u.hostname:
        raise _refuse(f"{_show(text)} has no host name")
    if u.password is not None:
        shown = _show(text.replace(u.password, "***"))
        raise _refuse(f"{shown} has a password or token in it; it would be stored on the VM "
                      "and in its metadata", "give the URL without credentials")
    if u.scheme not in ("http", "https"):
        return _git_url(u, text)
    for detect in _WEB_DETECTORS:
        source = detect(u, text)
        if source is not None:
            return source
    return None


_DETECTORS = (_swhid, _doi, _shorthand, _scp_like, _url)


# ---------------------------------------------------------------- entry points

def _why_not(text: str) -> str:
    show = _show(text)
    if text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        return f"{show} looks like a local path; repo2docker runs on the VM, which cannot see it"
    if re.match(r"[\w.-]+/[\w.-]+\Z", text):
        return f"{show} is not a URL; for a GitHub repository write https://github.com/{text}"
    return f"{show} is not a repository URL, DOI, SWHID or Binder link"


def _parse_one(text: str, given: str) -> Source:
    show = _show(text)
    if len(text) > MAX_LEN:
        raise _refuse(f"source {show} is {len(text)} characters long; at most {MAX_LEN} are accepted")
    if has_control(text):
        raise _refuse(f"source {show} contains control characters (newline, tab, NUL, ...)")
    if text.startswith("-"):
        raise _refuse(f"source {show} starts with '-' and would be read as an option by repo2docker")
    if any(c.isspace() for c in re.sub(r"^doi:\s*", "", text, flags=re.IGNORECASE)):
        raise _refuse(f"source {show} contains whitespace")
    for detect in _DETECTORS:
        source = detect(text)
        if source is not None:
            break
    else:
        raise _refuse(_why_not(text))
    if source.repo.startswith("-") or has_control(source.repo):
        raise _refuse(f"source {show} does not give a usable repository")
    return replace(
        source,
        ref=None if source.ref is None else validate_ref(source.ref),
        subdir=None if source.subdir is None else validate_subdir(source.subdir),
        open=None if source.open is None else _check_url_path(source.open, "path to open"),
        given=given,
    )


def parse_source(text: str) -> Source:
    """What the user typed -> Source. A Binder badge (Markdown, reST or HTML) around a
    /v2/ launch link is read as that link. Raises BadRequest for anything else."""
    given = text.strip()
    if not given:
        raise _refuse(f"the source {_show(text)} is empty")
    wrapped = not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://\S*\Z", given)
    if wrapped and "\x00" not in given and len(given) <= _MARKUP_MAX:
        m = _LAUNCH_IN_TEXT.search(given)
        if m is not None:
            link = html.unescape(m.group()) if "<" in given else m.group()
            return _parse_one(link, given)
        if re.search(r"\]\(|<a\s|:target:", given):
            raise _refuse(f"{_show(given)} looks like a badge but holds no Binder launch link "
                          "(https://<binderhub>/v2/<provider>/<spec>)")
    return _parse_one(given, given)


def resolve_source(text: str, *, ref: str | None = None, subdir: str | None = None,
                   open_path: str | None = None) -> Source:
    """parse_source, then explicit options win over what the text says; validates all fields."""
    source = parse_source(text)
    if ref is not None:
        if source.kind in NO_REF_KINDS:
            raise _refuse(f"--ref applies to git sources only; {_show(source.given)} is a "
                          f"{source.kind} source, fetched as published",
                          "drop --ref; to pin a version, give the versioned DOI or record URL")
        source = replace(source, ref=validate_ref(ref))
    if subdir is not None:
        source = replace(source, subdir=validate_subdir(subdir))
    if open_path is not None:
        source = replace(source, open=normalize_open_path(open_path))
    return source
