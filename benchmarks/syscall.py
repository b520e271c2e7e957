#!/usr/bin/env python3
"""What a system call costs inside a container, against bare metal and ch-run.

A static program makes 5 million getppid(2) calls and prints the time per call. It runs
interleaved (each round starts at another variant), as the unprivileged user, with no
terminal (standard input /dev/null, a new session: batch work, as in a Slurm step):

    bare           the program on the host
    hpcrun         `hpcrun run IMG /sc` (no terminal reachable: no seccomp filter)
    hpcrun-tty     the same with a pseudo-terminal as its controlling terminal and
                   standard input (an interactive run: the TIOCSTI filter is installed)
    ch-run         Charliecloud's `ch-run IMG -- /sc`

Medians, and each variant's ratio to bare (bare time / variant time; 1.00 is as fast).
Run as root (it drops to HPCRUN_TEST_USER, default hpcuser):

    /opt/hpcrun/venv/bin/python benchmarks/syscall.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import fcntl
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import termios

from _local import HPCRUN, USER

from hpcrun.testing import make_busybox_rootfs

SC_C = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 5000000; i++)
        syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 5e6);
    return 0;
}
"""


def run(argv, pw, tty=False) -> float:
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    kw = dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], env=env, cwd="/",
              capture_output=True, text=True, timeout=120, start_new_session=True)
    if tty:
        master, slave = os.openpty()
        os.chown(os.ttyname(slave), pw.pw_uid, -1)
        try:
            cp = subprocess.run(argv, stdin=slave,
                                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0), **kw)
        finally:
            os.close(slave)
            os.close(master)
    else:
        cp = subprocess.run(argv, stdin=subprocess.DEVNULL, **kw)
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {cp.stderr.strip()}")
    return float(cp.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it drops to the test user")
    pw = pwd.getpwnam(USER)
    work = tempfile.mkdtemp(prefix="hpcrun-scbench-", dir="/tmp")
    os.chmod(work, 0o755)
    try:
        img = os.path.join(work, "img")
        os.mkdir(img)
        make_busybox_rootfs(img, "/bin/busybox")
        with open(os.path.join(work, "sc.c"), "w") as f:
            f.write(SC_C)
        subprocess.run(["cc", "-O2", "-static", "-o", os.path.join(img, "sc"),
                        os.path.join(work, "sc.c")], check=True)
        subprocess.run(["chmod", "-R", "a+rX", work], check=True)
        variants = [("bare", [os.path.join(img, "sc")], False),
                    ("hpcrun", [HPCRUN, "run", img, "/sc"], False),
                    ("hpcrun-tty", [HPCRUN, "run", img, "/sc"], True)]
        if shutil.which("ch-run"):
            variants.append(("ch-run", ["ch-run", img, "--", "/sc"], False))
        times = {name: [] for name, _, _ in variants}
        for r in range(a.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for name, argv, tty in order:
                times[name].append(run(argv, pw, tty))
        base = statistics.median(times["bare"])
        print(f"getppid(2), ns a call, medians of {a.rounds} interleaved rounds (as {USER})")
        for name, _, _ in variants:
            m = statistics.median(times[name])
            print(f"  {name:<11} {m:7.1f} ns   ratio to bare {base / m:5.2f}   "
                  f"runs: {' '.join(f'{t:.0f}' for t in times[name])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
