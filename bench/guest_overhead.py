"""Guest overhead on the local target: stock against baked guest images.

For each image, serves examples/local-repo from this machine, runs
`vmbinder --cloud local launch` on it, and measures from the start of the
command until

  - the URL first answers (the status page, HTTP 503 while building),
  - the command returns with the URLs (Jupyter answering with the token),

then reads the guest's own seconds per step from /vmbinder/status.json and
deletes the server. Guest overhead = launch-to-Jupyter minus repo2docker's
build step: what vmbinder and the image cost on top of building the
repository. A stock image installs Docker, buildx, Caddy and repo2docker in the
guest; a baked image has them.

    sudo .venv/bin/python bench/guest_overhead.py            # stock and baked
    sudo .venv/bin/python bench/guest_overhead.py --only baked --json

Images are taken from ~/.cache/vmbinder/images/debian-12-{stock,baked} and
built there (with --base-container, which examples/local-repo needs) when
missing or without the base image: about 4 and 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmbinder import lifecycle
from vmbinder.https import unverified_context
from vmbinder.images.folder import images_dir
from vmbinder.localrepo import serve
from vmbinder.providers.local import LocalProvider
from vmbinder.readiness import fetch_json, http_probe

BASE = "vmbinder/base:bookworm"
#: Steps a stock image spends installing what a baked image already has.
INSTALL_STEPS = ("docker", "proxy", "repo2docker")


def ensure_image(kind: str) -> Path:
    folder = images_dir(os.environ) / f"debian-12-{kind}"
    info = folder / "image.json"
    if not (info.exists() and BASE in info.read_text()):
        subprocess.run([sys.executable, "-m", "vmbinder", "image", "build", f"--{kind}",
                        "--base-container", "--output", str(folder)], check=True)
    return folder


def measure(kind: str, image: Path, state: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "VMBINDER_"))}
    env["XDG_STATE_HOME"] = str(state)
    name = f"bench-{kind}-{time.strftime('%H%M%S')}"
    server_json = state / "vmbinder" / "local" / name / "server.json"
    with serve(ROOT / "examples" / "local-repo") as url:
        t0 = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "vmbinder", "--cloud", "local", "launch", "--name", name,
             "--image", str(image), "--format", "json", "--timeout", "5400", url],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first_answer = None
        while proc.poll() is None:
            if first_answer is None and server_json.exists():
                port = json.loads(server_json.read_text())["metadata"].get("vmbinder:https-port")
                # Any HTTP answer counts: the status page says 503 while building (no
                # token is sent, so its certificate is not checked here).
                if port and http_probe(f"https://localhost:{port}/",
                                       context=unverified_context())()[1].startswith("HTTP"):
                    first_answer = time.time() - t0
            time.sleep(2)
        out, err = proc.communicate()
        ready = time.time() - t0
    try:
        if proc.returncode != 0:
            raise SystemExit(f"launch on {image} failed ({proc.returncode}):\n{err[-3000:]}")
        doc = json.loads(out)
        lab = doc["urls"]["lab"]
        base, token = lab.split("/lab?")[0], lab.rsplit("token=", 1)[1]
        server = LocalProvider(env=env).get(name)
        status = fetch_json(f"{base}/vmbinder/status.json?token={token}",
                            context=lifecycle.trust(server), timeout=30)
        if not status.get("ready"):
            raise SystemExit(f"status.json did not say ready: {status}")
        meta = json.loads(server_json.read_text())
    finally:
        subprocess.run([sys.executable, "-m", "vmbinder", "--cloud", "local", "delete", name],
                       check=False, env=env, capture_output=True, timeout=300)
    steps = status["durations"]
    return {
        "image": kind, "path": str(image), "accel": meta.get("accel"),
        "flavor": meta.get("flavor"),
        "first_answer_s": round(first_answer, 1) if first_answer is not None else None,
        "ready_s": round(ready, 1),
        "build_s": steps["build"],
        "overhead_s": round(ready - steps["build"], 1),
        "install_s": round(sum(steps.get(s, 0) for s in INSTALL_STEPS), 1),
        "base_import_s": steps.get("base-images"),
        "steps_s": steps,
        "boot_to_script_s": round(ready - sum(steps.values()), 1),
    }


def table(rows: list[dict]) -> str:
    cols = [("image", "image"), ("first_answer_s", "URL answers (s)"),
            ("ready_s", "Jupyter answers (s)"), ("build_s", "repo2docker build (s)"),
            ("overhead_s", "overhead (s)"), ("boot_to_script_s", "boot, cloud-init, polling (s)"),
            ("install_s", "install docker/caddy/r2d (s)"), ("base_import_s", "base import (s)")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + " --- |" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("stock", "baked"), action="append")
    parser.add_argument("--json", action="store_true", help="print JSON rows, not a table")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: images are built with debootstrap")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vmbinder-bench-") as state:
        for kind in args.only or ("stock", "baked"):
            image = ensure_image(kind)
            print(f"[bench] launching on {image}", file=sys.stderr)
            rows.append(measure(kind, image, Path(state)))
            print(f"[bench] {json.dumps(rows[-1])}", file=sys.stderr)
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
