"""The pyslurm backend (hpcrun.slurm.backend.PyslurmBackend).

The real pyslurm builds only against Slurm 25.11 and this machine has 22.05, so these
tests use the fake pyslurm in tests/fakes/pyslurm (see its docstring): the same 25.11
API names and value conventions, backed by the REAL local cluster through Slurm's own
commands. The fake appends one line per call to $HPCRUN_FAKE_PYSLURM_LOG, which shows
that a job really went through pyslurm and not through the CLI backend.

The first part checks the mapping of pyslurm's objects onto JobInfo / Partition / Node
and the translation of hpcrun's sbatch options into JobSubmitDescription attributes,
with no cluster; the second part runs hpcrun as the unprivileged user on the cluster.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from types import SimpleNamespace

import pytest

import test_jobs
import util
from test_jobs import Jobs

FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes")
MATCHING, OTHER = "22.05.8", "25.11.2"          # the test cluster runs Slurm 22.05


# --- mapping pyslurm objects (no cluster) -------------------------------------------

def pyslurm_job(**kw) -> SimpleNamespace:
    """Attributes as pyslurm 25.11's Job returns them for a finished batch job."""
    base = dict(id=12, array_id=None, array_task_id=None, array_tasks_waiting=None,
                name="j", user_name="hpcuser", user_id=4242, state="COMPLETED",
                state_reason="None", exit_code=0, exit_code_signal=0,
                allocated_nodes="n[1-2]", num_nodes=2, partition="debug",
                standard_output="/w/j-12.out", standard_error=None, submit_time=100,
                start_time=101, end_time=102, time_limit=5, working_directory="/w")
    base.update(kw)
    return SimpleNamespace(**base)


def test_array_task_zero_keeps_its_index():
    """pyslurm 25.11 reads array task 0 as None (u32_parse); it is still task 0."""
    from hpcrun.slurm.backend import job_from_pyslurm
    j = job_from_pyslurm(pyslurm_job(id=13, array_id=12, array_task_id=None))
    assert (j.id, j.job_id, j.array_job_id, j.array_task) == ("12_0", 13, 12, "0")


def test_pending_array_rest_keeps_its_range():
    from hpcrun.slurm.backend import job_from_pyslurm
    j = job_from_pyslurm(pyslurm_job(id=12, array_id=12, array_tasks_waiting="1-3",
                                     state="PENDING"))
    assert (j.id, j.array_task, j.exit_code) == ("12_1-3", "1-3", None)


def test_signal_death_has_a_signal_and_no_exit_code():
    from hpcrun.slurm.backend import job_from_pyslurm
    j = job_from_pyslurm(pyslurm_job(state="CANCELLED", exit_code=0, exit_code_signal=15))
    assert (j.exit_code, j.signal) == (None, 15)


def test_running_job_has_no_exit_code_yet():
    from hpcrun.slurm.backend import job_from_pyslurm
    j = job_from_pyslurm(pyslurm_job(state="RUNNING", end_time=None))
    assert (j.exit_code, j.signal, j.end_time) == (None, None, 0)


def test_error_file_defaults_to_the_output_file():
    from hpcrun.slurm.backend import job_from_pyslurm
    j = job_from_pyslurm(pyslurm_job(standard_error=None))
    assert j.stderr == j.stdout == "/w/j-12.out"


def test_unlimited_partition_limits_are_none():
    from hpcrun.slurm.backend import partition_from_pyslurm
    p = partition_from_pyslurm(SimpleNamespace(
        name="debug", is_default=True, state="UP", total_nodes=4, total_cpus=16,
        max_nodes="UNLIMITED", max_time="UNLIMITED"))
    assert (p.default, p.max_nodes, p.max_time, p.total_cpus) == (True, None, None, 16)


def test_node_gpus_add_up_typed_and_untyped_gres():
    from hpcrun.slurm.backend import node_from_pyslurm
    n = node_from_pyslurm(SimpleNamespace(
        name="n1", total_cpus=8, real_memory=1000, partitions=["debug"],
        configured_gres={"gpu:a100": 2, "gpu": 1, "mps": 100}, state="IDLE+DRAIN"))
    assert (n.gpus, n.state, n.partitions) == (3, "IDLE", ("debug",))


