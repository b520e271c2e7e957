"""Resource limits, enforced by the real kernel in each tier this machine can run:
the watchdog tier as the unprivileged user (no writable cgroup), cgroup v1 as root.
Shares of CPU are measured inside, never assumed; the only bounds are physical ones
(a process bound to one CPU cannot use more than one CPU-second a second)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

import util
from hpcrun import cgroups
from fixtures_runtime import processes_with, run
from limits_helpers import (cpu_line, hpcrun_cgroups, lim_tools, monitors,  # noqa: F401
                            run_root, started)

pytestmark = [pytest.mark.userns, pytest.mark.root]

OOM = re.compile(r"^hpcrun: container killed: out of memory \(limit 64M, peak (\d+)M\)$")


def oom_peak(cp) -> int:
    assert cp.returncode == 137, cp.stderr
    lines = [ln for ln in cp.stderr.splitlines() if ln.startswith("hpcrun: container killed")]
    assert len(lines) == 1, cp.stderr
    m = OOM.match(lines[0])
    assert m, cp.stderr
    return int(m.group(1))


# ---------------------------------------------------------------- memory

def test_memory_watchdog_kills_at_limit_as_user(user, rt_image, lim_tools):
    cp = run(user, "-v", f"{lim_tools}:/t", "--memory", "64m", rt_image, "/t/eat", "400")
    peak = oom_peak(cp)
    assert 56 <= peak < 400     # it got near the limit, and was stopped well before 400M


def test_memory_watchdog_counts_every_process(user, rt_image, lim_tools):
    # three processes of 40M each: none is over 64M alone, the container is
    cp = run(user, "-v", f"{lim_tools}:/t", "--memory", "64m", rt_image, "sh", "-c",
             "/t/eat 40 30 & /t/eat 40 30 & /t/eat 40 30 & wait")
    assert oom_peak(cp) >= 64


def test_memory_under_limit_runs_to_the_end(user, rt_image, lim_tools):
    cp = run(user, "-v", f"{lim_tools}:/t", "--memory", "64m", rt_image, "/t/eat", "20")
    assert cp.returncode == 0, cp.stderr
    assert "killed" not in cp.stderr


def test_memory_watchdog_with_pid_namespace(user, rt_image, lim_tools):
    cp = run(user, "--pid=private", "-v", f"{lim_tools}:/t", "--memory", "64m", rt_image,
             "sh", "-c", "/t/eat 400; echo survived")
    oom_peak(cp)
    assert "survived" not in cp.stdout


def test_memory_cgroup_v1_as_root(rt_image, lim_tools):
    before = hpcrun_cgroups()
    cp = run_root("-v", f"{lim_tools}:/t", "--memory", "64m", rt_image, "/t/eat", "400")
    assert 56 <= oom_peak(cp) <= 64     # the kernel's own peak: it never passes the limit
    assert hpcrun_cgroups() == before


def test_memory_cgroup_v1_kills_whole_container(rt_image, lim_tools):
    # v1 has no memory.oom.group: the monitor kills the rest once the kernel kills one
    cp = run_root("-v", f"{lim_tools}:/t", "--memory", "64m", rt_image, "sh", "-c",
                  "sleep 60 & /t/eat 400; wait; echo survived")
    oom_peak(cp)
    assert "survived" not in cp.stdout


# ---------------------------------------------------------------- CPUs

def test_cpuset_visible_inside_as_user(user, rt_image):
    cp = run(user, "--cpuset-cpus", "1", rt_image, "sh", "-c",
             "nproc; grep Cpus_allowed_list /proc/self/status")
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.split()
    assert lines[0] == "1" and lines[-1] == "1", cp.stdout


def test_cpus_binds_whole_cpus_as_user(user, rt_image):
    cp = run(user, "--cpus", "1", rt_image, "nproc")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "1"


def test_cpuset_effective_as_user(user, rt_image, lim_tools):
    # two CPU-bound processes bound to CPU 0: together they get at most one CPU
    cp = run(user, "--cpuset-cpus", "0", "-v", f"{lim_tools}:/t", rt_image, "sh", "-c",
             "/t/spin 1.5 & /t/spin 1.5 & wait")
    assert cp.returncode == 0, cp.stderr
    res = cpu_line(cp.stdout)
    assert len(res) == 2, cp.stdout
    wall = max(w for w, _, _ in res)
    assert all(seen == {0} for _, _, seen in res), res
    assert sum(c for _, c, _ in res) <= wall * 1.05, res


def test_cpu_quota_cgroup_v1_as_root(rt_image, lim_tools):
    cp = run_root("--cpus", "0.5", "-v", f"{lim_tools}:/t", rt_image, "sh", "-c",
                  "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; /t/spin 2")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines()[0] == "50000"
    (wall, cpu, _), = cpu_line(cp.stdout)
    # half a CPU: measured, with the scheduler's period of slack
    assert cpu <= wall * 0.5 + 0.15, (wall, cpu)


def test_cpuset_cgroup_v1_as_root(rt_image):
    cp = run_root("--cpuset-cpus", "1", rt_image, "sh", "-c",
                  "nproc; cat /sys/fs/cgroup/cpuset/cpuset.cpus")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["1", "1"]


# ---------------------------------------------------------------- processes

def test_pids_limit_stops_fork_loop_as_user(user, rt_image, lim_tools, user_tmp):
    cp = run(user, "--pids-limit", "12", "-v", f"{lim_tools}:/t", "-v", f"{user_tmp}:/out",
             rt_image, "/t/forks.sh", "40", "/out/started", timeout=60)
    assert "can't fork" in cp.stderr or "Resource temporarily unavailable" in cp.stderr, cp.stderr
    n = started(os.path.join(user_tmp, "started"))
    assert 0 < n < 12, (n, cp.stderr)
    # the host survived and the user can still start processes
    assert run(user, rt_image, "true").returncode == 0


def test_pids_limit_cgroup_v1_as_root(rt_image, lim_tools, tmp_path):
    cp = run_root("--pids-limit", "12", "-v", f"{lim_tools}:/t", "-v", f"{tmp_path}:/out",
                  rt_image, "sh", "-c",
                  "cat /sys/fs/cgroup/pids/pids.max; /t/forks.sh 40 /out/started", timeout=60)
    assert cp.stdout.splitlines()[0] == "12", cp.stdout
    n = started(os.path.join(tmp_path, "started"))
    assert 0 < n < 12, (n, cp.stderr)


# ---------------------------------------------------------------- what the container sees

def test_cgroup_view_v1_as_root(rt_image):
    cp = run_root("--memory", "64m", rt_image, "sh", "-c",
                  "grep memory /proc/self/cgroup; cat /sys/fs/cgroup/memory/memory.limit_in_bytes;"
                  " echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes && echo wrote")
    assert cp.returncode != 0 or "wrote" not in cp.stdout
    out = cp.stdout.split()
    assert out[0].endswith("memory:/"), cp.stdout       # a cgroup namespace rooted there
    assert out[1] == str(64 << 20)                      # the cgroup with the limit itself
    assert "wrote" not in cp.stdout                     # read-only


def test_limits_view_files(user, rt_image):
    cp = run(user, "--limits-view", "--memory", "64m", "--cpuset-cpus", "1", rt_image, "sh",
             "-c", "grep MemTotal /proc/meminfo; cat /sys/devices/system/cpu/online;"
             " grep -c ^processor /proc/cpuinfo")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["MemTotal:", "65536", "kB", "1", "1"], cp.stdout


def test_tier_reported_with_v(user, rt_image):
    cp = run(user, "--memory", "64m", rt_image, "true", env={"HPCRUN_VERBOSE": "1"})
    assert "limits: no cgroup" in cp.stderr and "memory 64M by the watchdog" in cp.stderr
    cp = run_root("--memory", "64m", rt_image, "true", env={**os.environ, "HPCRUN_VERBOSE": "1"})
    assert "limits: cgroup v1: memory 64M" in cp.stderr, cp.stderr


# ---------------------------------------------------------------- leftovers

def test_nothing_left_after_exit(user, rt_image):
    before = hpcrun_cgroups()
    assert run_root("--memory", "64m", "--cpus", "1", "--pids-limit", "50", rt_image,
                    "true").returncode == 0
    assert run(user, "--memory", "64m", rt_image, "true").returncode == 0
    assert hpcrun_cgroups() == before
    assert monitors() == []


def _comm(pid) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_and_kill(argv, user=None, token=""):
    """Start hpcrun, wait until the container runs (the launcher has become its monitor),
    SIGKILL the launcher."""
    kw = dict(user=user.uid, group=user.gid, extra_groups=[], env=util.user_env(user)) if user else {}
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", **kw)
    for _ in range(200):
        if _comm(p.pid) == "hpcrun:monitor":
            break
        time.sleep(0.05)
    assert _comm(p.pid) == "hpcrun:monitor", "the container did not start"
    time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    return p.pid


def _gone(check) -> bool:
    for _ in range(200):
        if check():
            return True
        time.sleep(0.05)
    return False


def test_nothing_left_after_sigkill_cgroup_v1(rt_image):
    token = f"hpcrun-lim-kill-{os.getpid()}"
    pid = _start_and_kill([util.HPCRUN, "run", "--memory", "64m", "--pids-limit", "50",
                           rt_image, "sh", "-c", f"sleep 300 & sleep 300; : {token}"], token=token)
    assert _gone(lambda: not [d for d in hpcrun_cgroups() if d.endswith(f"-{pid}")])
    assert _gone(lambda: not processes_with(token))
    assert _gone(lambda: not monitors())


def test_nothing_left_after_sigkill_watchdog(user, rt_image):
    token = f"hpcrun-lim-wkill-{os.getpid()}"
    _start_and_kill([util.HPCRUN, "run", "--pid=private", "--memory", "64m", rt_image, "sh",
                     "-c", f"sleep 300 & sleep 300; : {token}"], user=user, token=token)
    assert _gone(lambda: not processes_with(token))
    assert _gone(lambda: not monitors())


def test_stale_cgroup_of_a_dead_launcher_is_removed(rt_image):
    """A launcher killed before its container started (no reaper yet) leaves an empty
    hpcrun-<pid> directory; the next run removes it."""
    p = subprocess.Popen(["true"])
    p.wait()                                 # a pid that is surely not running now
    mem = cgroups.detect().v1_dirs["memory"]
    stale = os.path.join(mem, f"hpcrun-{p.pid}")
    os.mkdir(stale)
    try:
        assert run_root("--memory", "64m", rt_image, "true").returncode == 0
        assert not os.path.exists(stale)
    finally:
        if os.path.exists(stale):
            os.rmdir(stale)


# ---------------------------------------------------------------- the plan cache

def _execs_root(*args, **kw):
    """`hpcrun run ARGS` as root under strace: (completed process, programs exec'd)."""
    import shutil
    import tempfile
    util.require(shutil.which("strace") is not None, "strace is not installed")
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "log")
        cp = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none",
                             "-o", log, util.HPCRUN, "run", *args], capture_output=True,
                            text=True, timeout=120, cwd="/", **kw)
        with open(log) as f:
            progs = [ln.split('"')[1] for ln in f if "execve(" in ln and "= 0" in ln]
    return cp, progs


