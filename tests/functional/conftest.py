"""Functional tests: the real `vmbinder` command against the OpenStack testbed.

They run as the testbed's non-admin member (cloud `testbed`) and check through
the admin API. A missing testbed is a failure, never a skip: start it with
testbed/up (scripts/test does).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTBED = Path(os.environ.get("VMBINDER_TESTBED_DIR", ROOT / ".testbed")).resolve()
CLOUDS = TESTBED / "clouds.yaml"
MEMBER, ADMIN = "testbed", "testbed-admin"
IMAGE, FLAVOR = "debian-12", "m1.small"
SOURCE = "https://github.com/binder-examples/requirements"


def pytest_collection_modifyitems(items):
    for item in items:
        if "functional" in str(item.fspath):
            item.add_marker(pytest.mark.functional)


def connect(cloud: str):
    import openstack
    from openstack import config as os_config

    region = os_config.OpenStackConfig(config_files=[str(CLOUDS)]).get_one(cloud=cloud)
    return openstack.connection.Connection(config=region)


@dataclass
class Testbed:
    admin: object
    project_id: str
    user_id: str

    def owned(self) -> list[tuple[str, str, str]]:
        """Everything vmbinder-owned in the member's project, as (kind, id, name)."""
        a = self.admin
        found = [("server", s.id, s.name)
                 for s in a.compute.servers(all_projects=True, project_id=self.project_id,
                                            tags="vmbinder")]
        found += [("floating IP", ip.id, ip.floating_ip_address)
                  for ip in a.network.ips(project_id=self.project_id)
                  if (ip.description or "").startswith("vmbinder:")]
        found += [("port", p.id, p.name)
                  for p in a.network.ports(project_id=self.project_id)
                  if (p.description or "").startswith("vmbinder:")]
        found += [("security group", g.id, g.name)
                  for g in a.network.security_groups(project_id=self.project_id)
                  if g.name.startswith("vmbinder")]
        found += [("keypair", k.name, k.name)
                  for k in a.compute.keypairs(user_id=self.user_id)
                  if k.name.startswith("vmbinder-")]
        found += [("image", i.id, i.name) for i in self.images()]
        found += [("application credential", c.id, c.name)
                  for c in a.identity.application_credentials(user=self.user_id)
                  if c.name.startswith("vmbinder-")]
        return found

    def images(self, name: str | None = None) -> list:
        """The member project's images uploaded by vmbinder (all of them, or one upload's),
        and its snapshots."""
        return [i for i in self.admin.image.images(owner=self.project_id)
                if ((i.properties or {}).get("vmbinder_image") and
                    name in (None, i.properties["vmbinder_image"]))
                or (name is None and (i.properties or {}).get("vmbinder_snapshot_of"))]

    def remove(self, leftovers) -> None:
        a = self.admin
        for kind, rid, _ in leftovers:
            server = a.compute.find_server(rid, all_projects=True) if kind == "server" else None
            if server is not None:
                a.compute.delete_server(server)
                a.compute.wait_for_delete(server, wait=120)
        for kind, rid, _ in leftovers:
            if kind == "floating IP":
                a.network.delete_ip(rid, ignore_missing=True)
            elif kind == "port":
                a.network.delete_port(rid, ignore_missing=True)
            elif kind == "security group":
                a.network.delete_security_group(rid, ignore_missing=True)
            elif kind == "keypair":
                a.compute.delete_keypair(rid, user_id=self.user_id, ignore_missing=True)
            elif kind == "image":
                a.image.delete_image(rid, ignore_missing=True)
            elif kind == "application credential":
                a.identity.delete_application_credential(self.user_id, rid, ignore_missing=True)

    def server(self, name: str):
        hits = [s for s in self.admin.compute.servers(all_projects=True, project_id=self.project_id,
                                                      tags="vmbinder") if s.name == name]
        assert len(hits) == 1, f"expected one server named {name}, found {len(hits)}"
        return self.admin.compute.get_server(hits[0].id)


@pytest.fixture(scope="session")
def testbed() -> Testbed:
    if not CLOUDS.is_file():
        pytest.fail(f"the OpenStack testbed is not running ({CLOUDS} is missing): run testbed/up",
                    pytrace=False)
    try:
        admin = connect(ADMIN)
        member = connect(MEMBER)
        project_id = member.current_project_id
        user_id = member.current_user_id
    except Exception as exc:  # noqa: BLE001 - any failure here means no testbed
        pytest.fail(f"the OpenStack testbed does not answer ({exc}): run testbed/up", pytrace=False)
    return Testbed(admin, project_id, user_id)


@pytest.fixture(autouse=True)
def nothing_left_behind(testbed):
    before = set(testbed.owned())
    assert not before, f"vmbinder resources left by an earlier run: {sorted(before)}"
    yield
    left = testbed.owned()
    if left:
        testbed.remove(left)
    assert left == [], f"vmbinder left these behind: {left}"


@pytest.fixture
def home(tmp_path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def ssh_key(home) -> str:
    """An ed25519 key in the test HOME, where vmbinder looks by default."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_ed25519.pub").write_text(public + " test@vmbinder\n")
    return public


@pytest.fixture
def cli_env(home) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "VMBINDER_"))}
    env.update(OS_CLIENT_CONFIG_FILE=str(CLOUDS), OS_CLOUD=MEMBER, HOME=str(home),
               XDG_STATE_HOME=str(home / "state"), COLUMNS="200")
    return env


@pytest.fixture
def vmb(cli_env):
    """Run `python -m vmbinder ARGS` in a fresh process: every call is a new shell."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vmbinder", *args], env=cli_env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    return run


@pytest.fixture
def name(request) -> str:
    short = request.node.name.split("[")[0].replace("test_", "")[:20].replace("_", "-").strip("-")
    return f"ft-{short}-{secrets.token_hex(2)}"


@pytest.fixture
def quota(testbed):
    """Set the member project's quotas as the admin; reverted afterwards."""
    a = testbed.admin
    changed = {"compute": False, "network": False, "volume": False}

    def set_quota(*, compute: dict | None = None, network: dict | None = None,
                  volume: dict | None = None):
        if compute:
            a.compute.update_quota_set(testbed.project_id, **compute)
            changed["compute"] = True
        if network:
            a.network.update_quota(testbed.project_id, **network)
            changed["network"] = True
        if volume:
            a.block_storage.update_quota_set(testbed.project_id, **volume)
            changed["volume"] = True

    yield set_quota
    if changed["compute"]:
        a.compute.revert_quota_set(testbed.project_id)
    if changed["network"]:
        a.network.delete_quota(testbed.project_id)
    if changed["volume"]:
        a.block_storage.revert_quota_set(testbed.project_id)



@pytest.fixture
def fault_proxy(tmp_path):
    """mitmdump with faultproxy.py between vmbinder and the testbed (see proxyctl)."""
    from . import proxyctl

    if not proxyctl.MITMDUMP.exists():
        pytest.fail(f"mitmproxy is not installed ({proxyctl.MITMDUMP} is missing): "
                    "run scripts/setup", pytrace=False)
    with proxyctl.running(tmp_path / "proxy") as proxy:
        yield proxy
