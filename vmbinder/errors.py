"""One exception root for everything vmbinder refuses or fails at.

Each error carries a message (what failed, which object), a hint (what to do
next) and a class-level exit code. The CLI maps them to output in one place;
the library never exits the process.
"""

from __future__ import annotations


class VmbinderError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, *, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = dict(details or {})

    def __str__(self) -> str:
        return self.message


class BadRequest(VmbinderError):
    """The user asked for something that cannot be done as asked (exit 2)."""

    exit_code = 2


class ConfigError(VmbinderError):
    """Cloud, image, flavor, network or key not found or not usable (exit 3)."""

    exit_code = 3


class CloudError(VmbinderError):
    """The cloud refused or failed an operation (exit 4).

    details may hold http_status, request_id and the server's fault text.
    """

    exit_code = 4


class QuotaExceeded(CloudError):
    """The project's quota cannot hold what was asked for; nothing was created."""


class ReadinessTimeout(VmbinderError):
    exit_code = 5


class BuildFailed(VmbinderError):
    exit_code = 6


class UntrustedServer(VmbinderError):
    """The server's certificate is not the one its console vouches for (exit 8):
    something between vmbinder and the server may be intercepting the connection."""

    exit_code = 8


class CleanupFailed(VmbinderError):
    """Rollback or delete left something behind (exit 7). details['leftovers']
    lists (kind, id, command to remove it)."""

    exit_code = 7


class BatchPartlyFailed(VmbinderError):
    """Some seats of a batch failed, the others were made (exit 10).
    details['failed'] names each failed seat and why."""

    exit_code = 10


class Busy(VmbinderError):
    """Another run holds what this one needs (vmbinder reap's lock): nothing was done."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class Interrupted(VmbinderError):
    exit_code = 130
