"""What a launch asks for: frozen records and their validation. Pure: no I/O.

Its size is that of every choice a launch takes (the cloud's, the guest's
network, the certificate, volumes, exposure) with the checks each needs, kept in
one place so that launch, dry runs and workshops validate alike."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from vmbinder import REPO2DOCKER_VERSION, __version__
from vmbinder.errors import BadRequest
from vmbinder.https import WILDCARD_DNS
from vmbinder.lifetime import AT_END, IDLE_ACTIONS, SHELVE, expires_at, now
from vmbinder.sources import GitCredential, Source, check_source

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$"
)
#: Let's Encrypt: the certificate a launch gets unless it or its target says otherwise.
ACME = "acme"
TLS_MODES = (ACME, "internal", "off")
#: Bits of randomness in a generated Jupyter token (at least 128 are required).
TOKEN_BYTES = 32
#: --config-drive and --floating-ip: the target decides (auto), always, never.
AUTO = "auto"
CHOICES = (AUTO, "yes", "no")
#: --expose: what the server opens to the network. https: 22, 80 and 443, the
#: environment behind HTTPS; ssh: port 22 only, the environment reached through
#: `vmbinder tunnel` (nothing serves HTTP publicly, no certificate is asked for).
EXPOSE_HTTPS, EXPOSE_SSH = "https", "ssh"
EXPOSE = (EXPOSE_HTTPS, EXPOSE_SSH)


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


@dataclass(frozen=True)
class CloudChoice:
    """Which cloud resources to use; None means "let the provider pick"."""

    image: str | None = None
    flavor: str | None = None
    network: str | None = None
    external_network: str | None = None
    key_name: str | None = None
    public_key: str | None = None  # the text of an OpenSSH public key
    ssh_cidr: str = "0.0.0.0/0"
    #: Ask Nova for a config drive carrying the user-data: auto (ask, and boot
    #: without one if the cloud refuses it), yes, no (the metadata service).
    config_drive: str = AUTO
    #: Make a floating IP: auto (unless the server's network is itself
    #: routable), yes, no (the server's own address is its address).
    floating_ip: str = AUTO
    #: What the server opens: EXPOSE_HTTPS or EXPOSE_SSH (see EXPOSE).
    expose: str = EXPOSE_HTTPS


@dataclass(frozen=True)
class GuestNetwork:
    """For restricted networks: extra CAs to trust (PEM text) and package mirrors."""

    ca_certs: tuple[str, ...] = ()
    apt_mirror: str | None = None
    pip_index_url: str | None = None
    #: An address at which the server reaches the launching machine itself (the
    #: local target's 10.0.2.2, its loopback): the guest lets code reach only the
    #: ports of the URLs this launch names there (launchdoc.fence).
    host_address: str | None = None


@dataclass(frozen=True)
class AcmeChoice:
    """Where certificates come from with --tls acme (see vmbinder/https.py)."""

    #: The CA's ACME directory URL; None: Let's Encrypt.
    ca: str | None = None
    #: PEM roots a private CA's directory and certificates chain to (--acme-ca-root).
    ca_root: str | None = None
    #: Wildcard-DNS services whose names for the address are tried after the address itself.
    wildcard_dns: tuple[str, ...] = WILDCARD_DNS


@dataclass(frozen=True)
class TargetDefaults:
    """What a target fills in for a launch that leaves them out (its provider's
    target_defaults)."""

    hostname: str | None = None
    tls: str = ACME
    #: Whether its servers can get a Let's Encrypt certificate (they have a public address).
    acme: bool = True
    #: Where its servers reach the launching machine's loopback (GuestNetwork.host_address).
    host_address: str | None = None
    #: What happens to a server when its lifetime ends, unless --at-end says, and
    #: the actions the target can take then (lifetime.AT_END).
    at_end: str = SHELVE
    at_end_actions: tuple[str, ...] = AT_END


@dataclass(frozen=True)
class MetadataLimits:
    """What a server on a target can record about its launch (its provider's metadata_limits)."""

    #: The longest value, in characters.
    value_max: int


class Target(Protocol):
    """What make_spec asks of a provider: data it declares, never a call to the cloud."""

    target_defaults: TargetDefaults
    metadata_limits: MetadataLimits


@dataclass(frozen=True)
class LaunchSpec:
    source: Source
    name: str
    cloud: CloudChoice = field(default_factory=CloudChoice)
    hostname: str | None = None
    tls: str = ACME
    acme: AcmeChoice = field(default_factory=AcmeChoice)
    guest_network: GuestNetwork = field(default_factory=GuestNetwork)
    token: str = field(default_factory=new_token, repr=False)
    #: A private git repository's token (--git-token-file, --git-token-env): in the
    #: launch document only, never recorded with the server (sources/credential.py).
    git_credential: GitCredential | None = field(default=None, repr=False)
    repo2docker_version: str = REPO2DOCKER_VERSION
    vmbinder_version: str = __version__
    #: Extra (key, value) pairs recorded with the server, such as its workshop and seat.
    labels: tuple[tuple[str, str], ...] = ()
    #: --volume: the work volume, as a size in GB (a new volume <name>-work) or
    #: the name or id of an existing one; None: no work volume.
    volume: str | None = None
    #: --data: names or ids of existing volumes, mounted read-only.
    data: tuple[str, ...] = ()
    #: --lifetime: when the server's lifetime ends (lifetime.expires_at), and
    #: --at-end: what then happens to it; None: it lives until deleted.
    expires: str | None = None
    at_end: str | None = None
    #: --idle: seconds without Jupyter activity after which the guest puts itself
    #: away, and --idle-action: how (shelve or stop); None: never for idleness.
    idle_s: int | None = None
    idle_action: str | None = None

    @property
    def care(self) -> dict | None:
        """What the guest watches for and does (the launch document's care), None
        when it watches for nothing."""
        if not (self.expires or self.idle_s):
            return None
        return {"expires": self.expires, "at_end": self.at_end, "idle_s": self.idle_s,
                "idle_action": self.idle_action}

    @property
    def volume_size(self) -> int | None:
        """The size in GB of the work volume to make, None when --volume names one."""
        return volume_size(self.volume) if self.volume else None

    @property
    def work_volume_name(self) -> str | None:
        """The name of the work volume: the one made for the server, or the one named."""
        if not self.volume:
            return None
        return f"{self.name}-work" if self.volume_size else self.volume

    def with_token(self, token: str) -> LaunchSpec:
        return replace(self, token=token)


#: --volume SIZE: whole GB, written 10, 10G, 10GB (or 10GiB: Cinder's GB are GiB).
VOLUME_SIZE_RE = re.compile(r"^([0-9]{1,6})\s*(?:[gG](?:[iI]?[bB])?)?$")
#: A volume vmbinder names: Cinder's names are free, but a name here also names a
#: folder on the server (data volumes) and a file on the local target; a volume
#: whose name is not like this is named by its id.
VOLUME_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_VOLUME_GB = 16384


def volume_size(text: str) -> int | None:
    """The size --volume gives in GB, or None when it is a volume's name."""
    m = VOLUME_SIZE_RE.match(text.strip())
    return int(m.group(1)) if m else None


def validate_volume_size(size: int, option: str = "--volume") -> int:
    if not 1 <= size <= MAX_VOLUME_GB:
        raise BadRequest(f"invalid {option} size {size} GB",
                         f"give 1 to {MAX_VOLUME_GB} GB, such as {option} 10")
    return size


def validate_volume_name(name: str, option: str) -> str:
    if not VOLUME_NAME_RE.match(name or ""):
        raise BadRequest(
            f"invalid {option} {name!r}",
            "give a volume's name (letters, digits, '.', '_' and '-', at most 128) or its id"
            + ("; or a size in GB for a new one, such as --volume 10" if option == "--volume"
               else ""))
    return name


def validate_volumes(volume: str | None, data, name: str) -> tuple[str | None, tuple[str, ...]]:
    """--volume (a size, or a volume's name or id) and --data (names or ids), checked."""
    if volume is not None:
        volume = volume.strip()
        size = volume_size(volume)
        if size is not None:
            validate_volume_size(size)
            validate_volume_name(f"{name}-work", "--volume")
        else:
            validate_volume_name(volume, "--volume")
    data = tuple(validate_volume_name(d.strip(), "--data") for d in data)
    twice = sorted({d for d in data if data.count(d) > 1})
    if twice:
        raise BadRequest(f"--data {twice[0]} is given twice", "give each data volume once")
    if volume is not None and volume in data:
        raise BadRequest(f"volume {volume} is given both as --volume and as --data",
                         "a volume is either the server's work volume (read-write) or a "
                         "data volume (read-only)")
    return volume, data


def default_name(source: Source) -> str:
    """`<last part of the repo, slugged>-<4 hex>`: short, valid as a DNS label."""
    tail = source.repo.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    tail = tail.removesuffix(".git")
    slug = re.sub(r"[^a-z0-9]+", "-", tail.lower()).strip("-")[:40].strip("-") or "binder"
    return f"{slug}-{secrets.token_hex(2)}"


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise BadRequest(
            f"invalid name {name!r}",
            "use 1-63 lowercase letters, digits and hyphens, starting and ending with a "
            "letter or digit (it becomes part of the server name and host name)",
        )
    return name


def validate_tls(tls: str) -> str:
    if tls not in TLS_MODES:
        raise BadRequest(f"invalid --tls {tls!r}", f"use one of: {', '.join(TLS_MODES)}")
    return tls


def validate_choice(value: str, option: str) -> str:
    """One of CHOICES, for --config-drive and --floating-ip."""
    if value not in CHOICES:
        raise BadRequest(f"invalid {option} {value!r}", f"use one of: {', '.join(CHOICES)}")
    return value


def validate_hostname(hostname: str) -> str:
    host = hostname.strip().lower().rstrip(".")
    if host != "localhost" and not HOSTNAME_RE.match(host):
        raise BadRequest(
            f"invalid --hostname {hostname!r}",
            "give a fully qualified DNS name such as binder.example.org that points at the "
            "server's floating IP",
        )
    return host


def validate_cidr(cidr: str) -> str:
    try:
        return str(ipaddress.ip_network(cidr, strict=False))
    except ValueError:
        raise BadRequest(
            f"invalid --ssh-cidr {cidr!r}",
            "give an IPv4 or IPv6 network such as 192.0.2.0/24 or 2001:db8::/32",
        ) from None


PEM_RE = re.compile(
    r"\A(?:-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\s*)+\Z")
URL_RE = re.compile(r"\Ahttps?://[^\s\x00-\x1f\x7f\"'<>\\]{1,240}\Z")


def validate_ca_cert(text: str, where: str) -> str:
    if not PEM_RE.match(text.strip() + "\n"):
        raise BadRequest(
            f"{where} is not a PEM certificate",
            "give a file holding one or more '-----BEGIN CERTIFICATE-----' blocks "
            "(openssl x509 -in CERT -out CERT.pem -outform PEM converts DER)",
        )
    return text.strip() + "\n"


def validate_acme(acme: AcmeChoice, tls: str) -> AcmeChoice:
    """The ACME options, each checked, and only with --tls acme."""
    if acme.ca_root and not acme.ca:
        raise BadRequest("--acme-ca-root is the root of a private ACME CA, but no --acme-ca was given",
                         "give the CA's directory URL with --acme-ca https://...")
    given = [o for o, v in (("--acme-ca", acme.ca), ("--acme-ca-root", acme.ca_root)) if v]
    if given and tls != ACME:
        raise BadRequest(f"{' and '.join(given)} only apply with --tls acme (here: --tls {tls})",
                         "leave them out, or use --tls acme")
    if acme.ca and not (URL_RE.match(acme.ca) and acme.ca.startswith("https://")):
        raise BadRequest(f"invalid --acme-ca {acme.ca!r}",
                         "give the CA's ACME directory as an https:// URL, e.g. "
                         "https://ca.example.org/acme/acme/directory")
    services = tuple(s.strip().lower().rstrip(".") for s in acme.wildcard_dns if s.strip())
    for service in services:
        if not HOSTNAME_RE.match(service):
            raise BadRequest(f"invalid --wildcard-dns entry {service!r}",
                             "give DNS names of wildcard-DNS services, comma-separated "
                             "(default sslip.io,nip.io), or none")
    return AcmeChoice(
        ca=acme.ca, wildcard_dns=services,
        ca_root=validate_ca_cert(acme.ca_root, "--acme-ca-root") if acme.ca_root else None)


def validate_at_end(at_end: str | None, lifetime_s: int | None,
                    defaults: TargetDefaults) -> str | None:
    """--at-end, checked against what the target can do; its default with a
    --lifetime, None without one."""
    if at_end is None:
        return defaults.at_end if lifetime_s else None
    if not lifetime_s:
        raise BadRequest("--at-end is given but no --lifetime",
                         "add --lifetime (such as --lifetime 8h), or leave --at-end out")
    if at_end not in defaults.at_end_actions:
        raise BadRequest(f"invalid --at-end {at_end!r} on this target",
                         f"use {' or '.join(defaults.at_end_actions)} here")
    return at_end


def validate_idle_action(action: str | None, idle_s: int | None,
                         defaults: TargetDefaults) -> str | None:
    """--idle-action, checked as --at-end is (but never delete: idleness loses no work)."""
    if action is None:
        return defaults.at_end if idle_s else None
    if not idle_s:
        raise BadRequest("--idle-action is given but no --idle",
                         "add --idle (such as --idle 2h), or leave --idle-action out")
    allowed = [a for a in defaults.at_end_actions if a in IDLE_ACTIONS]
    if action not in allowed:
        raise BadRequest(f"invalid --idle-action {action!r} on this target",
                         f"use {' or '.join(allowed)} here")
    return action


def validate_mirror(url: str, option: str) -> str:
    if not URL_RE.match(url):
        raise BadRequest(f"invalid {option} {url!r}",
                         "give an http:// or https:// URL without spaces or quotes")
    return url


def recorded(spec: LaunchSpec, limits: MetadataLimits) -> dict[str, str]:
    """What a server records about its launch (the vmbinder:* metadata, keys without
    the prefix and without the owner): the values given, none empty. A pasted badge
    too long to record or spanning lines is recorded as the repository it names."""
    src = spec.source
    given = src.given if len(src.given) <= limits.value_max and src.given.isprintable() else src.repo
    values = {
        "version": spec.vmbinder_version,
        "repo2docker": spec.repo2docker_version,
        "source": given,
        "repo": src.repo,
        "ref": src.ref,
        "commit": src.commit,
        "subdir": src.subdir,
        "open-file": src.open,
        "urlpath": src.urlpath,
        "hostname": spec.hostname,
        "tls": spec.tls,
        "acme-ca": spec.acme.ca,
        "expose": spec.cloud.expose if spec.cloud.expose != EXPOSE_HTTPS else None,
        "token": spec.token,
        "expires": spec.expires,
        "at-end": spec.at_end,
        "idle": str(spec.idle_s) if spec.idle_s else None,
        "idle-action": spec.idle_action,
        **dict(spec.labels),
    }
    return {k: v for k, v in values.items() if v}


def check_recorded(values: Mapping[str, str], limits: MetadataLimits) -> None:
    """BadRequest naming the values (keys without the prefix) too long to record."""
    too_long = [k for k, v in values.items() if len(v) > limits.value_max]
    if too_long:
        raise BadRequest(
            f"{', '.join(too_long)} is longer than the "
            f"{limits.value_max} characters a server can record",
            "shorten the value",
        )


def make_spec(
    source: Source,
    *,
    name: str | None = None,
    cloud: CloudChoice | None = None,
    hostname: str | None = None,
    tls: str | None = None,
    acme: AcmeChoice | None = None,
    guest_network: GuestNetwork | None = None,
    git_credential: GitCredential | None = None,
    labels: Mapping[str, str] | tuple[tuple[str, str], ...] = (),
    target: Target | None = None,
    volume: str | None = None,
    data: tuple[str, ...] | list[str] = (),
    lifetime_s: int | None = None,
    at_end: str | None = None,
    idle_s: int | None = None,
    idle_action: str | None = None,
) -> LaunchSpec:
    """A launch request, every value checked: the one place a spec is validated.

    With a target (a provider), the hostname and tls left out are the target's
    defaults, and what the server will record must fit the target's metadata
    limits. Without one, the defaults are a cloud's (no hostname, ACME) and the
    provider checks the record when it prepares the launch."""
    defaults = target.target_defaults if target is not None else TargetDefaults()
    acme = acme or AcmeChoice()
    cloud = cloud or CloudChoice()
    if cloud.expose not in EXPOSE:
        raise BadRequest(f"invalid --expose {cloud.expose!r}", f"use one of: {', '.join(EXPOSE)}")
    if cloud.expose == EXPOSE_SSH:
        given = [option for option, value in (("--hostname", hostname), ("--tls", tls),
                                              ("--acme-ca", acme.ca)) if value]
        if given:
            raise BadRequest(f"{', '.join(given)} names how the server serves HTTPS, but with "
                             "--expose ssh it serves nothing publicly (only port 22 is open)",
                             f"leave {', '.join(given)} out, or launch with --expose https")
        # Nothing is served on a public name: the guest skips its proxy and certificate.
        tls, hostname = "off", None
    # A private ACME CA given on a target whose default is another issuer asks for ACME;
    # the target's default name (localhost) is not one an ACME CA can check.
    tls = tls or (ACME if acme.ca else defaults.tls)
    hostname = hostname or (defaults.hostname if tls != ACME else None)
    validate_tls(tls)
    acme = validate_acme(acme, tls)
    cloud = replace(cloud, ssh_cidr=validate_cidr(cloud.ssh_cidr),
                    config_drive=validate_choice(cloud.config_drive, "--config-drive"),
                    floating_ip=validate_choice(cloud.floating_ip, "--floating-ip"))
    given = guest_network or GuestNetwork()
    checked = GuestNetwork(
        ca_certs=tuple(validate_ca_cert(c, "--ca-cert") for c in given.ca_certs),
        apt_mirror=validate_mirror(given.apt_mirror, "--apt-mirror") if given.apt_mirror else None,
        pip_index_url=(validate_mirror(given.pip_index_url, "--pip-index-url")
                       if given.pip_index_url else None),
        host_address=given.host_address or defaults.host_address,
    )
    name = validate_name(name) if name is not None else default_name(source)
    volume, data = validate_volumes(volume, tuple(data), name)
    at_end = validate_at_end(at_end, lifetime_s, defaults)
    idle_action = validate_idle_action(idle_action, idle_s, defaults)
    if git_credential is not None:
        check_source(source, git_credential)
    spec = LaunchSpec(
        guest_network=checked,
        source=source,
        git_credential=git_credential,
        name=name,
        volume=volume,
        data=data,
        cloud=cloud,
        hostname=validate_hostname(hostname) if hostname else None,
        tls=tls,
        acme=acme,
        labels=tuple(dict(labels).items()),
        expires=expires_at(lifetime_s, now()) if lifetime_s else None,
        at_end=at_end,
        idle_s=idle_s,
        idle_action=idle_action,
    )
    if target is not None:
        check_recorded(recorded(spec, target.metadata_limits), target.metadata_limits)
    return spec
