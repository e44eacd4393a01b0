"""`vmbinder launch`: one server for one source, from the command line to lifecycle.launch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import click

from vmbinder import errors
from vmbinder.commands.output import Progress, Quiet, debug_log, emit, format_option, print_server, stderr
from vmbinder.https import WILDCARD_DNS
from vmbinder.lifetime import AT_END, IDLE_ACTIONS

if TYPE_CHECKING:
    from vmbinder.commands.context import Context

DEFAULT_PUBLIC_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")
#: --floating-ip and --config-drive (spec.CHOICES, not imported here: --help stays fast).
CHOICES = ("auto", "yes", "no")
#: A dry run creates nothing, so no real token is made or shown.
DRY_RUN_TOKEN = "0" * 64


@click.command()
@click.argument("source")
@click.option("--ref", help="Branch, tag or commit to build (git sources).")
@click.option("--subdir", help="Folder of the repository that holds the environment files.")
@click.option("--open", "open_path", metavar="FILE",
              help="A file or folder of the repository to open in JupyterLab "
                   "(notebooks/intro.ipynb).")
@click.option("--urlpath", metavar="PATH",
              help="A URL path on the server to open instead, with an optional query "
                   "(rstudio, voila/render/app.ipynb, git-pull?repo=...).")
@click.option("--name", help="Server name [default: from the repository, plus 4 random hex digits].")
@click.option("--image", envvar="VMBINDER_IMAGE", help="Image name or id [env: VMBINDER_IMAGE].")
@click.option("--flavor", envvar="VMBINDER_FLAVOR", help="Flavor name or id [env: VMBINDER_FLAVOR].")
@click.option("--network", envvar="VMBINDER_NETWORK",
              help="The server's network: a tenant network, or a provider network whose "
                   "addresses are public [env: VMBINDER_NETWORK].")
@click.option("--external-network", envvar="VMBINDER_EXTERNAL_NETWORK",
              help="Network for the floating IP [env: VMBINDER_EXTERNAL_NETWORK].")
@click.option("--floating-ip", type=click.Choice(CHOICES), default="auto", show_default=True,
              help="Make a floating IP: auto (unless the server's network is itself routable: "
                   "external, or shared with public addresses), yes, or no (the server's own "
                   "address is its address).")
@click.option("--config-drive", type=click.Choice(CHOICES), default="auto", show_default=True,
              help="Hand the user-data over on a config drive: auto (ask, and boot without one "
                   "if the cloud refuses it), yes, or no (the metadata service).")
@click.option("--key-name", envvar="VMBINDER_KEY_NAME", help="Existing keypair to inject.")
@click.option("--public-key", type=click.Path(dir_okay=False), metavar="FILE",
              help="OpenSSH public key to upload once and reuse [default: ~/.ssh/id_ed25519.pub, "
                   "id_ecdsa.pub or id_rsa.pub].")
@click.option("--ssh-cidr", default="0.0.0.0/0", show_default=True,
              help="Who may reach SSH (port 22).")
@click.option("--expose", type=click.Choice(("https", "ssh")), default="https", show_default=True,
              help="What the server opens. https: ports 22, 80 and 443, the environment at its "
                   "HTTPS URL; ssh: port 22 only, nothing served publicly, the environment "
                   "reached with vmbinder tunnel NAME.")
@click.option("--hostname", help="Your own DNS name for the server [default: its address].")
@click.option("--tls", type=click.Choice(("acme", "internal", "off")),
              help="HTTPS certificate. acme (default on a cloud): from Let's Encrypt for the "
                   "address itself, else for a wildcard-DNS name of it, else from the server's "
                   "own CA; internal: the server's own CA (default on the local target); off: "
                   "plain HTTP.")
@click.option("--acme-ca", metavar="URL",
              help="ACME directory of a private CA to use instead of Let's Encrypt.")
@click.option("--acme-ca-root", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="PEM root(s) of that CA: the server trusts it to reach the CA, vmbinder to "
                   "check the certificate.")
@click.option("--wildcard-dns", metavar="LIST", default=",".join(WILDCARD_DNS),
              show_default=True,
              help="Wildcard-DNS services whose names for the address are tried when the CA "
                   "refuses the address itself, comma-separated; none for no names.")
@click.option("--ca-cert", "ca_certs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              metavar="FILE", help="Extra CA certificate (PEM) the server must trust; repeatable.")
@click.option("--apt-mirror", metavar="URL", help="Debian/Ubuntu package mirror for the server.")
@click.option("--pip-index-url", metavar="URL", help="Python package index for the server.")
@click.option("--git-token-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="A private git repository's token, in a file only you can read (chmod 600): "
                   "the server gets it for the clone only and removes it after the build.")
@click.option("--git-token-env", metavar="VAR",
              help="The environment variable holding that token instead.")
@click.option("--git-user", metavar="NAME",
              help="The user name sent with the token [default: x-access-token].")
@click.option("--volume", metavar="SIZE|NAME",
              help="A work volume that outlives the server, holding its home: a size in GB "
                   "makes a new one named <name>-work (10, 10G); a name or id attaches one "
                   "you have (not in use by another server).")
@click.option("--data", "data", multiple=True, metavar="VOLUME",
              help="An existing volume mounted read-only at ~/data (shared data sets); "
                   "repeatable.")
@click.option("--idle", metavar="DURATION",
              help="Put the server away after this long without Jupyter activity (90m, 2h); "
                   "a running cell, terminal or open notebook is activity [default: never].")
@click.option("--idle-action", type=click.Choice(IDLE_ACTIONS),
              help="How an idle server puts itself away: shelve (no cores held) or stop "
                   "[default: shelve; stop on the local target].")
@click.option("--lifetime", metavar="DURATION",
              help="How long the server lives (90m, 8h, 3d); then --at-end happens to it "
                   "[default: until deleted].")
@click.option("--at-end", type=click.Choice(AT_END),
              help="What happens when the lifetime ends: shelve (no cores held), stop or "
                   "delete [default: shelve; stop on the local target].")
@click.option("--dry-run", is_flag=True, help="Resolve and render everything; create nothing.")
@click.option("--no-wait", is_flag=True, help="Return once the server is ACTIVE with its IP.")
@click.option("--timeout", type=click.FloatRange(min=1), default=1800, show_default=True,
              help="Seconds to wait for the environment to answer.")
@click.option("--keep-on-failure", is_flag=True, help="Keep what a failed launch created, to inspect it.")
@click.option("-v", "--verbose", is_flag=True,
              help="Print the server's whole build log as it grows [default: its newest line "
                   "in the progress line].")
@click.option("--delete-on-failure", is_flag=True,
              help="Remove the server when its build fails or its environment does not answer "
                   "in time [default: keep it, to read its logs] (for batch scripts).")
@format_option
@click.pass_obj
def launch(obj: Context, source, ref, subdir, open_path, urlpath, name, image, flavor, network,
           external_network, floating_ip, config_drive, key_name, public_key, ssh_cidr, expose,
           hostname, tls, acme_ca, acme_ca_root, wildcard_dns, ca_certs, apt_mirror, pip_index_url,
           git_token_file, git_token_env, git_user, volume, data, idle, idle_action, lifetime,
           at_end, dry_run,
           no_wait, timeout,
           keep_on_failure, verbose, delete_on_failure, fmt):
    """Launch SOURCE: a git URL, a DOI, a Zenodo/Figshare/Dataverse/Hydroshare
    record, a Software Heritage id, or a pasted mybinder.org link or badge."""
    from vmbinder import lifecycle, sources
    from vmbinder import lifetime as lifetimes
    from vmbinder import spec as specs

    src = sources.resolve_source(source, ref=ref, subdir=subdir, open_path=open_path,
                                 urlpath=urlpath)
    git_credential = sources.read_credential(token_file=git_token_file, token_env=git_token_env,
                                             user=git_user)
    cloud = specs.CloudChoice(
        image=image, flavor=flavor, network=network, external_network=external_network,
        key_name=key_name,
        public_key=None if (key_name or dry_run) else read_public_key(public_key),
        ssh_cidr=ssh_cidr, floating_ip=floating_ip, config_drive=config_drive, expose=expose,
    )
    guest_network = specs.GuestNetwork(
        ca_certs=tuple(Path(f).read_text(errors="replace") for f in ca_certs),
        apt_mirror=apt_mirror, pip_index_url=pip_index_url,
    )
    acme = specs.AcmeChoice(
        ca=acme_ca, ca_root=Path(acme_ca_root).read_text(errors="replace") if acme_ca_root else None,
        wildcard_dns=parse_wildcard_dns(wildcard_dns))
    lifetime_s = lifetimes.duration(lifetime, "--lifetime") if lifetime else None
    spec = specs.make_spec(src, name=name, cloud=cloud, hostname=hostname, tls=tls, acme=acme,
                           guest_network=guest_network, git_credential=git_credential,
                           target=obj.provider, volume=volume, data=data,
                           lifetime_s=lifetime_s, at_end=at_end, idle_action=idle_action,
                           idle_s=lifetimes.duration(idle, "--idle") if idle else None)
    if not dry_run:  # every value checked; a dry run asks nothing of the network
        spec = dataclasses.replace(spec, source=resolve_remote(src, obj.provider, obj.quiet,
                                                               git_credential))
    if dry_run:
        doc = lifecycle.dry_run(spec.with_token(DRY_RUN_TOKEN))
        doc["holds"], cost_rows = planned_costs(obj.provider, [spec], lifetime_s,
                                                 spec.volume_size)
        emit(fmt, doc, [("repo", doc["repo"]), ("ref", doc["ref"]), ("subdir", doc["subdir"]),
                        ("open", doc["open"]), ("urlpath", doc["urlpath"]), ("name", doc["name"]),
                        ("user_data_b64_bytes", doc["user_data_b64_bytes"]), *cost_rows],
             value=doc["user_data"])
        return
    log_path = debug_log(spec.name, spec.token)
    err = stderr()
    reporter = Quiet() if (obj.quiet or fmt == "json") else Progress(err, verbose=verbose)
    repo_url = urlsplit(spec.source.repo)
    if git_credential and repo_url.scheme == "http" and \
            repo_url.hostname != spec.guest_network.host_address:
        err.print("[yellow]warning:[/] the repository's URL is http://: the server sends the git "
                  "token to it in clear text over the network.")
    if not cloud.key_name and not cloud.public_key:
        err.print("[yellow]note:[/] no SSH key found (~/.ssh/id_*.pub); launching without one.")
    if spec.tls == "off" and obj.provider.target_defaults.acme:
        err.print("[yellow]warning:[/] --tls off: the URLs are plain HTTP, so the token (and "
                  "everything you do in Jupyter) travels in clear text over the network.")
    try:
        result = lifecycle.launch(obj.provider, spec, reporter, wait=not no_wait,
                                  ready_timeout=timeout, keep_on_failure=keep_on_failure,
                                  keep_failed_build=not delete_on_failure)
    finally:
        reporter.stop()
    if result.warnings:
        from rich.markup import escape

        for warning in result.warnings:
            err.print(f"[yellow]warning:[/] {escape(warning)}")
    if fmt != "json":
        err.print(f"[green]launched[/] {result.server.name} at {result.server.address} "
                  f"(debug log: {log_path})")
        if not result.ready:
            err.print("not waiting for the environment (--no-wait); these URLs answer once it "
                      "is built, and change if the server gets its certificate for another "
                      f"name: vmbinder status {result.server.name}")
    print_server(fmt, result.server, result.access)


def planned_costs(provider, specs, lifetime_s: int | None,
                  volume_gb: int | None) -> tuple[dict | None, list]:
    """What the launches of a dry run would hold and their core-hours over their
    lifetime (vmbinder.costs), with the rows to print; where the target cannot
    say (no cloud reachable, no image), None and a row saying why."""
    from vmbinder import costs

    if not provider.supports("sizes"):
        return None, [("holds", f"not known on the {provider.kind} target")]
    try:
        sizes = provider.sizes(specs)
    except errors.VmbinderError as exc:
        return None, [("holds", f"not known: {exc.message}")]
    plan = costs.planned(sizes, lifetime_s, volume_gb or 0)
    return plan, costs.describe_plan(plan)


def resolve_remote(src, provider, quiet: bool, git_credential=None):
    """The source with the commit its ref names and a forge URL's ref split where
    the remote's refs say (asked with the git token, if any); what was found goes
    to stderr."""
    import functools

    from rich.markup import escape

    from vmbinder.sources import remote

    lister = functools.partial(remote.ls_remote, credential=git_credential)
    found = remote.resolve(src, lister=lister, here=provider.url_from_here)
    if not quiet:
        err = stderr()
        for note in found.notes:
            err.print(f"[dim]source:[/] {escape(note)}")
    return found.source


def parse_wildcard_dns(text: str) -> tuple[str, ...]:
    """--wildcard-dns: comma-separated services; "none" (or nothing) for none."""
    parts = tuple(p.strip() for p in (text or "").split(",") if p.strip())
    return () if parts in ((), ("none",)) else parts


def read_public_key(path: str | None) -> str | None:
    """The OpenSSH public key at path, else the first of ~/.ssh/id_*.pub, else None."""
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
