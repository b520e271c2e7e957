"""hpcrun run where overlayfs can't be used in a user namespace (kernels before 5.11,
or refused): the underlay (a tmpfs of read-only binds) makes missing mount points.
HPCRUN_NO_OVERLAY=1 selects it here, where overlayfs would work."""
from __future__ import annotations

import os

import pytest

from fixtures_runtime import run

pytestmark = [pytest.mark.userns, pytest.mark.root]

NO_OVL = {"HPCRUN_NO_OVERLAY": "1"}


def test_underlay_runs_with_missing_home(user, rt_image):
    cp = run(user, rt_image, "sh", "-c", f"test -d {user.home} && echo ok", env=NO_OVL)
    assert (cp.returncode, cp.stdout.strip()) == (0, "ok"), cp.stderr


def test_underlay_root_is_not_an_overlay(user, rt_image):
    cp = run(user, rt_image, "cat", "/proc/self/mounts", env=NO_OVL)
    root = [l for l in cp.stdout.splitlines() if l.split()[1] == "/"]
    assert root and root[0].split()[2] == "tmpfs"


def test_underlay_image_is_read_only(user, rt_user_image):
    cp = run(user, rt_user_image, "touch", "/bin/new-file", env=NO_OVL)
    assert cp.returncode != 0 and "Read-only file system" in cp.stderr


def test_underlay_root_is_read_only(user, rt_image):
    cp = run(user, rt_image, "mkdir", "/new-dir", env=NO_OVL)
    assert cp.returncode != 0 and "Read-only file system" in cp.stderr


def test_underlay_keeps_symlinks(user, rt_image):
    cp = run(user, rt_image, "readlink", "/bin/sh", env=NO_OVL)
    assert cp.stdout.strip() == "/bin/busybox"


def test_underlay_volume_destination_made(user, rt_image, user_tmp):
    open(os.path.join(user_tmp, "f"), "w").close()
    cp = run(user, "-v", f"{user_tmp}:/data/in/here", rt_image, "ls", "/data/in/here", env=NO_OVL)
    assert cp.stdout.strip() == "f", cp.stderr


def test_underlay_leaves_image_unchanged(user, rt_image, user_tmp):
    src = os.path.join(user_tmp, "file")
    open(src, "w").close()
    before = sorted(os.listdir(rt_image))
    assert run(user, "-v", f"{src}:/new/file:ro", rt_image, "true", env=NO_OVL).returncode == 0
    assert sorted(os.listdir(rt_image)) == before


def test_writable_tmpfs_without_overlay_is_an_error(user, rt_image):
    cp = run(user, "--writable-tmpfs", rt_image, "true", env=NO_OVL)
    assert cp.returncode == 125
    assert cp.stderr.startswith("hpcrun: error: can't mount a writable overlay")
    assert "hint: --writable-tmpfs needs overlayfs" in cp.stderr
