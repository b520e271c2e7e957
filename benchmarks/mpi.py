#!/usr/bin/env python3
"""MPI in containers against bare metal, under every launcher, on the local cluster.

Two ranks exchange messages (8 bytes for latency, 1 MiB for bandwidth), one node
(-N1, shared memory) and two nodes (-N2, TCP over the cluster's bridge), started by:

    srun        the host's srun --mpi=pmix (Open MPI 4.1 with PMIx in the image)
    mpirun      Open MPI's mpirun inside an allocation (salloc), its daemons on the
                nodes started by srun
    hydra       MPICH's mpiexec.hydra inside an allocation (-launcher slurm, its proxies
                started by srun; -localhost names the host by its address on the
                cluster's bridge, since the host's name does not resolve in the nodes),
                the MPICH image

for each of:

    bare            the program on the host (the image's binary; the host has the same
                    MPI at the same paths)
    bare-nocma      (Open MPI, one node) bare with the single-copy mechanism that
                    --no-join sets (none: copy in/out instead of cross-memory attach)
    hpcrun          `hpcrun run IMAGE -- PROG`, default flags: the ranks of a node join
                    one container
    hpcrun-nojoin   `hpcrun run --no-join`: a container per rank (MPI told to avoid
                    cross-memory attach between them)
    ch-run          Charliecloud, a container per rank (`ch-run --join` is not in the
                    installed Charliecloud: shown as unavailable)

and an allreduce of 1 MiB across 4 nodes x 2 ranks (srun --mpi=pmix): bare, hpcrun,
ch-run; and a compiled CPU-bound kernel without MPI (a matrix multiply, gcc -O2 on the
host, the same binary bare, in `hpcrun run` and in `ch-run`), timed inside the program,
run one at a time (`kernel`) and paired (`kernel-paired`: bare and the variant at the
same time, each pinned to its own CPU, the CPUs swapped every other pair). This VM's
CPUs change speed under it (the same kernel takes 0.94 s or 1.6 s, minutes apart), so
runs one at a time compare different moments; a pair sees the same moment on both CPUs.
Every run has a timeout (a hang is reported, never waited for). Rounds are interleaved
(each round starts at another variant); medians (and for the kernel and the allreduce
best runs) and ratios to bare are printed; Open MPI's CMA warnings counted.

Run as root (it starts its own 4-node cluster "mpibench" and removes it afterwards):

    /opt/hpcrun/venv/bin/python benchmarks/mpi.py [--rounds 5] [--launchers srun,mpirun,hydra]
        [--extras allreduce,kernel,kernel-paired]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

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
    int lit = argc > 1 ? atoi(argv[1]) : 2000, bit = argc > 2 ? atoi(argv[2]) : 100;
    char *buf = calloc(1, 1 << 20);
    pingpong(rank, buf, 8, lit / 10);              /* warm-up */
    double lat = pingpong(rank, buf, 8, lit);
    pingpong(rank, buf, 1 << 20, bit / 10);
    double big = pingpong(rank, buf, 1 << 20, bit);
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
    int iters = argc > 1 ? atoi(argv[1]) : 200;
    for (int i = 0; i < iters / 10; i++)
        MPI_Allreduce(a, b, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++)
        MPI_Allreduce(a, b, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double t = (MPI_Wtime() - t0) / iters;
    if (!rank)
        printf("RESULT allreduce_us=%.1f\n", t * 1e6);
    MPI_Finalize();
    return 0;
}
"""


