"""hpcrun run leaves nothing on the host: no files in /tmp, no mounts, no processes."""
from __future__ import annotations

import os
import time

import pytest

from fixtures_runtime import host_mounts_mentioning, processes_with, run, user_entries_in_tmp

pytestmark = [pytest.mark.userns, pytest.mark.root]


def test_nothing_left_in_host_tmp(user, rt_image):
    before = user_entries_in_tmp(user)
    assert run(user, rt_image, "sh", "-c", "echo x > /tmp/inside").returncode == 0
    assert run(user, "--pid=private", "--writable-tmpfs", rt_image, "true").returncode == 0
    assert user_entries_in_tmp(user) == before


def test_no_mounts_left_in_host_table(user, rt_image, user_tmp):
    assert run(user, "-v", f"{user_tmp}:/data", "--writable-tmpfs", rt_image, "true").returncode == 0
    assert host_mounts_mentioning(rt_image, user_tmp, "newroot", "oldroot", "/upper") == []


def test_pid_private_leaves_no_processes(user, rt_image):
    token = f"hpcrun-rt-bg-{os.getpid()}"
    cp = run(user, "--pid=private", rt_image, "sh", "-c", f"sleep 300 {token} & exit 0")
    assert cp.returncode == 0
    for _ in range(100):    # bounded wait for the kernel to reap the pid namespace
        if not processes_with(token):
            break
        time.sleep(0.05)
    assert processes_with(token) == []


def test_monitor_is_gone_after_exit(user, rt_image):
    token = f"hpcrun-rt-mon-{os.getpid()}"
    assert run(user, "--pid=private", rt_image, "sh", "-c", f": {token}").returncode == 0
    assert processes_with(token) == []
