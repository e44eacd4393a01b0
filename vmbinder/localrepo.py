"""Serve a folder of this machine as a git repository that a local-target guest can clone.

A guest of the local target (qemu user-mode networking) reaches this machine's
loopback at 10.0.2.2. repo2docker clones with `git clone --depth 1`, which
git's "dumb" HTTP transport cannot do, so the repository is served by
`git daemon` (git://) on 127.0.0.1.

    python -m vmbinder.localrepo FOLDER -- vmbinder --cloud local launch {url}

commits FOLDER's files into a bare repository in a temporary folder, serves it,
runs the command with `{url}` replaced by git://10.0.2.2:PORT/repo.git, and
stops serving when the command ends (its exit code is this one's). A folder that
is already a git work tree is served as it is committed: its HEAD and that
commit's history only, as branch main (no other branch or tag).
`--listen ADDRESS` serves on another address of this machine, for guests that
reach it there (the URL then names ADDRESS).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from vmbinder.providers.local.qemu import HOST_FROM_GUEST, free_ports

_GIT = ["git", "-c", "user.name=vmbinder", "-c", "user.email=vmbinder@localhost.invalid",
        "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]


def bare_repository(folder: Path, dest: Path) -> Path:
    """A bare repository at dest/repo.git holding folder's files (or its commits)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    bare = Path(dest) / "repo.git"
    if (folder / ".git").exists():
        # Only the commit checked out and its history: no other branch, tag, stash
        # or unreachable object of the work tree is served.
        subprocess.run([*_GIT, "init", "-q", "--bare", str(bare)], check=True)
        subprocess.run(["git", "-C", str(bare), "fetch", "-q", "--no-tags", str(folder.resolve()),
                        "HEAD:refs/heads/main"], check=True)
        return bare
    work = Path(dest) / "work"
    shutil.copytree(folder, work)
    subprocess.run([*_GIT, "init", "-q", str(work)], check=True)
    subprocess.run([*_GIT, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*_GIT, "-C", str(work), "commit", "-q", "-m", f"{folder.name}"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


@contextlib.contextmanager
def serve(folder: Path, listen: str = "127.0.0.1", host: str | None = None) -> Iterator[str]:
    """Serve folder over git:// on `listen` (127.0.0.1); yields the URL a guest
    clones, at `host` (the local target's 10.0.2.2 for loopback, else `listen`)."""
    if host is None:
        host = HOST_FROM_GUEST if listen == "127.0.0.1" else listen
    with tempfile.TemporaryDirectory(prefix="vmbinder-repo-") as tmp:
        base = Path(tmp)
        bare_repository(folder, base)
        (port,) = free_ports(1)
        daemon = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
             f"--listen={listen}", f"--port={port}", str(base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if daemon.poll() is not None:
                    raise RuntimeError(f"git daemon exited with {daemon.returncode}")
                with socket.socket() as s:
                    if s.connect_ex((listen, port)) == 0:
                        break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"git daemon did not listen on {listen}:{port}")
            yield f"git://{host}:{port}/repo.git"
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()


def main(argv: list[str]) -> int:
    listen = "127.0.0.1"
    if len(argv) > 2 and argv[1] == "--listen":
        listen, argv = argv[2], [argv[0], *argv[3:]]
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m vmbinder.localrepo FOLDER [--listen ADDRESS] -- COMMAND... "
              "({url} is the git URL)", file=sys.stderr)
        return 2
    folder, command = Path(argv[0]), argv[2:]
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2
    with serve(folder, listen) as url:
        print(f"serving {folder} as {url}", file=sys.stderr)
        child = subprocess.Popen([part.replace("{url}", url) for part in command])
        # Ctrl-C reaches the command too: let it finish its own cleanup, then stop serving.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            return child.wait()
        finally:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