# --- sbatch options -> JobSubmitDescription attributes ------------------------------

def rendered(tmp_path, text: str) -> str:
    from hpcrun.slurm import jobfile, render
    p = tmp_path / "job.yaml"
    p.write_text(text)
    [step] = jobfile.load(str(p)).steps
    return render.render(step, "/usr/bin/hpcrun", str(p))


def test_rendered_options_lose_sbatch_quotes(tmp_path):
    from hpcrun.slurm.backend import sbatch_request
    script = rendered(tmp_path, "image: /img\ncommand: 'true'\nname: ab\n"
                      "output: 'my logs/%j.out'\n"
                      "resources: {nodes: 2, time: '10:00'}\n")
    opts, unknown = sbatch_request(script, ["sbatch", "--parsable"])
    assert (opts, unknown) == ({"job-name": "ab", "nodes": "2", "time": "10:00",
                                "output": "my logs/%j.out"}, [])


def test_escaped_quotes_in_values_are_read_as_sbatch_reads_them():
    from hpcrun.slurm.backend import sbatch_request
    opts, _ = sbatch_request('#!/bin/sh\n#SBATCH --output="a \\"q\\" b"\n', ["sbatch"])
    assert opts == {"output": 'a "q" b'}


def test_command_line_options_override_the_script(tmp_path):
    from hpcrun.slurm.backend import sbatch_request
    opts, _ = sbatch_request("#!/bin/sh\n#SBATCH --time=5\ntrue\n#SBATCH --qos=late\n",
                             ["sbatch", "--time", "7", "--dependency=afterok:3"])
    assert opts == {"time": "7", "dependency": "afterok:3"}


def test_nodes_without_ntasks_get_one_task_per_node():
    """sbatch -N2 starts srun on both nodes; pyslurm's default would be one task."""
    from hpcrun.slurm.backend import submit_attributes
    attrs, why = submit_attributes({"nodes": "2", "ntasks-per-node": "3", "time": "10"})
    assert (attrs, why) == ({"nodes": "2", "ntasks_per_node": 3, "ntasks": 6,
                             "time_limit": 10}, "")


def test_ntasks_without_nodes_cannot_be_expressed():
    from hpcrun.slurm.backend import submit_attributes
    attrs, why = submit_attributes({"ntasks": "4"})
    assert attrs == {} and "exactly one node" in why


def test_unknown_option_is_reported():
    from hpcrun.slurm.backend import sbatch_request
    _, unknown = sbatch_request("#!/bin/sh\n", ["sbatch", "--parsable", "--test-only"])
    assert unknown == ["--test-only"]


# --- on the cluster, as the unprivileged user ---------------------------------------

@pytest.fixture
def containers():
    """Jobs that run containers need `hpcrun run` (the runtime area)."""
    import importlib.util
    util.require(importlib.util.find_spec("hpcrun.cli.run") is not None,
                 "hpcrun run is not available (hpcrun/cli/run.py)")


@pytest.fixture
def fake_log(user_tmp) -> str:
    p = os.path.join(user_tmp, "pyslurm-calls.log")
    return p


def fake_env(cluster, log: str, version: str = MATCHING, **extra) -> dict:
    env = dict(cluster.env, PYTHONPATH=FAKES, HPCRUN_FAKE_PYSLURM_LOG=log,
               HPCRUN_FAKE_PYSLURM_VERSION=version)
    env.update(extra)
    return env


def calls(log: str) -> list:
    try:
        with open(log) as f:
            return f.read().split("\n")
    except FileNotFoundError:
        return []


@pytest.fixture
def pjobs(slurm_cluster, user, user_tmp, busybox_rootfs, fake_log):
    """test_jobs' Jobs helper, with the fake pyslurm (matching the cluster) importable."""
    cluster = dataclasses.replace(slurm_cluster, env=fake_env(slurm_cluster, fake_log))
    return Jobs(cluster, user, user_tmp, busybox_rootfs)


