"""Resource limits on instances (`hpcrun instance start --memory ...`): the instance's
monitor (cext/core.c instance_monitor) enforces them for the instance's whole life,
`hpcrun exec` processes included. As the unprivileged user the no-cgroup tier
(watchdog, affinity, RLIMIT_NPROC); as root the cgroup v1 tier."""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

import util
from limits_helpers import hpcrun_cgroups, lim_tools, monitors  # noqa: F401

pytestmark = [pytest.mark.userns, pytest.mark.root]

OOM = re.compile(r"^hpcrun: container killed: out of memory \(limit 64M, peak \d+M\)$", re.M)


def _wait_exited(inst, name, timeout=30) -> str:
    for _ in range(int(timeout * 10)):
        out = inst.ok("ps", "-a").stdout
        m = re.search(rf"Exited \((\d+)\)[^\n]*{name}|{name}[^\n]*Exited \((\d+)\)", out)
        if m:
            return m.group(1) or m.group(2)
        time.sleep(0.1)
    raise AssertionError(f"instance {name} did not end: {out}")


def _gone(pred, timeout=10):
    for _ in range(int(timeout * 20)):
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_memory_watchdog_kills_the_instance(inst, rt_image, lim_tools):
    inst.ok("instance", "start", "--name", "m", "--memory", "64m", "-v", f"{lim_tools}:/t",
            rt_image, "/t/eat", "400")
    assert _wait_exited(inst, "m") == "137"
    logs = inst.ok("logs", "m")
    assert OOM.search(logs.stderr), (logs.stdout, logs.stderr)
    assert _gone(lambda: monitors() == []), monitors()


def test_memory_under_the_limit_runs_on(inst, rt_image, lim_tools):
    inst.ok("instance", "start", "--name", "u", "--memory", "64m", "-v", f"{lim_tools}:/t",
            rt_image, "sh", "-c", "/t/eat 20 && echo fine")
    assert _wait_exited(inst, "u") == "0"
    assert inst.ok("logs", "u").stdout == "fine\n"


def test_exec_is_counted_and_killed(inst, rt_image, lim_tools):
    """What `hpcrun exec` starts is the instance's memory too (its user namespace)."""
    inst.ok("instance", "start", "--name", "x", "--memory", "64m", "-v", f"{lim_tools}:/t",
            rt_image)
    assert "limits" in os.listdir(inst.state("x"))
    cp = inst("exec", "x", "/t/eat", "400")
    assert cp.returncode == -9, cp.stderr      # SIGKILLed, with the instance (137 in sh)
    assert _wait_exited(inst, "x") == "137"
    assert OOM.search(inst.ok("logs", "x").stderr)
    assert _gone(lambda: monitors() == []), monitors()


def test_stop_ends_the_monitor(inst, rt_image):
    import json
    inst.ok("instance", "start", "--name", "s", "--memory", "64m", rt_image)
    assert monitors() != []
    st = json.loads(inst.ok("stats", "--no-stream", "--format", "json", "s").stdout)
    assert st["MemUsage"].endswith("/ 64MiB"), st
    assert st["Limits"].startswith("no cgroup") and "memory 64M" in st["Limits"], st
    inst.ok("instance", "stop", "s")
    assert _gone(lambda: monitors() == []), monitors()
    assert not os.path.exists(inst.state("s"))


def test_cpuset_for_the_instance_and_exec(inst, rt_image):
    inst.ok("instance", "start", "--name", "c", "--cpuset-cpus", "1", rt_image, "sh", "-c",
            "grep Cpus_allowed_list /proc/self/status; sleep 300")
    cp = inst.ok("exec", "c", "sh", "-c", "nproc; grep Cpus_allowed_list /proc/self/status")
    assert cp.stdout.split()[0] == "1" and cp.stdout.split()[-1] == "1", cp.stdout
    assert _gone(lambda: "Cpus_allowed_list:\t1" in inst.ok("logs", "c").stdout)
    # the caller's own CPUs are as they were
    assert inst.ok("exec", "c", "true").returncode == 0


def test_pids_limit_for_exec(inst, rt_image, lim_tools, user):
    out = util.shared_tmpdir("hpcrun-limi-", owner=user)
    inst.ok("instance", "start", "--name", "p", "--pids-limit", "20", "-v", f"{lim_tools}:/t",
            "-v", f"{out}:/o", rt_image)
    inst("exec", "p", "/t/forks.sh", "100", "/o/started", timeout=60)
    with open(os.path.join(out, "started")) as f:
        started = len(f.read().split())
    assert 0 < started < 20, started


def _root_inst():
    d = util.shared_tmpdir("hpcrun-xdgroot-")
    os.chmod(d, 0o700)
    return d


def _root(xdg, *args, timeout=60):
    return subprocess.run([util.HPCRUN, *args], capture_output=True, text=True, cwd="/",
                          timeout=timeout, env=dict(os.environ, XDG_RUNTIME_DIR=xdg))


def test_cgroup_v1_as_root(rt_image, lim_tools):
    xdg = _root_inst()
    before = hpcrun_cgroups()
    try:
        cp = _root(xdg, "-v", "instance", "start", "--name", "r", "--memory", "64m",
                   "-v", f"{lim_tools}:/t", rt_image, "sh", "-c",
                   "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; sleep 300")
        assert cp.returncode == 0, cp.stderr
        assert "limits: cgroup v1" in cp.stderr, cp.stderr
        assert len(hpcrun_cgroups() - before) == 1
        ex = _root(xdg, "exec", "r", "/t/eat", "400")
        assert ex.returncode in (-9, 137), ex.stderr
        for _ in range(100):
            logs = _root(xdg, "logs", "r")
            if OOM.search(logs.stderr):
                break
            time.sleep(0.1)
        assert logs.stdout.split()[0] == str(64 << 20), logs.stdout
        assert OOM.search(logs.stderr), logs.stderr
        assert _gone(lambda: hpcrun_cgroups() == before), hpcrun_cgroups() - before
    finally:
        _root(xdg, "instance", "stop", "r")
        subprocess.run(["rm", "-rf", xdg])
    assert _gone(lambda: hpcrun_cgroups() == before)


def test_cgroup_v1_removed_after_stop(rt_image):
    xdg = _root_inst()
    before = hpcrun_cgroups()
    try:
        cp = _root(xdg, "instance", "start", "--name", "q", "--cpus", "0.5", "--pids-limit",
                   "50", rt_image)
        assert cp.returncode == 0, cp.stderr
        assert len(hpcrun_cgroups() - before) == 2     # cpu and pids
        ex = _root(xdg, "exec", "q", "sh", "-c", "cat /sys/fs/cgroup/cpu*/cpu.cfs_quota_us")
        assert ex.stdout.split() == ["50000"], (ex.stdout, ex.stderr)
        assert _root(xdg, "instance", "stop", "q").returncode == 0
        assert _gone(lambda: hpcrun_cgroups() == before), hpcrun_cgroups() - before
        assert _gone(lambda: monitors() == []), monitors()
    finally:
        subprocess.run(["rm", "-rf", xdg])
