#!/usr/bin/env python3
"""Start-up of `hpcrun run NAME /bin/true` on a store image, with the image lease (this
tree) next to a peer hpcrun without it (default /opt/hpcrun/venv/bin/hpcrun: the lead's
checkout), plus ch-run on the same directory as the floor. Interleaved rounds in rotating
order, one store, medians and the ratio printed.

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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
HPCRUN = os.path.join(os.path.dirname(sys.executable), "hpcrun")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")


def spawn_wait(argv, env) -> float:
    t = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env)
    _, st = os.waitpid(pid, 0)
    dt = time.perf_counter() - t
    if os.waitstatus_to_exitcode(st) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({os.waitstatus_to_exitcode(st)})")
    return dt * 1000


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
        home = pw.pw_dir
    else:
        home = os.environ.get("HOME", "/tmp")
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "HPCRUN_STORE": os.path.join(work, "store"),
           "LANG": "C.UTF-8"}
    subprocess.run([HPCRUN, "import", tar, "bench/bb:1"], env=env, check=True,
                   capture_output=True)
    rec = subprocess.run([HPCRUN, "inspect", "-f", "{{.Hpcrun.Paths}}", "bench/bb:1"],
                         env=env, capture_output=True, text=True).stdout
    contenders = {"hpcrun (lease)": [HPCRUN, "run", "bench/bb:1", "/bin/true"],
                  "peer (no lease)": [a.peer, "run", "bench/bb:1", "/bin/true"]}
    chrun = shutil.which("ch-run")
    dirimg = os.path.join(work, "store", "images")
    if chrun:
        d = os.path.join(dirimg, os.listdir(dirimg)[0], "rootfs")
        contenders["ch-run (dir)"] = [chrun, d, "--", "/bin/true"]
    times: dict = {k: [] for k in contenders}
    names = list(contenders)
    for k in names:                                   # warm up, and prove each works
        spawn_wait(contenders[k], env)
    for i in range(a.rounds):
        for k in names[i % len(names):] + names[:i % len(names)]:
            times[k].append(spawn_wait(contenders[k], env))
    print(f"hpcrun run NAME /bin/true, {a.rounds} interleaved rounds, median ms "
          f"(image paths: {rec.strip() or '?'})")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in names:
        print(f"  {k:18s} {med[k]:7.2f} ms")
    print(f"  ratio lease / no lease: {med['hpcrun (lease)'] / med['peer (no lease)']:.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
