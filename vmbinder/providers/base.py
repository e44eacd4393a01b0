"""The verb set every target implements, if only to refuse, and the records it trades in.

The whole contract stays in this one module, which a target's author reads
first: its size is one default per verb and the records the verbs trade in
(servers, snapshots, volumes)."""

from __future__ import annotations

import abc
import base64
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from vmbinder import errors
from vmbinder.costs import Action, Size
from vmbinder.spec import LaunchSpec, MetadataLimits, TargetDefaults, check_recorded, recorded

#: Tag on every server vmbinder creates; `list` asks the cloud for it.
OWNER_TAG = "vmbinder"
#: Prefix of every metadata key vmbinder writes.
META = "vmbinder:"

# Our few states; the cloud's own status is kept next to them. A stopped server
# still holds its cores on the cloud; a shelved one holds only its disk image.
BUILDING, ACTIVE, ERROR, STOPPED, SHELVED, DELETING, UNKNOWN = (
    "building", "active", "error", "stopped", "shelved", "deleting", "unknown")


#: A volume's roles: the server's work volume (read-write, its home) or a data
#: volume (read-only, shared data sets).
WORK, DATA = "work", "data"


@dataclass(frozen=True)
class VolumeUse:
    """A volume a launch attaches, as prepare resolved or made it. The guest finds
    it at /dev/disk/by-id/virtio-<serial> (guestcontract.VOLUME_BY_ID)."""

    id: str
    name: str
    role: str
    serial: str
    #: Made by this launch (a rollback removes it), not one that was there.
    created: bool = False
    size_gb: int | None = None


@dataclass(frozen=True)
class Volume:
    """A volume vmbinder made or attached, as `vmbinder volumes` lists it. Its
    vmbinder:* metadata on the target is the only record of it."""

    id: str
    name: str
    size_gb: int
    status: str
    #: The servers it is attached to now (names where vmbinder knows them, else ids).
    attached_to: tuple[str, ...]
    metadata: dict[str, str]
    created: str | None = None
    #: Several servers may attach it at once (a shared data set).
    multiattach: bool = False

    def meta(self, key: str) -> str | None:
        return self.metadata.get(META + key)

    @property
    def made_by_vmbinder(self) -> bool:
        """Made by vmbinder (it records the owner of what it makes), not only attached."""
        return META + "owner" in self.metadata


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
    #: The address the server answers on, known before it boots (it goes into the user-data).
    public_ip: str | None = None
    floating_ip_id: str | None = None
    #: The port made for the server (when it gets no floating IP), which it boots with.
    port_id: str | None = None
    #: What the user should know about these choices (shown as warnings).
    warnings: tuple[str, ...] = ()
    #: The image's login user, recorded as vmbinder:login-user for `ssh` (None: unknown).
    login_user: str | None = None
    #: The volumes the server gets: its work volume first, then its data volumes.
    volumes: tuple[VolumeUse, ...] = ()
    #: The server's own application credential (launchdoc.care), made in create
    #: once the server's id is known; None when its care needs none.
    credential: dict | None = field(default=None, repr=False)


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
    #: Its flavor's vCPUs, where the target says.
    cores: int | None = None

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


# -- the contract ---------------------------------------------------------------------
#
# Every provider has every verb below. The required ones are abstract; an optional
# one a target cannot do refuses in words (BadRequest naming the verb and the target),
# and callers ask `provider.supports(verb)` before they use it. A verb's name is the
# name of its method.

#: What every target does: a launch, and finding, reading and removing its servers.
REQUIRED = ("prepare", "create", "wait", "get", "list_owned", "console_log", "set_metadata",
            "delete")
#: What some targets do; each provider lists the ones it does in `capabilities`.
OPTIONAL = ("snapshot", "snapshots", "delete_snapshot", "reboot", "preflight",
            "release_orphans", "remembering", "ssh_target", "volumes", "create_volume",
            "delete_volume", "stop", "start", "shelve", "unshelve", "release_ip", "sizes", "history",
            "sweep")
