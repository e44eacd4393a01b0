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
    assert doc["ref"] == "HEAD" and doc["open"] == "doc/tree/index.ipynb"


def test_shell_examples_parse():
    for script in EXAMPLES.glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_clouds_yaml_example_is_a_clouds_file():
    doc = yaml.safe_load((EXAMPLES / "clouds.yaml").read_text())
    assert doc["clouds"]["mycloud"]["auth"]["auth_url"].endswith("/v3")
