"""`:ro` binds are read-only all the way down: every mount below a read-only bind's
source is read-only inside too (bubblewrap's --ro-bind, Docker's recursive read-only),
with mount_setattr(2) and with the per-mount fallback for older kernels."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import util
from fixtures_runtime import run

pytestmark = [pytest.mark.userns, pytest.mark.root]

FALLBACK = {"HPCRUN_CORE_FALLBACKS": "1"}   # no mount_setattr: remount each submount


@pytest.fixture
def tree(user):
    """data/ (the user's) with a tmpfs mounted at data/sub, writable by the user and
    nosuid,nodev,noexec (flags the kernel locks for a user namespace, as on /dev/shm)."""
    d = util.shared_tmpdir("hpcrun-rotree-", owner=user)
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"nosuid,nodev,noexec,uid={user.uid},mode=0755",
                    "rotest", sub],
                   check=True)
    yield d
    subprocess.run(["umount", "-l", sub], check=False)
    shutil.rmtree(d, ignore_errors=True)


def touch(user, img, *opts, path, env=None):
    return run(user, *opts, img, "--", "touch", path, env=env)


@pytest.mark.parametrize("env", [None, FALLBACK], ids=["mount_setattr", "fallback"])
def test_ro_bind_makes_a_submount_read_only(user, rt_image, tree, env):
    cp = touch(user, rt_image, "-v", f"{tree}:/d:ro", path="/d/sub/x", env=env)
    assert cp.returncode != 0
    assert "Read-only file system" in cp.stderr
    assert not os.path.exists(os.path.join(tree, "sub/x"))


@pytest.mark.parametrize("env", [None, FALLBACK], ids=["mount_setattr", "fallback"])
def test_ro_bind_of_the_host_root_makes_dev_shm_read_only(user, rt_image, env):
    name = f"hpcrun-rotest-{os.getpid()}"
    cp = touch(user, rt_image, "-v", "/:/host:ro", path=f"/host/dev/shm/{name}", env=env)
    assert cp.returncode != 0
    assert "Read-only file system" in cp.stderr
    assert not os.path.exists(f"/dev/shm/{name}")


def test_ro_bind_of_the_host_root_makes_proc_read_only(user, rt_image):
    # /proc/self/comm is the caller's own and writable on a writable /proc.
    cp = run(user, "-v", "/:/host:ro", rt_image, "--", "sh", "-c",
             "echo x > /host/proc/self/comm")
    assert cp.returncode != 0
    assert "Read-only file system" in cp.stderr


def test_the_submount_stays_writable_on_the_host(user, rt_image, tree):
    # Read-only inside is a property of the container's mounts, not of the host's.
    assert touch(user, rt_image, "-v", f"{tree}:/d:ro", path="/d/x").returncode != 0
    cp = util.as_user(user, ["touch", os.path.join(tree, "sub/host-side")])
    assert cp.returncode == 0, cp.stderr


def test_rw_bind_below_a_ro_bind_stays_writable(user, rt_image, tree, user_tmp):
    cp = touch(user, rt_image, "-v", f"{tree}:/d:ro", "-v", f"{user_tmp}:/d/sub",
               path="/d/sub/x")
    assert cp.returncode == 0, cp.stderr
    assert os.path.exists(os.path.join(user_tmp, "x"))


def test_rw_bind_keeps_its_submount_writable(user, rt_image, tree):
    cp = touch(user, rt_image, "-v", f"{tree}:/d", path="/d/sub/x")
    assert cp.returncode == 0, cp.stderr


@pytest.mark.parametrize("env", [None, FALLBACK], ids=["mount_setattr", "fallback"])
def test_ro_bind_keeps_the_locked_flags_of_a_submount(user, rt_image, tree, env):
    # A remount that dropped nosuid/nodev/noexec locked on the host's mount would fail
    # (EPERM): the container starts, and the submount is ro with them kept.
    cp = run(user, "-v", f"{tree}:/d:ro", rt_image, "--", "cat", "/proc/self/mountinfo",
             env=env)
    assert cp.returncode == 0, cp.stderr
    line = next(ln for ln in cp.stdout.splitlines() if ln.split()[4] == "/d/sub")
    opts = line.split()[5].split(",")
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(opts), line


def test_the_image_is_nosuid(user, rt_image):
    cp = run(user, rt_image, "--", "cat", "/proc/self/mountinfo")
    root = next(ln for ln in cp.stdout.splitlines() if ln.split()[4] == "/")
    assert "nosuid" in root.split()[5].split(","), root


@pytest.fixture
def image_with_submount(user):
    """A busybox image with a writable tmpfs mounted inside it, at /opt/sub."""
    d = util.shared_tmpdir("hpcrun-roimg-")
    util.make_busybox_rootfs(d)
    sub = os.path.join(d, "opt/sub")
    os.makedirs(sub)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"uid={user.uid},mode=0755", "roimg", sub],
                   check=True)
    yield d
    subprocess.run(["umount", "-l", sub], check=False)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("env", [{"HPCRUN_NO_OVERLAY": "1"},
                                 {"HPCRUN_NO_OVERLAY": "1", **FALLBACK}],
                         ids=["underlay", "underlay-fallback"])
def test_a_mount_inside_the_image_is_read_only(user, image_with_submount, env):
    cp = touch(user, image_with_submount, path="/opt/sub/x", env=env)
    assert cp.returncode != 0
    assert "Read-only file system" in cp.stderr
    assert not os.path.exists(os.path.join(image_with_submount, "opt/sub/x"))