#: Declared for the work to come; no target does them yet.
PLANNED = ("resize", "attach_volume", "detach_volume", "logs")
VERBS = REQUIRED + OPTIONAL + PLANNED


@dataclass(frozen=True)
class SshTarget:
    """Where `ssh` reaches a server: host, port and the image's login user as the
    launch recorded it (vmbinder:login-user; None when it is not known)."""

    host: str
    port: int
    user: str | None


class Provider(abc.ABC):
    """One target's verb set (see REQUIRED, OPTIONAL and PLANNED above)."""

    #: Short name shown to users, e.g. "openstack".
    kind: str = "provider"
    #: The optional verbs this target does (names from OPTIONAL).
    capabilities: frozenset[str] = frozenset()
    #: What a launch on this target gets for the values it leaves out.
    target_defaults: TargetDefaults = TargetDefaults()
    #: The longest vmbinder:* metadata value a server on this target can record.
    metadata_limits: MetadataLimits = MetadataLimits(value_max=255)

    def url_from_here(self, url: str) -> str:
        """A source URL as this machine reaches it (the guest may see it elsewhere)."""
        return url

    def current_owner(self) -> str | None:
        """The vmbinder:owner this user's launches record, to tell their servers from
        the rest of the project's; None on a target with one user, whose servers
        are all theirs."""
        return None

    def supports(self, verb: str) -> bool:
        if verb not in VERBS:
            raise ValueError(f"{verb!r} is not a provider verb; the verbs: {', '.join(VERBS)}")
        return verb in REQUIRED or verb in self.capabilities

    def unsupported(self, verb: str) -> errors.BadRequest:
        """The refusal of a verb this target does not do."""
        can = sorted(v for v in OPTIONAL if self.supports(v))
        hint = (f"vmbinder does not {verb.replace('_', ' ')} servers on any target yet"
                if verb in PLANNED else
                f"the {self.kind} target does: {', '.join(can) if can else 'none of the optional verbs'}")
        return errors.BadRequest(f"{verb} is not supported on the {self.kind} target", hint,
                                 details={"verb": verb, "target": self.kind})

    # -- required ------------------------------------------------------------------

    @abc.abstractmethod
    def prepare(self, spec: LaunchSpec, ledger: Ledger) -> Resolved:
        """Resolve image, flavor and networks, ensure keypair and security
        group, allocate the public address; record what it made in ledger."""

    @abc.abstractmethod
    def create(self, spec: LaunchSpec, resolved: Resolved, user_data: str, ledger: Ledger) -> Server:
        """Start the server with this user-data; record it in ledger."""

    @abc.abstractmethod
    def wait(self, server: Server, resolved: Resolved, timeout: float, ledger: Ledger) -> Server:
        """Wait for ACTIVE and attach the public address; CloudError on ERROR."""

    @abc.abstractmethod
    def get(self, name_or_id: str) -> Server:
        """The vmbinder server with this name or id (see find_owned)."""

    @abc.abstractmethod
    def list_owned(self) -> list[Server]:
        """Every vmbinder server of this target."""

    @abc.abstractmethod
    def console_log(self, server: Server, lines: int | None = None) -> str:
        """The serial console's last lines, the token redacted."""

    @abc.abstractmethod
    def set_metadata(self, server: Server, values: dict[str, str]) -> Server:
        """Record vmbinder:* values on the server (keys without the prefix)."""

    @abc.abstractmethod
    def delete(self, server: Server) -> list[Removed]:
        """Remove the server and what was made for it alone."""

    # -- optional ------------------------------------------------------------------

    def snapshot(self, server: Server, name: str, properties: dict[str, str],
                 ledger: Ledger) -> Snapshot:
        """Stop the server, image its disk with these properties, start it again.
        The snapshot goes into ledger, so a failure after it removes it."""
        raise self.unsupported("snapshot")

    def snapshots(self, properties: dict[str, str]) -> list[Snapshot]:
        """vmbinder's snapshots carrying all of these properties, newest first."""
        raise self.unsupported("snapshots")

    def delete_snapshot(self, snapshot: Snapshot) -> list[Removed]:
        raise self.unsupported("delete_snapshot")

    def reboot(self, server: Server) -> None:
        """Power-cycle the server; its disk and address stay."""
        raise self.unsupported("reboot")

    def preflight(self, specs: list[LaunchSpec]) -> list:
        """Check, before anything is made, that these servers fit (quota, memory);
        what was checked, or QuotaExceeded."""
        raise self.unsupported("preflight")

    def release_orphans(self, names: list[str]) -> list[Removed]:
        """What servers of these names deleted by hand left behind, removed."""
        raise self.unsupported("release_orphans")

    def remembering(self) -> contextlib.AbstractContextManager:
        """Within it, lookups shared by many launches are made once. A target without
        such lookups keeps nothing: the default is a context that does nothing, so
        callers may always use it."""
        return contextlib.nullcontext(self)

    def ssh_target(self, server: Server) -> SshTarget:
        """Where this machine reaches the server's SSH daemon; BadRequest when it
        has no address yet."""
        raise self.unsupported("ssh_target")

    def volumes(self) -> list[Volume]:
        """Every volume vmbinder made or attached (vmbinder:* metadata), every user's."""
        raise self.unsupported("volumes")

    def create_volume(self, name: str, size_gb: int, *, from_dir: str | None = None) -> Volume:
        """A new empty volume (from_dir: an ext4 filesystem holding that folder's
        files, where the target can make one)."""
        raise self.unsupported("create_volume")

    def delete_volume(self, volume: Volume) -> list[Removed]:
        """Remove a volume attached to no server; BadRequest while it is attached."""
        raise self.unsupported("delete_volume")

    # Power: each returns the server once the target says it is in the new state;
    # its disk, address and work stay. Asked of a server already there, nothing
    # is done. The environment's own wait after start and unshelve is lifecycle's.

    def stop(self, server: Server) -> Server:
        """Power the server off (it still holds its cores on a cloud)."""
        raise self.unsupported("stop")

    def start(self, server: Server) -> Server:
        """Power a stopped server on."""
        raise self.unsupported("start")

    def shelve(self, server: Server) -> Server:
        """Put the server away: its disk kept as an image, its cores released."""
        raise self.unsupported("shelve")

    def unshelve(self, server: Server) -> Server:
        """Bring a shelved server back."""
        raise self.unsupported("unshelve")

    def release_ip(self, server: Server) -> tuple[Server, list[Removed]]:
        """Give the server's public address back to the cloud before it is stopped or
        shelved; start and unshelve then give it a new one."""
        raise self.unsupported("release_ip")

    # Costs (vmbinder.costs): read only, nothing is made.

    def sizes(self, specs: list[LaunchSpec]) -> list[Size]:
        """What each launch would hold: its flavor's cores, memory and disk."""
        raise self.unsupported("sizes")

    def history(self, server: Server) -> list[Action]:
        """The server's actions (create, stop, start, shelve, ...) with their times."""
        raise self.unsupported("history")

    def sweep(self) -> list[Removed]:
        """What servers that are gone left of this user's (their credentials), removed."""
        raise self.unsupported("sweep")

    # -- planned (no target does them yet) ------------------------------------------

    def resize(self, server: Server, flavor: str) -> Server:
        raise self.unsupported("resize")

    def attach_volume(self, server: Server, volume: str) -> None:
        raise self.unsupported("attach_volume")

    def detach_volume(self, server: Server, volume: str) -> None:
        raise self.unsupported("detach_volume")

    def logs(self, server: Server, lines: int | None = None) -> str:
        """The guest's build and service logs (not the console)."""
        raise self.unsupported("logs")


