"""Every example in jobscripts/ runs on the local cluster, submitted by the test user.

Each script is copied into a directory of the user's and submitted from there with
IMAGE set, as the script's header says; the outputs are checked.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

import util
from tasks_helpers import (job_info, make_mpi_rootfs, make_squashfs, node_cache,  # noqa: F401
                           prepare_log, sbatch, task_image, wait_job)

pytestmark = [pytest.mark.slurm, pytest.mark.userns]

HERE = os.path.dirname(os.path.abspath(__file__))
JOBSCRIPTS = os.path.join(os.path.dirname(HERE), "jobscripts")
TESTED = {"single.sh", "array.sh", "multistep.sh", "pipeline.sh", "scratch.sh", "mpi.sh",
          "demo.sh", "mpirun.sh"}    # mpirun.sh: tests/test_mpi_jobscript.py


def test_every_jobscript_has_a_test():
    assert {os.path.basename(p) for p in glob.glob(os.path.join(JOBSCRIPTS, "*.sh"))} == TESTED


@pytest.fixture
def workdir(user_tmp):
    """The user's submit directory with a copy of the job scripts."""
    for p in glob.glob(os.path.join(JOBSCRIPTS, "*.sh")):
        shutil.copy(p, user_tmp)
    subprocess.run(["chown", "-R", f"{util.USER}:", user_tmp], check=True)
    return user_tmp


def _submit(user, cluster, workdir, script, image, cache, *extra):
    return sbatch(user, cluster, [*extra, os.path.join(workdir, script)], cwd=workdir,
                  env={"IMAGE": image, "HPCRUN_NODE_CACHE": cache})


def _read(path):
    with open(path) as f:
        return f.read()


def test_single(slurm_cluster, user, workdir, task_image, node_cache):
    jobid = _submit(user, slurm_cluster, workdir, "single.sh", task_image.sqfs, node_cache)
    info = wait_job(slurm_cluster, jobid)
    out = _read(os.path.join(workdir, f"single-{jobid}.out"))
    assert info["JobState"] == "COMPLETED", out
    tasks = re.findall(rf"^task (\d) of 4 on (\S+) uid={user.uid}$", out, re.M)
    assert sorted(t for t, _ in tasks) == ["0", "1", "2", "3"]
    assert len({n for _, n in tasks}) == 2
    assert "NAME=busybox-test" in out
    assert len(prepare_log(node_cache)) == 2      # one unpack per node, four tasks


def test_array(slurm_cluster, user, workdir, task_image, node_cache):
    jobid = _submit(user, slurm_cluster, workdir, "array.sh", task_image.sqfs, node_cache)
    wait_job(slurm_cluster, jobid)
    inputs = ["alpha", "beta", "gamma", "delta"]
    for i, name in enumerate(inputs):
        out = _read(os.path.join(workdir, f"array-{jobid}_{i}.out"))
        assert f"element {i} of job {jobid} processed {name}" in out, out
        assert os.path.exists(os.path.join(workdir, "results", f"{name}.txt"))


def test_multistep(slurm_cluster, user, workdir, task_image, node_cache):
    jobid = _submit(user, slurm_cluster, workdir, "multistep.sh", task_image.sqfs, node_cache)
    info = wait_job(slurm_cluster, jobid)
    out = _read(os.path.join(workdir, f"multistep-{jobid}.out"))
    assert info["JobState"] == "COMPLETED", out
    assert "step 1 done" in out and "step 2 done" in out
    assert out.rstrip().splitlines()[-1] == "sum 210"


def test_multistep_failed_step_stops_the_job(slurm_cluster, user, workdir, task_image,
                                             node_cache):
    # A step that fails (here: its image does not exist) must keep step 3 from running.
    jobid = _submit(user, slurm_cluster, workdir, "multistep.sh", "/nonexistent.sqfs",
                    node_cache)
    info = wait_job(slurm_cluster, jobid)
    out = _read(os.path.join(workdir, f"multistep-{jobid}.out"))
    assert info["JobState"] == "FAILED", out
    assert "sum" not in out


