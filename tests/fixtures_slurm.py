"""Fixtures for the slurm tests: a real local Slurm cluster (hpcrun.slurm.cluster).

Use it by requesting `slurm_cluster` (session scope, 4 nodes, started once per test
session, removed at the end). Submit as the unprivileged user, never as root:

    def test_x(slurm_cluster, user):
        cp = util.hpcrun(user, "submit", jobfile, env=slurm_cluster.env)
        cp = util.as_user(user, ["srun", "-N2", "hostname"], env=slurm_cluster.env)

The cluster name comes from HPCRUN_TEST_CLUSTER (default "hpct"), so parallel test
sessions can use different clusters. Processes started by Slurm that died show up as
zombies only if nothing reaps them; `live_pids()` below ignores zombies.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import pytest

import util

CLUSTER_NAME = os.environ.get("HPCRUN_TEST_CLUSTER", "hpct")
NODES = 4


@dataclass(frozen=True)
class SlurmCluster:
    name: str
    conf: str
    nodes: list = field(default_factory=list)
    env: dict = field(default_factory=dict)   # merge into a subprocess env (SLURM_CONF, PATH)
    cpus_per_node: int = 4
    memory_mb_per_node: int = 0
    partition: str = "debug"


def slurm_prereqs() -> None:
    """Skip (fail in CI) unless this machine can run the local cluster."""
    util.require(os.geteuid() == 0, "the local Slurm cluster needs root")
    util.require(os.path.exists("/proc/self/ns/net"), "no network namespaces in this kernel")
    for tool in ("slurmctld", "slurmd", "sinfo", "srun", "sbatch", "ip", "nsenter", "unshare"):
        util.require(bool(shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")),
                     f"{tool} is not installed (slurm-wlm, iproute2, util-linux)")


def slurm_user_env(cluster: SlurmCluster, **extra: str) -> dict:
    """The env to pass to util.as_user/util.hpcrun for a cluster client."""
    e = dict(cluster.env)
    e.update(extra)
    return e


def live_pids(pattern=None) -> list:
    """(pid, comm) of live (non-zombie) processes whose comm matches `pattern` (callable)."""
    return [(pid, comm) for pid, comm in util.live_processes()
            if pattern is None or pattern(comm)]


@pytest.fixture(scope="session")
def slurm_cluster(user):
    """A running 4-node local Slurm cluster (all nodes idle when yielded)."""
    slurm_prereqs()
    from hpcrun.slurm.cluster import LocalCluster
    c = LocalCluster(CLUSTER_NAME)
    c.up(NODES, replace=True)
    st = c.status()
    env = {"SLURM_CONF": c.conf_path,
           "PATH": f"{util.VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    yield SlurmCluster(name=c.name, conf=c.conf_path, nodes=list(st["nodes"]), env=env,
                       cpus_per_node=st["cpus_per_node"],
                       memory_mb_per_node=st["memory_mb_per_node"], partition=st["partition"])
    c.down()
