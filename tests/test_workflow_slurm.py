"""Work Queue workers started as Slurm jobs through an hpcrun job file, each worker in
a container on its node, serving a Makeflow manager on the host; outputs identical to
the bare run."""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

import util
from hpcrun.workflow import dag

pytestmark = [pytest.mark.slurm, pytest.mark.userns, pytest.mark.root]

JOB = """name: wq-workers
image: {image}
command: work_queue_worker --cores 1 -t 20 {host} {port}
resources:
  nodes: 2
  ntasks_per_node: 1
  time: "5:00"
output: {out}/worker-%j.out
"""


def _host_addr(conf: str) -> str:
    """The host's address on the cluster's bridge (10.a.b.254: cluster.py's layout)."""
    with open(conf) as f:
        m = re.search(r"SlurmctldHost=[^(]*\((\d+\.\d+\.\d+)\.\d+\)", f.read())
    return m.group(1) + ".254"


def test_work_queue_workers_as_slurm_jobs(slurm_cluster, user, wf_dir, wf_image):
    ref_cp = util.as_user(user, ["makeflow", "-j", "2", "wf.mf"],
                          cwd=wf_dir)
    assert ref_cp.returncode == 0, ref_cp.stderr
    ref = dag.text_outputs(wf_dir)
    util.as_user(user, ["makeflow", "-c", "wf.mf"], cwd=wf_dir)
    env = dict(util.user_env(user), **slurm_cluster.env)
    mf = subprocess.Popen(["makeflow", "-T", "wq", "-p", "0", "-Z", "port.txt", "wf.mf"],
                          user=user.uid, group=user.gid, extra_groups=[], env=env, cwd=wf_dir,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port_file = os.path.join(wf_dir, "port.txt")
        for _ in range(200):
            if os.path.exists(port_file) and os.path.getsize(port_file):
                break
            time.sleep(0.05)
        port = open(port_file).read().strip()
        job = os.path.join(wf_dir, "workers.yaml")
        with open(job, "w") as f:
            f.write(JOB.format(image=wf_image, host=_host_addr(slurm_cluster.conf), port=port,
                               out=wf_dir))
        cp = util.hpcrun(user, "submit", job, env=slurm_cluster.env, cwd=wf_dir)
        assert cp.returncode == 0, cp.stderr
        out, _ = mf.communicate(timeout=240)
        assert mf.returncode == 0, out
    finally:
        if mf.poll() is None:
            mf.kill()
            mf.communicate()
    assert dag.text_outputs(wf_dir) == ref
