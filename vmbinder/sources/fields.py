"""The fields a source carries besides the repository: the ref (git
check-ref-format's rules), the subdirectory and the URL path to open, each
checked against a table of (broken, why) rules, the first broken one refused."""

from __future__ import annotations

from urllib.parse import unquote

from .common import MAX_LEN, excerpt, has_control, refuse

# First URL path segment of the Jupyter and proxied interfaces a user may open.
UI_PREFIXES = frozenset(
    {"tree", "lab", "doc", "notebooks", "edit", "view", "voila",
     "rstudio", "shiny", "proxy", "files", "nteract"}
)
_REF_HINT = "give a branch, tag or commit, e.g. main, v1.2.3, feature/x, HEAD or a 40-hex commit sha"
_SUBDIR_HINT = "give a relative directory inside the repository, e.g. binder or env/py311"
_OPEN_HINT = ("give a file in the repository (index.ipynb, ./notebooks/intro.ipynb) or a Jupyter "
              "URL path (lab, tree/data, doc/tree/report.ipynb, rstudio/, voila/render/app.ipynb)")


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


def check_url_path(path: str, what: str) -> str:
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
        raise refuse(f"open path {excerpt(path)} is empty", _OPEN_HINT)
    check_url_path(text, "open path")
    if not is_file and text.split("/", 1)[0] in UI_PREFIXES:
        return text
    return check_url_path("lab/tree/" + text, "open path")
