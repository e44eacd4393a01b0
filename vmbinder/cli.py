"""Click commands: parse -> build a spec -> call the library -> render.

The only module that prints results or exits. Results go to stdout, progress
and messages to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import click

from vmbinder import __version__, errors

FORMATS = ("table", "json", "value")
#: The cloud name that means "a qemu VM on this machine".
LOCAL = "local"
DEFAULT_PUBLIC_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")
#: A dry run creates nothing, so no real token is made or shown.
DRY_RUN_TOKEN = "0" * 64


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def format_option(f):
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        help="How to print results: a table, JSON, or bare values for scripts.",
    )(f)


class Context:
    def __init__(self, os_cloud: str | None, quiet: bool):
        self.os_cloud = os_cloud
        self.quiet = quiet
        self._provider = None

    @property
    def is_local(self) -> bool:
        return self.os_cloud == LOCAL or (self.os_cloud is None and not _openstack_configured())

    @property
    def provider(self):
        if self._provider is None:
            if self.is_local:
                from vmbinder.providers.local import LocalProvider

                self._provider = LocalProvider()
            else:
                from vmbinder.providers.openstack import OpenStackProvider

                self._provider = OpenStackProvider(self.os_cloud)
        return self._provider


def _openstack_configured() -> bool:
    """Whether the openstack CLI would find credentials: OS_* variables or a clouds.yaml."""
    if any(os.environ.get(k) for k in ("OS_AUTH_URL", "OS_CLIENT_CONFIG_FILE")):
        return True
    # The folders openstacksdk's config loader searches, looked up now (its own
    # list is fixed when it is imported).
    folders = (Path.cwd(), Path.home() / ".config" / "openstack", Path("/etc/xdg/openstack"),
               Path("/etc/openstack"))
    return any((f / f"clouds.{ext}").exists() for f in folders for ext in ("yaml", "yml", "json"))


class Progress:
    """One spinner with step text on stderr."""

    def __init__(self, console):
        self.console = console
        self.status = None
        self.last = ""
        self.started = time.monotonic()

    def phase(self, phase: str, detail: str = "") -> None:
        from rich.markup import escape

        logging.getLogger("vmbinder.progress").info("%s: %s", phase, detail)
        text = f"[bold]{phase}[/bold] {escape(detail)}"
        if not self.console.is_terminal:
            # No spinner in a log file: one line per step, without repeats.
            if text != self.last:
                self.console.print(f"{time.monotonic() - self.started:6.1f}s {text}")
                self.last = text
            return
        if self.status is None:
            self.status = self.console.status(text)
            self.status.start()
        else:
            self.status.update(text)

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


class Quiet:
    def phase(self, phase: str, detail: str = "") -> None:
        logging.getLogger("vmbinder.progress").info("%s: %s", phase, detail)

    def stop(self) -> None:
        pass


class _Redact(logging.Filter):
    """Replaces the token, or with None anything shaped like a token, by <token>."""

    TOKEN_RE = re.compile(r"\b[0-9a-f]{64}\b")

    def __init__(self, secret: str | None):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = (self.TOKEN_RE.sub("<token>", message) if self.secret is None
                    else message.replace(self.secret, "<token>"))
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _debug_log(name: str, token: str | None) -> Path:
    """A debug log per launch. Request bodies (user-data, metadata) never reach
    it: the HTTP libraries log at WARNING only, and the token (any token, when
    None) is redacted."""
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    folder = base / "vmbinder" / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"launch-{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Redact(token))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("keystoneauth", "openstack", "urllib3", "stevedore", "os_service_types"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


class VmbinderGroup(click.Group):
    """Maps every vmbinder error to its message, hint and exit code, in one place."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except errors.VmbinderError as exc:
            render_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            _stderr().print("interrupted")
            ctx.exit(errors.Interrupted.exit_code)


