"""The local target. provider: LocalProvider, its verbs; state: the state folder
that is each server's only record; qemu: the flavor format, the command line and
the qemu process; snapshot: a server's disk made into an image folder."""

from vmbinder.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
