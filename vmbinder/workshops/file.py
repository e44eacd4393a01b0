"""A workshop file: many seats of one repository, described in one YAML file.

    name: genomics-101            # seats are genomics-101-01 .. genomics-101-NN
    source: https://github.com/org/course
    ref: v2026.1                  # optional, as --ref; also subdir, open
    seats: 30                     # or participants: a list of names or {name, email}
    flavor: m1.large              # optional, as for launch: image, network,
    image: debian-12-baked        #   external_network, floating_ip, config_drive, key_name
    tls: acme                     # acme | internal | off
    acme_ca: https://ca.example.org/acme/directory   # optional, as --acme-ca; also
    acme_ca_root: ca-root.pem     #   acme_ca_root (next to this file), wildcard_dns
    lifetime: 8h                  # how long the seats live (m, h, d); then at_end:
    at_end: shelve                #   shelve | stop | delete [default: shelve; stop locally]
    volume: 10                    # optional: each seat's own work volume <seat>-work, in GB
    overrides:                    # per seat: by number, seat name or participant name
      1: {flavor: m1.xlarge}

Everything is checked before anything is created; a problem is reported with
the file and line it is on, and what to write instead.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vmbinder.errors import BadRequest
from vmbinder.lifetime import AT_END, WRITTEN, parse_duration
from vmbinder.sources import Source, has_control, resolve_source
from vmbinder.spec import (
    ACME,
    CHOICES,
    MAX_VOLUME_GB,
    NAME_RE,
    AcmeChoice,
    CloudChoice,
    validate_acme,
    validate_hostname,
    validate_tls,
    volume_size,
)

MAX_SEATS = 200
#: A seat name is `<workshop>-NN`: the workshop name leaves room for the number.
NAME_MAX = 63 - 1 - len(str(MAX_SEATS))
CLOUD_KEYS = ("flavor", "image", "network", "external_network", "floating_ip", "config_drive",
              "key_name")
#: Cloud keys that take one of spec.CHOICES (YAML's yes and no read as booleans count too).
CHOICE_KEYS = ("floating_ip", "config_drive")
OVERRIDE_KEYS = (*CLOUD_KEYS, "hostname")
ACME_KEYS = ("acme_ca", "acme_ca_root", "wildcard_dns")
KEYS = ("name", "source", "ref", "subdir", "open", "urlpath", "seats", "participants", *CLOUD_KEYS,
        "tls", *ACME_KEYS, "lifetime", "at_end", "volume", "overrides")
EMAIL_RE = re.compile(r"\A[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s.]{1,63}\Z")


@dataclass(frozen=True)
class Participant:
    name: str
    email: str | None = None


@dataclass(frozen=True)
class Seat:
    number: int  # 1-based
    name: str
    cloud: CloudChoice
    participant: Participant | None = None
    hostname: str | None = None


@dataclass(frozen=True)
class Workshop:
    name: str
    source: Source
    seats: tuple[Seat, ...]
    tls: str = ACME
    acme: AcmeChoice = field(default_factory=AcmeChoice)
    lifetime_s: int | None = None
    #: What happens to the seats when the lifetime ends (None: the target's default).
    at_end: str | None = None
    path: Path | None = field(default=None, compare=False)
    #: Each seat's work volume, <seat>-work, in GB (None: none).
    volume_gb: int | None = None

    def seat(self, name: str) -> Seat:
        return next(s for s in self.seats if s.name == name)


def seat_name(workshop: str, number: int, count: int) -> str:
    """`<workshop>-01` .. `<workshop>-NN`: two digits at least, more when count needs them."""
    return f"{workshop}-{number:0{max(2, len(str(count)))}d}"


# -- reading YAML with the line of every value ---------------------------------------

class _Doc:
    """A mapping node's values, each with the line (1-based) it is on."""

    def __init__(self, where: str, node: yaml.MappingNode, context: str = ""):
        self.where, self.context = where, context
        self.line = node.start_mark.line + 1
        self.items: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or not key:
                raise self.error(key_node, "keys must be plain names")
            if key in self.items:
                raise self.error(key_node, f"{key} is given twice")
            self.items[key] = value_node

    def error(self, node: yaml.Node | None, problem: str, hint: str | None = None) -> BadRequest:
        line = node.start_mark.line + 1 if node is not None else self.line
        what = f"{self.context}: " if self.context else ""
        return BadRequest(f"{self.where}:{line}: {what}{problem}",
                          hint or "fix that line and run the command again")

    def refuse_unknown(self, known: tuple[str, ...]) -> None:
        for key, node in self.items.items():
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = (f"did you mean {close[0]}? " if close else "") + "known keys: " + ", ".join(known)
                raise self.error(node, f"unknown key {key!r}", hint)

    def text(self, key: str, *, required: bool = False, limit: int = 255) -> str | None:
        if key not in self.items:
            if required:
                raise self.error(None, f"{key} is missing", f"add a line `{key}: ...`")
            return None
        node = self.items[key]
        value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
            raise self.error(node, f"{key} must be a text value",
                             f"write one value, quoted if YAML reads it otherwise: {key}: 'yes'")
        text = node.value if isinstance(value, float) else str(value)
        if len(text) > limit or has_control(text):
            raise self.error(node, f"{key} must be one line of at most {limit} characters")
        return text

    def choice(self, key: str) -> str | None:
        """One of CHOICES; YAML reads an unquoted yes or no as a boolean, which counts."""
        node = self.items.get(key)
        if node is None:
            return None
        value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool):
            value = "yes" if value else "no"
        if value not in CHOICES:
            raise self.error(node, f"{key} must be one of {', '.join(CHOICES)}",
                             f"write `{key}: auto`, `{key}: yes` or `{key}: no`")
        return value

    def cloud(self, keys: tuple[str, ...]) -> dict[str, str | None]:
        """The cloud keys among keys that are given, checked."""
        return {k: (self.choice(k) if k in CHOICE_KEYS else self.text(k))
                for k in keys if k in self.items}

    def node(self, key: str) -> yaml.Node | None:
        return self.items.get(key)