@pytest.mark.slurm
@pytest.mark.root
def test_check_names_pyslurm_when_it_matches_the_cluster(slurm_cluster, user, fake_log):
    cp = util.hpcrun(user, "check", env=fake_env(slurm_cluster, fake_log))
    line = [ln for ln in cp.stdout.splitlines() if ln.startswith("slurm backend:")]
    assert line == [f"slurm backend: pyslurm (Slurm {MATCHING}); pyslurm {MATCHING} "
                    f"matches Slurm {MATCHING}"]


@pytest.mark.slurm
@pytest.mark.root
def test_check_names_cli_and_why_when_pyslurm_is_for_another_release(slurm_cluster, user,
                                                                     fake_log):
    cp = util.hpcrun(user, "check", env=fake_env(slurm_cluster, fake_log, OTHER))
    line = [ln for ln in cp.stdout.splitlines() if ln.startswith("slurm backend:")]
    assert line == [f"slurm backend: cli (sbatch/squeue --json/scancel, Slurm {MATCHING}); "
                    f"pyslurm {OTHER} is built for another Slurm release than the "
                    f"cluster's {MATCHING}"]


@pytest.mark.slurm
@pytest.mark.root
def test_slurm_backend_pyslurm_for_another_release_is_refused(slurm_cluster, user,
                                                               fake_log):
    cp = util.hpcrun(user, "jobs", env=fake_env(slurm_cluster, fake_log, OTHER,
                                                HPCRUN_SLURM_BACKEND="pyslurm"))
    assert (cp.returncode, cp.stdout, cp.stderr.splitlines()) == (1, "", [
        f"hpcrun: error: slurm_backend = pyslurm, but it cannot be used: pyslurm {OTHER} "
        f"is built for another Slurm release than the cluster's {MATCHING}",
        "hint: set slurm_backend = auto (or cli) to use Slurm's commands"])


@pytest.mark.slurm
@pytest.mark.root
def test_slurm_backend_cli_leaves_a_matching_pyslurm_unused(slurm_cluster, user, fake_log):
    cp = util.hpcrun(user, "jobs", env=fake_env(slurm_cluster, fake_log,
                                                HPCRUN_SLURM_BACKEND="cli"))
    assert (cp.returncode, calls(fake_log)) == (0, [])


@pytest.mark.slurm
@pytest.mark.root
def test_job_runs_through_pyslurm(pjobs, containers, fake_log):
    [jid] = pjobs.submit("image: IMAGE\ncommand: echo via-pyslurm\n"
                         "resources: {nodes: 2, time: 5}\n")
    cp = pjobs.wait(jid)
    assert (cp.returncode, cp.stdout, pjobs.logs(jid)) == \
        (0, f"{jid} COMPLETED 0\n", "via-pyslurm\nvia-pyslurm\n")
    assert "JobSubmitDescription.submit" in calls(fake_log) \
        and "Jobs.load" in calls(fake_log)


@pytest.mark.slurm
@pytest.mark.root
def test_status_through_pyslurm_reports_nodes_and_limit(pjobs, containers):
    [jid] = pjobs.submit("image: IMAGE\ncommand: 'true'\n"
                         "resources: {nodes: 2, time: '1:00:00'}\n")
    pjobs.wait(jid)
    [st] = pjobs.status(jid)
    assert (st["state"], st["exit_code"], st["node_count"], st["time_limit"]) == \
        ("COMPLETED", 0, 2, 60)


# test_jobs' scenarios, run again with the fake pyslurm in reach: each also checks
# that the calls went through pyslurm.

@pytest.mark.slurm
@pytest.mark.root
def test_exit_code_through_pyslurm(pjobs, containers, fake_log):
    test_jobs.test_wait_exits_with_the_jobs_exit_code(pjobs, containers)
    assert "JobSubmitDescription.submit" in calls(fake_log)


