"""The build log: the guest's status service hands it out in readable chunks
(/vmbinder/log, token required), and `vmbinder logs` reads and follows it
through the server's URL. The guest's handler runs for real on loopback."""

from __future__ import annotations

import importlib
import json
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest

from vmbinder import errors, guestlog, launchdoc
from vmbinder.providers.base import Server
from vmbinder.sources import Source
from vmbinder.spec import make_spec

guest = importlib.import_module("vmbinder.cloud_init.vmbinder_guest")

R2D = [json.dumps({"phase": "building", "message": "Step 1/3 : FROM vmbinder/base:bookworm\n"}),
       json.dumps({"phase": "building", "message": " ---> 1234abcd\n"}),
       "HEAD is now at 0a1b2c3 first",
       json.dumps({"phase": "failed", "message": "The command '/bin/sh -c false' returned 1\n"})]


@pytest.fixture
def served(monkeypatch, tmp_path):
    """The status service on a loopback port, for a launch whose commands log is
    written by the test: (document, log path, port)."""
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    doc = launchdoc.document(make_spec(Source("https://github.com/o/r", "git"), name="demo",
                                       tls="off"))
    monkeypatch.setattr(guest.StatusHandler, "doc", doc)
    monkeypatch.setattr(guest.StatusHandler, "reread", False)
    path = tmp_path / "var/log/vmbinder/commands.log"
    path.parent.mkdir(parents=True)
    path.write_text("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), guest.StatusHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield doc, path, server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_repo2docker_s_json_lines_become_their_text():
    assert guest.readable("\n".join(R2D) + "\n") == (
        "Step 1/3 : FROM vmbinder/base:bookworm\n ---> 1234abcd\nHEAD is now at 0a1b2c3 first\n"
        "The command '/bin/sh -c false' returned 1\n")
    assert guest.readable('{"not": "a message"}\n{broken\n') == '{"not": "a message"}\n{broken\n'


def test_a_chunk_ends_after_a_whole_line_and_never_shows_the_token(served):
    doc, path, _ = served
    path.write_text(f"apt-get install\nrun with {doc['token']}\nhalf a li")
    text, after, size = guest.log_chunk(doc, 0)
    assert text == "apt-get install\nrun with <token>\n"
    assert after == len(f"apt-get install\nrun with {doc['token']}\n") and size == path.stat().st_size
    with open(path, "a") as fh:
        fh.write("ne\n")
    assert guest.log_chunk(doc, after)[0] == "half a line\n"
    assert guest.log_chunk(doc, 10 ** 9)[0] == ""


def test_the_log_needs_the_token(served):
    doc, path, port = served
    path.write_text("secret build output\n")
    for query in ("", "?token=wrong"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/vmbinder/log{query}", timeout=10)
        assert info.value.code == 403 and b"secret" not in info.value.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/vmbinder/log?token={doc['token']}",
                                timeout=10) as resp:
        assert json.load(resp)["text"] == "secret build output\n"


def test_the_page_lists_every_step_with_its_state_and_time(served, monkeypatch):
    doc, path, port = served
    path.write_text("\n".join(R2D) + "\n")
    guest.write_state(doc, phase="build", status="started", started=0, step_started=guest.time.time() - 30,
                      durations={"trust": 1.0, "mirrors": 0.2})
    guest.write(guest.home_store(doc) + "/steps.json",
                json.dumps({doc["build"]["image"]: {"build": 100.0}}))
    rows = {name: (state, time) for name, state, time in guest.steps_table(doc, guest.current_state(doc))}
    assert rows["trust"] == ("done", "1 s") and rows["service"] == ("waiting", "")
    state, time = rows["build"]
    assert state == "running" and time.startswith("3") and "s so far, about 7" in time
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={doc['token']}", timeout=10)
    page = info.value.read().decode()
    assert info.value.code == 503
    assert "<td>build</td><td>running</td>" in page and "<td>service</td><td>waiting</td>" in page
    assert "Step 1/3 : FROM vmbinder/base:bookworm" in page and '"phase"' not in page


class OneServer:
    """What guestlog asks of a provider: the console (nothing to settle)."""

    def console_log(self, server, lines=None):
        return ""

    def set_metadata(self, server, values):
        return server

    def supports(self, verb):
        return False

    def unsupported(self, verb):
        return errors.BadRequest(f"the test target cannot {verb}", "no SSH here")


def server_at(port: int, doc: dict) -> Server:
    meta = {"vmbinder:tls": "off", "vmbinder:http-port": str(port), "vmbinder:token": doc["token"]}
    return Server(id="1", name="demo", state="active", cloud_status="ACTIVE", address="127.0.0.1",
                  metadata=meta)


def test_logs_reads_the_whole_log_then_follows_it(served, monkeypatch):
    doc, path, port = served
    monkeypatch.setattr(guest, "LOG_CHUNK", 64)
    lines = [f"line {n:03d} of the build" for n in range(20)]
    path.write_text("\n".join(lines) + "\n")
    reader = guestlog.Reader(OneServer(), server_at(port, doc))
    chunks = list(guestlog.read_all(reader))
    assert len(chunks) > 3 and "".join(c.text for c in chunks) == path.read_text()
    written, naps = [], []

    def sleep(seconds):
        naps.append(seconds)
        if len(naps) == 1:
            with open(path, "a") as fh:
                fh.write("grown while followed\n")

    offset = guestlog.follow(reader, written.append, sleep=sleep, offset=chunks[-1].offset,
                             stop=lambda: len(naps) >= 2)
    assert written == ["grown while followed\n"] and offset == path.stat().st_size


def test_a_server_reached_neither_over_https_nor_over_ssh_says_both(served):
    """(The ways over SSH, when it answers: tests/unit/test_expose_ssh.py.)"""
    doc, _, port = served
    reader = guestlog.Reader(OneServer(), server_at(1, doc))
    with pytest.raises(errors.CloudError) as info:
        list(guestlog.read_all(reader))
    assert info.value.message == ("demo's status service does not answer, and SSH does not "
                                  "reach the server either: the test target cannot ssh_target")
    assert info.value.hint == "no SSH here"


def test_a_launch_shows_the_build_output_while_it_waits(served):
    """The wait's first probe: new lines of the log go to the reporter's output,
    the newest to the progress line, and it never holds the wait up."""
    from vmbinder import lifecycle

    doc, path, port = served
    watch = lifecycle._Watch(OneServer(), server_at(port, doc), None)
    seen = []
    watch.on_output = seen.append
    path.write_text("\n".join(R2D[:2]) + "\n")
    assert watch.build_output() == (True, "") and seen == []  # no certificate outcome yet
    watch.found = object()  # the console named the certificate: the URL can be checked
    assert watch.build_output() == (True, "")
    assert seen == ["Step 1/3 : FROM vmbinder/base:bookworm", " ---> 1234abcd"]
    assert watch.newest == " ---> 1234abcd"
    assert watch.build_output() == (True, "") and len(seen) == 2  # nothing new, nothing again
    watch.log.server = server_at(1, doc)  # the service goes away: the wait goes on
    assert watch.build_output() == (True, "")


def test_once_ready_the_page_in_front_of_a_jupyter_that_does_not_answer_is_no_200(served):
    """Caddy shows the page as /vmbinder/unavailable when Jupyter does not answer;
    after the environment was ready that is a restart, and probes must not take it
    for Jupyter. The page asked for by its own path is a 200 once ready."""
    doc, _, port = served
    guest.write_state(doc, phase="ready", status="done", ready=True, started=0)
    for path in ("/", "/vmbinder/page"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            assert resp.status == 200 and b"restarting" not in resp.read()
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{guest.FALLBACK_PATH}", timeout=10)
    assert info.value.code == 503 and b"restarting" in info.value.read()
    assert f"rewrite * {guest.FALLBACK_PATH}" in guest.caddyfile(doc, None)


class Recording(OneServer):
    def __init__(self):
        self.recorded = []
        self.console = ""

    def console_log(self, server, lines=None):
        return self.console

    def set_metadata(self, server, values):
        self.recorded.append(values)
        meta = {**server.metadata, **{"vmbinder:" + k: v for k, v in values.items()}}
        return Server(**{**server.__dict__, "metadata": meta})

    @property
    def metadata_limits(self):
        from vmbinder.spec import MetadataLimits

        return MetadataLimits(value_max=255)


def test_status_after_no_wait_tells_the_guest_s_step_and_records_what_it_found_once_ready(served):
    from vmbinder import lifecycle

    doc, _, port = served
    provider = Recording()
    guest.write_state(doc, phase="build", status="started", started=guest.time.time() - 42)
    server, report = lifecycle.observe(provider, server_at(port, doc))
    assert report is None  # no phase on the console: its guest has not started, nothing is asked
    provider.console = guest.phase_line(doc, {"phase": "build", "status": "started"}) + "\n"
    server, report = lifecycle.observe(provider, server_at(port, doc))
    assert report["phase"] == "build" and report["status"] == "started" and not report["ready"]
    assert 41 <= report["elapsed"] <= 60 and provider.recorded == []
    guest.write_state(doc, phase="ready", status="done", ready=True, interfaces=["tree", "lab"],
                      commit="0a1b2c3")
    server, report = lifecycle.observe(provider, server)
    assert report["ready"] is True and report["commit"] == "0a1b2c3"
    assert provider.recorded == [{"interfaces": "tree,lab"}] and server.meta("interfaces") == "tree,lab"
    lifecycle.observe(provider, server)
    assert len(provider.recorded) == 1  # recorded once, by whichever command saw it first
    gone, report = lifecycle.observe(provider, server_at(1, doc))
    assert report is None


def test_status_shows_the_step_and_a_kept_failure():
    from vmbinder.commands.output import guest_rows

    server = Server(id="1", name="demo", state="active", cloud_status="ACTIVE", address="127.0.0.1",
                    metadata={"vmbinder:failed": "build"})
    rows = dict(guest_rows(server, {"phase": "build", "status": "failed", "ready": False,
                                    "elapsed": 300, "error": "repo2docker exited with 1"}))
    assert rows == {"step": "build failed", "elapsed": "300 s since the guest started",
                    "error": "repo2docker exited with 1",
                    "failed": "the build failed; the server is kept: vmbinder logs demo"}
