"""vmbinder: run a Binder-ready repository on your own OpenStack allocation."""

__version__ = "0.1.0"

#: The repo2docker release installed on every guest. Pinned so that a launch
#: today and a launch next year build the same way; recorded in server metadata.
REPO2DOCKER_VERSION = "2026.4.0"
