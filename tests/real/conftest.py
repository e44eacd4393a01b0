"""Real compute: `vmbinder` against the testbed started with `testbed/up --real`,
whose Nova boots guests under libvirt (qemu, TCG) on a Neutron data plane.

The whole group runs inside "the internet", the network namespace that holds
the external network's gateway (scripts/test-real runs pytest there with
testbed/inet): from there the public API endpoints and the floating IPs
answer, and nothing else does, so no test can send a packet off this machine.
A run outside that namespace fails before anything is sent.

The baked image is built beforehand, outside the namespace (it needs the
package mirrors): scripts/test-real does it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import image_folder
from tests.functional.conftest import ADMIN, CLOUDS, MEMBER, ROOT, TESTBED, Testbed, connect

NETNS = "vmbinder-inet"
#: Where the testbed's public endpoints, and so "the internet"'s own services, are.
INET_ADDRESS = "203.0.113.1"
FLAVOR = "c2.small"
#: The userspace datapath of the testbed's OVS leaves virtio-net's checksums
#: unfinished, and its conntrack then drops TCP (a property of this test data
#: plane, so only the test's copy of the image gets it).
TEST_DATAPLANE_ARGS = "virtio_net.csum=0 virtio_net.gso=0"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/real/" in str(item.fspath):
            item.add_marker(pytest.mark.real)


def inside_the_internet() -> str | None:
    """None when this process runs in NETNS, else why not."""
    try:
        ours = os.stat("/proc/self/ns/net").st_ino
        theirs = os.stat(f"/run/netns/{NETNS}").st_ino
    except FileNotFoundError:
        return f"network namespace {NETNS} does not exist: start the testbed with testbed/up --real"
    if ours != theirs:
        return (f"these tests run inside network namespace {NETNS}, where the floating IPs "
                f"answer: run them with scripts/test-real (or testbed/inet .venv/bin/python -m "
                f"pytest tests/real)")
    return None


@pytest.fixture(scope="session", autouse=True)
def real_testbed() -> Testbed:
    """First of all: the namespace, then the testbed's mode, then its APIs."""
    problem = inside_the_internet()
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        mode = (TESTBED / "run" / "mode").read_text().strip()
    except OSError:
        mode = "down"
    if mode != "real" or not CLOUDS.is_file():
        pytest.fail(f"the testbed does not run real compute (mode: {mode}): run "
                    f"testbed/down && testbed/up --real", pytrace=False)
    admin, member = connect(ADMIN), connect(MEMBER)
    return Testbed(admin, member.current_project_id, member.current_user_id)


def say(config, text: str) -> None:
    """Print past pytest's capture: the figures show in every run's output."""
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\n[real] {text}", flush=True)


class Phases:
    """Seconds of each phase, printed as the test goes."""

    def __init__(self, config):
        self.config = config
        self.t0 = self.last = time.monotonic()
        self.times: dict[str, float] = {}

    def __call__(self, name: str) -> float:
        now = time.monotonic()
        took = self.times[name] = now - self.last
        self.last = now
        self.note(f"{name}: {took:.0f} s (total {now - self.t0:.0f} s)")
        return took

    def note(self, text: str) -> None:
        say(self.config, text)


@pytest.fixture
def phase(pytestconfig) -> Phases:
    return Phases(pytestconfig)


@pytest.fixture(scope="session")
def baked_image() -> Path:
    folder = image_folder()
    if not (folder / "image.json").exists():
        pytest.fail(f"the baked image {folder} is missing: scripts/test-real builds it (outside "
                    f"the namespace: python -m tests.e2e.conftest)", pytrace=False)
    return folder


def vmbinder(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmbinder", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def cli_environment(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "VMBINDER_"))}
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"), COLUMNS="200",
               OS_CLIENT_CONFIG_FILE=str(CLOUDS), OS_CLOUD=MEMBER)
    return env


