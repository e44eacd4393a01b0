import base64
import gzip
import json

import pytest
import yaml

from vmbinder import cloudinit, errors
from vmbinder.sources import Source
from vmbinder.spec import make_spec

HOSTILE = [
    "x'; rm -rf / #",
    '"$(reboot)"',
    "`id`",
    "a\nruncmd: [reboot]",
    "{{ 7*7 }}",
    "%s %n",
    "ünïcødé ☃",
    "&anchor *alias !!python/object:os.system",
]


def launch_doc(user_data):
    doc = yaml.safe_load(user_data)
    files = {f["path"]: f for f in doc["write_files"]}
    return doc, json.loads(files["/etc/vmbinder/launch.json"]["content"]), files


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_reach_the_guest_as_data_only(value):
    # Source is built directly: vmbinder.sources refuses most of these, and the
    # renderer must be safe even for values that got past it.
    src = Source(repo=value, kind="git", ref=value, subdir=value, open=value, given=value)
    spec = make_spec(src, name="demo")
    text = cloudinit.render(spec, "203.0.113.9")
    doc, launch, files = launch_doc(text)
    assert launch["repo"] == launch["ref"] == launch["subdir"] == launch["open"] == value
    assert launch["public_ip"] == "203.0.113.9"
    assert launch["token"] == spec.token
    # nothing else in the document changed shape
    assert set(doc) == {"write_files", "runcmd"}
    assert doc["runcmd"] == [["python3", "/usr/local/lib/vmbinder/vmbinder-guest.py", "run"]]
    assert files["/etc/vmbinder/launch.json"]["permissions"] == "0600"


def test_guest_script_is_shipped_compressed_and_intact():
    """The same code as the package's, without comments and docstrings."""
    import ast

    spec = make_spec(Source("https://github.com/o/r", "git"), name="demo")
    _, _, files = launch_doc(cloudinit.render(spec))
    guest = files["/usr/local/lib/vmbinder/vmbinder-guest.py"]
    assert guest["encoding"] == "gz+b64"
    script = gzip.decompress(base64.b64decode(guest["content"])).decode()
    assert script.startswith("#!/usr/bin/env python3\n")
    source = cloudinit._templates().joinpath(cloudinit.GUEST_SCRIPT).read_text()
    assert '"""' not in script and "# --" not in script and len(script) < 0.8 * len(source)

    def code(text):  # every statement, docstrings left out
        tree = ast.parse(text)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        return ast.dump(tree)

    assert code(script) == code(source)
    compile(script, "vmbinder-guest.py", "exec")


def test_token_is_never_in_the_guest_script_or_runcmd():
    spec = make_spec(Source("https://github.com/o/r", "git"), name="demo")
    doc, launch, files = launch_doc(cloudinit.render(spec))
    assert spec.token not in json.dumps(doc["runcmd"])
    assert spec.token not in files["/usr/local/lib/vmbinder/vmbinder-guest.py"]["content"]
    assert len(spec.token) * 4 >= 128  # hex digits carry 4 bits each


def test_oversized_user_data_is_refused_with_the_numbers():
    text = "#cloud-config\nwrite_files: []\n# " + "x" * 50000 + "\n"
    with pytest.raises(errors.BadRequest) as info:
        cloudinit.check(text)
    assert "65535" in info.value.message


def test_rendered_size_is_well_under_novas_limit():
    """At most 55 % of Nova's limit for what every launch sends (the guest script,
    its care of idle servers and lifetimes included), so the values a user adds (CA
    certificates of about 2 KB each, a private CA's root) have over 29 KB."""
    spec = make_spec(Source("https://github.com/o/r", "git"), name="demo")
    assert cloudinit.b64_size(cloudinit.render(spec)) < cloudinit.NOVA_USER_DATA_LIMIT * 0.55
