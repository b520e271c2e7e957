"""Resource limits on every entry point besides `hpcrun run`: `hpcrun task`, a step plan
(`hpcrun task --plan`, executed by the C per-task program), and as root the cgroup v1
tier through both. The Slurm ones (`hpcrun srun --container-memory`, job files'
`container:` and `resources:`) are in test_limits_slurm.py, on a cluster with real job
cgroups. Run as the unprivileged user (the watchdog tier) unless a test says root."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

import util
from limits_helpers import hpcrun_cgroups, lim_tools, monitors  # noqa: F401

pytestmark = [pytest.mark.userns, pytest.mark.root]

OOM = re.compile(r"^hpcrun: container killed: out of memory \(limit 64M, peak \d+M\)$", re.M)


def _plan(user, *opts, root=False):
    """`hpcrun task --plan OPTS`: (program, plan word)."""
    argv = [util.HPCRUN, "task", "--plan", *opts]
    cp = (subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/") if root
          else util.as_user(user, argv))
    assert cp.returncode == 0, cp.stderr
    prog, word = cp.stdout.split()
    return prog, word


def _exec(user, prog, word, *cmd, root=False, env=None):
    """The per-task program running a plan, as srun would start it (here outside a job:
    a container of its own)."""
    argv = [prog, word, "--", *cmd]
    if root:
        e = dict(os.environ, **(env or {}))
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/", env=e)
    return util.as_user(user, argv, env=env)


def test_task_memory_watchdog(user, rt_image, lim_tools):
    cp = util.hpcrun(user, "-v", "task", "-v", f"{lim_tools}:/t", "--memory", "64m", rt_image,
                     "--", "/t/eat", "400")
    assert cp.returncode == 137, cp.stderr
    assert OOM.search(cp.stderr), cp.stderr
    assert "limits: no cgroup" in cp.stderr, cp.stderr


def test_task_cpuset_and_pids(user, rt_image):
    cp = util.hpcrun(user, "task", "--cpuset-cpus", "0", "--pids-limit", "50", rt_image, "--",
                     "sh", "-c", "nproc; grep Cpus_allowed_list /proc/self/status")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split()[0] == "1" and cp.stdout.split()[-1] == "0", cp.stdout


def _execs(user, prog, word, *cmd, env=None):
    """_exec under strace: (completed process, programs exec'd)."""
    util.require(shutil.which("strace") is not None, "strace is not installed")
    d = util.shared_tmpdir("hpcrun-strace-")
    os.chmod(d, 0o777)
    log = os.path.join(d, "log")
    cp = util.as_user(user, ["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none",
                             "-o", log, prog, word, "--", *cmd], env=env)
    with open(log) as f:
        progs = [ln.split('"')[1] for ln in f if "execve(" in ln and "= 0" in ln]
    shutil.rmtree(d, ignore_errors=True)
    return cp, progs


def test_plan_memory_by_the_executor_where_the_node_has_no_writable_cgroup(user, rt_image,
                                                                           lim_tools):
    """--memory in a step plan: the no-cgroup tier's words (lim=), applied by the C
    executor with no Python per task, since this node gives the user no writable cgroup
    (limnode= names the cgroups it checks); -v says the tier."""
    prog, word = _plan(user, "-v", f"{lim_tools}:/t", "--memory", "64m", rt_image)
    words = word.split(",")
    assert "pertask=1" not in words and "lim=3:67108864:0:0:100" in words, word
    assert any(w.startswith("limnode=memory:") for w in words), word
    cp, progs = _execs(user, prog, word, "/t/eat", "400", env={"HPCRUN_VERBOSE": "1"})
    assert progs[0] == prog and not any("python" in p for p in progs[1:]), progs
    assert cp.returncode == 137, cp.stderr
    assert OOM.search(cp.stderr), cp.stderr
    assert "hpcrun: limits: no cgroup (affinity, watchdog, RLIMIT_NPROC): memory 64M by the " \
        "watchdog" in cp.stderr, cp.stderr
    assert monitors() == []


def test_plan_memory_pids_and_whole_cpus_by_the_executor(user, rt_image, tmp_path, lim_tools):
    out = util.shared_tmpdir("hpcrun-limplan-", owner=user)
    prog, word = _plan(user, "-v", f"{lim_tools}:/t", "-v", f"{out}:/o", "--memory", "64m",
                       "--pids-limit", "20", "--cpus", "1", rt_image)
    words = word.split(",")
    assert "affn=1" in words and "pertask=1" not in words, word
    cp, progs = _execs(user, prog, word, "sh", "-c", "nproc; /t/forks.sh 100 /o/started")
    assert progs[0] == prog and not any("python" in p for p in progs[1:]), progs
    assert cp.stdout.split()[0] == "1", cp.stdout
    with open(os.path.join(out, "started")) as f:
        started = len(f.read().split())
    assert 0 < started < 20, (started, cp.stderr)


def test_plan_memory_under_limit_runs(user, rt_image, lim_tools):
    prog, word = _plan(user, "-v", f"{lim_tools}:/t", "--memory", "64m", rt_image)
    cp = _exec(user, prog, word, "sh", "-c", "/t/eat 20 && echo done")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "done"


def test_plan_whole_cpus_by_the_executor(user, rt_image):
    """A bare --cpus N: the plan carries it (affn=N, no Python per task)."""
    prog, word = _plan(user, "--cpus", "1", rt_image)
    words = word.split(",")
    assert "affn=1" in words and "pertask=1" not in words, word
    assert not any(w.startswith("aff=") for w in words), word
    cp = _exec(user, prog, word, "sh", "-c", "nproc; grep Cpus_allowed_list /proc/self/status")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split()[0] == "1", cp.stdout


def test_plan_whole_cpus_from_the_tasks_own(user, rt_image):
    """affn= picks from the CPUs the task was given (Slurm's binding), not the node's."""
    prog, word = _plan(user, "--cpus", "1", rt_image)
    cp = util.as_user(user, ["taskset", "-c", "1", prog, word, "--", "grep",
                             "Cpus_allowed_list", "/proc/self/status"])
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split()[-1] == "1", cp.stdout


def test_plan_cpuset_and_view(user, rt_image):
    prog, word = _plan(user, "--cpuset-cpus", "1", "--limits-view", rt_image)
    cp = _exec(user, prog, word, "sh", "-c",
               "nproc; cat /sys/devices/system/cpu/online; grep -c ^processor /proc/cpuinfo")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["1", "1", "1"], cp.stdout


def test_plan_pids_limit(user, rt_image, lim_tools, tmp_path):
    out = util.shared_tmpdir("hpcrun-limplan-", owner=user)
    prog, word = _plan(user, "-v", f"{lim_tools}:/t", "-v", f"{out}:/o", "--pids-limit", "20",
                       rt_image)
    cp = _exec(user, prog, word, "/t/forks.sh", "100", "/o/started")
    with open(os.path.join(out, "started")) as f:
        started = len(f.read().split())
    assert 0 < started < 20, (started, cp.stderr)


def test_plan_ulimit(user, rt_image):
    prog, word = _plan(user, "--ulimit", "nofile=100", rt_image)
    assert "rl=nofile:100:100" in word.split(","), word
    cp = _exec(user, prog, word, "sh", "-c", "ulimit -n")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "100"


@pytest.mark.parametrize("opts, what", [
    (["--memory", "1k"], "--memory 1k is below"),
    (["--memory", "lots"], "--memory 'lots' is not a size"),
    (["--cpus", "0"], "--cpus 0 is not a CPU count"),
    (["--cpuset-cpus", "3-1"], "is not a CPU list"),
    (["--memory", "1g", "--memory-swap", "512m"], "--memory-swap 512m is below"),
    (["--pids-limit", "0"], "--pids-limit 0 is not a process count"),
])
def test_plan_bad_values_at_once(user, rt_image, opts, what):
    """Checked when the plan is made (exit 125, one line), not by each task."""
    cp = util.hpcrun(user, "task", "--plan", *opts, rt_image)
    assert cp.returncode == 125, cp.stderr
    assert what in cp.stderr.splitlines()[0], cp.stderr
    assert cp.stdout == ""


def test_plan_cpuset_outside_the_tasks_cpus(user, rt_image):
    """The CPUs are the task's: a cpuset outside them fails there, with the range."""
    prog, word = _plan(user, "--cpuset-cpus", "1", rt_image)
    cp = util.as_user(user, ["taskset", "-c", "0", prog, word, "--", "true"])
    assert cp.returncode == 125, cp.stderr
    assert "--cpuset-cpus 1: CPU 1 is not allowed here (allowed: 0)" in cp.stderr, cp.stderr


def test_task_cgroup_v1_as_root(rt_image, lim_tools):
    before = hpcrun_cgroups()
    cp = subprocess.run([util.HPCRUN, "-v", "task", "-v", f"{lim_tools}:/t", "--memory", "64m",
                         rt_image, "--", "/t/eat", "400"], capture_output=True, text=True,
                        timeout=120, cwd="/")
    assert cp.returncode == 137, cp.stderr
    assert "limits: cgroup v1" in cp.stderr and OOM.search(cp.stderr), cp.stderr
    assert hpcrun_cgroups() == before


def test_plan_cgroup_v1_as_root(rt_image, lim_tools):
    """The step plan's task makes its cgroup (under its own) on its node, and it is
    gone after."""
    before = hpcrun_cgroups()
    prog, word = _plan(None, "-v", f"{lim_tools}:/t", "--memory", "64m", "--cpus", "0.5",
                       rt_image, root=True)
    cp = _exec(None, prog, word, "sh", "-c", "cat /sys/fs/cgroup/cpu*/cpu.cfs_quota_us; "
               "/t/eat 400", root=True, env={"HPCRUN_VERBOSE": "1"})
    assert cp.returncode == 137, cp.stderr
    assert "limits: cgroup v1" in cp.stderr and OOM.search(cp.stderr), cp.stderr
    assert cp.stdout.split()[0] == "50000", cp.stdout
    assert hpcrun_cgroups() == before


def test_job_file_limit_keys_take_numbers_and_resources_map(tmp_path):
    """container: {cpus: 1, pids-limit: 50} (numbers, as YAML writes them) and
    resources.cpus_per_task -> --cpus on each task, unless container: sets the CPUs."""
    from hpcrun.runtime import options
    from hpcrun.runtime.pipeline import run_options
    from hpcrun.slurm import jobfile, render

    def opts(text):
        step = jobfile.parse(text, str(tmp_path / "j.yaml")).steps[0]
        return run_options(render.task_options(step), options.PLAN)

    o = opts("image: /tmp\ncommand: [x]\ncontainer: {cpus: 1, pids-limit: 50, memory: 64m}\n")
    assert (o.cpus, o.pids_limit, o.memory) == ("1", "50", "64m")
    assert opts("image: /tmp\ncommand: [x]\nresources: {cpus_per_task: 2}\n").cpus == "2"
    o = opts("image: /tmp\ncommand: [x]\nresources: {cpus_per_task: 2, mem: 1G}\n"
             "container: {cpuset-cpus: '0'}\n")
    assert o.cpus is None and o.cpuset_cpus == "0" and o.memory is None
