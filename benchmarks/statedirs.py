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
a share of it. Usage: benchmarks/statedirs.py [--rounds N] [--calls N]. Runs as any user
(in a private temporary directory under /var/tmp, removed afterwards).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
    a = ap.parse_args()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
