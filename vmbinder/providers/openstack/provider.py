"""The OpenStack provider: openstacksdk, configured exactly as the `openstack` CLI.

Every server it makes carries the `vmbinder` tag and `vmbinder:*` metadata;
that is the only record of what exists, so any machine with the same
credentials sees the same servers.

This module holds the provider's verbs and the server itself (create, wait,
read, delete); what a server is made from is chosen in resolve, its security
group and floating IP are made in network, a batch's quotas are checked in
quotas and snapshots are made in snapshots.
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
from dataclasses import replace

from vmbinder import errors
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
    find_owned,
    redact_token,
)
from vmbinder.providers.openstack import network, quotas, resolve
from vmbinder.providers.openstack import snapshots as glance_snapshots
from vmbinder.providers.openstack.common import (
    NOVA_METADATA,
    cloud_errors,
    connect,
    floating_address,
    in_flight,
    openstacksdk,
    server_metadata,
    state_of,
)
from vmbinder.spec import LaunchSpec, TargetDefaults


class OpenStackProvider(Provider):
    kind = "openstack"
    capabilities = frozenset({"snapshot", "snapshots", "delete_snapshot", "preflight",
                              "release_orphans", "remembering"})
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
        internal, external = self._remember(
            ("networks", choice.network, choice.external_network),
            lambda: resolve.networks(conn, choice.network, choice.external_network))
        # Made once by the first server of a batch, which is made alone: the
        # others reuse them, and a rollback of one of them never removes them.
        key_name = self._remember(("keypair", choice.key_name, choice.public_key),
                                  lambda: resolve.keypair(conn, spec, ledger))
        group = self._remember(("group", choice.ssh_cidr), lambda: network.security_group(
            conn, spec, ledger, self.settle_timeout))
        fip = network.allocate_floating_ip(conn, spec, external, ledger)
        return Resolved(
            image_id=image.id, image_name=image.name, flavor_id=flavor.id, flavor_name=flavor.name,
            network_id=internal.id, network_name=internal.name,
            external_network_id=external.id, external_network_name=external.name,
            key_name=key_name, security_groups=(group,),
            public_ip=fip.floating_ip_address, floating_ip_id=fip.id,
        )

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
        conn = self.conn
        metadata = server_metadata(spec, conn.current_user_id)
        attrs = dict(
            name=spec.name, image_id=resolved.image_id, flavor_id=resolved.flavor_id,
            networks=[{"uuid": resolved.network_id}],
            security_groups=[{"name": g} for g in resolved.security_groups],
            user_data=base64.b64encode(user_data.encode()).decode(),
            metadata=metadata, tags=[OWNER_TAG],
        )
        if resolved.key_name:
            attrs["key_name"] = resolved.key_name
        with cloud_errors(f"creating server {spec.name}"), in_flight(
                ledger, "server", spec.name, lambda: self._sweep_servers(spec),
                f"openstack server delete --wait {spec.name}"):
            server = conn.compute.create_server(**attrs)
        server_id = server.id
        ledger.add(Created(
            "server", server_id, spec.name,
            lambda: self._delete_server_and_wait(server_id),
            f"openstack server delete --wait {server_id}",
        ))
        return self._record(server)

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
        record = self._record(raw)
        if record.address is None and resolved.public_ip:
            record = replace(record, address=resolved.public_ip)
        return record

    # -- reading -------------------------------------------------------------------

    def _record(self, raw) -> Server:
        fault = raw.fault or None
        if isinstance(fault, dict):
            fault = ": ".join(x.strip() for x in (fault.get("message"), fault.get("details")) if x)[:500]
        flavor = raw.flavor
        flavor_name = (flavor.get("original_name") if isinstance(flavor, dict)
                       else getattr(flavor, "original_name", None) or getattr(flavor, "name", None))
        return Server(
            id=raw.id, name=raw.name, state=state_of(raw.status, raw.task_state),
            cloud_status=raw.status or "", address=floating_address(raw.addresses),
            metadata=dict(raw.metadata or {}), fault=fault, created=raw.created_at,
            flavor=flavor_name,
        )

    def list_owned(self) -> list[Server]:
        with cloud_errors("listing vmbinder servers"):
            return [self._record(s) for s in self.conn.compute.servers(details=True, tags=OWNER_TAG)]

    def get(self, name_or_id: str) -> Server:
        return find_owned(self.list_owned(), name_or_id)

    def console_log(self, server: Server, lines: int | None = None) -> str:
        with cloud_errors(f"reading the console of {server.name}"):
            out = self.conn.compute.get_server_console_output(server.id, length=lines)
        text = out.get("output", "") if isinstance(out, dict) else str(out)
        return redact_token(text, server)

    def set_metadata(self, server: Server, values: dict[str, str]) -> Server:
        meta = {META + k: v for k, v in values.items()}
        with cloud_errors(f"recording metadata on {server.name}"):
            self.conn.compute.set_server_metadata(server.id, **meta)
        return replace(server, metadata={**server.metadata, **meta})

    # -- batches -------------------------------------------------------------------

    def preflight(self, specs: list[LaunchSpec]) -> list[quotas.Need]:
        """Resolve every seat's image, flavor, networks and key, then check the
        quotas they draw on; ConfigError or QuotaExceeded before anything is made."""
        flavors, seen = [], {}
        for spec in specs:
            c = spec.cloud
            key = (c.image, c.flavor, c.network, c.external_network, c.key_name)
            if key not in seen:
                image = resolve.image(self.conn, c.image)
                resolve.networks(self.conn, c.network, c.external_network)
                if c.key_name:
                    resolve.existing_keypair(self.conn, c.key_name)
                seen[key] = resolve.flavor(self.conn, c.flavor, image)
            flavors.append(seen[key])
        return quotas.check_quota(self.conn, flavors, [s.cloud.ssh_cidr for s in specs])

    def release_orphans(self, names: list[str]) -> list[Removed]:
        """Floating IPs allocated for these server names and attached to nothing:
        what a server deleted by hand (not with vmbinder delete) leaves behind."""
        return network.release_orphans(self.conn, names)

    def snapshot(self, server: Server, name: str, properties: dict[str, str],
                 ledger: Ledger) -> Snapshot:
        return glance_snapshots.snapshot(self.conn, server, name, properties, ledger,
                                         self.active_timeout)

    def snapshots(self, properties: dict[str, str]) -> list[Snapshot]:
        return glance_snapshots.snapshots(self.conn, properties)

    def delete_snapshot(self, snapshot: Snapshot) -> list[Removed]:
        return glance_snapshots.delete_snapshot(self.conn, snapshot)

    # -- deleting ------------------------------------------------------------------

    def delete(self, server: Server) -> list[Removed]:
        conn = self.conn
        removed: list[Removed] = []
        ips = network.floating_ips(conn, server)
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
            removed += network.delete_unused_groups(conn, groups)
        return removed
