"""End to end on OpenStack: a two-seat workshop with `config_drive: no`. The
first seat, on the project's network with a floating IP, reads its user-data
from the metadata service (router, haproxy, Neutron's metadata agent, Nova's
metadata API), builds the environment and is snapshotted into Glance; the
second, on the provider network `public` (its per-seat `network`), gets no
floating IP, reads its user-data through the DHCP server's isolated metadata
proxy, boots from that real snapshot and answers on its own address without
building. Each seat gets a certificate for its own address from the ACME CA in
"the internet" (pebble, validating http-01 on the floating IP and on the
provider-network address alike), checked by `workshop roster` and here against
the CA's root; `workshop down --snapshot` leaves nothing owned by vmbinder."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tests.kernel import execute

from .conftest import FLAVOR, cli_environment, only_the_keypair_is_left, vmbinder
from .test_openstack_guest import TIMEOUT, console_of, get, get_json, ssh_key, verifying

pytestmark = pytest.mark.real
PHASE = '"phase": "build", "result": "%s", "status": "done"'  # sort_keys order


def test_a_workshop_fans_out_from_a_real_glance_snapshot(real_testbed, uploaded_image, repo_url,
                                                         acme_ca, tmp_path, phase):
    tb = real_testbed
    (tmp_path / "home").mkdir()
    env = cli_environment(tmp_path / "home")
    ssh_key(tmp_path / "home")
    path = tmp_path / "ws.yaml"
    (tmp_path / "ca-root.pem").write_text(acme_ca.roots.read_text())
    path.write_text(f"name: real-ws\nsource: {repo_url}\nseats: 2\nimage: {uploaded_image}\n"
                    f"flavor: {FLAVOR}\nacme_ca: {acme_ca.directory}\nacme_ca_root: ca-root.pem\n"
                    "open: index.ipynb\nconfig_drive: no\noverrides:\n  2: {network: public}\n")
    try:
        res = vmbinder(env, "workshop", "up", str(path), "--format", "json", "--timeout",
                       str(TIMEOUT), timeout=2 * TIMEOUT)
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        phase("workshop up: first seat built, snapshotted and answering again, second seat from the snapshot")
        assert [(s["seat"], s["result"]) for s in doc["seats"]] == [
            ("real-ws-01", "created"), ("real-ws-02", "created")]
        assert doc["snapshot_action"] == "made"
        snap = tb.admin.image.get_image(doc["snapshot"])
        assert snap.status == "active" and snap.properties["vmbinder_snapshot_of"] == "real-ws-01"
        assert snap.properties["vmbinder_workshop"] == "real-ws"

        first, second = tb.server("real-ws-01"), tb.server("real-ws-02")
        assert second.image.id == snap.id and second.metadata["vmbinder:snapshot"] == snap.id
        # No config drive: both read the user-data from the metadata service,
        # the first through its router, the second through the DHCP server.
        for server in (first, second):
            assert server.has_config_drive in (False, "", None, "False"), server.has_config_drive
            assert server.metadata["vmbinder:user-data-via"] == "metadata-service"
            assert "Datasource DataSourceOpenStackLocal" in console_of(tb, server)
        # The first seat's address is a floating IP; the second sits on public
        # with its own address, and no floating IP is made for it.
        addresses = {s["seat"]: s["address"] for s in doc["seats"]}
        (fip,) = tb.admin.network.ips(floating_ip_address=addresses["real-ws-01"])
        assert tb.admin.network.get_port(fip.port_id).device_id == first.id
        assert [a["addr"] for a in second.addresses["public"]] == [addresses["real-ws-02"]]
        assert ipaddress.ip_address(addresses["real-ws-02"]) in ipaddress.ip_network("203.0.113.0/24")
        assert [ip.description for ip in tb.admin.network.ips(project_id=tb.project_id)] \
            == ["vmbinder:real-ws-01"]
        # The second seat found the environment built in the snapshot.
        console = console_of(tb, second)
        assert PHASE % "present" in console and PHASE % "built" not in console

        res = vmbinder(env, "workshop", "roster", str(path), "--format", "json", timeout=300)
        assert res.returncode == 0, res.stderr
        seats = json.loads(res.stdout)["seats"]
        assert [s["seat"] for s in seats] == ["real-ws-01", "real-ws-02"]
        # Each seat's certificate is for its own address, from the CA at the first
        # try, and the printed URLs name that address.
        for made in doc["seats"]:
            assert (made["certificate"]["site"], made["certificate"]["issuer"],
                    made["certificate"]["failed"]) == (made["address"], "acme", []), made
        for seat in seats:
            host = addresses[seat["seat"]]
            assert seat["lab_url"].startswith(f"https://{host}/lab?token="), seat
        assert len({s["url"].rsplit("token=", 1)[1] for s in seats}) == 2
        context = verifying(acme_ca.roots)
        steps = {}
        for seat in seats:
            assert get(seat["url"], context) == 200 and get(seat["lab_url"], context) == 200
            base, token = seat["lab_url"].split("/lab?token=")
            assert get(f"{base}/api/status?token=wrong", context) in (401, 403)
            steps[seat["seat"]] = get_json(f"{base}/vmbinder/status.json?token={token}",
                                           context)["durations"]
            out = execute(base, token, "print(6 * 7)", context=context)
            assert out.strip() == "42", out
        assert steps["real-ws-01"]["build"] > 10 > steps["real-ws-02"]["build"], steps
        seconds = {s["seat"]: s["seconds"] for s in doc["seats"]}
        phase(f"roster, URLs and kernels (first seat {seconds['real-ws-01']:.0f} s, second "
              f"{seconds['real-ws-02']:.0f} s; guest steps {steps})")
    finally:
        res = vmbinder(env, "workshop", "down", str(path), "--snapshot", "--format", "json",
                       timeout=900)
    assert res.returncode == 0, res.stderr
    kinds = sorted(r["kind"] for r in json.loads(res.stdout))
    assert kinds.count("server") == 2 and kinds.count("snapshot") == 1, kinds
    assert kinds.count("floating IP") == 1 and kinds.count("port") == 1, kinds
    only_the_keypair_is_left(tb, uploaded_image)
    phase("workshop down --snapshot")

