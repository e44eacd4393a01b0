"""Is the environment up yet? Probes return (ok, detail); one waiter owns the
deadline and the backoff."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from vmbinder.errors import BuildFailed, ReadinessTimeout
from vmbinder.guestcontract import LAYOUT, PHASE_PREFIX

Probe = Callable[[], "tuple[bool, str]"]


@dataclass(frozen=True)
class Clock:
    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def phases(console: str):
    """The phase lines in a console tail, newest first."""
    for line in reversed(console.splitlines()):
        at = line.find(PHASE_PREFIX)
        if at < 0:
            continue
        try:
            doc = json.loads(line[at + len(PHASE_PREFIX):])
        except ValueError:
            continue
        if isinstance(doc, dict) and "phase" in doc:
            yield doc


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
        if doc.get("status") == "waiting" and doc.get("detail"):  # for the apt lock
            detail += f": {doc['detail']}"
        return doc.get("phase") == "ready", detail

    return probe


def _context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def fetch_json(url: str, *, verify: bool = True, timeout: float = 10.0) -> dict:
    """GET a JSON document (the guest's status); {} when it cannot be had."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=_context(verify)) as resp:
            doc = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def http_probe(url: str, *, verify: bool = True, timeout: float = 5.0) -> Probe:
    """OK when GET url answers 200 (Jupyter's /api/status with the token)."""
    context = _context(verify)

    def probe() -> tuple[bool, str]:
        try:
            with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
                return resp.status == 200, f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return False, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return False, f"not answering ({reason})"

    return probe


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
