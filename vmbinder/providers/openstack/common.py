"""What the OpenStack modules share: connecting (with retries), turning the
cloud's failures into CloudError, a rollback sweep around calls that make
something, mapping the cloud's records to ours, the names and security group
rules vmbinder uses, and the vmbinder:* metadata a server carries."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vmbinder import errors
from vmbinder.providers.base import (
    ACTIVE,
    BUILDING,
    DELETING,
    ERROR,
    META,
    SHELVED,
    STOPPED,
    UNKNOWN,
    Created,
    Ledger,
)
from vmbinder.providers.base import server_metadata as base_server_metadata
from vmbinder.spec import EXPOSE_HTTPS, EXPOSE_SSH, LaunchSpec, MetadataLimits

#: Metadata values longer than this are refused by Nova (keys too, but vmbinder's are short).
META_VALUE_MAX = 255
NOVA_METADATA = MetadataLimits(value_max=META_VALUE_MAX)
#: Glance formats of the kernel and initrd that boot another image's disk
#: (`vmbinder image upload` makes them): never a server's --image.
PART_FORMATS = ("aki", "ari")
WEB_PORTS = (80, 443)
SSH_PORT = 22

NO_CLOUD_HINT = (
    "name a cloud from clouds.yaml with --os-cloud or OS_CLOUD (clouds.yaml is read from "
    "./, ~/.config/openstack/ and /etc/openstack/, or OS_CLIENT_CONFIG_FILE), or source "
    "an openrc file"
)

#: How vmbinder talks to a cloud unless clouds.yaml says otherwise (its keys of the
#: same names win). keystoneauth tries a request again, waiting 0.5 s and doubling
#: up to 60 s, after a connection that failed or timed out (connect_retries: 6,
#: about 30 s, long enough for an API service to restart) and after an answer that
#: means "not now" (retriable_status_codes), honouring Retry-After (status_code_retries:
#: 10, about 4 minutes without Retry-After: a cloud throttling a 50-seat workshop made
#: at once can answer one request 429 several times in a row). A request with
#: no answer for api_timeout seconds counts as a failed connection. Requests that
#: make something (POST, PATCH) are tried again only after 429 or 503, which say
#: the cloud did not act on them: after a dropped connection, a timeout, a 502 or
#: a 504 the cloud may have acted, so the launch stops and its rollback looks for
#: what the request may have made. Other errors, such as 500, are final.
RETRY_DEFAULTS = {
    "connect_retries": 6,
    "status_code_retries": 10,
    "retriable_status_codes": [429, 502, 503, 504],
    "api_timeout": 120,
}
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
#: The answers that say the cloud did not act on a request.
NOT_ACTED_ON = frozenset({429, 503})

_STATES = {
    "BUILD": BUILDING, "REBUILD": BUILDING, "ACTIVE": ACTIVE, "ERROR": ERROR,
    "SHUTOFF": STOPPED, "STOPPED": STOPPED, "SUSPENDED": STOPPED, "PAUSED": STOPPED,
    "SHELVED": SHELVED, "SHELVED_OFFLOADED": SHELVED, "DELETED": DELETING,
    "SOFT_DELETED": DELETING,
}


def openstacksdk():
    """The openstack package, imported when first needed: it is most of vmbinder's
    start-up time."""
    import openstack

    return openstack


@contextmanager
def cloud_errors(what: str) -> Iterator[None]:
    """Turn openstacksdk and keystoneauth failures into CloudError, keeping the
    HTTP status and request id."""
    sdk = openstacksdk()
    from keystoneauth1 import exceptions as ksa

    try:
        yield
    except errors.VmbinderError:
        raise
    except sdk.exceptions.HttpException as exc:
        detail = exc.details or exc.message or str(exc)
        status = exc.status_code
        hint = None
        if status in (403, 409) and "uota" in str(detail):
            hint = "ask your cloud administrator for more quota, or delete unused servers " \
                   "and floating IPs (vmbinder list; vmbinder delete NAME)"
        elif status == 401:
            hint = "check the credentials of your cloud in clouds.yaml (openstack token issue)"
        elif status in (429, 502, 503, 504):
            hint = "the cloud is overloaded or restarting; try again in a few minutes"
        raise errors.CloudError(
            f"{what} failed: HTTP {status}: {detail}",
            hint,
            details={"http_status": status, "request_id": exc.request_id,
                     "transient": status in (502, 503, 504)},
        ) from exc
    except ksa.auth_plugins.MissingRequiredOptions as exc:
        raise errors.ConfigError(
            f"no cloud configured ({exc})",
            NO_CLOUD_HINT,
        ) from exc
    except ksa.ConnectTimeout as exc:
        raise errors.CloudError(
            f"{what} failed: the cloud did not answer in time ({exc})",
            "the cloud may be overloaded; try again later, or raise api_timeout in clouds.yaml",
            details={"transient": True},
        ) from exc
    except ksa.ConnectFailure as exc:
        raise errors.CloudError(
            f"{what} failed: cannot reach the cloud ({exc})",
            "check the auth_url in clouds.yaml and your network connection",
            details={"transient": True},
        ) from exc
    except ksa.ClientException as exc:
        raise errors.CloudError(f"{what} failed: {exc}") from exc
    except sdk.exceptions.SDKException as exc:
        raise errors.CloudError(f"{what} failed: {exc}") from exc


@contextmanager
def in_flight(ledger: Ledger, kind: str, name: str, sweep: Callable[[], None],
              command: str) -> Iterator[None]:
    """Around a call that makes something: if it fails or is interrupted, the cloud
    may still have made it (a dropped connection, a timeout), so until it returns
    a rollback sweeps for it by its ownership marks."""
    pending = Created(kind, "(being made)", name, sweep, command)
    ledger.add(pending)
    try:
        yield
    except openstacksdk().exceptions.HttpException as exc:
        if refused(exc.status_code):
            ledger.items.remove(pending)  # the cloud answered no: it made nothing
        raise
    ledger.items.remove(pending)


def refused(status: int | None) -> bool:
    """An answer that says the cloud did not act on the request: 4xx, a timeout aside."""
    return status is not None and 400 <= status < 500 and status != 408


def find_or_none(finder, name_or_id: str, **query):
    """finder(name_or_id, **query) (a proxy's find_*), or None when nothing matches.
    openstacksdk 6 makes ignore_missing=False the default of every find_*, and 4.x
    warns about True: ask for the exception and catch it."""
    try:
        return finder(name_or_id, ignore_missing=False, **query)
    except openstacksdk().exceptions.NotFoundException:
        return None


def _retrying_session(**kwargs):
    """A keystoneauth session whose own requests (authentication, version
    discovery) are tried again as the services' are (see RETRY_DEFAULTS)."""
    from keystoneauth1 import session

    class RetryingSession(session.Session):
        def request(self, url, method, **kw):
            kw.setdefault("status_code_retries", RETRY_DEFAULTS["status_code_retries"])
            kw.setdefault("retriable_status_codes", RETRY_DEFAULTS["retriable_status_codes"])
            # A token asked for twice is harmless: authentication is sent again like a read.
            makes = method.upper() not in IDEMPOTENT and not url.rstrip("/").endswith("/auth/tokens")
            if makes:
                kw["connect_retries"] = 0
                kw["retriable_status_codes"] = [
                    c for c in kw["retriable_status_codes"] or () if c in NOT_ACTED_ON]
            return super().request(url, method, **kw)

    kwargs.setdefault("connect_retries", RETRY_DEFAULTS["connect_retries"])
    return RetryingSession(**kwargs)


def _plain_v3_password(config: dict) -> bool:
    """A password cloud whose auth_url names Keystone's v3 API: no version
    discovery is needed to authenticate."""
    auth_url = str((config.get("auth") or {}).get("auth_url") or "").rstrip("/")
    return (config.get("auth_type") in (None, "", "password")
            and str(config.get("identity_api_version") or "3").startswith("3")
            and auth_url.endswith("/v3"))


def connect(cloud: str | None):
    """openstack.connect, as the `openstack` CLI does it (OS_CLOUD, clouds.yaml, OS_*
    variables), with RETRY_DEFAULTS for what the configuration leaves unset."""
    sdk = openstacksdk()
    from openstack import config as os_config

    try:
        config = os_config.OpenStackConfig(
            load_yaml_config=True, load_envvars=True, session_constructor=_retrying_session)
        region = config.get_one(cloud=cloud)
        if _plain_v3_password(region.config):
            # The generic password plugin asks Keystone which versions it has
            # before every authentication; this one goes straight to /v3.
            region = config.get_one(cloud=cloud, auth_type="v3password")
        for key, value in RETRY_DEFAULTS.items():
            if region.config.get(key) is None:
                region.config[key] = value
        conn = sdk.connection.Connection(config=region)
    except sdk.exceptions.ConfigException as exc:
        where = f"cloud {cloud!r}" if cloud else "a cloud"
        raise errors.ConfigError(
            f"no credentials for {where}: {exc}",
            NO_CLOUD_HINT,
        ) from exc
    return conn


def bootable(images) -> list:
    """The images a server can boot from: not the kernel (aki) and initrd (ari) parts."""
    return [i for i in images
            if i.disk_format not in PART_FORMATS and i.container_format not in PART_FORMATS]


def state_of(status: str | None, task_state: str | None = None) -> str:
    if task_state == "deleting":
        return DELETING
    return _STATES.get((status or "").upper(), UNKNOWN)


def floating_address(addresses: dict | None) -> str | None:
    for entries in (addresses or {}).values():
        for entry in entries:
            if entry.get("OS-EXT-IPS:type") == "floating":
                return entry.get("addr")
    return None


def server_address(addresses: dict | None, metadata: dict | None) -> str | None:
    """A server's public address: its floating IP, else the address of the port
    vmbinder made for it (recorded as vmbinder:address, see provider.create); none
    once its floating IP was given back (vmbinder:released, recorded first: Nova's
    record of its addresses can list the released one a while longer)."""
    if (metadata or {}).get(f"{META}released"):
        return None
    return floating_address(addresses) or (metadata or {}).get(f"{META}address") or None


def _ssh_network(ssh_cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """--ssh-cidr as the network it names: 10.1.2.3/24 is 10.1.2.0/24."""
    return ipaddress.ip_network(ssh_cidr, strict=False)


def security_group_name(ssh_cidr: str, expose: str = EXPOSE_HTTPS) -> str:
    """The group of an --ssh-cidr and --expose: `vmbinder` when SSH is open to all,
    else one per network, named so that two networks never share a name: an IPv4
    network's four numbers and prefix (vmbinder-ssh-192-0-2-0-24), an IPv6 one's
    eight groups written out in full and prefix, which never look like IPv4's.
    With --expose ssh (port 22 alone), `-ssh-only` is added (vmbinder-ssh-only,
    vmbinder-ssh-only-192-0-2-0-24): such a group never lets in 80 or 443."""
    net = _ssh_network(ssh_cidr)
    only = "-ssh-only" if expose == EXPOSE_SSH else ""
    if net.prefixlen == 0:
        return "vmbinder" + only
    address = net.network_address
    fields = address.exploded.split(":") if net.version == 6 else str(address).split(".")
    return (f"vmbinder{only}-" if only else "vmbinder-ssh-") + "-".join([*fields, str(net.prefixlen)])


def wanted_rules(ssh_cidr: str, expose: str = EXPOSE_HTTPS) -> set[tuple[str, int, str]]:
    """(ethertype, port, remote prefix) of every ingress rule the group needs."""
    rules = set()
    if expose != EXPOSE_SSH:
        rules = ({("IPv4", p, "0.0.0.0/0") for p in WEB_PORTS}
                 | {("IPv6", p, "::/0") for p in WEB_PORTS})
    net = _ssh_network(ssh_cidr)
    if net.prefixlen == 0:
        rules |= {("IPv4", SSH_PORT, "0.0.0.0/0"), ("IPv6", SSH_PORT, "::/0")}
    else:
        rules.add((f"IPv{net.version}", SSH_PORT, str(net)))
    return rules


def _normal_prefix(rule: dict) -> str:
    prefix = rule.get("remote_ip_prefix")
    if prefix:
        try:
            return str(ipaddress.ip_network(prefix, strict=False))
        except ValueError:
            return prefix
    return "::/0" if rule.get("ethertype") == "IPv6" else "0.0.0.0/0"


def _tcp(rule: dict) -> bool:
    return str(rule.get("protocol") or "").lower() in ("tcp", "6")


def _rule_key(rule: dict) -> tuple[str, int, str] | None:
    """(ethertype, port, remote prefix) of an ingress rule that lets in one TCP port
    from an address prefix, as wanted_rules writes them; None for any other rule."""
    lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
    if (rule.get("direction") != "ingress" or not _tcp(rule) or lo is None or lo != hi
            or rule.get("remote_group_id") or rule.get("remote_address_group_id")):
        return None
    return rule.get("ethertype"), lo, _normal_prefix(rule)


def existing_rules(group_rules: list[dict]) -> set[tuple[str, int, str]]:
    """The group's ingress rules of the kind wanted_rules describes."""
    return {key for key in map(_rule_key, group_rules) if key is not None}


def extra_rules(group_rules: list[dict], ssh_cidr: str, expose: str = EXPOSE_HTTPS) -> list[dict]:
    """The group's ingress rules that let in more than wanted_rules(ssh_cidr, expose):
    another port or a range, another protocol or any, another prefix, a remote
    group. Egress is not vmbinder's concern."""
    wanted = wanted_rules(ssh_cidr, expose)
    return [r for r in group_rules
            if r.get("direction") == "ingress" and _rule_key(r) not in wanted]


def describe_rule(rule: dict, group_names: dict[str, str] | None = None) -> str:
    """A rule as a person reads it: "tcp 8080 from 0.0.0.0/0 (IPv4)", "any protocol
    from group default (IPv6)". group_names: remote group ids to names."""
    protocol = rule.get("protocol")
    lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
    what = "tcp" if _tcp(rule) else str(protocol or "any protocol").lower()
    if str(protocol or "").lower() in ("icmp", "ipv6-icmp", "icmpv6", "1", "58"):
        what += "".join(f" {k} {v}" for k, v in (("type", lo), ("code", hi)) if v is not None)
    elif protocol and lo is None:
        what += " (every port)"
    elif lo is not None:
        what += f" {lo}" if lo == hi or hi is None else f" {lo}-{hi}"
    group = rule.get("remote_group_id")
    if group:
        source = f"group {(group_names or {}).get(group) or group}"
    elif rule.get("remote_address_group_id"):
        source = f"address group {rule['remote_address_group_id']}"
    else:
        source = _normal_prefix(rule)
    return f"{what} from {source} ({rule.get('ethertype') or 'IPv4'})"


def refuse_extra_rules(conn, group, ssh_cidr: str, expose: str = EXPOSE_HTTPS) -> None:
    """ConfigError when the group vmbinder would use lets in more than it asks for:
    its servers would be open on ports vmbinder never shows. It lists each extra
    rule, and how to remove them or the group (which vmbinder then makes again)."""
    extra = extra_rules(group.security_group_rules or [], ssh_cidr, expose)
    if not extra:
        return
    names = {group.id: group.name}
    for other in {r["remote_group_id"] for r in extra if r.get("remote_group_id")} - set(names):
        found = find_or_none(conn.network.find_security_group, other)
        names[other] = found.name if found is not None else other
    ids = " ".join(r.get("id") or "?" for r in extra)
    raise errors.ConfigError(
        f"security group {group.name} ({group.id}) lets in more than vmbinder asks for "
        f"(TCP {'22' if expose == EXPOSE_SSH else '22, 80 and 443'}); its servers would be "
        "open to:\n"
        + "\n".join(f"  {describe_rule(r, names)}  (rule {r.get('id') or '?'})" for r in extra),
        f"remove those rules (openstack security group rule delete {ids}), or delete the "
        f"group and vmbinder makes it again (openstack security group delete {group.id})",
        details={"security_group": group.id, "extra_rules": [r.get("id") for r in extra]},
    )


def server_metadata(spec: LaunchSpec, user_id: str | None) -> dict[str, str]:
    """A Nova server's vmbinder:* metadata (see base.server_metadata)."""
    return base_server_metadata(spec, user_id, NOVA_METADATA)
