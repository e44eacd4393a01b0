"""The guest script's pure parts, imported: each takes the launch document (or
a file's text) and returns text or arguments. test_guest_script.py runs the
whole script in a scratch root."""

from __future__ import annotations

import contextlib
import importlib
import json
import threading
import urllib.error
import urllib.request
from dataclasses import replace
from http.server import ThreadingHTTPServer

import pytest

from vmbinder import launchdoc
from vmbinder.sources import Source
from vmbinder.spec import make_spec

guest = importlib.import_module("vmbinder.cloud_init.vmbinder_guest")


def document(public_ip="203.0.113.9", *, kind="git", repo="https://github.com/o/r", ref=None,
             subdir=None, name="demo", commit=None, **kw) -> dict:
    src = Source(repo=repo, kind=kind, ref=ref, subdir=subdir, open=None, given=repo, commit=commit)
    return launchdoc.document(make_spec(src, name=name, **kw), public_ip)


def test_the_caddyfile_for_an_address_under_acme(monkeypatch):
    monkeypatch.delenv("VMBINDER_GUEST_JUPYTER", raising=False)
    doc = document()
    stamp = guest.launch_id(doc)
    assert guest.caddyfile(doc, doc["site"]["candidates"][0]) == (
        "# Written by vmbinder-guest.py caddy-config before every start of vmbinder-caddy.service.\n"
        "{\n"
        "\tadmin off\n"
        f"\tstorage file_system /var/lib/vmbinder-caddy/{stamp}\n"
        "\tskip_install_trust\n"
        "\tdefault_sni 203.0.113.9\n"
        "\tlog {\n"
        "\t\toutput file /var/log/vmbinder-caddy/caddy.log\n"
        "\t\tformat json\n"
        "\t}\n"
        "}\n"
        "203.0.113.9 {\n"
        "\ttls {\n"
        "\t\tissuer acme {\n"
        "\t\t\tdir https://acme-v02.api.letsencrypt.org/directory\n"
        "\t\t\tdisable_tlsalpn_challenge\n"
        "\t\t\tprofile shortlived\n"
        "\t\t}\n"
        "\t}\n"
        "\thandle /vmbinder/* {\n"
        "\t\treverse_proxy 127.0.0.1:8081\n"
        "\t}\n"
        "\thandle {\n"
        "\t\treverse_proxy 127.0.0.1:8888\n"
        "\t}\n"
        "\thandle_errors {\n"
        "\t\trewrite * /vmbinder/unavailable\n"
        "\t\treverse_proxy 127.0.0.1:8081\n"
        "\t}\n"
        "}\n")


def site_of(caddyfile: str) -> list[str]:
    """The site block's lines (after the global options)."""
    return caddyfile.split("\n}\n", 1)[1].splitlines()


@pytest.mark.parametrize("public_ip, hostname, tls, firsts", [
    ("203.0.113.9", None, "acme", ["203.0.113.9 {", "203-0-113-9.sslip.io {",
                                   "203-0-113-9.nip.io {", "203.0.113.9 {"]),
    ("203.0.113.9", "nb.example.org", "acme", ["nb.example.org {", "nb.example.org {"]),
    # Written out in full or in capitals, an IPv6 address is the same address and name.
    ("2001:0DB8:0:0:0:0:0:1", None, "acme", ["2001:db8::1 {", "2001-db8--1.sslip.io {",
                                             "2001:db8::1 {"]),
    ("::1", None, "acme", ["::1 {", "--1.sslip.io {", "::1 {"]),
    ("2a01:4f8:c17:b8f::2", None, "internal", ["2a01:4f8:c17:b8f::2 {"]),
    (None, None, "internal", ["localhost {"]),
    (None, None, "acme", ["localhost {", "localhost {"]),
    ("127.0.0.1", "localhost", "internal", ["localhost {"]),
])
def test_the_caddyfile_for_each_candidate(public_ip, hostname, tls, firsts):
    doc = document(public_ip, hostname=hostname, tls=tls)
    candidates = doc["site"]["candidates"]
    assert [site_of(guest.caddyfile(doc, c))[0] for c in candidates] == firsts
    for candidate in candidates:
        text = guest.caddyfile(doc, candidate)
        assert ("\ttls internal" in site_of(text)) == (candidate["issuer"] == "internal")
        assert ("\t\tissuer acme {" in site_of(text)) == (candidate["issuer"] == "acme")
        assert ("default_sni" in text) == guest.is_ip(candidate["host"])


