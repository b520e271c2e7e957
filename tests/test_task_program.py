"""The C per-task front end (cext/task.c) and its step plans (hpcrun.slurm.stepplan).

`hpcrun task --plan [OPTIONS] IMAGE` prints the program and the step's plan; srun then
starts every task through it with no Python. With --node-container the node's first
task makes the node's container (held by a keeper) and the others join it.
HPCRUN_TASK_LOG=1 makes every task that makes or joins a node container write a line
(`c job=.. step=.. task=..`) to <node_cache>/<node>/tasks.log.

Runs on the local cluster as the test user.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

import util
from tasks_helpers import (node_cache, ns_barrier, ns_rows, prepare_log,  # noqa: F401
                           sbatch_script, store_image, task_image, user_pids_with, wait_for,
                           wait_job)

pytestmark = [pytest.mark.slurm, pytest.mark.userns]


def _plan(user, *opts, env=None):
    """`hpcrun task --plan OPTS` as the user: the words to put on the srun line."""
    cp = util.hpcrun(user, "task", "--plan", *opts, env=env)
    assert cp.returncode == 0, cp.stderr
    words = cp.stdout.split()
    assert len(words) == 2 and words[0].endswith(".so"), cp.stdout
    return words


def _config_image(config: dict):
    """A busybox directory image with this image config; yields its root, removed after."""
    d = util.shared_tmpdir("hpcrun-cfgimg-")
    root = os.path.join(d, "rootfs")
    util.make_busybox_rootfs(root)
    os.makedirs(os.path.join(root, ".hpcrun"), exist_ok=True)
    with open(os.path.join(root, ".hpcrun", "config.json"), "w") as f:
        json.dump({"config": config}, f)
    os.system(f"chmod -R a+rX {d}")
    yield root
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def env_image():
    """An image whose config sets IMGVAR and FROMHOST, and a CMD."""
    yield from _config_image({"Env": ["IMGVAR=image", "FROMHOST=image",
                                      "PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                              "Cmd": ["echo", "image-cmd"]})


@pytest.fixture(scope="session")
def entry_image():
    """An image with ENTRYPOINT ["echo", "from-entrypoint"]."""
    yield from _config_image({"Entrypoint": ["echo", "from-entrypoint"]})


def _srun(user, cluster, cache, *argv, env=None):
    e = dict(cluster.env, HPCRUN_NODE_CACHE=cache, HPCRUN_TASK_LOG="1", **(env or {}))
    return util.as_user(user, ["srun", *argv], env=e, timeout=180)


def _warm(user, cluster, cache, task, nodes=1):
    """One step first: it makes the node cache directories (and the image's unpacked
    copy); the tests then look at the steps after it."""
    cp = _srun(user, cluster, cache, f"-N{nodes}", f"-n{nodes}", *task, "--", "true")
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


def test_node_container_first_task_makes_it_the_others_join(slurm_cluster, user, user_tmp,
                                                            task_image, node_cache):
    task = _plan(user, "--node-container", "-v", f"{user_tmp}:/out", task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n8", *task, "--",
               "sh", "-c", ns_barrier(8))
    assert cp.returncode == 0, cp.stderr
    assert _hows(_last_job(node_cache)) == {"keeper": 2, "join": 6}
    by_node: dict = {}
    for node, ns in ns_rows(user_tmp):
        by_node.setdefault(node, set()).add(ns)
    assert len(by_node) == 2 and all(len(v) == 1 for v in by_node.values())
    # The squashfs image was unpacked once per node (by `hpcrun task --unpack-only`).
    assert len(prepare_log(node_cache)) == 2


def test_without_node_container_a_container_per_task(slurm_cluster, user, user_tmp,
                                                     task_image, node_cache):
    task = _plan(user, "-v", f"{user_tmp}:/out", task_image.dir)
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n6", *task, "--",
               "sh", "-c", ns_barrier(6))
    assert cp.returncode == 0, cp.stderr
    assert len({ns for _, ns in ns_rows(user_tmp)}) == 6
    assert not os.path.exists(node_cache) or _log(node_cache) == []


def test_short_commands_never_fail(slurm_cluster, user, task_image, node_cache):
    # `true` ends at once: the keeper holds the container for the tasks still to come.
    task = _plan(user, "--node-container", task_image.sqfs)
    for _ in range(5):
        cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n8", *task, "--", "true")
        assert cp.returncode == 0, cp.stderr


def test_tasks_see_their_own_procid(slurm_cluster, user, task_image, node_cache):
    task = _plan(user, "--node-container", task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", *task, "--",
               "sh", "-c", 'echo "$SLURM_PROCID"')
    assert cp.returncode == 0, cp.stderr
    assert sorted(int(w) for w in cp.stdout.split()) == [0, 1, 2, 3]


def test_image_env_beats_the_hosts(slurm_cluster, user, env_image, node_cache):
    task = _plan(user, "--node-container", env_image)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", *task, "--",
               "sh", "-c", 'echo "$FROMHOST $IMGVAR"', env={"FROMHOST": "host"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines() == ["image image"] * 4


@pytest.mark.parametrize("opt,want", [("FROMHOST=cli", "cli"), ("FROMHOST", "host")])
def test_dash_e_beats_the_image(slurm_cluster, user, env_image, node_cache, opt, want):
    # -e NAME=VALUE: that value; -e NAME: each task's own value.
    task = _plan(user, "--node-container", "-e", opt, env_image)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", *task, "--",
               "sh", "-c", 'echo "$FROMHOST"', env={"FROMHOST": "host"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == [want] * 4


def test_values_with_spaces_commas_and_quotes_arrive_intact(slurm_cluster, user, env_image,
                                                            node_cache):
    value = "a b,c=d:e%20'\"$HOME"
    task = _plan(user, "-e", f"ODD={value}", env_image)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n1", *task, "--",
               "sh", "-c", 'printf "%s" "$ODD"')
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == value


def test_cleanenv_drops_the_hosts_variables_keeps_slurms(slurm_cluster, user, task_image,
                                                         node_cache):
    task = _plan(user, "--node-container", "--cleanenv", task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", *task, "--",
               "sh", "-c", 'echo "${FROMHOST-unset} $SLURM_PROCID"', env={"FROMHOST": "host"})
    assert cp.returncode == 0, cp.stderr
    assert sorted(cp.stdout.splitlines()) == [f"unset {i}" for i in range(4)]


def test_workdir_option(slurm_cluster, user, task_image, node_cache):
    task = _plan(user, "--node-container", "-w", "/etc", task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n2", *task, "--", "pwd")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["/etc"] * 2


def test_each_tasks_cwd_as_seen_inside(slurm_cluster, user, user_tmp, task_image, node_cache):
    # srun --chdir moves the tasks; the plan (made elsewhere) follows each task's cwd
    # through the bind that holds it.
    sub = os.path.join(user_tmp, "sub")
    os.makedirs(sub)
    os.chown(sub, user.uid, user.gid)
    task = _plan(user, "-v", f"{user_tmp}:/out", task_image.dir)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n2", f"--chdir={sub}", *task, "--",
               "pwd")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["/out/sub"] * 2


def test_image_cmd_runs_when_no_command_is_given(slurm_cluster, user, env_image, node_cache):
    task = _plan(user, "--node-container", env_image)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n2", *task, "--")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["image-cmd"] * 2


def test_exit_status_passes_through(slurm_cluster, user, task_image, node_cache):
    task = _plan(user, "--node-container", task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", *task, "--",
               "sh", "-c", "exit 7")
    assert cp.returncode == 7


def test_death_by_signal_is_128_plus_n(slurm_cluster, user, task_image, node_cache):
    task = _plan(user, "--node-container", task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n4", *task, "--",
               "sh", "-c", "kill -TERM $$")
    assert cp.returncode == 143


def test_command_not_found_is_127(slurm_cluster, user, task_image, node_cache):
    task = _plan(user, "--node-container", task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n2", *task, "--", "no-such-command")
    assert cp.returncode == 127
    assert "no-such-command" in cp.stderr


def test_stale_plan_makes_a_new_keeper(slurm_cluster, user, user_tmp, task_image, node_cache):
    # Step 1 finds step 0's plan copied under its own name (while step 0 ran: its keeper
    # removes it at the end); step 0's keeper is gone by then.
    task = " ".join(_plan(user, "--node-container", task_image.sqfs))
    script = (
        "#!/bin/sh\n"
        f"srun -n2 {task} -- sleep 2 &\n"
        f'd="{node_cache}/$SLURMD_NODENAME"\n'
        'while [ ! -e "$d/step-$SLURM_JOB_ID.0.plan" ]; do sleep 0.1; done\n'
        'cp "$d/step-$SLURM_JOB_ID.0.plan" "$d/step-$SLURM_JOB_ID.1.plan"\n'
        "wait\n"
        f"srun -n2 {task} -- sh -c 'echo ok $SLURM_PROCID'\n")
    out = os.path.join(user_tmp, "job.out")
    jobid = sbatch_script(user, slurm_cluster, script, ["-N1", "-n2", "-o", out], cwd=user_tmp,
                          env={"HPCRUN_NODE_CACHE": node_cache, "HPCRUN_TASK_LOG": "1"})
    info = wait_job(slurm_cluster, jobid)
    assert info["JobState"] == "COMPLETED", open(out).read()
    assert sorted(ln for ln in open(out).read().splitlines() if ln.startswith("ok")) == \
        ["ok 0", "ok 1"]
    step1 = [r for r in _log(node_cache) if r["job"] == jobid and r["step"] == "1"]
    assert _hows(step1) == {"keeper": 1, "join": 1}


def test_keeper_leaves_with_the_step_and_removes_its_plan(slurm_cluster, user, task_image,
                                                         node_cache):
    task = _plan(user, "--node-container", task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n4", *task, "--", "true")
    assert cp.returncode == 0, cp.stderr

    def leftovers():
        return [n for node in os.listdir(node_cache)
                for n in os.listdir(os.path.join(node_cache, node)) if n.startswith("step-")]
    wait_for(lambda: not leftovers(), 30, "the keepers to remove their plans")


def test_plans_left_by_killed_keepers_are_swept(slurm_cluster, user, task_image, node_cache):
    # A keeper killed with its step (SIGKILL) leaves its plan and lock behind; the next
    # step that makes a node container removes those whose keeper is gone, and leaves
    # the plans of live keepers alone.
    task = _plan(user, "--node-container", task_image.sqfs)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n1", *task, "--", "true")
    assert cp.returncode == 0, cp.stderr
    [node] = os.listdir(node_cache)
    d = os.path.join(node_cache, node)
    with open("/proc/self/stat") as f:
        start = f.read().rsplit(")", 1)[1].split()[19]
    plans = {"dead": "# hpcrun node-container plan 1 999999 1 cdead\n",
             "live": f"# hpcrun node-container plan 1 {os.getpid()} {start} clive\n"}
    for name, text in plans.items():
        for ext, body in ((".plan", text), (".lock", "")):
            with open(os.path.join(d, f"step-{name}.0{ext}"), "w") as f:
                f.write(body)
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n2", f"--nodelist={node}", *task,
               "--", "true")
    assert cp.returncode == 0, cp.stderr
    left = sorted(n for n in os.listdir(d) if n.startswith("step-"))
    assert "step-dead.0.plan" not in left and "step-dead.0.lock" not in left
    assert {"step-live.0.plan", "step-live.0.lock"} <= set(left)


def _trap(token):
    return ("'trap \"echo TERM > /out/term.$SLURM_PROCID; exit 0\" TERM; "
            "touch /out/ready.$SLURM_PROCID; while true; do sleep 1; done' " + token)


@pytest.mark.parametrize("nodes,tasks", [(1, 1), (2, 4)])
def test_scancel_delivers_sigterm_and_leaves_nothing(slurm_cluster, user, user_tmp, task_image,
                                                     node_cache, nodes, tasks):
    # (1, 1) is the case an earlier keeper path got wrong in about 4 steps of 10: a
    # Python monitor in front of the command died of the SIGTERM that the command
    # survived, and srun reported "Terminated" before the command's output arrived.
    for attempt in range(3 if tasks == 1 else 1):
        for name in os.listdir(user_tmp):
            if name.startswith(("ready.", "term.")):
                os.unlink(os.path.join(user_tmp, name))
        token = f"hpcrun-cancel-{uuid.uuid4().hex[:12]}"
        task = " ".join(_plan(user, "--node-container", "-v", f"{user_tmp}:/out",
                              task_image.sqfs))
        script = f"#!/bin/sh\nsrun {task} -- sh -c {_trap(token)}\necho srun-done $?\n"
        out = os.path.join(user_tmp, f"job{attempt}.out")
        jobid = sbatch_script(user, slurm_cluster, script, [f"-N{nodes}", f"-n{tasks}", "-o", out],
                              cwd=user_tmp, env={"HPCRUN_NODE_CACHE": node_cache})
        wait_for(lambda: all(os.path.exists(os.path.join(user_tmp, f"ready.{i}"))
                             for i in range(tasks)), 120, f"all {tasks} tasks to start")
        cp = util.as_user(user, ["scancel", jobid], env=slurm_cluster.env)
        assert cp.returncode == 0, cp.stderr
        assert wait_job(slurm_cluster, jobid)["JobState"] == "CANCELLED"
        terms = sorted(n for n in os.listdir(user_tmp) if n.startswith("term."))
        assert terms == [f"term.{i}" for i in range(tasks)], open(out).read()
        assert ": Terminated" not in open(out).read()     # srun: "task 0: Terminated"
        wait_for(lambda: not user_pids_with(user, token), 30, "the job's processes to go")


# --- hpcrun srun and job files use the program ------------------------------------------

def test_hpcrun_srun_runs_tasks_through_the_program(slurm_cluster, user, busybox_rootfs,
                                                    node_cache):
    e = dict(slurm_cluster.env, HPCRUN_NODE_CACHE=node_cache, HPCRUN_TASK_LOG="1")
    cp = util.hpcrun(user, "srun", f"--container-image={busybox_rootfs}", "-N2", "-n4", "--",
                     "true", env=e, timeout=180)
    assert cp.returncode == 0, cp.stderr
    assert _hows(_last_job(node_cache)) == {"keeper": 2, "join": 2}


def test_hpcrun_srun_container_per_task(slurm_cluster, user, user_tmp, busybox_rootfs,
                                        node_cache):
    e = dict(slurm_cluster.env, HPCRUN_NODE_CACHE=node_cache, HPCRUN_TASK_LOG="1")
    cp = util.hpcrun(user, "srun", f"--container-image={busybox_rootfs}",
                     f"--container-mounts={user_tmp}:/out", "--container-per-task",
                     "-N2", "-n4", "--", "sh", "-c", ns_barrier(4), env=e, timeout=180)
    assert cp.returncode == 0, cp.stderr
    assert len({ns for _, ns in ns_rows(user_tmp)}) == 4


@pytest.mark.parametrize("flags,want", [((), "from-entrypoint echo x"),
                                        (("--container-entrypoint",), "from-entrypoint echo x"),
                                        (("--no-container-entrypoint",), "x")])
def test_hpcrun_srun_entrypoint_flags(slurm_cluster, user, entry_image, node_cache, flags,
                                      want):
    e = dict(slurm_cluster.env, HPCRUN_NODE_CACHE=node_cache)
    cp = util.hpcrun(user, "srun", f"--container-image={entry_image}", *flags, "-N1", "-n2",
                     "--", "echo", "x", env=e, timeout=180)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines() == [want] * 2


def test_python_form_where_the_program_is_not_built(slurm_cluster, user, task_image,
                                                    node_cache, monkeypatch, capsys):
    # What `hpcrun task --plan` prints without the program: `hpcrun task --args=...`,
    # one word for the options, which srun then runs (Python in every task).
    from hpcrun.cli import task as taskcli
    from hpcrun.slurm import stepplan
    monkeypatch.setattr(stepplan, "task_program", lambda: None)
    assert taskcli.main("task", ["--plan", "-e", "X=a b", "-w", "/etc", task_image.dir]) == 0
    words = capsys.readouterr().out.split()
    assert words[-2] == "task" and words[-1].startswith("--args=")
    words[:-2] = [util.HPCRUN]
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "-n2", *words, "--",
               "sh", "-c", 'echo "$X $(pwd)"')
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines() == ["a b /etc"] * 2


# --- bad input ------------------------------------------------------------------------

def test_plan_refuses_a_command(user, task_image):
    cp = util.hpcrun(user, "task", "--plan", task_image.dir, "--", "true")
    assert cp.returncode != 0
    assert cp.stderr.startswith("hpcrun: error: --plan takes run options and IMAGE")


def test_plan_of_a_missing_image(user):
    cp = util.hpcrun(user, "task", "--plan", "/nonexistent/img.sqfs")
    assert cp.returncode != 0
    assert "/nonexistent/img.sqfs" in cp.stderr.splitlines()[0]


def test_program_refuses_a_malformed_plan(user, task_image):
    prog, _ = _plan(user, task_image.dir)
    for plan in ("v=1,bogus=1,image=/x,py=/bin/true", "not a plan", "v=9,image=/x,py=/x"):
        cp = util.as_user(user, [prog, plan, "--", "true"])
        assert cp.returncode == 125
        lines = cp.stderr.splitlines()
        assert lines[0].startswith("hpcrun: error: the step plan given to ")
        assert lines[1].startswith("hint: ")


def test_program_without_its_arguments_says_how_it_is_used(user, task_image):
    prog, _ = _plan(user, task_image.dir)
    cp = util.as_user(user, [prog])
    assert cp.returncode == 125
    assert cp.stderr.startswith("hpcrun: error: usage: ")


def test_program_outside_slurm_runs_a_container_of_its_own(user, task_image):
    prog, plan = _plan(user, "--node-container", task_image.dir)
    cp = util.as_user(user, [prog, plan, "--", "echo", "alone"])
    assert (cp.returncode, cp.stdout) == (0, "alone\n"), cp.stderr


def test_program_names_an_image_that_went_away(user, user_tmp, task_image):
    # The program hands the task to `hpcrun task IMAGE` (Python), which says what is wrong.
    img = os.path.join(user_tmp, "img.sqfs")
    shutil.copy(task_image.sqfs, img)
    prog, plan = _plan(user, img)
    os.unlink(img)
    cp = util.as_user(user, [prog, plan, "--", "true"])
    assert cp.returncode == 125
    first = cp.stderr.splitlines()[0]
    assert first.startswith("hpcrun: error: ") and img in first, cp.stderr


def test_image_missing_on_a_node_is_resolved_there(slurm_cluster, user, user_tmp, store_image,
                                                   node_cache):
    # The store is node-local by default: a plan made on the launching node names a path
    # another node may lack. There the task runs `hpcrun task NAME -- CMD` (Python), which
    # finds NAME in that node's own store (or pulls it there).
    launcher = os.path.join(user_tmp, "launcher-store")
    subprocess.run(["cp", "-a", store_image.env["HPCRUN_STORE"], launcher], check=True)
    task = _plan(user, "--node-container", store_image.name, env={"HPCRUN_STORE": launcher})
    assert launcher in task[1].replace("%2F", "/")
    shutil.rmtree(launcher)              # what the compute nodes do not have
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n4", *task, "--",
               "sh", "-c", 'echo "$GREETING"', env=store_image.env)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["hello-from-config"] * 4
