#!/usr/bin/env python3
"""Boot a guest image through the local provider and check it runs our user-data.

Run by hand (needs qemu and a built image; not collected by pytest):

    .venv/bin/python tests/guest/check_local_boot.py [--image PATH|NAME] [--reboot]

It launches a server whose user-data prints a random marker on the serial
console and serves it over plain HTTP on the guest's ports 80 and 443 (two
enabled systemd units, so they come back after a reboot). It waits for the
marker on the console, checks the forwarded ssh port answers with an SSH
banner, the forwarded http and https ports return the marker, and the token
is on no process's command line; optionally it resets the guest over QMP and
checks the same ports answer again; then it deletes the server and checks
nothing is left. Exit status 0 means every
check passed. The state folder is a temporary one unless --state-dir is given.
"""

from __future__ import annotations

import argparse
import glob
import os
import secrets
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from vmbinder.providers.base import Ledger
from vmbinder.providers.local import LocalProvider
from vmbinder.providers.local.qemu import is_our_qemu
from vmbinder.sources import resolve_source
from vmbinder.spec import CloudChoice, make_spec

BUILDER_OUTPUT = "/var/tmp/vmbinder-images/*/image.json"


def user_data(marker: str, token: str) -> str:
    return f"""#cloud-config
write_files:
  - path: /etc/vmbinder-check
    permissions: "0600"
    content: "{token}\\n"
  - path: /srv/check/index.html
    content: "{marker}\\n"
  - path: /etc/systemd/system/check-web@.service
    content: |
      [Unit]
      After=network-online.target
      [Service]
      ExecStart=/usr/bin/python3 -m http.server %i --directory /srv/check
      [Install]
      WantedBy=multi-user.target
runcmd:
  # a baked image's Caddy owns 80 and 443: this check serves them itself
  - [sh, -c, "systemctl disable --now caddy.service 2>/dev/null || true"]
  - [systemctl, enable, --now, check-web@80.service, check-web@443.service]
  - [sh, -c, "echo {marker} | tee /dev/console /dev/ttyS0"]
"""


def http_body(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return r.read().decode(errors="replace").strip()
    except (OSError, ValueError):
        return None


def ssh_banner(port: int, timeout: float = 5.0) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).decode(errors="replace").strip() or None
    except OSError:
        return None


def wait_for(what: str, check, timeout: float, start: float, interval: float = 2.0, seen=None):
    while True:
        got = check()
        if got:
            print(f"  {what}: after {time.monotonic() - start:.0f} s", flush=True)
            return got
        if time.monotonic() - start > timeout:
            last = f" (last seen: {seen()})" if seen else ""
            raise SystemExit(f"FAIL: no {what} within {timeout:.0f} s{last}")
        time.sleep(interval)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", help="image name, image folder or qcow2 file "
                    f"[default: the first {BUILDER_OUTPUT}]")
    ap.add_argument("--flavor", default=None, help="e.g. 2c2g")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per boot [900]")
    ap.add_argument("--reboot", action="store_true", help="also reset the guest and wait again")
    ap.add_argument("--state-dir", help="state folder [default: a temporary one]")
    ap.add_argument("--keep", action="store_true", help="leave the server running at the end")
    args = ap.parse_args()

    image = args.image
    if image is None:
        found = sorted(glob.glob(BUILDER_OUTPUT))
        if not found:
            print(f"SKIP: no --image and nothing matches {BUILDER_OUTPUT}")
            return 2
        image = str(Path(found[0]).parent)
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="vmbinder-boot-check-"))
    provider = LocalProvider(state_dir=state)
    name = f"boot-check-{secrets.token_hex(2)}"
    spec = make_spec(resolve_source("https://github.com/binder-examples/requirements"),
                     name=name, cloud=CloudChoice(image=image, flavor=args.flavor), tls="internal")
    marker = f"VMBINDER-BOOT-CHECK-{secrets.token_hex(4)}"
    ledger = Ledger()

    print(f"image {image}\nstate {state / name}", flush=True)
    start = time.monotonic()
    resolved = provider.prepare(spec, ledger)
    print(f"resolved: image {resolved.image_name}, flavor {resolved.flavor_name}", flush=True)
    server = provider.create(spec, resolved, user_data(marker, spec.token), ledger)
    server = provider.wait(server, resolved, 60, ledger)
    ssh_port = int(server.meta("ssh-port"))
    print(f"{server.name}: {server.state} ({server.cloud_status}) at {server.address}, "
          f"ports ssh {ssh_port} http {server.meta('http-port')} "
          f"https {server.meta('https-port')}", flush=True)
    pid = int((state / name / "qemu.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    if spec.token.encode() in cmdline:
        raise SystemExit("FAIL: the token is on qemu's command line")
    print("  token not on qemu's command line: ok", flush=True)

    def console() -> str:
        return provider.console_log(server)

    failed = False
    try:
        wait_for("kernel on the console", lambda: "Linux version" in console(), args.timeout, start)
        wait_for(f"marker {marker}", lambda: marker in console(), args.timeout, start)
        banner = wait_for("SSH banner on the forwarded port", lambda: ssh_banner(ssh_port),
                          args.timeout, start)
        print(f"  {banner}")
        ports = {"http": int(server.meta("http-port")), "https": int(server.meta("https-port"))}

        def web_ok():
            return all(http_body(port) == marker for port in ports.values())

        def web_seen():
            return {k: (http_body(port) or "")[:80] for k, port in ports.items()}

        wait_for("the marker over the forwarded http and https ports", web_ok, args.timeout, start,
                 seen=web_seen)
        if spec.token in provider.console_log(server):
            raise SystemExit("FAIL: console_log did not redact the token")
        if args.reboot:
            boots = console().count("Linux version")
            again = time.monotonic()
            provider.reboot(server)
            print("reset over QMP", flush=True)
            wait_for("kernel booted again", lambda: console().count("Linux version") > boots,
                     args.timeout, again)
            wait_for("SSH banner after the reset",
                     lambda: console().count("Linux version") > boots and ssh_banner(ssh_port),
                     args.timeout, again)
            wait_for("the marker on the same ports after the reset", web_ok, args.timeout, again,
                     seen=web_seen)
        print("console tail:\n  " + "\n  ".join(provider.console_log(server, lines=8).splitlines()))
    except SystemExit as exc:
        failed = True
        print(exc, file=sys.stderr)
        print("console tail:\n" + provider.console_log(server, lines=40), file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept: XDG_STATE_HOME-style folder {state}; remove with kill {pid}; "
                  f"rm -rf {state / name}")
        else:
            removed = provider.delete(provider.get(name))
            print("removed: " + ", ".join(f"{r.kind} {r.id}" for r in removed))
            time.sleep(0.5)
            left = is_our_qemu(pid, state / name) or (state / name).exists()
            print(f"left behind: {'yes' if left else 'nothing'}")
            failed = failed or left
            if not args.state_dir:
                os.rmdir(state)
    print(f"{'FAIL' if failed else 'PASS'} in {time.monotonic() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
