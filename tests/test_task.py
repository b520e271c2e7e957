"""`hpcrun task`: one container per Slurm task, the image prepared once per node.

Runs on the local cluster (slurm_cluster fixture); every srun/sbatch is the test user's.
"""
from __future__ import annotations

import os
import uuid

import pytest

import util
from tasks_helpers import (field, job_info, node_cache, ns_barrier, ns_rows,  # noqa: F401
                           prepare_log, sbatch, sbatch_script,
                           store_image, task_image, user_pids_with, wait_for, wait_job)

pytestmark = [pytest.mark.slurm, pytest.mark.userns]


def _srun(user, cluster, cache, *argv, timeout=180, env=None):
    env = dict(cluster.env, HPCRUN_NODE_CACHE=cache, **(env or {}))
    return util.as_user(user, ["srun", *argv], env=env, timeout=timeout)


def test_squashfs_image_prepared_once_per_node(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n8", util.HPCRUN, "task",
               task_image.sqfs, "--", "true")
    assert cp.returncode == 0, cp.stderr
    lines = prepare_log(node_cache)
    assert len(lines) == 2, lines
    assert len({field(x, "node") for x in lines}) == 2
    assert len({field(x, "job") for x in lines}) == 1


def test_every_task_sees_the_whole_image(slurm_cluster, user, task_image, node_cache):
    # 4 tasks per node start together; those that wait for the preparing task must
    # find the complete image (a 16 MiB file with a known digest), never a partial one.
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n8", util.HPCRUN, "task",
               task_image.sqfs, "--", "sha256sum", "/opt/big.bin")
    assert cp.returncode == 0, cp.stderr
    sums = [ln.split()[0] for ln in cp.stdout.splitlines() if ln.strip()]
    assert sums == [task_image.big_sha256] * 8


def test_prepared_image_reused_by_next_job(slurm_cluster, user, task_image, node_cache):
    nodes = ",".join(slurm_cluster.nodes[:2])       # the same two nodes both times
    for _ in range(2):
        cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n4", "-w", nodes, util.HPCRUN,
                   "task", task_image.sqfs, "--", "true")
        assert cp.returncode == 0, cp.stderr
    assert len(prepare_log(node_cache)) == 2


def test_store_image_prepared_once_per_node_with_its_config(slurm_cluster, user, store_image,
                                                            node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n6", util.HPCRUN, "task",
               store_image.name, "--", "sh", "-c", "echo $GREETING", env=store_image.env)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["hello-from-config"] * 6
    assert len(prepare_log(node_cache)) == 2


def test_node_container_one_user_namespace_per_node(slurm_cluster, user, user_tmp, task_image,
                                                   node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n8", util.HPCRUN, "task",
               "--node-container", "-v", f"{user_tmp}:/out", task_image.sqfs, "--",
               "sh", "-c", ns_barrier(8))
    assert cp.returncode == 0, cp.stderr
    rows = ns_rows(user_tmp)
    assert len(rows) == 8
    by_node = {}
    for node, ns in rows:
        by_node.setdefault(node, set()).add(ns)
    assert len(by_node) == 2 and all(len(v) == 1 for v in by_node.values())
    assert len({ns for _, ns in rows}) == 2


def test_node_container_short_commands_never_fail(slurm_cluster, user, task_image, node_cache):
    # `true` ends at once: later tasks find the first one gone (or going) and must
    # start over rather than fail to join.
    for _ in range(5):
        cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n8", util.HPCRUN, "task",
                   "--node-container", task_image.sqfs, "--", "true")
        assert cp.returncode == 0, cp.stderr


def test_without_node_container_one_user_namespace_per_task(slurm_cluster, user, user_tmp,
                                                            task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n8", util.HPCRUN, "task",
               "-v", f"{user_tmp}:/out", task_image.sqfs, "--", "sh", "-c", ns_barrier(8))
    assert cp.returncode == 0, cp.stderr
    assert len({ns for _, ns in ns_rows(user_tmp)}) == 8


def test_node_container_outside_slurm_runs_alone(user, task_image, node_cache):
    cp = util.hpcrun(user, "task", "--node-container", task_image.sqfs, "--", "echo", "alone",
                     env={"HPCRUN_NODE_CACHE": node_cache})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "alone"


