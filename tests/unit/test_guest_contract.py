"""Host and guest agree: the guest script (cloud-init/vmbinder_guest.py, stdlib
only, run on the server) is imported next to the host modules that write its
launch document, and every fact they share is checked from both sides."""

from __future__ import annotations

import ast
import importlib
import ipaddress
import json
import os
import subprocess
import sys
from importlib import resources

import pytest
import yaml

import vmbinder
from vmbinder import cloudinit, guestcontract, launchdoc, readiness, urls
from vmbinder.images import build as gi
from vmbinder.images import rootfs
from vmbinder.sources import Source
from vmbinder.spec import GuestNetwork, LaunchSpec, make_spec

guest = importlib.import_module("vmbinder.cloud_init.vmbinder_guest")
SOURCE = resources.files("vmbinder.cloud_init").joinpath(cloudinit.GUEST_SCRIPT).read_text()


def spec_for(**kw) -> LaunchSpec:
    src = Source(repo="https://github.com/o/r", kind=kw.pop("kind", "git"), ref=kw.pop("ref", None))
    return make_spec(src, name="demo", **kw)


def rendered_document(spec: LaunchSpec, public_ip: str | None, credential=None) -> dict:
    rendered = cloudinit.render(spec, public_ip, credential=credential)
    files = {f["path"]: f for f in yaml.safe_load(rendered)["write_files"]}
    return json.loads(files[guestcontract.LAUNCH_PATH]["content"])


def guest_reads() -> set[tuple[str, ...]]:
    """Every key path the guest script reads from the launch document: doc["a"]["b"],
    doc.get("a"), self.doc.get("a") and where(doc, "k") (doc["guest"]["paths"]["k"])."""

    def is_doc(node) -> bool:
        return (isinstance(node, ast.Name) and node.id == "doc") or (
            isinstance(node, ast.Attribute) and node.attr == "doc")

    def chain(node) -> tuple[str, ...] | None:
        if is_doc(node):
            return ()
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            head = chain(node.value)
            return None if head is None else (*head, node.slice.value)
        return None

    found: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(SOURCE)):
        if isinstance(node, ast.Subscript):
            keys = chain(node)
            if keys:
                found.add(keys)
        elif isinstance(node, ast.Call) and node.args:
            func, args = node.func, node.args
            if (isinstance(func, ast.Attribute) and func.attr == "get"
                    and isinstance(args[0], ast.Constant) and chain(func.value) is not None):
                found.add((*chain(func.value), args[0].value))
            elif (isinstance(func, ast.Name) and func.id == "where" and len(args) == 2
                  and is_doc(args[0]) and isinstance(args[1], ast.Constant)):
                found.add(("guest", "paths", args[1].value))
    return found


def test_the_guest_is_found_reading_the_document():
    reads = guest_reads()
    assert {("token",), ("repo",), ("site", "candidates"), ("build", "image"),
            ("guest", "phase_prefix"), ("guest", "paths", "state")} <= reads
    assert len(reads) > 20


@pytest.mark.parametrize("public_ip", ["203.0.113.9", "2001:db8::1", None])
@pytest.mark.parametrize("tls", ["acme", "internal", "off"])
def test_a_rendered_document_has_every_key_the_guest_reads(public_ip, tls):
    # On a target the guest reaches at an address of the launching machine (the
    # local target), the document has the fence too.
    # Its care too: an idle time, a lifetime and the credential to act with.
    doc = rendered_document(spec_for(tls=tls, guest_network=GuestNetwork(host_address="10.0.2.2"),
                                     idle_s=600, lifetime_s=3600),
                            public_ip, credential=launchdoc.LONGEST_CREDENTIAL)
    for keys in sorted(guest_reads()):
        value = doc
        for key in keys:
            assert isinstance(value, dict) and key in value, f"the guest reads doc{list(keys)}"
            value = value[key]


