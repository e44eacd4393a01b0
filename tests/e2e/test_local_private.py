"""End to end: a private repository. tests/gitserver.py serves a copy of
examples/local-repo over git's smart HTTP on this machine's loopback (the guest
reaches it at 10.0.2.2), answering only requests with HTTP basic
authentication. Without the token `vmbinder --cloud local launch` fails as a
build failure that says why, and keeps the server until `delete`.

The build with the token (`--git-token-file`), and the search for the token
everywhere once it is done, are in test_local_workplace.py, on the server whose
home and volumes that test follows: one launch under qemu for both. The helpers
they use are here: the served repository, the watcher of every process's
arguments in the guest during the build, and the search of the whole server
(every file but /proc, /sys and /dev, the built image as `docker save` writes
it, the journal), over SSH with the host key checked against the fingerprints
the guest reports on its status page. The search is handed what it looks for
on its standard input, so it plants it nowhere.

Needs root, qemu and the baked image (tests/e2e/conftest.py builds it when
missing). Missing parts fail, never skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_local_guest import get

pytestmark = pytest.mark.e2e

USER = "x-access-token"

#: Run in the guest as the image's user, in the background: every process's
#: arguments, sampled while the build step runs, to /tmp/vmbinder-ps.json.
PS_WATCH = """
import json, subprocess, time
seen, samples, deadline = set(), 0, time.time() + 3000
while time.time() < deadline:
    try:
        state = json.load(open("/var/lib/vmbinder/status.json"))
    except (OSError, ValueError):
        state = {}
    if state.get("phase") == "build" and state.get("status") == "started":
        out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        seen.update(out.splitlines())
        samples += 1
    elif state.get("phase") in ("service", "interfaces", "ready") or state.get("status") == "failed":
        break
    time.sleep(0.5)
json.dump({"samples": samples, "lines": sorted(seen)}, open("/tmp/vmbinder-ps.json", "w"))
"""

#: Run in the guest as root; reads {"name": text} on its standard input and says
#: where each text is: the files of / (but /proc, /sys, /dev), the environment's
#: image as `docker save` writes it, and the journal (every field of every entry).
SEARCH = """
import json, os, subprocess, sys
needles = json.load(sys.stdin)
tops = sorted("/" + n for n in os.listdir("/") if n not in ("proc", "sys", "dev"))
grep = subprocess.run(["grep", "-rsaoF", "-D", "skip", "-f", "/dev/stdin", "--", *tops],
                      input="\\n".join(needles.values()) + "\\n", capture_output=True, text=True,
                      errors="replace")
files = {k: sorted({line[:-len(v) - 1] for line in grep.stdout.splitlines()
                    if line.endswith(":" + v)}) for k, v in needles.items()}

def stream(argv):
    found, size, tail = set(), 0, b""
    longest = max(len(v) for v in needles.values())
    with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
        while True:
            chunk = proc.stdout.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            window = tail + chunk
            found |= {k for k, v in needles.items() if v.encode() in window}
            tail = window[-longest:]
    return {"bytes": size, "found": sorted(found), "exit": proc.returncode}

images = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                        capture_output=True, text=True).stdout.split()
built = [i for i in images if i.startswith("vmbinder-env:")]
print(json.dumps({"files": files, "grep_exit": grep.returncode, "images": built,
                  "image": stream(["docker", "save", *built]),
                  "journal": stream(["journalctl", "-o", "export", "--no-pager"])}))
