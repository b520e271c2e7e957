"""Instances under Slurm, on the local cluster, as the unprivileged user: the name is
scoped to the job, and the instance ends with the step that started it (here the batch
step, so with the job), even though its supervisor left the step's process tree."""
from __future__ import annotations

import json
import os
import time

import pytest

import util

pytestmark = [pytest.mark.slurm, pytest.mark.userns, pytest.mark.root]

SCRIPT = """#!/bin/sh
set -e
hpcrun instance start --name injob {image}
hpcrun exec injob cat /proc/1/comm > {out}/comm
hpcrun ps --format json > {out}/ps.json
echo $SLURM_JOB_ID > {out}/jobid
touch {out}/ready
sleep 300
"""


def _wait(pred, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_instance_is_scoped_to_the_job_and_ends_with_it(slurm_cluster, inst, rt_image, user_tmp):
    script = os.path.join(user_tmp, "job.sh")
    with open(script, "w") as f:
        f.write(SCRIPT.format(image=rt_image, out=user_tmp))
    os.chmod(script, 0o755)
    env = dict(slurm_cluster.env, **inst.env())
    cp = util.as_user(inst.user, ["sbatch", "--parsable", "-N1", "-o", f"{user_tmp}/job.out",
                                  script], env=env, cwd=user_tmp)
    assert cp.returncode == 0, cp.stderr
    job = cp.stdout.strip().split(";")[0]
    assert _wait(lambda: os.path.exists(f"{user_tmp}/ready")), open(f"{user_tmp}/job.out").read()
    with open(f"{user_tmp}/comm") as f:
        assert f.read().strip() == "hpcrun:instance"
    rows = json.load(open(f"{user_tmp}/ps.json"))
    assert [r["name"] for r in rows] == ["injob"]
    sup = rows[0]["pid"]
    assert os.path.isdir(os.path.join(inst.xdg, "hpcrun", f"job{job}", "injob"))
    # Outside the job the name is not visible.
    assert "injob" not in inst.ok("ps", "-a").stdout
    util.as_user(inst.user, ["scancel", job], env=env)
    assert _wait(lambda: sup not in {p for p, _ in util.live_processes()}, timeout=60)
    # It ended as if stopped: its record says so, in that job's scope, until removed.
    scope = {"SLURM_JOB_ID": job}
    assert "Exited (0)" in inst.ok("ps", "-a", env=scope).stdout
    inst.ok("instance", "stop", "injob", env=scope)
    assert not os.path.exists(os.path.join(inst.xdg, "hpcrun", f"job{job}", "injob"))