def test_the_request_part_is_what_a_dry_run_shows():
    spec = spec_for()
    doc = launchdoc.document(spec, "203.0.113.9")
    parts = ("site", "build", "guest", "fence", "volumes", "care")
    assert {k: v for k, v in doc.items() if k not in parts} == launchdoc.request(spec, "203.0.113.9")


@pytest.mark.parametrize("hostname, public_ip, tls", [
    (None, "203.0.113.9", "acme"),
    (None, "2001:db8::1", "acme"),
    (None, "2001:0DB8:0000:0000:0000:0000:0000:0001", "acme"),
    ("nb.example.org", "203.0.113.9", "acme"),
    ("localhost", "127.0.0.1", "internal"),
    (None, "198.51.100.7", "internal"),
])
def test_caddy_serves_the_name_vmbinder_prints(hostname, public_ip, tls):
    """Before the guest reports, vmbinder prints the first name it tries; after, the
    name it settled on: each candidate's Caddyfile serves the URL printed for it."""
    from vmbinder import https, lifecycle
    from vmbinder.providers.base import META, Server

    spec = spec_for(tls=tls, hostname=hostname)
    doc = rendered_document(spec, public_ip)
    meta = {META + k: v for k, v in launchdoc.request(spec).items()
            if k in ("tls", "hostname") and v}
    address = str(ipaddress.ip_address(public_ip))  # as the cloud reports it
    server = Server("id", "demo", "active", "ACTIVE", address, meta)
    first = lifecycle.access(server).base
    for index, candidate in enumerate(doc["site"]["candidates"]):
        settled = Server("id", "demo", "active", "ACTIVE", address, {
            **meta, **{META + k: v for k, v in https.Outcome(candidate["host"], candidate["issuer"])
                       .metadata().items()}})
        printed = lifecycle.access(settled).base
        site = guest.caddyfile(doc, candidate).split("\n}\n", 1)[1].splitlines()[0]
        host = printed.removeprefix("https://").rstrip("/")
        assert site == host.strip("[]") + " {"
        if index == 0:
            assert printed == first


def test_with_tls_off_caddy_answers_on_any_name_at_the_printed_address():
    from vmbinder import lifecycle
    from vmbinder.providers.base import META, Server

    doc = rendered_document(spec_for(tls="off"), "2001:db8::1")
    assert doc["site"]["candidates"] == []
    assert "\n:80 {\n" in guest.caddyfile(doc, None)
    server = Server("id", "demo", "active", "ACTIVE", "2001:db8::1", {META + "tls": "off"})
    assert lifecycle.access(server).base == "http://[2001:db8::1]/"


def test_the_certificate_report_the_guest_writes_is_the_one_vmbinder_reads():
    from vmbinder import https

    doc = launchdoc.document(spec_for())
    assert doc["guest"]["outcome_prefix"] == https.OUTCOME_PREFIX and guest.ROOT_PATH == https.ROOT_PATH
    outcome = {"site": "203-0-113-9.sslip.io", "issuer": "acme", "root": None,
               "failed": [{"host": "203.0.113.9", "issuer": "acme", "cause": "rate limited",
                           "detail": "rateLimited - too many"}]}
    found = https.last_outcome("noise\n" + guest.outcome_line(doc, outcome) + "\nmore\n")
    assert found == https.Outcome("203-0-113-9.sslip.io", "acme", (
        https.Failure("203.0.113.9", "acme", "rate limited", "rateLimited - too many"),))


def test_the_own_cas_fingerprint_is_computed_alike(tmp_path, monkeypatch):
    import ssl

    from tests.unit.test_https import _cert, _pem
    from vmbinder import https

    root, _ = _cert("root", ca=True)
    doc = launchdoc.document(spec_for())
    folder = tmp_path / (guest.caddy_storage(doc).lstrip("/") + "/pki/authorities/local")
    folder.mkdir(parents=True)
    (folder / "root.crt").write_text(_pem(root))
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    assert guest.root_fingerprint(doc) == https.fingerprint(ssl.PEM_cert_to_DER_cert(_pem(root)))


