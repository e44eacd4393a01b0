"""End to end: a private repository, and its home as a place to work. On the
local target, one server: a copy of examples/local-repo that
tests/gitserver.py serves only with a token (git's smart HTTP, HTTP basic
authentication) is launched with `--git-token-file`, a new work volume
(`--volume 1`) and a data volume (`--data`, made from a folder with `vmbinder
volumes create --from-dir`).

The private repository: the environment builds, and a kernel runs code
through the printed URL and reads a file of the private repository. Then the
token is searched for everywhere: on the whole server (over SSH, its host key
checked against the fingerprints the guest reports on its status page, and
those against the keys cloud-init prints: every file but /proc, /sys and /dev,
the work and data volumes included, the built image as `docker save` writes
it, the journal), in every process's arguments on the server while it built
and on this machine while it launched, in the console, vmbinder's logs and the
server's metadata. Every search also looks for things that must be found (the
Jupyter token in the launch document, a file of the repository in the image),
so a search that reads nothing cannot pass. This runs before the stop and start
below, after which cloud-init reads the seed, token included, again (see the
README's *Private repositories*).

The home: a notebook of the repository edited and a file added through
Jupyter's contents API survive a restart of the environment's container and
`vmbinder stop` and `start` (the ACPI power button, qemu booting the same disk
and volumes again; `start` waits until the same URL answers); ~/data is
read-only inside (a kernel's write fails, its read works);
`delete` keeps the work volume and says so; a second server, of the public
examples/local-repo (another commit, so the home meets another build), on the
baked Debian 13 image, launched with `--volume <that volume>` and `--expose
ssh` (its port 22 alone forwarded: the launch waits through SSH, `url` points
to the tunnel) finds the edit and the file through `vmbinder tunnel`, every
URL the tunnel prints answers, and a kernel runs there; `delete
--delete-volumes` and `volumes delete` leave no volume behind. Every check of
the home goes through the printed URL with the token (a kernel's WebSocket
execute request, the contents API), the tunnel's, or `vmbinder ssh`.

One launch shows both because each launch boots a guest under TCG, minutes on
a small machine. The failed build without the token is in test_local_private.py.

Needs root, qemu and the baked image (tests/e2e/conftest.py builds it when
missing). Missing parts fail, never skip.
"""

from __future__ import annotations

import base64
import json
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.kernel import execute

from .test_local_guest import get, ssh_key
from .test_local_private import (  # noqa: F401 - private_repo is a fixture
    PS_WATCH,
    SEARCH,
    fingerprint,
    guest_status,
    launch_argv,
    private_repo,
    ssh,
)

pytestmark = pytest.mark.e2e

NO_TLS: ssl.SSLContext | None = None  # --tls off: plain HTTP on the forwarded port


def cli(env, *args, timeout=2700, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", *args], env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert res.returncode == 0, f"vmbinder {' '.join(args)}: {res.returncode}\n{res.stderr}"
    return res


def contents(base, token, path, method="GET", body=None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}/api/contents/{path}?token={token}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def answers(base, token, deadline=900) -> list:
    """Jupyter's /api/status codes until it answers 200 (None: no answer)."""
    codes, end = [], time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=10) as resp:
                # Jupyter's own answer, not a page in front of it.
                codes.append(resp.status if "started" in json.loads(resp.read() or b"{}") else "page")
        except urllib.error.HTTPError as exc:
            codes.append(exc.code)
        except (OSError, ValueError):
            codes.append(None)
        if codes[-1] == 200:
            break
        time.sleep(3)
    return codes


def work_is_there(base, token):
    notebook = contents(base, token, "index.ipynb")
    assert notebook["content"]["cells"][0]["source"] == "# edited on the server", notebook["content"]
    assert contents(base, token, "results/added.txt")["content"] == "kept across restarts\n"


def watched_launch(env, argv, folder: Path, pkey) -> tuple[subprocess.CompletedProcess, list[str], dict]:
    """The launch argv run to its end, while every process's arguments on this
    machine are sampled each second and, once the guest's status page gives its
    SSH host keys before the build, PS_WATCH is started in the guest to sample
    them there during the build. Returns the finished launch, the lines `ps`
    printed here, and the watcher's record (host_keys; started, or the last
    error of starting it)."""
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

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
                        "trust", "mirrors", "proxy", "tls", "docker", "fence", "volumes", "base-images",
                        "repo2docker"):
                    watcher["host_keys"] = status["host_keys"]
                    watcher["thread"] = threading.Thread(
                        target=start_watcher, args=(int(meta["vmbinder:ssh-port"]),))
                    watcher["thread"].start()
            time.sleep(1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), host_ps, watcher


