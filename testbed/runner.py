"""Start, run and wait for processes within one deadline.

Every long-running process is started in its own session (setsid), so its PID
is also its process-group ID, and recorded under pids/ for `down`.  One-shot
setup commands run in the caller's process group and are killed on abort.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import tenacity
from configs import HOST, Layout

from testbed import Failure, write_record

LOG_TAIL = 40


class NotReady(Exception):
    pass


class Aborted(Exception):
    pass


def tail(path, lines=LOG_TAIL):
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - 64 * 1024, 0))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def port_free(port):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def tcp_open(port):
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


class Runner:
    """Processes of one `up`, its deadline and its abort flag."""

    def __init__(self, state, password, timeout, real=False):
        self.lay = Layout(Path(state), password, real=real)
        self.timeout = timeout
        self.t0 = time.monotonic()
        self.deadline = self.t0 + timeout
        self.procs = {}
        self.oneshots = set()
        self.abort = threading.Event()
        self.lock = threading.Lock()
        self.seq = 0

    # ---------------------------------------------------------------- output

    def step(self, message):
        print(f"[up {time.monotonic() - self.t0:6.1f}s] {message}",
              file=sys.stderr, flush=True)

    def remaining(self):
        return max(self.deadline - time.monotonic(), 0.0)

    # ------------------------------------------------------------- processes

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["PATH"] = f"{self.lay.venv / 'bin'}:{env.get('PATH', '')}:/usr/sbin:/sbin"
        env["PYTHONUNBUFFERED"] = "1"
        if self.lay.real:
            import realconf

            # The sudo shim first (privsep and Neutron's root_helper call sudo).
            env["PATH"] = f"{self.lay.run / 'bin'}:{env['PATH']}"
            env.update({k: str(v) for k, v in realconf.ovs_env(self.lay).items()})
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(self, name, argv, env=None):
        """Start a long-running service in its own session and record it, with
        how it was started (run/NAME.start.json, for `testbed.py restart`)."""
        log = self.lay.logs / f"{name}.log"
        argv, env = [str(a) for a in argv], env or self.env()
        how = self.lay.run / f"{name}.start.json"
        how.write_text(json.dumps({"argv": argv, "env": env, "cwd": str(self.lay.run)}))
        how.chmod(0o600)
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fh,
                stderr=subprocess.STDOUT, env=env,
                cwd=self.lay.run, start_new_session=True)
        with self.lock:
            self.seq += 1
            write_record(self.lay.pids, self.seq, name, proc.pid)
            self.procs[name] = proc

    def run(self, service, argv, env=None):
        """Run a one-shot setup command; its output goes to <service>-setup.log."""
        if self.abort.is_set():
            raise Aborted()
        log = self.lay.logs / f"{service}-setup.log"
        argv = [str(a) for a in argv]
        started = time.monotonic()
        with open(log, "ab") as fh:
            fh.write(f"+ [{started - self.t0:.1f}s] {' '.join(argv)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, env=env or self.env(),
                                    cwd=self.lay.run)
            self.oneshots.add(proc)
            try:
                rc = proc.wait(timeout=self.remaining())
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise Failure(service, f"{Path(argv[0]).name} did not finish within the "
                                       f"{self.timeout:.0f} s limit", log) from None
            finally:
                self.oneshots.discard(proc)
            fh.write(f"= exit {rc} after {time.monotonic() - started:.1f} s\n".encode())
        if self.abort.is_set():
            raise Aborted()
        if rc:
            raise Failure(service, f"{Path(argv[0]).name} {' '.join(argv[1:])[-80:]} "
                                   f"exited with status {rc}", log)

    def check_alive(self, *names):
        for name in names:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise Failure(name, f"exited with status {proc.returncode}",
                              self.lay.logs / f"{name}.log")

    def wait(self, service, what, probe, watch=()):
        """Poll probe() until it stops raising NotReady, within the deadline."""
        watch = tuple(watch) or (service,)

        def attempt():
            if self.abort.is_set():
                raise Aborted()
            self.check_alive(*watch)
            probe()

        try:
            for attempt_ctx in tenacity.Retrying(
                    retry=tenacity.retry_if_exception_type(NotReady),
                    wait=tenacity.wait_fixed(0.5),
                    stop=tenacity.stop_after_delay(self.remaining()),
                    reraise=True):
                with attempt_ctx:
                    attempt()
        except NotReady as exc:
            raise Failure(service, f"{what} not ready within {self.timeout:.0f} s "
                                   f"({exc})", self.lay.logs / f"{service}.log") from None

    def wait_http(self, name):
        url = self.lay.url(name, "/")

        def probe():
            try:
                urllib.request.urlopen(url, timeout=5).close()
            except urllib.error.HTTPError:
                pass  # any HTTP answer means the API is serving
            except (urllib.error.URLError, OSError) as exc:
                raise NotReady(str(exc)) from None

        self.wait(name, f"API at {url}", probe)
        self.step(f"{name} answers on {url}")
