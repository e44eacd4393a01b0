"""The user-data's way to the guest, against the testbed: a config drive asked
for by default and recorded, none with --config-drive no, and a cloud that
refuses config drives (Nova's 400, put in by the fault proxy) gets the server
without one, with the launch saying so."""

from __future__ import annotations

import json
import sys

from .conftest import FLAVOR, IMAGE, SOURCE
from .test_faults import SERVERS, run, seen
from .test_launch import ok


def launch_args(name, *extra):
    """A launch that prints its progress lines (no --format json, which keeps them quiet)."""
    return ("launch", "--no-wait", "--name", name, "--image", IMAGE, "--flavor", FLAVOR, *extra)


def has_config_drive(server) -> bool:
    return str(server.has_config_drive).lower() == "true"


def test_a_config_drive_is_asked_for_by_default_and_recorded(testbed, vmb, name):
    res = ok(vmb(*launch_args(name, SOURCE)))
    assert f"{name} reads its user-data from the config drive" in res.stderr
    server = testbed.server(name)
    assert has_config_drive(server)
    assert server.metadata["vmbinder:user-data-via"] == "config-drive"
    status = json.loads(ok(vmb("status", name, "--format", "json")).stdout)
    assert status["user_data_via"] == "config-drive"
    assert "user_data_via  config-drive\n" in ok(vmb("status", name)).stdout

    without = name + "-n"
    res = ok(vmb(*launch_args(without, "--config-drive", "no", SOURCE)))
    assert f"{without} reads its user-data from the metadata service" in res.stderr
    server = testbed.server(without)
    assert not has_config_drive(server)
    assert server.metadata["vmbinder:user-data-via"] == "metadata-service"
    ok(vmb("delete", name, without))


def test_a_cloud_that_refuses_config_drives_gets_the_server_without_one(
        testbed, cli_env, fault_proxy, name):
    refusal = {"badRequest": {"code": 400, "message": "Invalid input for field/attribute "
                                                      "config_drive. Value: True."}}
    fault_proxy.set({"method": "POST", "path": SERVERS, "body": '"config_drive": true',
                     "action": "status", "status": 400, "json": refusal})
    env = fault_proxy.through(cli_env)
    res = run([sys.executable, "-m", "vmbinder", *launch_args(name, SOURCE)], env)
    assert res.returncode == 0, res.stderr
    assert f"the cloud refused a config drive: {name} reads its user-data from the metadata " \
           "service" in res.stderr
    assert seen(fault_proxy, "POST", SERVERS, "status") == 1  # refused once,
    assert seen(fault_proxy, "POST", SERVERS, None) == 1      # made once, without it
    server = testbed.server(name)
    assert not has_config_drive(server)
    assert server.metadata["vmbinder:user-data-via"] == "metadata-service"

    # --config-drive yes is never dropped: the refusal is the launch's error.
    forced = name + "-y"
    res = run([sys.executable, "-m", "vmbinder",
               *launch_args(forced, "--config-drive", "yes", SOURCE)], env)
    assert res.returncode == 4, res.stderr
    assert "HTTP 400" in res.stderr and "config_drive" in res.stderr
    assert "nothing had been created" not in res.stderr  # the group was made, and removed
    fault_proxy.set()
    ok(run([sys.executable, "-m", "vmbinder", "delete", name], env))
