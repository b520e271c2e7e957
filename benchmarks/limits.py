#!/usr/bin/env python3
"""What resource limits cost, per tier, measured side by side in one run (interleaved).

  start-up   `hpcrun run --cpus 1 --memory 1G IMG /bin/true` against `hpcrun run IMG
             /bin/true`: the cgroup v1 tier (as root) and the no-cgroup tier (the
             unprivileged user: affinity + watchdog). Target: under 1 ms added.
  kernel     a compiled CPU-bound kernel under `hpcrun run --cpuset-cpus 0` against bare
             `taskset -c 0`, the kernel timing itself (start-up excluded). Target: ratio
             (bare time / hpcrun time) at least 0.99.
  watchdog   the monitor's own CPU time while a container with --memory runs (tier 2:
             it samples /proc every 100 ms), as a share of one core. Target: < 0.5%.
  step plan  a step plan's task with no limit, a bare --cpus 1 and --memory 1G (both
             applied by the C executor: for --memory, the no-cgroup tier's words on a
             node that gives the user no writable cgroup): what a limit costs per task.
  peers      whether `systemd-run --user --scope -p MemoryMax=...` or Apptainer's
             --memory could run here, to set beside the figures.

Run as root (it drops to HPCRUN_TEST_USER, default hpcuser, for the user tier).
Usage: benchmarks/limits.py [--rounds N] [--startup-only]
"""
from __future__ import annotations

import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HPCRUN = os.path.join(os.path.dirname(sys.executable), "hpcrun")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")

KERNEL_C = r"""
#include <stdio.h>
#include <time.h>
/* A CPU-bound kernel: an integer recurrence the compiler cannot fold. Prints its time. */
int main(void)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    volatile unsigned long long x = 1;
    unsigned long long y = 88172645463325252ULL;
    for (long i = 0; i < 300000000L; i++) {
        y ^= y << 13; y ^= y >> 7; y ^= y << 17;
        x += y & 0xff;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return (int)(x & 0);
}
"""


def as_user_kw(pw):
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    return dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], env=env)


def timed(argv, **kw) -> float:
    t = time.perf_counter()
    cp = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/", **kw)
    dt = (time.perf_counter() - t) * 1000
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {cp.stderr.decode().strip()}")
    return dt


def startup(img, pw, rounds):
    """plain and limited as they run (the C launcher's plan cache: warm, a cgroup v1
    plan too: the C executor makes its cgroup), plus plain cold (no cache) beside."""
    rows = []
    for tier, kw in (("cgroup v1 (root)", {"env": dict(os.environ)}),
                     ("no cgroup (user)", as_user_kw(pw))):
        cold_kw = dict(kw, env=dict(kw["env"], HPCRUN_NO_PLAN_CACHE="1"))
        plain = [HPCRUN, "run", img, "/bin/true"]
        limited = [HPCRUN, "run", "--cpus", "1", "--memory", "1G", img, "/bin/true"]
        cases = [(plain, kw, []), (limited, kw, []), (plain, cold_kw, [])]
        for c in cases:                       # fill the plan cache
            timed(c[0], **c[1])
        for i in range(rounds):
            for argv, k, out in cases[i % 3:] + cases[:i % 3]:
                out.append(timed(argv, **k))
        ma, mb, mc = (statistics.median(c[2]) for c in cases)
        rows.append((tier, ma, mb))
        print(f"start-up {tier:<18} plain {ma:6.2f} ms   limited {mb:6.2f} ms   "
              f"added {mb - ma:+5.2f} ms   (plain without the plan cache {mc:6.2f} ms)")
    return rows


def stepplan(img, pw, rounds):
    """A step plan's task (`hpcrun task --plan ...` executed by the per-task program, as
    srun starts it; here outside a job, as the user): no limit, a bare --cpus 1 and
    --memory 1G (plan words the C executor applies)."""
    kw = as_user_kw(pw)
    words = {}
    for name, opts in (("plain", []), ("--cpus 1", ["--cpus", "1"]),
                       ("--memory 1G", ["--memory", "1G"])):
        cp = subprocess.run([HPCRUN, "task", "--plan", *opts, img], capture_output=True,
                            text=True, check=True, cwd="/", **kw)
        words[name] = cp.stdout.split()
    cases = [(name, w + ["--", "/bin/true"], []) for name, w in words.items()]
    for _, argv, _ in cases:
        timed(argv, **kw)
    for i in range(rounds):
        for _, argv, out in cases[i % 3:] + cases[:i % 3]:
            out.append(timed(argv, **kw))
    base = statistics.median(cases[0][2])
    for name, _, out in cases:
        m = statistics.median(out)
        print(f"step plan task {name:<12} {m:6.2f} ms   added {m - base:+6.2f} ms")


