"""Hostile input, generated (hypothesis): shell metacharacters, quotes, newlines,
YAML and Jinja specials, unicode and very long strings, each carrying a canary
command that leaves a file behind if it ever runs.

- What a user types (source, --ref, --subdir, --open, --name, --hostname, and
  every field of a workshop file) is accepted or refused with vmbinder's own
  error, never anything else; accepted names and host names are plain DNS
  labels.
- Whatever gets past the checks, rendering carries each value unchanged as data
  (launch.json), in user-data of the same shape.
- The rendered guest script, run in a scratch root where every external command
  is a recorder, runs no canary and hands each value to repo2docker as exactly
  one argument.
- Oversized user-data is refused before the cloud is asked anything.

Examples per property are fixed (derandomized, so CI sees the same ones); the
total is checked to be at least 500 by the last test.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from vmbinder import cloudinit, errors, sources, spec
from vmbinder.sources import Source
from vmbinder.workshops import file as workshop

from .test_guest_script import Guest, jupyter, spec_for  # noqa: F401 - jupyter is a fixture

CANARY = "VMBINDER-CANARY"
PAYLOADS = [
    f"$(touch {CANARY})", f"`touch {CANARY}`", f"; touch {CANARY}", f"&& touch {CANARY}",
    f"| touch {CANARY}", f"' ; touch {CANARY} ; '", f'" ; touch {CANARY} ; "',
    f"\ntouch {CANARY}\n", f"\r\ntouch {CANARY}", f"> {CANARY}", f"$({CANARY})",
    f"{{{{ lipsum.__globals__.os.system('touch {CANARY}') }}}}", f"{{% raw %}}{CANARY}",
    f"!!python/object/apply:os.system ['touch {CANARY}']", f"&a [*a, touch {CANARY}]",
    f"--- \n- touch {CANARY}", f"# : {{ [ touch {CANARY} ] }}", f"%(touch {CANARY})s",
    f"${{IFS}}touch${{IFS}}{CANARY}", f"-- --help --editable {CANARY}",
]
SPECIALS = "$`'\"\\;&|<>(){}[]*?!#~%^\n\r\t :,-@=+/."
UNICODE = "ünïcødé ☃ 𝕏 \u202e\u0301 日本語 🚀"

hostile = st.one_of(
    st.sampled_from(PAYLOADS),
    st.tuples(st.text(SPECIALS + UNICODE, max_size=12), st.sampled_from(PAYLOADS),
              st.text(SPECIALS + "abc", max_size=12)).map("".join),
    st.tuples(st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
              st.sampled_from(PAYLOADS)).map("".join),
    st.tuples(st.sampled_from(PAYLOADS), st.integers(2000, 30000)).map(
        lambda pair: (pair[0] + " x") * (pair[1] // (len(pair[0]) + 2))),
).filter(lambda v: "\x00" not in v)

COUNTS: dict[str, int] = {}


def counted(key: str) -> None:
    COUNTS[key] = COUNTS.get(key, 0) + 1


def fixed(n: int):
    # Generation only: every property runs its n examples, and a failure is
    # reported as found (shrinking a 30 kB string takes minutes).
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.large_base_example, HealthCheck.data_too_large])


@fixed(150)
@given(value=hostile, which=st.sampled_from(["source", "ref", "subdir", "open", "urlpath"]))
def test_what_a_user_types_is_accepted_or_refused_with_vmbinders_error(value, which):
    counted("input")
    args = {"ref": None, "subdir": None, "open_path": None, "urlpath": None}
    text = "https://github.com/binder-examples/requirements"
    if which == "source":
        text = value
    else:
        args["open_path" if which == "open" else which] = value
    try:
        src = sources.resolve_source(text, **args)
    except errors.VmbinderError as exc:
        assert exc.message and exc.exit_code == 2
        return
    # Accepted: it is the value the user gave, to be carried as data.
    if which == "ref":
        assert src.ref == value
    if which == "subdir":
        assert value.strip("/") in (src.subdir or "")


@fixed(80)
@given(value=hostile)
def test_names_and_host_names_are_plain_dns_labels_or_refused(value):
    counted("names")
    for check in (spec.validate_name, spec.validate_hostname):
        try:
            accepted = check(value)
        except errors.BadRequest:
            continue
        assert set(accepted) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-")
        assert CANARY.lower() not in accepted.lower() or set(value) <= set(accepted + "-. ")


@fixed(60)
@given(value=hostile, field=st.sampled_from(["name", "source", "ref", "subdir", "open",
                                             "urlpath", "flavor", "image", "network", "key",
                                             "lifetime", "tls", "participant", "email"]))
def test_every_field_of_a_workshop_file_is_accepted_or_refused_with_vmbinders_error(value, field):
    counted("workshop")
    doc = {"name": "ws", "source": "https://github.com/o/r", "seats": 2}
    if field == "participant":
        doc.pop("seats")
        doc["participants"] = [{"name": value, "email": "a@example.org"}, {"name": "b"}]
    elif field == "email":
        doc.pop("seats")
        doc["participants"] = [{"name": "a", "email": value}]
    else:
        doc[field] = value
    try:
        ws = workshop.parse(yaml.safe_dump(doc, allow_unicode=True), "hostile.yaml")
    except errors.VmbinderError as exc:
        assert "hostile.yaml" in exc.message and exc.exit_code == 2
        return
    for seat in ws.seats:
        spec.validate_name(seat.name)  # seat names stay plain labels


@fixed(220)
@given(repo=hostile, ref=hostile, subdir=hostile, open_path=hostile)
def test_rendering_carries_every_value_unchanged_as_data(repo, ref, subdir, open_path):
    counted("render")
    # Built directly: the renderer must be safe for values that got past the checks.
    src = Source(repo=repo, kind="git", ref=ref, subdir=subdir, open=open_path, given=repo)
    made = spec.make_spec(src, name="demo")
    try:
        text = cloudinit.render(made, "203.0.113.9")
    except errors.BadRequest as exc:
        # Too big for Nova: refused with the limit (render checks its result).
        assert "65535" in exc.message
        # Far beyond what anyone types: over 15000 characters, each of which may
        # take six in the rendered JSON (& is written \u0026).
        assert len(repo) + len(ref) + len(subdir) + len(open_path) > 15000
        return
    doc = yaml.safe_load(text)
    assert set(doc) == {"write_files", "runcmd"}
    assert doc["runcmd"] == [["python3", "/usr/local/lib/vmbinder/vmbinder-guest.py", "run"]]
    files = {f["path"]: f for f in doc["write_files"]}
    launch = json.loads(files["/etc/vmbinder/launch.json"]["content"])
    assert (launch["repo"], launch["ref"], launch["subdir"], launch["open"]) == (
        repo, ref, subdir, open_path)


@fixed(40)
@given(repo=hostile, ref=hostile, subdir=hostile)
def test_the_guest_script_runs_no_injected_command_and_passes_each_value_as_one_argument(
        jupyter, repo, ref, subdir):  # noqa: F811 - the fixture imported above
    counted("guest")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        guest = Guest(tmp_path, jupyter, spec_for(repo=repo, ref=ref, subdir=subdir))
        res = guest.run()
        assert res.returncode == 0, res.stderr[-2000:]
        builds = [c for c in guest.calls("repo2docker") if c[1:] != ["--version"]]
        assert len(builds) == 1
        assert builds[0][-4:] == [f"--ref={ref}", f"--subdir={subdir}", "--", repo]
        assert {c[0] for c in guest.calls()} <= {"apt-get", "systemctl", "docker", "caddy",
                                                 "update-ca-certificates", "python3",
                                                 "repo2docker"}
        assert not [p for p in tmp_path.rglob("*") if CANARY in p.name], "an injected command ran"
        assert not list(Path.cwd().glob(f"*{CANARY}*"))


@fixed(20)
@given(size=st.integers(70_000, 200_000))
def test_oversized_user_data_is_refused_before_the_cloud_is_asked_anything(size, monkeypatch_cli):
    counted("oversized")
    runner, calls, ca, pem = monkeypatch_cli
    ca.write_text(pem * (size // len(pem) + 1))  # a CA bundle far too big to send
    res = runner(["launch", "--no-wait", "--ca-cert", str(ca), "https://github.com/o/r"])
    assert res.exit_code == 2, res.output
    assert "65535" in res.output
    assert calls == []


@pytest.fixture
def monkeypatch_cli(tmp_path_factory, monkeypatch):
    """The CLI with a provider that records every call made to it."""
    from click.testing import CliRunner

    from vmbinder.commands import main as cli_mod
    from vmbinder.providers.openstack import OpenStackProvider

    calls: list[str] = []

    class Recording:
        kind = "openstack"
        # What the provider declares (data, not calls): make_spec reads them.
        target_defaults = OpenStackProvider.target_defaults
        metadata_limits = OpenStackProvider.metadata_limits

        def url_from_here(self, url):  # how this machine reaches a URL: asks no cloud
            return url

        def __getattr__(self, name):
            def call(*args, **kwargs):
                calls.append(name)
                raise AssertionError(f"the cloud was asked {name}")
            return call

    monkeypatch.setattr(cli_mod.Context, "provider", property(lambda self: Recording()))
    runner = CliRunner()
    folder = tmp_path_factory.mktemp("ca")
    return (lambda args: runner.invoke(cli_mod.cli, args, catch_exceptions=False),
            calls, folder / "ca.pem", _self_signed_pem())


def _self_signed_pem() -> str:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_at_least_500_hostile_values_went_through():
    # Runs after the properties above (file order): their examples, counted.
    assert sum(COUNTS.values()) >= 500, COUNTS
