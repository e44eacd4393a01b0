import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from vmbinder.commands import output
from vmbinder.commands.main import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def run(*args, **kw):
    runner = CliRunner()
    return runner.invoke(cli, list(args), catch_exceptions=False, **kw)


def test_dry_run_json_has_the_documented_keys():
    res = run("launch", "--dry-run", "--format", "json",
              "https://mybinder.org/v2/gh/org/repo/main?urlpath=lab/tree/x.ipynb")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {"repo", "ref", "subdir", "open", "urlpath", "name", "user_data",
            "user_data_b64_bytes"} <= set(doc)
    assert doc["repo"] == "https://github.com/org/repo"
    assert doc["ref"] == "main"
    assert doc["subdir"] is None
    assert (doc["open"], doc["urlpath"]) == (None, "lab/tree/x.ipynb")
    assert doc["user_data_b64_bytes"] == len(base64.b64encode(doc["user_data"].encode()))
    assert yaml.safe_load(doc["user_data"])["runcmd"]


def test_dry_run_options_win_over_the_link():
    res = run("launch", "--dry-run", "--format", "json", "--ref", "v2", "--subdir", "env",
              "--open", "analysis/a.ipynb", "--name", "my-env",
              "https://mybinder.org/v2/gh/org/repo/main?urlpath=lab/tree/x.ipynb")
    doc = json.loads(res.stdout)
    assert (doc["ref"], doc["subdir"], doc["open"], doc["urlpath"], doc["name"]) == (
        "v2", "env", "analysis/a.ipynb", None, "my-env")


def test_dry_run_needs_no_cloud_and_shows_no_real_token():
    res = run("launch", "--dry-run", "--format", "value", "10.5281/zenodo.3242074")
    assert res.exit_code == 0
    assert res.stdout.startswith("#cloud-config")
    assert re.search(r"[0-9a-f]{64}", res.stdout.replace("0" * 64, "")) is None


@pytest.mark.parametrize("args, code, message", [
    (["launch", "--dry-run", "not a source"], 2, "not a source"),
    (["launch", "--dry-run", "--", "-rf"], 2, "-rf"),
    (["launch", "--dry-run", "https://github.com/o/r", "--ref", "a b"], 2, "ref"),
    (["launch", "--dry-run", "https://github.com/o/r", "--subdir", "../etc"], 2, "subdir"),
    (["launch", "--dry-run", "https://github.com/o/r", "--name", "Bad_Name"], 2, "invalid name"),
    (["launch", "--dry-run", "https://github.com/o/r", "--hostname", "not a host"], 2, "hostname"),
    (["launch", "--dry-run", "https://github.com/o/r", "--ssh-cidr", "10.0.0.300/8"], 2, "ssh-cidr"),
    (["launch", "--dry-run", "10.5281/zenodo.1", "--ref", "main"], 2, "--ref"),
    (["launch", "--dry-run", "https://github.com/o/r", "--acme-ca", "http://ca.example/dir"], 2,
     "invalid --acme-ca"),
    (["launch", "--dry-run", "https://github.com/o/r", "--acme-ca", "https://ca.example/dir",
      "--tls", "internal"], 2, "--acme-ca only apply with --tls acme"),
    (["launch", "--dry-run", "https://github.com/o/r", "--wildcard-dns", "sslip.io,not a name"], 2,
     "invalid --wildcard-dns entry 'not a name'"),
    (["launch", "--dry-run", "https://github.com/o/r", "--acme-ca-root", __file__], 2,
     "no --acme-ca was given"),
])
def test_bad_input_names_the_problem_and_exits_non_zero(args, code, message):
    res = run(*args)
    assert res.exit_code == code
    assert message in res.stderr
    assert "hint:" in res.stderr
    assert res.stdout == ""


def test_a_private_ca_root_that_is_not_pem_is_refused(tmp_path):
    root = tmp_path / "root.pem"
    root.write_text("not a certificate\n")
    res = run("launch", "--dry-run", "https://github.com/o/r", "--acme-ca", "https://ca.example/dir",
              "--acme-ca-root", str(root))
    assert res.exit_code == 2 and "--acme-ca-root is not a PEM certificate" in res.stderr


def test_the_dry_run_carries_the_certificate_plan():
    res = run("launch", "--dry-run", "--format", "value", "https://github.com/o/r",
              "--wildcard-dns", "none", "--acme-ca", "https://ca.example/dir")
    assert res.exit_code == 0, res.stderr
    files = {f["path"]: f for f in yaml.safe_load(res.stdout)["write_files"]}
    site = json.loads(files["/etc/vmbinder/launch.json"]["content"])["site"]
    # No address yet in a dry run: the plan is for localhost.
    assert site["candidates"] == [{"host": "localhost", "issuer": "acme", "profile": None},
                                  {"host": "localhost", "issuer": "internal", "profile": None}]
    assert site["acme_directory"] == "https://ca.example/dir"