def kernel(img, tools, pw, rounds):
    prog = os.path.join(tools, "kernel")
    for tier, kw in (("cgroup v1 (root)", {}), ("no cgroup (user)", as_user_kw(pw))):
        bare, cont = [], []
        for i in range(rounds):
            order = (("bare", bare), ("hpcrun", cont)) if i % 2 == 0 else (("hpcrun", cont), ("bare", bare))
            for name, out in order:
                argv = (["taskset", "-c", "0", prog] if name == "bare" else
                        [HPCRUN, "run", "--cpuset-cpus", "0", "-v", f"{tools}:/t", img, "/t/kernel"])
                cp = subprocess.run(argv, capture_output=True, text=True, cwd="/", **kw)
                if cp.returncode != 0:
                    raise RuntimeError(f"{' '.join(argv)} failed: {cp.stderr.strip()}")
                out.append(float(cp.stdout.split()[-1]))
        mb, mc = statistics.median(bare), statistics.median(cont)
        # On a shared machine other work lands on CPU 0 too: the fastest round of each
        # is the least disturbed one, the median shows the spread.
        print(f"kernel   {tier:<18} taskset -c 0 {mb:.3f} s   hpcrun --cpuset-cpus 0 {mc:.3f} s"
              f"   ratio {mb / mc:.3f} median, {min(bare) / min(cont):.3f} best of "
              f"{len(bare)} (target >= 0.99)")


def watchdog(img, tools, pw, seconds=10.0, procs=20, eat=0, limit="1G", regime=""):
    """The monitor's CPU time while the container (procs sleepers, and one process
    holding `eat` MiB) runs for `seconds`."""
    kw = as_user_kw(pw)
    hold = f"/t/eat {eat} {int(seconds)} & " if eat else ""
    argv = [HPCRUN, "run", "--memory", limit, "-v", f"{tools}:/t", img, "sh", "-c",
            f"{hold}for i in $(seq {procs}); do sleep {seconds} & done; wait"]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", **kw)
    # From 1 s in (the launcher's own start-up, Python included, is the same pid)
    # to the last reading before the end: ns on the CPU, from schedstat.
    first = last = None
    t0 = time.monotonic()
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/schedstat") as f:
                v = (time.monotonic(), int(f.read().split()[0]) / 1e9)
        except (OSError, IndexError, ValueError):
            v = None
        if v and v[0] - t0 >= 1.0:
            first = first or v
            last = v
        time.sleep(0.1)
    wall = last[0] - first[0]
    last = last[1] - first[1]
    nproc = sum(1 for d in os.listdir("/proc") if d.isdigit())
    print(f"watchdog {procs} container processes, {nproc} on the host: monitor CPU "
          f"{last * 1000:.1f} ms in {wall:.1f} s = {100 * last / wall:.3f}% of one core "
          f"(target < 0.5%; {regime})")


def peers():
    sr = shutil.which("systemd-run")
    booted = os.path.isdir("/run/systemd/system")
    if not sr:
        print("peer     systemd-run --user --scope -p MemoryMax=: cannot run here "
              "(systemd is not installed)")
    elif not booted or not os.environ.get("XDG_RUNTIME_DIR"):
        print("peer     systemd-run --user --scope -p MemoryMax=: cannot run here (no systemd "
              "as PID 1, no user session bus / $XDG_RUNTIME_DIR)")
    ap = shutil.which("apptainer") or shutil.which("singularity")
    if not ap:
        print("peer     apptainer --memory: cannot run here (not installed; it would also "
              "need cgroup v2 with a systemd user session, apptainer#3607)")
    else:
        print(f"peer     {ap} found, but its --memory needs cgroup v2 + a systemd user "
              "session, which this host lacks")


def main():
    rounds = 30
    if "--rounds" in sys.argv:
        rounds = int(sys.argv[sys.argv.index("--rounds") + 1])
    if os.geteuid() != 0:
        sys.exit("run as root: the cgroup v1 tier needs it (it drops to the test user for "
                 "the other tier)")
    pw = pwd.getpwnam(USER)
    work = tempfile.mkdtemp(prefix="hpcrun-limbench-", dir="/tmp")
    os.chmod(work, 0o755)
    try:
        img = os.path.join(work, "img")
        os.mkdir(img)
        from hpcrun.testing import make_busybox_rootfs
        make_busybox_rootfs(img, "/bin/busybox")
        os.chmod(img, 0o755)
        tools = os.path.join(work, "t")
        os.mkdir(tools, 0o755)
        with open(os.path.join(tools, "kernel.c"), "w") as f:
            f.write(KERNEL_C)
        subprocess.run(["cc", "-O2", "-static", "-o", os.path.join(tools, "kernel"),
                        os.path.join(tools, "kernel.c")], check=True)
        startup(img, pw, rounds)
        stepplan(img, pw, rounds)
        if "--startup-only" in sys.argv:
            return
        kernel(img, tools, pw, max(4, rounds // 4))
        watchdog(img, tools, pw, regime="far below the limit: a sample every 250 ms")
        watchdog(img, tools, pw, eat=70, limit="100m",
                 regime="at 70% of the limit: a sample every 100 ms")
        peers()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
