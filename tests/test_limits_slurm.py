"""Limits inside real Slurm job cgroups: a one-node local cluster run with task/cgroup +
proctrack/cgroup (cgroup v1, `hpcrun cluster up --cgroup`), submitting as the user.
The job's --mem is enforced by Slurm's cgroup and shown by `hpcrun status`; hpcrun's
own --memory inside a job (whose cgroup the user may not write) is the watchdog, and
the container never leaves the job's cgroup."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

import util
from fixtures_slurm import CLUSTER_NAME, slurm_prereqs
from hpcrun import cgroups
from limits_helpers import hpcrun_cgroups, lim_tools, monitors  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.root, pytest.mark.userns]


@pytest.fixture(scope="module")
def cg_cluster(user):
    slurm_prereqs()
    from hpcrun import cgroups
    from hpcrun.slurm.cluster import CLUSTER_CONTROLLERS, LocalCluster
    util.require(cgroups.nest_missing(CLUSTER_CONTROLLERS) is None,
                 "cgroup v1 memory, cpuset and freezer hierarchies are needed")
    c = LocalCluster((CLUSTER_NAME + "g")[:11])
    c.up(1, replace=True, cgroup=True)
    env = {"SLURM_CONF": c.conf_path,
           "PATH": f"{util.VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    yield env
    c.down()


def sh(user, env, *argv, timeout=120):
    return util.as_user(user, list(argv), env=env, timeout=timeout, cwd="/tmp")


def wait_done(user, env, jid, timeout=90):
    for _ in range(int(timeout * 4)):
        cp = util.hpcrun(user, "status", "--format", "json", jid, env=env)
        doc = json.loads(cp.stdout) if cp.returncode == 0 and cp.stdout.strip() else []
        if doc and doc[0]["state"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return doc[0]
        time.sleep(0.25)
    raise AssertionError(f"job {jid} did not finish")


def test_job_cgroup_is_real(user, cg_cluster, rt_image):
    cp = sh(user, cg_cluster, "srun", "--mem=64M", "-c", "1", "sh", "-c",
            "grep memory /proc/self/cgroup; nproc")
    assert cp.returncode == 0, cp.stderr
    assert re.search(r"memory:/slurm\w*-?[\w-]*/uid_\d+/job_\d+/step_\d+", cp.stdout), cp.stdout
    assert cp.stdout.split()[-1] == "1"


def test_job_mem_oom_shown_in_status(user, cg_cluster, rt_image, lim_tools, user_tmp):
    out = os.path.join(user_tmp, "oom.out")
    cp = sh(user, cg_cluster, "sbatch", "--parsable", "--mem=64M", "-o", out, "--wrap",
            f"{util.HPCRUN} run -v {lim_tools}:/t {rt_image} /t/eat 400; echo rc=$?")
    assert cp.returncode == 0, cp.stderr
    job = wait_done(user, cg_cluster, cp.stdout.strip().split(";")[0])
    assert job["state"] == "OUT_OF_MEMORY", job
    with open(out) as f:
        assert "rc=137" in f.read()


def test_job_file_resources_mem_needs_no_flag(user, cg_cluster, rt_image, lim_tools, user_tmp):
    p = os.path.join(user_tmp, "job.yaml")
    with open(p, "w") as f:
        f.write(f"image: {rt_image}\ncommand: /t/eat 400\nmounts: ['{lim_tools}:/t']\n"
                "resources: {mem: 64M}\n")
    os.chown(p, user.uid, user.gid)
    cp = util.hpcrun(user, "submit", p, env=cg_cluster, cwd=user_tmp)
    assert cp.returncode == 0, cp.stderr
    jid = cp.stdout.split()[0]
    job = wait_done(user, cg_cluster, jid)
    # The task step was killed by the job cgroup's OOM killer. Slurm marks the job itself
    # OUT_OF_MEMORY only when its batch step is (sbatch --wrap above); a job file's
    # tasks run in an srun step, so the job ends FAILED with the task's 137 and the log
    # names the OOM kill (no accounting storage here to ask for step states).
    assert job["state"] in ("OUT_OF_MEMORY", "FAILED"), job
    logs = util.hpcrun(user, "logs", jid, env=cg_cluster, cwd=user_tmp)
    assert "oom-kill" in logs.stdout + logs.stderr, (job, logs)


def test_watchdog_inside_job_stays_in_job_cgroup(user, cg_cluster, rt_image, lim_tools):
    cp = sh(user, cg_cluster, "srun", "--mem=256M", util.HPCRUN, "-v", "run", "--memory", "64m",
            "-v", f"{lim_tools}:/t", rt_image, "sh", "-c",
            "grep memory /proc/self/cgroup; /t/eat 400")
    assert cp.returncode == 137, cp.stderr
    assert "limits: no cgroup" in cp.stderr               # the job's cgroup is Slurm's
    assert re.search(r"hpcrun: container killed: out of memory \(limit 64M, peak \d+M\)",
                     cp.stderr), cp.stderr
    assert re.search(r"memory:/slurm\S*/job_\d+/step_\d+", cp.stdout), cp.stdout


def test_nothing_left_after_scancel(user, cg_cluster, rt_image):
    token = f"hpcrun-lim-scancel-{os.getpid()}"
    cp = sh(user, cg_cluster, "sbatch", "--parsable", "--mem=128M", "-o", "/dev/null", "--wrap",
            f"{util.HPCRUN} run --memory 64m --pid=private {rt_image} sh -c 'sleep 300; : {token}'")
    assert cp.returncode == 0, cp.stderr
    jid = cp.stdout.strip().split(";")[0]
    for _ in range(240):
        if monitors():
            break
        time.sleep(0.25)
    assert monitors(), "the container did not start"
    sh(user, cg_cluster, "scancel", jid)
    for _ in range(120):
        if not monitors() and not _with(token):
            break
        time.sleep(0.25)
    assert monitors() == [] and _with(token) == []


def _with(token):
    from fixtures_runtime import processes_with
    return processes_with(token)


def test_container_in_job_sees_the_jobs_limit(user, cg_cluster, rt_image):
    """Not `memory.limit_in_bytes` of an unlimited task leaf (enroot#169): the job's."""
    cp = sh(user, cg_cluster, "srun", "--mem=64M", "-c", "1", util.HPCRUN, "run", rt_image,
            "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; nproc")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == [str(64 << 20), "1"], cp.stdout


# ---------------------------------------------------------------- the other entry points

OOM64 = re.compile(r"hpcrun: container killed: out of memory \(limit 64M, peak \d+M\)")
JOB_MEM_CGROUP = re.compile(r"memory:/slurm\S*/job_\d+/step_\d+")


def test_srun_container_memory_stays_in_job_cgroup(user, cg_cluster, rt_image, lim_tools):
    """`hpcrun srun --container-memory`: a step plan; each task plans the limit on its
    node, in its own (Slurm's, not writable) cgroup: the watchdog, never leaving it."""
    cp = util.hpcrun(user, "-v", "srun", f"--container-image={rt_image}",
                     f"--container-mounts={lim_tools}:/t", "--container-memory=64m",
                     "--mem=256M", "-n1", "--", "sh", "-c",
                     "grep memory /proc/self/cgroup; /t/eat 400", env=cg_cluster, cwd="/tmp",
                     timeout=120)
    assert cp.returncode == 137, cp.stderr
    assert "limits: no cgroup" in cp.stderr and OOM64.search(cp.stderr), cp.stderr
    assert JOB_MEM_CGROUP.search(cp.stdout), cp.stdout


def _submit(user, env, user_tmp, text):
    p = os.path.join(user_tmp, f"job{time.monotonic_ns()}.yaml")
    with open(p, "w") as f:
        f.write(text)
    os.chown(p, user.uid, user.gid)
    cp = util.hpcrun(user, "submit", p, env=env, cwd=user_tmp)
    assert cp.returncode == 0, cp.stderr
    jid = cp.stdout.split()[0]
    job = wait_done(user, env, jid)
    logs = util.hpcrun(user, "logs", jid, env=env, cwd=user_tmp)
    return job, logs.stdout + logs.stderr


def test_job_file_resources_seen_inside_without_flags(user, cg_cluster, rt_image, user_tmp):
    """resources: {mem, cpus_per_task}: the job's cgroup carries them (Slurm's
    task/cgroup), and the container reads them there: no container option needed."""
    job, out = _submit(user, cg_cluster, user_tmp,
                       f"image: {rt_image}\nresources: {{mem: 64M, cpus_per_task: 1}}\n"
                       "command: [sh, -c, 'echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
                       " cpus=$(cat /sys/fs/cgroup/cpuset/cpuset.cpus) nproc=$(nproc)']\n")
    assert job["state"] == "COMPLETED", (job, out)
    m = re.search(r"mem=(\d+) cpus=(\S+) nproc=(\d+)", out)
    assert m, out
    assert int(m.group(1)) == 64 << 20, out
    assert len(cgroups.parse_cpuset(m.group(2))) == 1 and m.group(3) == "1", out


def test_job_file_container_memory_in_job(user, cg_cluster, rt_image, lim_tools, user_tmp):
    """container: {memory: 64m} in a job of 256M: each task's container is limited to
    64M (the watchdog here), inside the job's cgroup; exit 137 and the one line."""
    job, out = _submit(user, cg_cluster, user_tmp,
                       f"image: {rt_image}\nmounts: ['{lim_tools}:/t']\n"
                       "resources: {mem: 256M}\ncontainer: {memory: 64m}\n"
                       "command: [sh, -c, 'grep memory /proc/self/cgroup; /t/eat 400']\n")
    assert job["state"] == "FAILED", (job, out)
    assert OOM64.search(out) and JOB_MEM_CGROUP.search(out), out
    assert "oom-kill" not in out, out          # hpcrun's limit, not the job's


def _as_root(env, argv, timeout=120):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/tmp",
                          env=dict(os.environ, **env))


