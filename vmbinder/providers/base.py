"""The small verb set every cloud implements, and the records it trades in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vmbinder import errors
from vmbinder.spec import LaunchSpec

#: Tag on every server vmbinder creates; `list` asks the cloud for it.
OWNER_TAG = "vmbinder"
#: Prefix of every metadata key vmbinder writes.
META = "vmbinder:"

# Our few states; the cloud's own status is kept next to them.
BUILDING, ACTIVE, ERROR, STOPPED, DELETING, UNKNOWN = (
    "building", "active", "error", "stopped", "deleting", "unknown")


@dataclass(frozen=True)
class Resolved:
    """Cloud objects chosen for a launch (ids and names), from `prepare`."""

    image_id: str
    image_name: str
    flavor_id: str
    flavor_name: str
    network_id: str
    network_name: str
    external_network_id: str | None
    external_network_name: str | None
    key_name: str | None
    security_groups: tuple[str, ...]
    public_ip: str | None = None
    floating_ip_id: str | None = None


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    state: str
    cloud_status: str
    address: str | None
    metadata: dict[str, str]
    fault: str | None = None
    created: str | None = None
    flavor: str | None = None

    def meta(self, key: str) -> str | None:
        return self.metadata.get(META + key)


@dataclass
class Created:
    """One thing this attempt made, and how to remove it."""

    kind: str
    id: str
    name: str
    remove: Callable[[], None] = field(repr=False)
    #: The command a person can run to remove it by hand.
    command: str = ""


@dataclass
class Ledger:
    """What a launch attempt created, in order; rollback walks it backwards."""

    items: list[Created] = field(default_factory=list)

    def add(self, item: Created) -> None:
        self.items.append(item)


@dataclass(frozen=True)
class Snapshot:
    """An image made from a server's disk, from which servers start without building.

    id is what a launch passes as its image (an image id on a cloud, an image
    folder on the local target); properties are the vmbinder_* values it carries."""

    id: str
    name: str
    properties: dict[str, str]
    created: str | None = None


@dataclass(frozen=True)
class Removed:
    kind: str
    id: str
    name: str


class Provider(Protocol):
    #: Short name shown to users, e.g. "openstack".
    kind: str

    def prepare(self, spec: LaunchSpec, ledger: Ledger) -> Resolved:
        """Resolve image, flavor and networks, ensure keypair and security
        group, allocate the public address; record what it made in ledger."""

    def create(self, spec: LaunchSpec, resolved: Resolved, user_data: str, ledger: Ledger) -> Server:
        ...

    def wait(self, server: Server, resolved: Resolved, timeout: float, ledger: Ledger) -> Server:
        """Wait for ACTIVE and attach the public address; CloudError on ERROR."""

    def get(self, name_or_id: str) -> Server:
        ...

    def list_owned(self) -> list[Server]:
        ...

    def console_log(self, server: Server, lines: int | None = None) -> str:
        ...

    def set_metadata(self, server: Server, values: dict[str, str]) -> Server:
        """Record vmbinder:* values on the server (keys without the prefix)."""

    def delete(self, server: Server) -> list[Removed]:
        ...

    def snapshot(self, server: Server, name: str, properties: dict[str, str],
                 ledger: Ledger) -> Snapshot:
        """Stop the server, image its disk with these properties, start it again.
        The snapshot goes into ledger, so a failure after it removes it."""

    def snapshots(self, properties: dict[str, str]) -> list[Snapshot]:
        """vmbinder's snapshots carrying all of these properties, newest first."""

    def delete_snapshot(self, snapshot: Snapshot) -> list[Removed]:
        ...


def candidates(names) -> str:
    """Names for an error hint: sorted, unique, or "(none visible)"."""
    names = sorted({n for n in names if n})
    return ", ".join(names) if names else "(none visible)"


def find_owned(servers: list[Server], name_or_id: str) -> Server:
    """The one server of `servers` with this name or id, or a BadRequest naming the others."""
    hits = [s for s in servers if name_or_id in (s.id, s.name)]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise errors.BadRequest(
            f"more than one vmbinder server is named {name_or_id!r}",
            "use its id: " + ", ".join(s.id for s in hits),
        )
    raise errors.BadRequest(
        f"no vmbinder server named {name_or_id!r}",
        f"vmbinder servers here: {candidates(s.name for s in servers)} (see vmbinder list)",
    )


def redact_token(text: str, server: Server) -> str:
    """Console text with the server's Jupyter token replaced by <token>."""
    token = server.meta("token")
    return text.replace(token, "<token>") if token else text
