"""End to end on Debian 13: `vmbinder --cloud local launch` boots the baked
Debian 13 (trixie) image built by `vmbinder image build --distro debian-13`,
the real rendered cloud-init builds examples/local-repo, and every URL printed
answers with the token. It runs with --tls off: the URL printed is the plain
HTTP one the guest serves, and what answers there is Jupyter's own status. Lean
on purpose: test_local_guest.py checks the rest (status page, exposure,
reboot, HTTPS) on Debian 12, with the same guest script.

Needs root, qemu and the image (tests/e2e/conftest.py builds it when missing).
Missing parts fail, never skip.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .test_local_guest import get

pytestmark = pytest.mark.e2e


def test_a_debian_13_guest_serves_every_url_it_prints(cli_env, debian13_image, test_repo, tmp_path):
    image = json.loads((debian13_image / "image.json").read_text())
    assert (image["distro"], image["baked"]) == ("debian-13", True)
    name = "e2e-trixie"
    res = subprocess.run(
        [sys.executable, "-m", "vmbinder", "--cloud", "local", "launch", "--name", name,
         "--image", str(debian13_image), "--format", "json", "--timeout", "2400", "--tls", "off",
         test_repo],
        env=cli_env, capture_output=True, text=True, timeout=2700, check=False)
    assert res.returncode == 0, res.stderr
    try:
        doc = json.loads(res.stdout)
        # On the local target the token stays on this machine: no clear-text warning.
        assert "clear text" not in res.stderr
        assert doc["certificate"] == {"site": None, "issuer": "off", "root_sha256": None, "failed": []}
        token = doc["urls"]["lab"].rsplit("token=", 1)[1]
        for key, url in doc["urls"].items():
            assert url.startswith("http://localhost:"), url  # the local target's name
            code, _ = get(url, context=None)
            assert code == 200, f"{key}: {url} answered {code}"
        base = doc["urls"]["lab"].split("/lab?")[0]
        code, body = get(f"{base}/api/status?token={token}", context=None)
        assert code == 200 and "started" in json.loads(body), body
        assert get(f"{base}/api/status?token=wrong", context=None)[0] in (401, 403)
        # The guest that answered is the Debian 13 one (systemd greets on the console).
        console = (tmp_path / "state/vmbinder/local" / name / "console.log").read_text(errors="replace")
        assert "Debian GNU/Linux 13 (trixie)" in console
        assert '"phase": "ready"' in console
    finally:
        gone = subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", "delete", name],
                              env=cli_env, capture_output=True, text=True, timeout=120, check=False)
    assert gone.returncode == 0, gone.stderr