# -- finding one by name or id ------------------------------------------------------------

def candidates(names) -> str:
    """Names for an error hint: sorted, unique, or "(none visible)"."""
    names = sorted({n for n in names if n})
    return ", ".join(names) if names else "(none visible)"


def find_one(records, wanted: str, *, several: Callable[[list], Exception],
             missing: Callable[[], Exception]):
    """The one record whose id or name is wanted. Else the error several(hits) when
    more than one has that name, or missing() (which lists the candidates) when none has."""
    hits = [r for r in records if wanted in (r.id, r.name)]
    if len(hits) == 1:
        return hits[0]
    raise several(hits) if hits else missing()


def ambiguous(kind: str, wanted: str, option: str, id_of: str | None = None) -> errors.ConfigError:
    """More than one cloud object (image, flavor, network, keypair) has this name."""
    return errors.ConfigError(f"more than one {kind} is named {wanted!r}",
                              f"pass the {id_of or kind}'s id to {option} instead")


def not_found(kind: str, wanted: str, option: str, names) -> errors.ConfigError:
    """No cloud object has this name or id; names are the candidates."""
    return errors.ConfigError(f"{kind} {wanted!r} not found",
                              f"choose one with {option}: {candidates(names)}")


def find_object(records, wanted: str, kind: str, option: str, *,
                names: Callable[[], list] | None = None, id_of: str | None = None):
    """The image, flavor, network or keypair named or numbered wanted among records,
    else ConfigError; the hint lists names() (default: the records' names)."""
    return find_one(
        records, wanted,
        several=lambda hits: ambiguous(kind, wanted, option, id_of),
        missing=lambda: not_found(kind, wanted, option,
                                  names() if names else [r.name for r in records]))


