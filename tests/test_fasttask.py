"""`hpcrun-task`: the per-task front end that joins the node's container without Python.

The first task of a step on a node (Python, `hpcrun task --node-container`) makes the
container, held by a keeper, and writes a plan; the node's other tasks (bin/hpcrun-task,
POSIX sh) join it with nsenter. HPCRUN_TASK_LOG=1 makes every task write how it started
(`keeper`/`join`: Python, `fast`: sh only) to <node_cache>/<node>/tasks.log.

Runs on the local cluster as the test user. The front end is installed here the way
pip installs it: beside an `hpcrun` in one bin directory.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid

import pytest

import util
from tasks_helpers import (node_cache, sbatch, task_image, user_pids_with,  # noqa: F401
                           wait_for, wait_job)

pytestmark = [pytest.mark.slurm, pytest.mark.userns]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def front():
    """A bin directory with `hpcrun` (the dev install's) and `hpcrun-task` (this repo's)."""
    d = util.shared_tmpdir("hpcrun-front-")
    b = os.path.join(d, "bin")
    os.makedirs(b)
    os.symlink(util.HPCRUN, os.path.join(b, "hpcrun"))
    shutil.copy2(os.path.join(REPO, "bin", "hpcrun-task"), os.path.join(b, "hpcrun-task"))
    os.chmod(os.path.join(b, "hpcrun-task"), 0o755)
    os.chmod(d, 0o755)
    os.chmod(b, 0o755)
    yield os.path.join(b, "hpcrun-task")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def env_image():
    """A busybox directory image whose config sets IMGVAR and FROMHOST."""
    d = util.shared_tmpdir("hpcrun-envimg-")
    root = os.path.join(d, "rootfs")
    util.make_busybox_rootfs(root)
    os.makedirs(os.path.join(root, ".hpcrun"), exist_ok=True)
    with open(os.path.join(root, ".hpcrun", "config.json"), "w") as f:
        json.dump({"config": {"Env": ["IMGVAR=image", "FROMHOST=image",
                                      "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}}, f)
    os.system(f"chmod -R a+rX {d}")
    yield root
    shutil.rmtree(d, ignore_errors=True)


def _srun(user, cluster, cache, *argv, env=None):
    e = dict(cluster.env, HPCRUN_NODE_CACHE=cache, HPCRUN_TASK_LOG="1", **(env or {}))
    return util.as_user(user, ["srun", *argv], env=e, timeout=180)


def _warm(user, cluster, cache, front, image, nodes=1):
    """One step first: it makes the node cache directories (and the image's unpacked
    copy); the tests then look at the steps after it."""
    cp = _srun(user, cluster, cache, f"-N{nodes}", f"-n{nodes}", front, image, "--", "true")
    assert cp.returncode == 0, cp.stderr


def _log(cache) -> list:
    rows = []
    for node in sorted(os.listdir(cache)):
        p = os.path.join(cache, node, "tasks.log")
        if os.path.exists(p):
            with open(p) as f:
                rows += [dict(kv.split("=", 1) for kv in ln.split()[1:]) | {"how": ln.split()[0]}
                         for ln in f if ln.strip()]
    return rows


def _last_job(cache) -> list:
    rows = _log(cache)
    job = max(int(r["job"]) for r in rows)
    return [r for r in rows if int(r["job"]) == job]


def _hows(rows) -> dict:
    out: dict = {}
    for r in rows:
        out[r["how"]] = out.get(r["how"], 0) + 1
    return out


def test_one_python_task_per_node_the_others_join_from_sh(slurm_cluster, user, task_image,
                                                          node_cache, front):
    _warm(user, slurm_cluster, node_cache, front, task_image.sqfs, nodes=2)
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n8", front, task_image.sqfs, "--",
               "true")
    assert cp.returncode == 0, cp.stderr
    assert _hows(_last_job(node_cache)) == {"keeper": 2, "fast": 6}


def test_fast_tasks_see_their_own_procid(slurm_cluster, user, task_image, node_cache, front):
    _warm(user, slurm_cluster, node_cache, front, task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", front, task_image.sqfs, "--",
               "sh", "-c", 'echo "$SLURM_PROCID $$"')
    assert cp.returncode == 0, cp.stderr
    assert sorted(int(ln.split()[0]) for ln in cp.stdout.splitlines()) == [0, 1, 2, 3]
    assert _hows(_last_job(node_cache)).get("fast") == 3


def test_tasks_of_a_node_share_one_user_namespace(slurm_cluster, user, task_image, node_cache,
                                                  front):
    _warm(user, slurm_cluster, node_cache, front, task_image.sqfs, nodes=2)
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n8", front, task_image.sqfs, "--",
               "sh", "-c", 'echo "$SLURMD_NODENAME $(readlink /proc/self/ns/user)"')
    assert cp.returncode == 0, cp.stderr
    rows = {tuple(ln.split()) for ln in cp.stdout.splitlines()}
    assert len(rows) == 2 and len({r[0] for r in rows}) == 2


def test_image_env_beats_the_hosts(slurm_cluster, user, env_image, node_cache, front):
    _warm(user, slurm_cluster, node_cache, front, env_image)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", front, env_image, "--",
               "sh", "-c", 'echo "$FROMHOST $IMGVAR"', env={"FROMHOST": "host"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split("\n")[:4] == ["image image"] * 4


def test_dash_e_beats_the_image(slurm_cluster, user, env_image, node_cache, front):
    _warm(user, slurm_cluster, node_cache, front, env_image)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", front, "-e", "FROMHOST=cli",
               env_image, "--", "sh", "-c", 'echo "$FROMHOST"', env={"FROMHOST": "host"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["cli"] * 4
    assert _hows(_last_job(node_cache)).get("fast") == 3


def test_dash_e_name_takes_each_tasks_own_value(slurm_cluster, user, env_image, node_cache,
                                                front):
    _warm(user, slurm_cluster, node_cache, front, env_image)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", front, "-e", "FROMHOST",
               env_image, "--", "sh", "-c", 'echo "$FROMHOST"', env={"FROMHOST": "host"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["host"] * 4


def test_cleanenv_drops_the_hosts_variables_keeps_slurms(slurm_cluster, user, task_image,
                                                         node_cache, front):
    _warm(user, slurm_cluster, node_cache, front, task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", front, "--cleanenv",
               task_image.sqfs, "--", "sh", "-c", 'echo "${FROMHOST-unset} $SLURM_PROCID"',
               env={"FROMHOST": "host"})
    assert cp.returncode == 0, cp.stderr
    assert sorted(cp.stdout.splitlines()) == [f"unset {i}" for i in range(4)]
    assert _hows(_last_job(node_cache)).get("fast") == 3


def test_workdir_option(slurm_cluster, user, task_image, node_cache, front):
    _warm(user, slurm_cluster, node_cache, front, task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", front, "-w", "/etc",
               task_image.sqfs, "--", "pwd")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["/etc"] * 4


def test_exit_status_passes_through(slurm_cluster, user, task_image, node_cache, front):
    _warm(user, slurm_cluster, node_cache, front, task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", front, task_image.sqfs, "--",
               "sh", "-c", "exit 7")
    assert cp.returncode == 7
    assert _hows(_last_job(node_cache)).get("fast") == 3


def test_death_by_signal_is_128_plus_n(slurm_cluster, user, task_image, node_cache, front):
    _warm(user, slurm_cluster, node_cache, front, task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", front, task_image.sqfs, "--",
               "sh", "-c", "kill -TERM $$")
    assert cp.returncode == 143


def test_stale_plan_falls_back_to_python(slurm_cluster, user, user_tmp, task_image,
                                         node_cache, front):
    # Step 1 finds step 0's plan copied under its own name (while step 0 ran: its keeper
    # removes it at the end); step 0's keeper is gone by then.
    script = (
        "#!/bin/sh\n"
        f"srun -n2 {front} {task_image.sqfs} -- sleep 2 &\n"
        f'd="{node_cache}/$SLURMD_NODENAME"\n'
        'while [ ! -e "$d/step-$SLURM_JOB_ID.0.plan" ]; do sleep 0.1; done\n'
        'cp "$d/step-$SLURM_JOB_ID.0.plan" "$d/step-$SLURM_JOB_ID.1.plan"\n'
        "wait\n"
        f"srun -n2 {front} {task_image.sqfs} -- sh -c 'echo ok $SLURM_PROCID'\n")
    path = os.path.join(user_tmp, "job.sh")
    with open(path, "w") as f:
        f.write(script)
    out = os.path.join(user_tmp, "job.out")
    jobid = sbatch(user, slurm_cluster, ["-N1", "-n2", "-o", out, path], cwd=user_tmp,
                   env={"HPCRUN_NODE_CACHE": node_cache, "HPCRUN_TASK_LOG": "1"})
    info = wait_job(slurm_cluster, jobid)
    assert info["JobState"] == "COMPLETED", open(out).read()
    assert sorted(ln for ln in open(out).read().splitlines() if ln.startswith("ok")) == \
        ["ok 0", "ok 1"]
    step1 = [r for r in _log(node_cache) if r["job"] == jobid and r["step"] == "1"]
    assert _hows(step1).get("keeper") == 1


def test_keeper_leaves_with_the_step_and_removes_its_plan(slurm_cluster, user, task_image,
                                                         node_cache, front):
    _warm(user, slurm_cluster, node_cache, front, task_image.sqfs, nodes=2)
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n4", front, task_image.sqfs, "--",
               "true")
    assert cp.returncode == 0, cp.stderr

    def leftovers():
        return [n for node in os.listdir(node_cache)
                for n in os.listdir(os.path.join(node_cache, node)) if n.startswith("step-")]
    wait_for(lambda: not leftovers(), 30, "the keepers to remove their plans")


def test_scancel_delivers_sigterm_and_leaves_nothing(slurm_cluster, user, user_tmp, task_image,
                                                     node_cache, front):
    token = f"hpcrun-fastcancel-{uuid.uuid4().hex[:12]}"
    script = (
        "#!/bin/sh\n"
        # A first step makes the node cache directories, so the next one takes the sh path.
        f"srun -N2 -n2 {front} {task_image.sqfs} -- true\n"
        f"srun {front} -v {user_tmp}:/out {task_image.sqfs} -- sh -c "
        "'trap \"echo TERM > /out/term.$SLURM_PROCID; exit 0\" TERM; "
        "touch /out/ready.$SLURM_PROCID; while true; do sleep 1; done' "
        f"{token}\n")
    path = os.path.join(user_tmp, "job.sh")
    with open(path, "w") as f:
        f.write(script)
    jobid = sbatch(user, slurm_cluster, ["-N2", "-n4", "-o", os.path.join(user_tmp, "job.out"),
                                         path], cwd=user_tmp,
                   env={"HPCRUN_NODE_CACHE": node_cache, "HPCRUN_TASK_LOG": "1"})
    wait_for(lambda: all(os.path.exists(os.path.join(user_tmp, f"ready.{i}"))
                         for i in range(4)), 120, "all 4 tasks to start")
    cp = util.as_user(user, ["scancel", jobid], env=slurm_cluster.env)
    assert cp.returncode == 0, cp.stderr
    assert wait_job(slurm_cluster, jobid)["JobState"] == "CANCELLED"
    terms = sorted(n for n in os.listdir(user_tmp) if n.startswith("term."))
    assert terms == ["term.0", "term.1", "term.2", "term.3"]
    wait_for(lambda: not user_pids_with(user, token), 30, "the job's processes to go")
    step1 = [r for r in _log(node_cache) if r["job"] == jobid and r["step"] == "1"]
    assert _hows(step1) == {"keeper": 2, "fast": 2}


# --- where the front end is used (no cluster needed) ---------------------------------

def test_render_keeps_hpcrun_task_even_beside_the_front_end(front):
    # Job files run each task in its own container: the keeper path loses the command's
    # SIGTERM under scancel in some single-task steps (test_jobs' cancel test).
    from hpcrun.slurm import jobfile, render
    job = jobfile.parse("image: /i.sqfs\ncommand: [hostname]\n", "j.yaml")
    exe = os.path.join(os.path.dirname(front), "hpcrun")
    assert 'exec srun "$HPCRUN" task /i.sqfs -- hostname' in render.render(job.steps[0], exe)


def test_render_without_the_front_end_runs_hpcrun_task(user_tmp):
    from hpcrun.slurm import jobfile, render
    job = jobfile.parse("image: /i.sqfs\ncommand: [hostname]\n", "j.yaml")
    exe = os.path.join(user_tmp, "hpcrun")
    assert 'exec srun "$HPCRUN" task /i.sqfs -- hostname' in render.render(job.steps[0], exe)


def test_hpcrun_srun_uses_the_front_end_for_node_containers(user, busybox_rootfs, front):
    hpcrun = os.path.join(os.path.dirname(front), "hpcrun")
    cp = util.as_user(user, [hpcrun, "srun", f"--container-image={busybox_rootfs}", "--",
                             "true"], env={"HPCRUN_SRUN_DRY_RUN": "1"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split()[:3] == ["srun", front, "task"]


def test_hpcrun_srun_container_per_task_keeps_hpcrun_task(user, busybox_rootfs, front):
    hpcrun = os.path.join(os.path.dirname(front), "hpcrun")
    cp = util.as_user(user, [hpcrun, "srun", f"--container-image={busybox_rootfs}",
                             "--container-per-task", "--", "true"],
                      env={"HPCRUN_SRUN_DRY_RUN": "1"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split()[:3] == ["srun", hpcrun, "task"]


def test_help_is_hpcrun_tasks(user, front):
    cp = util.as_user(user, [front, "--help"])
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.startswith("usage: hpcrun task")


def test_outside_slurm_it_runs_as_hpcrun_task(user, task_image, node_cache, front):
    cp = util.as_user(user, [front, task_image.sqfs, "--", "echo", "alone"],
                      env={"HPCRUN_NODE_CACHE": node_cache})
    assert (cp.returncode, cp.stdout) == (0, "alone\n"), cp.stderr