def test_directory_image_needs_no_preparation(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n4", util.HPCRUN, "task",
               task_image.dir, "--", "cat", "/etc/os-release")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.count("NAME=busybox-test") == 4
    assert prepare_log(node_cache) == []


def test_slurm_environment_inside(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n4", util.HPCRUN, "task",
               task_image.sqfs, "--", "sh", "-c",
               'echo "$SLURM_JOB_ID $SLURM_PROCID $SLURM_NTASKS $SLURMD_NODENAME"')
    assert cp.returncode == 0, cp.stderr
    rows = [ln.split() for ln in cp.stdout.splitlines() if ln.strip()]
    assert sorted(int(r[1]) for r in rows) == [0, 1, 2, 3]
    assert len({r[0] for r in rows}) == 1 and {r[2] for r in rows} == {"4"}
    names = {r[3] for r in rows}
    assert len(names) == 2 and names <= set(slurm_cluster.nodes)


def test_task_exit_status_reaches_srun(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n1", util.HPCRUN, "task",
               task_image.sqfs, "--", "sh", "-c", "exit 7")
    assert cp.returncode == 7


def _trapping_job(user, cluster, image, cache, out, token, extra=(), task_opts=""):
    """A 2-node, 4-task job whose containerized tasks record SIGTERM, then exit."""
    script = (
        "#!/bin/sh\n"
        f"srun {util.HPCRUN} task {task_opts} -v {out}:/out {image} -- sh -c "
        "'trap \"echo TERM > /out/term.$SLURM_PROCID; exit 0\" TERM; "
        "touch /out/ready.$SLURM_PROCID; while true; do sleep 1; done' "
        f"{token}\n")
    return sbatch_script(user, cluster, script,
                         ["-N2", "-n4", *extra, "-o", os.path.join(out, "job.out")],
                         cwd=out, env={"HPCRUN_NODE_CACHE": cache})


def _all_ready(out, n=4):
    return all(os.path.exists(os.path.join(out, f"ready.{i}")) for i in range(n))


@pytest.mark.parametrize("task_opts", ["", "--node-container"])
def test_scancel_delivers_sigterm_and_leaves_nothing(slurm_cluster, user, user_tmp, task_image,
                                                       node_cache, task_opts):
    token = f"hpcrun-scancel-{uuid.uuid4().hex[:12]}"
    jobid = _trapping_job(user, slurm_cluster, task_image.sqfs, node_cache, user_tmp, token,
                          task_opts=task_opts)
    wait_for(lambda: _all_ready(user_tmp), 120, "all 4 tasks to start")
    cp = util.as_user(user, ["scancel", jobid], env=slurm_cluster.env)
    assert cp.returncode == 0, cp.stderr
    info = wait_job(slurm_cluster, jobid)
    assert info["JobState"] == "CANCELLED"
    terms = sorted(n for n in os.listdir(user_tmp) if n.startswith("term."))
    assert terms == ["term.0", "term.1", "term.2", "term.3"]
    wait_for(lambda: not user_pids_with(user, token), 30, "the job's processes to go")


def test_time_limit_delivers_sigterm_and_leaves_nothing(slurm_cluster, user, user_tmp,
                                                          task_image, node_cache):
    # Slurm's smallest time limit is one minute: this test takes one to two minutes.
    token = f"hpcrun-timeout-{uuid.uuid4().hex[:12]}"
    jobid = _trapping_job(user, slurm_cluster, task_image.sqfs, node_cache, user_tmp, token,
                          extra=("--time=1",))
    info = wait_job(slurm_cluster, jobid, timeout=300)
    assert info["JobState"] == "TIMEOUT"
    terms = sorted(n for n in os.listdir(user_tmp) if n.startswith("term."))
    assert terms == ["term.0", "term.1", "term.2", "term.3"]
    wait_for(lambda: not user_pids_with(user, token), 30, "the job's processes to go")


# --- bad input (no cluster needed: hpcrun task fails before running anything) ---

