"""The launch document: everything the guest needs to know, as data.

cloud-init writes it to the server as JSON (guestcontract.LAUNCH_PATH, mode
0600) and the guest script reads it with a JSON parser, so no user value is
ever pasted into a shell command. It has five parts:

- the request, flat, as the user asked for it (what a dry run shows);
- ``site``: the names and issuers the guest tries for its certificate, in
  order (vmbinder/https.py), so the URLs vmbinder prints and the site the guest
  serves agree;
- ``build``: the image name (the build key) and repo2docker's content providers;
- ``guest``: the paths, loopback addresses and texts of guestcontract.py;
- ``fence``: on the local target, the ports of the launching machine's loopback
  that code on the server may reach (None elsewhere);
- ``volumes``: the work volume and the data volumes, each with the serial the
  guest finds it by (/dev/disk/by-id/virtio-<serial>);
- ``care``: when the server's lifetime ends and after how long idle it puts
  itself away, and how; with the restricted application credential it does that
  with on a cloud (credential; the secret lives only here and in Keystone).
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import urlsplit

from vmbinder import guestcontract as gc
from vmbinder import https
from vmbinder.spec import LaunchSpec


def request(spec: LaunchSpec, public_ip: str | None = None) -> dict:
    """What the launch asks for, as given."""
    src = spec.source
    return {
        "name": spec.name,
        "kind": src.kind,
        "repo": src.repo,
        "ref": src.ref,
        "commit": src.commit,
        "subdir": src.subdir,
        "open": src.open,
        "urlpath": src.urlpath,
        "token": spec.token,
        # A private repository's: removed from the server after the build (the guest's
        # forget_git_credential); it reaches git in GIT_CREDENTIAL_ENV only.
        "git_credential": git_credential(spec),
        "hostname": spec.hostname,
        "public_ip": public_ip,
        "tls": spec.tls,
        "expose": spec.cloud.expose,
        "repo2docker_version": spec.repo2docker_version,
        "vmbinder_version": spec.vmbinder_version,
        "ca_certs": list(spec.guest_network.ca_certs),
        "apt_mirror": spec.guest_network.apt_mirror,
        "pip_index_url": spec.guest_network.pip_index_url,
        "volume": spec.volume,
        "data": list(spec.data),
    }


def git_credential(spec: LaunchSpec) -> dict | None:
    cred = spec.git_credential
    return {"username": cred.user, "password": cred.token} if cred else None


#: The port of a URL that names none, by scheme.
DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}


def fence(spec: LaunchSpec) -> dict | None:
    """Where the server reaches the launching machine's loopback (the local
    target), and the only ports code on the server may reach there: those of the
    repository, mirrors and ACME CA this launch names at that address. None
    elsewhere (a cloud's server reaches no loopback of the launching machine)."""
    host = spec.guest_network.host_address
    if not host:
        return None
    ports = set()
    for url in (spec.source.repo, spec.guest_network.apt_mirror,
                spec.guest_network.pip_index_url, spec.acme.ca):
        u = urlsplit(url or "")
        if u.hostname == host:
            try:
                ports.add(u.port or DEFAULT_PORTS[u.scheme])
            except (KeyError, ValueError):
                continue
    return {"host": host, "ports": sorted(ports)}


def site(spec: LaunchSpec, public_ip: str | None, follow_address: bool = False) -> dict:
    """What the guest serves: over HTTPS, the candidates (name, issuer) it tries in
    order (https.candidates), the ACME CA and how long each ACME try may take;
    over plain HTTP, any name on port 80. follow_address: public_ip is a floating
    IP, which may be released and another one given; the guest asks the cloud for
    its address at each boot and serves the names of that one."""
    acme = spec.acme
    return {
        "follow_address": follow_address,
        "scheme": "http" if spec.tls == https.OFF else "https",
        "candidates": [c.as_dict() for c in https.candidates(
            spec.tls, spec.hostname, public_ip, wildcard_dns=acme.wildcard_dns, acme_ca=acme.ca)],
        "acme_directory": acme.ca or https.LETSENCRYPT,
        "acme_root": acme.ca_root,
        "wait": https.ACME_WAIT,
    }


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
        "image": image_name(src.kind, src.repo, src.commit or src.ref, src.subdir,
                            spec.repo2docker_version),
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
        "caddy_version": gc.CADDY_VERSION,
        "outcome_prefix": https.OUTCOME_PREFIX,
        "volume_by_id": gc.VOLUME_BY_ID,
    }


def volume_doc(uses=()) -> dict:
    """The server's volumes (providers.base.VolumeUse records): its work volume,
    made by this launch (created: the guest formats it) or one that was there, and
    its data volumes, mounted read-only. The guest finds each at
    guestcontract.VOLUME_BY_ID/virtio-<serial>."""
    work = [u for u in uses if u.role == "work"]
    return {
        "work": {"name": work[0].name, "serial": work[0].serial, "created": work[0].created}
        if work else None,
        "data": [{"name": u.name, "serial": u.serial} for u in uses if u.role == "data"],
    }


#: Seconds between two looks at Jupyter's activity and the clock.
CARE_INTERVAL = 30
#: As long as a credential gets (a long Keystone URL and region), for the size check.
LONGEST_CREDENTIAL = {"auth_url": "https://" + "k" * 240 + "/v3", "user_id": "u" * 64,
                      "name": "n" * 80, "secret": "s" * 64, "region": "r" * 64,
                      "interface": "public"}


def care(spec: LaunchSpec, credential: dict | None = None) -> dict | None:
    """What the guest watches for (spec.care) and its credential for the cloud's
    API (None: it can only power itself off)."""
    watch = spec.care
    if watch is None:
        return None
    return {**watch, "interval": CARE_INTERVAL, "credential": credential}


def document(spec: LaunchSpec, public_ip: str | None = None, volumes=(),
             credential: dict | None = None, follow_address: bool = False) -> dict:
    """The whole launch document for a server with this public address (a floating
    IP the guest follows with follow_address: see site), these volumes (VolumeUse
    records, from the provider's prepare) and this credential for the server's own
    care (from prepare too)."""
    return {
        **request(spec, public_ip),
        "site": site(spec, public_ip, follow_address),
        "build": build(spec),
        "guest": guest(),
        "fence": fence(spec),
        "volumes": volume_doc(volumes),
        "care": care(spec, credential),
    }
