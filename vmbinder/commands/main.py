"""The `vmbinder` root command: its options, the Context every command gets,
the one mapping of vmbinder errors to messages and exit codes, and main().

Each family of commands lives in its own module and is registered here.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from vmbinder import __version__, errors
from vmbinder.commands import image, launch, servers, workshop
from vmbinder.commands.output import render_error, stderr

#: The cloud name that means "a qemu VM on this machine".
LOCAL = "local"


class Context:
    """What the root options chose, for every command: the cloud, quiet, and its provider."""

    def __init__(self, os_cloud: str | None, quiet: bool):
        self.os_cloud = os_cloud
        self.quiet = quiet
        self._provider = None

    @property
    def named_local(self) -> bool:
        """Whether the local target was asked for by name (not only the default)."""
        return self.os_cloud == LOCAL

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


class VmbinderGroup(click.Group):
    """Maps every vmbinder error to its message, hint and exit code, in one place."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except errors.VmbinderError as exc:
            render_error(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            stderr().print("interrupted")
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


cli.add_command(launch.launch)
for command in (servers.list_, servers.status, servers.url, servers.delete):
    cli.add_command(command)
cli.add_command(image.image)
cli.add_command(workshop.workshop)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="vmbinder")
