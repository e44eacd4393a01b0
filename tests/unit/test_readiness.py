import http.server
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
