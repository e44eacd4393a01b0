"""The server's own application credential: what lets an idle server, or one
whose lifetime ended, shelve (or delete) itself.

prepare plans it (a name and a secret, which go into the launch document, mode
0600 on the server and nowhere else of vmbinder's); create makes it in Keystone
once the server's id is known, restricted by access rules to that server:

    GET    <compute>/servers/<id>                          read its own record
    POST   <compute>/servers/<id>/action                   shelve or stop itself
    PUT    <compute>/servers/<id>/metadata/vmbinder:ended  record that its lifetime acted
    DELETE <compute>/servers/<id>/metadata/vmbinder:ended  take that back if Nova refused
    DELETE <compute>/servers/<id>                          only with --at-end delete

Any other call with it is refused by the cloud. It is recorded on the server as
vmbinder:credential (its id, not its secret) and deleted with the server. A
credential needs the cloud's services to check access rules (their
auth_token middleware's service_type, as most clouds set it)."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from vmbinder import errors
from vmbinder.lifetime import DELETE, SHELVE
from vmbinder.providers.base import Created, Ledger, Removed, Server
from vmbinder.providers.openstack.common import cloud_errors, openstacksdk
from vmbinder.spec import LaunchSpec

#: Which of the guest's actions need the cloud (stop it does from inside).
NEEDS_CLOUD = (SHELVE, DELETE)
ENDED = "vmbinder:ended"
#: How a credential's description starts, the server's id after it.
DESCRIBED = "vmbinder server "


def needed(spec: LaunchSpec) -> bool:
    care = spec.care
    return bool(care) and (care["at_end"] in NEEDS_CLOUD or care["idle_action"] in NEEDS_CLOUD)


def plan(conn, spec: LaunchSpec, user_id: str) -> dict:
    """What the guest authenticates with: Keystone's public URL, the user, the
    credential's name and secret (chosen here; Keystone keeps a hash of it)."""
    with cloud_errors("finding the cloud's identity endpoint"):
        auth_url = conn.session.get_endpoint(service_type="identity", interface="public")
    return {"auth_url": auth_url, "user_id": user_id,
            "name": f"vmbinder-{spec.name}-{secrets.token_hex(3)}",
            "secret": secrets.token_urlsafe(48), "region": conn.config.region_name,
            "interface": "public"}


def access_rules(conn, server_id: str, spec: LaunchSpec) -> list[dict]:
    base = urlsplit(conn.compute.get_endpoint()).path.rstrip("/") + f"/servers/{server_id}"
    rules = [("GET", base), ("POST", f"{base}/action"), ("PUT", f"{base}/metadata/{ENDED}"),
             ("DELETE", f"{base}/metadata/{ENDED}")]
    if spec.care and spec.care["at_end"] == DELETE:
        rules.append(("DELETE", base))
    return [{"service": "compute", "method": m, "path": p} for m, p in rules]


def create(conn, spec: LaunchSpec, server_id: str, planned: dict, ledger: Ledger) -> str:
    """The credential planned, for this server only; its id."""
    sdk = openstacksdk()
    what = "idle" if spec.care.get("idle_s") else "at the end of its lifetime"
    try:
        cred = conn.identity.create_application_credential(
            user=planned["user_id"], name=planned["name"], secret=planned["secret"],
            description=f"{DESCRIBED}{server_id} ({spec.name}): lets it put itself away ({what})",
            access_rules=access_rules(conn, server_id, spec), unrestricted=False)
    except sdk.exceptions.HttpException as exc:
        if exc.status_code == 403:
            raise errors.ConfigError(
                f"the cloud refused to make the application credential {spec.name} needs to "
                f"put itself away ({exc.status_code}: {exc.details or exc.message})",
                "a clouds.yaml that logs in with an application credential may make no others "
                "unless it was created with --unrestricted: use such a one (or a password), or "
                "launch with --idle-action stop and --at-end stop (no credential needed), or "
                "leave --idle and --lifetime out and run vmbinder reap from cron",
                details={"http_status": exc.status_code,
                         "request_id": getattr(exc, "request_id", None)}) from None
        with cloud_errors(f"making the application credential of {spec.name}"):
            raise
    user = planned["user_id"]
    ledger.add(Created("application credential", cred.id, planned["name"],
                       lambda: conn.identity.delete_application_credential(
                           user, cred.id, ignore_missing=True),
                       f"openstack application credential delete {cred.id}"))
    return cred.id


def delete(conn, server: Server, user_id: str | None) -> list[Removed]:
    """The server's credential (vmbinder:credential), when there is one; a
    credential of another user (a server deleted with --force) is theirs to remove."""
    cred_id = server.meta("credential")
    owner = server.meta("owner") or user_id
    if not cred_id or not owner or owner != user_id:
        return []
    with cloud_errors(f"deleting the application credential of {server.name}"):
        conn.identity.delete_application_credential(owner, cred_id, ignore_missing=True)
    return [Removed("application credential", cred_id, f"vmbinder-{server.name}")]


def sweep(conn, user_id: str, live: set[str]) -> tuple[list[Removed], list[str]]:
    """The user's credentials of servers that are gone (deleted by hand, or by
    themselves at the end of their lifetime), deleted; and those servers' names."""
    removed, names = [], []
    with cloud_errors("removing the credentials of deleted servers"):
        for cred in conn.identity.application_credentials(user=user_id):
            about = cred.description or ""
            if not (cred.name or "").startswith("vmbinder-") or not about.startswith(DESCRIBED):
                continue
            server_id, _, rest = about[len(DESCRIBED):].partition(" ")
            if server_id not in live:
                conn.identity.delete_application_credential(user_id, cred.id, ignore_missing=True)
                removed.append(Removed("application credential", cred.id, cred.name))
                if rest.startswith("(") and ")" in rest:
                    names.append(rest[1:rest.index(")")])
    return removed, names
