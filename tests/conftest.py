import os
import signal

import pytest

from tests import deprecations


def pytest_configure(config):
    """Ctrl-C reaches the tests and the commands they start also when a shell
    started this run in the background, which ignores SIGINT for it (ignored
    signals stay ignored in every program started from it): tests press Ctrl-C
    with interrupt_main and with SIGINT to a `vmbinder tunnel` or launch."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path_factory, request):
    """No test sees the developer's cloud credentials or home folder, or asks a git
    remote outside the machine.

    Functional tests set their own OS_CLIENT_CONFIG_FILE / OS_CLOUD afterwards."""
    for key in list(os.environ):
        if key.startswith("OS_") or key.startswith("VMBINDER_"):
            monkeypatch.delenv(key)
    # `launch` asks a git source's remote for its refs. The tests' repositories are
    # served over git:// on loopback or in the testbed's namespace; any other
    # remote (https://github.com/...) is refused by git itself, before a DNS query.
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "file:git")
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.chdir(home)
    yield home


@pytest.fixture(autouse=True)
def no_deprecated_calls():
    """A test fails when vmbinder's code made a deprecated call (see tests/deprecations.py)."""
    with deprecations.watch() as seen:
        yield
    if seen:
        pytest.fail("deprecated calls made from vmbinder's code:\n  " + "\n  ".join(seen),
                    pytrace=False)
