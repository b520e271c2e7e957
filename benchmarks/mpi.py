#!/usr/bin/env python3
"""MPI ping-pong, bare metal against containers, on the local cluster.

Two ranks exchange messages (8 bytes for latency, 1 MiB for bandwidth) through
Open MPI with PMIx, started by the host's `srun --mpi=pmix`:

    intra-node  -N1 -n2: the ranks share a node (Open MPI's shared-memory transport,
                with cross-memory attach (CMA) where the ranks may ptrace each other)
    inter-node  -N2 -n2: one rank per node (TCP over the cluster's bridge here)

for each of:

    bare        the program on the host
    hpcrun      hpcrun's C front end, one container per node (srun $TASK --, TASK from
                `hpcrun task --plan --node-container IMAGE`): the ranks of a node share
                one user namespace
    per-task    the same with a container per task: each rank in its own user namespace
    ch-run      Charliecloud, a container per task

The image holds the host's Open MPI and PMIx (hpcrun.testing.make_mpi_rootfs), so every
variant runs the same MPI. Rounds are interleaved; medians of the per-round results
are printed with the ratio to bare. Open MPI's warnings (e.g. that CMA is not
available between ranks in different user namespaces) are counted and shown.

Run as root (it starts its own cluster "mpibench" and removes it afterwards):

    /opt/hpcrun/venv/bin/python benchmarks/mpi.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys

from _local import USER, local_cluster

from hpcrun.testing import make_mpi_rootfs

PINGPONG_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
static double pingpong(int rank, char *buf, int size, int iters) {
    MPI_Status st;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        if (rank == 0) {
            MPI_Send(buf, size, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, size, MPI_CHAR, 1, 0, MPI_COMM_WORLD, &st);
        } else {
            MPI_Recv(buf, size, MPI_CHAR, 0, 0, MPI_COMM_WORLD, &st);
            MPI_Send(buf, size, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
        }
    }
    return (MPI_Wtime() - t0) / (2.0 * iters);     /* one way */
}
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 2) { if (!rank) fprintf(stderr, "needs 2 ranks\n"); MPI_Abort(MPI_COMM_WORLD, 2); }
    char *buf = calloc(1, 1 << 20);
    pingpong(rank, buf, 8, 200);                   /* warm-up */
    double lat = pingpong(rank, buf, 8, 2000);
    pingpong(rank, buf, 1 << 20, 10);
    double big = pingpong(rank, buf, 1 << 20, 100);
    if (!rank)
        printf("RESULT latency_us=%.3f bandwidth_MBps=%.1f\n", lat * 1e6, (1 << 20) / big / 1e6);
    MPI_Finalize();
    return 0;
}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--timeout", type=int, default=60, help="seconds per run (default 60)")
    a = ap.parse_args()
    if shutil.which("mpicc") is None:
        sys.exit("benchmarks/mpi.py: mpicc is not installed (libopenmpi-dev)")

    def prepare(work):
        make_mpi_rootfs(os.path.join(work, "rootfs"), {"pingpong": PINGPONG_C})

    with local_cluster("mpi.py", "mpibench", 2, a.keep, prepare) as b:
        rootfs = os.path.join(b.work, "rootfs")
        bare_prog = os.path.join(rootfs, "opt/mpi/pingpong")   # same binary, host libraries
        inside = "/opt/mpi/pingpong"
        # ch-run binds nothing of Slurm's: give it the cluster's state directory, which
        # holds PMIx's rendezvous directories (slurmd's spool and TmpFS), at the same path.
        state = os.path.dirname(b.cluster.conf_path)
        os.makedirs(rootfs + state, exist_ok=True)
        variants = {
            "bare": [bare_prog],
            "hpcrun": b.plan("--node-container", rootfs) + ["--", inside],
            "per-task": b.plan(rootfs) + ["--", inside],
            "ch-run": ["ch-run", "-b", state, rootfs, "--", inside],
        }
        layouts = {"intra-node": ["-N1", "-n2"], "inter-node": ["-N2", "-n2"]}
        results: dict = {}
        warnings: dict = {}
        broken: dict = {}
        for r in range(a.rounds):
            names = list(variants)
            k = r % len(names)
            for layout, shape in layouts.items():
                for name in names[k:] + names[:k]:
                    if (layout, name) in broken:
                        continue
                    try:
                        cp = b.run(["srun", "--mpi=pmix", *shape, *variants[name]],
                                   timeout=a.timeout)
                    except subprocess.TimeoutExpired:
                        broken[(layout, name)] = f"no result within {a.timeout} s"
                        subprocess.run(["pkill", "-KILL", "-u", USER, "-f", "pingpong"])
                        continue
                    line = [ln for ln in cp.stdout.splitlines() if ln.startswith("RESULT ")]
                    if cp.returncode != 0 or not line:
                        err = (cp.stderr + cp.stdout).strip().splitlines()
                        broken[(layout, name)] = err[-1] if err else f"exit {cp.returncode}"
                        continue
                    kv = dict(w.split("=") for w in line[0].split()[1:])
                    results.setdefault((layout, name), []).append(
                        (float(kv["latency_us"]), float(kv["bandwidth_MBps"])))
                    if "CMA" in cp.stderr or "cma" in cp.stderr:
                        warnings[(layout, name)] = warnings.get((layout, name), 0) + 1
        report(a.rounds, variants, layouts, results, warnings, broken)
        return 0 if not broken else 1


def report(rounds, variants, layouts, results, warnings, broken) -> None:
    print(f"MPI ping-pong, 2 ranks, Open MPI with PMIx via srun --mpi=pmix, as {USER}, "
          f"{rounds} interleaved rounds, medians:")
    for layout in layouts:
        print(f"\n{layout} ({' '.join(layouts[layout])}):")
        print(f"  {'variant':<10} {'latency us':>11} {'x bare':>7} {'MB/s (1 MiB)':>13} "
              f"{'x bare':>7}  notes")
        base = results.get((layout, "bare"))
        bl = statistics.median(x for x, _ in base) if base else None
        bb = statistics.median(y for _, y in base) if base else None
        for name in variants:
            if (layout, name) in broken:
                print(f"  {name:<10} unavailable: {broken[(layout, name)]}")
                continue
            rs = results[(layout, name)]
            lat = statistics.median(x for x, _ in rs)
            bw = statistics.median(y for _, y in rs)
            note = (f"Open MPI warned about CMA in {warnings[(layout, name)]} of {len(rs)} runs"
                    if (layout, name) in warnings else "")
            rl = f"{lat / bl:7.2f}" if bl else "      -"
            rb = f"{bw / bb:7.2f}" if bb else "      -"
            print(f"  {name:<10} {lat:11.2f} {rl} {bw:13.1f} {rb}  {note}")


if __name__ == "__main__":
    sys.exit(main())