def test_a_private_repository_leaves_no_token_and_its_home_and_volume_outlive_restarts_a_stop_and_the_server(
        cli_env, baked_image, debian13_image, test_repo, tmp_path, private_repo):

    token = private_repo.token
    env = {**cli_env, "GIT_ALLOW_PROTOCOL": "file:git:http"}  # this machine asks the remote too
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    pkey = ssh_key(tmp_path / "home")
    shared = tmp_path / "dataset"
    shared.mkdir()
    (shared / "table.csv").write_text("a,b\n1,2\n")
    cli(env, "volumes", "create", "e2e-data", "--size", "1", "--from-dir", str(shared))
    first, second = "e2e-work-1", "e2e-work-2"
    state = tmp_path / "state" / "vmbinder"
    folder = state / "local" / first
    try:
        res, host_ps, watcher = watched_launch(
            env, launch_argv(first, baked_image, private_repo.url, "--git-token-file", str(token_file),
                             "--volume", "1", "--data", "e2e-data"), folder, pkey)
        out, err = res.stdout, res.stderr
        assert res.returncode == 0, err
        assert "started" in watcher, f"the ps watcher never started in the guest: {watcher}"
        doc = json.loads(out)
        lab = urlsplit(doc["urls"]["lab"])
        base, jupyter_token = f"{lab.scheme}://{lab.netloc}", lab.query.split("token=")[1]
        # --tls off: on the local target the token stays on this machine, no clear-text warning.
        assert "clear text" not in err and doc["certificate"]["issuer"] == "off", err
        for key, url in doc["urls"].items():
            code, _ = get(url, context=NO_TLS)
            assert code == 200, f"{key}: {url} answered {code}"
        # The environment computes, and what it computes on is the private repository.
        assert execute(base, jupyter_token, "print(6 * 7)", context=NO_TLS).strip() == "42"
        assert execute(base, jupyter_token, "print(open('/home/jovyan/private.txt').read())",
                       context=NO_TLS).strip() == private_repo.marker
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
        launched = json.loads(ssh(port, pkey, keys, "sudo cat /etc/vmbinder/launch.json"))
        assert launched["git_credential"] is None and launched["repo"] == private_repo.url
        assert ssh(port, pkey, keys, "sudo stat -c %a /etc/vmbinder/launch.json").strip() == "600"

        # The whole server, its volumes mounted: files, the image, the journal.
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

        # Edit a notebook of the repository and add a file, as a user does in JupyterLab.
        notebook = contents(base, jupyter_token, "index.ipynb")["content"]
        notebook["cells"] = [{"cell_type": "markdown", "metadata": {},
                              "source": "# edited on the server"}]
        contents(base, jupyter_token, "index.ipynb", "PUT", {"type": "notebook", "format": "json",
                                                             "content": notebook})
        contents(base, jupyter_token, "results", "PUT", {"type": "directory"})
        contents(base, jupyter_token, "results/added.txt", "PUT",
                 {"type": "file", "format": "text", "content": "kept across restarts\n"})
        # The data volume: readable, and read-only even for the container.
        data = execute(base, jupyter_token,
                      "import os\nprint(open(os.path.expanduser('~/data/table.csv')).read())\n"
                      "try:\n    open(os.path.expanduser('~/data/new.txt'), 'w')\n"
                      "except OSError as exc:\n    print(type(exc).__name__, exc.errno)\n",
                      context=NO_TLS)
        assert "a,b\n1,2" in data and "OSError 30" in data, data  # EROFS
        # A restart of the container (what an out-of-memory kill or a service restart does).
        res = cli(env, "ssh", first, "--", "sudo systemctl restart vmbinder-env.service")
        codes = answers(base, jupyter_token)
        assert codes[-1] == 200, codes
        work_is_there(base, jupyter_token)
        # Stopped (the ACPI power button) and started again (qemu boots the same disk
        # and volumes): `start` waits until the environment answers, at the same URL.
        boot_id = ("ssh", first, "--", "cat /proc/sys/kernel/random/boot_id")
        before = cli(env, *boot_id).stdout.strip()
        res = cli(env, "stop", first, "--format", "json", timeout=300)
        assert [(d["action"], d["status"]) for d in json.loads(res.stdout)] == [("stopped", "stopped")]
        with pytest.raises(OSError):  # nothing listens on the forwarded port
            get(f"{base}/api/status?token={jupyter_token}", timeout=10, context=NO_TLS)
        res = cli(env, "start", first, "--format", "json", "--timeout", "900", timeout=1000)
        (started,) = json.loads(res.stdout)
        assert (started["action"], started["status"], started["ready"]) == ("started", "active", True)
        assert started["urls"] == doc["urls"], (started["urls"], doc["urls"])
        # Another boot, and `vmbinder ssh` checks the host key its console printed.
        after = cli(env, *boot_id).stdout.strip()
        assert after and after != before, (before, after)
        work_is_there(base, jupyter_token)
        mounts = cli(env, "ssh", first, "--", "findmnt -no OPTIONS /srv/vmbinder/data/e2e-data").stdout
        assert mounts.startswith("ro"), mounts

        # delete keeps the work volume, and says so.
        res = cli(env, "delete", first)
        assert f"{first}-work" in res.stderr + res.stdout, res.stderr
        assert not folder.exists()
        listed = json.loads(cli(env, "volumes", "--format", "json").stdout)
        work = [v for v in listed if v["name"] == f"{first}-work"]
        assert work and not work[0]["attached_to"] and work[0]["last_server"] == first, listed

        # A new server with that volume finds the work there: one of the public
        # repository, so the home meets another build, on Debian 13 (Docker 26, its
        # own buildx). Only its port 22 is open: the launch waits through SSH and
        # the work is reached through the tunnel.
        assert json.loads((debian13_image / "image.json").read_text())["distro"] == "debian-13"
        res = cli(env, "launch", "--name", second, "--image", str(debian13_image), "--format", "json",
                  "--timeout", "2400", "--expose", "ssh", "--volume", f"{first}-work", test_repo)
        # It waited (no --no-wait) and returned 0 with only port 22 forwarded: through SSH.
        console = (state / "local" / second / "console.log").read_text(errors="replace")
        assert "Debian GNU/Linux 13 (trixie)" in console and '"phase": "ready"' in console
        doc = json.loads(res.stdout)
        assert doc["urls"] == {} and doc["open_url"] is None, doc
        meta = json.loads((state / "local" / second / "server.json").read_text())["metadata"]
        assert [k for k in meta if k.endswith("-port")] == ["vmbinder:ssh-port"], meta
        url = cli(env, "url", second, check=False)
        assert url.returncode == 2 and f"vmbinder tunnel {second}" in url.stderr, url.stderr
        tunnel = subprocess.Popen([sys.executable, "-m", "vmbinder", "--cloud", "local", "tunnel", second,
                                   "--format", "json"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            opened = json.loads(tunnel.stdout.readline())
            lab = urlsplit(opened["urls"]["lab"])
            assert lab.netloc == f"127.0.0.1:{opened['port']}", opened
            base, jupyter_token = f"{lab.scheme}://{lab.netloc}", lab.query.split("token=")[1]
            for key, url in opened["urls"].items():
                code, _ = get(url, context=NO_TLS)
                assert code == 200, f"{key}: {url} answered {code}"
            work_is_there(base, jupyter_token)
            assert execute(base, jupyter_token, "print(6 * 7)", context=NO_TLS).strip() == "42"
        finally:
            tunnel.send_signal(signal.SIGINT)
            _, tunnel_err = tunnel.communicate(timeout=60)
        assert tunnel.returncode == 0 and f"tunnel to {second} closed" in tunnel_err, tunnel_err
        res = cli(env, "delete", "--delete-volumes", second)
    finally:
        for name in (first, second):
            cli(env, "delete", "--delete-volumes", name, check=False)
        cli(env, "volumes", "delete", "e2e-data", "--force", check=False)
    left = [v["name"] for v in json.loads(cli(env, "volumes", "--format", "json").stdout)]
    assert left == [], left
    assert not folder.exists() and not (state / "local" / second).exists()
