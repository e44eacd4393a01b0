"""Deprecated calls made by vmbinder's code fail the tests, wherever the warning is attributed.

pyproject's `error::DeprecationWarning:vmbinder` catches what is attributed to a vmbinder
module. openstacksdk warns with the default stacklevel, so its warnings are attributed to
its own modules (openstack.resource, openstack.proxy, ...) even when vmbinder's call is the
deprecated one (ignore_missing=True on a find_*). Here every deprecation warning whose
stack passes through vmbinder/ is recorded, and tests/conftest.py fails the test.

KNOWN are the ones openstacksdk 4.x raises on its own, whatever its caller passes (the
first three are also ignored in pyproject's filterwarnings); KNOWN_CALLERS the ones
raised below an openstacksdk function that makes the deprecated call itself.
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
    # openstack/fields.py: the compute limits Nova sends hold these two fields, and
    # building the Limits resource from the answer sets them (vmbinder reads neither).
    ("openstack/fields.py", "The field 'maxPersonality' has been deprecated"),
    ("openstack/fields.py", "The field 'maxPersonalitySize' has been deprecated"),
)
#: (file, function, message): warnings raised below one of openstacksdk's own
#: functions that makes the deprecated call itself, whatever vmbinder passed.
KNOWN_CALLERS = (
    # Image.find searches with ignore_missing=True before it looks at hidden images.
    ("openstack/image/v2/image.py", "find", "The ignore_missing parameter of all find_*"),
    # The cloud layer's get_image (create_server_image calls it) uses find_image's default.
    ("openstack/cloud/_image.py", "get_image", "The ignore_missing parameter of all find_*"),
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
    if any(where.endswith(suffix) and text.startswith(start) for suffix, start in KNOWN):
        return True
    while frame is not None and not Path(frame.f_code.co_filename).is_relative_to(PACKAGE):
        where = Path(frame.f_code.co_filename).as_posix()
        if any(where.endswith(suffix) and frame.f_code.co_name == name and text.startswith(start)
               for suffix, name, start in KNOWN_CALLERS):
            return True
        frame = frame.f_back
    return False


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
