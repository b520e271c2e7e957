"""Shared test helpers: the unprivileged test user, strict CI skips, a busybox image.

CI runs as root. Every claim that something works without root is checked by running
`hpcrun` as an unprivileged user created here (HPCRUN_TEST_USER, default hpcuser).
"""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import pytest

STRICT = os.environ.get("CI", "").lower() in ("1", "true", "yes")
VENV_BIN = os.path.dirname(sys.executable)
HPCRUN = os.path.join(VENV_BIN, "hpcrun")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")
BUSYBOX = "/bin/busybox"


def require(ok: bool, why: str) -> None:
    """Skip when a prerequisite is missing, but fail in CI, which provides everything."""
    if ok:
        return
    if STRICT:
        pytest.fail(f"CI must provide this: {why}")
    pytest.skip(why)


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


def ensure_user() -> User:
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
        pw = pwd.getpwnam(USER)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def user_env(user: User, **extra: str) -> dict[str, str]:
    env = {
        "HOME": user.home, "USER": user.name, "LOGNAME": user.name,
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
    }
    for k in ("HPCRUN_VERBOSE",):
        if k in os.environ:
            env[k] = os.environ[k]
    env.update(extra)
    return env


def as_user(user: User, argv, *, env: dict | None = None, check: bool = False,
            timeout: float = 120, input=None, cwd: str | None = None,
            **kw) -> subprocess.CompletedProcess:
    """Run argv as the unprivileged user, capturing text output."""
    e = user_env(user)
    if env:
        e.update(env)
    return subprocess.run(
        [str(a) for a in argv], user=user.uid, group=user.gid, extra_groups=[],
        env=e, cwd=cwd or "/", timeout=timeout, input=input, check=check,
        stdout=kw.pop("stdout", subprocess.PIPE), stderr=kw.pop("stderr", subprocess.PIPE),
        text=kw.pop("text", True), **kw)


def hpcrun(user: User, *args, **kw) -> subprocess.CompletedProcess:
    return as_user(user, [HPCRUN, *args], **kw)


def make_busybox_rootfs(root: str) -> str:
    """A minimal root filesystem: busybox-static and its applet links, plus the usual dirs."""
    require(os.path.exists(BUSYBOX), "busybox-static is not installed")
    from hpcrun.testing import make_busybox_rootfs as make
    return make(root, BUSYBOX)


def shared_tmpdir(prefix: str = "hpcrun-test-", owner: User | None = None) -> str:
    """A directory every test user can read (tmp_path lives under root's 0700 dir)."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    if owner is not None:
        os.chown(d, owner.uid, owner.gid)
    return d


def live_processes():
    """(pid, comm) of every live process: not a zombie, not gone while being read."""
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        if s[s.rindex(")") + 2] not in "ZX":
            yield int(p), s[s.index("(") + 1:s.rindex(")")]