@pytest.mark.parametrize("entry", ["run", "srun"])
def test_cgroup_tier_is_a_child_of_the_step(cg_cluster, rt_image, lim_tools, entry):
    """Where the job's cgroup is writable (root here), the limit's cgroup is made under
    the step's own: a child of it, removed at the end; the job's cgroup is never left."""
    before = hpcrun_cgroups()
    show = "grep memory /proc/self/cgroup; cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    if entry == "run":
        cp = _as_root(cg_cluster, ["srun", "--mem=256M", "sh", "-c",
                                   f"grep memory /proc/self/cgroup; {util.HPCRUN} -v run "
                                   f"--memory 64m -v {lim_tools}:/t {rt_image} sh -c "
                                   f"'{show}; /t/eat 400'"])
    else:
        cp = _as_root(cg_cluster, [util.HPCRUN, "-v", "srun", f"--container-image={rt_image}",
                                   f"--container-mounts={lim_tools}:/t",
                                   "--container-memory=64m", "--mem=256M", "-n1", "--",
                                   "sh", "-c", f"{show}; /t/eat 400"])
    assert cp.returncode == 137, cp.stderr
    assert OOM64.search(cp.stderr), cp.stderr
    m = re.search(r"limits: cgroup v1: .* in \S+/job_\d+/step_\d+(/task_\d+)?/hpcrun-\d+$",
                  cp.stderr, re.M)
    assert m, cp.stderr
    # inside: a cgroup namespace rooted at the limit's cgroup, which carries 64M
    assert "memory:/\n" in cp.stdout and str(64 << 20) in cp.stdout.split(), cp.stdout
    assert hpcrun_cgroups() == before
