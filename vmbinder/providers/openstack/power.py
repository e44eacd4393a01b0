"""Power on OpenStack: stop and start (Nova keeps the server on its host, its
cores reserved), shelve with offload and unshelve (Nova keeps the disk as a
Glance image and frees the host). The server's port, and so its floating IP,
stays through all of them: the URL and the token are the same afterwards.
Each returns Nova's record of the server in its new state."""

from __future__ import annotations

import time

from vmbinder import errors
from vmbinder.providers.base import Server
from vmbinder.providers.openstack.common import cloud_errors

SHUTOFF, ACTIVE = "SHUTOFF", "ACTIVE"
SHELVED, OFFLOADED = "SHELVED", "SHELVED_OFFLOADED"


def wait_for(conn, server: Server, status: str, timeout: float):
    """Until Nova says status (ERROR ends the wait), the raw server."""
    raw = conn.compute.get_server(server.id)
    if raw.status != status:
        raw = conn.compute.wait_for_server(raw, status=status, failures=["ERROR"], interval=2,
                                           wait=timeout)
    return raw


def wait_idle(conn, server: Server, timeout: float) -> None:
    """Until Nova runs no task on the server: Glance can call a snapshot active a
    moment before Nova ends its image_uploading task, and Nova refuses to start
    a server during one (HTTP 409)."""
    deadline = time.monotonic() + timeout
    while (task := conn.compute.get_server(server.id).task_state) is not None:
        if time.monotonic() > deadline:
            raise errors.CloudError(
                f"{server.name} still has Nova task {task} after {timeout:.0f} s",
                "the cloud may be overloaded; try again later, or look at it with: "
                f"openstack server show {server.id}")
        time.sleep(1)


def _refuse(server: Server, status: str, verb: str, hint: str) -> errors.BadRequest:
    return errors.BadRequest(f"cannot {verb} {server.name}: it is {status}", hint,
                             details={"server_id": server.id, "status": status})


def stop(conn, server: Server, timeout: float):
    with cloud_errors(f"stopping {server.name}"):
        wait_idle(conn, server, timeout)
        status = conn.compute.get_server(server.id).status
        if status in (SHELVED, OFFLOADED):
            raise _refuse(server, status, "stop",
                          f"it holds no cores already; it comes back with: vmbinder unshelve {server.name}")
        if status != SHUTOFF:
            conn.compute.stop_server(server.id)
        return wait_for(conn, server, SHUTOFF, timeout)


def start(conn, server: Server, timeout: float):
    with cloud_errors(f"starting {server.name}"):
        wait_idle(conn, server, timeout)
        status = conn.compute.get_server(server.id).status
        if status in (SHELVED, OFFLOADED):
            raise _refuse(server, status, "start", f"a shelved server comes back with: "
                          f"vmbinder unshelve {server.name}")
        if status != ACTIVE:
            conn.compute.start_server(server.id)
        return wait_for(conn, server, ACTIVE, timeout)


def shelve(conn, server: Server, timeout: float):
    """Shelve, then offload when the cloud keeps shelved servers on their host
    (its shelved_offload_time is not 0): only an offloaded server frees its cores."""
    with cloud_errors(f"shelving {server.name}"):
        wait_idle(conn, server, timeout)
        status = conn.compute.get_server(server.id).status
        if status not in (SHELVED, OFFLOADED):
            conn.compute.shelve_server(server.id)
            deadline = time.monotonic() + timeout
            while (status := conn.compute.get_server(server.id).status) not in (SHELVED, OFFLOADED):
                if status == "ERROR" or time.monotonic() > deadline:
                    raise errors.CloudError(
                        f"{server.name} did not shelve (status {status})",
                        f"look at it with: openstack server show {server.id}",
                        details={"server_id": server.id, "status": status})
                time.sleep(2)
        if status == SHELVED:
            wait_idle(conn, server, timeout)
            if conn.compute.get_server(server.id).status == SHELVED:
                conn.compute.shelve_offload_server(server.id)
        return wait_for(conn, server, OFFLOADED, timeout)


def unshelve(conn, server: Server, timeout: float):
    with cloud_errors(f"unshelving {server.name}"):
        wait_idle(conn, server, timeout)
        status = conn.compute.get_server(server.id).status
        if status == SHUTOFF:
            raise _refuse(server, status, "unshelve", f"a stopped server comes back with: "
                          f"vmbinder start {server.name}")
        if status in (SHELVED, OFFLOADED):
            conn.compute.unshelve_server(server.id)
        return wait_for(conn, server, ACTIVE, timeout)
