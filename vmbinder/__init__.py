"""vmbinder: run a Binder-ready repository on your own OpenStack allocation."""

# The repo2docker release every guest installs; pinned in guestcontract.py.
from vmbinder.guestcontract import REPO2DOCKER_VERSION  # noqa: F401

__version__ = "0.1.0"