@pytest.mark.parametrize("public_ip, hostname", [("203.0.113.9", None), (None, "nb.example.org"),
                                                 ("2001:db8::1", None), (None, None)])
def test_with_tls_off_caddy_serves_port_80_for_any_name(public_ip, hostname):
    text = guest.caddyfile(document(public_ip, hostname=hostname, tls="off"), None)
    assert site_of(text)[0] == ":80 {" and "tls" not in "".join(site_of(text))


@pytest.mark.parametrize("error, cause", [
    ("HTTP 429 urn:ietf:params:acme:error:rateLimited - too many certificates (5) already issued",
     "rate limited"),
    ('HTTP 400 urn:ietf:params:acme:error:connection - Get "http://127.0.0.1:5002/.well-known/'
     'acme-challenge/x": dial tcp 127.0.0.1:5002: connect: connection refused', "port 80 unreachable"),
    ('registering account [] with server: provisioning client: performing request: Get '
     '"https://127.0.0.1:1/dir": dial tcp 127.0.0.1:1: connect: connection refused', "CA unreachable"),
    ("HTTP 400 urn:ietf:params:acme:error:rejectedIdentifier - Order included an identifier for "
     'which issuance is forbidden by policy: "x.blocked.example"', "refused by the CA"),
    ("[127.0.0.1] creating new order: unknown profile name 'shortlived'; supported profiles: "
     "map[] (ca=https://127.0.0.1:14000/dir)", "refused by the CA"),
    ("HTTP 400 urn:ietf:params:acme:error:dns - DNS problem: NXDOMAIN looking up A", "DNS lookup failed"),
    ("HTTP 403 urn:ietf:params:acme:error:unauthorized - Invalid response from http://x: 404",
     "validation failed"),
    ("HTTP 400 urn:ietf:params:acme:error:malformed - something else", "refused by the CA"),
])
def test_the_cas_answer_becomes_a_named_cause(error, cause):
    """Caddy's words for each, as logged by Caddy 2.11.7 against pebble 2.4 where
    pebble can say it, and as Let's Encrypt words them otherwise."""
    got, detail = guest.acme_cause(error)
    assert got == cause and len(detail) <= 120 and detail.strip(".") in error


def test_the_image_is_named_after_what_is_built_not_after_the_server():
    one = guest.image_name(document(ref="v1.0"))
    assert one.startswith("vmbinder-env:") and len(one) == len("vmbinder-env:") + 16
    # Another seat (name, token, host name, address) of the same build: the same image.
    assert guest.image_name(document("203.0.113.10", ref="v1.0", name="demo-02",
                                     hostname="seat2.example.org")) == one
    assert guest.image_name(document(ref="v2.0")) != one
    assert guest.image_name(document(ref="v1.0", subdir="binder")) != one
    same = make_spec(Source("https://github.com/o/r", "git", ref="v1.0"), name="demo")
    older = launchdoc.document(replace(same, repo2docker_version="2025.1.0"))
    assert guest.image_name(older) != one


def apt_root(monkeypatch, tmp_path, files: dict[str, str]):
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    for name, text in files.items():
        (tmp_path / "etc/apt" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "etc/apt" / name).write_text(text)


BOOKWORM = ("Types: deb\nURIs: http://mirror.example/debian\n"
            "Suites: bookworm bookworm-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            "Types: deb\nURIs: http://mirror.example/debian-security\n"
            "Suites: bookworm-security\nComponents: main\n")


