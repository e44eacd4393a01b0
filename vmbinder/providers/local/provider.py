"""The local provider: the same cloud-init user-data, booted by qemu on this machine.

Each server is a state folder with its server.json (see state), the only record
of it; the qemu command line and process are in qemu. A server is ACTIVE once
its qemu process is running and still running a moment later.

A snapshot (see snapshot) powers the guest off, flattens its overlay into a
new image folder under the images folder (image.json says `snapshot_of` and
carries the properties) and starts the same qemu command line again; a launch
passes that folder as its --image. Volumes are qcow2 disks beside the
servers' folders (see volumes). Its size is one method per verb of
the contract, most of them a few lines that hand over to those modules.

What a launch can choose:
  --image    a name under the images folder ($VMBINDER_IMAGES_DIR, default
             ~/.cache/vmbinder/images), an image folder (image.json, vmlinux,
             initrd.img, disk.qcow2), or a qcow2 cloud image file booted by its
             own bootloader; default: a baked image before a plain one, newest first
  --flavor   CPUs and memory: 2c4g, 4c3000m, 4g or 1c; default 2c2g
  VMBINDER_QEMU_ACCEL=kvm|tcg  overrides the choice made by detect_accel()
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from vmbinder import errors
from vmbinder.costs import Size
from vmbinder.images.folder import (
    ImageFileError,
    cloud_image,
    images_dir,
    load_image,
    read_image_file,
    resolve_image,
)
from vmbinder.images.seed import write_seed
from vmbinder.lifetime import STOP
from vmbinder.providers.base import (
    META,
    Created,
    Ledger,
    Provider,
    Removed,
    Resolved,
    Server,
    Snapshot,
    SshTarget,
    Volume,
    find_owned,
    keypair_name,
    redact_token,
    server_metadata,
    volume_metadata,
)
from vmbinder.providers.local import snapshot as local_snapshot
from vmbinder.providers.local import state
from vmbinder.providers.local import volumes as local_volumes
from vmbinder.providers.local.qemu import (
    CONSOLE,
    HOST_FROM_GUEST,
    INSTALL_HINT,
    LOOPBACK,
    PIDFILE,
    QEMU,
    QEMU_IMG,
    QMP_SOCKET,
    SEED,
    console_tail,
    detect_accel,
    forwarded_for,
    free_ports,
    is_our_qemu,
    overlay_argv,
    parse_flavor,
    port_taken,
    qemu_argv,
    qemu_hint,
    qmp,
    read_pid,
    state_root,
    stop,
)
from vmbinder.spec import AUTO, LaunchSpec, MetadataLimits, TargetDefaults

Runner = Callable[..., subprocess.CompletedProcess]
_PORTS_LOCK = threading.Lock()
#: Times qemu is started with newly chosen ports when a forwarded port was taken meanwhile.
PORT_ATTEMPTS = 3


class LocalProvider(Provider):
    kind = "local"
    capabilities = frozenset({"snapshot", "snapshots", "delete_snapshot", "reboot", "stop", "start",
                              "preflight", "ssh_target", "volumes", "create_volume",
                              "delete_volume", "sizes"})
    #: Reached on this machine's loopback: no public DNS name, so no Let's Encrypt.
    target_defaults = TargetDefaults(hostname="localhost", tls="internal", acme=False,
                                     host_address=HOST_FROM_GUEST,
                                     # No shelving here; the guest can power itself off.
                                     at_end=STOP, at_end_actions=(STOP,))
    #: server.json has no limit of its own; a cloud's (Nova's 255) keeps a launch that
    #: works here working there.
    metadata_limits = MetadataLimits(value_max=255)

    def url_from_here(self, url: str) -> str:
        """A guest reaches this machine's loopback at 10.0.2.2 (localrepo's URLs)."""
        from urllib.parse import urlsplit, urlunsplit

        u = urlsplit(url)
        if u.hostname != HOST_FROM_GUEST:
            return url
        return urlunsplit(u._replace(netloc=u.netloc.replace(HOST_FROM_GUEST, "127.0.0.1", 1)))

    def __init__(
        self,
        *,
        state_dir: Path | None = None,
        images: Path | None = None,
        env: Mapping[str, str] | None = None,
        accel: str | None = None,
        which: Callable[[str], str | None] = shutil.which,
        run: Runner = subprocess.run,
        proc: Path = Path("/proc"),
        settle: float = 2.0,
        sleep: Callable[[float], None] | None = None,
    ):
        env = os.environ if env is None else env
        self.env = env
        self.root = Path(state_dir) if state_dir else state_root(env)
        #: The volumes' disks and records (see volumes), beside the servers' folders.
        self.volumes_root = local_volumes.volumes_root(self.root)
        self.images = Path(images) if images else images_dir(env)
        self._accel = accel
        self.which = which
        self.run = run
        self.proc = proc
        self.settle = settle
        self.sleep = sleep or time.sleep

    def folder(self, name: str) -> Path:
        return self.root / name

    # -- preparing -----------------------------------------------------------------

    def prepare(self, spec: LaunchSpec, ledger: Ledger) -> Resolved:
        choice = spec.cloud
        for option, value in (("--network", choice.network),
                              ("--external-network", choice.external_network),
                              ("--key-name", choice.key_name)):
            if value:
                raise errors.BadRequest(
                    f"{option} names a cloud resource; the local target has none",
                    "leave it out (pass your key with --public-key)" if option == "--key-name"
                    else "leave it out: the local server uses qemu's user-mode network",
                )
        for option, value, why in (
                ("--config-drive", choice.config_drive,
                 "its user-data always travels on a NoCloud seed disk"),
                ("--floating-ip", choice.floating_ip,
                 "it is reached through ports forwarded on this machine's loopback")):
            if value != AUTO:
                raise errors.BadRequest(
                    f"{option} {value} is for OpenStack; the local target has no such choice: {why}",
                    f"leave {option} out (or give {option} auto)")
        # refuses values too long to record, before anything is made
        server_metadata(spec, None, self.metadata_limits)
        flavor = parse_flavor(choice.flavor)
        image = resolve_image(choice.image, self.images)
        missing = [tool for tool in (QEMU, QEMU_IMG) if self.which(tool) is None]
        if missing:
            raise errors.ConfigError(f"{' and '.join(missing)} not found on PATH", INSTALL_HINT)
        accel = self._accel or detect_accel(self.env)
        with _PORTS_LOCK:  # servers prepared side by side must not choose the same ports
            # nor the same volumes: those named are checked free before anything is made
            uses = local_volumes.named(self.volumes_root, self.root, spec, self.metadata_limits)
            ports = self._free_ports(forwarded_for(spec.cloud.expose))
            folder = state.claim(self.root, spec.name)
            ledger.add(Created(
                "state folder", str(folder), spec.name, lambda: state.remove_folder(folder),
                f"rm -rf {shlex.quote(str(folder))}",
            ))
            if spec.volume_size:
                uses = (local_volumes.work_volume(self, spec, ledger), *uses)
            metadata = server_metadata(spec, state.user(), self.metadata_limits)
            metadata.update(volume_metadata(uses, self.metadata_limits))
            metadata.update({META + key: str(port) for key, port in ports.items()})
            user = login_user(image.path)
            if user:
                metadata[META + "login-user"] = user
            self.write_state(folder, {
                "id": str(uuid.uuid4()), "name": spec.name, "created": state.now(),
                "metadata": metadata, "ports": ports,
                "image": {"name": image.name, "path": str(image.path),
                          "kind": "file" if image.path == image.disk else "folder"},
                "flavor": flavor.name, "accel": accel, "pid": None, "argv": None,
                "volumes": [{"name": u.name, "id": u.id, "serial": u.serial, "role": u.role}
                            for u in uses],
            })
        return Resolved(
            image_id=str(image.path), image_name=image.name,
            flavor_id=flavor.name, flavor_name=f"{flavor.name}, {accel}",
            network_id="user", network_name="qemu user-mode",
            external_network_id=None, external_network_name=None,
            key_name=keypair_name(choice.public_key) if choice.public_key else None,
            security_groups=(), public_ip=LOOPBACK, volumes=uses,
        )

    def _free_ports(self, keys: tuple[str, ...], also_exclude: set[int] = frozenset()) -> dict[str, int]:
        """Free loopback ports for the forwards named by keys (see FORWARDS), none of
        them recorded by another local server."""
        taken = {p for s in state.documents(self.root) for p in (s.get("ports") or {}).values()}
        return dict(zip(keys, free_ports(len(keys), taken | set(also_exclude)), strict=True))

    # -- creating ------------------------------------------------------------------

    def create(self, spec: LaunchSpec, resolved: Resolved, user_data: str, ledger: Ledger) -> Server:
        folder = self.folder(spec.name)
        doc = self.read_state(folder)
        kind = doc["image"].get("kind")
        path = Path(doc["image"]["path"])
        image = load_image(path) if kind == "folder" else cloud_image(path)
        meta_data = {"instance-id": doc["id"], "local-hostname": spec.name}
        if spec.cloud.public_key:
            meta_data["public-keys"] = [spec.cloud.public_key.strip()]
        write_seed(folder / SEED, user_data, yaml.safe_dump(meta_data, sort_keys=False))
        self.run_tool(overlay_argv(image, folder), folder, f"creating the disk of {spec.name}")

        flavor = parse_flavor(doc["flavor"])
        disks = local_volumes.qemu_args(self.volumes_root, doc.get("volumes") or [])
        pid = self.start_qemu(folder, doc, lambda ports: qemu_argv(
            name=spec.name, image=image, state=folder, ports=ports, flavor=flavor,
            accel=doc["accel"]) + disks, f"starting qemu for {spec.name}")
        ledger.add(Created(
            "qemu process", str(pid), spec.name,
            lambda: stop(pid, folder, proc=self.proc, sleep=self.sleep), f"kill {pid}",
        ))
        return self.record(folder, doc)

    def start_qemu(self, folder: Path, doc: dict, argv_for: Callable[[dict], list[str]],
               what: str) -> int:
        """Start qemu with argv_for(ports), recording the command line and the pid in
        server.json; returns the pid. A forwarded port that another program took
        since it was chosen is chosen again (the ports are not in the user-data)."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            doc["argv"] = argv_for(doc["ports"])
            self.write_state(folder, doc)
            try:
                self.run_tool(doc["argv"], folder, what)
                break
            except errors.CloudError as exc:
                if attempt == PORT_ATTEMPTS or not port_taken(exc.message):
                    raise
            with _PORTS_LOCK:
                doc["ports"] = self._free_ports(tuple(doc["ports"]), set(doc["ports"].values()))
            doc["metadata"].update({META + k: str(p) for k, p in doc["ports"].items()})
        pid = read_pid(folder)
        if pid is None:
            raise errors.CloudError(f"{what}: qemu started but wrote no {PIDFILE}")
        doc["pid"] = pid
        self.write_state(folder, doc)
        # qemu sets its own umask (027) when it daemonizes: keep the files private
        for made in (CONSOLE, QMP_SOCKET, PIDFILE):
            if (folder / made).exists():
                os.chmod(folder / made, 0o600)
        return pid

    def run_tool(self, argv: list[str], folder: Path, what: str, timeout: float = 120) -> None:
        """Run qemu or qemu-img in the server's folder; CloudError saying what failed."""
        try:
            done = self.run(argv, cwd=folder, capture_output=True, text=True, timeout=timeout,
                            umask=0o077, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise errors.CloudError(f"{what} failed: it took more than {timeout:g} s",
                                    "check that this machine is not short of disk space or memory",
                                    details={"argv": argv}) from exc
        except OSError as exc:
            raise errors.CloudError(f"{what} failed: {exc}", INSTALL_HINT) from exc
        if done.returncode != 0:
            said = (done.stderr or done.stdout or "").strip()[-1500:]
            raise errors.CloudError(f"{what} failed (exit {done.returncode}): {said}",
                                    qemu_hint(said), details={"argv": argv})

    def wait(self, server: Server, resolved: Resolved, timeout: float, ledger: Ledger) -> Server:
        folder = self.folder(server.name)
        waited = 0.0
        settle = min(self.settle, timeout)
        while True:
            doc = self.read_state(folder)
            if not is_our_qemu(doc.get("pid"), folder, self.proc):
                tail = self.console_log(self.record(folder, doc), lines=20)
                raise errors.CloudError(
                    f"qemu for {server.name} exited while starting",
                    "last console lines:\n" + (tail or "(the console is empty)"),
                    details={"server_id": server.id},
                )
            if waited >= settle:
                if resolved is not None:  # None: started again after a snapshot
                    local_volumes.mark_used(self.volumes_root, resolved.volumes, server.name)
                return self.record(folder, doc)
            self.sleep(0.25)
            waited += 0.25

    def set_metadata(self, server: Server, values: dict[str, str]) -> Server:
        folder = self.folder(server.name)
        doc = self.read_state(folder)
        doc["metadata"] = {**(doc.get("metadata") or {}), **{META + k: v for k, v in values.items()}}
        self.write_state(folder, doc)
        return self.record(folder, doc)

    def reboot(self, server: Server) -> None:
        """Reset the guest (a power cycle; the disk and the forwarded ports stay)."""
        qmp(self.folder(server.name), "system_reset")

    def sizes(self, specs: list[LaunchSpec]) -> list[Size]:
        """Each launch's CPUs and memory (--flavor) and its image's disk."""
        return [Size(f.name, f.cpus, f.memory_mb,
                     -(-resolve_image(s.cloud.image, self.images).virtual_size // 2**30))
                for s in specs for f in [parse_flavor(s.cloud.flavor)]]

    def stop(self, server: Server) -> Server:
        """The ACPI power button, and qemu's exit waited for (see snapshot.shut_down)."""
        folder = self.folder(server.name)
        local_snapshot.shut_down(folder, self.read_state(folder).get("pid"), proc=self.proc,
                                 sleep=self.sleep)
        return self.record(folder, self.read_state(folder))

    def start(self, server: Server) -> Server:
        """qemu again with the server's recorded command line: its disk and volumes,
        and its forwarded ports unless another program took one meanwhile."""
        folder = self.folder(server.name)
        if not is_our_qemu(self.read_state(folder).get("pid"), folder, self.proc):
            local_snapshot.start_again(self, server.name)
        return self.record(folder, self.read_state(folder))

    # -- reading -------------------------------------------------------------------

    # The server's state (server.json), for this module and snapshot: read_state,
    # write_state, record (the Server it describes), start_qemu, run_tool.
    read_state = staticmethod(state.read_state)
    write_state = staticmethod(state.write_state)

    def record(self, folder: Path, doc: dict) -> Server:
        """The Server a server.json describes, its state read from its qemu process."""
        return state.record(folder, doc, self.proc)

    def list_owned(self) -> list[Server]:
        servers = []
        for folder in state.folders(self.root):
            try:
                servers.append(self.record(folder, self.read_state(folder)))
            except errors.VmbinderError as exc:
                servers.append(state.broken(folder, exc))
        return servers

    def get(self, name_or_id: str) -> Server:
        return find_owned(self.list_owned(), name_or_id)  # names are folder names: unique

    def console_log(self, server: Server, lines: int | None = None) -> str:
        return redact_token(console_tail(self.folder(server.name) / CONSOLE, lines), server)

    def ssh_target(self, server: Server) -> SshTarget:
        """The guest's port 22, forwarded to vmbinder:ssh-port on this machine's loopback."""
        port = server.meta("ssh-port")
        if not port:
            raise errors.BadRequest(f"{server.name} records no forwarded SSH port",
                                    f"launch it again: vmbinder delete {server.name}")
        return SshTarget(LOOPBACK, int(port), server.meta("login-user"))

    # -- volumes -------------------------------------------------------------------

    def volumes(self) -> list[Volume]:
        return local_volumes.listed(self.volumes_root, self.root)

    def create_volume(self, name: str, size_gb: int, *, from_dir: str | None = None) -> Volume:
        """An empty qcow2 disk, or (from_dir) an ext4 filesystem of that folder's files."""
        return local_volumes.create(self, name, size_gb, from_dir)

    def delete_volume(self, volume: Volume) -> list[Removed]:
        return local_volumes.delete(self.volumes_root, volume)

    # -- snapshots -----------------------------------------------------------------

    def snapshot(self, server: Server, name: str, properties: dict[str, str],
                 ledger: Ledger) -> Snapshot:
        """Power the guest off, flatten its disk into the image folder <images>/<name>,
        start it again with the same command line (see snapshot)."""
        return local_snapshot.take(self, server, name, properties, ledger)

    def snapshots(self, properties: dict[str, str]) -> list[Snapshot]:
        return local_snapshot.find(self.images, properties)

    def delete_snapshot(self, snapshot: Snapshot) -> list[Removed]:
        return local_snapshot.delete(snapshot)

    def preflight(self, specs: list[LaunchSpec]) -> list:
        """Refuse a batch whose servers' memory is more than this machine has free."""
        need = sum(parse_flavor(s.cloud.flavor).memory_mb for s in specs)
        free = _available_mb(self.proc)
        if free is not None and need > free:
            raise errors.QuotaExceeded(
                f"{len(specs)} local servers need {need} MB of memory and this machine has "
                f"{free} MB available", "use fewer seats or a smaller --flavor (such as 1c1g)")
        return []

    # -- deleting ------------------------------------------------------------------

    def delete(self, server: Server) -> list[Removed]:
        folder = self.folder(server.name)
        removed = []
        try:
            pid = self.read_state(folder).get("pid")
        except errors.VmbinderError:
            pid = read_pid(folder)
        if stop(pid, folder, proc=self.proc, sleep=self.sleep):
            removed.append(Removed("qemu process", str(pid), server.name))
        state.remove_or_fail(folder, "state folder", str(folder))
        removed.append(Removed("server", server.id, server.name))
        return removed


def login_user(image: Path) -> str | None:
    """The login user of an image folder made by `vmbinder image build` (or a
    snapshot of one): Debian's cloud-init makes `debian`. None for a plain cloud
    image file, which does not say."""
    try:
        distro = str(read_image_file(image).get("distro") or "") if image.is_dir() else ""
    except ImageFileError:
        return None
    return "debian" if distro.startswith("debian") else None


def _available_mb(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None

