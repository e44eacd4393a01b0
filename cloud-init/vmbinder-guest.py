#!/usr/bin/env python3
"""vmbinder's guest bootstrap: idempotent steps that detect before they act.

    vmbinder-guest.py run            every step, in order (cloud-init runs this)
    vmbinder-guest.py serve-status   the status page and JSON, behind Caddy

Reads /etc/vmbinder/launch.json (written by cloud-init, mode 0600), logs fully
to /var/log/vmbinder/, and writes one machine-readable phase line per step to
the console. Every external command is run from an argument list: no value of
the launch document is ever interpreted by a shell. Running it again, or
rebooting, ends in the same state: each step checks before it acts, and the
services it installs are enabled in systemd.
"""

import hashlib
import html
import json
import os
import re
import subprocess
import sys
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


LAUNCH = "/etc/vmbinder/launch.json"
LOG_DIR = "/var/log/vmbinder"
STATE = "/var/lib/vmbinder/status.json"
VENV = "/opt/vmbinder/repo2docker"
R2D_CONFIG = "/etc/vmbinder/repo2docker_config.py"
ENV_FILE = "/etc/vmbinder/jupyter.env"
WORK_DIR = "/srv/vmbinder/work"
CADDYFILE = "/etc/caddy/Caddyfile"
UNIT_DIR = "/etc/systemd/system"
JUPYTER = os.environ.get("VMBINDER_GUEST_JUPYTER", "127.0.0.1:8888")
STATUS = "127.0.0.1:8081"
PHASE_PREFIX = "VMBINDER-PHASE "
#: Which repo2docker content providers a source kind needs. Only those are
#: enabled: the Dataverse provider downloads a list from the internet before it
#: matches anything, which fails on restricted networks.
PROVIDERS = {
    "git": ["Git"], "gist": ["Git"], "zenodo": ["Zenodo"], "figshare": ["Figshare"],
    "dataverse": ["Dataverse"], "hydroshare": ["Hydroshare"], "swh": ["Swhid"],
    "ckan": ["CKAN"], "doi": ["Zenodo", "Figshare", "Hydroshare", "Dataverse"],
}
#: Paths probed after the build, and the interface each one proves.
INTERFACES = {"tree": "tree", "lab": "lab", "rstudio": "rstudio/", "shiny": "shiny/",
              "nteract": "nteract"}


# -- reporting ---------------------------------------------------------------------

def log(message):
    os.makedirs(at(LOG_DIR), exist_ok=True)
    with open(at(LOG_DIR + "/guest.log"), "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}\n")


def read_state():
    try:
        with open(at(STATE)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def write_state(**changes):
    state = {**read_state(), **changes, "updated": time.time()}
    os.makedirs(os.path.dirname(at(STATE)), exist_ok=True)
    tmp = at(STATE) + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(state, fh)
    os.replace(tmp, at(STATE))
    return state


def console(line):
    for path in ("/dev/console", "/dev/ttyS0"):
        try:
            with open(at(path), "a") as tty:
                tty.write(line + "\n")
            return
        except OSError:
            continue


def phase(name, status, **extra):
    """One JSON line per step on the console and in the state file."""
    doc = {"phase": name, "status": status, **extra}
    state = write_state(**doc)
    doc["elapsed"] = round(time.time() - state.setdefault("started", time.time()))
    line = PHASE_PREFIX + json.dumps(doc, sort_keys=True)
    log(line)
    console(line)


def run(argv, **kwargs):
    """Run a command, its output appended to the commands log; raise on failure."""
    log("run: " + " ".join(argv[:4]) + (" ..." if len(argv) > 4 else ""))
    os.makedirs(at(LOG_DIR), exist_ok=True)
    with open(at(LOG_DIR + "/commands.log"), "a") as out:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True, **kwargs)


def ok(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
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


def apt_install(*packages, target=None):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env)
    argv = ["apt-get", "install", "-y", "--no-install-recommends"]
    if target:
        argv += ["-t", target]
    run(argv + list(packages), env=env)


def ensure_trust(doc):
    """Extra CA certificates (institutional TLS inspection), for apt, pip and Docker."""
    changed = False
    for i, pem in enumerate(doc.get("ca_certs") or []):
        changed |= write(f"/usr/local/share/ca-certificates/vmbinder-{i}.crt", pem)
    if changed:
        run(["update-ca-certificates"])
    return "updated" if changed else "nothing to do"