def _scalar(node: yaml.Node):
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _load(text: str, where: str) -> _Doc:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise BadRequest(f"{where}{line}: not valid YAML: {exc.problem or exc.context}",
                         "check the indentation and quote values holding ': ' or '#'") from None
    except yaml.YAMLError as exc:
        raise BadRequest(f"{where}: not valid YAML: {exc}", "check the file's syntax") from None
    if not isinstance(root, yaml.MappingNode):
        raise BadRequest(f"{where}: a workshop file is a mapping of keys such as name, source "
                         "and seats", "see examples/workshop.yaml")
    return _Doc(where, root)


# -- the fields -------------------------------------------------------------------------

def _parse_lifetime(doc: _Doc) -> int | None:
    text = doc.text("lifetime")
    if text is None:
        return None
    seconds = parse_duration(text)
    if seconds is None:
        raise doc.error(doc.node("lifetime"), f"lifetime {text!r} is not a duration",
                        f"write {WRITTEN}")
    return seconds


def _parse_at_end(doc: _Doc, lifetime: int | None) -> str | None:
    text = doc.text("at_end")
    if text is None:
        return None
    if text not in AT_END:
        raise doc.error(doc.node("at_end"), f"at_end {text!r} is not an action",
                        f"use one of: {', '.join(AT_END)}")
    if lifetime is None:
        raise doc.error(doc.node("at_end"), "at_end is given but no lifetime",
                        "add a lifetime (such as lifetime: 8h), or leave at_end out")
    return text


