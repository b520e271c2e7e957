"""Scale: a 32-node local cluster runs a containerized step on every node and goes
away without a trace. Behind the `slow` marker: `./dev test -m slow`."""
from __future__ import annotations

import pytest

import util
from fixtures_slurm import slurm_prereqs
from test_cluster_lifecycle import BASE, _leftovers, _name, _root

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.root]

NODES = 32


def test_32_nodes_run_one_container_each_and_leave_nothing(user, busybox_rootfs):
    slurm_prereqs()
    name = _name("big")
    try:
        cp = _root("cluster", "up", str(NODES), "--name", name, timeout=300)
        assert cp.returncode == 0, cp.stderr
        env = {"SLURM_CONF": f"{BASE}/{name}/slurm.conf"}
        cp = util.as_user(user, ["srun", f"-N{NODES}", f"-n{NODES}", "--ntasks-per-node=1",
                                 util.HPCRUN, "run", busybox_rootfs, "--", "hostname"],
                          env=env, timeout=300)
        assert cp.returncode == 0, cp.stderr
        hosts = cp.stdout.split()
        assert sorted(hosts) == sorted(f"{name}-n{i}" for i in range(1, NODES + 1))
        # The C front end at scale: 4 tasks per node, one node container each.
        cp = util.as_user(user, [util.HPCRUN, "srun", f"--container-image={busybox_rootfs}",
                                 f"-N{NODES}", f"-n{4 * NODES}", "--", "sh", "-c",
                                 'echo "$SLURMD_NODENAME $(readlink /proc/self/ns/user)"'],
                          env=env, timeout=300)
        assert cp.returncode == 0, cp.stderr
        rows = {tuple(ln.split()) for ln in cp.stdout.splitlines()}
        assert len(rows) == NODES and len({node for node, _ in rows}) == NODES
        cp = _root("cluster", "down", "--name", name, timeout=300)
        assert cp.returncode == 0, cp.stderr
        assert _leftovers(name) == []
    finally:
        _root("cluster", "down", "--name", name, timeout=300)