# A compiled CPU-bound kernel (no MPI): a blocked double-precision matrix multiply,
# timed inside the program, so that the figure is the kernel's speed and not the
# container's start (the wall time, start included, is printed beside it).
KERNEL_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define N 384
static double a[N][N], b[N][N], c[N][N];
int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 40;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            a[i][j] = (double)((i * 7 + j * 3) % 17) / 17.0;
            b[i][j] = (double)((i * 5 + j * 11) % 13) / 13.0;
        }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < N; i++)
            for (int k = 0; k < N; k++) {
                double x = a[i][k];
                for (int j = 0; j < N; j++)
                    c[i][j] += x * b[k][j];
            }
        a[r % N][r % N] += c[N - 1 - r % N][r % N] * 1e-9;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = 0;
    for (int i = 0; i < N; i++)
        s += c[i][i];
    printf("RESULT kernel_s=%.4f checksum=%.6e\n",
           (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9, s);
    return 0;
}
"""

# Ping-pong iterations (8-byte, 1 MiB) per case: Open MPI's mpirun across two nodes
# has a latency of milliseconds here (see the README), so it runs fewer.
ITERS = {("mpirun", 2): ("200", "20")}

# The local cluster's nodes are one machine: MPICH's UCX takes ranks of two nodes for
# neighbours and tries shared memory through /proc/PID/fd and CMA between the nodes'
# containers (different user namespaces). On a real cluster the nodes are different
# machines; here every variant of the two-node MPICH case, bare included, runs with
# those two off (what tests/test_mpi_srun.py does, and what hpcrun sets itself for
# ranks of one node in separate containers).
UCX_ACROSS = ["UCX_POSIX_USE_PROC_LINK=n", "UCX_TLS=^cma"]

# 8 ranks on a 2-CPU machine: Open MPI's ranks busy-poll, and 8 pollers on 2 CPUs
# take ~50 times longer per allreduce than ranks that yield (150 ms against 3 ms
# here), which is a figure of the scheduler, not of the transport. Every variant
# runs with yield_when_idle.
ALLREDUCE_ENV = ["OMPI_MCA_mpi_yield_when_idle=1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--logs", metavar="DIR",
                    help="write the whole output of every run that fails or hangs to DIR "
                         "(the report keeps only its last line)")
    ap.add_argument("--timeout", type=int, default=60, help="seconds per run (default 60)")
    ap.add_argument("--launchers", default="srun,mpirun,hydra",
                    help="ping-pong launchers (srun,mpirun,hydra; 'none' for none)")
    ap.add_argument("--extras", default="allreduce,kernel,kernel-paired",
                    help="allreduce (4 x 2 ranks), kernel (CPU-bound, no MPI), kernel-paired "
                         "(the kernel bare and inside at once, one CPU each); 'none'")
    a = ap.parse_args()
    if shutil.which("mpicc") is None:
        sys.exit("benchmarks/mpi.py: mpicc is not installed (libopenmpi-dev)")
    launchers = [x for x in a.launchers.split(",") if x and x != "none"]
    extras = [x for x in a.extras.split(",") if x and x != "none"]
    if "hydra" in launchers and not shutil.which("mpicc.mpich"):
        launchers.remove("hydra")

    def prepare(work):
        progs = {"pingpong": PINGPONG_C, "allreduce": ALLREDUCE_C}
        root = make_mpi_rootfs(os.path.join(work, "rootfs"), progs)
        # the kernel: compiled on the host, copied into the image (which has the
        # host's C library), the same binary run bare and inside
        src = os.path.join(root, "opt/mpi/kernel.c")
        with open(src, "w") as f:
            f.write(KERNEL_C)
        subprocess.run(["gcc", "-O2", "-o", os.path.join(root, "opt/mpi/kernel"), src],
                       check=True)
        os.chmod(os.path.join(root, "opt/mpi/kernel"), 0o755)
        if "hydra" in launchers:
            make_mpi_rootfs(os.path.join(work, "mpich"), {"pingpong": PINGPONG_C}, mpi="mpich")

    with local_cluster("mpi.py", "mpibench", 4, a.keep, prepare) as b:
        images = {"srun": os.path.join(b.work, "rootfs"), "mpirun": os.path.join(b.work, "rootfs"),
                  "hydra": os.path.join(b.work, "mpich")}
        hpcrun = shutil.which("hpcrun", path=b.env.get("PATH")) or "hpcrun"
        # hydra's proxies on the nodes connect back to mpiexec, which runs on the host:
        # the host's name does not resolve in the nodes, its address on the bridge does
        host_addr = b.cluster.status()["host_addr"]
        # ch-run binds nothing of Slurm's: give it the cluster's state directory, which
        # holds PMIx's rendezvous directories (slurmd's spool and TmpFS), at the same path.
        state = os.path.dirname(b.cluster.conf_path)
        for root in set(images.values()):
            if os.path.isdir(root):
                os.makedirs(root + state, exist_ok=True)

        def variants(launcher, nodes, prog):
            img = images[launcher]
            nocma = launcher != "hydra" and nodes == 1
            return {
                "bare": [img + prog],
                # Open MPI on one node, bare, with the single-copy mechanism that
                # hpcrun --no-join sets (copy in/out instead of CMA): tells whether a
                # difference between joined and --no-join is hpcrun's or Open MPI's
                "bare-nocma": (["env", "OMPI_MCA_btl_vader_single_copy_mechanism=none",
                                img + prog] if nocma else None),
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
            env = ["env", *UCX_ACROSS] if nodes > 1 else []
            return [*env, "salloc", "--quiet", f"-N{nodes}", "-n2", "mpiexec.hydra",
                    "-launcher", "slurm", "-localhost", host_addr, "-n", "2",
                    "-ppn", str(3 - nodes), *cmd]

        cases = [(ln, nodes) for ln in launchers for nodes in (1, 2)]
        results: dict = {}
        warnings: dict = {}
        broken: dict = {}
        # A run that exits with an error (not a hang) is counted and the variant stays
        # in: Open MPI's TCP BTL here now and then loses a connection between the
        # nodes and a rank dies of SIGSEGV, bare as well as inside (see the README).
        # FAILS_IN_A_ROW failures in a row take a variant out.
        failed: dict = {}
        # which round (and which run of it) each result came from: pairs by round
        slots: dict = {}
        now = {"slot": (0, 0)}

        def keep_log(key, argv, text):
            if not a.logs:
                return
            os.makedirs(a.logs, exist_ok=True)
            name = "-".join(str(k) for k in key).replace(" ", "_")
            path = os.path.join(a.logs, f"{name}.{time.strftime('%H%M%S')}.log")
            with open(path, "w") as f:
                f.write(f"# {time.strftime('%F %T')} {' '.join(argv)}\n{text}")
            print(f"  {' '.join(str(k) for k in key)}: failed, output in {path}", flush=True)

        def one(key, argv, field, timeout=a.timeout, slurm=True):
            try:
                cp = b.run(argv, timeout=timeout)
            except subprocess.TimeoutExpired as e:
                broken[key] = f"HANG: no result within {timeout} s"
                keep_log(key, argv, f"# timed out after {timeout} s\n" + "\n".join(
                    x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                    for x in (e.stdout, e.stderr)))
                _kill_ranks(b.work)
                # and its job: left running, it holds the nodes and every later run
                # would wait for them (a hang that is not its own)
                if slurm:
                    b.run(["scancel", "--full", "-u", USER], timeout=30)
                return
            got = _result(cp, field)
            if got is None:
                # the job ended: nothing of it may be left on any node (the nodes are
                # this machine's processes), the containers' processes included
                left = _leftovers()
                why = _why(cp) + (f"; {len(left)} processes left: {left}" if left
                                  else "; nothing left running")
                failed.setdefault(key, []).append((now["slot"], why))
                keep_log(key, argv, f"# exit {cp.returncode}\n# stdout\n{cp.stdout}\n"
                         f"# stderr\n{cp.stderr}")
                fails = [sl for sl, _ in failed[key][-FAILS_IN_A_ROW:]]
                ok = [sl for sl in slots.get(key, []) if sl > fails[0]]
                if len(fails) == FAILS_IN_A_ROW and not ok:
                    broken[key] = f"failed {FAILS_IN_A_ROW} runs in a row: {why}"
                return
            results.setdefault(key, []).append(got)
            slots.setdefault(key, []).append(now["slot"])
            if "CMA" in cp.stderr or "cma-" in cp.stderr:
                warnings[key] = warnings.get(key, 0) + 1

        def kernel(key, argv):
            t0 = time.perf_counter()
            one(key, argv, ("kernel_s",), slurm=False)
            if key in results and len(results[key][-1]) == 1:
                results[key][-1] = (results[key][-1][0], time.perf_counter() - t0)

        def kernel_pair(key, bare_argv, argv):
            """bare and a variant at the same time, each pinned to its own CPU: both
            see the machine's speed of the same second. Records bare/variant."""
            out: dict = {}

            def go(i, av):
                try:
                    out[i] = b.run(av, timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    out[i] = None
            ts = [threading.Thread(target=go, args=(i, av))
                  for i, av in enumerate((bare_argv, argv))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            got = [_result(cp, ("kernel_s",)) if cp else None for cp in (out[0], out[1])]
            if None in got:
                cp = out[got.index(None)]
                broken[key] = "HANG: no result" if not cp else _why(cp)
                return
            (t0,), (t1,) = got
            results.setdefault(key, []).append((t0 / t1, t0, t1))
            slots.setdefault(key, []).append(now["slot"])

        names = list(variants("srun", 1, ""))
        knames = ("bare", "hpcrun", "ch-run")
        for r in range(a.rounds):
            k = r % len(names)
            for launcher, nodes in cases:
                vs = variants(launcher, nodes, "/opt/mpi/pingpong")
                now["slot"] = (r, 0)
                for name in names[k:] + names[:k]:
                    key = (launcher, nodes, name)
                    if vs[name] is None:
                        broken[key] = ("not available (ch-run has no --join here)"
                                       if "join" in name else "-")
                    if key in broken:
                        continue
                    one(key, launch(launcher, nodes, [*vs[name], *ITERS.get((launcher, nodes), ())]),
                        ("latency_us", "bandwidth_MBps"))
            if "allreduce" in extras:
                vs = variants("srun", 4, "/opt/mpi/allreduce")
                now["slot"] = (r, 0)
                for name in knames[r % 3:] + knames[:r % 3]:
                    key = ("allreduce", 4, name)
                    if key not in broken:
                        one(key, ["env", *ALLREDUCE_ENV, "srun", "--mpi=pmix", "-N4",
                                  "--ntasks-per-node=2", *vs[name]],
                            ("allreduce_us",), timeout=max(a.timeout, 120))
            if "kernel" in extras:
                vs = variants("srun", 1, "/opt/mpi/kernel")
                for j in range(3):        # short runs: three interleaved per round
                    q = (3 * r + j) % 3
                    now["slot"] = (r, j)
                    for name in knames[q:] + knames[:q]:
                        key = ("kernel", 0, name)
                        if key not in broken:
                            kernel(key, vs[name])
            if "kernel-paired" in extras:
                vs = variants("srun", 1, "/opt/mpi/kernel")
                for name in ("hpcrun", "ch-run"):
                    for j in range(2):    # each side on each CPU once a round
                        cpu = (r + j) % 2
                        now["slot"] = (r, j)
                        kernel_pair(("kernel-paired", 0, name),
                                    ["taskset", "-c", str(cpu), *vs["bare"]],
                                    ["taskset", "-c", str(1 - cpu), *vs[name]])
            if r + 1 < a.rounds:          # what there is so far, in case it is stopped
                print(f"--- after round {r + 1}:", flush=True)
                report(r + 1, names, cases, extras, results, warnings, broken, failed, slots)
        report(a.rounds, names, cases, extras, results, warnings, broken, failed, slots)
        print("\nevery run, in the order of the rounds:")
        for key, rs in results.items():
            print(f"  {' '.join(map(str, key))}: " + "  ".join(
                "/".join(f"{v:.6g}" for v in x) for x in rs))
        return 0 if not [v for v in broken.values() if v.startswith("HANG")] else 1


def _leftovers(grace: float = 5.0) -> list:
    """The bench user's processes still alive GRACE seconds after a run ended (no other
    run is in flight then): what a failed job left behind, as 'pid:comm'."""
    uid = __import__("pwd").getpwnam(USER).pw_uid
    end = time.monotonic() + grace
    while True:
        left = []
        for p in os.listdir("/proc"):
            try:
                if p.isdigit() and os.stat(f"/proc/{p}").st_uid == uid:
                    with open(f"/proc/{p}/comm") as f:
                        left.append(f"{p}:{f.read().strip()}")
            except OSError:
                continue
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.2)


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


FAILS_IN_A_ROW = 3


def _result(cp, field):
    """The FIELD values of a run's RESULT line, or None if it failed or printed none."""
    line = [ln for ln in cp.stdout.splitlines() if ln.startswith("RESULT ")]
    if cp.returncode != 0 or not line:
        return None
    kv = dict(w.split("=") for w in line[0].split()[1:])
    return tuple(float(kv[f]) for f in field)


def _why(cp) -> str:
    """A failed run in one line: srun's first error (which task died, of what), or
    the last line of the output."""
    lines = (cp.stderr + cp.stdout).strip().splitlines()
    first = [ln for ln in lines if ln.startswith("srun: error:")]
    return (first or lines or [f"exit {cp.returncode}"])[0 if first else -1][:100]


def report(rounds, names, cases, extras, results, warnings, broken, failed, slots) -> None:
    if cases:
        print(f"MPI ping-pong, 2 ranks, as {USER}, {rounds} interleaved rounds, medians and "
              "best runs (lowest latency, highest bandwidth) (ratios: x bare; targets for "
              "hpcrun: latency <= 1.05, bandwidth >= 0.97):")
    for launcher, nodes in cases:
        print(f"\n{launcher}, {nodes} node{'s' if nodes > 1 else ''}:")
        print(f"  {'variant':<14} {'latency us':>11} {'x bare':>7} {'best':>8} {'x bare':>7} "
              f"{'MB/s (1 MiB)':>13} {'x bare':>7} {'best':>9} {'x bare':>7}  runs  notes")
        base = results.get((launcher, nodes, "bare"))
        bl = statistics.median(x for x, _ in base) if base else None
        bb = statistics.median(y for _, y in base) if base else None
        bl1 = min(x for x, _ in base) if base else None
        bb1 = max(y for _, y in base) if base else None
        for name in names:
            key = (launcher, nodes, name)
            if broken.get(key) == "-":
                continue
            if key in broken or key not in results:
                print(f"  {name:<14} unavailable: {broken.get(key, 'no result')}")
                continue
            rs = results[key]
            lat = statistics.median(x for x, _ in rs)
            bw = statistics.median(y for _, y in rs)
            lat1 = min(x for x, _ in rs)
            bw1 = max(y for _, y in rs)
            note = (f"Open MPI warned about CMA in {warnings[key]} of {len(rs)} runs"
                    if key in warnings else "")
            if name != "bare" and base:
                # ratios of the runs of the same round, medians: drift between rounds
                # moves bare and the variant together
                mine = dict(zip(slots[key], rs))
                pairs = [(mine[sl][0] / b[0], mine[sl][1] / b[1])
                         for sl, b in zip(slots[(launcher, nodes, "bare")], base) if sl in mine]
                if pairs:
                    note += (f"{'; ' if note else ''}paired by round x bare: latency "
                             f"{statistics.median(x for x, _ in pairs):.2f}, bandwidth "
                             f"{statistics.median(y for _, y in pairs):.2f}")
            if key in failed:
                note += f"{'; ' if note else ''}{_failures(failed[key], len(rs))}"
            rl = f"{lat / bl:7.2f}" if bl else "      -"
            rb = f"{bw / bb:7.2f}" if bb else "      -"
            rl1 = f"{lat1 / bl1:7.2f}" if bl1 else "      -"
            rb1 = f"{bw1 / bb1:7.2f}" if bb1 else "      -"
            print(f"  {name:<14} {lat:11.2f} {rl} {lat1:8.2f} {rl1} {bw:13.1f} {rb} "
                  f"{bw1:9.1f} {rb1}  {len(rs):4}  {note}")
    if "allreduce" in extras:
        print("\nallreduce of 1 MiB, 4 nodes x 2 ranks, srun --mpi=pmix, yield_when_idle "
              "(time per call, median; speed = bare/variant, target >= 0.97):")
        _speeds(results, broken, failed, slots, "allreduce", 4, "us", 1)
    if "kernel" in extras:
        print("\nCPU-bound kernel (384x384 matrix multiply x40, gcc -O2, no MPI; time "
              "inside the program, median and best; speed = bare/variant, target >= 0.99):")
        _speeds(results, broken, failed, slots, "kernel", 0, "s", 1)
    if "kernel-paired" in extras:
        print("\nThe same kernel paired: bare and the variant at the same time, each pinned "
              "to its own CPU, CPUs swapped every other pair (speed = bare/variant of each "
              "pair; target >= 0.99):")
        for name in ("hpcrun", "ch-run"):
            key = ("kernel-paired", 0, name)
            if key in broken or key not in results:
                print(f"  {name:<8} unavailable: {broken.get(key, 'no result')}")
                continue
            rs = [x[0] for x in results[key]]
            print(f"  {name:<8} speed median {statistics.median(rs):5.3f}  geometric mean "
                  f"{statistics.geometric_mean(rs):5.3f}  min {min(rs):5.3f}  max {max(rs):5.3f}  pairs {len(rs)}")


def _failures(fails, good) -> str:
    whys = sorted({w for _, w in fails})
    return f"{len(fails)} of {len(fails) + good} runs failed ({' | '.join(whys)[:160]})"


def _speeds(results, broken, failed, slots, what, n, unit, scale) -> None:
    base = results.get((what, n, "bare"))
    bmed = statistics.median(x[0] for x in base) if base else None
    bbest = min(x[0] for x in base) if base else None
    for name in ("bare", "hpcrun", "ch-run"):
        key = (what, n, name)
        if key in broken or key not in results:
            print(f"  {name:<8} unavailable: {broken.get(key, 'no result')}")
            continue
        rs = results[key]
        med, best = statistics.median(x[0] for x in rs), min(x[0] for x in rs)
        line = (f"  {name:<8} median {med * scale:10.3f} {unit}  speed {bmed / med:5.3f}   "
                f"best {best * scale:10.3f} {unit}  speed {bbest / best:5.3f}   runs {len(rs)}")
        if len(rs[0]) > 1:
            line += f"   wall median {statistics.median(x[1] for x in rs):.3f} s"
        if name != "bare" and base:
            # the runs of bare and of the variant from the same round (and run of it),
            # minutes apart at most; a round where either failed has no pair
            mine = dict(zip(slots[key], rs))
            pairs = [b[0] / mine[sl][0] for sl, b in zip(slots[(what, n, "bare")], base)
                     if sl in mine]
            if pairs:
                line += f"   paired by round: median speed {statistics.median(pairs):5.3f}"
        if key in failed:
            line += f"\n           {_failures(failed[key], len(rs))}"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