def test_cgroup_v1_run_is_cached_and_its_cgroup_made_by_the_executor(rt_image, lim_tools):
    """A run with a cgroup of its own is planned once: warm, the C executor makes
    hpcrun-<pid> (plan words cgmk=, cgw=), the limit holds, the OOM is reported, and the
    cgroup is gone at the end. No Python starts."""
    args = ("-v", f"{lim_tools}:/t", "--memory", "48m", "--pids-limit", "40", rt_image)
    before = hpcrun_cgroups()
    cold = run_root(*args, "true")                        # plans it, fills the cache
    assert cold.returncode == 0, cold.stderr
    cp, progs = _execs_root(*args, "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
                            " /sys/fs/cgroup/pids/pids.max; grep memory /proc/self/cgroup")
    assert cp.returncode == 0, cp.stderr
    assert not any("python" in p for p in progs), progs
    out = cp.stdout.split()
    assert out[:2] == [str(48 << 20), "40"], cp.stdout
    assert out[2].endswith(":memory:/"), cp.stdout               # its cgroup namespace
    cp, progs = _execs_root(*args, "/t/eat", "400")
    assert not any("python" in p for p in progs), progs
    assert cp.returncode == 137, cp.stderr
    assert "hpcrun: container killed: out of memory (limit 48M, peak" in cp.stderr, cp.stderr
    assert hpcrun_cgroups() == before


