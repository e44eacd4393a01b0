"""The CLI's --help texts and the outputs of commands that need no cloud, byte
for byte as recorded in golden/cli.txt. A change to the CLI's words is a
deliberate act: record again with `python -m tests.unit.test_cli_golden` and
read the diff.

Each case runs `python -m vmbinder` in a fresh home with no OpenStack
configuration, 100 columns wide; the home's path is written <home>, the
project's <root>, and a progress line's seconds <t>. The one
thing left out is the user-data a dry run renders (the launch document's
contents and size), which is not the CLI's text."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "cli.txt"
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "<root>/examples/workshop.yaml"

HELP = [
    [], ["launch"], ["list"], ["status"], ["url"], ["delete"],
    ["image"], ["image", "build"], ["image", "upload"],
    ["workshop"], ["workshop", "check"], ["workshop", "up"], ["workshop", "status"],
    ["workshop", "roster"], ["workshop", "down"], ["workshop", "stop"], ["workshop", "reset"],
    ["reap"], ["volumes"], ["volumes", "create"], ["volumes", "delete"],
]
BAD_WORKSHOP = "name: Bad Name\nsource: https://github.com/binder-examples/requirements\nseats: 0\n"

CASES = [
    *[[*path, "--help"] for path in HELP],
    ["-h"], ["--version"], [], ["nosuchcommand"], ["launch"], ["launch", "--tls", "maybe", "x"],
    ["--cloud", "local", "list"],
    ["--cloud", "local", "list", "--format", "json"],
    ["--cloud", "local", "list", "--format", "value"],
    ["--cloud", "local", "status", "nope"],
    ["--cloud", "local", "url", "nope"],
    ["--cloud", "local", "url", "nope", "--ui", "rstudio", "--format", "json"],
    ["--cloud", "local", "delete", "nope"],
    ["--cloud", "local", "delete", "nope", "--format", "json"],
    ["--cloud", "local", "launch", "not a source"],
    ["--cloud", "local", "launch", "https://example.org/no/such/kind"],
    ["--cloud", "local", "launch", "--name", "Bad_Name", "https://github.com/binder-examples/requirements"],
    ["--cloud", "local", "launch", "--public-key", "<home>/missing.pub",
     "https://github.com/binder-examples/requirements"],
    *[["--cloud", "local", "launch", option, "yes", "https://github.com/binder-examples/requirements"]
      for option in ("--config-drive", "--floating-ip")],
    *[["--cloud", "local", "launch", "--dry-run", "--name", "golden", *extra, "--format", fmt,
       "https://mybinder.org/v2/gh/binder-examples/requirements/HEAD?urlpath=lab/tree/index.ipynb"]
      for fmt in ("table", "json") for extra in ([], ["--tls", "off", "--hostname", "lab.example.org"])],
    ["launch", "--dry-run", "--name", "golden", "--format", "table", "10.5281/zenodo.3242074"],
    ["--cloud", "local", "volumes"],
    ["--cloud", "local", "volumes", "--format", "json"],
    ["--cloud", "local", "volumes", "delete", "nope"],
    ["--cloud", "local", "launch", "--volume", "0", "https://github.com/binder-examples/requirements"],
    ["--cloud", "local", "image", "upload", "somewhere"],
    ["image", "build", "--distro", "debian-11"],
    ["image", "upload", "somewhere"],
    *[["workshop", "check", EXAMPLE, "--format", fmt] for fmt in ("table", "json", "value")],
    ["workshop", "check", "<home>/bad.yaml"],
    ["workshop", "check", "<home>/missing.yaml"],
    ["--cloud", "local", "workshop", "status", EXAMPLE],
    ["--cloud", "local", "workshop", "status", EXAMPLE, "--format", "json"],
    ["--cloud", "local", "workshop", "roster", EXAMPLE, "--format", "csv"],
    ["--cloud", "local", "workshop", "down", EXAMPLE, "--format", "json"],
]


def run_case(args: list[str], home: Path) -> str:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OS_", "VMBINDER_", "XDG_")) and k not in ("COLUMNS", "LINES")}
    # GIT_ALLOW_PROTOCOL: git refuses to ask https remotes (as in tests/conftest.py).
    env.update(HOME=str(home), COLUMNS="100", TERM="dumb", NO_COLOR="1", PYTHONHASHSEED="0",
               GIT_ALLOW_PROTOCOL="file:git")
    argv = [a.replace("<home>", str(home)).replace("<root>", str(ROOT)) for a in args]
    done = subprocess.run([sys.executable, "-m", "vmbinder", *argv], cwd=home, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    out, err = (s.replace(str(home), "<home>").replace(str(ROOT), "<root>")
                for s in (done.stdout, done.stderr))
    err = re.sub(r"(?m)^( *)\d+\.\ds ", lambda m: " " * (len(m.group(0)) - 5) + "<t>s ", err)
    if "--dry-run" in args:
        out = _without_user_data(out, args)
    return (f"$ vmbinder {' '.join(args)}\n[exit {done.returncode}]\n"
            f"--- stdout\n{out}--- stderr\n{err}")


def _without_user_data(out: str, args: list[str]) -> str:
    if "json" in args:
        doc = json.loads(out)
        for key in ("user_data", "user_data_b64_bytes"):
            doc[key] = "<left out>" if key in doc else doc.get(key)
        return json.dumps(doc, indent=2) + "\n"
    return "".join("user_data_b64_bytes  <left out>\n" if line.startswith("user_data_b64_bytes")
                   else line + "\n" for line in out.splitlines())


def render_all(scratch: Path) -> str:
    parts = []
    for args in CASES:
        home = scratch / "home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        (home / "bad.yaml").write_text(BAD_WORKSHOP)
        parts.append(run_case(args, home.resolve()))
    return "\n".join(parts)


@pytest.mark.parametrize("args", CASES, ids=[" ".join(a) or "(none)" for a in CASES])
def test_the_cli_says_what_it_said(args, tmp_path):
    recorded = GOLDEN.read_text().split("\n$ vmbinder ")
    recorded = [recorded[0].removeprefix("$ vmbinder ")] + recorded[1:]
    by_args = {chunk.split("\n", 1)[0]: "$ vmbinder " + chunk for chunk in recorded}
    key = " ".join(args)
    assert key in by_args, f"no recording of `vmbinder {key}`: record again (see the docstring)"
    home = tmp_path / "home"
    home.mkdir()
    (home / "bad.yaml").write_text(BAD_WORKSHOP)
    got = run_case(args, home.resolve())
    assert got.rstrip("\n") == by_args[key].rstrip("\n")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(render_all(Path(scratch)))
    print(f"recorded {len(CASES)} cases in {GOLDEN}")
