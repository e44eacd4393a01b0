"""A provider that keeps everything in memory, with failures on request."""

from __future__ import annotations

import itertools
from dataclasses import replace

from vmbinder import errors
from vmbinder.providers.base import (
    ACTIVE,
    META,
    Created,
    Ledger,
    Provider,
    Removed,
    Resolved,
    Server,
)


class FakeProvider(Provider):
    """The required verbs only; subclasses add optional ones to capabilities."""

    kind = "fake"

    def __init__(self, *, fail_at: str | None = None, interrupt_at: str | None = None,
                 fail_removing: set[str] = frozenset(), console: str = ""):
        self.fail_at = fail_at
        self.interrupt_at = interrupt_at
        self.fail_removing = set(fail_removing)
        self.console = console
        self.resources: dict[str, dict] = {}  # id -> {"kind", "name"}
        self.servers: dict[str, Server] = {}
        self.user_data: dict[str, str] = {}
        self.calls: list[str] = []
        self._ids = (f"id-{n}" for n in itertools.count(1))

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if self.interrupt_at == name:
            raise KeyboardInterrupt
        if self.fail_at == name:
            raise errors.CloudError(f"{name} failed: HTTP 500: injected", details={"http_status": 500})

    def _make(self, ledger: Ledger, kind: str, name: str) -> str:
        rid = next(self._ids)
        self.resources[rid] = {"kind": kind, "name": name}

        def remove():
            if kind in self.fail_removing:
                raise RuntimeError(f"cannot remove {kind}")
            self.resources.pop(rid, None)
            self.servers.pop(rid, None)

        ledger.add(Created(kind, rid, name, remove, f"remove-{kind.replace(' ', '-')} {rid}"))
        return rid

    def prepare(self, spec, ledger):
        self._step("resolve")
        self._make(ledger, "keypair", "vmbinder-key")
        self._step("keypair")
        self._make(ledger, "security group", "vmbinder")
        self._step("security group")
        fip = self._make(ledger, "floating IP", "203.0.113.7")
        self._step("floating IP")
        return Resolved("img", "debian-12", "flv", "m1.small", "net", "private", "ext", "public",
                        "vmbinder-key", ("vmbinder",), "203.0.113.7", fip)

    def create(self, spec, resolved, user_data, ledger):
        self._step("create")
        sid = self._make(ledger, "server", spec.name)
        meta = {META + "token": spec.token, META + "repo": spec.source.repo, META + "tls": spec.tls}
        for key, value in (("open-file", spec.source.open), ("urlpath", spec.source.urlpath)):
            if value:
                meta[META + key] = value
        server = Server(sid, spec.name, "building", "BUILD", None, meta)
        self.servers[sid] = server
        self.user_data[sid] = user_data
        self._step("after create")
        return server

    def wait(self, server, resolved, timeout, ledger):
        self._step("wait")
        done = Server(server.id, server.name, ACTIVE, "ACTIVE", resolved.public_ip, server.metadata)
        self.servers[server.id] = done
        return done

    def get(self, name_or_id):
        for s in self.servers.values():
            if name_or_id in (s.id, s.name):
                return s
        raise errors.BadRequest(f"no vmbinder server named {name_or_id!r}")

    def list_owned(self):
        return list(self.servers.values())

    def console_log(self, server, lines=None):
        self._step("console")
        return self.console

    def set_metadata(self, server, values):
        updated = replace(server, metadata={**server.metadata, **{META + k: v for k, v in values.items()}})
        self.servers[server.id] = updated
        return updated

    def delete(self, server):
        self.servers.pop(server.id)
        self.resources.pop(server.id, None)
        return [Removed("server", server.id, server.name)]