def _parse_participants(doc: _Doc) -> list[Participant] | None:
    node = doc.node("participants")
    if node is None:
        return None
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise doc.error(node, "participants must be a list of names or {name, email} entries",
                        "write one `- Ada Lovelace` or `- {name: Ada, email: ada@example.org}` "
                        "per line")
    people, seen = [], set()
    for item in node.value:
        if isinstance(item, yaml.MappingNode):
            entry = _Doc(doc.where, item, "participant")
            entry.refuse_unknown(("name", "email"))
            name, email = entry.text("name", required=True, limit=120), entry.text("email")
            if email is not None and not EMAIL_RE.match(email):
                raise entry.error(entry.node("email"), f"{email!r} is not an email address")
        elif isinstance(item, yaml.ScalarNode) and item.value.strip():
            name, email = item.value.strip(), None
            if len(name) > 120 or has_control(name):
                raise doc.error(item, "a participant's name is one line of at most 120 characters")
        else:
            raise doc.error(item, "each participant is a name or a {name, email} mapping")
        if name in seen:
            raise doc.error(item, f"participant {name!r} is listed twice",
                            "give each participant once (add a surname or number to tell them apart)")
        seen.add(name)
        people.append(Participant(name, email))
    return people


def _parse_count(doc: _Doc, participants: list[Participant] | None) -> int:
    node = doc.node("seats")
    if node is not None and participants is not None:
        raise doc.error(node, "give seats or participants, not both",
                        "with participants there is one seat each: remove the seats line")
    if participants is not None:
        count = len(participants)
        if count > MAX_SEATS:
            raise doc.error(doc.node("participants"), f"{count} participants: at most {MAX_SEATS}",
                            "split the workshop into two files")
        return count
    if node is None:
        raise doc.error(None, "seats is missing", "add `seats: 30`, or a participants list")
    value = _scalar(node)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SEATS:
        raise doc.error(node, f"seats must be a whole number from 1 to {MAX_SEATS}, "
                              f"not {node.value!r}")
    return value


def _parse_overrides(doc: _Doc, names: list[str], people: list[Participant] | None) -> dict:
    node = doc.node("overrides")
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise doc.error(node, "overrides must map a seat to its settings",
                        "write `overrides:` then lines such as `  3: {flavor: m1.xlarge}`")
    by_person = {p.name: i for i, p in enumerate(people or [])}
    result: dict[int, dict] = {}
    for key_node, value_node in node.value:
        key = _scalar(key_node)
        if isinstance(key, str) and key.isdigit():  # "3": seat 3 as well
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool) and 1 <= key <= len(names):
            index = key - 1
        elif isinstance(key, str) and key in names:
            index = names.index(key)
        elif isinstance(key, str) and key in by_person:
            index = by_person[key]
        else:
            raise doc.error(key_node, f"overrides: {key_node.value!r} is not a seat",
                            f"use a seat number from 1 to {len(names)}, a seat name such as "
                            f"{names[0]}, or a participant's name")
        if index in result:
            raise doc.error(key_node, f"overrides: seat {names[index]} is overridden twice")
        if not isinstance(value_node, yaml.MappingNode):
            raise doc.error(value_node, f"overrides: the settings of {names[index]} must be a "
                                        "mapping such as {flavor: m1.xlarge}")
        entry = _Doc(doc.where, value_node, f"overrides of {names[index]}")
        entry.refuse_unknown(OVERRIDE_KEYS)
        values = entry.cloud(OVERRIDE_KEYS)
        if "hostname" in values:
            try:
                values["hostname"] = validate_hostname(values["hostname"])
            except BadRequest as exc:
                raise entry.error(entry.node("hostname"), exc.message, exc.hint) from None
        result[index] = values
    return result


