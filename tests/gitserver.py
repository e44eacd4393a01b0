"""A private git repository for tests: git's smart HTTP protocol (`git
http-backend`, the CGI program of Debian's git package) behind a small HTTP
server on loopback that answers only requests carrying HTTP basic
authentication with one user name and token; any other gets 401, as a forge
answers for a private repository.

    with serve(ROOT / "examples" / "local-repo", user="x-access-token", token=TOKEN) as repo:
        repo.url       # what a local-target guest clones: http://10.0.2.2:PORT/repo.git
        repo.here      # the same repository from this machine: http://127.0.0.1:PORT/repo.git
        repo.requests  # (method, path, authorised) of every request, in order

The folder is committed into a bare repository in a temporary folder, as
vmbinder.localrepo.serve does for git://.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from vmbinder.localrepo import bare_repository
from vmbinder.providers.local.qemu import HOST_FROM_GUEST

#: Debian's git package has it here; `git --exec-path` names the folder elsewhere.
BACKEND = "git-http-backend"


def backend() -> str:
    exec_path = subprocess.run(["git", "--exec-path"], capture_output=True, text=True,
                               check=True).stdout.strip()
    path = Path(exec_path) / BACKEND
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install git (Debian's git package has it)")
    return str(path)


@dataclass
class Served:
    url: str
    here: str
    requests: list[tuple[str, str, bool]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        srv = self.server
        given = self.headers.get("Authorization", "")
        authorised = hmac.compare_digest(given.encode(), srv.expected.encode())
        path, _, query = self.path.partition("?")
        srv.served.requests.append((self.command, path, authorised))
        if not authorised:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="private repository"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self._body()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": srv.root,
               "GIT_HTTP_EXPORT_ALL": "1", "GATEWAY_INTERFACE": "CGI/1.1",
               "SERVER_PROTOCOL": "HTTP/1.0", "REQUEST_METHOD": self.command,
               "PATH_INFO": unquote(path), "QUERY_STRING": query, "REMOTE_USER": srv.user,
               "REMOTE_ADDR": self.client_address[0], "CONTENT_LENGTH": str(len(body)),
               "CONTENT_TYPE": self.headers.get("Content-Type", "")}
        for header in ("Content-Encoding", "Git-Protocol"):
            if header in self.headers:
                env["HTTP_" + header.upper().replace("-", "_")] = self.headers[header]
        done = subprocess.run([srv.backend], input=body, env=env, capture_output=True,
                              timeout=120, check=False)
        out = done.stdout
        cut = min((i for i in (out.find(b"\r\n\r\n"), out.find(b"\n\n")) if i >= 0), default=-1)
        if cut < 0:
            self.send_error(500, f"git http-backend exited with {done.returncode}")
            return
        head, payload = out[:cut].decode("latin-1"), out[cut:].lstrip(b"\r\n")
        headers = [line.split(":", 1) for line in head.splitlines() if ":" in line]
        status = next((v.strip() for k, v in headers if k.lower() == "status"), "200 OK")
        self.send_response(int(status.split()[0]))
        for key, value in headers:
            if key.lower() not in ("status", "content-length"):
                self.send_header(key, value.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, fmt, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: str, *, root: str, user: str, token: str, served: Served):
        super().__init__((listen, 0), _Handler)
        self.root, self.user, self.served = root, user, served
        self.expected = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()
        self.backend = backend()


@contextlib.contextmanager
def serve(folder: Path, *, user: str, token: str, listen: str = "127.0.0.1",
          host: str | None = None) -> Iterator[Served]:
    """Serve folder over smart HTTP on `listen` (127.0.0.1), to user and token only;
    the URL a guest clones names `host` (the local target's 10.0.2.2 for loopback)."""
    if host is None:
        host = HOST_FROM_GUEST if listen == "127.0.0.1" else listen
    with tempfile.TemporaryDirectory(prefix="vmbinder-private-") as tmp:
        bare_repository(folder, Path(tmp))
        served = Served(url="", here="")
        server = _Server(listen, root=tmp, user=user, token=token, served=served)
        port = server.server_address[1]
        served.url = f"http://{host}:{port}/repo.git"
        served.here = f"http://{listen}:{port}/repo.git"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield served
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
