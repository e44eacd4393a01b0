"""The guest's build log, read through the token-protected status service the
server serves at /vmbinder/log (over the printed URL's HTTPS, checked as
reach.trust says), or over SSH (remote.py) when that cannot be reached."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vmbinder import errors, reach, readiness, urls
from vmbinder.guestcontract import LAYOUT
from vmbinder.providers.base import Provider, Server

#: The guest's commands log: every command of every step, repo2docker's build too.
COMMANDS_LOG = LAYOUT["log_dir"] + "/commands.log"


@dataclass(frozen=True)
class Chunk:
    """A piece of the log: its readable text, where the next one starts, the
    log's size, and the guest's phase and status then."""

    text: str
    offset: int
    size: int
    phase: str | None = None
    status: str | None = None
    ready: bool = False


class Reader:
    """Reads the log of one server from offset on, over HTTPS."""

    def __init__(self, provider: Provider, server: Server, extra_roots: str | None = None):
        self.provider, self.server, self.extra_roots = provider, server, extra_roots
        self.context = None
        self.trusted = False

    def url(self, offset: int) -> str:
        base = reach.access(self.server).base
        if base is None:
            raise errors.BadRequest(f"{self.server.name} has no public address yet",
                                    f"wait for it: vmbinder status {self.server.name}")
        return urls.url_for(base, "vmbinder/log", self.server.meta("token"), f"offset={offset}")

    def read(self, offset: int = 0) -> Chunk | None:
        """The log from offset, or None when the status service does not answer."""
        if not self.trusted:
            self.server = reach.settle(self.provider, self.server)
            try:
                self.context = reach.trust(self.server, self.extra_roots)
            except reach.TrustNotYet:
                return None
            self.trusted = True
        status, body, _ = readiness.fetch(self.url(offset), context=self.context, timeout=20,
                                          limit=1 << 22)
        if status != 200:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        return Chunk(text=doc.get("text") or "", offset=int(doc.get("offset") or 0),
                     size=int(doc.get("size") or 0), phase=doc.get("phase"),
                     status=doc.get("status"), ready=bool(doc.get("ready")))


def read_all(reader: Reader, offset: int = 0) -> Iterator[Chunk]:
    """Every chunk from offset to the log's current end."""
    while True:
        chunk = reader.read(offset)
        if chunk is None:
            raise errors.CloudError(
                f"{reader.server.name}'s status service does not answer",
                f"read the log over SSH: vmbinder ssh {reader.server.name} -- "
                f"sudo cat {COMMANDS_LOG}")
        yield chunk
        if chunk.offset >= chunk.size or chunk.offset == offset:
            return
        offset = chunk.offset


def follow(reader: Reader, write: Callable[[str], None], *, sleep: Callable[[float], None],
           interval: float = 2.0, offset: int = 0, stop: Callable[[], bool] = lambda: False) -> int:
    """Write the log as it grows until stop() (or an interrupt); the offset reached.
    A moment without an answer (a reboot, a restart) is waited through."""
    while not stop():
        chunk = reader.read(offset)
        if chunk is not None and chunk.offset != offset:
            write(chunk.text)
            offset = chunk.offset
            continue
        sleep(interval)
    return offset


def tail(text: str, lines: int) -> str:
    kept = io.StringIO(text).readlines()[-lines:] if lines else io.StringIO(text).readlines()
    return "".join(kept)