def ensure_mirrors(doc):
    changed = False
    if doc.get("apt_mirror"):
        distro, _, suite = os_release()
        suite = suite or "stable"
        components = "main universe" if distro == "ubuntu" else "main"
        changed |= write("/etc/apt/sources.list.d/vmbinder-mirror.sources",
                         f"Types: deb\nURIs: {doc['apt_mirror']}\nSuites: {suite} {suite}-updates\n"
                         f"Components: {components}\n")
    pip = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
    if doc.get("pip_index_url"):
        pip.append(f"index-url = {doc['pip_index_url']}")
    changed |= write("/etc/pip.conf", "\n".join(pip) + "\n")
    return "updated" if changed else "nothing to do"


def caddyfile(doc):
    """Caddy in front: HTTPS on the DNS name, status page while Jupyter is not up."""
    host = doc.get("hostname") or ""
    tls = doc.get("tls", "acme")
    if not host and doc.get("public_ip"):
        host = doc["public_ip"].replace(".", "-").replace(":", "-") + ".sslip.io"
    site = f"http://{host or ':80'}" if tls == "off" else (host or "localhost")
    lines = [site + " {"]
    if tls == "internal":
        lines.append("\ttls internal")
    lines += [
        "\thandle /vmbinder/* {",
        f"\t\treverse_proxy {STATUS}",
        "\t}",
        "\thandle {",
        f"\t\treverse_proxy {JUPYTER}",
        "\t}",
        # Only errors inside Caddy land here (Jupyter not answering yet): show progress.
        "\thandle_errors {",
        "\t\trewrite * /vmbinder/page",
        f"\t\treverse_proxy {STATUS}",
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def unit(name, description, exec_start, after="network-online.target", extra=""):
    return write(f"{UNIT_DIR}/{name}", f"""[Unit]
Description={description}
After={after}
Wants=network-online.target

[Service]
Restart=always
RestartSec=3
{extra}ExecStart={exec_start}

[Install]
WantedBy=multi-user.target
""")


def ensure_proxy(doc):
    installed = "present"
    if not ok(["caddy", "version"]):
        apt_install("caddy")
        installed = "installed"
    script = os.path.abspath(__file__)
    changed = unit("vmbinder-status.service", "vmbinder status page",
                   f"/usr/bin/python3 {script} serve-status")
    changed |= write(CADDYFILE, caddyfile(doc))
    if changed or installed == "installed":
        run(["systemctl", "daemon-reload"])
        run(["systemctl", "enable", "--now", "vmbinder-status.service"])
        run(["systemctl", "enable", "caddy.service"])
        run(["systemctl", "restart", "caddy.service"])
    return installed


def ensure_docker(doc):
    if ok(["docker", "buildx", "version"]):
        return "present"
    distro, version, _ = os_release()
    if distro == "debian" and version == "12":
        # Debian 12 has no buildx: take Debian 13's, pinned low so nothing else moves.
        write("/etc/apt/preferences.d/vmbinder-trixie",
              "Package: *\nPin: release n=trixie\nPin-Priority: 100\n")
        write("/etc/apt/sources.list.d/vmbinder-trixie.sources", trixie_sources())
        apt_install("docker.io", "apparmor", "xz-utils", "git")
        apt_install("docker-buildx", target="trixie")
    else:
        apt_install("docker.io", "docker-buildx", "apparmor", "xz-utils", "git")
    run(["systemctl", "restart", "docker"])
    return "installed"


def trixie_sources():
    """The bookworm deb822 sources, with the suite changed to trixie."""
    try:
        with open(at("/etc/apt/sources.list.d/debian.sources")) as fh:
            text = fh.read()
        uri = re.search(r"^URIs:\s*(\S+)", text, re.M).group(1)
    except (OSError, AttributeError):
        uri = "http://deb.debian.org/debian"
    return f"Types: deb\nURIs: {uri}\nSuites: trixie\nComponents: main\n"


BASE_IMAGES = "/var/lib/vmbinder/base-images"


def ensure_base_images(doc):
    """Container images baked into the VM image as tarballs (no registry needed):
    each <tarball>.json beside its tarball says {"name", "tarball", "changes"}."""
    folder = at(BASE_IMAGES)
    if not os.path.isdir(folder):
        return "none baked"
    imported = []
    for entry in sorted(os.listdir(folder)):
        if not entry.endswith(".json"):
            continue
        with open(os.path.join(folder, entry)) as fh:
            spec = json.load(fh)
        if ok(["docker", "image", "inspect", spec["name"]]):
            continue
        argv = ["docker", "import"]
        for change in spec.get("changes", []):
            argv += ["--change", change]
        run(argv + [os.path.join(folder, spec["tarball"]), spec["name"]])
        imported.append(spec["name"])
    return ("imported " + ", ".join(imported)) if imported else "present"


def ensure_repo2docker(doc):
    exe = at(VENV + "/bin/repo2docker")
    want = doc["repo2docker_version"]
    if os.path.exists(exe):
        got = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
        if got == want:
            return "present"
    run(["python3", "-m", "venv", at(VENV)])
    run([at(VENV + "/bin/pip"), "install", f"jupyter-repo2docker=={want}"])
    return "installed"


def image_name(doc):
    """Named after what is built, not after the server: a server started from a
    snapshot of another one finds the environment already there and skips the build."""
    what = json.dumps([doc.get(k) for k in ("kind", "repo", "ref", "subdir", "repo2docker_version")])
    return "vmbinder-env:" + hashlib.sha256(what.encode()).hexdigest()[:16]


def ensure_image(doc):
    image = image_name(doc)
    if ok(["docker", "image", "inspect", image]):
        return "present"
    providers = ", ".join(f"contentproviders.{p}" for p in PROVIDERS.get(doc.get("kind"), ["Git"]))
    write(R2D_CONFIG, "from repo2docker import contentproviders\n"
                      f"c.Repo2Docker.content_providers = [{providers}]\n")
    argv = [at(VENV + "/bin/repo2docker"), "--config", at(R2D_CONFIG), "--no-run", "--json-logs",
            "--user-id", "1000", "--user-name", "jovyan", "--image-name", image]
    if doc.get("ref"):
        argv.append("--ref=" + doc["ref"])
    if doc.get("subdir"):
        argv.append("--subdir=" + doc["subdir"])
    argv += ["--", doc["repo"]]
    run(argv)
    inspect = subprocess.run(["docker", "image", "inspect", "--format", "{{json .}}", image],
                             capture_output=True, text=True)
    built = {}
    try:
        info = json.loads(inspect.stdout) if inspect.returncode == 0 else {}
        built = {"image_id": info.get("Id"), "labels": info.get("Config", {}).get("Labels") or {}}
    except (ValueError, AttributeError):
        log("could not read the built image's id and labels")
    write_state(built=built, commit=resolved_commit())
    return "built"


def resolved_commit():
    """The commit git checked out, from the build log ("HEAD is now at <sha> ...")."""
    try:
        with open(at(LOG_DIR + "/commands.log")) as fh:
            found = re.findall(r"HEAD is now at ([0-9a-f]{7,40})", fh.read())
    except OSError:
        return None
    return found[-1] if found else None


def ensure_service(doc):
    os.makedirs(at(WORK_DIR), exist_ok=True)
    try:
        os.chown(at(WORK_DIR), 1000, 1000)
    except PermissionError:
        pass
    changed = write(ENV_FILE, f"JUPYTER_TOKEN={doc['token']}\n", mode=0o600)
    changed |= unit(
        "vmbinder-env.service", "vmbinder environment",
        "/usr/bin/docker run --rm --name vmbinder-env --env-file " + ENV_FILE
        + f" -p {JUPYTER}:8888 -v {WORK_DIR}:/home/jovyan/work " + image_name(doc)
        + " jupyter notebook --ip 0.0.0.0 --port 8888 --no-browser"
        + " --ServerApp.trust_xheaders=True",
        after="docker.service", extra="ExecStartPre=-/usr/bin/docker rm -f vmbinder-env\n",
    )
    if changed:
        run(["systemctl", "daemon-reload"])
        run(["systemctl", "enable", "vmbinder-env.service"])
        run(["systemctl", "restart", "vmbinder-env.service"])
    wait_for_jupyter(doc)
    return "running"


def jupyter_get(path, token, timeout=5):
    url = f"http://{JUPYTER}/{path}?" + urllib.parse.urlencode({"token": token})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_for_jupyter(doc, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if jupyter_get("api/status", doc["token"]) == 200:
            return
        time.sleep(2)
    raise TimeoutError("Jupyter did not answer on " + JUPYTER)


def detect_interfaces(doc):
    found = [key for key, path in INTERFACES.items() if jupyter_get(path, doc["token"]) == 200]
    write_state(interfaces=found)
    return ",".join(found)


STEPS = (("trust", ensure_trust), ("mirrors", ensure_mirrors), ("proxy", ensure_proxy),
         ("docker", ensure_docker), ("base-images", ensure_base_images),
         ("repo2docker", ensure_repo2docker), ("build", ensure_image),
         ("service", ensure_service), ("interfaces", detect_interfaces))


def run_all(doc):
    state = read_state()
    # A reboot keeps the start time; a server started from another's snapshot
    # (another name in the launch document) starts its own clock.
    fresh = state.get("server") != doc["name"]
    write_state(started=time.time() if fresh else state.get("started") or time.time(),
                ready=False, server=doc["name"])
    durations = {}  # seconds per step in this run: what a boot spends where
    for name, step in STEPS:
        phase(name, "started")
        t0 = time.time()
        try:
            result = step(doc)
        except (OSError, subprocess.CalledProcessError, TimeoutError, ValueError) as exc:
            phase(name, "failed", error=type(exc).__name__)
            return 1
        durations[name] = round(time.time() - t0, 1)
        write_state(durations=durations)
        phase(name, "done", result=result)
    write_state(ready=True)
    phase("ready", "done")
    return 0


# -- status page -------------------------------------------------------------------

PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>vmbinder: {phase}</title></head><body style="font-family:sans-serif;max-width:50em;margin:2em auto">
<h1>Your environment is being prepared</h1><p>Step: <b>{phase}</b> ({status}), {elapsed} s so far.
This page reloads itself and hands over to Jupyter when it is ready.</p>{tail}</body></html>"""


def log_tail(lines=40):
    try:
        with open(at(LOG_DIR + "/commands.log"), errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


class StatusHandler(BaseHTTPRequestHandler):
    token = ""

    def authorised(self):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        return query.get("token", [""])[0] == self.token and bool(self.token)

    def send(self, code, body, kind):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        state = read_state()
        elapsed = round(time.time() - state.get("started", time.time()))
        path = urllib.parse.urlsplit(self.path).path
        if path == "/vmbinder/status.json":
            if not self.authorised():
                return self.send(403, json.dumps({"error": "token required"}), "application/json")
            keys = ("phase", "status", "ready", "interfaces", "commit", "built", "error",
                    "durations")
            doc = {k: state.get(k) for k in keys} | {"elapsed": elapsed}
            return self.send(200, json.dumps(doc), "application/json")
        tail = ""
        if self.authorised():
            tail = "<h2>Log</h2><pre>" + html.escape(log_tail()) + "</pre>"
        page = PAGE.format(phase=html.escape(str(state.get("phase", "starting"))),
                           status=html.escape(str(state.get("status", ""))), elapsed=elapsed, tail=tail)
        self.send(503 if not state.get("ready") else 200, page, "text/html; charset=utf-8")

    def log_message(self, fmt, *args):
        pass


def serve_status(doc):
    StatusHandler.token = doc["token"]
    host, port = STATUS.split(":")
    server = ThreadingHTTPServer((host, int(port)), StatusHandler)

    def re_emit():  # the console API returns only a tail: repeat the newest phase
        while True:
            time.sleep(60)
            state = read_state()
            if state.get("phase"):
                console(PHASE_PREFIX + json.dumps(
                    {k: state.get(k) for k in ("phase", "status")}, sort_keys=True))

    threading.Thread(target=re_emit, daemon=True).start()
    server.serve_forever()


def main(argv):
    commands = {"run": run_all, "serve-status": serve_status}
    if len(argv) != 2 or argv[1] not in commands:
        print("usage: vmbinder-guest.py run|serve-status", file=sys.stderr)
        return 2
    with open(at(LAUNCH)) as fh:
        doc = json.load(fh)
    return commands[argv[1]](doc)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
