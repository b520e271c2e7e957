"""Fixtures shared by every test module. Helpers live in util.py (importable as `util`)."""
from __future__ import annotations

import os
import shutil

import pytest

import util

# Each area keeps its fixtures in its own module, so areas do not edit one file.
pytest_plugins = ["fixtures_runtime", "fixtures_image", "fixtures_registry", "fixtures_slurm",
                  "fixtures_instance", "fixtures_workflow"]


@pytest.fixture(scope="session", autouse=True)
def _default_signal_dispositions():
    """Signals ignored by whoever started the suite (nohup, a background job of a
    non-interactive shell) stay ignored in every child, and a shell cannot trap a signal
    ignored on entry: the signal tests would fail for a reason of the caller's. Start
    from the defaults."""
    import signal
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    yield


@pytest.fixture(scope="session")
def user() -> util.User:
    """The unprivileged user that hpcrun runs as in tests (created if missing; needs root)."""
    util.require(os.geteuid() == 0, "tests create and drop to an unprivileged user: run as root")
    return util.ensure_user()


@pytest.fixture(scope="session")
def busybox_rootfs() -> str:
    """A read-only-to-the-user busybox root filesystem (owned by root, mode 755)."""
    d = util.shared_tmpdir("hpcrun-bbroot-")
    util.make_busybox_rootfs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def user_tmp(user) -> str:
    """A scratch directory owned by the test user, removed afterwards."""
    d = util.shared_tmpdir("hpcrun-utmp-", owner=user)
    yield d
    shutil.rmtree(d, ignore_errors=True)
