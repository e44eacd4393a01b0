"""HTTP requests vmbinder sends to the cloud: per launch, and per `list` of 1 and
of 100 servers, counted on the wire by a proxy on loopback (the functional
tests' fault proxy with no faults: tests/functional/proxyctl.py), so
authentication, version discovery and anything sent twice count too.
Goals: a launch in at most 15 requests, `list` in at most 3 whatever the count.

    testbed/up && .venv/bin/python bench/api_requests.py [--servers 100] [--json]

Each command is a fresh `python -m vmbinder` process as the testbed's member, as
a user runs it, with an ssh key in its HOME. The first launch also uploads the
key and makes the security group; a launch after it finds both. The 99 extra
servers for the second `list` are made with vmbinder.workshops.up (no waiting);
the member's quotas are raised for the run and put back afterwards.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "functional"))

import proxyctl

from vmbinder.providers.openstack import OpenStackProvider
from vmbinder.workshops.file import load
from vmbinder.workshops.seats import down
from vmbinder.workshops.up import up

TESTBED = Path(os.environ.get("VMBINDER_TESTBED_DIR", ROOT / ".testbed"))
CLOUDS = TESTBED / "clouds.yaml"
SOURCE = "https://github.com/binder-examples/requirements"
PORTS = {}


def service(port: int) -> str:
    if not PORTS:
        sys.path.insert(0, str(ROOT / "testbed"))
        from configs import PORTS as known

        PORTS.update({v: k for k, v in known.items()})
    return PORTS.get(port, str(port))


def counted(proxy, env: dict, *args: str) -> dict:
    """Run `vmbinder ARGS` through the proxy; its requests, in total and per call."""
    proxy.forget()
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "vmbinder", *args], env=proxy.through(env),
                         capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        raise SystemExit(f"vmbinder {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    listed = json.loads(res.stdout) if args[:1] == ("list",) else None
    calls = collections.Counter(f"{r['method']} {service(r['port'])} {r['path']}"
                                for r in proxy.requests())
    doc = {"requests": sum(calls.values()), "seconds": round(time.monotonic() - started, 1),
           "calls": dict(sorted(calls.items()))}
    if listed is not None:
        doc["servers_listed"] = len(listed)
    return doc


def make_key(home: Path) -> None:
    """An ssh key where vmbinder looks for one: a launch uploads it as a keypair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519.pub").write_text(public + " bench@vmbinder\n")


def connect(cloud: str):
    import openstack
    from openstack import config as os_config

    region = os_config.OpenStackConfig(config_files=[str(CLOUDS)]).get_one(cloud=cloud)
    return openstack.connection.Connection(config=region)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--calls", action="store_true", help="also print each call made")
    args = parser.parse_args()
    if not CLOUDS.is_file():
        raise SystemExit(f"the testbed is not running ({CLOUDS} is missing): run testbed/up")
    admin, member = connect("testbed-admin"), connect("testbed")
    project = member.current_project_id
    extra = args.servers - 1
    admin.compute.update_quota_set(project, instances=args.servers + 5, cores=4 * (args.servers + 5),
                                   ram=4096 * (args.servers + 5))
    admin.network.update_quota(project, floating_ips=args.servers + 5, ports=2 * args.servers + 10)
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "VMBINDER_"))}
        env.update(OS_CLIENT_CONFIG_FILE=str(CLOUDS), OS_CLOUD="testbed", HOME=str(home),
                   XDG_STATE_HOME=str(home / "state"))
        make_key(home)
        path = home / "extra.yaml"
        path.write_text(f"name: reqbench\nsource: {SOURCE}\nseats: {max(extra, 1)}\n"
                        "image: debian-12\nflavor: m1.tiny\n")
        workshop = load(path)
        provider = OpenStackProvider(conn=member)
        try:
            with proxyctl.running(home / "proxy") as proxy:
                for what, name in (("first_launch", "reqbench-one"), ("launch", "reqbench-two")):
                    figures[what] = counted(proxy, env, "launch", "--no-wait", "--format", "json",
                                            "--name", name, "--image", "debian-12",
                                            "--flavor", "m1.small", SOURCE)
                counted(proxy, env, "delete", "reqbench-two")
                figures["list_1"] = counted(proxy, env, "list", "--format", "json")
                if extra:
                    up(provider, workshop, wait=False, fan_out=False, parallel=8)
                figures[f"list_{args.servers}"] = counted(proxy, env, "list", "--format", "json")
                figures["delete"] = counted(proxy, env, "delete", "reqbench-one")
        finally:
            down(provider, workshop)
            for server in member.compute.servers(name="^reqbench-(one|two)$"):
                subprocess.run([sys.executable, "-m", "vmbinder", "delete", server.id], env=env,
                               capture_output=True, timeout=300, check=False)
            for keypair in member.compute.keypairs():
                if keypair.name.startswith("vmbinder-"):
                    member.compute.delete_keypair(keypair)
            admin.compute.revert_quota_set(project)
            admin.network.delete_quota(project)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    for what, doc in figures.items():
        listed = f", {doc['servers_listed']} servers listed" if "servers_listed" in doc else ""
        print(f"{what}: {doc['requests']} requests in {doc['seconds']} s{listed}")
        if args.calls:
            for call, n in doc["calls"].items():
                print(f"    {n:3d}  {call}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
