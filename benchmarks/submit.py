#!/usr/bin/env python3
"""What a job file costs over plain Slurm commands, on the local cluster.

Interleaved rounds (the order rotates every round), as the unprivileged test user:

    sbatch         sbatch --parsable SCRIPT         (the script `hpcrun render` writes)
    hpcrun submit  hpcrun submit JOB.yaml           (load + validate + image check +
                                                     partition/node check + sbatch)
    squeue         squeue --json                    (what `status` asks Slurm)
    hpcrun status  hpcrun status ID
    hpcrun render  hpcrun render JOB.yaml           (no Slurm at all: parse + render)

Medians in milliseconds and the ratios hpcrun/plain. Run as root (it starts its own
cluster "subbench" and removes it afterwards):

    /opt/hpcrun/venv/bin/python benchmarks/submit.py [--rounds 15]
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hpcrun.slurm.cluster import LocalCluster  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)
HPCRUN = os.path.join(VENV_BIN, "hpcrun")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")

JOB = """\
name: bench
image: {image}
command: "true"
resources:
  nodes: 2
  ntasks_per_node: 2
  time: "5:00"
env: {{A: "1"}}
mounts: ["{dir}:/data:ro"]
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (it starts a local cluster)", file=sys.stderr)
        return 2
    pw = pwd.getpwnam(USER)
    c = LocalCluster("subbench")
    c.up(2, replace=True)
    d = tempfile.mkdtemp(prefix="hpcrun-subbench-", dir="/tmp")
    try:
        os.chmod(d, 0o755)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        image = os.path.join(d, "rootfs")
        os.makedirs(os.path.join(image, "bin"))
        shutil.copy2("/bin/busybox", os.path.join(image, "bin", "busybox"))
        os.symlink("busybox", os.path.join(image, "bin", "true"))
        job = os.path.join(d, "job.yaml")
        with open(job, "w") as f:
            f.write(JOB.format(image=image, dir=d))
        env = {"HOME": pw.pw_dir, "USER": USER, "PATH": f"{VENV_BIN}:/usr/bin:/bin",
               "SLURM_CONF": c.conf_path, "LANG": "C.UTF-8"}

        def run(argv):
            t = time.perf_counter()
            cp = subprocess.run(argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[],
                                env=env, cwd=d, capture_output=True, text=True)
            dt = time.perf_counter() - t
            if cp.returncode != 0:
                raise SystemExit(f"{argv} failed: {cp.stderr.strip()}")
            return dt, cp.stdout

        script = os.path.join(d, "job.sh")
        _, text = run([HPCRUN, "render", job])
        with open(script, "w") as f:
            f.write(text)
        _, jid = run([HPCRUN, "submit", job])
        jid = jid.strip()
        variants = {
            "sbatch": ["sbatch", "--parsable", script],
            "hpcrun submit": [HPCRUN, "submit", job],
            "squeue": ["squeue", "--json"],
            "hpcrun status": [HPCRUN, "status", jid],
            "hpcrun render": [HPCRUN, "render", job],
        }
        times = {k: [] for k in variants}
        names = list(variants)
        for r in range(a.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for k in order:
                times[k].append(run(variants[k])[0])
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(f"{a.rounds} interleaved rounds, medians (ms), cluster of 2 nodes:")
        for k in names:
            print(f"  {k:14} {med[k]:7.1f}")
        print(f"ratio hpcrun submit / sbatch : {med['hpcrun submit'] / med['sbatch']:.2f}")
        print(f"ratio hpcrun status / squeue : {med['hpcrun status'] / med['squeue']:.2f}")
        return 0
    finally:
        subprocess.run(["scancel", "--user", USER], env={**os.environ,
                       "SLURM_CONF": c.conf_path}, capture_output=True)
        c.down()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
