#!/usr/bin/env python3
"""What the state-directory checks cost on the start-up path, side by side with what
they replaced, interleaved in one run.

  old store    os.makedirs(root, exist_ok=True): what Store() did before
  new store    hpcrun.fsutil.private_dir(root, ...): lstat/openat/fstat of every level
  old unpack   os.path.isdir(entry): the --unpack / node cache fast path before
  new unpack   private_dir(cache) + private_entry(entry): the fast path now

Each is timed over N calls per round, rounds rotate the order; the median per call and
the ratio new/old are printed, with the figure that matters beside them: `hpcrun run`'s
start-up is about 12 ms (benchmarks/startup.py), so the added microseconds are shown as
a share of it.

With --peer PATH (the `hpcrun` command of a checkout without the checks, e.g. a venv
made by `./dev setup --editable` in a worktree of main), also end to end: `hpcrun run
IMAGE true` for a directory image with a config, a store image and `--unpack` of a
squashfs file, this tree's hpcrun and the peer's alternating, each with its own store
and caches; medians and the ratio this/peer are printed. First runs (the plan cache is
filled, the image unpacked) are not timed. Warm runs are the C launcher's plan-cache
hits, which run no Python; --cold sets HPCRUN_NO_PLAN_CACHE=1, so that Python plans
every run, with the checks.

Usage: benchmarks/statedirs.py [--rounds N] [--calls N] [--peer PATH] [--hpcrun PATH].
Runs as any user (in private temporary directories under /var/tmp, removed afterwards);
run it as the unprivileged user, e.g. `runuser -u hpcuser -- python3 benchmarks/statedirs.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hpcrun.fsutil import private_dir, private_entry  # noqa: E402

STARTUP_MS = 12.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--peer", help="hpcrun command without the checks")
    ap.add_argument("--cold", action="store_true", help="every run plans in Python")
    ap.add_argument("--hpcrun", default=os.path.join(os.path.dirname(sys.executable), "hpcrun"))
    a = ap.parse_args()
    micro(a)
    if a.peer:
        end_to_end(a)
    return 0


def micro(a) -> None:
    base = tempfile.mkdtemp(prefix="hpcrun-bench-", dir="/var/tmp")
    try:
        root = os.path.join(base, f"hpcrun-{os.getuid()}", "store")
        cache = os.path.join(base, f"hpcrun-{os.getuid()}", "unpack")
        entry = os.path.join(cache, "sq-1-2-3-4")
        private_dir(root, "the image store", "HPCRUN_STORE")
        private_dir(cache, "the --unpack cache", "HPCRUN_UNPACK_CACHE")
        os.mkdir(entry, 0o700)
        cases = {
            "old store": lambda: os.makedirs(root, exist_ok=True),
            "new store": lambda: private_dir(root, "the image store", "HPCRUN_STORE"),
            "old unpack": lambda: os.path.isdir(entry),
            "new unpack": lambda: (private_dir(cache, "the --unpack cache", "X"),
                                   private_entry(entry, "the --unpack cache", "X")),
        }
        times: dict = {k: [] for k in cases}
        names = list(cases)
        for r in range(a.rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                fn = cases[k]
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    fn()
                times[k].append((time.perf_counter() - t0) / a.calls * 1e6)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"per call, median of {a.rounds} rounds x {a.calls} calls "
              f"(path depth {root.count('/')}):")
        for k in names:
            print(f"  {k:11s} {med[k]:8.2f} us")
        for what in ("store", "unpack"):
            old, new = med[f"old {what}"], med[f"new {what}"]
            print(f"{what}: new/old = {new / old:.2f}x, +{new - old:.2f} us per start "
                  f"= {(new - old) / (STARTUP_MS * 1000) * 100:.3f}% of a {STARTUP_MS:.0f} ms "
                  "start-up")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def end_to_end(a) -> None:
    from hpcrun.testing import make_busybox_rootfs
    base = tempfile.mkdtemp(prefix="hpcrun-bench-", dir="/var/tmp")
    try:
        root = os.path.join(base, "rootfs")
        make_busybox_rootfs(root, "/bin/busybox")
        os.makedirs(os.path.join(root, ".hpcrun"))
        with open(os.path.join(root, ".hpcrun", "config.json"), "w") as f:
            json.dump({"config": {"Env": ["PATH=/bin:/usr/bin", "A=1"], "Cmd": ["/bin/sh"]}}, f)
        tar, sq = os.path.join(base, "rootfs.tar"), os.path.join(base, "img.sqfs")
        subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
        subprocess.run(["mksquashfs", root, sq, "-quiet", "-no-progress"], check=True,
                       stdout=subprocess.DEVNULL)
        who = {"this": a.hpcrun, "peer": a.peer}
        envs = {}
        for name, prog in who.items():
            d = os.path.join(base, name)
            envs[name] = dict(os.environ, HPCRUN_STORE=os.path.join(d, "store"),
                              HPCRUN_UNPACK_CACHE=os.path.join(d, "unpack"))
            subprocess.run([prog, "import", tar, "bench/img:1"], env=envs[name], check=True,
                           stdout=subprocess.DEVNULL)
        cases = {"dir": [root], "store": ["bench/img:1"], "unpack": ["--unpack", sq]}
        times: dict = {(w, c): [] for w in who for c in cases}
        for w in who:                    # cold runs: plan cache, unpacking; not timed
            for c, args in cases.items():
                subprocess.run([who[w], "run", *args, "true"], env=envs[w], check=True)
        for r in range(a.rounds * 4):
            order = list(who) if r % 2 == 0 else list(who)[::-1]
            for c, args in cases.items():
                for w in order:
                    env = dict(envs[w], HPCRUN_NO_PLAN_CACHE="1") if a.cold else envs[w]
                    t0 = time.perf_counter()
                    subprocess.run([who[w], "run", *args, "true"], env=env, check=True)
                    times[(w, c)].append((time.perf_counter() - t0) * 1000)
        print(f"\nend to end ({'cold: Python plans every run' if a.cold else 'warm'}), "
              f"`hpcrun run IMAGE true`, median of {a.rounds * 4} runs each "
              f"(this: {a.hpcrun}, peer: {a.peer}):")
        for c in cases:
            t, p = statistics.median(times[("this", c)]), statistics.median(times[("peer", c)])
            print(f"  {c:7s} this {t:7.2f} ms   peer {p:7.2f} ms   this/peer = {t / p:.3f}")
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", base], check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
