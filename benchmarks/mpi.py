#!/usr/bin/env python3
"""MPI in containers against bare metal, under every launcher, on the local cluster.

Two ranks exchange messages (8 bytes for latency, 1 MiB for bandwidth), one node
(-N1, shared memory) and two nodes (-N2, TCP over the cluster's bridge), started by:

    srun        the host's srun --mpi=pmix (Open MPI 4.1 with PMIx in the image)
    mpirun      Open MPI's mpirun inside an allocation (salloc), its daemons on the
                nodes started by srun
    hydra       MPICH's mpiexec.hydra inside an allocation (-launcher slurm), the MPICH
                image

for each of:

    bare            the program on the host (the image's binary; the host has the same
                    MPI at the same paths)
    hpcrun          `hpcrun run IMAGE -- PROG`, default flags: the ranks of a node join
                    one container
    hpcrun-nojoin   `hpcrun run --no-join`: a container per rank (MPI told to avoid
                    cross-memory attach between them)
    ch-run          Charliecloud, a container per rank (`ch-run --join` is not in the
                    installed Charliecloud: shown as unavailable)

and an allreduce of 1 MiB across 4 nodes x 2 ranks (srun --mpi=pmix): bare, hpcrun,
ch-run. Every run has a timeout (a hang is reported, never waited for). Rounds are
interleaved; medians and ratios to bare are printed; Open MPI's CMA warnings counted.

Run as root (it starts its own 4-node cluster "mpibench" and removes it afterwards):

    /opt/hpcrun/venv/bin/python benchmarks/mpi.py [--rounds 5] [--launchers srun,mpirun,hydra]
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


ALLREDUCE_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int rank, n = (1 << 20) / 8;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    double *a = calloc(n, sizeof *a), *b = calloc(n, sizeof *b);
    for (int i = 0; i < 5; i++)
        MPI_Allreduce(a, b, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < 50; i++)
        MPI_Allreduce(a, b, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double t = (MPI_Wtime() - t0) / 50;
    if (!rank)
        printf("RESULT allreduce_us=%.1f\n", t * 1e6);
    MPI_Finalize();
    return 0;
}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--timeout", type=int, default=60, help="seconds per run (default 60)")
    ap.add_argument("--launchers", default="srun,mpirun,hydra")
    a = ap.parse_args()
    if shutil.which("mpicc") is None:
        sys.exit("benchmarks/mpi.py: mpicc is not installed (libopenmpi-dev)")
    launchers = a.launchers.split(",")
    if "hydra" in launchers and not shutil.which("mpicc.mpich"):
        launchers.remove("hydra")

    def prepare(work):
        progs = {"pingpong": PINGPONG_C, "allreduce": ALLREDUCE_C}
        make_mpi_rootfs(os.path.join(work, "rootfs"), progs)
        if "hydra" in launchers:
            make_mpi_rootfs(os.path.join(work, "mpich"), {"pingpong": PINGPONG_C}, mpi="mpich")

    with local_cluster("mpi.py", "mpibench", 4, a.keep, prepare) as b:
        images = {"srun": os.path.join(b.work, "rootfs"), "mpirun": os.path.join(b.work, "rootfs"),
                  "hydra": os.path.join(b.work, "mpich")}
        hpcrun = shutil.which("hpcrun", path=b.env.get("PATH")) or "hpcrun"
        # ch-run binds nothing of Slurm's: give it the cluster's state directory, which
        # holds PMIx's rendezvous directories (slurmd's spool and TmpFS), at the same path.
        state = os.path.dirname(b.cluster.conf_path)
        for root in set(images.values()):
            if os.path.isdir(root):
                os.makedirs(root + state, exist_ok=True)

        def variants(launcher, prog):
            img = images[launcher]
            return {
                "bare": [img + prog],
                "hpcrun": [hpcrun, "run", img, "--", prog],
                "hpcrun-nojoin": [hpcrun, "run", "--no-join", img, "--", prog],
                "ch-run": ["ch-run", "-b", state, img, "--", prog],
                "ch-run --join": None,          # not in the installed Charliecloud
            }

        def launch(launcher, nodes, cmd):
            if launcher == "srun":
                return ["srun", "--mpi=pmix", f"-N{nodes}", "-n2", *cmd]
            if launcher == "mpirun":
                return ["salloc", "--quiet", f"-N{nodes}", "-n2", "mpirun", "-n", "2",
                        "--mca", "btl", "self,vader,tcp", *cmd]
            return ["salloc", "--quiet", f"-N{nodes}", "-n2", "mpiexec.hydra", "-launcher",
                    "slurm", "-n", "2", "-ppn", str(3 - nodes), *cmd]

        cases = [(ln, nodes) for ln in launchers for nodes in (1, 2)]
        results: dict = {}
        warnings: dict = {}
        broken: dict = {}

        def one(key, argv, field):
            try:
                cp = b.run(argv, timeout=a.timeout)
            except subprocess.TimeoutExpired:
                broken[key] = f"HANG: no result within {a.timeout} s"
                _kill_ranks(b.work)
                # and its job: left running, it holds the nodes and every later run
                # would wait for them (a hang that is not its own)
                b.run(["scancel", "--full", "-u", USER], timeout=30)
                return
            line = [ln for ln in cp.stdout.splitlines() if ln.startswith("RESULT ")]
            if cp.returncode != 0 or not line:
                err = (cp.stderr + cp.stdout).strip().splitlines()
                broken[key] = err[-1][:100] if err else f"exit {cp.returncode}"
                return
            kv = dict(w.split("=") for w in line[0].split()[1:])
            results.setdefault(key, []).append(tuple(float(kv[f]) for f in field))
            if "CMA" in cp.stderr or "cma-" in cp.stderr:
                warnings[key] = warnings.get(key, 0) + 1

        names = list(variants("srun", ""))
        for r in range(a.rounds):
            k = r % len(names)
            for launcher, nodes in cases:
                vs = variants(launcher, "/opt/mpi/pingpong")
                for name in names[k:] + names[:k]:
                    key = (launcher, nodes, name)
                    if vs[name] is None:
                        broken[key] = "not available (ch-run has no --join here)"
                    if key in broken:
                        continue
                    one(key, launch(launcher, nodes, vs[name]),
                        ("latency_us", "bandwidth_MBps"))
            vs = variants("srun", "/opt/mpi/allreduce")
            for name in ("bare", "hpcrun", "ch-run")[k % 3:] + ("bare", "hpcrun", "ch-run")[:k % 3]:
                key = ("allreduce", 4, name)
                if key not in broken:
                    one(key, ["srun", "--mpi=pmix", "-N4", "--ntasks-per-node=2", *vs[name]],
                        ("allreduce_us",))
            if r + 1 < a.rounds:          # what there is so far, in case it is stopped
                print(f"--- after round {r + 1}:", flush=True)
                report(r + 1, names, cases, results, warnings, broken)
        report(a.rounds, names, cases, results, warnings, broken)
        return 0 if not [v for v in broken.values() if v.startswith("HANG")] else 1


def _kill_ranks(work: str) -> None:
    """SIGKILL the bench user's processes started from this run's images (a hung run's
    ranks), by their command line, not by a name other processes may share."""
    uid = __import__("pwd").getpwnam(USER).pw_uid
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            if os.stat(f"/proc/{p}").st_uid != uid:
                continue
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if work.encode() in f.read():
                    os.kill(int(p), 9)
        except OSError:
            continue


def report(rounds, names, cases, results, warnings, broken) -> None:
    print(f"MPI ping-pong, 2 ranks, as {USER}, {rounds} interleaved rounds, medians "
          "(ratios: x bare; targets for hpcrun: latency <= 1.05, bandwidth >= 0.97):")
    for launcher, nodes in cases:
        print(f"\n{launcher}, {nodes} node{'s' if nodes > 1 else ''}:")
        print(f"  {'variant':<14} {'latency us':>11} {'x bare':>7} {'MB/s (1 MiB)':>13} "
              f"{'x bare':>7}  notes")
        base = results.get((launcher, nodes, "bare"))
        bl = statistics.median(x for x, _ in base) if base else None
        bb = statistics.median(y for _, y in base) if base else None
        for name in names:
            key = (launcher, nodes, name)
            if key in broken or key not in results:
                print(f"  {name:<14} unavailable: {broken.get(key, 'no result')}")
                continue
            rs = results[key]
            lat = statistics.median(x for x, _ in rs)
            bw = statistics.median(y for _, y in rs)
            note = (f"Open MPI warned about CMA in {warnings[key]} of {len(rs)} runs"
                    if key in warnings else "")
            rl = f"{lat / bl:7.2f}" if bl else "      -"
            rb = f"{bw / bb:7.2f}" if bb else "      -"
            print(f"  {name:<14} {lat:11.2f} {rl} {bw:13.1f} {rb}  {note}")
    print("\nallreduce of 1 MiB, 4 nodes x 2 ranks, srun --mpi=pmix (time per call, "
          "x bare; target: bare/hpcrun >= 0.97):")
    base = results.get(("allreduce", 4, "bare"))
    bt = statistics.median(x for (x,) in base) if base else None
    for name in ("bare", "hpcrun", "ch-run"):
        key = ("allreduce", 4, name)
        if key in broken or key not in results:
            print(f"  {name:<14} unavailable: {broken.get(key, 'no result')}")
            continue
        t = statistics.median(x for (x,) in results[key])
        print(f"  {name:<14} {t:9.1f} us  {t / bt if bt else 0:5.2f}  (speed {bt / t if bt else 0:.2f} of bare)")


if __name__ == "__main__":
    sys.exit(main())
