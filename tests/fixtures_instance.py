"""Fixtures for the instance tests: a private runtime directory per test (as
XDG_RUNTIME_DIR), and helpers that run hpcrun as the test user with it."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess

import pytest

import util

EVIL = "hpcevil"


class Inst:
    """hpcrun as USER with its own XDG_RUNTIME_DIR (so a test's instances are its own)."""

    def __init__(self, user, xdg):
        self.user, self.xdg = user, xdg

    def env(self, **extra):
        return {"XDG_RUNTIME_DIR": self.xdg, **extra}

    def __call__(self, *args, env=None, **kw):
        return util.hpcrun(self.user, *args, env=self.env(**(env or {})), **kw)

    def ok(self, *args, **kw):
        cp = self(*args, **kw)
        assert cp.returncode == 0, cp.stderr
        return cp

    def state(self, name):
        return os.path.join(self.xdg, "hpcrun", name)

    def pid(self, name):
        with open(os.path.join(self.state(name), "pid")) as f:
            return int(f.read().split()[0])


def ns_members(pid: int, ns: str = "pid") -> list:
    """Host pids sharing the given namespace of PID (read now)."""
    want = os.readlink(f"/proc/{pid}/ns/{ns}")
    out = []
    for p, _ in util.live_processes():
        try:
            if os.readlink(f"/proc/{p}/ns/{ns}") == want:
                out.append(p)
        except OSError:
            pass
    return out


def alive(pids) -> list:
    live = {p for p, _ in util.live_processes()}
    return [p for p in pids if p in live]


def _runtime_dir(user) -> str:
    d = util.shared_tmpdir("hpcrun-xdg-", owner=user)
    os.chmod(d, 0o700)
    return d


@pytest.fixture
def inst(user, rt_image):
    """Run hpcrun as the test user in a fresh runtime directory; afterwards every
    instance left is killed (its pid namespace) and the directory removed."""
    d = _runtime_dir(user)
    i = Inst(user, d)
    yield i
    base = os.path.join(d, "hpcrun")
    for n in os.listdir(base) if os.path.isdir(base) else ():
        try:
            with open(os.path.join(base, n, "pid")) as f:
                os.kill(int(f.read().split()[0]), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def evil():
    """A second unprivileged user (created if missing)."""
    try:
        pw = pwd.getpwnam(EVIL)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", EVIL], check=True)
        pw = pwd.getpwnam(EVIL)
    return util.User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


@pytest.fixture
def evil_inst(evil, rt_image):
    d = _runtime_dir(evil)
    yield Inst(evil, d)
    shutil.rmtree(d, ignore_errors=True)


def traced_execs(user, argv, env) -> tuple:
    """Run argv as the user under strace: (completed process, programs exec'd)."""
    util.require(shutil.which("strace") is not None, "strace is not installed")
    d = util.shared_tmpdir("hpcrun-strace-")
    os.chmod(d, 0o777)
    log = os.path.join(d, "log")
    cp = util.as_user(user, ["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none",
                             "-o", log, *argv], env=env)
    with open(log) as f:
        progs = [ln.split('"')[1] for ln in f if "execve(" in ln and "= 0" in ln]
    shutil.rmtree(d, ignore_errors=True)
    return cp, progs