def parse(text: str, where: str = "workshop.yaml") -> Workshop:
    """A workshop file's text -> Workshop, every field checked; BadRequest with FILE:LINE."""
    doc = _load(text, where)
    doc.refuse_unknown(KEYS)
    name = doc.text("name", required=True)
    if not NAME_RE.match(name) or len(name) > NAME_MAX:
        raise doc.error(doc.node("name"), f"invalid name {name!r}",
                        f"use 1-{NAME_MAX} lowercase letters, digits and hyphens, starting and "
                        "ending with a letter or digit: seats are named NAME-01, NAME-02, ...")
    options = {k: doc.text(k) for k in ("ref", "subdir", "open", "urlpath")}
    given = doc.text("source", required=True, limit=2048)
    try:
        source = resolve_source(given, ref=options["ref"], subdir=options["subdir"],
                                open_path=options["open"], urlpath=options["urlpath"])
    except BadRequest as exc:
        culprit = next((k for k in ("ref", "subdir", "open", "urlpath") if options[k] is not None
                        and k in exc.message), "source")
        raise doc.error(doc.node(culprit), exc.message, exc.hint) from None
    tls = doc.text("tls") or ACME
    try:
        validate_tls(tls)
    except BadRequest as exc:
        raise doc.error(doc.node("tls"), f"tls {tls!r} is not a mode", exc.hint) from None
    acme = _parse_acme(doc, tls)
    lifetime = _parse_lifetime(doc)
    at_end = _parse_at_end(doc, lifetime)
    people = _parse_participants(doc)
    count = _parse_count(doc, people)
    names = [seat_name(name, i, count) for i in range(1, count + 1)]
    base = doc.cloud(CLOUD_KEYS)
    overrides = _parse_overrides(doc, names, people)
    seats = []
    for index, seat in enumerate(names):
        values = {**base, **{k: v for k, v in overrides.get(index, {}).items() if k != "hostname"}}
        seats.append(Seat(number=index + 1, name=seat, cloud=CloudChoice(**values),
                          participant=people[index] if people else None,
                          hostname=overrides.get(index, {}).get("hostname")))
    return Workshop(name=name, source=source, seats=tuple(seats), tls=tls, acme=acme,
                    lifetime_s=lifetime, at_end=at_end, volume_gb=_parse_volume(doc))


def _parse_volume(doc: _Doc) -> int | None:
    """volume: each seat's work volume in GB (10, 10G, 10GB)."""
    text = doc.text("volume")
    if text is None:
        return None
    size = volume_size(text)
    if size is None or not 1 <= size <= MAX_VOLUME_GB:
        raise doc.error(doc.node("volume"), f"volume {text!r} is not a size in GB",
                        f"give each seat's work volume size, 1 to {MAX_VOLUME_GB}: volume: 10")
    return size


def _parse_acme(doc: _Doc, tls: str) -> AcmeChoice:
    """acme_ca, acme_ca_root (a PEM file, relative to the workshop file) and
    wildcard_dns (comma-separated, or none), checked as launch checks them."""
    root_path = doc.text("acme_ca_root")
    root = None
    if root_path:
        path = Path(doc.where).parent / root_path
        try:
            root = path.read_text(errors="replace")
        except OSError as exc:
            raise doc.error(doc.node("acme_ca_root"), f"cannot read acme_ca_root {path}: "
                            f"{exc.strerror}", "give a PEM file, relative to the workshop file") from None
    services = doc.text("wildcard_dns")
    given = AcmeChoice(ca=doc.text("acme_ca"), ca_root=root)
    if services is not None:
        parts = tuple(p.strip() for p in services.split(",") if p.strip())
        given = AcmeChoice(ca=given.ca, ca_root=root, wildcard_dns=() if parts == ("none",) else parts)
    try:
        return validate_acme(given, tls)
    except BadRequest as exc:
        culprit = next((k for k in ACME_KEYS if k.replace("_", "-") in exc.message and k in doc.items),
                       "acme_ca")
        message = exc.message.replace("--acme-ca-root", "acme_ca_root").replace(
            "--acme-ca", "acme_ca").replace("--wildcard-dns", "wildcard_dns").replace("--tls", "tls")
        raise doc.error(doc.node(culprit) if culprit in doc.items else None, message, exc.hint) from None


def load(path: Path | str) -> Workshop:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadRequest(f"{path}: no such workshop file",
                         "give the path of a workshop YAML file (see examples/workshop.yaml)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{path}: cannot read it: {exc}", "give a UTF-8 text file") from None
    workshop = parse(text, str(path))
    return Workshop(**{**workshop.__dict__, "path": path})
