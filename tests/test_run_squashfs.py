"""hpcrun run on a squashfs image: squashfuse where users may use FUSE, --unpack where not."""
from __future__ import annotations

import os
import time

import pytest

from fixtures_runtime import processes_with, run

pytestmark = [pytest.mark.userns, pytest.mark.root]


def test_squashfs_runs_with_fuse(user, rt_squashfs, rt_fuse_open, rt_unpack_cache):
    cp = run(user, rt_squashfs, "cat", "/etc/os-release", env=rt_unpack_cache)
    assert cp.returncode == 0, cp.stderr
    assert "NAME=busybox-test" in cp.stdout


def test_squashfs_with_pid_private(user, rt_squashfs, rt_fuse_open, rt_unpack_cache):
    cp = run(user, "--pid=private", rt_squashfs, "sh", "-c", "exit 5", env=rt_unpack_cache)
    assert cp.returncode == 5, cp.stderr


def test_squashfuse_exits_with_the_container(user, rt_squashfs, rt_fuse_open, rt_unpack_cache):
    assert run(user, rt_squashfs, "true", env=rt_unpack_cache).returncode == 0
    for _ in range(200):    # bounded wait: the kernel aborts the FUSE connection on unmount
        if not processes_with(rt_squashfs):
            break
        time.sleep(0.05)
    assert processes_with(rt_squashfs) == []


def test_squashfs_without_fuse_says_use_unpack(user, rt_squashfs, rt_fuse_closed,
                                               rt_unpack_cache):
    cp = run(user, rt_squashfs, "true", env=rt_unpack_cache)
    assert cp.returncode == 125
    lines = cp.stderr.splitlines()
    assert lines[0].startswith(f"hpcrun: error: can't mount squashfs image {rt_squashfs}")
    assert "--unpack" in lines[1]


def test_unpack_runs(user, rt_squashfs, rt_fuse_closed, rt_unpack_cache):
    cp = run(user, "--unpack", rt_squashfs, "cat", "/etc/os-release", env=rt_unpack_cache)
    assert cp.returncode == 0, cp.stderr
    assert "NAME=busybox-test" in cp.stdout


def test_unpack_reuses_the_cache(user, rt_squashfs, rt_fuse_closed, rt_unpack_cache):
    cache = rt_unpack_cache["HPCRUN_UNPACK_CACHE"]
    assert run(user, "--unpack", rt_squashfs, "true", env=rt_unpack_cache).returncode == 0
    first = sorted(os.listdir(cache))
    marker = [d for d in first if not d.endswith(".lock") and d != "config"][0]
    ino = os.stat(os.path.join(cache, marker)).st_ino
    assert run(user, "--unpack", rt_squashfs, "true", env=rt_unpack_cache).returncode == 0
    assert sorted(os.listdir(cache)) == first
    assert os.stat(os.path.join(cache, marker)).st_ino == ino


def test_unpack_concurrent_runs_share_one_tree(user, rt_squashfs, rt_fuse_closed, rt_unpack_cache):
    import subprocess

    import util
    env = util.user_env(user, **rt_unpack_cache)
    procs = [subprocess.Popen([util.HPCRUN, "run", "--unpack", rt_squashfs, "true"],
                              user=user.uid, group=user.gid, extra_groups=[], env=env, cwd="/",
                              stderr=subprocess.PIPE) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    cache = rt_unpack_cache["HPCRUN_UNPACK_CACHE"]
    trees = [d for d in os.listdir(cache) if not d.endswith(".lock") and d != "config"]
    assert len(trees) == 1 and not trees[0].startswith(".")


def test_squashfs_config_is_cached(user, rt_squashfs, rt_fuse_open, rt_unpack_cache):
    # The image config is read out of the file once, then from the node-local cache.
    cache = os.path.join(rt_unpack_cache["HPCRUN_UNPACK_CACHE"], "config")
    assert run(user, rt_squashfs, "true", env=rt_unpack_cache).returncode == 0
    assert len(os.listdir(cache)) == 1
