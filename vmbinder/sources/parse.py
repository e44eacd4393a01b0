"""The entry points: parse_source reads what the user typed (a badge around a
launch link is read as the link) and checks every field of the result;
resolve_source then lets explicit options win over what the text said."""

from __future__ import annotations

import html
import re
from dataclasses import replace

from .common import MAX_LEN, NO_REF_KINDS, Source, excerpt, has_control, refuse
from .detect import DETECTORS
from .fields import normalize_open_file, normalize_urlpath, validate_ref, validate_subdir
from .links import LAUNCH_IN_TEXT

DOI_IN_TEXT = re.compile(r"https?://(?:dx\.)?doi\.org/10\.\d+/[^\s\"'<>()\[\]]+")
_MARKUP_MAX = 2048  # badge markup around a launch link may be longer than a source


def _why_not(text: str) -> str:
    show = excerpt(text)
    if text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        return f"{show} looks like a local path; repo2docker runs on the VM, which cannot see it"
    if re.match(r"[\w.-]+/[\w.-]+\Z", text):
        return f"{show} is not a URL; for a GitHub repository write https://github.com/{text}"
    return f"{show} is not a repository URL, DOI, SWHID or Binder link"


def _parse_one(text: str, given: str) -> Source:
    show = excerpt(text)
    if len(text) > MAX_LEN:
        raise refuse(f"source {show} is {len(text)} characters long; at most {MAX_LEN} are accepted")
    if has_control(text):
        raise refuse(f"source {show} contains control characters (newline, tab, NUL, ...)")
    if text.startswith("-"):
        raise refuse(f"source {show} starts with '-' and would be read as an option by repo2docker")
    if any(c.isspace() for c in re.sub(r"^doi:\s*", "", text, flags=re.IGNORECASE)):
        raise refuse(f"source {show} contains whitespace")
    for detect in DETECTORS:
        source = detect(text, parse_source)
        if source is not None:
            break
    else:
        raise refuse(_why_not(text))
    if source.repo.startswith("-") or has_control(source.repo):
        raise refuse(f"source {show} does not give a usable repository")
    return replace(
        source,
        ref=None if source.ref is None else validate_ref(source.ref),
        subdir=None if source.subdir is None else validate_subdir(source.subdir),
        open=None if source.open is None else normalize_open_file(source.open, "the file to open"),
        urlpath=None if source.urlpath is None else normalize_urlpath(source.urlpath, "the URL path"),
        given=given,
    )


def parse_source(text: str) -> Source:
    """What the user typed -> Source. A Binder badge (Markdown, reST or HTML) around a
    /v2/ launch link is read as that link. Raises BadRequest for anything else."""
    given = text.strip()
    if not given:
        raise refuse(f"the source {excerpt(text)} is empty")
    wrapped = not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://\S*\Z", given)
    if wrapped and "\x00" not in given and len(given) <= _MARKUP_MAX:
        m = LAUNCH_IN_TEXT.search(given)
        if m is not None:
            link = html.unescape(m.group()) if "<" in given else m.group()
            return _parse_one(link, given)
        m = DOI_IN_TEXT.search(given)
        if m is not None:  # a DOI badge: Zenodo's links its image to https://doi.org/<doi>
            return _parse_one(m.group(), given)
        if re.search(r"\]\(|<a\s|:target:", given):
            raise refuse(f"{excerpt(given)} looks like a badge but holds no Binder launch link "
                         "(https://<binderhub>/v2/<provider>/<spec>) or DOI link")
    return _parse_one(given, given)


def resolve_source(text: str, *, ref: str | None = None, subdir: str | None = None,
                   open_path: str | None = None, urlpath: str | None = None) -> Source:
    """parse_source, then explicit options win over what the text says; validates all
    fields. --open (a file of the repository) and --urlpath (a URL path on the
    server) each replace whatever the text said to open."""
    source = parse_source(text)
    if ref is not None:
        if source.kind in NO_REF_KINDS:
            raise refuse(f"--ref applies to git sources only; {excerpt(source.given)} is a "
                         f"{source.kind} source, fetched as published",
                         "drop --ref; to pin a version, give the versioned DOI or record URL")
        ref = validate_ref(ref)
        segs = tuple(ref.split("/"))
        if source.ref_path[:len(segs)] == segs:  # tree/feature/x/docs --ref feature/x
            source = replace(source, open="/".join(source.ref_path[len(segs):]) or None)
        source = replace(source, ref=ref, ref_path=())
    if subdir is not None:
        source = replace(source, subdir=validate_subdir(subdir))
    if open_path is not None and urlpath is not None:
        raise refuse(f"--open {excerpt(open_path)} and --urlpath {excerpt(urlpath)} both say what "
                     "to open", "give --open for a file of the repository, or --urlpath for a "
                     "URL path on the server, not both")
    if open_path is not None:
        source = replace(source, open=normalize_open_file(open_path), urlpath=None)
    if urlpath is not None:
        source = replace(source, open=None, urlpath=normalize_urlpath(urlpath))
    return source
