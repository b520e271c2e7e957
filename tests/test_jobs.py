"""Job commands on the local Slurm cluster, submitting as the unprivileged user.

Every job here runs its tasks in busybox containers through `hpcrun task`; states,
exit codes, nodes and output are read back through `hpcrun status/wait/logs`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time

import pytest

import util

pytestmark = [pytest.mark.slurm, pytest.mark.root]


@pytest.fixture
def containers():
    """Jobs that run containers need `hpcrun run` (the runtime area)."""
    util.require(importlib.util.find_spec("hpcrun.cli.run") is not None,
                 "hpcrun run is not available (hpcrun/cli/run.py)")


class Jobs:
    def __init__(self, cluster, user, tmp, image):
        self.cluster, self.user, self.tmp, self.image = cluster, user, tmp, image

    def file(self, text: str, name: str = "job.yaml") -> str:
        p = os.path.join(self.tmp, name)
        with open(p, "w") as f:
            f.write(text.replace("IMAGE", self.image))
        os.chown(p, self.user.uid, self.user.gid)
        return p

    def hpcrun(self, *args, env=None, **kw) -> subprocess.CompletedProcess:
        return util.hpcrun(self.user, *args, env=env or self.cluster.env, cwd=self.tmp, **kw)

    def submit(self, text: str) -> list:
        cp = self.hpcrun("submit", self.file(text))
        assert cp.returncode == 0, cp.stderr
        return cp.stdout.split()

    def status(self, jid: str) -> list:
        cp = self.hpcrun("status", "--format", "json", jid)
        assert cp.returncode == 0, cp.stderr
        return json.loads(cp.stdout)

    def wait(self, jid: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.hpcrun("wait", "--timeout", str(timeout), jid, timeout=timeout + 30)

    def logs(self, jid: str) -> str:
        cp = self.hpcrun("logs", jid)
        assert cp.returncode == 0, cp.stderr
        return cp.stdout

    def running(self, jid: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(j["state"] == "RUNNING" for j in self.status(jid)):
                return
            time.sleep(0.2)
        raise AssertionError(f"job {jid} did not start: {self.status(jid)}")

    def queued_names(self) -> list:
        cp = self.hpcrun("jobs", "--format", "json")
        assert cp.returncode == 0, cp.stderr
        return [j["name"] for j in json.loads(cp.stdout)]


@pytest.fixture
def jobs(slurm_cluster, user, user_tmp, busybox_rootfs):
    return Jobs(slurm_cluster, user, user_tmp, busybox_rootfs)


def _job_procs(jid: str) -> list:
    """(pid, comm) of the live processes of a Slurm job on any node (all nodes share
    this kernel)."""
    out = []
    needle = f"SLURM_JOB_ID={jid}\0".encode()
    for pid, comm in util.live_processes():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    out.append((pid, comm))
        except OSError:
            continue
    return out


def _job_pids(jid: str) -> list:
    return [pid for pid, _ in _job_procs(jid)]


def _started(jid: str, timeout: float = 60) -> None:
    """Wait until the job's containers run (so 'none left' below means something)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(comm == "sleep" for _, comm in _job_procs(jid)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no 'sleep' process of job {jid} appeared")


def _no_job_pids(jid: str, timeout: float = 30) -> list:
    end = time.monotonic() + timeout
    pids = _job_pids(jid)
    while pids and time.monotonic() < end:
        time.sleep(0.2)
        pids = _job_pids(jid)
    return pids


WHERE = "sh -c 'echo task $SLURM_PROCID on $SLURMD_NODENAME'"


# --- nodes and tasks ------------------------------------------------------------

def test_job_over_two_nodes_runs_a_container_per_task(jobs, containers):
    [jid] = jobs.submit(f"image: IMAGE\ncommand: {WHERE}\n"
                        "resources: {nodes: 2, ntasks_per_node: 2}\n")
    assert jobs.wait(jid).returncode == 0
    lines = jobs.logs(jid).split("\n")
    tasks = sorted(ln for ln in lines if ln.startswith("task "))
    assert len(tasks) == 4 and len({t.split(" on ")[1] for t in tasks}) == 2


