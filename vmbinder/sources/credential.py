"""A private git repository's credential: a token read from a file or an
environment variable of the launching machine, and the user name git sends
with it (HTTP basic authentication).

The token travels to the server only inside the launch document (mode 0600),
reaches git through repo2docker's GIT_CREDENTIAL_ENV (the text a git credential
helper prints: `username=...` and `password=...` lines, as repo2docker's own
image answers git from it, docker/git-credential-env), and is removed from the
server after the build. It is never recorded in the server's metadata, printed,
logged or put on a command line: here too, `git ls-remote` gets it in its
environment only (git_env).
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from .common import Source, excerpt, refuse

#: The user name sent with a token when none is given: GitHub takes it with any
#: token (it is the one its app installation tokens need); GitLab, Gitea and
#: Forgejo take any user name with a personal or project access token.
DEFAULT_USER = "x-access-token"
#: What a dry run shows in the token's place.
SHOWN = "<token>"
#: RFC 6750's b64token: the characters of OAuth bearer tokens and of the forges'
#: access tokens (ghp_..., github_pat_..., glpat-..., JWTs). They pass through
#: JSON, YAML and the credential protocol as they are.
TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*\Z")
TOKEN_MAX = 1024
_FILE_MAX = 64 * 1024
USER_RE = re.compile(r"[A-Za-z0-9._~+@-]{1,255}\Z")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}\Z")
#: The names a message repeats: the usual form, and too short for a token.
SHOWN_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,31}\Z")
#: Source kinds fetched with git; the others are fetched over a data repository's API.
GIT_KINDS = frozenset({"git", "gist"})
_FILE_HINT = "the file must hold the token alone, on one line (a final line break is fine)"
_ENV_HINT = "the variable must hold the token alone, without spaces or line breaks"
_CHARSET = ("letters, digits, '-', '.', '_', '~', '+', '/' and a trailing '=' (RFC 6750's "
            "token characters, which every forge's tokens use)")
#: git-credential(1): git asks each configured helper with "get" and reads the
#: credential from it. This helper prints GIT_CREDENTIAL_ENV; it is a shell
#: function in git's configuration, so the token is on no command line and in no
#: file. Its twin is GIT_HELPER in cloud-init/vmbinder_guest.py.
HELPER = "!f() { test \"$1\" = get && printf '%s\\n' \"$GIT_CREDENTIAL_ENV\"; }; f"


@dataclass(frozen=True)
class GitCredential:
    user: str
    token: str = field(repr=False)

    def shown(self) -> GitCredential:
        """The same user with SHOWN for the token: what a dry run renders."""
        return replace(self, token=SHOWN)

    def helper_text(self) -> str:
        """GIT_CREDENTIAL_ENV: what the credential helper prints."""
        return f"username={self.user}\npassword={self.token}"


def git_env(url: str, credential: GitCredential) -> dict[str, str]:
    """The environment in which git sends credential to url's host (scheme, host and
    port) only: no helper configured elsewhere (a `store` would write the token to
    disk) is asked, and the token is in GIT_CREDENTIAL_ENV alone."""
    u = urlsplit(url)
    return {
        "GIT_CREDENTIAL_ENV": credential.helper_text(),
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": "",
        "GIT_CONFIG_KEY_1": f"credential.{u.scheme}://{u.netloc}.helper", "GIT_CONFIG_VALUE_1": HELPER,
    }


def _checked(token: str, where: str, hint: str) -> str:
    """The token, or BadRequest naming what is wrong with it (never the token)."""
    if not token:
        raise refuse(f"{where} holds an empty token", hint)
    if any(c.isspace() for c in token):
        raise refuse(f"{where} holds a token with a space or line break in it", hint)
    if len(token) > TOKEN_MAX:
        raise refuse(f"{where} holds {len(token)} characters; a token has at most {TOKEN_MAX}", hint)
    if not TOKEN_RE.match(token):
        raise refuse(f"{where} holds a token with characters other than {_CHARSET}", hint)
    return token


def check_user(user: str) -> str:
    if not USER_RE.match(user) or user.startswith("-"):
        raise refuse(f"--git-user {excerpt(user)} is not a user name git can send",
                     "give 1 to 255 letters, digits or '-', '.', '_', '~', '+', '@' (no ':' or "
                     f"spaces), or leave it out for {DEFAULT_USER}")
    return user


def read_token_file(path: str) -> str:
    """The token in a file only its owner may read (as ssh asks of a private key)."""
    where = f"--git-token-file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise refuse(f"cannot read {where}: {exc.strerror}", _FILE_HINT) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise refuse(f"{where} is a folder", _FILE_HINT)
        if mode & 0o077:
            raise refuse(f"{where} may be read or changed by others (mode {mode & 0o777:04o}); "
                         "a token file must be its owner's alone",
                         f"make it private: chmod 600 {shlex.quote(path)}")
        data = os.read(fd, _FILE_MAX + 1)
    finally:
        os.close(fd)
    if len(data) > _FILE_MAX:
        raise refuse(f"{where} is longer than a token ({_FILE_MAX} bytes at most)", _FILE_HINT)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise refuse(f"{where} holds a token with characters other than {_CHARSET}",
                     _FILE_HINT) from None
    # One final line break is the file's (echo and editors write it), not the token's.
    text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    return _checked(text, where, _FILE_HINT)


def read_token_env(name: str, environ: Mapping[str, str]) -> str:
    if ENV_NAME_RE.match(name) and name in environ:
        return _checked(environ[name], f"the environment variable {name}", _ENV_HINT)
    if SHOWN_NAME_RE.match(name):
        raise refuse(f"--git-token-env {name}: the environment variable {name} is not set",
                     f"export {name} first, or give the token in a file with --git-token-file")
    # Not shown: what was given in place of a name may be the token itself.
    raise refuse("--git-token-env names no environment variable that is set (what was given is "
                 "not shown: it may be the token itself)",
                 "give the name of the variable that holds the token, e.g. --git-token-env "
                 "GITHUB_TOKEN, not the token")


def read_credential(*, token_file: str | None, token_env: str | None, user: str | None,
                    environ: Mapping[str, str] = os.environ) -> GitCredential | None:
    """The credential the options give (--git-token-file, --git-token-env,
    --git-user), or None when they give none."""
    if token_file is not None and token_env is not None:
        raise refuse("--git-token-file and --git-token-env both give the token",
                     "give one of them")
    if token_file is None and token_env is None:
        if user is not None:
            raise refuse("--git-user is the user name sent with a token, but no token was given",
                         "give the token with --git-token-file FILE or --git-token-env VAR")
        return None
    user = check_user(user) if user is not None else DEFAULT_USER
    token = read_token_file(token_file) if token_file is not None else read_token_env(token_env, environ)
    return GitCredential(user, token)


def check_source(source: Source, credential: GitCredential) -> None:
    """A token is for a git repository over http(s) only."""
    if source.kind not in GIT_KINDS:
        raise refuse(f"a git token is for private git repositories; {excerpt(source.given or source.repo)} "
                     f"is a {source.kind} source, fetched from the data repository without one",
                     "leave out --git-token-file, --git-token-env and --git-user")
    scheme = urlsplit(source.repo).scheme
    if scheme not in ("https", "http"):
        raise refuse(f"{excerpt(source.repo)} is fetched over {scheme}://, which sends no token",
                     "give the repository's https:// URL")
