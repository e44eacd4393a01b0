"""Start and drive the fault proxy (faultproxy.py under mitmdump) from the host
side: the functional tests' fault_proxy fixture and bench/api_requests.py use it.
Standard library only; mitmproxy lives in .venv-tools (scripts/setup)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MITMDUMP = ROOT / ".venv-tools" / "bin" / "mitmdump"


@dataclass
class FaultProxy:
    url: str
    rules_path: Path
    log_path: Path

    def set(self, *rules: dict) -> None:
        """Replace the rules (see faultproxy.py); the counts of the old ones are forgotten."""
        tmp = self.rules_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(list(rules)))
        os.replace(tmp, self.rules_path)

    def requests(self) -> list[dict]:
        """Every request so far: method, port, path and the fault it got (or None)."""
        text = self.log_path.read_text() if self.log_path.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def count(self, method: str = "*", path: str = "", fault: str | None = "any") -> int:
        return sum(1 for r in self.requests()
                   if method in ("*", r["method"]) and re.search(path, r["path"])
                   and (fault == "any" or r["fault"] == fault))

    def forget(self) -> None:
        """Start the request log afresh."""
        self.log_path.write_text("")

    def through(self, env: dict) -> dict:
        """env with every HTTP request of a vmbinder process sent through the proxy."""
        out = {k: v for k, v in env.items() if k.lower() not in ("no_proxy", "all_proxy")}
        out.update(HTTP_PROXY=self.url, http_proxy=self.url, NO_PROXY="", no_proxy="")
        return out


@contextlib.contextmanager
def running(folder: Path, timeout: float = 60) -> Iterator[FaultProxy]:
    """mitmdump on a free loopback port with no rules, until the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = FaultProxy(f"http://127.0.0.1:{port}", folder / "faults.json", folder / "requests.jsonl")
    proxy.set()
    log = folder / "mitmdump.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(MITMDUMP), "--quiet", "--listen-host", "127.0.0.1", "--listen-port", str(port),
             "--set", f"confdir={folder / 'mitmproxy'}", "--set", "connection_strategy=lazy",
             "-s", str(Path(__file__).with_name("faultproxy.py"))],
            env={**os.environ, "VMBINDER_FAULTS": str(proxy.rules_path),
                 "VMBINDER_FAULT_LOG": str(proxy.log_path)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mitmdump did not start:\n"
                                       + log.read_text(errors="replace")[-2000:]) from None
                time.sleep(0.2)
        yield proxy
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
