"""Descriptors of Slurm tasks: the PMI connection slurmstepd hands every task (PMI_FD,
srun --mpi=pmi2) stays open through the per-task program, in a container of the task's
own and in a node container the task joins; nothing else above 2 reaches the command."""
from __future__ import annotations

import os
import shutil

import pytest

import chtest_image
import util
from tasks_helpers import node_cache  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.userns]


@pytest.fixture(scope="module")
def img() -> str:
    d = util.shared_tmpdir("hpcrun-taskfd-")
    root = chtest_image.build(os.path.join(d, "img"))
    yield root
    shutil.rmtree(d, ignore_errors=True)


def _plan(user, *opts):
    cp = util.hpcrun(user, "task", "--plan", *opts)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.split()


def _srun(user, cluster, cache, *argv):
    e = dict(cluster.env, HPCRUN_NODE_CACHE=cache)
    return util.as_user(user, ["srun", *argv], env=e, timeout=180)


# Each task prints its PMI_FD and the descriptors above 2 its command holds.
REPORT = ["sh", "-c", 'echo "pmi=$PMI_FD fds=$(chtest fds)"']


def _rows(cp):
    assert cp.returncode == 0, cp.stderr
    rows = []
    for line in cp.stdout.splitlines():
        pmi, fds = line.split(" ", 1)
        rows.append((pmi.split("=", 1)[1], fds.split("=", 1)[1].split()))
    return rows


def _pmi2(user, slurm_cluster, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "--mpi=list")
    util.require("pmi2" in cp.stdout + cp.stderr, "Slurm here has no mpi/pmi2 plugin")


@pytest.mark.parametrize("share", [[], ["--node-container"]], ids=["own", "node-container"])
def test_pmi_fd_reaches_every_task(slurm_cluster, user, img, node_cache, share):
    _pmi2(user, slurm_cluster, node_cache)
    task = _plan(user, *share, img)
    rows = _rows(_srun(user, slurm_cluster, node_cache, "--mpi=pmi2", "-N1", "-n2", *task,
                       "--", *REPORT))
    assert len(rows) == 2
    for pmi, fds in rows:
        assert pmi.isdigit(), rows
        assert fds == [pmi], rows      # the PMI connection and nothing else


def test_without_pmi_no_descriptor_reaches_the_task(slurm_cluster, user, img, node_cache):
    task = _plan(user, "--node-container", img)
    rows = _rows(_srun(user, slurm_cluster, node_cache, "--mpi=none", "-N1", "-n2", *task,
                       "--", *REPORT))
    assert rows == [("", []), ("", [])]
