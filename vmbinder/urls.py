"""The family of user interfaces an image can serve, and how to reach them."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode

from vmbinder.guestcontract import INTERFACE_PATHS

#: Where JupyterLab opens a file or folder of the repository.
LAB_TREE = "lab/tree/"


@dataclass(frozen=True)
class Interface:
    key: str
    label: str
    path: str
    #: True when every repo2docker image serves it.
    always: bool
    #: Why it may be absent; shown instead of a URL that would not answer.
    absent_reason: str


INTERFACES: tuple[Interface, ...] = (
    Interface("tree", "Jupyter", INTERFACE_PATHS["tree"], True, ""),
    Interface("lab", "JupyterLab", INTERFACE_PATHS["lab"], True, ""),
    Interface(
        "rstudio",
        "RStudio",
        INTERFACE_PATHS["rstudio"],
        False,
        "served only when repo2docker detects R (runtime.txt r-..., DESCRIPTION or conda r-base)",
    ),
    Interface(
        "shiny",
        "Shiny",
        INTERFACE_PATHS["shiny"],
        False,
        "served only when repo2docker detects R, like RStudio",
    ),
    Interface(
        "nteract",
        "nteract",
        INTERFACE_PATHS["nteract"],
        False,
        "repo2docker removed nteract in 2023.06; it is served only if the repository installs it",
    ),
)
BY_KEY = {i.key: i for i in INTERFACES}
KEYS = tuple(BY_KEY)


def base_url(host: str | None, tls: str, port: str | None = None) -> str | None:
    """The server's root URL on host, or None when it has no host yet.

    port is given when the server's 80/443 are forwarded to other ports (the
    local target)."""
    if not host:
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    scheme = "http" if tls == "off" else "https"
    return f"{scheme}://{host}:{port}/" if port else f"{scheme}://{host}/"


#: What a query keeps as written: its structure (=, &), escapes it holds (%XX) and
#: the characters URLs allow there; spaces, quotes, '#' and non-ASCII are escaped.
_QUERY_SAFE = "=&%/:+,;@!$'()*~?"


def url_for(base: str, path: str, token: str | None, query: str = "") -> str:
    """base + the decoded path, encoded; then the query and the token."""
    url = base + quote(path.lstrip("/"), safe="/")
    parts = [quote(query, safe=_QUERY_SAFE)] if query else []
    if token:
        parts.append(urlencode({"token": token}))
    return f"{url}?{'&'.join(parts)}" if parts else url


def open_url(base: str, token: str | None, *, file: str | None = None,
             urlpath: str | None = None) -> str | None:
    """The URL that opens a file or folder of the repository in JupyterLab, or a URL
    path (with its query) on the server; None when neither is given."""
    if file:
        return url_for(base, LAB_TREE + file, token)
    if urlpath:
        path, _, query = urlpath.partition("?")
        return url_for(base, path, token, query)
    return None


def available(detected: frozenset[str] | None) -> list[Interface]:
    """Interfaces to print: the always-present ones, plus those the guest reported."""
    return [i for i in INTERFACES if i.always or (detected is not None and i.key in detected)]
