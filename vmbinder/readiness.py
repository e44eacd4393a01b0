"""Is the environment up yet? Probes return (ok, detail); one waiter owns the
deadline and the backoff."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from vmbinder import https
from vmbinder.errors import BuildFailed, ReadinessTimeout
from vmbinder.guestcontract import LAYOUT, PHASE_PREFIX, console_reports

Probe = Callable[[], "tuple[bool, str]"]


@dataclass(frozen=True)
class Clock:
    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def phases(console: str):
    """The phase lines in a console tail, newest first."""
    return (doc for doc in console_reports(console, PHASE_PREFIX) if "phase" in doc)


def last_phase(console: str) -> dict | None:
    """The newest phase line in a console tail (the guest re-emits them)."""
    return next(phases(console), None)


def failed_step(console: str, doc: dict) -> BuildFailed:
    """The failure a failed phase line reports: the step, what failed (the command
    and its exit code, or the exception) and the last lines of the guest's
    commands log. The guest re-emits only the phase and status, so the details
    come from the newest failed line of that step that has them."""
    full = next((d for d in phases(console) if d.get("phase") == doc["phase"]
                 and d.get("status") == "failed" and d.get("error")), doc)
    log = full.get("log") if isinstance(full.get("log"), list) else []
    if log:
        hint = f"last lines of {LAYOUT['log_dir']}/commands.log on the server:\n" + "\n".join(
            f"  {line}" for line in log)
    else:  # a guest that says no more (an older vmbinder's)
        hint = (f"see {LAYOUT['log_dir']}/ on the server; last console lines:\n"
                + "\n".join(console.splitlines()[-20:]))
    return BuildFailed(f"the guest step {doc['phase']!r} failed: "
                       f"{full.get('error') or 'see the log'}", hint)


def console_probe(read_console: Callable[[], str]) -> Probe:
    """Reports the guest's phase; raises BuildFailed when a step failed."""

    def probe() -> tuple[bool, str]:
        console = read_console()
        doc = last_phase(console)
        if doc is None:
            return False, "booting"
        if doc.get("status") == "failed":
            raise failed_step(console, doc)
        detail = f"{doc['phase']} {doc.get('status', '')}".strip()
        if doc.get("detail"):  # which certificate it tries, whom it waits for (an apt lock)
            detail += f": {doc['detail']}"
        return doc.get("phase") == "ready", detail

    return probe


class _Connection(http.client.HTTPSConnection):
    """HTTPS to address, the certificate checked for host."""

    def __init__(self, host: str, port: int, address: str, context: ssl.SSLContext, timeout: float):
        super().__init__(host, port, timeout=timeout, context=context)
        self.address, self.tls = address, context

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def fetch(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 10.0,
          limit: int = 1 << 20) -> tuple[int | None, bytes, str]:
    """GET url: (HTTP status, body, reason); the status is None when nothing answered.

    https URLs are checked with context (default: the system's roots). A name under
    a wildcard-DNS service (203-0-113-5.sslip.io) is reached at the address it
    names, which is what its DNS answers, so no resolver is needed (and none that
    refuses private answers gets in the way)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    address = https.address_in_name(host) or host
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn = _Connection(host, parts.port or 443, address,
                           context or ssl.create_default_context(), timeout)
    else:
        conn = http.client.HTTPConnection(address, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", target, headers={"Host": parts.netloc})
        resp = conn.getresponse()
        return resp.status, resp.read(limit), resp.reason
    except ssl.SSLCertVerificationError as exc:
        return None, b"", f"certificate refused: {exc.verify_message}"
    except (OSError, http.client.HTTPException) as exc:
        return None, b"", str(getattr(exc, "reason", None) or exc)
    finally:
        conn.close()


def json_object(body: bytes) -> dict:
    """body as a JSON object; {} when it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def fetch_json(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 10.0) -> dict:
    """GET a JSON document (the guest's status); {} when it cannot be had."""
    status, body, _ = fetch(url, context=context, timeout=timeout)
    return json_object(body) if status == 200 else {}


def http_probe(url: str, *, context: ssl.SSLContext | None = None, timeout: float = 5.0,
               expect_key: str | None = None) -> Probe:
    """OK when GET url answers 200 and, with expect_key, a JSON object holding that
    key (Jupyter's /api/status holds "started": an empty 200 from a proxy is not
    Jupyter)."""

    def probe() -> tuple[bool, str]:
        return judge(*fetch(url, context=context, timeout=timeout), expect_key=expect_key)

    return probe


def judge(status: int | None, body: bytes, reason: str, *,
          expect_key: str | None = None) -> tuple[bool, str]:
    """An answer (as fetch gives it) as a probe's result: see http_probe."""
    if status is None:
        return False, f"not answering ({reason})"
    if status != 200:
        return False, f"HTTP {status}"
    if expect_key and expect_key not in json_object(body):
        return False, f"HTTP 200, but not Jupyter's answer (no {expect_key!r})"
    return True, f"HTTP {status}"


def wait_until(
    probes: list[Probe],
    *,
    timeout: float,
    on_progress: Callable[[str], None] = lambda detail: None,
    clock: Clock = Clock(),
    interval: float = 2.0,
    max_interval: float = 15.0,
) -> str:
    """Poll until every probe is OK; back off between rounds; ReadinessTimeout at the deadline.

    Probes run in order and a round stops at the first one not OK, so a later
    probe (the HTTPS check) is only tried once the earlier ones (the guest's
    own phase report) pass."""
    deadline = clock.now() + timeout
    delay = interval
    while True:
        ok = True
        for probe in probes:
            ok, last = probe()
            if not ok:
                break
        on_progress(last)
        if ok:
            return last
        if clock.now() + delay > deadline:
            raise ReadinessTimeout(
                f"the environment did not answer within {timeout:.0f} s (last: {last})",
                "it may still be building: check with vmbinder status NAME, or launch "
                "again with a longer --timeout",
            )
        clock.sleep(delay)
        delay = min(delay * 1.5, max_interval)