@pytest.mark.slurm
@pytest.mark.root
def test_array_through_pyslurm_lists_every_index(pjobs, containers, fake_log):
    """Task 0 included, which pyslurm 25.11 reports without an index."""
    test_jobs.test_array_runs_every_index(pjobs, containers)
    assert "JobSubmitDescription.submit" in calls(fake_log)


@pytest.mark.slurm
@pytest.mark.root
def test_failed_dependency_through_pyslurm_cancels_the_next_step(pjobs, containers,
                                                                 fake_log):
    test_jobs.test_failed_dependency_cancels_the_dependent_step(pjobs, containers)
    assert calls(fake_log).count("JobSubmitDescription.submit") == 2


@pytest.mark.slurm
@pytest.mark.root
def test_cancel_through_pyslurm(pjobs, containers, fake_log):
    test_jobs.test_cancel_leaves_no_process_on_any_node(pjobs, containers)
    assert any(c.startswith("Job.cancel ") for c in calls(fake_log))


@pytest.mark.slurm
@pytest.mark.root
def test_slurm_refusal_through_pyslurm_is_one_line_with_a_hint(pjobs):
    cp = pjobs.hpcrun("submit", pjobs.file("image: IMAGE\ncommand: 'true'\n"
                                                 "array: '0-999999'\n"))
    assert (cp.returncode, cp.stderr.splitlines()[0]) == \
        (1, "hpcrun: error: Slurm refused the job: Invalid job array specification")
    assert len(cp.stderr.splitlines()) == 2 and cp.stderr.splitlines()[1].startswith("hint: ")


@pytest.mark.slurm
@pytest.mark.root
def test_tasks_without_nodes_go_through_sbatch_and_say_so(pjobs, containers, fake_log):
    cp = pjobs.hpcrun("-v", "submit", pjobs.file(
        "image: IMAGE\ncommand: 'true'\nresources: {ntasks: 2}\n"))
    assert cp.returncode == 0, cp.stderr
    assert "submitting with sbatch instead: without --nodes pyslurm asks for exactly " \
        "one node" in cp.stderr
    assert pjobs.wait(cp.stdout.split()[0]).returncode == 0
    assert "JobSubmitDescription.submit" not in calls(fake_log)


@pytest.fixture
def fake_pyslurm(slurm_cluster, monkeypatch):
    """The fake pyslurm imported into this (root) test process, removed afterwards so
    that nothing else in the session finds a pyslurm."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.conf)
    monkeypatch.setenv("HPCRUN_FAKE_PYSLURM_VERSION", MATCHING)
    monkeypatch.syspath_prepend(FAKES)
    import pyslurm
    yield pyslurm
    for name in [m for m in sys.modules if m == "pyslurm" or m.startswith("pyslurm.")]:
        del sys.modules[name]


@pytest.mark.slurm
@pytest.mark.root
def test_both_backends_read_the_same_jobs_alike(slurm_cluster, pjobs, fake_pyslurm):
    """Failed array tasks and a dependent job Slurm cancelled: the records pyslurm
    gives map onto exactly the JobInfo that squeue --json gives."""
    ids = pjobs.submit("""\
image: IMAGE
steps:
  a: {array: '0-2', command: "sh -c 'exit 4'"}
  b: {command: 'true', depends_on: [a]}
""")
    pjobs.wait(ids[1])
    from hpcrun.slurm.backend import CliBackend, PyslurmBackend
    env = dict(os.environ, **slurm_cluster.env)

    def ours(infos):         # squeue --json on 22.05 lists every job, whatever --jobs says
        return sorted((j for j in infos if str(j.array_job_id or j.job_id) in ids),
                      key=lambda j: j.id)
    cli = ours(CliBackend(env).query(ids))
    pys = ours(PyslurmBackend(env, fake_pyslurm).query(ids))
    assert [(j.id, j.state) for j in cli] == [
        (f"{ids[0]}_{i}", "FAILED") for i in range(3)] + [(ids[1], "CANCELLED")]
    assert pys == cli
