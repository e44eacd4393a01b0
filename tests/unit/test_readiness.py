import http.server
import json
import threading

import pytest

from vmbinder import errors, readiness


class Clock:
    def __init__(self):
        self.t = 0.0

    def now(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_wait_until_backs_off_and_returns_when_all_probes_pass():
    answers = iter([(False, "a"), (False, "b"), (True, "c")])
    clock = Clock()
    seen = []
    detail = readiness.wait_until([lambda: next(answers)], timeout=100, on_progress=seen.append,
                                  clock=readiness.Clock(clock.now, clock.sleep), interval=2)
    assert detail == "c" and seen == ["a", "b", "c"]
    assert clock.t == 2 + 3


def test_wait_until_times_out_with_the_last_detail():
    clock = Clock()
    with pytest.raises(errors.ReadinessTimeout) as info:
        readiness.wait_until([lambda: (False, "HTTP 503")], timeout=30,
                             clock=readiness.Clock(clock.now, clock.sleep))
    assert "HTTP 503" in info.value.message and info.value.exit_code == 5


def test_last_phase_reads_the_newest_line_and_ignores_noise():
    console = ('VMBINDER-PHASE {"phase": "docker", "status": "done"}\n'
               'garbage VMBINDER-PHASE {not json\n'
               '[  12.3] cloud-init: VMBINDER-PHASE {"phase": "build", "status": "started"}\n'
               'other\n')
    assert readiness.last_phase(console) == {"phase": "build", "status": "started"}
    assert readiness.last_phase("nothing here") is None


@pytest.fixture
def status_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/status?token=good" else 403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_http_probe_against_a_real_server(status_server):
    assert readiness.http_probe(status_server + "/api/status?token=good")() == (True, "HTTP 200")
    assert readiness.http_probe(status_server + "/api/status?token=bad")() == (False, "HTTP 403")


def test_http_probe_reports_a_closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ok, detail = readiness.http_probe(f"http://127.0.0.1:{port}/api/status", timeout=2)()
    assert not ok and detail.startswith("not answering")


def test_a_failed_step_names_the_command_and_shows_the_log_tail_from_its_own_line():
    failed = {"phase": "docker", "status": "failed",
              "error": "apt-get install -y --no-install-recommends docker.io exited with 100",
              "log": ["Reading package lists...", "E: Unable to locate package docker-buildx"]}
    # The guest's status service re-emits the phase and status alone, later.
    console = ("VMBINDER-PHASE " + json.dumps(failed) + "\nnoise\n"
               'VMBINDER-PHASE {"phase": "docker", "status": "failed"}\n')
    with pytest.raises(errors.BuildFailed) as info:
        readiness.console_probe(lambda: console)()
    assert info.value.message == ("the guest step 'docker' failed: apt-get install -y "
                                  "--no-install-recommends docker.io exited with 100")
    assert info.value.hint == ("last lines of /var/log/vmbinder/commands.log on the server:\n"
                               "  Reading package lists...\n"
                               "  E: Unable to locate package docker-buildx")
    assert info.value.exit_code == 6


def test_a_failed_step_from_a_guest_that_says_no_more_shows_the_console():
    console = 'boot\nVMBINDER-PHASE {"phase": "build", "status": "failed", "error": "CalledProcessError"}\n'
    with pytest.raises(errors.BuildFailed) as info:
        readiness.console_probe(lambda: console)()
    assert info.value.message == "the guest step 'build' failed: CalledProcessError"
    assert info.value.hint.startswith("see /var/log/vmbinder/ on the server; last console lines:\nboot")


def test_a_step_waiting_for_the_apt_lock_says_for_whom():
    console = ('VMBINDER-PHASE {"phase": "docker", "status": "waiting", '
               '"detail": "/var/lib/dpkg/lock-frontend held by unattended-upgr (pid 812)"}\n')
    assert readiness.console_probe(lambda: console)() == (
        False, "docker waiting: /var/lib/dpkg/lock-frontend held by unattended-upgr (pid 812)")
    console += 'VMBINDER-PHASE {"phase": "docker", "status": "started", "detail": "waited 40 s"}\n'
    assert readiness.console_probe(lambda: console)() == (False, "docker started: waited 40 s")
