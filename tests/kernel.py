"""Run code in a kernel through a printed URL, as JupyterLab does: start a kernel
with the REST API, send an execute request over the kernel's WebSocket, and
collect what it prints.  The check that an environment computes, not only
that its pages load."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from urllib.parse import urlsplit


def _api(base: str, token: str, method: str, path: str, timeout: float, context: ssl.SSLContext):
    req = urllib.request.Request(f"{base}{path}", method=method, data=b"{}" if method == "POST" else None,
                                 headers={"Authorization": f"token {token}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
        body = resp.read()
        return json.loads(body) if body else None


def _message(session: str, code: str) -> dict:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "username": "vmbinder-test", "session": session,
                   "msg_type": "execute_request", "version": "5.3",
                   "date": datetime.now(timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }


def execute(base: str, token: str, code: str, timeout: float = 180.0, *,
            context: ssl.SSLContext) -> str:
    """What `code` prints (stdout and its result), run in a new kernel of the
    server at `base` (https://host[:port], the part of a printed URL before
    /lab); the kernel is shut down afterwards. context checks the certificate,
    for the REST calls and the WebSocket alike."""
    import websocket  # websocket-client

    kernel = _api(base, token, "POST", "/api/kernels", timeout=60, context=context)
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    url = f"{scheme}://{parts.netloc}/api/kernels/{kernel['id']}/channels?token={token}"
    deadline = time.monotonic() + timeout
    try:
        ws = websocket.create_connection(
            url, timeout=30, origin=f"{parts.scheme}://{parts.netloc}",
            sslopt={"context": context})
        try:
            request = _message(uuid.uuid4().hex, code)
            ws.send(json.dumps(request))
            out, done = [], False
            while not done:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the kernel did not finish {code!r} in {timeout:.0f} s")
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
                    continue
                kind, content = msg["header"]["msg_type"], msg.get("content", {})
                if kind == "stream":
                    out.append(content.get("text", ""))
                elif kind == "execute_result":
                    out.append(content.get("data", {}).get("text/plain", "") + "\n")
                elif kind == "error":
                    raise AssertionError(f"the kernel raised {content.get('ename')}: "
                                         f"{content.get('evalue')}")
                elif kind == "status" and content.get("execution_state") == "idle":
                    done = True
            return "".join(out)
        finally:
            ws.close()
    finally:
        _api(base, token, "DELETE", f"/api/kernels/{kernel['id']}", timeout=60, context=context)


def start_cell(base: str, token: str, code: str, *, context: ssl.SSLContext) -> str:
    """Start `code` in a new kernel and leave it running, as a user who runs a long
    cell and closes the tab does: the WebSocket is closed once the kernel is busy.
    The kernel's id, for interrupt() and stop_kernel()."""
    import websocket  # websocket-client

    kernel = _api(base, token, "POST", "/api/kernels", timeout=60, context=context)
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    ws = websocket.create_connection(
        f"{scheme}://{parts.netloc}/api/kernels/{kernel['id']}/channels?token={token}",
        timeout=30, origin=f"{parts.scheme}://{parts.netloc}", sslopt={"context": context})
    try:
        request = _message(uuid.uuid4().hex, code)
        ws.send(json.dumps(request))
        while True:
            msg = json.loads(ws.recv())
            if (msg.get("parent_header", {}).get("msg_id") == request["header"]["msg_id"]
                    and msg["header"]["msg_type"] == "status"
                    and msg.get("content", {}).get("execution_state") == "busy"):
                return kernel["id"]
    finally:
        ws.close()


def kernel_state(base: str, token: str, kernel_id: str, *, context: ssl.SSLContext) -> str:
    return _api(base, token, "GET", f"/api/kernels/{kernel_id}?no_track_activity=1", timeout=60,
                context=context)["execution_state"]


def interrupt(base: str, token: str, kernel_id: str, *, context: ssl.SSLContext) -> None:
    _api(base, token, "POST", f"/api/kernels/{kernel_id}/interrupt", timeout=60, context=context)
