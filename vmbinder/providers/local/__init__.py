"""The local target: servers booted by qemu on this machine (provider), the qemu
command line and process (qemu), and snapshots made into image folders (snapshot)."""

from vmbinder.providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