@click.group(cls=VmbinderGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--os-cloud", "--cloud", "os_cloud", envvar="OS_CLOUD", metavar="CLOUD",
    help="Cloud name in clouds.yaml, as for the openstack CLI (env: OS_CLOUD); `local` runs "
         "a qemu VM on this machine, the default when no cloud is configured.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@click.version_option(__version__, prog_name="vmbinder")
@click.pass_context
def cli(ctx, os_cloud, quiet):
    """Run a Binder-ready repository on your own OpenStack allocation."""
    ctx.obj = Context(os_cloud, quiet)


@cli.command()
@click.argument("source")
@click.option("--ref", help="Branch, tag or commit to build (git sources).")
@click.option("--subdir", help="Folder of the repository that holds the environment files.")
@click.option("--open", "open_path", metavar="PATH",
              help="What to open after launch: a file (x.ipynb) or a URL path (lab/tree/x.ipynb).")
@click.option("--name", help="Server name [default: from the repository, plus 4 random hex digits].")
@click.option("--image", envvar="VMBINDER_IMAGE", help="Image name or id [env: VMBINDER_IMAGE].")
@click.option("--flavor", envvar="VMBINDER_FLAVOR", help="Flavor name or id [env: VMBINDER_FLAVOR].")
@click.option("--network", envvar="VMBINDER_NETWORK", help="Tenant network [env: VMBINDER_NETWORK].")
@click.option("--external-network", envvar="VMBINDER_EXTERNAL_NETWORK",
              help="Network for the floating IP [env: VMBINDER_EXTERNAL_NETWORK].")
@click.option("--key-name", envvar="VMBINDER_KEY_NAME", help="Existing keypair to inject.")
@click.option("--public-key", type=click.Path(dir_okay=False), metavar="FILE",
              help="OpenSSH public key to upload once and reuse [default: ~/.ssh/id_ed25519.pub, "
                   "id_ecdsa.pub or id_rsa.pub].")
@click.option("--ssh-cidr", default="0.0.0.0/0", show_default=True,
              help="Who may reach SSH (port 22).")
@click.option("--hostname", help="Your own DNS name for the server [default: <ip>.sslip.io].")
@click.option("--tls", type=click.Choice(("acme", "internal", "off")),
              help="HTTPS certificate: Let's Encrypt (default on a cloud), Caddy's own CA "
                   "(default on the local target), or plain HTTP.")
@click.option("--ca-cert", "ca_certs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              metavar="FILE", help="Extra CA certificate (PEM) the server must trust; repeatable.")
@click.option("--apt-mirror", metavar="URL", help="Debian/Ubuntu package mirror for the server.")
@click.option("--pip-index-url", metavar="URL", help="Python package index for the server.")
@click.option("--dry-run", is_flag=True, help="Resolve and render everything; create nothing.")
@click.option("--no-wait", is_flag=True, help="Return once the server is ACTIVE with its IP.")
@click.option("--timeout", type=click.FloatRange(min=1), default=1800, show_default=True,
              help="Seconds to wait for the environment to answer.")
@click.option("--keep-on-failure", is_flag=True, help="Keep what a failed launch created, to inspect it.")
@format_option
@click.pass_obj
def launch(obj: Context, source, ref, subdir, open_path, name, image, flavor, network,
           external_network, key_name, public_key, ssh_cidr, hostname, tls, ca_certs, apt_mirror,
           pip_index_url, dry_run, no_wait, timeout, keep_on_failure, fmt):
    """Launch SOURCE: a git URL, a DOI, a Zenodo/Figshare/Dataverse/Hydroshare
    record, a Software Heritage id, or a pasted mybinder.org link or badge."""
    from vmbinder import api, sources
    from vmbinder import spec as specs

    src = sources.resolve_source(source, ref=ref, subdir=subdir, open_path=open_path)
    cloud = specs.CloudChoice(
        image=image, flavor=flavor, network=network, external_network=external_network,
        key_name=key_name, public_key=None if (key_name or dry_run) else _public_key(public_key),
        ssh_cidr=ssh_cidr,
    )
    guest_network = specs.GuestNetwork(
        ca_certs=tuple(Path(f).read_text(errors="replace") for f in ca_certs),
        apt_mirror=apt_mirror, pip_index_url=pip_index_url,
    )
    spec = specs.make_spec(src, name=name, cloud=cloud, hostname=hostname, tls=tls,
                           guest_network=guest_network, target=obj.provider)
    if dry_run:
        doc = api.dry_run(spec.with_token(DRY_RUN_TOKEN))
        _emit(fmt, doc, [("repo", doc["repo"]), ("ref", doc["ref"]), ("subdir", doc["subdir"]),
                         ("open", doc["open"]), ("name", doc["name"]),
                         ("user_data_b64_bytes", doc["user_data_b64_bytes"])],
              value=doc["user_data"])
        return
    log_path = _debug_log(spec.name, spec.token)
    err = _stderr()
    reporter = Quiet() if (obj.quiet or fmt == "json") else Progress(err)
    if not cloud.key_name and not cloud.public_key:
        err.print("[yellow]note:[/] no SSH key found (~/.ssh/id_*.pub); launching without one.")
    try:
        result = api.launch(obj.provider, spec, reporter, wait=not no_wait,
                            ready_timeout=timeout, keep_on_failure=keep_on_failure)
    finally:
        reporter.stop()
    if fmt != "json":
        err.print(f"[green]launched[/] {result.server.name} at {result.server.address} "
                  f"(debug log: {log_path})")
        if not result.ready:
            err.print("not waiting for the environment (--no-wait); these URLs answer once it "
                      f"is built: vmbinder status {result.server.name}")
    _print_server(fmt, result.server, result.access)


def _public_key(path: str | None) -> str | None:
    if path:
        try:
            return Path(path).expanduser().read_text()
        except OSError as exc:
            raise errors.BadRequest(f"cannot read --public-key {path}: {exc.strerror}",
                                    "give the path of an OpenSSH .pub file") from None
    for candidate in DEFAULT_PUBLIC_KEYS:
        p = Path.home() / ".ssh" / candidate
        if p.is_file():
            return p.read_text()
    return None


def _server_doc(server, acc) -> dict:
    doc = {
        "name": server.name,
        "id": server.id,
        "status": server.state,
        "cloud_status": server.cloud_status,
        "address": server.address,
        "fault": server.fault,
        "created": server.created,
        "flavor": server.flavor,
    }
    for key in ("repo", "ref", "subdir", "open", "source", "repo2docker", "version", "hostname", "tls"):
        doc[key] = server.meta(key)
    if acc is not None:
        doc["urls"] = acc.urls
        doc["open_url"] = acc.open_url
        doc["absent"] = acc.absent
    return doc


def _print_server(fmt: str, server, acc) -> None:
    doc = _server_doc(server, acc)
    rows = [(k, doc[k]) for k in ("name", "id", "status", "address", "repo", "ref", "subdir",
                                   "open", "repo2docker", "fault") if doc[k]]
    urls = [(f"{k} url", v) for k, v in (acc.urls if acc else {}).items()]
    if acc and acc.open_url:
        urls.insert(0, ("open url", acc.open_url))
    absent = [(f"{k}", f"not shown: {why}") for k, why in (acc.absent if acc else {}).items()]
    value = acc.open_url or acc.urls.get("lab") if acc and acc.base else server.address
    _emit(fmt, doc, rows + urls + absent, value=value or "")


def _emit(fmt: str, doc, rows, value=None) -> None:
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2, sort_keys=False))
    elif fmt == "value":
        click.echo(value if value is not None else "\n".join(str(v) for _, v in rows))
    else:
        # Plain aligned lines, never wrapped, so a URL can be copied whole.
        width = max((len(key) for key, _ in rows), default=0)
        for key, val in rows:
            click.echo(f"{key:<{width}}  {'' if val is None else val}")


