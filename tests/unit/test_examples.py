"""The examples in examples/ run as documented."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_dry_run_example_prints_the_resolved_badge():
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    out = subprocess.run(["bash", str(EXAMPLES / "dry-run.sh")], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    doc = json.loads(out)
    assert doc["repo"] == "https://github.com/binder-examples/requirements"
    assert doc["ref"] == "HEAD" and doc["open"] == "index.ipynb"


def test_shell_examples_parse():
    for script in EXAMPLES.glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_clouds_yaml_example_is_a_clouds_file():
    doc = yaml.safe_load((EXAMPLES / "clouds.yaml").read_text())
    assert doc["clouds"]["mycloud"]["auth"]["auth_url"].endswith("/v3")


def test_workshop_api_example_imports_and_prints_its_usage():
    res = subprocess.run([sys.executable, str(EXAMPLES / "workshop_api.py")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 1 and "workshop_api.py up examples/workshop.yaml" in res.stderr


def test_workshop_example_file_is_valid():
    from vmbinder.workshops.file import load

    ws = load(EXAMPLES / "workshop.yaml")
    assert ws.name == "genomics-101" and len(ws.seats) == 3
