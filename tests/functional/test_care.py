"""The application credential a server puts itself away with, against the
testbed's Keystone and Nova: launch --idle makes one for that server only
(access rules: its own record, actions and vmbinder:ended), hands it to the
guest in the launch document only, records its id on the server, and delete
removes it. Used as the guest uses it (the secret read back from the user-data
as an administrator, as only the server itself and the cloud's admins can),
it shelves the server; a call outside its rules is refused."""

from __future__ import annotations

import base64
import json
import time

import openstack
import pytest
import yaml

from .conftest import SOURCE
from .test_launch import launch_args, ok


def credentials_named(testbed, prefix):
    return [c for c in testbed.admin.identity.application_credentials(user=testbed.user_id)
            if c.name.startswith(prefix)]


def launch_document(testbed, name):
    raw = testbed.admin.compute.get_server(testbed.server(name).id)
    user_data = yaml.safe_load(base64.b64decode(raw.user_data))
    (launch,) = [f for f in user_data["write_files"] if f["path"].endswith(".json")]
    return json.loads(launch["content"])


def test_launch_idle_makes_a_credential_for_that_server_only(testbed, vmb, name, ssh_key):
    out = json.loads(ok(vmb(*launch_args(name, "--idle", "2h", SOURCE))).stdout)
    server_id = out["id"]
    (cred,) = credentials_named(testbed, f"vmbinder-{name}-")
    assert testbed.server(name).metadata["vmbinder:credential"] == cred.id
    base = f"/v2.1/servers/{server_id}"
    assert sorted((r["method"], r["path"]) for r in cred.access_rules) == [
        ("DELETE", f"{base}/metadata/vmbinder:ended"), ("GET", base), ("POST", f"{base}/action"),
        ("PUT", f"{base}/metadata/vmbinder:ended")]
    assert {r["service"] for r in cred.access_rules} == {"compute"} and not cred.unrestricted
    care = launch_document(testbed, name)["care"]
    assert (care["idle_s"], care["idle_action"], care["credential"]["name"]) == (
        7200, "shelve", cred.name)
    assert care["credential"]["secret"] not in json.dumps(dict(testbed.server(name).metadata))

    given = care["credential"]
    guest = openstack.connection.Connection(
        auth_type="v3applicationcredential",
        auth={"auth_url": given["auth_url"], "application_credential_name": given["name"],
              "user_id": given["user_id"], "application_credential_secret": given["secret"]},
        region_name=given["region"], interface="public")
    assert guest.compute.get(f"/servers/{server_id}").status_code == 200
    refused = [guest.compute.get("/servers"), guest.compute.get("/flavors"),
               guest.compute.delete(f"/servers/{server_id}")]
    assert [r.status_code for r in refused] == [401, 401, 401], [r.text for r in refused]
    done = guest.compute.post(f"/servers/{server_id}/action", json={"shelve": None})
    assert done.status_code == 202, done.text
    deadline = time.monotonic() + 300
    while testbed.server(name).status not in ("SHELVED", "SHELVED_OFFLOADED"):
        assert time.monotonic() < deadline, testbed.server(name).status
        time.sleep(2)

    removed = ok(vmb("delete", name, "--format", "json", timeout=600)).stdout
    assert ["application credential", cred.id] in [[d["kind"], d["id"]] for d in json.loads(removed)]
    assert credentials_named(testbed, f"vmbinder-{name}-") == []
    left = testbed.owned()
    assert [k for k, _, _ in left] == ["keypair"], left
    testbed.admin.compute.delete_keypair(left[0][1], user_id=testbed.user_id)


@pytest.mark.parametrize("extra, rules", [
    (("--lifetime", "8h", "--at-end", "delete"), 5),
    (("--idle", "1h", "--idle-action", "stop", "--lifetime", "8h", "--at-end", "stop"), None),
])
def test_the_rules_follow_what_the_server_may_do(testbed, vmb, name, ssh_key, extra, rules):
    ok(vmb(*launch_args(name, *extra, SOURCE)))
    found = credentials_named(testbed, f"vmbinder-{name}-")
    if rules is None:  # stop is a power-off from inside: no credential at all
        assert found == [] and "vmbinder:credential" not in testbed.server(name).metadata
        assert launch_document(testbed, name)["care"]["credential"] is None
        ok(vmb("delete", name, timeout=600))
    else:
        assert len(found[0].access_rules) == rules
        assert ("DELETE", f"/v2.1/servers/{testbed.server(name).id}") in [
            (r["method"], r["path"]) for r in found[0].access_rules]
        # The server deletes itself at the end (here: Nova's API, as the guest calls
        # it): reap removes what it could not, its credential and its floating IP.
        server = testbed.server(name)
        testbed.admin.compute.delete_server(server)
        testbed.admin.compute.wait_for_delete(server, wait=120)
        docs = json.loads(ok(vmb("reap", "--format", "json")).stdout)
        assert sorted((d["action"], d["kind"]) for d in docs) == [
            ("forget", "application credential"), ("forget", "floating IP")], docs
        assert found[0].name in [d["name"] for d in docs]
    assert credentials_named(testbed, f"vmbinder-{name}-") == []
    left = testbed.owned()
    assert sorted(k for k, _, _ in left) in (["keypair"], ["keypair", "security group"]), left
    testbed.remove(left)