@pytest.fixture(scope="session")
def uploaded_image(real_testbed, baked_image, tmp_path_factory, pytestconfig):
    """The baked image in Glance, uploaded by the member with `vmbinder image upload`."""
    name = f"real-e2e-{secrets.token_hex(3)}"
    env = cli_environment(tmp_path_factory.mktemp("upload-home"))
    t0 = time.monotonic()
    res = vmbinder(env, "image", "upload", str(baked_image), "--name", name, "--format", "json")
    assert res.returncode == 0, res.stderr
    say(pytestconfig, f"vmbinder image upload: {time.monotonic() - t0:.0f} s")
    member = connect(MEMBER)
    disk = member.image.find_image(name, ignore_missing=False)
    member.image.update_image(disk, os_command_line=f"{disk.os_command_line} {TEST_DATAPLANE_ARGS}")
    yield name
    for image in real_testbed.images(name):
        real_testbed.admin.image.delete_image(image, ignore_missing=True)


@pytest.fixture(scope="session")
def repo_url(real_testbed) -> str:
    """examples/local-repo over git://, served from "the internet" where guests reach it."""
    from vmbinder.localrepo import serve

    with serve(ROOT / "examples" / "local-repo", listen=INET_ADDRESS) as url:
        yield url


#: The line the failing repository's build prints before it fails.
FAILS_ON_PURPOSE = "this build fails on purpose"


@pytest.fixture
def failing_repo_url(real_testbed, tmp_path) -> str:
    """examples/local-repo with a last Dockerfile step that prints FAILS_ON_PURPOSE
    and exits 3, over git:// from "the internet" as repo_url serves its original."""
    from vmbinder.localrepo import serve

    folder = tmp_path / "failing-repo"
    shutil.copytree(ROOT / "examples" / "local-repo", folder)
    with (folder / "Dockerfile").open("a") as dockerfile:
        dockerfile.write(f'RUN echo "{FAILS_ON_PURPOSE}" && exit 3\n')
    with serve(folder, listen=INET_ADDRESS) as url:
        yield url


@pytest.fixture(scope="session")
def acme_ca(real_testbed, tmp_path_factory):
    """pebble in "the internet", validating http-01 on port 80 of the address it
    is asked to certify: a floating IP through its router's NAT, or an address
    on the provider network directly, as Let's Encrypt would from outside."""
    from tests.pebble import pebble

    with pebble(tmp_path_factory.mktemp("pebble"), listen=INET_ADDRESS, seen_as=INET_ADDRESS,
                http_port=80, tls_port=443) as ca:
        yield ca


def stack_memory() -> str:
    """`testbed.py status`'s total line: the RSS of the services, guests and helpers."""
    out = subprocess.run([sys.executable, str(ROOT / "testbed" / "testbed.py"), "status"],
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "VMBINDER_TESTBED_DIR": str(TESTBED)})
    lines = [line for line in out.stdout.splitlines() if line.startswith(("total", "guests"))]
    return "; ".join(" ".join(line.split()) for line in lines)


def owned_but_the_image(testbed: Testbed, image_name: str) -> list:
    """What vmbinder owns in the member's project, the test's uploaded image
    aside, and any server port left there (a server's port outlives it only
    by mistake)."""
    base = {i.id for i in testbed.images(image_name)}
    found = [item for item in testbed.owned() if not (item[0] == "image" and item[1] in base)]
    found += [("port", p.id, p.device_id) for p in testbed.admin.network.ports(
        project_id=testbed.project_id) if (p.device_owner or "").startswith("compute:")]
    return found


def only_the_keypair_is_left(testbed: Testbed, image_name: str) -> None:
    """After delete or workshop down: nothing of the servers is left; the
    keypair vmbinder uploaded once for this SSH key is kept for later launches
    (as on any cloud), and removed here."""
    left = owned_but_the_image(testbed, image_name)
    assert [kind for kind, _, _ in left] == ["keypair"], left
    testbed.admin.compute.delete_keypair(left[0][1], user_id=testbed.user_id)
