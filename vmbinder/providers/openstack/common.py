"""What the OpenStack modules share: connecting (with retries), turning the
cloud's failures into CloudError, a rollback sweep around calls that make
something, mapping the cloud's records to ours, the names and security group
rules vmbinder uses, and the vmbinder:* metadata a server carries."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vmbinder import errors
from vmbinder.providers.base import (
    ACTIVE,
    BUILDING,
    DELETING,
    ERROR,
    META,
    STOPPED,
    UNKNOWN,
    Created,
    Ledger,
)
from vmbinder.providers.base import server_metadata as base_server_metadata
from vmbinder.spec import LaunchSpec, MetadataLimits

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
    "SHELVED": STOPPED, "SHELVED_OFFLOADED": STOPPED, "DELETED": DELETING,
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
    vmbinder made for it (recorded as vmbinder:address, see provider.create)."""
    return floating_address(addresses) or (metadata or {}).get(f"{META}address") or None


def security_group_name(ssh_cidr: str) -> str:
    if ssh_cidr in ("0.0.0.0/0", "::/0"):
        return "vmbinder"
    return "vmbinder-ssh-" + re.sub(r"[^0-9a-f]+", "-", ssh_cidr.lower()).strip("-")


def wanted_rules(ssh_cidr: str) -> set[tuple[str, int, str]]:
    """(ethertype, port, remote prefix) of every ingress rule the group needs."""
    rules = {("IPv4", p, "0.0.0.0/0") for p in WEB_PORTS} | {("IPv6", p, "::/0") for p in WEB_PORTS}
    if ssh_cidr in ("0.0.0.0/0", "::/0"):
        rules |= {("IPv4", SSH_PORT, "0.0.0.0/0"), ("IPv6", SSH_PORT, "::/0")}
    else:
        rules.add(("IPv6" if ":" in ssh_cidr else "IPv4", SSH_PORT, ssh_cidr))
    return rules


def _normal_prefix(rule: dict) -> str:
    prefix = rule.get("remote_ip_prefix")
    if prefix:
        return prefix
    return "::/0" if rule.get("ethertype") == "IPv6" else "0.0.0.0/0"


def existing_rules(group_rules: list[dict]) -> set[tuple[str, int, str]]:
    have = set()
    for rule in group_rules:
        if rule.get("direction") != "ingress" or rule.get("protocol") not in ("tcp", "6"):
            continue
        lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
        if lo is None or hi is None or rule.get("remote_group_id"):
            continue
        for port in (SSH_PORT, *WEB_PORTS):
            if lo <= port <= hi:
                have.add((rule.get("ethertype"), port, _normal_prefix(rule)))
    return have


def server_metadata(spec: LaunchSpec, user_id: str | None) -> dict[str, str]:
    """A Nova server's vmbinder:* metadata (see base.server_metadata)."""
    return base_server_metadata(spec, user_id, NOVA_METADATA)
