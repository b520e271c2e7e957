"""jobscripts/mpirun.sh on the local cluster: Open MPI's mpirun inside an allocation
starts `hpcrun run` per rank, across two nodes, as the unprivileged user."""
from __future__ import annotations

import os
import re

import pytest

from tasks_helpers import node_cache, wait_job  # noqa: F401  (fixture)
from test_jobscripts import _read, _submit, mpi_image, workdir  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slurm, pytest.mark.userns, pytest.mark.mpi]


def test_mpirun_in_an_allocation(slurm_cluster, user, workdir, mpi_image, node_cache):
    jobid = _submit(user, slurm_cluster, workdir, "mpirun.sh", mpi_image, node_cache)
    info = wait_job(slurm_cluster, jobid)
    out = _read(os.path.join(workdir, f"mpirun-{jobid}.out"))
    assert info["JobState"] == "COMPLETED", out
    ranks = re.findall(r"^rank (\d) of 4 on (\S+) allreduce 4$", out, re.M)
    assert sorted(r for r, _ in ranks) == ["0", "1", "2", "3"], out
    assert len({n for _, n in ranks}) == 2
    assert "cma-different-user-namespace" not in out and "CMA is" not in out
    ns = re.findall(r"^userns (\S+) (\d+)$", out, re.M)
    assert len(ns) == 4, out
    by_node: dict = {}
    for node, ino in ns:
        by_node.setdefault(node, set()).add(ino)
    assert len(by_node) == 2 and all(len(v) == 1 for v in by_node.values()), by_node