@cli.command("list")
@format_option
@click.pass_obj
def list_(obj: Context, fmt):
    """List the vmbinder servers of this project."""
    from vmbinder import api

    servers = obj.provider.list_owned()
    docs = [_server_doc(s, api.access(s, with_token=False)) for s in servers]
    if fmt == "json":
        click.echo(json.dumps(docs, indent=2))
    elif fmt == "value":
        for d in docs:
            click.echo("\t".join(str(d[k] or "") for k in ("name", "status", "address", "repo")))
    else:
        from rich.table import Table

        table = Table("name", "status", "address", "source", "ref", "created")
        for column in table.columns:
            column.overflow = "fold"  # wrap long values, never cut them
        for d in docs:
            table.add_row(d["name"], d["status"], d["address"] or "", d["repo"] or "",
                          d["ref"] or "", d["created"] or "")
        _stdout().print(table)
        if not docs:
            _stderr().print("no vmbinder servers in this project")


@cli.command()
@click.argument("name")
@format_option
@click.pass_obj
def status(obj: Context, name, fmt):
    """Show a server's state, address, source and URLs."""
    from vmbinder import api

    server = obj.provider.get(name)
    _print_server(fmt, server, api.access(server, with_token=False))
    if fmt == "table":
        _stderr().print(f"URLs without the token; with it: vmbinder url {server.name}")


@cli.command()
@click.argument("name")
@click.option("--ui", type=click.Choice(("tree", "lab", "rstudio", "shiny", "nteract")),
              help="Which interface [default: the launch's open path, else lab].")
@format_option
@click.pass_obj
def url(obj: Context, name, ui, fmt):
    """Print the URL of a server's environment, token included."""
    from vmbinder import api

    server = obj.provider.get(name)
    link = api.url(server, ui)
    if fmt == "json":
        click.echo(json.dumps({"name": server.name, "ui": ui, "url": link}))
    else:
        click.echo(link)


@cli.command()
@click.argument("names", nargs=-1, required=True)
@format_option
@click.pass_obj
def delete(obj: Context, names, fmt):
    """Delete servers and their floating IPs."""
    from vmbinder import api

    err = _stderr()
    reporter = Quiet() if (obj.quiet or fmt == "json") else Progress(err)
    try:
        removed = api.delete(obj.provider, list(names), reporter)
    finally:
        reporter.stop()
    _print_removed(fmt, removed, err)


def _print_removed(fmt: str, removed, err) -> None:
    """What a delete or a workshop down removed: JSON, tab-separated values or lines on err."""
    docs = [{"kind": r.kind, "id": r.id, "name": r.name} for r in removed]
    if fmt == "json":
        click.echo(json.dumps(docs, indent=2))
    elif fmt == "value":
        for d in docs:
            click.echo(f"{d['kind']}\t{d['id']}\t{d['name']}")
    else:
        for d in docs:
            err.print(f"removed {d['kind']} {d['name']} ({d['id']})")


def _register_image_commands() -> None:
    from vmbinder.guestimage import image
    from vmbinder.imageupload import upload_command
    from vmbinder.workshop_cli import workshop

    image.add_command(upload_command)
    cli.add_command(image)
    cli.add_command(workshop)


_register_image_commands()


def render_error(exc: errors.VmbinderError) -> None:
    from rich.markup import escape

    err = _stderr()
    err.print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
    status = exc.details.get("http_status")
    request_id = exc.details.get("request_id")
    if request_id:
        err.print(f"  (HTTP {status}, request id {request_id})", soft_wrap=True)
    if exc.hint:
        err.print(f"[bold]hint:[/] {escape(exc.hint)}", soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="vmbinder")
