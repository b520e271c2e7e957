"""GPUs through Slurm on the local cluster, as the user: `hpcrun srun --container-gpus`
defers the devices to each task (plan key pertask=1), which plans them on its node
with the allocation it sees. The cluster has no GPUs: the synthetic CDI spec of
test_gpu.py stands in, and CUDA_VISIBLE_DEVICES the allocation."""
from __future__ import annotations

import pytest

import util
from tasks_helpers import node_cache  # noqa: F401
from test_gpu import cdi, fakelib, image  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.userns]


def test_srun_container_gpus(slurm_cluster, user, image, cdi, node_cache):
    env = dict(slurm_cluster.env, HPCRUN_NODE_CACHE=node_cache, HPCRUN_CDI_SPEC_DIRS=cdi,
               CUDA_VISIBLE_DEVICES="1")
    cp = util.hpcrun(user, "srun", "-N2", "-n2", f"--container-image={image}",
                     "--container-gpus=all", "--", "sh", "-c",
                     'echo $(ls /dev | grep fakegpu) CVD=$CUDA_VISIBLE_DEVICES FD=$FAKE_DRIVER',
                     env=env, timeout=180)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines() == ["fakegpu1 CVD=0 FD=first"] * 2, cp.stdout
