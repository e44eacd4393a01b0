"""The guest's build log, read through the token-protected status service the
server serves at /vmbinder/log (over the printed URL's HTTPS, checked as
reach.trust says), or over SSH (remote.py) when that cannot be reached."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vmbinder import errors, reach
from vmbinder.guestcontract import LAYOUT
from vmbinder.providers.base import Provider, Server

log = logging.getLogger(__name__)

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
    """Reads the log of one server from offset on, over HTTPS, or through SSH for a
    server launched with --expose ssh (through: a remote.Through, made when not given)."""

    def __init__(self, provider: Provider, server: Server, extra_roots: str | None = None,
                 through=None):
        self.provider, self.server, self.extra_roots = provider, server, extra_roots
        self.context = None
        self.trusted = False
        self.through = through
        if through is None and reach.ssh_only(server):
            from vmbinder import remote

            self.through = remote.Through(provider, server)

    def check_address(self) -> None:
        """BadRequest when the server has no public address yet (over HTTPS)."""
        if reach.access(self.server).base is None:
            raise errors.BadRequest(f"{self.server.name} has no public address yet",
                                    f"wait for it: vmbinder status {self.server.name}")

    def read(self, offset: int = 0) -> Chunk | None:
        """The log from offset, or None when the status service does not answer."""
        if not self.trusted and self.through is None:
            self.server = reach.settle(self.provider, self.server)
            try:
                self.context = reach.trust(self.server, self.extra_roots)
            except reach.TrustNotYet:
                return None
            self.trusted = True
        if self.through is None:
            self.check_address()
        status, body, _ = reach.guest_get(self.server, "vmbinder/log", f"offset={offset}",
                                          context=self.context, through=self.through, timeout=20,
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


    def close(self) -> None:
        if self.through is not None:
            self.through.close()

    def over_ssh(self) -> None:
        """From now on, read through SSH (the host key checked against the console)."""
        if self.through is None:
            from vmbinder import remote

            self.through = remote.Through(self.provider, self.server)

    def raw(self, offset: int) -> Chunk:
        """The log file itself from offset, read over SSH with sudo: for a server whose
        status service does not run (a step before it failed). Its text is as the
        guest wrote it: repo2docker's lines are JSON there."""
        session = self.through.connection()
        out, err = io.BytesIO(), io.BytesIO()
        status = session.run(f"sudo -n sh -c 'wc -c < {COMMANDS_LOG}; tail -c +{offset + 1} "
                             f"{COMMANDS_LOG} | head -c {RAW_LIMIT}'", stdout=out, stderr=err)
        size, _, text = out.getvalue().partition(b"\n")
        if status != 0 or not size.strip().isdigit():
            said = err.getvalue().decode(errors="replace").strip() or f"exit status {status}"
            raise errors.CloudError(f"cannot read {COMMANDS_LOG} on {self.server.name}: {said}",
                                    f"log in and look: vmbinder ssh {self.server.name}")
        return Chunk(text=text.decode(errors="replace"), offset=offset + len(text),
                     size=int(size))


#: The most of the log file one read over SSH brings.
RAW_LIMIT = 1 << 22


def read_all(reader: Reader, offset: int = 0) -> Iterator[Chunk]:
    """Every chunk from offset to the log's current end: from the status service
    over HTTPS; when that does not answer, through SSH; and when the status
    service does not run at all, the log file itself over SSH."""
    raw, https_failed = False, False
    while True:
        chunk = reader.raw(offset) if raw else reader.read(offset)
        if chunk is None and reader.through is None:
            log.info("%s's status service does not answer over HTTPS: trying SSH",
                     reader.server.name)
            https_failed = True
            reader.over_ssh()
        try:
            if chunk is None:
                chunk = reader.read(offset)
            if chunk is None:
                raw = True
                chunk = reader.raw(offset)
        except errors.VmbinderError as exc:
            if not https_failed:
                raise
            raise errors.CloudError(
                f"{reader.server.name}'s status service does not answer, and SSH does not "
                f"reach the server either: {exc.message}", exc.hint) from None
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