@pytest.mark.parametrize("files", [
    {"sources.list.d/debian.sources": BOOKWORM},
    {"sources.list": "# deb http://old.example/debian bookworm main\n"
                     "deb [arch=amd64] http://mirror.example/debian bookworm main\n"
                     "deb http://mirror.example/debian-security bookworm-security main\n"},
], ids=["deb822", "one-line"])
def test_trixie_comes_from_the_bookworm_mirror(monkeypatch, tmp_path, files):
    apt_root(monkeypatch, tmp_path, files)
    mirror = guest.debian_mirror(document())
    assert mirror == "http://mirror.example/debian"
    assert guest.trixie_sources(mirror) == (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: trixie\nComponents: main\n")
    # The launch's own mirror wins; deb.debian.org when there is nothing to go by.
    assert guest.debian_mirror({**document(), "apt_mirror": "http://m.example/d"}) == \
        "http://m.example/d"


@pytest.mark.parametrize("files", [
    {}, {"sources.list.d/x.sources": "# no URIs here\nTypes: deb\n"},
    {"sources.list.d/off.sources": "Types: deb\nURIs: http://mirror.example/debian\n"
                                   "Suites: bookworm\nComponents: main\nEnabled: no\n"},
], ids=["none", "no-uris", "disabled"])
def test_trixie_falls_back_to_deb_debian_org(monkeypatch, tmp_path, files):
    apt_root(monkeypatch, tmp_path, files)
    assert guest.debian_mirror(document()) == "http://deb.debian.org/debian"


def test_the_trixie_pin_is_low():
    pin = document()["guest"]["trixie_pin"]
    assert "Pin: release n=trixie\n" in pin and "Pin-Priority: 100\n" in pin


@pytest.mark.parametrize("kind, providers", [
    ("git", "contentproviders.Git"),
    ("zenodo", "contentproviders.Zenodo"),
    ("doi", "contentproviders.Zenodo, contentproviders.Figshare, contentproviders.Hydroshare, "
            "contentproviders.Dataverse"),
    ("something new", "contentproviders.Git"),
])
def test_repo2docker_gets_only_the_content_providers_the_kind_needs(kind, providers):
    assert guest.repo2docker_config(document(kind=kind)) == (
        "from repo2docker import contentproviders\n"
        f"c.Repo2Docker.content_providers = [{providers}]\n")


def test_the_build_passes_each_value_as_one_argument(monkeypatch):
    monkeypatch.setattr(guest, "ROOT", "/")
    value = "x; touch PWNED\n--help"
    doc = document(repo=value, ref=value, subdir=value)
    assert guest.repo2docker_argv(doc) == [
        "/opt/vmbinder/repo2docker/bin/repo2docker", "--config",
        "/etc/vmbinder/repo2docker_config.py", "--no-run", "--json-logs", "--user-id", "1000",
        "--user-name", "jovyan", "--image-name", guest.image_name(doc),
        f"--ref={value}", f"--subdir={value}", "--", value]
    bare = document()
    assert guest.repo2docker_argv(bare)[-3:] == [guest.image_name(bare), "--", bare["repo"]]


def test_the_build_checks_out_the_commit_the_launch_found_the_ref_at():
    sha = "c" * 40
    doc = document(ref="main", commit=sha)
    assert guest.repo2docker_argv(doc)[-3:] == [f"--ref={sha}", "--", doc["repo"]]
    # The build key follows the commit: another commit of main is another environment.
    assert guest.image_name(doc) != guest.image_name(document(ref="main", commit="d" * 40))


def test_the_token_stays_off_the_container_command_line(monkeypatch):
    monkeypatch.delenv("VMBINDER_GUEST_JUPYTER", raising=False)
    doc = document()
    command = guest.env_service_command(doc)
    assert doc["token"] not in command
    assert "--env-file /etc/vmbinder/jupyter.env -p 127.0.0.1:8888:8888" in command
    assert command.split()[-9] == guest.image_name(doc)


def test_base_images_are_imported_with_every_change():
    sidecar = {"name": "vmbinder/base:bookworm", "tarball": "b.tar.gz",
               "changes": ["USER 1000", "ENV A=b c"]}
    assert guest.docker_import_argv("/d/b.tar.gz", sidecar) == [
        "docker", "import", "--change", "USER 1000", "--change", "ENV A=b c", "/d/b.tar.gz",
        "vmbinder/base:bookworm"]


@contextlib.contextmanager
def status_page():
    """The guest's status handler on a loopback port: its /vmbinder base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), guest.StatusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/vmbinder"
    finally:
        server.shutdown()
        server.server_close()


def status_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.load(resp)


def refused(url: str) -> int:
    """The HTTP error code a URL answers with (pytest fails it if it answers 200)."""
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=10)
    return info.value.code


def test_the_status_page_reads_the_state_where_the_document_says(monkeypatch, tmp_path):
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    doc = document()
    guest.write_state(doc, phase="build", status="started", started=0)
    assert (tmp_path / doc["guest"]["paths"]["state"].lstrip("/")).is_file()
    monkeypatch.setattr(guest.StatusHandler, "doc", doc)
    with status_page() as base:
        got = status_json(f"{base}/status.json?token={doc['token']}")
        assert (got["phase"], got["status"], got["ready"]) == ("build", "started", None)
        for url, code in ((f"{base}/status.json?token=wrong", 403), (f"{base}/page", 503)):
            assert refused(url) == code


def _launch_file(tmp_path, doc):
    path = tmp_path / guest.LAUNCH.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_a_state_left_by_another_launch_is_not_reported_as_this_ones(monkeypatch, tmp_path):
    # A seat started from the first seat's snapshot finds the first seat's state
    # (ready) on its disk: until its own run writes, it reports nothing done.
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    first, second = document(name="ws-01"), document(name="ws-02")
    guest.write_state(first, phase="ready", status="done", ready=True, started=0)
    assert guest.current_state(first)["ready"] is True
    assert guest.current_state(second) == {}
    guest.write_state(second, phase="trust", status="started")
    assert guest.current_state(second)["phase"] == "trust"
    assert guest.current_state(first) == {}


def test_the_status_page_follows_the_launch_document_cloud_init_writes(monkeypatch, tmp_path):
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    first, second = document(name="ws-01"), document(name="ws-02")
    guest.write_state(first, phase="ready", status="done", ready=True, started=0)
    _launch_file(tmp_path, second)  # cloud-init's write_files on the snapshot's first boot
    monkeypatch.setattr(guest.StatusHandler, "doc", first)
    monkeypatch.setattr(guest.StatusHandler, "reread", True)
    with status_page() as base:
        got = status_json(f"{base}/status.json?token={second['token']}")
        assert (got["phase"], got["ready"]) == (None, None)
        for url, code in ((f"{base}/status.json?token={first['token']}", 403), (f"{base}/page", 503)):
            assert refused(url) == code


def test_jupyter_gets_the_token_of_the_launch_document_at_every_start(monkeypatch, tmp_path):
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    first, second = document(name="ws-01"), document(name="ws-02")
    env = tmp_path / first["guest"]["paths"]["env_file"].lstrip("/")
    assert guest.write_env_file(first) is True
    _launch_file(tmp_path, second)
    assert guest.main(["vmbinder-guest.py", "env-file"]) == 0
    assert env.read_text() == f"JUPYTER_TOKEN={second['token']}\n"
    assert env.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("line, record", [
    ('{"message": "Fetching Zenodo record 3242074.\\n", "phase": "fetching"}', "Zenodo record 3242074"),
    ('{"message": "Fetching Figshare article 9782777 in version 3.\\n", "phase": "fetching"}',
     "Figshare article 9782777 version 3"),
    ('{"message": "Fetching Dataverse record https://dataverse.harvard.edu/dataset.xhtml?persistentId='
     'doi:10.7910/DVN/TJCLKP.\\n", "phase": "fetching"}',
     "Dataverse record https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP"),
    ('{"message": "Downloading https://www.hydroshare.org/django_irods/download/bags/b8f6eae9d89241cf8b'
     '5c2af9f5e85aef.\\n", "phase": "fetching"}',
     "HydroShare bag https://www.hydroshare.org/django_irods/download/bags/b8f6eae9d89241cf8b5c2af9f5e85aef"),
    ('{"message": "HEAD is now at 0123abc Initial\\n", "phase": "fetching"}', None),
])
def test_the_record_a_doi_was_fetched_at_comes_from_repo2docker_s_own_lines(line, record):
    """What repo2docker's providers print when they fetch (repo2docker/contentproviders),
    as --json-logs writes it to the build log."""
    text = '{"message": "Picked Zenodo content provider.\\n", "phase": "fetching"}\n' + line + "\n"
    assert guest.fetched_record(text) == record
    # Zenodo names the record again with its files: that line is not a record line.
    assert guest.fetched_record(text + '{"message": "Fetching Zenodo record 3242074 files.\\n"}\n') == record
