"""Helpers for the resource-limit tests (test_limits*.py): small static programs the
containers run (a memory eater, a CPU spinner), hpcrun as root (the cgroup v1 tier),
and the leftovers a container with limits could leave (cgroup directories, monitors)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

import util

EAT_C = r"""
/* eat MB [SECONDS]: touch MB MiB of anonymous memory, 1 MiB a millisecond, then sleep. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv)
{
    long mb = argc > 1 ? atol(argv[1]) : 100;
    struct timespec ts = {0, 1000000};
    for (long i = 0; i < mb; i++) {
        char *p = malloc(1 << 20);
        if (!p) return 3;
        memset(p, 1, 1 << 20);
        nanosleep(&ts, NULL);
    }
    sleep(argc > 2 ? atoi(argv[2]) : 0);
    return 0;
}
"""

SPIN_C = r"""
/* spin SECONDS: burn CPU for SECONDS of wall time; print "cpu WALL_NS CPU_NS CPUS_SEEN"
 * where CPUS_SEEN is the set of CPUs it ran on, as a bit mask. */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static long long ns(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }
int main(int argc, char **argv)
{
    double s = argc > 1 ? atof(argv[1]) : 1.0;
    long long w0 = ns(CLOCK_MONOTONIC), c0 = ns(CLOCK_PROCESS_CPUTIME_ID);
    unsigned long seen = 0;
    volatile unsigned long x = 0;
    while (ns(CLOCK_MONOTONIC) - w0 < (long long)(s * 1e9)) {
        for (int i = 0; i < 100000; i++) x += i;
        int cpu = sched_getcpu();
        if (cpu >= 0 && cpu < 64) seen |= 1UL << cpu;
    }
    printf("cpu %lld %lld %lu\n", ns(CLOCK_MONOTONIC) - w0, ns(CLOCK_PROCESS_CPUTIME_ID) - c0, seen);
    return 0;
}
"""


@pytest.fixture(scope="session")
def lim_tools():
    """A directory (bound at /t) with static eat and spin programs and a fork loop."""
    util.require(shutil.which("cc") is not None, "a C compiler is needed for the test programs")
    d = util.shared_tmpdir("hpcrun-limtools-")
    for name, src in (("eat", EAT_C), ("spin", SPIN_C)):
        with open(os.path.join(d, name + ".c"), "w") as f:
            f.write(src)
        cp = subprocess.run(["cc", "-O1", "-static", "-o", os.path.join(d, name),
                             os.path.join(d, name + ".c")], capture_output=True, text=True)
        util.require(cp.returncode == 0, f"can't build a static test program: {cp.stderr}")
    with open(os.path.join(d, "forks.sh"), "w") as f:
        # A bounded fork loop: N sleepers; each that started writes a line to FILE.
        f.write('#!/bin/sh\ni=0\nwhile [ $i -lt "$1" ]; do\n'
                '  (echo x >> "$2"; sleep 3) &\n  i=$((i+1))\ndone\nwait\n')
    os.chmod(os.path.join(d, "forks.sh"), 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_root(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    """`hpcrun run ARGS...` as root: the cgroup v1 tier (v1 directories are root's)."""
    return subprocess.run([util.HPCRUN, "run", *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/", **kw)


def hpcrun_cgroups() -> set:
    """Every hpcrun-<pid> cgroup directory in the v1 hierarchies and the v2 mount."""
    found = set()
    for top in glob.glob("/sys/fs/cgroup/*/") + ["/sys/fs/cgroup/"]:
        for depth in range(0, 4):
            found.update(glob.glob(top + "*/" * depth + "hpcrun-[0-9]*"))
    return found


def monitors() -> list:
    """Host processes named as hpcrun's monitor or reaper, of this checkout's hpcrun
    (other checkouts' tests may run beside these)."""
    import hpcrun
    mine = (os.path.dirname(hpcrun.__file__), util.VENV_BIN)
    out = []
    for pid, comm in util.live_processes():
        if comm not in ("hpcrun:monitor", "hpcrun:reaper"):
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd for m in mine):
            out.append((pid, comm))
    return out


def started(path) -> int:
    """How many of the fork loop's sleepers started."""
    try:
        with open(path) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def cpu_line(stdout: str):
    """spin's output lines -> [(wall_s, cpu_s, cpus_seen_set)]."""
    out = []
    for line in stdout.splitlines():
        p = line.split()
        if len(p) == 4 and p[0] == "cpu":
            mask = int(p[3])
            out.append((int(p[1]) / 1e9, int(p[2]) / 1e9, {i for i in range(64) if mask >> i & 1}))
    return out