def test_the_phase_line_the_guest_writes_is_the_one_readiness_parses():
    doc = launchdoc.document(spec_for())
    line = guest.phase_line(doc, {"phase": "build", "status": "started", "elapsed": 3})
    assert line.startswith(readiness.PHASE_PREFIX)
    console = f"[   12.5] cloud-init[412]: {line}\nsome other output\n"
    assert readiness.last_phase(console) == {"phase": "build", "status": "started", "elapsed": 3}


def test_the_guest_probes_the_interface_paths_vmbinder_prints():
    doc = rendered_document(spec_for(), "203.0.113.9")
    assert doc["guest"]["interfaces"] == [[i.key, i.path] for i in urls.INTERFACES]


def test_the_image_the_guest_builds_is_the_build_key_of_the_document():
    spec = spec_for(ref="v1.0")
    doc = rendered_document(spec, "203.0.113.9")
    assert guest.image_name(doc) == launchdoc.image_name(
        "git", "https://github.com/o/r", "v1.0", None, spec.repo2docker_version)
    # Snapshots of servers launched before keep their images only if this holds.
    assert launchdoc.image_name("git", "https://github.com/o/r", "v1.0", None, "2026.4.0") \
        == "vmbinder-env:fad4eed53033afbd"


def test_baked_images_have_what_the_guest_looks_for():
    paths = launchdoc.document(spec_for())["guest"]["paths"]
    assert paths["venv"] == gi.REPO2DOCKER_VENV
    assert paths["base_images"] == gi.BASE_IMAGES_DIR
    assert launchdoc.document(spec_for())["guest"]["trixie_pin"] == rootfs.TRIXIE_PIN


def test_base_images_are_imported_the_same_way_on_both_sides():
    sidecar = {"name": "vmbinder/base:bookworm", "tarball": "b.tar.gz",
               "changes": gi.base_container_changes()}
    changes = [arg for pair in zip(["--change"] * len(sidecar["changes"]), sidecar["changes"],
                                   strict=True) for arg in pair]
    assert guest.docker_import_argv("/x/b.tar.gz", sidecar) == [
        "docker", "import", *changes, "/x/b.tar.gz", "vmbinder/base:bookworm"]
    bare = {"name": "n", "tarball": "t"}
    assert guest.docker_import_argv("t", bare) == ["docker", "import", "t", "n"]


def test_one_repo2docker_pin():
    assert vmbinder.REPO2DOCKER_VERSION == guestcontract.REPO2DOCKER_VERSION
    assert spec_for().repo2docker_version == guestcontract.REPO2DOCKER_VERSION
    assert gi.REPO2DOCKER_VERSION == guestcontract.REPO2DOCKER_VERSION


def test_cloud_init_writes_the_files_where_the_guest_reads_them():
    doc = yaml.safe_load(cloudinit.render(spec_for(), "203.0.113.9"))
    assert guest.LAUNCH == guestcontract.LAUNCH_PATH
    assert [f["path"] for f in doc["write_files"]] == [guestcontract.LAUNCH_PATH,
                                                       guestcontract.GUEST_SCRIPT_PATH]
    assert doc["runcmd"] == [["python3", guestcontract.GUEST_SCRIPT_PATH, "run"]]


def test_the_guest_script_is_stdlib_only_and_parses_as_python_3_10():
    """Ubuntu 22.04's python3 is 3.10, the oldest a guest has (Debian 13's is 3.13)."""
    tree = ast.parse(SOURCE, feature_version=(3, 10))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= sys.stdlib_module_names, imported - sys.stdlib_module_names


def test_importing_the_guest_script_does_nothing(tmp_path):
    env = dict(os.environ, VMBINDER_GUEST_ROOT=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", "import vmbinder.cloud_init.vmbinder_guest"],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout == done.stderr == ""
    assert list(tmp_path.iterdir()) == []
