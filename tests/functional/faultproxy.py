"""A mitmproxy addon that puts faults between vmbinder and the cloud.

mitmdump runs it as an HTTP proxy on loopback; vmbinder reaches the testbed
through it (HTTP_PROXY). The rules are a JSON list in the file named by
VMBINDER_FAULTS, read again whenever it changes. Each rule:

    {"method": "POST", "path": "/servers$", "port": 45774,    what it matches
     "body": "config_drive",                                    (a regex on the request body)
     "action": "status", "status": 503, "retry_after": 0,     answer instead of the cloud
     "json": {"badRequest": {...}},                             (the answer's body)
     "action": "reset"                                          drop the connection, unsent
     "action": "blackhole", "seconds": 30                       hold it, then drop it, unsent
     "action": "hold_response", "seconds": 30                   send it, hold the answer
     "every": 2, "times": 3}                                    1 in `every` matches, at most `times`

The first matching rule that fires is used. Every request is logged to
VMBINDER_FAULT_LOG as one JSON line (method, port, path, the fault or null),
which is also how the tests count requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading

from mitmproxy import http


class Faults:
    def __init__(self) -> None:
        self.rules_path = os.environ["VMBINDER_FAULTS"]
        self.log = open(os.environ["VMBINDER_FAULT_LOG"], "a", buffering=1)  # noqa: SIM115
        self.lock = threading.Lock()
        self.mtime: int | None = None
        self.rules: list[dict] = []
        self.matched: dict[int, int] = {}
        self.fired: dict[int, int] = {}

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.rules_path).st_mtime_ns
        except FileNotFoundError:
            self.rules, self.mtime = [], None
            return
        if mtime != self.mtime:
            with open(self.rules_path) as fh:
                self.rules = json.load(fh)
            self.mtime, self.matched, self.fired = mtime, {}, {}

    def _rule(self, flow: http.HTTPFlow) -> dict | None:
        with self.lock:
            self._reload()
            for i, rule in enumerate(self.rules):
                if rule.get("method", "*") not in ("*", flow.request.method):
                    continue
                if rule.get("port") not in (None, flow.request.port):
                    continue
                if not re.search(rule.get("path", ""), flow.request.path.split("?")[0]):
                    continue
                if not re.search(rule.get("body", ""), flow.request.get_text(strict=False) or ""):
                    continue
                self.matched[i] = self.matched.get(i, 0) + 1
                if self.matched[i] % rule.get("every", 1):
                    continue
                if self.fired.get(i, 0) >= rule.get("times", 1 << 30):
                    continue
                self.fired[i] = self.fired.get(i, 0) + 1
                return rule
        return None

    async def request(self, flow: http.HTTPFlow) -> None:
        rule = self._rule(flow)
        action = rule["action"] if rule else None
        self.log.write(json.dumps({"method": flow.request.method, "port": flow.request.port,
                                   "path": flow.request.path.split("?")[0],
                                   "fault": action}) + "\n")
        if rule is None:
            return
        flow.metadata["fault"] = rule
        if action == "status":
            headers = {"Content-Type": "application/json"}
            if rule.get("retry_after") is not None:
                headers["Retry-After"] = str(rule["retry_after"])
            body = json.dumps(rule.get("json") or {"message": f"injected HTTP {rule['status']}"})
            flow.response = http.Response.make(rule["status"], body, headers)
        elif action == "reset":
            flow.kill()
        elif action == "blackhole":
            await asyncio.sleep(rule.get("seconds", 3600))
            flow.kill()

    async def response(self, flow: http.HTTPFlow) -> None:
        rule = flow.metadata.get("fault")
        if rule and rule["action"] == "hold_response":
            await asyncio.sleep(rule.get("seconds", 3600))


addons = [Faults()]
