"""End to end: `vmbinder launch --cloud local` boots a real qemu guest from the
baked image, the real rendered cloud-init builds a repository served from this
machine, and every URL printed answers over HTTPS with the token.

Needs root, qemu and the baked image with the container base image inside it
(tests/e2e/conftest.py builds them when missing). Missing parts fail, never skip.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.e2e


def get(url: str, timeout: float = 20) -> tuple[int, str]:
    """GET over HTTPS trusting Caddy's internal CA without checking it (the
    local target's certificate is for `localhost`, from Caddy's own CA)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def test_launch_on_the_local_target_serves_every_url_it_prints(cli_env, baked_image, test_repo, tmp_path):
    name = "e2e-local"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbinder", "--cloud", "local", "launch", "--name", name,
         "--image", str(baked_image), "--format", "json", "--timeout", "2400", test_repo],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status_pages = []
    try:
        # While it builds, the URL already answers with the status page.
        state_file = tmp_path / "state" / "vmbinder" / "local" / name / "server.json"
        deadline = time.monotonic() + 2400
        while proc.poll() is None and time.monotonic() < deadline:
            if state_file.exists():
                meta = json.loads(state_file.read_text())["metadata"]
                port = meta.get("vmbinder:https-port")
                if port:
                    try:
                        code, body = get(f"https://localhost:{port}/", timeout=5)
                        if "being prepared" in body:
                            status_pages.append(code)
                    except OSError:
                        pass
            time.sleep(5)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert status_pages, "the status page never answered while the environment was built"
    token = doc["urls"]["lab"].rsplit("token=", 1)[1]
    for key, url in doc["urls"].items():
        code, _ = get(url)
        assert code == 200, f"{key}: {url} answered {code}"
    base = doc["urls"]["lab"].split("/lab?")[0]
    assert get(f"{base}/api/status?token={token}")[0] == 200
    assert get(f"{base}/api/status?token=wrong")[0] in (401, 403)
    assert get(f"{base}/vmbinder/status.json?token=wrong")[0] == 403

    # After a reboot the same URL works with the same token.
    from vmbinder.providers.local import LocalProvider

    provider = LocalProvider(env=cli_env)
    provider.reboot(provider.get(name))
    deadline = time.monotonic() + 900
    codes = []
    while time.monotonic() < deadline:
        try:
            codes.append(get(f"{base}/api/status?token={token}", timeout=10)[0])
        except OSError:
            codes.append(None)
        if codes[-1] == 200:
            break
        time.sleep(5)
    assert codes[0] != 200, "the URL never went away: the guest did not reboot"
    assert codes[-1] == 200, f"the URL did not answer again after a reboot: {codes[-5:]}"

    res = subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", "delete", name],
                         env=cli_env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