def find_owned(servers: list[Server], name_or_id: str) -> Server:
    """The one server of `servers` with this name or id, or a BadRequest naming the others."""
    return find_one(
        servers, name_or_id,
        several=lambda hits: errors.BadRequest(
            f"more than one vmbinder server is named {name_or_id!r}",
            "use its id: " + ", ".join(s.id for s in hits)),
        missing=lambda: errors.BadRequest(
            f"no vmbinder server named {name_or_id!r}",
            f"vmbinder servers here: {candidates(s.name for s in servers)} (see vmbinder list)"))


def owner(server: Server) -> str | None:
    """Who launched the server (vmbinder:owner); None for a server of a vmbinder
    that did not record it."""
    return server.meta("owner")


def launched_by_other(server: Server, user: str | None) -> bool:
    """Whether the server is another user's. A server with no recorded owner is
    everyone's, and so is every server when the target has one user (user None)."""
    return user is not None and owner(server) not in (None, user)


def server_metadata(spec: LaunchSpec, user_id: str | None,
                    limits: MetadataLimits) -> dict[str, str]:
    """The vmbinder:* metadata of a server: its owner and what it records about its
    launch; BadRequest when a value is longer than the target can record."""
    values = {k: v for k, v in {"owner": user_id, **recorded(spec, limits)}.items() if v}
    check_recorded(values, limits)
    return {META + k: v for k, v in values.items()}


def volume_metadata(uses: tuple[VolumeUse, ...], limits: MetadataLimits) -> dict[str, str]:
    """The vmbinder:volume (the work volume's name) and vmbinder:data (the data
    volumes' names, comma-separated) of a server with these volumes; BadRequest
    when they are longer than the target can record."""
    values = {"volume": ",".join(u.name for u in uses if u.role == WORK),
              "data": ",".join(u.name for u in uses if u.role == DATA)}
    values = {k: v for k, v in values.items() if v}
    check_recorded(values, limits)
    return {META + k: v for k, v in values.items()}


def keypair_name(public_key: str) -> str:
    """A stable keypair name for a public key, so it is uploaded once and reused."""
    parts = public_key.split()
    if len(parts) < 2:
        raise errors.BadRequest(
            "the public key is not in OpenSSH format ('TYPE BASE64 [COMMENT]')",
            "pass --key-name with a keypair already on the cloud, or point "
            "--public-key at a .pub file",
        )
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise errors.BadRequest(
            "the public key's base64 part does not decode",
            "point --public-key at an OpenSSH .pub file (ssh-keygen -y -f KEY > KEY.pub)",
        ) from None
    return "vmbinder-" + hashlib.sha256(blob).hexdigest()[:12]


def redact_token(text: str, server: Server) -> str:
    """Console text with the server's Jupyter token replaced by <token>."""
    token = server.meta("token")
    return text.replace(token, "<token>") if token else text