def test_job_over_four_nodes(jobs, containers):
    [jid] = jobs.submit(f"image: IMAGE\ncommand: {WHERE}\n"
                        "resources: {nodes: 4, ntasks: 8}\n")
    assert jobs.wait(jid).returncode == 0
    tasks = [ln for ln in jobs.logs(jid).split("\n") if ln.startswith("task ")]
    assert {t.split(" on ")[1] for t in tasks} == set(jobs.cluster.nodes)


def test_status_reports_nodes(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\ncommand: 'true'\nresources: {nodes: 2}\n")
    jobs.wait(jid)
    [st] = jobs.status(jid)
    assert (st["state"], st["exit_code"], st["node_count"]) == ("COMPLETED", 0, 2)


# --- exit codes -------------------------------------------------------------------

def test_exit_code_reported_by_status(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\ncommand: sh -c 'exit 7'\n")
    jobs.wait(jid)
    [st] = jobs.status(jid)
    assert (st["state"], st["exit_code"]) == ("FAILED", 7)


def test_wait_exits_with_the_jobs_exit_code(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\ncommand: sh -c 'exit 5'\n")
    cp = jobs.wait(jid)
    assert (cp.returncode, cp.stdout) == (5, f"{jid} FAILED 5\n")


def test_wait_format_json_keeps_the_exit_status(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\ncommand: sh -c 'exit 5'\n")
    cp = jobs.hpcrun("wait", "--format", "json", "--timeout", "120", jid, timeout=150)
    [j] = json.loads(cp.stdout)
    assert (cp.returncode, j["id"], j["state"], j["exit_code"]) == (5, jid, "FAILED", 5)


def test_shell_completes_job_ids(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\ncommand: sleep 30\nname: napper\n")
    env = {**jobs.cluster.env, "_HPCRUN_COMPLETE": "zsh_complete",
           "COMP_WORDS": "hpcrun cancel ", "COMP_CWORD": "2"}
    try:
        cp = jobs.hpcrun(env=env)
        lines = cp.stdout.splitlines()
        assert (cp.returncode, lines[lines.index(jid) - 1]) == (0, "plain"), cp
        assert lines[lines.index(jid) + 1].startswith("napper ")
    finally:
        assert jobs.hpcrun("cancel", jid).returncode == 0


def test_wait_exits_zero_for_completed_job(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\ncommand: 'true'\n")
    cp = jobs.wait(jid)
    assert (cp.returncode, cp.stdout) == (0, f"{jid} COMPLETED 0\n")


# --- arrays and dependencies --------------------------------------------------------

def test_array_runs_every_index(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\narray: '0-3'\n"
                        "command: sh -c 'echo index $SLURM_ARRAY_TASK_ID'\n")
    assert jobs.wait(jid).returncode == 0
    sts = jobs.status(jid)
    assert sorted(s["id"] for s in sts) == [f"{jid}_{i}" for i in range(4)]
    assert all(jobs.logs(f"{jid}_{i}").strip() == f"index {i}" for i in range(4))


def test_dependencies_run_in_afterok_order(jobs, containers):
    ids = jobs.submit(f"""\
image: IMAGE
mounts: ["{jobs.tmp}:/out"]
steps:
  second:
    command: sh -c 'cat /out/first.txt > /out/second.txt'
    depends_on: [first]
  first:
    command: sh -c 'sleep 2; echo first-done > /out/first.txt'
""")
    first, second = ids                 # printed in submission order, dependencies first
    assert jobs.wait(second).returncode == 0
    [a], [b] = jobs.status(first), jobs.status(second)
    assert b["start_time"] >= a["end_time"]
    with open(os.path.join(jobs.tmp, "second.txt")) as f:
        assert f.read() == "first-done\n"


def test_failed_dependency_cancels_the_dependent_step(jobs, containers):
    first, second = jobs.submit("""\
image: IMAGE
steps:
  first: {command: "sh -c 'exit 3'"}
  second: {command: "true", depends_on: [first]}
""")
    cp = jobs.wait(second)
    [b] = jobs.status(second)
    assert (cp.returncode, b["state"]) == (143, "CANCELLED")


# --- cancel and time limit -------------------------------------------------------------

def test_cancel_leaves_no_process_on_any_node(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\ncommand: sleep 600\nresources: {nodes: 2, ntasks: 4}\n")
    jobs.running(jid)
    _started(jid)
    assert jobs.hpcrun("cancel", jid).returncode == 0
    cp = jobs.wait(jid)
    assert (cp.returncode, jobs.status(jid)[0]["state"]) == (143, "CANCELLED")
    assert _no_job_pids(jid) == []


def test_time_limit_kills_job_with_timeout_state(jobs, containers):
    # The containerized command gets SIGTERM at the limit (its trap runs on both nodes).
    [jid] = jobs.submit("image: IMAGE\n"
                        "command: [sh, -c, 'trap \"echo got-TERM-$SLURM_PROCID; exit 0\" TERM; "
                        "sleep 600 & wait']\n"
                        "resources: {nodes: 2, time: 1}\n")
    _started(jid)
    cp = jobs.wait(jid, timeout=180)
    assert (cp.returncode, jobs.status(jid)[0]["state"]) == (124, "TIMEOUT")
    assert _no_job_pids(jid) == []
    out = jobs.logs(jid)
    assert "got-TERM-0" in out and "got-TERM-1" in out, out


# --- logs -----------------------------------------------------------------------------

def test_logs_prints_the_output_file(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\ncommand: echo hello-logs\n")
    jobs.wait(jid)
    assert jobs.logs(jid) == "hello-logs\n"


def test_logs_follow_streams_until_the_job_ends(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\n"
                        "command: sh -c 'for i in 1 2 3; do echo line $i; sleep 1; done'\n")
    cp = jobs.hpcrun("logs", "--follow", jid, timeout=120)
    assert (cp.returncode, cp.stdout) == (0, "line 1\nline 2\nline 3\n")


def test_separate_error_file_goes_to_stderr(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\ncommand: sh -c 'echo out; echo err >&2'\n"
                        "error: '%x-%j.err'\n")
    jobs.wait(jid)
    cp = jobs.hpcrun("logs", jid)
    assert (cp.stdout, cp.stderr) == ("out\n", "err\n")


# --- refusals before anything is submitted ---------------------------------------------

def test_more_nodes_than_the_partition_is_refused_before_submit(jobs):
    p = jobs.file("name: toomany\nimage: IMAGE\ncommand: 'true'\nresources:\n  nodes: 99\n")
    cp = jobs.hpcrun("submit", p)
    assert cp.returncode == 1
    assert cp.stderr.startswith(f"hpcrun: error: {p}:5: resources.nodes: 99 nodes requested")
    assert "toomany" not in jobs.queued_names()


def test_more_memory_than_any_node_is_refused_before_submit(jobs):
    p = jobs.file("name: bigmem\nimage: IMAGE\ncommand: 'true'\n"
                  "steps:\n  a:\n    resources: {mem: 64T}\n")
    cp = jobs.hpcrun("submit", p)
    assert cp.returncode == 1
    assert cp.stderr.startswith(f"hpcrun: error: {p}:6: steps.a.resources.mem: 64T of memory")
    assert "bigmem.a" not in jobs.queued_names()


def test_unknown_partition_is_refused(jobs):
    p = jobs.file("image: IMAGE\ncommand: 'true'\nresources: {partition: gpuz}\n")
    cp = jobs.hpcrun("submit", p)
    assert cp.returncode == 1
    assert "no partition 'gpuz'" in cp.stderr


def test_missing_image_is_refused_before_submit(jobs):
    p = jobs.file("name: noimg\nimage: /nonexistent/image.sqfs\ncommand: 'true'\n")
    cp = jobs.hpcrun("submit", p)
    assert (cp.returncode, "does not exist" in cp.stderr) == (1, True)
    assert "noimg" not in jobs.queued_names()


def test_sbatch_refusal_passes_slurm_message_and_cancels_earlier_steps(jobs):
    p = jobs.file("name: half\nimage: IMAGE\ncommand: sleep 60\nsteps:\n"
                  "  ok: {}\n  huge: {array: '0-999999', depends_on: [ok]}\n")
    cp = jobs.hpcrun("submit", p)
    assert cp.returncode == 1
    assert "sbatch refused the job: Batch job submission failed: Invalid job array " \
           "specification" in cp.stderr
    assert "cancelled the steps already submitted: ok=" in cp.stderr
    ok_id = cp.stderr.split("ok=")[1].split(")")[0]
    assert jobs.status(ok_id)[0]["state"] == "CANCELLED"


def test_dry_run_submits_nothing(jobs):
    p = jobs.file("name: dry\nimage: IMAGE\ncommand: 'true'\nsteps:\n  a: {}\n"
                  "  b: {depends_on: [a]}\n")
    cp = jobs.hpcrun("submit", "--dry-run", p)
    assert cp.returncode == 0, cp.stderr
    assert "# ==> step b: sbatch --parsable --dependency=afterok:<a>" in cp.stdout
    assert not {"dry.a", "dry.b"} & set(jobs.queued_names())


def test_status_of_unknown_job(jobs):
    cp = jobs.hpcrun("status", "999999")
    assert (cp.returncode, cp.stderr.splitlines()[0]) == (
        1, "hpcrun: error: job 999999 is not known to Slurm")


def test_status_rejects_a_malformed_id(jobs):
    cp = jobs.hpcrun("status", "12x")
    assert (cp.returncode, "'12x' is not a job id" in cp.stderr) == (1, True)


def test_wait_on_unknown_job_exits_125(jobs):
    assert jobs.hpcrun("wait", "999999").returncode == 125


# --- after Slurm forgets (no slurmdbd) ---------------------------------------------------

def _user_state(jobs, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", os.path.join(jobs.user.home, ".local", "state"))
    monkeypatch.setenv("SLURM_CONF", jobs.cluster.env["SLURM_CONF"])


def test_finished_state_is_recorded_for_when_slurm_forgets(jobs, containers, monkeypatch):
    from hpcrun.slurm import jobs as jobsmod
    [jid] = jobs.submit("image: IMAGE\ncommand: sh -c 'exit 4'\n")
    jobs.wait(jid)
    _user_state(jobs, monkeypatch)
    [j] = jobsmod.lookup([jid], infos=[])        # as if the controller had purged it
    assert (j.state, j.exit_code) == ("FAILED", 4)


def test_submit_json_names_each_step(jobs):
    p = jobs.file("name: js\nimage: IMAGE\ncommand: 'true'\nresources: {nodes: 1}\n"
                  "steps:\n  a: {}\n  b: {depends_on: [a]}\n")
    cp = jobs.hpcrun("submit", "--format", "json", p)
    assert cp.returncode == 0, cp.stderr
    assert [d["step"] for d in json.loads(cp.stdout)] == ["a", "b"]


# --- a squashfs image: prepared once per node, not once per task ---------------------

def test_squashfs_job_prepares_the_image_once_per_node(jobs, containers, busybox_rootfs):
    from tasks_helpers import make_squashfs, prepare_log
    sq = make_squashfs(busybox_rootfs, os.path.join(jobs.tmp, "bb.sqfs"))
    cache = os.path.join(jobs.tmp, "nodecache")
    p = jobs.file(f"image: {sq}\ncommand: 'true'\nresources: {{nodes: 4, ntasks: 16}}\n")
    cp = jobs.hpcrun("submit", p, env={**jobs.cluster.env, "HPCRUN_NODE_CACHE": cache})
    assert cp.returncode == 0, cp.stderr
    assert jobs.wait(cp.stdout.strip()).returncode == 0
    assert len(prepare_log(cache)) == 4


# --- an image by name, from the user's store --------------------------------------------

def test_job_with_a_store_image_name(jobs, containers, busybox_rootfs):
    import uuid
    name = f"jobs-test-{uuid.uuid4().hex[:8]}:1"
    tar = os.path.join(jobs.tmp, "rootfs.tar")
    subprocess.run(["tar", "-C", busybox_rootfs, "-cf", tar, "."], check=True)
    os.chmod(tar, 0o644)
    assert jobs.hpcrun("import", tar, name).returncode == 0
    try:
        [jid] = jobs.submit(f"image: {name}\ncommand: cat /etc/os-release\n"
                            "resources: {nodes: 2}\n")
        assert jobs.wait(jid).returncode == 0
        assert jobs.logs(jid).count("NAME=busybox-test\n") == 2
    finally:
        jobs.hpcrun("rmi", name)


@pytest.mark.registry
def test_image_missing_from_store_and_registry_is_refused_before_submit(jobs, registry):
    img = f"{registry.host}/nobody/nothing:1"
    p = jobs.file(f"name: noreg\nimage: {img}\ncommand: 'true'\n")
    cp = jobs.hpcrun("submit", p, env={**jobs.cluster.env,
                                       "HPCRUN_INSECURE_REGISTRIES": registry.host})
    assert cp.returncode == 1
    assert cp.stderr.startswith(f"hpcrun: error: {p}:2: image: image {img} does not exist")
    assert "noreg" not in jobs.queued_names()


@pytest.mark.registry
def test_image_only_in_its_registry_passes_the_check(jobs, registry, busybox_rootfs):
    img = f"{registry.host}/jobs/bb:1"
    env = {**jobs.cluster.env, "HPCRUN_INSECURE_REGISTRIES": registry.host}
    tar = os.path.join(jobs.tmp, "rootfs.tar")
    subprocess.run(["tar", "-C", busybox_rootfs, "-cf", tar, "."], check=True)
    os.chmod(tar, 0o644)
    for argv in (["import", tar, img], ["push", img], ["rmi", img]):
        cp = jobs.hpcrun(*argv, env=env)
        assert cp.returncode == 0, (argv, cp.stderr)
    cp = jobs.hpcrun("submit", "--dry-run", jobs.file(f"image: {img}\ncommand: 'true'\n"),
                     env=env)
    assert (cp.returncode, cp.stderr) == (0, "")


def _no_slurm_config():
    util.require(not os.path.exists("/etc/slurm/slurm.conf"),
                 "this machine has a Slurm configuration of its own")


def test_dry_run_without_a_cluster_still_renders(user, user_tmp, busybox_rootfs):
    _no_slurm_config()
    p = os.path.join(user_tmp, "j.yaml")
    with open(p, "w") as f:
        f.write(f"image: {busybox_rootfs}\ncommand: 'true'\n")
    cp = util.hpcrun(user, "submit", "--dry-run", p, cwd=user_tmp)    # no SLURM_CONF
    assert (cp.returncode, cp.stdout.startswith("# ==> job j: sbatch --parsable <==\n"),
            "warning: cannot check resources" in cp.stderr) == (0, True, True)


def test_submit_without_a_cluster_says_what_is_missing(user, user_tmp, busybox_rootfs):
    _no_slurm_config()
    p = os.path.join(user_tmp, "j.yaml")
    with open(p, "w") as f:
        f.write(f"image: {busybox_rootfs}\ncommand: 'true'\n")
    cp = util.hpcrun(user, "submit", p, cwd=user_tmp)                  # no SLURM_CONF
    assert (cp.returncode, "hint: is Slurm configured here?" in cp.stderr) == (1, True)


# --- MPI across nodes from a job file ----------------------------------------------------

@pytest.fixture(scope="session")
def mpi_rootfs():
    from tasks_helpers import make_mpi_rootfs
    import shutil
    d = util.shared_tmpdir("hpcrun-jobsmpi-")
    yield make_mpi_rootfs(os.path.join(d, "rootfs"))
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.mpi
def test_mpi_pmix_job_over_two_nodes(jobs, containers, mpi_rootfs):
    [jid] = jobs.submit(f"""\
image: {mpi_rootfs}
command: /opt/mpi/hello
mpi: pmix
env: {{OMPI_MCA_btl_vader_single_copy_mechanism: none}}
resources: {{nodes: 2, ntasks_per_node: 2}}
""")
    assert jobs.wait(jid).returncode == 0
    ranks = [ln for ln in jobs.logs(jid).splitlines() if ln.startswith("rank ")]
    assert sorted(r.split(" on ")[0] for r in ranks) == [f"rank {i} of 4" for i in range(4)] \
        and all(r.endswith("allreduce 4") for r in ranks)


def test_cancel_delivers_sigterm_to_the_containerized_command(jobs, containers):
    [jid] = jobs.submit("image: IMAGE\n"
                        "command: [sh, -c, 'trap \"echo got-TERM; exit 0\" TERM; "
                        "sleep 600 & wait']\n")
    jobs.running(jid)
    _started(jid)
    assert jobs.hpcrun("cancel", jid).returncode == 0
    jobs.wait(jid)
    assert "got-TERM" in jobs.logs(jid)
