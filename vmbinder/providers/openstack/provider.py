"""The OpenStack provider: openstacksdk, configured exactly as the `openstack` CLI.

Every server it makes carries the `vmbinder` tag and `vmbinder:*` metadata;
that is the only record of what exists, so any machine with the same
credentials sees the same servers.
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
from dataclasses import replace

from vmbinder import errors
from vmbinder.providers.openstack import quotas
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
    ambiguous,
    candidates,
    find_object,
    find_owned,
    redact_token,
)
from vmbinder.providers.openstack.common import (
    MIN_DISK_GB,
    MIN_RAM_MB,
    NOVA_METADATA,
    PREFERRED_IMAGES,
    _sdk,
    bootable,
    cloud_errors,
    connect,
    existing_rules,
    find_or_none,
    floating_address,
    keypair_name,
    security_group_name,
    server_metadata,
    state_of,
    wanted_rules,
)
from vmbinder.spec import LaunchSpec, TargetDefaults

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")


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

    @staticmethod
    @contextlib.contextmanager
    def _in_flight(ledger: Ledger, kind: str, name: str, sweep, command: str):
        """Around a call that makes something: if it fails or is interrupted, the cloud
        may still have made it (a dropped connection, a timeout), so until it returns
        a rollback sweeps for it by its ownership marks."""
        pending = Created(kind, "(being made)", name, sweep, command)
        ledger.add(pending)
        yield
        ledger.items.remove(pending)

    # -- resolving -----------------------------------------------------------------

    def _find(self, kind: str, finder, name_or_id: str, lister, option: str):
        """One request, the proxy's find_* (by id, else by name), then find_object's errors."""
        sdk = _sdk()
        try:
            with cloud_errors(f"looking up {kind} {name_or_id!r}"):
                found = find_or_none(finder, name_or_id)
        except errors.CloudError as exc:
            if isinstance(exc.__cause__, sdk.exceptions.DuplicateResource):
                raise ambiguous(kind, name_or_id, option) from exc
            raise
        return self._one(kind, [found] if found is not None else [], name_or_id, option, lister)

    def _one(self, kind: str, hits: list, wanted: str, option: str, lister):
        """The single record named or numbered wanted among hits, else ConfigError
        (listing what there is, for the hint)."""
        def names():
            with cloud_errors(f"listing {kind}s"):
                return [x.name for x in lister()]

        return find_object(hits, wanted, kind, option, names=names)

    def _image(self, wanted: str | None):
        conn = self.conn
        if wanted:
            # One request: by id when it looks like one, else by name.
            with cloud_errors(f"looking up image {wanted!r}"):
                if UUID_RE.match(wanted):
                    found = find_or_none(conn.image.find_image, wanted)
                    hits = [found] if found is not None else []
                else:
                    hits = list(conn.image.images(name=wanted))
            return self._one("image", hits, wanted, "--image", conn.image.images)
        with cloud_errors("listing images"):
            images = bootable(conn.image.images(status="active"))
        for pattern in PREFERRED_IMAGES:
            matches = sorted(
                (i for i in images if re.search(pattern, i.name or "", re.IGNORECASE)),
                key=lambda i: i.created_at or "", reverse=True,
            )
            if matches:
                return matches[0]
        raise errors.ConfigError(
            "no --image given and no Ubuntu 24.04/22.04 or Debian 13/12 image found",
            f"choose one with --image (or VMBINDER_IMAGE): {candidates(i.name for i in images)}",
        )

    def _flavor(self, wanted: str | None, image=None):
        conn = self.conn
        with cloud_errors("listing flavors"):
            flavors = list(conn.compute.flavors())
        if wanted:
            return self._one("flavor", flavors, wanted, "--flavor", lambda: flavors)
        # An image's min_disk (such as the 20 GB disk of `vmbinder image upload`) raises the floor.
        ram = max(MIN_RAM_MB, getattr(image, "min_ram", 0) or 0)
        disk = max(MIN_DISK_GB, getattr(image, "min_disk", 0) or 0)
        fits = [f for f in flavors if f.ram >= ram and f.disk >= disk]
        if not fits:
            raise errors.ConfigError(
                f"no --flavor given and no flavor has {ram} MB of RAM and {disk} GB of disk",
                f"choose one with --flavor (or VMBINDER_FLAVOR): {candidates(f.name for f in flavors)}",
            )
        return min(fits, key=lambda f: (f.ram, f.vcpus, f.disk, f.name))

    def _networks(self, wanted: str | None, wanted_external: str | None):
        conn = self.conn
        with cloud_errors("listing networks"):
            nets = list(conn.network.networks())
        external = [n for n in nets if n.is_router_external]
        internal = [n for n in nets if not n.is_router_external]

        def pick(wanted, pool, kind, option):
            if wanted:
                return find_object(pool, wanted, kind, option, id_of="network")
            if len(pool) == 1:
                return pool[0]
            why = "none is visible" if not pool else "there are several"
            raise errors.ConfigError(
                f"no {option} given and {why}",
                f"choose one with {option}: {candidates(n.name for n in pool)}",
            )

        return (
            pick(wanted, internal, "network", "--network"),
            pick(wanted_external, external, "external network", "--external-network"),
        )

    def _keypair(self, spec: LaunchSpec, ledger: Ledger) -> str | None:
        conn = self.conn
        choice = spec.cloud
        if choice.key_name:
            kp = self._find("keypair", conn.compute.find_keypair, choice.key_name,
                            conn.compute.keypairs, "--key-name")
            return kp.name
        if not choice.public_key:
            return None
        name = keypair_name(choice.public_key)
        with cloud_errors(f"looking up keypair {name}"):
            if find_or_none(conn.compute.find_keypair, name) is not None:
                return name
            with self._in_flight(ledger, "keypair", name,
                                 lambda: conn.compute.delete_keypair(name, ignore_missing=True),
                                 f"openstack keypair delete {name}"):
                conn.compute.create_keypair(name=name, public_key=choice.public_key.strip())
        ledger.add(Created(
            "keypair", name, name,
            lambda: conn.compute.delete_keypair(name, ignore_missing=True),
            f"openstack keypair delete {name}",
        ))
        return name

    def _security_group(self, spec: LaunchSpec, ledger: Ledger) -> str:
        conn = self.conn
        name = security_group_name(spec.cloud.ssh_cidr)
        project_id = conn.current_project_id
        with cloud_errors(f"preparing security group {name}"):
            found = list(conn.network.security_groups(name=name, project_id=project_id))
            group = found[0] if found else None
            if group is None:
                with self._in_flight(ledger, "security group", name,
                                     lambda: self._sweep_group(name),
                                     f"openstack security group delete {name}"):
                    group = conn.network.create_security_group(
                        name=name, description="vmbinder: ingress 22, 80 and 443 only")
                group_id = group.id
                ledger.add(Created(
                    "security group", group_id, name,
                    lambda: self._delete_created_group(group_id),
                    f"openstack security group delete {group_id}",
                ))
            missing = wanted_rules(spec.cloud.ssh_cidr) - existing_rules(group.security_group_rules or [])
            if missing:
                conn.network.create_security_group_rules([
                    {"security_group_id": group.id, "direction": "ingress", "protocol": "tcp",
                     "ethertype": eth, "port_range_min": port, "port_range_max": port,
                     "remote_ip_prefix": prefix}
                    for eth, port, prefix in sorted(missing)
                ])
        return name

    def _delete_created_group(self, group_id: str) -> None:
        """Rollback of a group this attempt made. A server deleted while it was
        still building can have its port removed by the cloud a little later,
        so "in use" is retried for a while before it counts as a leftover."""
        import tenacity

        sdk = _sdk()
        for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(sdk.exceptions.ConflictException),
            wait=tenacity.wait_exponential(multiplier=0.5, max=5),
            stop=tenacity.stop_after_delay(self.settle_timeout),
            reraise=True,
        ):
            with attempt:
                self.conn.network.delete_security_group(group_id, ignore_missing=True)

    def _sweep_group(self, name: str) -> None:
        conn = self.conn
        group = find_or_none(conn.network.find_security_group, name,
                             project_id=conn.current_project_id)
        if group is not None:
            self._delete_created_group(group.id)

    def _delete_group_if_unused(self, group_id: str) -> bool:
        """Delete a vmbinder security group unless a port still uses it."""
        sdk = _sdk()
        try:
            self.conn.network.delete_security_group(group_id, ignore_missing=True)
        except sdk.exceptions.ConflictException:
            return False  # another server uses it: leave it
        return True

    def prepare(self, spec: LaunchSpec, ledger: Ledger) -> Resolved:
        choice = spec.cloud
        server_metadata(spec, None)  # refuses values too long to record, before anything is made
        self._refuse_duplicate(spec.name)
        image = self._remember(("image", choice.image), lambda: self._image(choice.image))
        flavor = self._remember(("flavor", choice.flavor, image.id),
                                lambda: self._flavor(choice.flavor, image))
        network, external = self._remember(
            ("networks", choice.network, choice.external_network),
            lambda: self._networks(choice.network, choice.external_network))
        # Made once by the first server of a batch, which is made alone: the
        # others reuse them, and a rollback of one of them never removes them.
        key_name = self._remember(("keypair", choice.key_name, choice.public_key),
                                  lambda: self._keypair(spec, ledger))
        group = self._remember(("group", choice.ssh_cidr), lambda: self._security_group(spec, ledger))
        conn = self.conn
        with cloud_errors(f"allocating a floating IP on {external.name}"), self._in_flight(
                ledger, "floating IP", spec.name, lambda: self.release_orphans([spec.name]),
                f"openstack floating ip list --long  # description {META}{spec.name}"):
            fip = conn.network.create_ip(
                floating_network_id=external.id, description=f"{META}{spec.name}")
        fip_id = fip.id
        ledger.add(Created(
            "floating IP", fip_id, fip.floating_ip_address,
            lambda: conn.network.delete_ip(fip_id, ignore_missing=True),
            f"openstack floating ip delete {fip_id}",
        ))
        return Resolved(
            image_id=image.id, image_name=image.name, flavor_id=flavor.id, flavor_name=flavor.name,
            network_id=network.id, network_name=network.name,
            external_network_id=external.id, external_network_name=external.name,
            key_name=key_name, security_groups=(group,),
            public_ip=fip.floating_ip_address, floating_ip_id=fip_id,
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
        with cloud_errors(f"creating server {spec.name}"), self._in_flight(
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
        sdk = _sdk()
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
            with cloud_errors(f"attaching floating IP {resolved.public_ip}"):
                ports = list(conn.network.ports(device_id=server.id, network_id=resolved.network_id))
                if not ports:
                    raise errors.CloudError(f"server {server.name} has no port on {resolved.network_name}")
                conn.network.update_ip(resolved.floating_ip_id, port_id=ports[0].id)
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
                image = self._image(c.image)
                self._networks(c.network, c.external_network)
                if c.key_name:
                    self._find("keypair", self.conn.compute.find_keypair, c.key_name,
                               self.conn.compute.keypairs, "--key-name")
                seen[key] = self._flavor(c.flavor, image)
            flavors.append(seen[key])
        return quotas.check_quota(self.conn, flavors, [s.cloud.ssh_cidr for s in specs])

    def release_orphans(self, names: list[str]) -> list[Removed]:
        """Floating IPs allocated for these server names and attached to nothing:
        what a server deleted by hand (not with vmbinder delete) leaves behind."""
        wanted = {f"{META}{n}" for n in names}
        removed = []
        with cloud_errors("removing floating IPs of deleted servers"):
            for ip in self.conn.network.ips(project_id=self.conn.current_project_id):
                if ip.description in wanted and not ip.port_id:
                    self.conn.network.delete_ip(ip, ignore_missing=True)
                    removed.append(Removed("floating IP", ip.id, ip.floating_ip_address))
        return removed

    def snapshot(self, server: Server, name: str, properties: dict[str, str],
                 ledger: Ledger) -> Snapshot:
        return quotas.snapshot(self.conn, server, name, properties, ledger,
                                        self.active_timeout)

    def snapshots(self, properties: dict[str, str]) -> list[Snapshot]:
        return quotas.snapshots(self.conn, properties)

    def delete_snapshot(self, snapshot: Snapshot) -> list[Removed]:
        return quotas.delete_snapshot(self.conn, snapshot)

    # -- deleting ------------------------------------------------------------------

    def _floating_ips(self, server: Server) -> list:
        conn = self.conn
        with cloud_errors(f"finding the floating IPs of {server.name}"):
            found = {ip.id: ip for ip in conn.network.ips(description=f"{META}{server.name}")
                     if not ip.port_id}
            for port in conn.network.ports(device_id=server.id):
                for ip in conn.network.ips(port_id=port.id):
                    found[ip.id] = ip
        return list(found.values())

    def delete(self, server: Server) -> list[Removed]:
        conn = self.conn
        removed: list[Removed] = []
        ips = self._floating_ips(server)
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
            for name in groups:
                if not name.startswith(OWNER_TAG):
                    continue
                group = find_or_none(conn.network.find_security_group, name,
                                     project_id=conn.current_project_id)
                if group is not None and self._delete_group_if_unused(group.id):
                    removed.append(Removed("security group", group.id, name))
        return removed
