#!/usr/bin/env python3
"""Start, stop and inspect the vmbinder OpenStack testbed.

    testbed.py up [--real]   start every service fresh, bootstrap, wait until READY
    testbed.py down      stop exactly the processes that `up` started
    testbed.py status    list the recorded processes and their memory
    testbed.py restart SERVICE [--pause S]
                         stop one running service (nova-api, neutron, ...) and
                         start it again as it was, after S seconds down

Internal subcommands, run by `up` with the testbed's venv:

    testbed.py serve NAME MODULE:APP PORT   one WSGI application under gunicorn
    testbed.py neutron-db                   create Neutron's schema and stamp it

This module imports only the standard library at the top, so that `down` works
with any Python 3 even when the venv is gone.
"""

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PASSWORD = "testbed-pass"
# Stopped last, after the services that use them.
BACKENDS = ("mariadb", "rabbitmq", "epmd")


def state_dir():
    env = os.environ.get("VMBINDER_TESTBED_DIR")
    path = Path(env) if env else HERE.parent / ".testbed"
    return path.resolve()


def password():
    return os.environ.get("VMBINDER_TESTBED_PASSWORD", DEFAULT_PASSWORD)


class Failure(Exception):
    """A part of the testbed did not come up; names it and the log to read."""

    def __init__(self, service, message, log=None):
        super().__init__(f"{service}: {message}")
        self.service = service
        self.log = log


# --------------------------------------------------------------------------
# Process records: one file per process group that `up` started.


@dataclass(frozen=True)
class Record:
    name: str
    pid: int          # also the process-group id: each service runs under setsid
    starttime: str    # from /proc/PID/stat, guards against a reused PID
    path: Path


def proc_starttime(pid):
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def write_record(pids_dir, seq, name, pid):
    pids_dir.mkdir(parents=True, exist_ok=True)
    path = pids_dir / f"{seq:02d}-{name}.pid"
    path.write_text(f"{pid} {proc_starttime(pid) or '?'}\n")


def read_records(pids_dir):
    records = []
    for path in sorted(pids_dir.glob("*.pid")):
        try:
            pid, start = path.read_text().split()
            records.append(Record(path.stem.split("-", 1)[1], int(pid), start, path))
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    return records


def _stat_fields(pid):
    """Fields 3.. of /proc/PID/stat (state, ppid, pgrp, ...), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def group_members(pgid):
    """PIDs of the live (non-zombie) processes in process group `pgid`."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def group_alive(record):
    """True while the process group that `up` started has a live process."""
    start = proc_starttime(record.pid)
    if start is not None and start != record.starttime:
        # The PID was reused: Linux frees a PID only once no process group
        # uses it, so our group is gone.
        return False
    return bool(group_members(record.pid))


def _signal_groups(records, sig):
    for rec in records:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rec.pid, sig)


