"""`apt-get install` in a RUN step, as the unprivileged user, on a Debian base made with
debootstrap (Debian mirror only). The base is made once per machine and kept as a tar
under /var/tmp (HPCRUN_TEST_DEBIAN_TAR), since debootstrap takes minutes."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile

import pytest

import util
from fixtures_image import hp, ok

pytestmark = [pytest.mark.userns, pytest.mark.root]

DEBIAN_TAR = os.environ.get("HPCRUN_TEST_DEBIAN_TAR", "/var/tmp/hpcrun-debian-bookworm.tar")
MIRROR = os.environ.get("HPCRUN_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")


@pytest.fixture(scope="session")
def debian_tar() -> str:
    """debootstrap --variant=minbase bookworm, as root, tarred with numeric owners."""
    with open(DEBIAN_TAR + ".lock", "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)        # another session may be making it
        if os.path.exists(DEBIAN_TAR):
            return DEBIAN_TAR
        util.require(shutil.which("debootstrap") is not None, "debootstrap is not installed")
        d = tempfile.mkdtemp(prefix="hpcrun-debootstrap-", dir="/var/tmp")
        try:
            cp = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", d, MIRROR],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=1200)
            util.require(cp.returncode == 0, f"debootstrap failed (is {MIRROR} reachable?): "
                                             + cp.stdout[-500:])
            tmp = DEBIAN_TAR + ".tmp"
            subprocess.run(["tar", "-C", d, "--numeric-owner", "--exclude=./dev/*",
                            "--exclude=./proc/*", "--exclude=./sys/*", "-cf", tmp, "."],
                           check=True, timeout=600)
            os.chmod(tmp, 0o644)
            os.replace(tmp, DEBIAN_TAR)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return DEBIAN_TAR


def test_apt_get_install_in_a_run_step(user, store_env, user_tmp, debian_tar):
    ok(hp(user, store_env, "import", debian_tar, "debian:bookworm", timeout=300))
    ctx = os.path.join(user_tmp, "ctx")
    os.mkdir(ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM debian:bookworm\n"
                "RUN apt-get update && apt-get install -y --no-install-recommends hello "
                "&& rm -rf /var/lib/apt/lists/*\n"
                'CMD ["hello"]\n')
    os.chown(ctx, user.uid, user.gid)
    cp = hp(user, store_env, "build", "-t", "hello:1", ctx, timeout=600)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert "Setting up hello" in cp.stderr
    assert "\r" not in cp.stderr            # not a terminal: whole lines only
    assert ok(hp(user, store_env, "run", "hello:1")).stdout == "Hello, world!\n"
    # the step-only apt configuration did not end up in the image
    out = ok(hp(user, store_env, "run", "hello:1", "--", "ls", "/etc/apt/apt.conf.d")).stdout
    assert "hpcrun" not in out
    # dpkg's files belong to root in the image, as apt made them
    st = ok(hp(user, store_env, "run", "hello:1", "--", "dpkg", "-s", "hello")).stdout
    assert "Status: install ok installed" in st