def test_cached_cgroup_plan_is_made_under_the_callers_cgroup_of_the_moment(rt_image):
    """A cached plan names no cgroup: run from another cgroup (as a Slurm job's task
    would be), the container's is made under that one, never where the plan was made."""
    args = ("--memory", "40m", rt_image)
    assert run_root(*args, "true").returncode == 0        # planned here, cached
    mem = cgroups.detect().v1_dirs["memory"]
    child = os.path.join(mem, f"hpcrun-test-job-{os.getpid()}")
    os.mkdir(child)
    try:
        p = subprocess.Popen(["sh", "-c", f'echo $$ > {child}/cgroup.procs && '
                              f'exec {util.HPCRUN} run "$@"', "-", *args, "sleep", "3"],
                             cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        for _ in range(100):
            seen = [n for n in os.listdir(child) if n.startswith("hpcrun-")]
            if seen:
                break
            time.sleep(0.05)
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert seen == [f"hpcrun-{p.pid}"], (seen, os.listdir(mem))
        with open(os.path.join(child, "cgroup.procs")) as f:
            assert f.read() == ""                       # everything gone with it
        assert not [n for n in os.listdir(child) if n.startswith("hpcrun-")]
    finally:
        os.rmdir(child)


def test_cached_cgroup_plan_removes_a_stale_cgroup_of_a_dead_launcher(rt_image):
    p = subprocess.Popen(["true"])
    p.wait()
    args = ("--memory", "44m", rt_image, "true")
    assert run_root(*args).returncode == 0                # cached from here on
    mem = cgroups.detect().v1_dirs["memory"]
    stale = os.path.join(mem, f"hpcrun-{p.pid}")
    os.mkdir(stale)
    try:
        cp, progs = _execs_root(*args)
        assert cp.returncode == 0 and not any("python" in x for x in progs), (cp.stderr, progs)
        assert not os.path.exists(stale)
    finally:
        if os.path.exists(stale):
            os.rmdir(stale)


# ---------------------------------------------------------------- hpcrun check

def _check(argv_user=None):
    import json
    argv = [util.HPCRUN, "check", "--format", "json"]
    cp = util.as_user(argv_user, argv) if argv_user else subprocess.run(
        argv, capture_output=True, text=True, timeout=120)
    return {c["name"]: c for c in json.loads(cp.stdout)["checks"]}


def test_check_reports_tiers_and_what_to_ask(user, rt_userns):
    d = _check(user)
    assert d["cgroup delegation"]["ok"] is False
    ask = d["cgroup delegation"]["ask_admin"]
    assert "Delegate=yes" in ask and "cgroup.conf" in ask
    assert d["resource limits"]["detail"].startswith("no cgroup (cpus by affinity")
    root = _check()
    assert root["cgroup delegation"]["ok"] is True
    assert root["resource limits"]["detail"].startswith("cgroup v1 (memory, cpu, cpuset, pids)")


# ---------------------------------------------------------------- cgroup v2 (planned only)

def test_v2_plan_writes_the_v2_files():
    """cgroup v2 cannot be set up for real here (the controllers are bound to the host's
    v1 hierarchies, see the README): this checks the plan for a delegated v2 subtree,
    described by a hand-made Host, not by this machine."""
    from hpcrun.runtime.spec import RunOptions
    host = cgroups.Host(v2_dir="/sys/fs/cgroup/user.slice/job", v2_writable=True,
                        v2_controllers=frozenset({"memory", "cpu", "cpuset", "pids"}),
                        v2_enabled=frozenset(), v1_dirs={}, v1_writable={}, v1_names={},
                        slurm_job=None)
    opts = RunOptions(image="/img", memory="512m", memory_swap="1g", cpus="1.5",
                      cpuset_cpus="0-1", pids_limit="64")
    lim = cgroups.plan(opts, {}, host)
    d = f"/sys/fs/cgroup/user.slice/job/hpcrun-{os.getpid()}"
    assert lim.tier == cgroups.TIER_CGROUP2 and lim.cgroups == (d,)
    assert lim.memory_cgroup == d
    assert set(lim.writes) == {(d, "memory.max", str(512 << 20)), (d, "memory.oom.group", "1"),
                               (d, "memory.swap.max", str(512 << 20)),
                               (d, "cpu.max", "150000 100000"), (d, "cpuset.cpus", "0-1"),
                               (d, "pids.max", "64")}
    assert [(m.src, m.dst) for m in lim.mounts] == [(d, "/sys/fs/cgroup")]


# ---------------------------------------------------------------- --ulimit

def test_ulimit_nofile_seen_inside(user, rt_image):
    cp = run(user, "--ulimit", "nofile=100", rt_image, "sh", "-c", "ulimit -n")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "100"


def test_ulimit_as_only_by_name_and_with_a_warning(user, rt_image):
    cp = run(user, "--ulimit", "as=256m", rt_image, "sh", "-c", "ulimit -v")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == str(256 * 1024)
    assert "hpcrun: warning: --ulimit as limits address space, not memory" in cp.stderr
    # --memory never sets it
    cp = run(user, "--memory", "64m", rt_image, "sh", "-c", "ulimit -v")
    assert cp.stdout.strip() == "unlimited"


# ---------------------------------------------------------------- the plan cache

def _execs(user, *args):
    """hpcrun as the user under strace: (completed process, programs exec'd)."""
    import shutil
    util.require(shutil.which("strace") is not None, "strace is not installed")
    d = util.shared_tmpdir("hpcrun-strace-")
    os.chmod(d, 0o777)
    log = os.path.join(d, "log")
    cp = util.as_user(user, ["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none",
                             "-o", log, util.HPCRUN, *args])
    with open(log) as f:
        progs = [ln.split('"')[1] for ln in f if "execve(" in ln and "= 0" in ln]
    shutil.rmtree(d, ignore_errors=True)
    return cp, progs


def test_no_cgroup_tier_applies_on_a_warm_run(user, rt_image, lim_tools):
    """Affinity, rlimits and the watchdog are plan words the C executor applies: a
    cached plan (no Python) enforces them as the first run did."""
    args = ("run", "--cpuset-cpus", "1", "--ulimit", "nofile=99", "--memory", "64m",
            "-v", f"{lim_tools}:/t", rt_image, "sh", "-c", "nproc; ulimit -n; /t/eat 400")
    first = util.hpcrun(user, *args)
    cp, progs = _execs(user, *args)
    assert not any("python" in p for p in progs), progs     # the warm path
    for c in (first, cp):
        assert c.stdout.split()[:2] == ["1", "99"], c.stdout
        oom_peak(c)


def test_cgroup_tier_is_never_cached(rt_image):
    """Its plan names this run's cgroup (hpcrun-<pid>): every run plans its own."""
    for _ in range(2):
        cp = run_root("--memory", "64m", rt_image, "sh", "-c",
                      "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.strip() == str(64 << 20)


def test_memory_swap_cgroup_v1_as_root(rt_image):
    cp = run_root("--memory", "64m", "--memory-swap", "96m", rt_image, "sh", "-c",
                  "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                  "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == [str(64 << 20), str(96 << 20)]