def test_pipeline(slurm_cluster, user, workdir, task_image, node_cache):
    env = dict(slurm_cluster.env, IMAGE=task_image.sqfs, HPCRUN_NODE_CACHE=node_cache)
    cp = util.as_user(user, ["bash", os.path.join(workdir, "pipeline.sh")], env=env, cwd=workdir)
    assert cp.returncode == 0, cp.stderr
    first, second = cp.stdout.split()
    info = wait_job(slurm_cluster, second)
    before = job_info(slurm_cluster, first)
    assert before["JobState"] == "COMPLETED"
    assert info["JobState"] == "COMPLETED"
    assert info["StartTime"] >= before["EndTime"]      # ISO times: afterok held it back
    assert _read(os.path.join(workdir, f"after-{second}.out")).strip() == "sum 210"


def test_scratch(slurm_cluster, user, workdir, task_image, node_cache):
    base = os.path.join(workdir, "nodelocal")
    os.makedirs(base)
    os.chown(base, user.uid, user.gid)
    jobid = sbatch(user, slurm_cluster, [os.path.join(workdir, "scratch.sh")], cwd=workdir,
                   env={"IMAGE": task_image.sqfs, "HPCRUN_NODE_CACHE": node_cache,
                        "SCRATCH_BASE": base})
    info = wait_job(slurm_cluster, jobid)
    out = _read(os.path.join(workdir, f"scratch-{jobid}.out"))
    assert info["JobState"] == "COMPLETED", out
    assert "INPUT-FOR-0" in out and "INPUT-FOR-1" in out
    assert sorted(os.listdir(os.path.join(workdir, f"scratch-results-{jobid}"))) == \
        ["out.0", "out.1"]
    assert os.listdir(base) == []                 # scratch cleaned up on every node


@pytest.fixture(scope="session")
def mpi_image():
    d = util.shared_tmpdir("hpcrun-mpiimg-")
    root = make_mpi_rootfs(os.path.join(d, "rootfs"))
    sq = make_squashfs(root, os.path.join(d, "mpi.sqfs"))
    yield sq
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.mpi
def test_mpi(slurm_cluster, user, workdir, mpi_image, node_cache):
    jobid = _submit(user, slurm_cluster, workdir, "mpi.sh", mpi_image, node_cache)
    info = wait_job(slurm_cluster, jobid)
    out = _read(os.path.join(workdir, f"mpi-{jobid}.out"))
    assert info["JobState"] == "COMPLETED", out
    ranks = re.findall(r"^rank (\d) of 4 on (\S+) allreduce 4$", out, re.M)
    assert sorted(r for r, _ in ranks) == ["0", "1", "2", "3"], out
    assert len({n for _, n in ranks}) == 2
    assert "CMA is" not in out        # ranks of a node share one container (--node-container)


def test_demo(slurm_cluster, user, user_tmp):
    # With SLURM_CONF set, the demo uses that cluster instead of starting its own.
    env = dict(os.environ, SLURM_CONF=slurm_cluster.conf, HPCRUN_DEMO_DIR=user_tmp,
               HPCRUN_DEMO_USER=user.name, HPCRUN=util.HPCRUN,
               HPCRUN_NODE_CACHE=os.path.join(user_tmp, "nodecache"))
    cp = subprocess.run(["bash", os.path.join(JOBSCRIPTS, "demo.sh")], env=env,
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    nodes = set(re.findall(rf"^task \d of 4 on (\S+) uid={user.uid}$", cp.stdout, re.M))
    assert len(nodes) == 2
    assert 'PRETTY_NAME="hpcrun example image (BusyBox' in cp.stdout
    assert len(prepare_log(os.path.join(user_tmp, "nodecache"))) == 2
    # nothing of hpcrun's own in the job's output: the unpacking (once per node) used to
    # print the node cache's path into it (issue 13)
    assert "nodecache" not in cp.stdout and "/var/tmp/hpcrun" not in cp.stdout, cp.stdout
