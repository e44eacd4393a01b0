"""The `vmbinder` root command: its options, the one mapping of vmbinder errors
to messages and exit codes, and main().

Each family of commands lives in its own module and is registered here.
"""

from __future__ import annotations

import click

from vmbinder import __version__, errors
from vmbinder.commands import image, launch, logs, power, reap, remote, servers, volumes, workshop
from vmbinder.commands.context import Context
from vmbinder.commands.output import render_error, stderr


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
for command in (power.stop, power.start, power.shelve, power.unshelve):
    cli.add_command(command)
cli.add_command(logs.logs)
cli.add_command(reap.reap)
cli.add_command(remote.ssh)
cli.add_command(remote.tunnel)
cli.add_command(volumes.volumes)
cli.add_command(image.image)
cli.add_command(workshop.workshop)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="vmbinder")
