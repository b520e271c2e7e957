"""The shared local cluster (the `slurm_cluster` fixture): real Slurm, jobs as hpcuser."""
from __future__ import annotations

import json
import os

import pytest

import util

pytestmark = [pytest.mark.slurm, pytest.mark.root]


def test_all_nodes_idle(slurm_cluster, user):
    cp = util.as_user(user, ["sinfo", "-h", "-N", "-o", "%N %T"], env=slurm_cluster.env)
    assert cp.returncode == 0, cp.stderr
    states = dict(line.split() for line in cp.stdout.splitlines())
    assert states == {n: "idle" for n in slurm_cluster.nodes}


def test_job_over_four_nodes_reports_distinct_hostnames(slurm_cluster, user):
    cp = util.as_user(user, ["srun", "-N4", "--ntasks-per-node=1", "hostname"],
                      env=slurm_cluster.env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert sorted(cp.stdout.split()) == sorted(slurm_cluster.nodes)


def test_tasks_run_as_the_submitting_user(slurm_cluster, user):
    cp = util.as_user(user, ["srun", "-N2", "-n2", "id", "-u"], env=slurm_cluster.env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == [str(user.uid)] * 2


def test_batch_job_runs_as_user_on_two_nodes(slurm_cluster, user, user_tmp):
    out = os.path.join(user_tmp, "out.txt")
    script = os.path.join(user_tmp, "job.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nsrun hostname\n")
    os.chmod(script, 0o755)
    cp = util.as_user(user, ["sbatch", "--parsable", "-N2", "--ntasks-per-node=1", "-o", out,
                             "--wait", script], env=slurm_cluster.env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    with open(out) as f:
        hosts = f.read().split()
    assert len(set(hosts)) == 2 and set(hosts) <= set(slurm_cluster.nodes)
