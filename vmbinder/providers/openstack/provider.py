"""The OpenStack provider: openstacksdk, configured exactly as the `openstack` CLI.

Every server it makes carries the `vmbinder` tag and `vmbinder:*` metadata;
that is the only record of what exists, so any machine with the same
credentials sees the same servers.

This module holds the provider's verbs and the server itself (create, wait,
read, delete); what a server is made from and where it is placed are chosen in
resolve (the default image in distros), its security group and its floating IP
or port are made in network, a batch's quotas are checked in quotas and
snapshots are made in snapshots, its volumes in volumes. Its size is one method
per verb of the contract, most of them a few lines that hand over to those
modules.
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
from dataclasses import replace

from vmbinder import errors
from vmbinder.costs import Action, Size
from vmbinder.https import OUTCOME_KEYS
from vmbinder.providers.base import (
    META,
    OWNER_TAG,
    Created,
    Ledger,
    Provider,
    Removed,
    Resolved,
    Server,
    Snapshot,
    SshTarget,
    Volume,
    find_owned,
    redact_token,
    volume_metadata,
)
from vmbinder.providers.openstack import credential as appcred
from vmbinder.providers.openstack import distros, network, power, quotas, resolve, usage
from vmbinder.providers.openstack import snapshots as glance_snapshots
from vmbinder.providers.openstack import volumes as cinder_volumes
from vmbinder.providers.openstack.common import (
    NOVA_METADATA,
    cloud_errors,
    connect,
    in_flight,
    openstacksdk,
    server_address,
    server_metadata,
    state_of,
)
from vmbinder.spec import AUTO, LaunchSpec, TargetDefaults

#: vmbinder:user-data-via: how the server got its user-data.
CONFIG_DRIVE, METADATA_SERVICE = "config-drive", "metadata-service"


#: Nova's words for a server whose console it cannot read yet (ConsoleNotAvailable,
#: InstanceNotReady).
NO_CONSOLE = ("does not have a console available", "is not ready")


def refuses_config_drive(exc: errors.CloudError) -> bool:
    """Nova's 400 to a create request because of its config drive."""
    return (exc.details.get("http_status") == 400
            and re.search(r"config[\s_-]?drive", exc.message, re.IGNORECASE) is not None)


