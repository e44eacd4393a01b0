"""CLI cold start: `vmbinder --help` against `openstack --help`, as a ratio in one run.

Each figure is the median of --runs fresh processes (wall time from the start of
the process to its exit; no cloud is contacted). `openstack` comes from
.venv-bench (bench/setup makes it, on the same openstacksdk as vmbinder).

    .venv/bin/python bench/cli_startup.py [--runs 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENSTACK = ROOT / ".venv-bench" / "bin" / "openstack"
VMBINDER = [sys.executable, "-m", "vmbinder"]


def timed(argv: list[str], runs: int, env: dict) -> dict:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True, timeout=120)
        seconds.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    subprocess.run([str(ROOT / "bench" / "setup")], check=True)
    # No cloud configuration is read for --help; keep the user's out of it anyway.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    figures = {
        "vmbinder --help": timed([*VMBINDER, "--help"], args.runs, env),
        "vmbinder launch --help": timed([*VMBINDER, "launch", "--help"], args.runs, env),
        "vmbinder workshop --help": timed([*VMBINDER, "workshop", "--help"], args.runs, env),
        "openstack --help": timed([str(OPENSTACK), "--help"], args.runs, env),
        "python -c pass": timed([sys.executable, "-c", "pass"], args.runs, env),
    }
    ratio = figures["vmbinder --help"]["median_s"] / figures["openstack --help"]["median_s"]
    out = {"runs": args.runs, "figures": figures, "ratio_vmbinder_to_openstack": round(ratio, 3)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for what, doc in figures.items():
        print(f"{what:26} median {doc['median_s']:.3f} s  min {doc['min_s']:.3f} s")
    print(f"vmbinder --help / openstack --help: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
