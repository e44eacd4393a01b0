"""Find and render the cloud-init templates, then check the result.

The launch document they carry is made by launchdoc.py."""

from __future__ import annotations

import ast
import base64
import gzip
import json
from functools import lru_cache
from importlib import resources

import jinja2
import yaml

from vmbinder import guestcontract, launchdoc
from vmbinder.errors import BadRequest
from vmbinder.spec import LaunchSpec

#: Nova refuses user_data longer than this once base64-encoded.
NOVA_USER_DATA_LIMIT = 65535
TEMPLATE = "user-data.yaml.j2"
#: The guest script in the package; cloud-init writes it to guestcontract.GUEST_SCRIPT_PATH.
GUEST_SCRIPT = "vmbinder_guest.py"


def _templates():
    return resources.files("vmbinder.cloud_init")


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: _templates().joinpath(name).read_text()),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )


def _gz_b64(text: str) -> str:
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


@lru_cache(maxsize=1)
def guest_script() -> str:
    """The guest script as the server gets it: the same code without its comments
    and docstrings (a third of the user-data Nova allows, kept for the values users
    add). Read it with them in the package: cloud-init/vmbinder_guest.py."""
    tree = ast.parse(_templates().joinpath(GUEST_SCRIPT).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return "#!/usr/bin/env python3\n" + ast.unparse(tree) + "\n"


def render(spec: LaunchSpec, public_ip: str | None = None, volumes=(),
           credential: dict | None = None, follow_address: bool = False) -> str:
    """volumes: the VolumeUse records of the server's volumes (launchdoc.volumes);
    credential: the server's own, for its care (launchdoc.care); follow_address:
    public_ip is a floating IP (launchdoc.site)."""
    guest = guest_script()
    text = _environment().get_template(TEMPLATE).render(
        vmbinder_version=spec.vmbinder_version,
        launch_path=guestcontract.LAUNCH_PATH,
        launch_json=json.dumps(launchdoc.document(spec, public_ip, volumes=volumes,
                                                  credential=credential,
                                                  follow_address=follow_address), sort_keys=True,
                               separators=(",", ":")),
        guest_script_path=guestcontract.GUEST_SCRIPT_PATH,
        guest_script_gz_b64=_gz_b64(guest),
    )
    check(text)
    return text


def b64_size(user_data: str) -> int:
    return len(base64.b64encode(user_data.encode()))


def check(user_data: str) -> None:
    """Parse the rendered text back and enforce Nova's size limit."""
    if not user_data.startswith("#cloud-config\n"):
        raise AssertionError("rendered user-data lost its #cloud-config header")
    doc = yaml.safe_load(user_data)
    if not isinstance(doc, dict) or "write_files" not in doc:
        raise AssertionError("rendered user-data is not a cloud-config mapping")
    size = b64_size(user_data)
    if size > NOVA_USER_DATA_LIMIT:
        raise BadRequest(
            f"the rendered user-data is {size} bytes once base64-encoded; "
            f"Nova accepts at most {NOVA_USER_DATA_LIMIT}",
            "shorten the values given on the command line (source, ref, subdir, open path, "
            "host name)",
        )
