"""End to end: the certificate chain on a real guest, against a real ACME CA
(pebble), when the CA will not give a certificate for the address itself.

pebble's validation of the address (127.0.0.1, the local target's public
address) finds nothing listening (port 80 unreachable); it refuses names under
sslip.io (its policy, as a CA that refuses); its DNS answers 127.0.0.2 for
every name, where a relay carries the validation to the guest, so the nip.io
name gets its certificate. The launch does not wait for the environment: the
chain runs before the build, and `vmbinder status` reports it from the
console, causes included, while the guest builds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from vmbinder import https, readiness

pytestmark = pytest.mark.e2e


def vmbinder(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_ca_refusing_the_address_and_a_name_leads_to_the_next_name(cli_env, baked_image, test_repo,
                                                                       acme_ca):
    name = "e2e-tls"
    ca = acme_ca(name, relay_on="127.0.0.2", dns_answer="127.0.0.2", blocklist=("sslip.io",))
    res = vmbinder(cli_env, "launch", "--name", name, "--image", str(baked_image), "--no-wait",
                   "--acme-ca", ca.directory, "--acme-ca-root", str(ca.roots), "--format", "json",
                   test_repo)
    assert res.returncode == 0, res.stderr
    try:
        printed = json.loads(res.stdout)
        # Before the guest reports, the URL is the first name it tries: the address.
        assert printed["urls"]["lab"].startswith("https://127.0.0.1:") and printed["certificate"] is None
        deadline, cert = time.monotonic() + 1500, None
        while cert is None and time.monotonic() < deadline:
            time.sleep(10)
            res = vmbinder(cli_env, "status", name, "--format", "json")
            assert res.returncode == 0, res.stderr
            cert = json.loads(res.stdout)["certificate"]
        assert cert is not None, "the guest never reported its certificate"
        assert (cert["site"], cert["issuer"]) == ("127-0-0-1.nip.io", "acme"), cert
        assert [(f["host"], f["issuer"], f["cause"]) for f in cert["failed"]] == [
            ("127.0.0.1", "acme", "port 80 unreachable"),
            ("127-0-0-1.sslip.io", "acme", "refused by the CA")], cert

        # People read the same in the table, and the URL follows the name.
        table = vmbinder(cli_env, "status", name).stdout
        assert "certificate  the ACME CA " + ca.directory + " for 127-0-0-1.nip.io" in table, table
        assert "tried first  127.0.0.1 (acme): port 80 unreachable" in table, table
        assert "tried first  127-0-0-1.sslip.io (acme): refused by the CA" in table, table
        url = vmbinder(cli_env, "url", name).stdout.strip()
        assert url.startswith("https://127-0-0-1.nip.io:"), url
        # The name's certificate is the CA's, checked for the name (reached at the
        # address in it, as its DNS would answer); the page answers while it builds.
        base = url.split("/lab", 1)[0]
        status, body, reason = readiness.fetch(f"{base}/vmbinder/page",
                                               context=https.public_context(ca.roots.read_text()))
        assert status in (200, 503) and b"vmbinder" in body, (status, reason)
        assert sum(relay.connections for relay in ca.relays) >= 1
    finally:
        res = vmbinder(cli_env, "delete", name)
        assert res.returncode == 0, res.stderr
