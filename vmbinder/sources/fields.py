"""The fields a source carries besides the repository: the ref (git
check-ref-format's rules), the subdirectory and the URL path to open, each
checked against a table of (broken, why) rules, the first broken one refused."""

from __future__ import annotations

from urllib.parse import unquote

from vmbinder.urls import LAB_TREE

from .common import MAX_LEN, excerpt, has_control, refuse

_REF_HINT = "give a branch, tag or commit, e.g. main, v1.2.3, feature/x, HEAD or a 40-hex commit sha"
_SUBDIR_HINT = "give a relative directory inside the repository, e.g. binder or env/py311"
_OPEN_HINT = ("--open takes a file or folder of the repository (index.ipynb, notebooks/intro.ipynb), "
              "opened in JupyterLab; for a URL path on the server (lab, rstudio, "
              "voila/render/app.ipynb, git-pull?repo=...) use --urlpath")
_URLPATH_HINT = ("--urlpath takes a URL path on the server, optionally with a query: lab, tree, "
                 "rstudio/, voila/render/app.ipynb?voila-theme=dark, proxy/8050/, lab?reset; "
                 "for a file of the repository use --open")


def _check(value: str, what: str, hint: str, rules) -> str:
    for broken, why in rules:
        if broken(value):
            raise refuse(f"{what} {excerpt(value)} {why}", hint)
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
_PATH_RULES = (
    (lambda p: len(p) > MAX_LEN, f"is longer than {MAX_LEN} characters"),
    (has_control, "contains control characters"),
    (lambda p: ".." in p.split("/"), "has a '..' component"),
    (lambda p: "://" in p, "is a URL, not a path"),
)
# Checked on the path before '?', and on the whole: the query may hold a URL.
_URLPATH_RULES = (
    *((lambda p, broken=broken: broken(p.partition("?")[0]), why) for broken, why in _PATH_RULES),
    (has_control, "contains control characters"),
    (lambda p: "#" in p, "contains '#'; a fragment cannot be passed through"),
    (lambda p: any(c.isspace() for c in p.partition("?")[2]),
     "has whitespace in its query; write it %20"),
)


def validate_ref(ref: str) -> str:
    """A branch, tag or commit, by git check-ref-format's rules."""
    return _check(ref, "ref", _REF_HINT, _REF_RULES)


def validate_subdir(subdir: str) -> str | None:
    """A relative POSIX directory; './a/b/' -> 'a/b'; '.' -> None (the top)."""
    _check(subdir, "subdir", _SUBDIR_HINT, _SUBDIR_RULES)
    return "/".join(p for p in subdir.split("/") if p not in ("", ".")) or None


def _path_text(path: str) -> tuple[str, str]:
    """Stripped text without leading '/' and './' parts, and %XX escapes pasted from a
    browser decoded once (the query, after '?', of a URL path is kept as written)."""
    text = path.strip()
    while text.startswith(("/", "./")):
        text = text.removeprefix(".").lstrip("/")
    return text, unquote(text)


def normalize_open_file(path: str, what: str = "--open") -> str:
    """A file or folder of the repository to open in JupyterLab: 'notebooks/intro.ipynb'.
    Any name is a path in the repository, whatever its first folder is called."""
    _, text = _path_text(path)
    text = text.rstrip("/")
    if not text:
        raise refuse(f"{what} {excerpt(path)} is empty", _OPEN_HINT)
    return _check(text, what, _OPEN_HINT, (
        *_PATH_RULES,
        (lambda p: len(LAB_TREE + p) > MAX_LEN, f"is longer than {MAX_LEN - len(LAB_TREE)} characters"),
    ))


def normalize_urlpath(path: str, what: str = "--urlpath") -> str:
    """A URL path on the server, with an optional query: 'voila/render/a.ipynb?voila-theme=dark'.
    The path is decoded once (it is encoded again when the URL is printed); the query is
    kept as written, so escapes it holds (an nbgitpuller repo=https%3A...) stay."""
    raw, _ = _path_text(path)
    route, mark, query = raw.partition("?")
    text = unquote(route) + mark + query
    if not route.strip("/"):
        raise refuse(f"{what} {excerpt(path)} names no path on the server", _URLPATH_HINT)
    if "?" in unquote(route):
        raise refuse(f"{what} {excerpt(path)} has an escaped '?' in its path", _URLPATH_HINT)
    return _check(text, what, _URLPATH_HINT, _URLPATH_RULES)