"""


def fingerprint(key_type: str, blob: bytes) -> str:
    """An SSH key's fingerprint as `ssh-keygen -l` (and the guest's status) writes it."""
    return f"{key_type} SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ssh(port: int, key, host_keys: list[str], command: str, stdin: str | None = None,
        timeout: float = 1800) -> str:
    """command's output on the guest (its forwarded ssh port on loopback), as the
    image's user, with stdin written to it. The host key must be one of
    host_keys: the fingerprints the guest reports on its status page, which needs
    the Jupyter token (cloud-init prints the keys on the console only after the
    build; the test checks those against these once it is done)."""
    import paramiko

    class Pinned(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, offered):
            got = fingerprint(offered.get_name(), offered.asbytes())
            if got not in host_keys:
                raise paramiko.SSHException(f"host key {got} is none of the guest's {host_keys}")

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(Pinned())
    client.connect("127.0.0.1", port=port, username="debian", pkey=key, timeout=30,
                   allow_agent=False, look_for_keys=False)
    try:
        channel_in, stdout, stderr = client.exec_command(command, timeout=timeout)
        if stdin is not None:
            channel_in.write(stdin)
        channel_in.channel.shutdown_write()
        out = stdout.read().decode()
        assert stdout.channel.recv_exit_status() == 0, stderr.read().decode()
        return out
    finally:
        client.close()


def guest_status(meta: dict) -> dict | None:
    """The guest's status.json through its forwarded port 80 (--tls off), or None."""
    port, token = meta.get("vmbinder:http-port"), meta.get("vmbinder:token")
    if not (port and token):
        return None
    try:
        code, body = get(f"http://127.0.0.1:{port}/vmbinder/status.json?token={token}", timeout=5,
                         context=None)
        return json.loads(body) if code == 200 else None
    except (OSError, ValueError):
        return None


@pytest.fixture
def private_repo(tmp_path):
    """A copy of examples/local-repo with a file only its clone can have, served to
    USER and a token made for this test only."""
    from tests.gitserver import serve

    folder = tmp_path / "private-repo"
    shutil.copytree(ROOT / "examples" / "local-repo", folder)
    marker = "private-content-" + secrets.token_hex(12)
    (folder / "private.txt").write_text(marker + "\n")
    token = "vmbtest_" + secrets.token_urlsafe(30)
    with serve(folder, user=USER, token=token) as served:
        served.token, served.marker = token, marker
        yield served


def launch_argv(name: str, image: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vmbinder", "--cloud", "local", "launch", "--name", name,
            "--image", str(image), "--format", "json", "--timeout", "2400", "--tls", "off",
            *extra, url]


def delete(name: str, env: dict) -> None:
    subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", "delete", name],
                   env=env, capture_output=True, text=True, timeout=120, check=False)


def test_without_the_token_the_build_fails_says_why_and_the_server_is_kept(cli_env, baked_image, tmp_path,
                                                                           private_repo):
    """A build that fails (here: the clone, refused without the token) keeps the
    server: the launch exits 6 naming the step, the build's last lines and the
    commands to read more and remove it; `status` says it failed; `logs` reads the
    whole build log through the URL, as readable lines; `delete` removes it."""
    name = "e2e-no-token"
    env = {**cli_env, "GIT_ALLOW_PROTOCOL": "file:git:http"}

    def cli(*args):
        res = subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", *args], env=env,
                             capture_output=True, text=True, timeout=300, check=False)
        assert res.returncode == 0, f"vmbinder {' '.join(args)}: {res.stderr}"
        return res.stdout

    try:
        res = subprocess.run(launch_argv(name, baked_image, private_repo.url), env=env,
                             capture_output=True, text=True, timeout=2700, check=False)
        assert res.returncode == 6, res.stderr
        assert "error: the guest step 'build' failed:" in res.stderr
        assert "Failed to clone repository from " + private_repo.url in res.stderr, res.stderr
        assert f"could not list the refs of {private_repo.url}" in res.stderr
        assert f"vmbinder logs {name}" in res.stderr and f"remove it with: vmbinder delete {name}" \
            in res.stderr
        assert [s["name"] for s in json.loads(cli("list", "--format", "json"))] == [name]
        status = json.loads(cli("status", name, "--format", "json"))
        assert status["failed"] == "build" and status["guest"]["status"] == "failed", status
        assert status["guest"]["phase"] == "build"
        log = cli("logs", name)
        assert "Failed to clone repository from " + private_repo.url in log, log[-2000:]
        assert '{"phase"' not in log  # repo2docker's JSON lines as their text
        tail = json.loads(cli("logs", name, "-n", "3", "--format", "json"))
        assert tail["status"] == "failed" and len(tail["log"].splitlines()) == 3, tail
        cli("delete", name)
        assert json.loads(cli("list", "--format", "json")) == []
    finally:
        delete(name, env)
    assert not [r for r in private_repo.requests if r[2]], "a request carried the token"
    assert not (tmp_path / "state" / "vmbinder" / "local" / name).exists()