def test_missing_image(user, node_cache):
    cp = util.hpcrun(user, "task", "/nonexistent/image.sqfs", "--", "true",
                     env={"HPCRUN_NODE_CACHE": node_cache})
    assert cp.returncode == 125
    first = cp.stderr.splitlines()[0]
    assert first.startswith("hpcrun: error: ") and "/nonexistent/image.sqfs" in first
    assert "hint:" in cp.stderr


def test_file_that_is_not_squashfs(user, user_tmp, node_cache):
    bogus = os.path.join(user_tmp, "not-an-image.sqfs")
    with open(bogus, "w") as f:
        f.write("hello\n")
    cp = util.hpcrun(user, "task", bogus, "--", "true", env={"HPCRUN_NODE_CACHE": node_cache})
    assert cp.returncode == 125
    first = cp.stderr.splitlines()[0]
    assert first.startswith("hpcrun: error: ") and bogus in first
    assert "hint:" in cp.stderr
    assert not os.path.exists(node_cache)


def test_no_image_given(user):
    cp = util.hpcrun(user, "task", "--", "true")
    assert cp.returncode == 125
    assert cp.stderr.splitlines()[0] == "hpcrun: error: no IMAGE given"


def test_unwritable_node_cache(user, task_image):
    cp = util.hpcrun(user, "task", task_image.sqfs, "--", "true",
                     env={"HPCRUN_NODE_CACHE": "/proc/hpcrun-nope"})
    assert cp.returncode == 125
    assert "cannot create the node cache" in cp.stderr
    assert "hint: set node_cache" in cp.stderr


def _truncated_copy(src, dest):
    """A partial copy (what an interrupted transfer leaves): its tables are missing."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dest, "wb") as f:
        f.write(data[:len(data) * 2 // 3])
    os.chmod(dest, 0o644)


def test_truncated_squashfs_fails_and_leaves_nothing(user, user_tmp, task_image, node_cache):
    bad = os.path.join(user_tmp, "truncated.sqfs")
    _truncated_copy(task_image.sqfs, bad)
    cp = util.hpcrun(user, "task", bad, "--", "true", env={"HPCRUN_NODE_CACHE": node_cache})
    assert cp.returncode == 125
    assert cp.stderr.startswith(f"hpcrun: error: cannot unpack squashfs image {bad}: ")
    assert "hint: the file may be truncated or corrupt" in cp.stderr
    left = [n for _, dirs, _ in os.walk(node_cache) for n in dirs if n.startswith("sq-")]
    assert left == []
    assert prepare_log(node_cache) == []


def test_device_nodes_in_image_are_skipped(user, user_tmp, task_image, node_cache):
    # Only root may create device nodes: unpacking goes on without them.
    sq = os.path.join(user_tmp, "with-dev.sqfs")
    import subprocess
    subprocess.run(["mksquashfs", task_image.dir, sq, "-all-root", "-noappend", "-quiet",
                    "-p", "dev/null c 666 0 0 1 3"], check=True, stdout=subprocess.DEVNULL)
    os.chmod(sq, 0o644)
    cp = util.hpcrun(user, "task", sq, "--", "cat", "/etc/os-release",
                     env={"HPCRUN_NODE_CACHE": node_cache})
    assert cp.returncode == 0, cp.stderr
    assert "NAME=busybox-test" in cp.stdout


def test_leftovers_of_a_killed_preparation_are_removed(user, task_image, node_cache):
    # A task killed while unpacking leaves <key>.tmp-<pid>; the next preparer removes it.
    from hpcrun.runtime import unpack
    node_dir = os.path.join(node_cache, os.uname().nodename)
    key = unpack.key(os.stat(task_image.sqfs))
    stale = os.path.join(node_dir, f"{key}.tmp-99999")
    os.makedirs(os.path.join(stale, "bin"))
    import subprocess
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", node_cache], check=True)
    cp = util.hpcrun(user, "task", task_image.sqfs, "--", "true",
                     env={"HPCRUN_NODE_CACHE": node_cache})
    assert cp.returncode == 0, cp.stderr
    assert sorted(os.listdir(node_dir)) == sorted([key, key + ".lock", "prepare.log"])