class OpenStackProvider(Provider):
    kind = "openstack"
    capabilities = frozenset({"snapshot", "snapshots", "delete_snapshot", "preflight",
                              "release_orphans", "remembering", "ssh_target", "volumes",
                              "create_volume", "delete_volume", "stop", "start", "shelve",
                              "unshelve", "release_ip", "sizes", "history", "sweep"})
    #: A floating IP with a public name (<ip>.sslip.io unless --hostname): Let's Encrypt.
    target_defaults = TargetDefaults()
    metadata_limits = NOVA_METADATA
    _memo_lock = threading.Lock()

    def __init__(self, cloud: str | None = None, *, conn=None, active_timeout: float = 600,
                 settle_timeout: float = 60):
        self.cloud_name = cloud
        self._conn = conn
        self.active_timeout = active_timeout
        self.settle_timeout = settle_timeout
        #: Lookups kept for the length of a batch (see remembering); None otherwise.
        self._memo: dict | None = None

    @property
    def conn(self):
        if self._conn is None:
            self._conn = connect(self.cloud_name)
        return self._conn

    @contextlib.contextmanager
    def remembering(self):
        """Within it, image, flavor, network, keypair and security group are looked
        up (and made) once, not once per server: a batch of 50 asks 50 times less."""
        self._memo = {}
        try:
            yield self
        finally:
            self._memo = None

    def _remember(self, key: tuple, lookup):
        if self._memo is None:
            return lookup()
        with self._memo_lock:
            if key not in self._memo:
                self._memo[key] = lookup()
            return self._memo[key]

    # -- preparing -----------------------------------------------------------------

    def prepare(self, spec: LaunchSpec, ledger: Ledger) -> Resolved:
        choice = spec.cloud
        server_metadata(spec, None)  # refuses values too long to record, before anything is made
        self._refuse_duplicate(spec.name)
        conn = self.conn
        image = self._remember(("image", choice.image), lambda: resolve.image(conn, choice.image))
        flavor = self._remember(("flavor", choice.flavor, image.id),
                                lambda: resolve.flavor(conn, choice.flavor, image))
        place = self._remember(
            ("networks", choice.network, choice.external_network, choice.floating_ip),
            lambda: resolve.networks(conn, choice.network, choice.external_network,
                                     choice.floating_ip))
        # The volumes named are checked (found, free) before anything is made.
        uses = cinder_volumes.named(conn, spec, self.current_owner(), self._server_names,
                                    self.metadata_limits) if spec.volume or spec.data else ()
        # Made once by the first server of a batch, which is made alone: the
        # others reuse them, and a rollback of one of them never removes them.
        # The group comes first: one that lets in too much is refused before
        # anything is made.
        group = self._remember(("group", choice.ssh_cidr, choice.expose), lambda: network.security_group(
            conn, spec, ledger, self.settle_timeout))
        key_name = self._remember(("keypair", choice.key_name, choice.public_key),
                                  lambda: resolve.keypair(conn, spec, ledger))
        net, external = place.network, place.external
        chosen = dict(
            image_id=image.id, image_name=image.name, flavor_id=flavor.id, flavor_name=flavor.name,
            network_id=net.id, network_name=net.name,
            external_network_id=external.id if external else None,
            external_network_name=external.name if external else None,
            key_name=key_name, security_groups=(group.name,),
            login_user=distros.login_user(image),
        )
        if spec.volume_size:
            uses = (cinder_volumes.work_volume(conn, spec, self.current_owner(), ledger), *uses)
        chosen["volumes"] = uses
        if appcred.needed(spec):
            chosen["credential"] = appcred.plan(conn, spec, self.current_owner())
        if place.floating:
            fip = network.allocate_floating_ip(conn, spec, external, ledger)
            return Resolved(**chosen, public_ip=fip.floating_ip_address, floating_ip_id=fip.id)
        # No floating IP: the server's own address is its address, and the guest
        # must know it before it boots, so its port is made now.
        port = network.create_port(conn, spec, net, group.id, ledger)
        address = network.port_address(port)
        warnings = () if place.routable else (
            f"{spec.name} gets no floating IP (--floating-ip no) and network {net.name} is not "
            f"routable: its address {address} answers only from inside the cloud",)
        return Resolved(**chosen, public_ip=address, port_id=port.id, warnings=warnings)

    def _server_names(self) -> dict[str, str]:
        return {s.id: s.name for s in self.list_owned()}

    def _refuse_duplicate(self, name: str) -> None:
        with cloud_errors("listing vmbinder servers"):
            same = [s for s in self.conn.compute.servers(tags=OWNER_TAG, name=f"^{name}$")
                    if s.name == name]
        if same:
            raise errors.BadRequest(
                f"a vmbinder server named {name!r} already exists ({same[0].id})",
                f"choose another --name, or remove it first: vmbinder delete {name}",
            )

    # -- creating ------------------------------------------------------------------

    def create(self, spec: LaunchSpec, resolved: Resolved, user_data: str, ledger: Ledger) -> Server:
        """The server, booted on the port prepare made or on its network (Nova then
        makes the port), with a config drive unless --config-drive no. With auto,
        a cloud that refuses config drives gets the request again without one;
        vmbinder:user-data-via records which way the user-data went."""
        metadata = server_metadata(spec, self.current_owner())
        attrs = dict(
            name=spec.name, image_id=resolved.image_id, flavor_id=resolved.flavor_id,
            user_data=base64.b64encode(user_data.encode()).decode(), tags=[OWNER_TAG],
        )
        if resolved.port_id:
            # The port carries the security group; Nova applies none to a port it did not make.
            attrs["networks"] = [{"port": resolved.port_id}]
            metadata[f"{META}address"] = resolved.public_ip
        else:
            attrs["networks"] = [{"uuid": resolved.network_id}]
            attrs["security_groups"] = [{"name": g} for g in resolved.security_groups]
        if resolved.key_name:
            attrs["key_name"] = resolved.key_name
        if resolved.login_user:
            metadata[f"{META}login-user"] = resolved.login_user
        if resolved.volumes:
            attrs["block_device_mapping"] = cinder_volumes.block_devices(resolved.image_id,
                                                                         resolved.volumes)
            metadata.update(volume_metadata(resolved.volumes, self.metadata_limits))
        mode = spec.cloud.config_drive
        try:
            server = self._boot(spec, attrs, metadata, ledger, config_drive=mode != "no")
        except errors.CloudError as exc:
            if mode != AUTO or not refuses_config_drive(exc):
                raise
            server = self._boot(spec, attrs, metadata, ledger, config_drive=False)
        server_id = server.id
        ledger.add(Created(
            "server", server_id, spec.name,
            lambda: self._delete_server_and_wait(server_id),
            f"openstack server delete --wait {server_id}",
        ))
        record = self._record(server)
        if resolved.credential:
            # Recorded on the server once it is ACTIVE (wait): Nova refuses metadata
            # while it builds.
            cred_id = appcred.create(self.conn, spec, server_id, resolved.credential, ledger)
            record = replace(record, metadata={**record.metadata, f"{META}credential": cred_id})
        return record

    def _boot(self, spec: LaunchSpec, attrs: dict, metadata: dict, ledger: Ledger, *,
              config_drive: bool):
        via = CONFIG_DRIVE if config_drive else METADATA_SERVICE
        extra = {"config_drive": True} if config_drive else {}
        with cloud_errors(f"creating server {spec.name}"), in_flight(
                ledger, "server", spec.name, lambda: self._sweep_servers(spec),
                f"openstack server delete --wait {spec.name}"):
            return self.conn.compute.create_server(
                **attrs, **extra, metadata={**metadata, f"{META}user-data-via": via})

    def _sweep_servers(self, spec: LaunchSpec) -> None:
        """Servers of this name carrying this launch's token: what a create call that
        failed or was interrupted may have made."""
        mine = [s for s in self.conn.compute.servers(tags=OWNER_TAG, name=f"^{re.escape(spec.name)}$")
                if s.name == spec.name and (s.metadata or {}).get(f"{META}token") == spec.token]
        for server in mine:
            self._delete_server_and_wait(server.id)

    def _delete_server_and_wait(self, server_id: str) -> None:
        conn = self.conn
        server = conn.compute.get_server(server_id) if server_id else None
        conn.compute.delete_server(server, ignore_missing=True)
        conn.compute.wait_for_delete(server, interval=1, wait=self.active_timeout)

    def wait(self, server: Server, resolved: Resolved, timeout: float, ledger: Ledger) -> Server:
        sdk = openstacksdk()
        conn = self.conn
        from openstack.compute.v2.server import Server as RawServer

        raw = RawServer(id=server.id)  # the first poll reads it
        try:
            with cloud_errors(f"waiting for server {server.name}"):
                raw = conn.compute.wait_for_server(
                    raw, status="ACTIVE", failures=["ERROR"], interval=2, wait=timeout)
        except errors.CloudError as exc:
            if isinstance(exc.__cause__, sdk.exceptions.ResourceFailure):
                with cloud_errors(f"reading server {server.name}"):
                    failed = self._record(conn.compute.get_server(server.id))
                raise errors.CloudError(
                    f"server {server.name} went to ERROR: {failed.fault or 'no fault recorded'}",
                    "a 'No valid host' fault means no compute host fits the flavor: "
                    "try a smaller --flavor",
                    details={"server_id": server.id, "fault": failed.fault},
                ) from exc
            if isinstance(exc.__cause__, sdk.exceptions.ResourceTimeout):
                with cloud_errors(f"reading server {server.name}"):
                    status = conn.compute.get_server(server.id).status
                raise errors.CloudError(
                    f"server {server.name} was not ACTIVE after {timeout:.0f} s "
                    f"(status {status})", "the cloud may be overloaded; try again later",
                ) from exc
            raise
        if resolved.floating_ip_id:
            network.attach_floating_ip(conn, server, resolved)
        cinder_volumes.mark_used(conn, resolved.volumes, server.name)
        record = self._record(raw)
        if record.address is None and resolved.public_ip:
            record = replace(record, address=resolved.public_ip)
        # A cloud may give a config drive that was not asked for (its image says
        # img_config_drive=mandatory, or Nova's force_config_drive): record what it did.
        via = CONFIG_DRIVE if str(raw.has_config_drive or "").lower() in ("true", "1") \
            else METADATA_SERVICE
        if record.meta("user-data-via") not in (None, via):
            record = self.set_metadata(record, {"user-data-via": via})
        if server.meta("credential") and record.meta("credential") != server.meta("credential"):
            record = self.set_metadata(record, {"credential": server.meta("credential")})
        return record

    # -- reading -------------------------------------------------------------------

    def _record(self, raw) -> Server:
        fault = raw.fault or None
        if isinstance(fault, dict):
            fault = ": ".join(x.strip() for x in (fault.get("message"), fault.get("details")) if x)[:500]
        flavor = raw.flavor
        flavor_name = (flavor.get("original_name") if isinstance(flavor, dict)
                       else getattr(flavor, "original_name", None) or getattr(flavor, "name", None))
        cores = flavor.get("vcpus") if isinstance(flavor, dict) else getattr(flavor, "vcpus", None)
        return Server(
            id=raw.id, name=raw.name, state=state_of(raw.status, raw.task_state),
            cloud_status=raw.status or "", address=server_address(raw.addresses, raw.metadata),
            metadata=dict(raw.metadata or {}), fault=fault, created=raw.created_at,
            flavor=flavor_name, cores=cores,
        )

    def current_owner(self) -> str | None:
        """The Keystone user id create records as vmbinder:owner."""
        with cloud_errors("finding who you are on the cloud"):
            return self.conn.current_user_id

    def list_owned(self) -> list[Server]:
        with cloud_errors("listing vmbinder servers"):
            return [self._record(s) for s in self.conn.compute.servers(details=True, tags=OWNER_TAG)]

    def get(self, name_or_id: str) -> Server:
        return find_owned(self.list_owned(), name_or_id)

    def console_log(self, server: Server, lines: int | None = None) -> str:
        """The console's tail ("" while the cloud has none yet: as a server starts,
        Nova answers 404 "Guest does not have a console available" or 409
        "Instance ... is not ready")."""
        sdk = openstacksdk()
        with cloud_errors(f"reading the console of {server.name}"):
            try:
                out = self.conn.compute.get_server_console_output(server.id, length=lines)
            except (sdk.exceptions.NotFoundException, sdk.exceptions.ConflictException) as exc:
                if not any(words in str(exc.details or exc.message or exc) for words in NO_CONSOLE):
                    raise
                return ""
        text = out.get("output", "") if isinstance(out, dict) else str(out)
        return redact_token(text, server)

    def ssh_target(self, server: Server) -> SshTarget:
        """The server's public address (its floating IP, or its own on a routable
        network), port 22."""
        if not server.address:
            raise errors.BadRequest(
                f"{server.name} has no address yet (status {server.state})",
                f"wait for it: vmbinder status {server.name}")
        return SshTarget(server.address, 22, server.meta("login-user"))

    def sizes(self, specs: list[LaunchSpec]) -> list[Size]:
        """Each launch's flavor (chosen as prepare does), read only."""
        conn, found = self.conn, []
        for spec in specs:
            c = spec.cloud
            image = self._remember(("image", c.image), lambda c=c: resolve.image(conn, c.image))
            flavor = self._remember(("flavor", c.flavor, image.id),
                                    lambda c=c, i=image: resolve.flavor(conn, c.flavor, i))
            found.append(usage.size(image, flavor))
        return found

    def history(self, server: Server) -> list[Action]:
        return usage.history(self.conn, server)

    def set_metadata(self, server: Server, values: dict[str, str]) -> Server:
        meta = {META + k: v for k, v in values.items()}
        with cloud_errors(f"recording metadata on {server.name}"):
            self.conn.compute.set_server_metadata(server.id, **meta)
        return replace(server, metadata={**server.metadata, **meta})

    # -- power ---------------------------------------------------------------------

    def stop(self, server: Server) -> Server:
        return self._record(power.stop(self.conn, server, self.active_timeout))

    def start(self, server: Server) -> Server:
        # A shelved one is refused by power.start (it names unshelve), with nothing made.
        shelved = server.cloud_status in (power.SHELVED, power.OFFLOADED)
        address = None if shelved else network.new_floating_ip(self.conn, server)
        return self._readdressed(power.start(self.conn, server, self.active_timeout), address)

    def shelve(self, server: Server) -> Server:
        return self._record(power.shelve(self.conn, server, self.active_timeout))

    def unshelve(self, server: Server) -> Server:
        # A stopped one is refused by power.unshelve (it names start), with nothing made.
        address = None if server.cloud_status == power.SHUTOFF else network.new_floating_ip(
            self.conn, server)
        return self._readdressed(power.unshelve(self.conn, server, self.active_timeout), address)

    def release_ip(self, server: Server) -> tuple[Server, list[Removed]]:
        """The server's floating IP deleted, the network it came from recorded first
        (vmbinder:released; Nova records nothing on a shelved server), and with it
        the certificate's recorded outcome, which was for that address."""
        ips = network.attached_floating_ips(self.conn, server)
        shelved = server.cloud_status in (power.SHELVED, power.OFFLOADED)
        if not ips and server.meta(network.RELEASED):
            raise errors.BadRequest(
                f"{server.name}'s floating IP is released already",
                f"vmbinder {'unshelve' if shelved else 'start'} {server.name} gives it a new one")
        if not ips:
            raise errors.BadRequest(
                f"{server.name} has no floating IP to release",
                "its address is its own on its network: leave out --release-ip")
        if shelved:
            raise errors.BadRequest(
                f"{server.name} is shelved already: its floating IP can only be released "
                "as it is shelved", f"vmbinder unshelve {server.name}, then "
                f"vmbinder shelve --release-ip {server.name}")
        server = self.set_metadata(server, {network.RELEASED: ips[0].floating_network_id,
                                            **{k: "" for k in OUTCOME_KEYS}})
        return replace(server, address=None), network.release_floating_ips(self.conn, server)

    def _readdressed(self, raw, address: str | None) -> Server:
        """A server back up; given a new floating IP (address), that address is its
        own now and vmbinder:released is taken back (Nova's record of its addresses
        can lag behind, listing the old one or not yet the new one)."""
        record = self._record(raw)
        if address is None:
            return record
        record = self.set_metadata(record, {network.RELEASED: ""})
        return replace(record, address=address)

    # -- batches -------------------------------------------------------------------

    def preflight(self, specs: list[LaunchSpec]) -> list[quotas.Need]:
        """Resolve every seat's image, flavor, networks and key, then check the
        quotas they draw on (a floating IP only for the seats that get one);
        ConfigError or QuotaExceeded before anything is made."""
        flavors, floating, seen = [], 0, {}
        for spec in specs:
            c = spec.cloud
            key = (c.image, c.flavor, c.network, c.external_network, c.floating_ip, c.key_name)
            if key not in seen:
                image = resolve.image(self.conn, c.image)
                place = resolve.networks(self.conn, c.network, c.external_network, c.floating_ip)
                if c.key_name:
                    resolve.existing_keypair(self.conn, c.key_name)
                seen[key] = resolve.flavor(self.conn, c.flavor, image), place.floating
            flavors.append(seen[key][0])
            floating += seen[key][1]
        groups = [(s.cloud.ssh_cidr, s.cloud.expose) for s in specs]
        return quotas.check_quota(self.conn, flavors, groups, floating_ips=floating,
                                  volume_sizes=[s.volume_size for s in specs if s.volume_size])

    def release_orphans(self, names: list[str]) -> list[Removed]:
        """Floating IPs and ports made for these server names and attached to
        nothing, and the groups nothing uses then: what a server deleted by hand
        (not with vmbinder delete) leaves behind; and the credentials of servers
        that are gone."""
        return network.release_orphans(self.conn, names, free_groups=True) + self.sweep()

    def sweep(self) -> list[Removed]:
        """The application credentials of servers that are gone, and those servers'
        floating IPs and ports (a server that deleted itself leaves them)."""
        live = {s.id for s in self.list_owned()}
        removed, names = appcred.sweep(self.conn, self.current_owner(), live)
        return removed + (network.release_orphans(self.conn, names, free_groups=True)
                          if names else [])

    def snapshot(self, server: Server, name: str, properties: dict[str, str],
                 ledger: Ledger) -> Snapshot:
        return glance_snapshots.snapshot(self.conn, server, name, properties, ledger,
                                         self.active_timeout)

    def snapshots(self, properties: dict[str, str]) -> list[Snapshot]:
        return glance_snapshots.snapshots(self.conn, properties)

    def delete_snapshot(self, snapshot: Snapshot) -> list[Removed]:
        return glance_snapshots.delete_snapshot(self.conn, snapshot)

    # -- volumes -------------------------------------------------------------------

    def volumes(self) -> list[Volume]:
        return cinder_volumes.listed(self.conn, self._server_names)

    def create_volume(self, name: str, size_gb: int, *, from_dir: str | None = None) -> Volume:
        if from_dir:
            raise errors.BadRequest(
                "--from-dir is for the local target: a cloud's volume cannot be filled from "
                "a folder on this machine",
                "make the volume empty (leave --from-dir out), attach it with --data to a "
                "server and copy the files there")
        return cinder_volumes.create(self.conn, name, size_gb, self.current_owner())

    def delete_volume(self, volume: Volume) -> list[Removed]:
        return cinder_volumes.delete(self.conn, volume, self.active_timeout)

    # -- deleting ------------------------------------------------------------------

    def delete(self, server: Server) -> list[Removed]:
        conn = self.conn
        removed: list[Removed] = []
        ips = network.floating_ips(conn, server)
        # A server vmbinder made a port for records its address (see create).
        ports = network.server_ports(conn, server) if server.meta("address") else []
        raw = None
        with cloud_errors(f"deleting server {server.name}"):
            raw = conn.compute.get_server(server.id)
            groups = [g["name"] for g in (raw.security_groups or []) if "name" in g]
            for ip in ips:
                conn.network.delete_ip(ip, ignore_missing=True)
                removed.append(Removed("floating IP", ip.id, ip.floating_ip_address))
            conn.compute.delete_server(raw, ignore_missing=True)
            conn.compute.wait_for_delete(raw, interval=1, wait=self.active_timeout)
            removed.append(Removed("server", server.id, server.name))
            # Nova leaves a port it did not make; its group is free once it is gone.
            for port in ports:
                conn.network.delete_port(port, ignore_missing=True)
                removed.append(Removed("port", port.id, network.port_address(port) or port.id))
            removed += network.delete_unused_groups(conn, groups)
        removed += appcred.delete(conn, server, self.current_owner())
        return removed
