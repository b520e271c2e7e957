#!/usr/bin/env python3
"""Start-up of `hpcrun run NAME /bin/true` on a store image, with the image lease (this
tree) next to a peer hpcrun without it (default /opt/hpcrun/venv/bin/hpcrun: the lead's
checkout), warm (a cached plan: the C launcher, no Python) and cold (the plan cache
off: Python plans), plus ch-run on the same directory as the floor. Interleaved rounds
in rotating order, one store, medians and the ratios printed. Each hpcrun runs in a
working directory of its own, so the two never share (and rewrite) a plan cache entry.

Run as root (it drops to HPCRUN_TEST_USER, default hpcuser) or as any user.
Usage: benchmarks/lease.py [--rounds N] [--peer PATH]
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from startup import spawn_wait  # noqa: E402  (benchmarks/startup.py, next to this)

HPCRUN = os.path.join(os.path.dirname(sys.executable), "hpcrun")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--peer", default="/opt/hpcrun/venv/bin/hpcrun")
    a = ap.parse_args()
    from hpcrun.testing import make_busybox_rootfs
    work = tempfile.mkdtemp(prefix="hpcrun-bench-lease-")
    os.chmod(work, 0o755)
    root = os.path.join(work, "rootfs")
    make_busybox_rootfs(root)
    tar = os.path.join(work, "bb.tar")
    with tarfile.open(tar, "w") as t:
        for n in sorted(os.listdir(root)):
            t.add(os.path.join(root, n), arcname=n)
    if os.geteuid() == 0:
        pw = pwd.getpwnam(USER)
        for dp, dn, fn in os.walk(work):
            for n in [dp] + [os.path.join(dp, x) for x in dn + fn]:
                os.lchown(n, pw.pw_uid, pw.pw_gid)
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
        home, name = pw.pw_dir, pw.pw_name
    else:
        home, name = os.environ.get("HOME", "/tmp"), pwd.getpwuid(os.getuid()).pw_name
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "USER": name,
           "HPCRUN_STORE": os.path.join(work, "store"), "LANG": "C.UTF-8"}
    subprocess.run([HPCRUN, "import", tar, "bench/bb:1"], env=env, check=True,
                   capture_output=True)
    rec = subprocess.run([HPCRUN, "inspect", "-f", "{{.Hpcrun.Formats}}", "bench/bb:1"],
                         env=env, capture_output=True, text=True).stdout
    cold = dict(env, HPCRUN_NO_PLAN_CACHE="1")
    contenders = {   # name: (argv, env, cwd)
        "warm, lease": ([HPCRUN, "run", "bench/bb:1", "/bin/true"], env, "mine"),
        "warm, peer": ([a.peer, "run", "bench/bb:1", "/bin/true"], env, "peer"),
        "cold, lease": ([HPCRUN, "run", "bench/bb:1", "/bin/true"], cold, "mine"),
        "cold, peer": ([a.peer, "run", "bench/bb:1", "/bin/true"], cold, "peer"),
    }
    for sub in ("mine", "peer", "chrun"):
        os.mkdir(os.path.join(work, sub))
    chrun = shutil.which("ch-run")
    dirimg = os.path.join(work, "store", "images")
    if chrun:
        d = os.path.join(dirimg, os.listdir(dirimg)[0], "rootfs")
        contenders["ch-run (dir)"] = ([chrun, d, "--", "/bin/true"], env, "chrun")
    times: dict = {k: [] for k in contenders}
    names = list(contenders)

    def once(k):
        argv, e, sub = contenders[k]
        os.chdir(os.path.join(work, sub))
        return spawn_wait(argv, e)
    for k in names:                                   # warm up, and prove each works
        once(k)
    for i in range(a.rounds):
        for k in names[i % len(names):] + names[:i % len(names)]:
            times[k].append(once(k))
    os.chdir("/")
    print(f"hpcrun run NAME /bin/true on a store image ({rec.strip() or '?'}), "
          f"{a.rounds} interleaved rounds, median (and min) ms")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in names:
        print(f"  {k:14s} {med[k]:7.2f} ms   (min {min(times[k]):6.2f})")
    for w in ("warm", "cold"):
        print(f"  ratio {w}, lease / peer: {med[w + ', lease'] / med[w + ', peer']:.3f} "
              f"(min: {min(times[w + ', lease']) / min(times[w + ', peer']):.3f})")
    if "ch-run (dir)" in med:
        print(f"  ratio warm, lease / ch-run: {med['warm, lease'] / med['ch-run (dir)']:.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