def _wait_gone(records, timeout):
    deadline = time.monotonic() + timeout
    alive = [r for r in records if group_alive(r)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [r for r in alive if group_alive(r)]
    return alive


def stop_groups(records, grace, log=print):
    """TERM each process group, KILL what is left after `grace` seconds."""
    alive = [r for r in records if group_alive(r)]
    if not alive:
        return
    t0 = time.monotonic()
    _signal_groups(alive, signal.SIGTERM)
    left = _wait_gone(alive, grace)
    log(f"stopped {', '.join(r.name for r in alive if r not in left)} "
        f"({time.monotonic() - t0:.1f} s)")
    if left:
        log(f"killing {', '.join(r.name for r in left)} after {grace:.0f} s")
        _signal_groups(left, signal.SIGKILL)
        left = _wait_gone(left, 10)
    for rec in left:
        log(f"WARNING: process group {rec.pid} ({rec.name}) survived SIGKILL")


def down(state, grace=15.0, log=print):
    """Stop what `up` recorded, services first and their backends last; in
    real mode also the guests, the agents' helpers, the namespaces and the
    devices of the data plane."""
    pids_dir = state / "pids"
    records = read_records(pids_dir)
    (state / "clouds.yaml").unlink(missing_ok=True)
    real = mode(state) == "real"
    if real:
        import dataplane
        from configs import Layout

        lay = Layout(state, password(), real=True)
        interfaces = dataplane.ovs_interfaces(lay)
    services = [r for r in records if r.name not in BACKENDS]
    backends = [r for r in records if r.name in BACKENDS]
    stop_groups(list(reversed(services)), grace, log)
    if real:
        dataplane.kill_strays(lay, log, groups={r.pid for r in backends})
        dataplane.remove(lay, interfaces, log)
    for name in BACKENDS:
        stop_groups([r for r in backends if r.name == name], grace, log)
    for rec in records:
        rec.path.unlink(missing_ok=True)
    return len(records)


def mode(state):
    """"real" or "fake": how the testbed in `state` was last started."""
    try:
        return (state / "run" / "mode").read_text().strip()
    except OSError:
        return "fake"


@contextlib.contextmanager
def state_lock(state):
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "testbed.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(f"testbed: another up/down is running on {state}")
        yield


# --------------------------------------------------------------------------
# Subcommands


def cmd_down(args):
    state = state_dir()
    t0 = time.monotonic()
    with state_lock(state):
        n = down(state, grace=args.grace, log=lambda m: print(f"[down] {m}", file=sys.stderr))
    if n:
        print(f"testbed down ({n} process groups) in {time.monotonic() - t0:.1f} s")
    else:
        print("testbed: nothing recorded as running")
    return 0


def cmd_up(args):
    from start import Starter  # needs the venv

    state = state_dir()
    with state_lock(state):
        starter = Starter(state, password(), timeout=args.timeout, debug=args.debug,
                          real=args.real)
        return starter.up()


def cmd_restart(args):
    """Stop one recorded service and start it again as `up` started it (its
    run/NAME.start.json), keeping its record; wait until its port answers."""
    import socket
    import subprocess

    state = state_dir()
    with state_lock(state):
        records = [r for r in read_records(state / "pids") if r.name == args.service]
        if not records or not group_alive(records[0]):
            sys.exit(f"testbed: {args.service} is not running (testbed.py status lists what is)")
        rec = records[0]
        how = json.loads((state / "run" / f"{rec.name}.start.json").read_text())
        argv, env, cwd = how["argv"], how["env"], how["cwd"]
        port = int(argv[-1]) if argv[-1].isdigit() else None
        t0 = time.monotonic()
        stop_groups([rec], grace=15.0, log=lambda m: print(f"[restart] {m}", file=sys.stderr))
        time.sleep(args.pause)
        log = state / "logs" / f"{rec.name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh,
                                    stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    start_new_session=True)
        rec.path.write_text(f"{proc.pid} {proc_starttime(proc.pid) or '?'}\n")
        deadline = time.monotonic() + args.timeout
        while port and time.monotonic() < deadline:
            if proc.poll() is not None:
                sys.exit(f"testbed: {rec.name} exited with {proc.returncode}; see {log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.2)
        else:
            if port:
                sys.exit(f"testbed: {rec.name} did not answer on {port} in {args.timeout:.0f} s")
    print(f"testbed: {rec.name} restarted in {time.monotonic() - t0:.1f} s")
    return 0


def cmd_status(args):
    state = state_dir()
    records = read_records(state / "pids")
    if not records:
        print("testbed: not running")
        return 1
    rows = [(rec.name, rec.pid, group_members(rec.pid) if group_alive(rec) else [])
            for rec in records]
    if mode(state) == "real":
        # Guests (qemu), privsep helpers, dnsmasq and haproxy run outside the groups.
        import dataplane
        from configs import Layout

        rows.append(("guests, helpers", "", dataplane.stray_processes(
            Layout(state, password(), real=True), {r.pid for r in records})))
    total_rss = total_pss = 0
    print(f"{'service':16} {'pgid':>8} {'procs':>5} {'RSS MiB':>8} {'PSS MiB':>8}")
    for name, pgid, members in rows:
        mem = [_memory(pid) for pid in members]
        rss, pss = sum(m[0] for m in mem), sum(m[1] for m in mem)
        total_rss += rss
        total_pss += pss
        count = len(members) or ("DEAD" if pgid else 0)
        print(f"{name:16} {pgid:>8} {count:>5} {rss / 2**20:>8.0f} {pss / 2**20:>8.0f}")
    print(f"{'total':16} {'':>8} {'':>5} {total_rss / 2**20:>8.0f} {total_pss / 2**20:>8.0f}")
    ready = (state / "clouds.yaml").exists()
    print(f"clouds.yaml: {state / 'clouds.yaml'}" if ready else "not READY")
    return 0 if ready and all(group_alive(r) for r in records) else 1


def _memory(pid):
    """(RSS, PSS) of one process in bytes, from /proc."""
    rss = pss = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def cmd_serve(args):
    """Run one WSGI application under gunicorn, configured in code.

    Some services (Neutron) hand sys.argv to oslo.config, so gunicorn's own
    command line must not reach them.
    """
    import importlib

    from gunicorn.app.base import BaseApplication

    name, target, port = args.name, args.app, args.port
    # Services that read their configuration files from the command line
    # (Cinder) get them from TESTBED_APP_ARGS.
    import shlex

    sys.argv = [name, *shlex.split(os.environ.get("TESTBED_APP_ARGS", ""))]

    class Application(BaseApplication):
        def load_config(self):
            settings = {
                "bind": f"127.0.0.1:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": 4,
                "timeout": 300,
                "graceful_timeout": 5,
                # gunicorn closes an idle keep-alive connection after 2 s by
                # default, racing clients that reuse it: a reset under load.
                "keepalive": 75,
                # Nova asks Neutron for the ports of every listed server in one
                # query string: 100 servers pass gunicorn's default 4094 bytes.
                # Deployments behind uwsgi or Apache take far longer lines.
                "limit_request_line": 0,
                "proc_name": f"testbed-{name}",
                "accesslog": "-",
                "errorlog": "-",
                # gunicorn 27 opens a control socket at one shared default
                # path: several servers would clash.
                "control_socket_disable": True,
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self):
            module, attr = target.split(":")
            return getattr(importlib.import_module(module), attr)

    Application().run()
    return 0


def cmd_neutron_db(args):
    """Create Neutron's schema from its models and stamp it at heads.

    Replaying Neutron's migrations is slow (and impossible on SQLite); this is
    what Neutron's own functional tests do.
    """
    import configparser

    import sqlalchemy
    from neutron.db.migration import cli
    from neutron.db.migration.models import head

    conf = configparser.RawConfigParser()
    conf.read(args.config_file)
    engine = sqlalchemy.create_engine(conf.get("database", "connection"))
    head.get_metadata().create_all(engine)
    engine.dispose()
    sys.argv = ["neutron-db-manage"]
    for conf in args.config_file:
        sys.argv += ["--config-file", conf]
    sys.argv += ["stamp", "heads"]
    cli.main()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="testbed", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the testbed fresh and wait until READY")
    p.add_argument("--timeout", type=float,
                   default=float(os.environ.get("VMBINDER_TESTBED_TIMEOUT", 360)),
                   help="seconds until READY before giving up (default 360)")
    p.add_argument("--debug", action="store_true",
                   default=bool(os.environ.get("VMBINDER_TESTBED_DEBUG")),
                   help="debug logging in every service")
    p.add_argument("--real", action="store_true",
                   help="real compute: guests boot under libvirt (qemu, TCG) on a "
                        "Neutron data plane with Open vSwitch (needs root)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the processes that up started")
    p.add_argument("--grace", type=float, default=15.0,
                   help="seconds between TERM and KILL (default 15)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="recorded processes and their RSS")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("restart", help="stop one service and start it again as it was")
    p.add_argument("service")
    p.add_argument("--pause", type=float, default=0.0,
                   help="seconds it stays down (default 0)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait until it answers again (default 120)")
    p.set_defaults(func=cmd_restart)

    p = sub.add_parser("serve")
    p.add_argument("name")
    p.add_argument("app")
    p.add_argument("port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("neutron-db")
    p.add_argument("--config-file", action="append", default=[])
    p.set_defaults(func=cmd_neutron_db)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
