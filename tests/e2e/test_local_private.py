"""End to end: a private repository. tests/gitserver.py serves a copy of
examples/local-repo over git's smart HTTP on this machine's loopback (the guest
reaches it at 10.0.2.2), answering only requests with HTTP basic
authentication; `vmbinder --cloud local launch --git-token-file FILE` builds
it, and a kernel runs code through the printed URL and reads a file of the
private repository. Then the token is searched for everywhere: on the whole
server (over SSH, its host key checked against the fingerprints the guest
reports on its status page, and those against the keys cloud-init prints:
every file but /proc, /sys and /dev, the built image as `docker save` writes
it, the journal), in every process's arguments on the server while it built
and on this machine while it launched, in the console, vmbinder's logs and the
server's metadata. The search is handed the token on its standard input, so it
plants it nowhere. Every search also looks for things that must be found (the
Jupyter token in the launch document, a file of the repository in the image),
so a search that reads nothing cannot pass. Without the token the launch fails
as a build failure that says why.

Needs root, qemu and the baked image (tests/e2e/conftest.py builds it when
missing). Missing parts fail, never skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import ROOT
from .test_local_guest import get, ssh_key

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


def test_a_private_repository_builds_and_its_token_is_nowhere(cli_env, baked_image, tmp_path,
                                                               private_repo):
    from tests.kernel import execute

    token = private_repo.token
    name = "e2e-private"
    env = {**cli_env, "GIT_ALLOW_PROTOCOL": "file:git:http"}  # this machine asks the remote too
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    pkey = ssh_key(tmp_path / "home")
    state = tmp_path / "state" / "vmbinder"
    folder = state / "local" / name
    host_ps: list[str] = []
    watcher: dict = {}

    def start_watcher(port: int) -> None:
        try:
            ssh(port, pkey, watcher["host_keys"], "setsid nohup python3 -c " + shlex.quote(PS_WATCH)
                + " >/tmp/vmbinder-ps.log 2>&1 </dev/null &", timeout=120)
            watcher["started"] = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - tried again on the next round
            watcher["error"] = repr(exc)
            watcher.pop("thread", None)

    proc = subprocess.Popen(launch_argv(name, baked_image, private_repo.url,
                                        "--git-token-file", str(token_file)),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 2700
        while proc.poll() is None and time.monotonic() < deadline:
            host_ps += subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True,
                                      check=True).stdout.splitlines()
            if "started" not in watcher and "thread" not in watcher and (folder / "server.json").exists():
                meta = json.loads((folder / "server.json").read_text())["metadata"]
                status = guest_status(meta)
                # Before the build: the watcher must see it from its start.
                if status and status.get("host_keys") and status.get("phase") in (
                        "trust", "mirrors", "proxy", "tls", "docker", "fence", "base-images", "repo2docker"):
                    watcher["host_keys"] = status["host_keys"]
                    watcher["thread"] = threading.Thread(
                        target=start_watcher, args=(int(meta["vmbinder:ssh-port"]),))
                    watcher["thread"].start()
            time.sleep(1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        assert proc.returncode == 0, err
        assert "started" in watcher, f"the ps watcher never started in the guest: {watcher}"
        doc = json.loads(out)
        jupyter_token = doc["urls"]["lab"].rsplit("token=", 1)[1]
        for key, url in doc["urls"].items():
            code, _ = get(url, context=None)
            assert code == 200, f"{key}: {url} answered {code}"
        base = doc["urls"]["lab"].split("/lab?")[0]
        # The environment computes, and what it computes on is the private repository.
        assert execute(base, jupyter_token, "print(6 * 7)", context=None).strip() == "42"
        assert execute(base, jupyter_token, "print(open('/home/jovyan/private.txt').read())",
                       context=None).strip() == private_repo.marker
        # This machine resolved the commit with the token, and the guest cloned with it.
        head = subprocess.run(["git", "ls-remote", private_repo.here, "HEAD"], capture_output=True,
                              text=True, check=False, env={**env, "GIT_TERMINAL_PROMPT": "0"})
        assert head.returncode != 0, "the test repository answers without the token"
        assert doc["commit"] and f"at commit {doc['commit']}" in err, err
        posts = [r for r in private_repo.requests if r[0] == "POST" and r[2]]
        assert len(posts) >= 3, private_repo.requests  # ls-refs here, ls-refs and fetch there

        console = (folder / "console.log").read_text(errors="replace")
        port = int(json.loads((folder / "server.json").read_text())["metadata"]["vmbinder:ssh-port"])
        # The keys the status page reported are the ones cloud-init printed.
        block = console.split("-----BEGIN SSH HOST KEY KEYS-----")[-1].split(
            "-----END SSH HOST KEY KEYS-----")[0]
        printed = [fingerprint(line.split()[0], base64.b64decode(line.split()[1]))
                   for line in block.splitlines() if line.startswith("ssh-ed25519 ")]
        assert printed and set(printed) <= set(watcher["host_keys"]), (printed, watcher["host_keys"])
        keys = watcher["host_keys"]

        # Every process's arguments on the server while it built.
        deadline = time.monotonic() + 120
        while True:
            found = ssh(port, pkey, keys, "cat /tmp/vmbinder-ps.json 2>/dev/null || true")
            if found.strip() or time.monotonic() > deadline:
                break
            time.sleep(5)
        ps = json.loads(found)
        assert ps["samples"] >= 5, ps["samples"]
        assert [line for line in ps["lines"] if "repo2docker" in line], "the build was never seen"
        assert not [line for line in ps["lines"] if token in line]

        # The launch document keeps everything but the git token.
        launch = json.loads(ssh(port, pkey, keys, "sudo cat /etc/vmbinder/launch.json"))
        assert launch["git_credential"] is None and launch["repo"] == private_repo.url
        assert ssh(port, pkey, keys, "sudo stat -c %a /etc/vmbinder/launch.json").strip() == "600"

        # The whole server: files, the image, the journal.
        needles = {"git": token, "jupyter": jupyter_token, "marker": private_repo.marker}
        result = json.loads(ssh(port, pkey, keys, "sudo python3 -c " + shlex.quote(SEARCH),
                                stdin=json.dumps(needles)))
        assert "/etc/vmbinder/launch.json" in result["files"]["jupyter"], result["files"]
        assert [p for p in result["files"]["marker"] if p.startswith("/var/lib/docker/")], result["files"]
        assert result["files"]["git"] == [], result["files"]["git"]
        assert len(result["images"]) == 1 and result["image"]["exit"] == 0, result
        assert result["image"]["bytes"] > 10_000_000 and "marker" in result["image"]["found"], result
        assert "git" not in result["image"]["found"]
        assert result["journal"]["bytes"] > 100_000 and result["journal"]["exit"] == 0, result
        assert "git" not in result["journal"]["found"]

        # This machine: what the launch printed, its processes, the console, vmbinder's
        # logs, the server's metadata.
        assert token not in out + err
        assert len(host_ps) > 100, "ps was hardly sampled here"
        assert not [line for line in host_ps if token in line]
        assert token not in console
        logs = list((state / "logs").glob("*.log"))
        assert logs and not [p for p in logs if token in p.read_text(errors="replace")]
        assert token not in (folder / "server.json").read_text()
        # The NoCloud seed (the local target's config drive) keeps the user-data as
        # it was sent, in the server's folder, which only its user can read.
        assert token.encode() in (folder / "seed.iso").read_bytes()
        assert folder.stat().st_mode & 0o777 == 0o700
    finally:
        delete(name, env)
    assert not folder.exists()


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
