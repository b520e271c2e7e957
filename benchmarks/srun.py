#!/usr/bin/env python3
"""srun overhead of a container per task, on the local 4-node cluster.

Times `srun -N4 -n16 CMD` from start to all tasks finished, as the unprivileged test
user, for:

    bare        srun -N4 -n16 true
    hpcrun      srun -N4 -n16 $TASK -- true      TASK=$(hpcrun task --plan --node-container
                IMAGE.sqfs): the C front end (cext/task.c) with a step plan made once
                beforehand; one container per node, made by its first task, joined by
                the others (as pyxis)
    per-task    srun -N4 -n16 $TASK -- true      TASK=$(hpcrun task --plan IMAGE.sqfs):
                the C front end, a container per task (as ch-run)
    hpcrun-srun hpcrun srun --container-image=IMAGE.sqfs -N4 -n16 -- true: the same as
                `hpcrun`, end to end, with the plan made by `hpcrun srun` (Python, once
                per step, on the launching node)
    python      srun -N4 -n16 hpcrun task IMAGE.sqfs -- true: Python in every task
    ch-run      srun -N4 -n16 ch-run ROOTFS_DIR -- true: Charliecloud, the peer

Rounds are interleaved (the order rotates every round) so drift hits every variant
alike; medians are reported with the ratio to bare (target: <= 1.2). The first round
of the C front end is timed separately ("cold": every node unpacks the image, through
`hpcrun task --unpack-only`). At the end the per-node preparation log
(hpcrun.slurm.prepare) is read: one preparation per node, however many tasks and
steps ran there; and the task log (HPCRUN_TASK_LOG=1): how many tasks the C front end
started.

Run as root (it starts its own cluster "srunbench" and removes it afterwards):

    /opt/hpcrun/venv/bin/python benchmarks/srun.py [--rounds 15] [--keep]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _local import HPCRUN, USER, local_cluster

NODES, TASKS = 4, 16


def prepare(work: str) -> None:
    """A busybox root directory and the same as a squashfs file."""
    from hpcrun.testing import make_busybox_rootfs
    rootfs = os.path.join(work, "rootfs")
    os.makedirs(rootfs)
    make_busybox_rootfs(rootfs)
    sqfs = os.path.join(work, "busybox.sqfs")
    subprocess.run(["mksquashfs", rootfs, sqfs, "-quiet", "-noappend", "-no-progress",
                    "-all-root"], check=True, stdout=subprocess.DEVNULL)
    os.chmod(sqfs, 0o644)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--tasks", type=int, default=TASKS, help=f"srun -n (default {TASKS})")
    a = ap.parse_args()
    with local_cluster("srun.py", "srunbench", NODES, a.keep, prepare,
                       HPCRUN_TASK_LOG="1") as b:
        return run(a, b)


def run(a, b) -> int:
    work, cache, cluster = b.work, b.cache, b.cluster
    rootfs = os.path.join(work, "rootfs")
    sqfs = os.path.join(work, "busybox.sqfs")
    tasks = a.tasks
    srun = ["srun", f"-N{NODES}", f"-n{tasks}"]
    variants = {
        "bare": srun + ["true"],
        "hpcrun": srun + b.plan("--node-container", sqfs) + ["--", "true"],
        "per-task": srun + b.plan(sqfs) + ["--", "true"],
        "hpcrun-srun": [HPCRUN, "srun", f"--container-image={sqfs}", f"-N{NODES}",
                        f"-n{tasks}", "--", "true"],
        "python": srun + [HPCRUN, "task", sqfs, "--", "true"],
        "ch-run": srun + ["ch-run", rootfs, "--", "true"],
    }

    def once(argv):
        t = time.perf_counter()
        cp = b.run(argv)
        return time.perf_counter() - t, cp

    times: dict[str, list[float]] = {}
    broken: dict[str, str] = {}
    cold = None
    for name, argv in variants.items():       # warm-up; the first hpcrun round is "cold"
        dt, cp = once(argv)
        if cp.returncode != 0:
            lines = (cp.stderr + cp.stdout).strip().splitlines()
            why = [ln for ln in lines if "error:" in ln and not ln.startswith("srun:")] or \
                [ln for ln in lines if "Error" in ln] or lines
            broken[name] = why[-1].strip() if why else f"exit status {cp.returncode}"
            continue
        times[name] = []
        if cold is None and name != "bare":
            cold = dt
    order = list(times)
    for r in range(a.rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            dt, cp = once(variants[name])
            if cp.returncode != 0:
                sys.exit(f"{name} failed in round {r}: {cp.stderr.strip()}")
            times[name].append(dt)

    print(f"\nsrun -N{NODES} -n{tasks}, as {USER}, {a.rounds} interleaved rounds, medians "
          f"(this host has {os.cpu_count()} CPUs for {tasks} tasks):")
    base = statistics.median(times["bare"]) if "bare" in times else None
    for name in variants:
        if name in broken:
            print(f"  {name:<11} unavailable: {broken[name]}")
            continue
        m = statistics.median(times[name])
        ratio = f"  ratio {m / base:.2f}" if base else ""
        print(f"  {name:<11} {m * 1000:8.1f} ms  (min {min(times[name]) * 1000:.1f}, "
              f"max {max(times[name]) * 1000:.1f}){ratio}")
    if cold is not None:
        print(f"  first container round (every node unpacks the image): {cold * 1000:.1f} ms")
    for name in ("hpcrun", "per-task", "hpcrun-srun", "python"):
        if base and name in times:
            r = statistics.median(times[name]) / base
            print(f"  target {name}/bare <= 1.2: {'met' if r <= 1.2 else 'NOT met'} "
                  f"({r:.2f})")

    steps = sum(len(times[n]) + 1 for n in times if n not in ("bare", "ch-run"))
    print(f"\nimage preparations per node ({steps} container steps of {tasks // NODES} "
          f"tasks per node = {steps * tasks // NODES} tasks per node):")
    total = 0
    for node in cluster.node_names:
        try:
            with open(os.path.join(cache, node, "prepare.log")) as f:
                n = sum(1 for line in f if "image=" + sqfs in line)
        except FileNotFoundError:
            n = 0
        total += n
        print(f"  {node}: {n}")
    print(f"  total {total} for {NODES} nodes")
    started = 0
    for node in cluster.node_names:
        try:
            with open(os.path.join(cache, node, "tasks.log")) as f:
                started += sum(1 for line in f if line.startswith(("keeper ", "join ")))
        except FileNotFoundError:
            pass
    print(f"tasks that joined or made a node container through the C front end: {started}")
    return 0 if not broken else 1


if __name__ == "__main__":
    sys.exit(main())