def test_unparseable_source_lists_the_accepted_forms():
    res = run("launch", "--dry-run", "ftp://example.org/repo")
    assert res.exit_code == 2
    assert "mybinder.org" in res.stderr and "10." in res.stderr and "swh:1:" in res.stderr


def test_without_any_cloud_configured_the_local_target_is_used(monkeypatch):
    from vmbinder.commands.main import Context

    assert Context(None, quiet=True).provider.kind == "local"
    assert Context("local", quiet=True).provider.kind == "local"
    monkeypatch.setenv("OS_AUTH_URL", "http://127.0.0.1:9/v3")
    assert Context(None, quiet=True).provider.kind == "openstack"


def test_a_clouds_yaml_makes_openstack_the_default(clean_environment):
    from vmbinder.commands.main import Context

    folder = clean_environment / ".config" / "openstack"
    folder.mkdir(parents=True)
    (folder / "clouds.yaml").write_text("clouds: {}\n")
    assert Context(None, quiet=True).provider.kind == "openstack"


def test_openrc_without_auth_url_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", "/nonexistent/clouds.yaml")
    res = run("list")
    assert res.exit_code == 3
    assert "no cloud configured" in res.stderr and "OS_CLOUD" in res.stderr


@pytest.fixture
def closed_port_cloud(tmp_path, monkeypatch):
    """A clouds.yaml naming cloud `mine`, whose Keystone is a closed loopback port."""
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump({"clouds": {"mine": {
        "auth": {"auth_url": "http://127.0.0.1:9/v3", "username": "u", "password": "p",
                 "project_name": "p", "user_domain_name": "Default",
                 "project_domain_name": "Default"}}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))


def test_unknown_cloud_name_is_a_configuration_error(closed_port_cloud):
    res = run("--os-cloud", "other", "list")
    assert res.exit_code == 3 and "'other'" in res.stderr


def test_unreachable_cloud_is_a_cloud_error(closed_port_cloud, monkeypatch):
    monkeypatch.setenv("OS_CLOUD", "mine")
    res = run("status", "x")
    assert res.exit_code == 4 and "cannot reach the cloud" in res.stderr


def test_every_command_has_help_and_is_in_the_readme():
    readme = README.read_text()
    for name, command in cli.commands.items():
        res = run(name, "--help")
        assert res.exit_code == 0 and command.help, name
        assert f"vmbinder {name}" in readme, f"README does not show `vmbinder {name}`"
        if not isinstance(command, click.Group):
            assert "--format" in res.stdout, f"{name} prints results but has no --format"
            continue
        for sub, subcommand in command.commands.items():
            res = run(name, sub, "--help")
            assert res.exit_code == 0 and subcommand.help, f"{name} {sub}"
            assert f"vmbinder {name} {sub}" in readme, f"README does not show `vmbinder {name} {sub}`"


def test_version():
    res = run("--version")
    assert res.exit_code == 0 and "vmbinder" in res.stdout


def test_redacting_filter_removes_the_token_from_log_records(tmp_path, monkeypatch):
    import logging

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    root = logging.getLogger()
    before = list(root.handlers)
    path = output.debug_log("demo", "s3cret-token")
    try:
        logging.getLogger("vmbinder.test").info("url https://h/lab?token=%s", "s3cret-token")
        for h in root.handlers:
            h.flush()
        text = path.read_text()
        assert "<token>" in text and "s3cret-token" not in text
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
                h.close()


def test_help_starts_without_the_cloud_libraries():
    # Start-up time is mostly imports: openstacksdk alone takes longer than all
    # of vmbinder's --help. A guard that they stay lazy (bench/cli_startup.py).
    probe = ("import sys\nfrom click.testing import CliRunner\nfrom vmbinder.commands.main import cli\n"
             "for args in (['--help'], ['launch', '--help'], ['workshop', '--help']):\n"
             "    assert CliRunner().invoke(cli, args).exit_code == 0, args\n"
             "heavy = ('openstack', 'keystoneauth1', 'requests', 'jinja2', 'paramiko', 'rich',"
             " 'segno', 'tenacity', 'pycdlib')\n"
             "print(' '.join(m for m in heavy if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []


def test_only_the_commands_import_click_and_the_library_never_imports_them():
    package = Path(__file__).resolve().parents[2] / "vmbinder"
    library = [p for p in package.rglob("*.py") if "commands" not in p.relative_to(package).parts
               and p.name != "__main__.py"]
    for path in library:
        text = path.read_text()
        assert not re.search(r"^\s*(import click|from click|import rich|from rich)", text, re.M), path
        assert "vmbinder.commands" not in text, path
    modules = sorted("vmbinder." + ".".join(p.relative_to(package).with_suffix("").parts)
                     for p in library if p.name != "__init__.py")
    probe = (f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
             "print(' '.join(m for m in ('click', 'rich', 'vmbinder.commands') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []
