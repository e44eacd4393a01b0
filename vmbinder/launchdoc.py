"""The launch document: everything the guest needs to know, as data.

cloud-init writes it to the server as JSON (guestcontract.LAUNCH_PATH, mode
0600) and the guest script reads it with a JSON parser, so no user value is
ever pasted into a shell command. It has four parts:

- the request, flat, as the user asked for it (what a dry run shows);
- ``site``: the name Caddy serves and how it gets a certificate, decided here
  once, so the URLs vmbinder prints and the site the guest serves agree;
- ``build``: the image name (the build key) and repo2docker's content providers;
- ``guest``: the paths, loopback addresses and texts of guestcontract.py.
"""

from __future__ import annotations

import hashlib
import json

from vmbinder import guestcontract as gc
from vmbinder.spec import LaunchSpec
from vmbinder.urls import host_for_ip

#: The Caddy certificate issuer for each TLS mode; None serves plain HTTP.
ISSUERS = {"acme": "acme", "internal": "internal", "off": None}


def request(spec: LaunchSpec, public_ip: str | None = None) -> dict:
    """What the launch asks for, as given."""
    src = spec.source
    return {
        "name": spec.name,
        "kind": src.kind,
        "repo": src.repo,
        "ref": src.ref,
        "subdir": src.subdir,
        "open": src.open,
        "token": spec.token,
        "hostname": spec.hostname,
        "public_ip": public_ip,
        "tls": spec.tls,
        "repo2docker_version": spec.repo2docker_version,
        "vmbinder_version": spec.vmbinder_version,
        "ca_certs": list(spec.guest_network.ca_certs),
        "apt_mirror": spec.guest_network.apt_mirror,
        "pip_index_url": spec.guest_network.pip_index_url,
    }


def site(hostname: str | None, public_ip: str | None, tls: str) -> dict:
    """The name Caddy serves: the user's host name, else the address's sslip.io
    name (urls.host_for_ip, the one the printed URLs use).

    With TLS and no name at all (a dry run, before an address exists) it is
    localhost; without TLS and no name, null: Caddy then answers on any name."""
    host = hostname or (host_for_ip(public_ip) if public_ip else None)
    issuer = ISSUERS[tls]
    if issuer and not host:
        host = "localhost"
    return {"host": host, "scheme": "https" if issuer else "http", "issuer": issuer}


def image_name(kind: str, repo: str, ref: str | None, subdir: str | None,
               repo2docker_version: str) -> str:
    """The build key. Named after what is built, not after the server: a server
    started from a snapshot of another one finds the environment already there
    and skips the build. Changing this formula makes every snapshot build again."""
    what = json.dumps([kind, repo, ref, subdir, repo2docker_version])
    return "vmbinder-env:" + hashlib.sha256(what.encode()).hexdigest()[:16]


def build(spec: LaunchSpec) -> dict:
    src = spec.source
    return {
        "image": image_name(src.kind, src.repo, src.ref, src.subdir, spec.repo2docker_version),
        "content_providers": list(gc.CONTENT_PROVIDERS.get(src.kind,
                                                           gc.DEFAULT_CONTENT_PROVIDERS)),
    }


def guest() -> dict:
    return {
        "paths": dict(gc.LAYOUT),
        "phase_prefix": gc.PHASE_PREFIX,
        "jupyter": gc.JUPYTER_ADDRESS,
        "status": gc.STATUS_ADDRESS,
        # Pairs, in urls.py's order: the document is written with sorted keys.
        "interfaces": [[key, path] for key, path in gc.INTERFACE_PATHS.items()],
        "trixie_pin": gc.TRIXIE_PIN,
    }


def document(spec: LaunchSpec, public_ip: str | None = None) -> dict:
    """The whole launch document for a server with this public address."""
    return {
        **request(spec, public_ip),
        "site": site(spec.hostname, public_ip, spec.tls),
        "build": build(spec),
        "guest": guest(),
    }
