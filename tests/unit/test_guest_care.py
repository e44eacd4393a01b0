"""The guest's care: what counts as Jupyter activity (a running cell, an open
terminal or a connected client is activity now; else the newest last_activity),
when an idle server or one whose lifetime ended puts itself away, and how: with
its credential, Keystone's token and Nova's calls on its own server only (against
a stand-in cloud on loopback), or a power-off from inside without one. The
lifetime's action happens once, and not again when vmbinder reap already did it."""

from __future__ import annotations

import http.server
import importlib
import json
import threading
import types

import pytest

from vmbinder import launchdoc
from vmbinder.sources import Source
from vmbinder.spec import make_spec

guest = importlib.import_module("vmbinder.cloud_init.vmbinder_guest")
SERVER_ID = "5f0c2a44-7d8e-4b4e-9b53-0a8f1f7e2c11"
T0 = 1_800_000_000.0  # a fixed now, seconds since the epoch


class Stand:
    """Jupyter's API and a cloud's Keystone and Nova, on one loopback port."""

    def __init__(self):
        self.status = {"last_activity": "2027-01-15T08:00:00.000000Z", "connections": 0}
        self.kernels, self.terminals = [], []
        self.calls, self.metadata = [], {}
        self.refuse_token = False
        stand = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self, code, body=None, headers=()):
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith("/api/"):
                    return self.answer(200, {"/api/status": stand.status, "/api/kernels": stand.kernels,
                                             "/api/terminals": stand.terminals}[path])
                stand.calls.append(("GET", path, self.headers.get("X-Auth-Token")))
                return self.answer(200, {"server": {"id": SERVER_ID, "metadata": stand.metadata}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/identity/v3/auth/tokens":
                    stand.calls.append(("TOKEN", body["auth"]["identity"]))
                    if stand.refuse_token:
                        return self.answer(401, {"error": "no"})
                    catalog = [{"type": "compute", "endpoints": [
                        {"interface": "internal", "region": "R1", "url": "http://internal.invalid"},
                        {"interface": "public", "region": "R1", "url": f"{stand.url}/compute/v2.1/"}]}]
                    return self.answer(201, {"token": {"catalog": catalog}},
                                       [("X-Subject-Token", "tok-1")])
                stand.calls.append(("POST", self.path, body, self.headers.get("X-Auth-Token")))
                return self.answer(202)

            def do_PUT(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand.calls.append(("PUT", self.path, body))
                stand.metadata.update(body["meta"])
                return self.answer(200, body)

            def do_DELETE(self):
                stand.calls.append(("DELETE", self.path))
                return self.answer(204)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stand(monkeypatch, tmp_path):
    s = Stand()
    monkeypatch.setattr(guest, "ROOT", str(tmp_path))
    monkeypatch.setenv("VMBINDER_GUEST_JUPYTER", s.url.removeprefix("http://"))
    (tmp_path / "var/lib/cloud/data").mkdir(parents=True)
    (tmp_path / "var/lib/cloud/data/instance-id").write_text(SERVER_ID + "\n")
    ran = []
    monkeypatch.setattr(guest, "run", lambda doc, argv, **kw: ran.append(argv))
    s.ran = ran
    yield s
    s.server.shutdown()


def doc_for(stand, *, idle_s=None, lifetime_s=None, at_end=None, idle_action=None,
            credential=True):
    spec = make_spec(Source("https://github.com/o/r", "git"), name="demo", idle_s=idle_s,
                     lifetime_s=lifetime_s, at_end=at_end, idle_action=idle_action)
    cred = {"auth_url": f"{stand.url}/identity", "user_id": "u1", "name": "vmbinder-demo-ab12cd",
            "secret": "s3cret", "region": "R1", "interface": "public"}
    return launchdoc.document(spec, "203.0.113.9", credential=cred if credential else None)


def test_the_guests_looks_are_not_activity_themselves(stand, monkeypatch):
    asked = []
    real = guest.urllib.request.urlopen
    monkeypatch.setattr(guest.urllib.request, "urlopen",
                        lambda url, timeout: asked.append(url) or real(url, timeout=timeout))
    guest.activity(doc_for(stand, idle_s=60), T0)
    assert len(asked) == 3 and all("no_track_activity=1" in url for url in asked), asked


def test_activity_is_the_newest_time_jupyter_reports_or_now_while_in_use(stand):
    doc = doc_for(stand, idle_s=3600)
    stand.kernels = [{"id": "k1", "execution_state": "idle", "connections": 0,
                      "last_activity": "2027-01-15T08:30:00Z"}]
    seen = guest.activity(doc, T0)
    assert seen == {"last": guest.utc("2027-01-15T08:30:00Z"), "busy": 0, "terminals": 0,
                    "connections": 0}
    stand.kernels[0]["execution_state"] = "busy"  # a cell running, no browser attached
    assert guest.activity(doc, T0)["last"] == T0
    stand.kernels[0]["execution_state"] = "idle"
    stand.terminals = [{"name": "1", "last_activity": "2027-01-15T07:00:00Z"}]
    assert guest.activity(doc, T0)["last"] == T0
    stand.terminals, stand.status["connections"] = [], 1
    assert guest.activity(doc, T0)["last"] == T0


def test_idle_is_due_only_when_ready_and_past_the_idle_time(stand):
    doc = doc_for(stand, idle_s=3600)
    seen = {"last": T0 - 4000, "busy": 0, "terminals": 0, "connections": 0}
    assert guest.due(doc, T0, T0 - 5000, seen) is None  # not ready yet (building)
    guest.write_state(doc, ready=True)
    assert guest.due(doc, T0, T0 - 5000, seen) == ("shelve", "idle for 67 min", False)
    assert guest.due(doc, T0, T0 - 100, seen) is None  # watching only since the last boot
    guest.write_state(doc, ready_at=T0 - 200)
    assert guest.due(doc, T0, T0 - 5000, seen) is None  # and since the environment was ready
    assert guest.due(doc, T0, T0 - 5000, {**seen, "last": T0 - 60}) is None
    assert guest.due(doc, T0, T0 - 5000, None) is None  # Jupyter does not answer


def test_an_ended_lifetime_is_due_even_while_busy_and_only_once(stand):
    doc = doc_for(stand, lifetime_s=3600, at_end="delete")
    ends = guest.utc(doc["care"]["expires"])
    assert guest.due(doc, ends - 1, ends - 3600, None) is None
    assert guest.due(doc, ends, ends - 3600, None) == (
        "delete", f"its lifetime ended at {doc['care']['expires']}", True)
    guest.write_state(doc, care_ended="delete")
    assert guest.due(doc, ends + 60, ends - 3600, None) is None


def test_shelving_itself_asks_keystone_then_nova_for_its_own_server_only(stand):
    doc = doc_for(stand, idle_s=600)
    assert guest.put_away(doc, "shelve", "idle for 11 min", False) is True
    token, *calls = stand.calls
    assert token == ("TOKEN", {"methods": ["application_credential"], "application_credential": {
        "name": "vmbinder-demo-ab12cd", "user": {"id": "u1"}, "secret": "s3cret"}})
    server = f"/compute/v2.1/servers/{SERVER_ID}"
    assert calls == [("GET", server, "tok-1"), ("POST", server + "/action", {"shelve": None}, "tok-1")]
    assert stand.ran == []  # no power-off from inside: the cloud does it


def test_a_lifetime_end_is_recorded_on_the_server_and_not_done_twice(stand):
    doc = doc_for(stand, lifetime_s=60, at_end="shelve")
    assert guest.put_away(doc, "shelve", "its lifetime ended", True) is True
    server = f"/compute/v2.1/servers/{SERVER_ID}"
    assert stand.calls[-2:] == [  # recorded first: Nova takes no metadata once shelved
        ("PUT", server + "/metadata/vmbinder:ended", {"meta": {"vmbinder:ended": "shelve"}}),
        ("POST", server + "/action", {"shelve": None}, "tok-1")]
    assert guest.current_state(doc)["care_ended"] == "shelve"
    # A server vmbinder reap put away already: the guest does nothing again.
    guest.write_state(doc, care_ended=None)
    stand.calls.clear()
    assert guest.put_away(doc, "shelve", "its lifetime ended", True) is False
    assert [c[0] for c in stand.calls] == ["TOKEN", "GET"]


def test_a_refused_action_takes_the_record_back(stand, monkeypatch):
    doc = doc_for(stand, lifetime_s=60, at_end="stop")
    real = guest.cloud_call
    monkeypatch.setattr(guest, "cloud_call", lambda d, method, url, body=None, token=None: (
        (409, {}, None) if url.endswith("/action") else real(d, method, url, body, token)))
    with pytest.raises(RuntimeError, match=r"Nova refused to stop the server \(HTTP 409\)"):
        guest.put_away(doc, "stop", "its lifetime ended", True)
    assert stand.calls[-1] == ("DELETE", f"/compute/v2.1/servers/{SERVER_ID}/metadata/vmbinder:ended")
    assert not guest.current_state(doc).get("care_ended")


def test_delete_at_the_end_deletes_the_server_and_records_nothing_on_it(stand):
    doc = doc_for(stand, lifetime_s=60, at_end="delete")
    guest.put_away(doc, "delete", "its lifetime ended", True)
    assert stand.calls[-1] == ("DELETE", f"/compute/v2.1/servers/{SERVER_ID}")


def test_without_a_credential_stop_is_a_power_off_from_inside(stand):
    doc = doc_for(stand, idle_s=600, idle_action="stop", credential=False)
    assert guest.put_away(doc, "stop", "idle for 11 min", False) is True
    assert stand.ran == [["systemctl", "poweroff"]] and stand.calls == []


def test_a_refused_credential_is_an_error_the_loop_reports(stand):
    stand.refuse_token = True
    doc = doc_for(stand, idle_s=600)
    with pytest.raises(RuntimeError, match=r"Keystone refused the server's credential \(HTTP 401\)"):
        guest.put_away(doc, "shelve", "idle", False)


def test_the_loop_reports_what_it_saw_and_acts(stand, monkeypatch):
    doc = doc_for(stand, idle_s=60, idle_action="stop", credential=False)
    guest.write_state(doc, ready=True)
    stand.status["last_activity"] = "2020-01-01T00:00:00Z"
    clock = types.SimpleNamespace(now=T0)
    monkeypatch.setattr(guest, "load_again", lambda d: d)
    monkeypatch.setattr(guest.time, "time", lambda: clock.now)

    def sleep(seconds):
        clock.now += seconds
        if stand.ran:
            raise SystemExit  # acted: end the loop here
    monkeypatch.setattr(guest.time, "sleep", sleep)
    with pytest.raises(SystemExit):
        guest.care_loop(doc)
    assert stand.ran == [["systemctl", "poweroff"]]
    seen = guest.current_state(doc)["care_seen"]
    assert seen["watching_since"] == T0 and seen["checked"] >= T0 + 60
