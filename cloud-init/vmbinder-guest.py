#!/usr/bin/env python3
"""vmbinder's guest bootstrap: idempotent steps that detect before they act.

Reads /etc/vmbinder/launch.json (written by cloud-init, mode 0600), logs fully
to /var/log/vmbinder/, and writes one machine-readable phase line per step to
the console. Every external command is run from an argument list: no value
from the launch document is ever interpreted by a shell.
"""

import json
import os
import subprocess
import sys
import time

LAUNCH = "/etc/vmbinder/launch.json"
LOG_DIR = "/var/log/vmbinder"
STATE_DIR = "/var/lib/vmbinder"
VENV = "/opt/vmbinder/repo2docker"
ENV_FILE = "/etc/vmbinder/jupyter.env"
WORK_DIR = "/srv/vmbinder/work"
UNIT = "/etc/systemd/system/vmbinder-env.service"
PHASES = ("docker", "repo2docker", "build", "service", "ready")


def log(message):
    os.makedirs(LOG_DIR, exist_ok=True)
    with open(os.path.join(LOG_DIR, "guest.log"), "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}\n")


def phase(name, status, **extra):
    """One JSON line per step on the console; the CLI greps for the prefix."""
    line = "VMBINDER-PHASE " + json.dumps({"phase": name, "status": status, **extra})
    log(line)
    for path in ("/dev/console", "/dev/ttyS0"):
        try:
            with open(path, "w") as tty:
                tty.write(line + "\n")
            break
        except OSError:
            continue
    os.makedirs(STATE_DIR, exist_ok=True)
    with open(os.path.join(STATE_DIR, "phase.json"), "w") as fh:
        json.dump({"phase": name, "status": status, **extra}, fh)


def run(argv, **kwargs):
    log("run: " + " ".join(argv[:3]) + (" ..." if len(argv) > 3 else ""))
    with open(os.path.join(LOG_DIR, "commands.log"), "a") as out:
        return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True, **kwargs)


def ok(argv):
    return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def ensure_docker(doc):
    if ok(["docker", "buildx", "version"]):
        return "present"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update"], env=env)
    for buildx in ("docker-buildx", "docker-buildx-plugin"):
        if ok(["apt-cache", "show", buildx]):
            break
    run(["apt-get", "install", "-y", "docker.io", buildx, "apparmor", "xz-utils"], env=env)
    run(["systemctl", "restart", "docker"])
    return "installed"


def ensure_repo2docker(doc):
    exe = os.path.join(VENV, "bin", "repo2docker")
    want = doc["repo2docker_version"]
    if os.path.exists(exe):
        got = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
        if got == want:
            return "present"
    run(["python3", "-m", "venv", VENV])
    run([os.path.join(VENV, "bin", "pip"), "install", f"jupyter-repo2docker=={want}"])
    return "installed"


def image_name(doc):
    return f"vmbinder-{doc['name']}:latest"


def ensure_image(doc):
    if ok(["docker", "image", "inspect", image_name(doc)]):
        return "present"
    argv = [os.path.join(VENV, "bin", "repo2docker"), "--no-run", "--json-logs",
            "--user-id", "1000", "--user-name", "jovyan", "--image-name", image_name(doc)]
    if doc.get("ref"):
        argv.append("--ref=" + doc["ref"])
    if doc.get("subdir"):
        argv.append("--subdir=" + doc["subdir"])
    argv += ["--", doc["repo"]]
    run(argv)
    return "built"


def ensure_service(doc):
    os.makedirs(WORK_DIR, exist_ok=True)
    os.chown(WORK_DIR, 1000, 1000)
    fd = os.open(ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"JUPYTER_TOKEN={doc['token']}\n")
    unit = f"""[Unit]
Description=vmbinder environment
After=docker.service
Requires=docker.service

[Service]
Restart=always
ExecStartPre=-/usr/bin/docker rm -f vmbinder-env
ExecStart=/usr/bin/docker run --rm --name vmbinder-env --env-file {ENV_FILE} \
 -p 127.0.0.1:8888:8888 -v {WORK_DIR}:/home/jovyan/work {image_name(doc)} \
 jupyter lab --ip 0.0.0.0 --port 8888 --no-browser
ExecStop=/usr/bin/docker stop vmbinder-env

[Install]
WantedBy=multi-user.target
"""
    with open(UNIT, "w") as fh:
        fh.write(unit)
    run(["systemctl", "daemon-reload"])
    run(["systemctl", "enable", "--now", "vmbinder-env.service"])
    return "running"


STEPS = (("docker", ensure_docker), ("repo2docker", ensure_repo2docker),
         ("build", ensure_image), ("service", ensure_service))


def main(argv):
    if argv[1:] != ["run"]:
        print("usage: vmbinder-guest.py run", file=sys.stderr)
        return 2
    with open(LAUNCH) as fh:
        doc = json.load(fh)
    for name, step in STEPS:
        phase(name, "started")
        try:
            result = step(doc)
        except (OSError, subprocess.CalledProcessError) as exc:
            phase(name, "failed", error=type(exc).__name__)
            return 1
        phase(name, "done", result=result)
    phase("ready", "done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
