"""What the end-to-end guest test needs: the baked image (with the container
base image inside it), a test repository served over git:// from this
machine's loopback, and a CLI environment with its own state folder.

The image is built once and kept in VMBINDER_E2E_IMAGES (default
~/.cache/vmbinder/e2e), keyed by the hash of everything that goes into it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path(os.environ.get("VMBINDER_E2E_IMAGES", Path.home() / ".cache" / "vmbinder" / "e2e"))
#: The guest reaches this machine's loopback at this address (qemu user networking).
HOST_FROM_GUEST = "10.0.2.2"
DOCKERFILE = """\
FROM vmbinder/base:bookworm
ARG NB_USER=jovyan
ARG NB_UID=1000
USER root
COPY --chown=1000:1000 . /home/jovyan/
USER 1000
WORKDIR /home/jovyan
"""


def _inputs_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted([ROOT / "vmbinder" / "guestimage.py", *(ROOT / "guest").rglob("*")]):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def baked_image() -> Path:
    given = os.environ.get("VMBINDER_E2E_IMAGE")
    if given:  # an image folder built beforehand
        assert (Path(given) / "image.json").exists(), f"VMBINDER_E2E_IMAGE={given} has no image.json"
        return Path(given)
    assert os.geteuid() == 0, "the end-to-end test builds a guest image: run it as root"
    for tool in ("qemu-system-x86_64", "qemu-img"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/setup"
    output = IMAGES / f"debian-12-baked-{_inputs_hash()}"
    if not (output / "image.json").exists():
        shutil.rmtree(output, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "vmbinder", "image", "build", "--baked",
                        "--base-container", "--output", str(output)], check=True, timeout=3600)
    return output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory) -> str:
    """A repository whose Dockerfile starts FROM the baked base image, over git://."""
    base = tmp_path_factory.mktemp("git")
    work = base / "work"
    work.mkdir()
    (work / "Dockerfile").write_text(DOCKERFILE)
    (work / "index.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n')
    git = ["git", "-c", "user.name=vmbinder", "-c", "user.email=test@vmbinder.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "test repository"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(base / "repo.git")], check=True)
    port = _free_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
         "--listen=127.0.0.1", f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"git://{HOST_FROM_GUEST}:{port}/repo.git"
    daemon.terminate()
    daemon.wait(timeout=10)


@pytest.fixture
def cli_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "VMBINDER_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"), COLUMNS="200")
    (tmp_path / "home").mkdir()
    return env
