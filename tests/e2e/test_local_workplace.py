"""End to end: the home is a place to work. On the local target, a server
launched with a new work volume (`--volume 1`) and a data volume (`--data`,
made from a folder with `vmbinder volumes create --from-dir`): a notebook of the
repository edited and a file added through Jupyter's contents API survive a
restart of the environment's container and a reboot; ~/data is read-only
inside (a kernel's write fails, its read works); `delete` keeps the work
volume and says so; a second server launched with `--volume <that volume>`
finds the edit and the file; `delete --delete-volumes` and `volumes delete`
leave no volume behind. Every check goes through the printed URL with the
token (a kernel's WebSocket execute request, the contents API) or `vmbinder ssh`.

Needs root, qemu and the baked image (tests/e2e/conftest.py builds it when
missing). Missing parts fail, never skip.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from tests.kernel import execute

from .test_local_guest import ssh_key

pytestmark = pytest.mark.e2e

NO_TLS: ssl.SSLContext | None = None  # --tls off: plain HTTP on the forwarded port


def cli(env, *args, timeout=2700, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", *args], env=env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert res.returncode == 0, f"vmbinder {' '.join(args)}: {res.returncode}\n{res.stderr}"
    return res


def launch(env, name, image, repo, *extra) -> tuple[str, str]:
    """(base URL, token) of a new server whose environment answers."""
    res = cli(env, "launch", "--name", name, "--image", str(image), "--format", "json",
              "--timeout", "2400", "--tls", "off", *extra, repo)
    doc = json.loads(res.stdout)
    lab = urlsplit(doc["urls"]["lab"])
    return f"{lab.scheme}://{lab.netloc}", lab.query.split("token=")[1]


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


def test_the_home_and_its_volume_outlive_restarts_reboots_and_the_server(cli_env, baked_image,
                                                                         test_repo, tmp_path):
    from vmbinder.providers.local import LocalProvider

    ssh_key(tmp_path / "home")
    shared = tmp_path / "dataset"
    shared.mkdir()
    (shared / "table.csv").write_text("a,b\n1,2\n")
    cli(cli_env, "volumes", "create", "e2e-data", "--size", "1", "--from-dir", str(shared))
    first, second = "e2e-work-1", "e2e-work-2"
    try:
        base, token = launch(cli_env, first, baked_image, test_repo, "--volume", "1",
                             "--data", "e2e-data")
        # Edit a notebook of the repository and add a file, as a user does in JupyterLab.
        notebook = contents(base, token, "index.ipynb")["content"]
        notebook["cells"] = [{"cell_type": "markdown", "metadata": {},
                              "source": "# edited on the server"}]
        contents(base, token, "index.ipynb", "PUT", {"type": "notebook", "format": "json",
                                                     "content": notebook})
        contents(base, token, "results", "PUT", {"type": "directory"})
        contents(base, token, "results/added.txt", "PUT",
                 {"type": "file", "format": "text", "content": "kept across restarts\n"})
        # The data volume: readable, and read-only even for the container.
        out = execute(base, token, "import os\nprint(open(os.path.expanduser('~/data/table.csv')).read())\n"
                      "try:\n    open(os.path.expanduser('~/data/new.txt'), 'w')\n"
                      "except OSError as exc:\n    print(type(exc).__name__, exc.errno)\n",
                      context=NO_TLS)
        assert "a,b\n1,2" in out and "OSError 30" in out, out  # EROFS
        # A restart of the container (what an out-of-memory kill or a service restart does).
        res = cli(cli_env, "ssh", first, "--", "sudo systemctl restart vmbinder-env.service")
        codes = answers(base, token)
        assert codes[-1] == 200, codes
        work_is_there(base, token)
        # A reboot.
        provider = LocalProvider(env=cli_env)
        provider.reboot(provider.get(first))
        codes = answers(base, token)
        assert codes[0] != 200 and codes[-1] == 200, f"no reboot seen, or no answer after it: {codes}"
        work_is_there(base, token)
        mounts = cli(cli_env, "ssh", first, "--", "findmnt -no OPTIONS /srv/vmbinder/data/e2e-data").stdout
        assert mounts.startswith("ro"), mounts

        # delete keeps the work volume, and says so.
        res = cli(cli_env, "delete", first)
        assert f"{first}-work" in res.stderr + res.stdout, res.stderr
        listed = json.loads(cli(cli_env, "volumes", "--format", "json").stdout)
        work = [v for v in listed if v["name"] == f"{first}-work"]
        assert work and not work[0]["attached_to"] and work[0]["last_server"] == first, listed

        # A new server with that volume finds the work there.
        base, token = launch(cli_env, second, baked_image, test_repo, "--volume", f"{first}-work")
        work_is_there(base, token)
        res = cli(cli_env, "delete", "--delete-volumes", second)
    finally:
        for name in (first, second):
            cli(cli_env, "delete", "--delete-volumes", name, check=False)
        cli(cli_env, "volumes", "delete", "e2e-data", "--force", check=False)
    left = [v["name"] for v in json.loads(cli(cli_env, "volumes", "--format", "json").stdout)]
    assert left == [], left

