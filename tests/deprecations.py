"""Deprecated calls made by vmbinder's code fail the tests, wherever the warning is attributed.

pyproject's `error::DeprecationWarning:vmbinder` catches what is attributed to a vmbinder
module. openstacksdk warns with the default stacklevel, so its warnings are attributed to
its own modules (openstack.resource, openstack.proxy, ...) even when vmbinder's call is the
deprecated one (ignore_missing=True on a find_*). Here every deprecation warning whose
stack passes through vmbinder/ is recorded, and tests/conftest.py fails the test.

KNOWN are the ones openstacksdk 4.x raises on its own, whatever its caller passes; the
same messages are ignored in pyproject's filterwarnings.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from pathlib import Path

import vmbinder

PACKAGE = Path(vmbinder.__file__).resolve().parent
KNOWN = (
    # openstack/proxy.py: Proxy.request passes its own service_type to _extract_name.
    ("openstack/proxy.py", "The 'service_type' parameter is unnecesary"),
    # openstack/resource.py: Resource.__init__ calls its own _compute_attributes.
    ("openstack/resource.py", "The _compute_attributes method is deprecated"),
    # openstack/config/cloud_region.py: the loader hands every region an InfluxDB
    # section of None values, which counts as configured (no clouds.yaml key sets it).
    ("openstack/config/cloud_region.py", "Support for InfluxDB requires"),
)

_original = warnings.warn
_lock = threading.Lock()
_watching: list[list[str]] = []


def _from_vmbinder(frame) -> str | None:
    """file:line of the innermost vmbinder frame on this stack, or None."""
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(PACKAGE):
            return f"{path.relative_to(PACKAGE.parent)}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _known(text: str, frame) -> bool:
    where = Path(frame.f_code.co_filename).as_posix()
    return any(where.endswith(suffix) and text.startswith(start) for suffix, start in KNOWN)


def _warn(message, category=None, stacklevel=1, source=None, **kw):
    if category is None:
        category = type(message) if isinstance(message, Warning) else UserWarning
    if _watching and issubclass(category, (DeprecationWarning, PendingDeprecationWarning)):
        frame = sys._getframe(1)
        text = str(message)
        where = _from_vmbinder(frame)
        if where and not _known(text, frame):
            with _lock:
                _watching[-1].append(f"{category.__name__} through {where}: {text}")
    return _original(message, category, stacklevel + 1, source, **kw)


@contextlib.contextmanager
def watch():
    """The deprecation warnings raised through vmbinder's code within it (innermost watch)."""
    seen: list[str] = []
    previous = warnings.warn
    warnings.warn = _warn
    with _lock:
        _watching.append(seen)
    try:
        yield seen
    finally:
        with _lock:
            _watching.remove(seen)
        warnings.warn = previous
