#!/usr/bin/env python3
"""Wall time of the click command line: `hpcrun images`, `hpcrun --help`, interleaved.

Contenders (each round runs every one once, in rotating order, so drift hits all alike):
  python -c pass        the venv's interpreter alone (the floor for a Python CLI)
  images   (this)       `hpcrun images` on a store of a few images, this checkout (click)
  images   (peer)       the same with the peer hpcrun (default: the main checkout's
                        venv, /opt/hpcrun/venv, the argparse command line before click)
  --help   (this/peer)  `hpcrun --help` (click: imports every command module)
  images --format json  (this only; the peer has it too, printed for completeness)
  run --help (this)     the hand-written run parser: click stays off this path
Prints the median and the spread (p10..p90) of each, and this/peer ratios.
A listing should stay well under 100 ms.

Usage: benchmarks/cli.py [--rounds N] [--peer PATH-TO-HPCRUN|none]
(a cross-check with hyperfine, not interleaved, is printed at the end).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HPCRUN = os.path.join(os.path.dirname(sys.executable), "hpcrun")
PEER = "/opt/hpcrun/venv/bin/hpcrun"


def spawn_wait(argv, env) -> float:
    t = time.perf_counter()
    with open(os.devnull, "wb") as null:
        p = subprocess.Popen(argv, env=env, stdout=null, stderr=null)
        rc = p.wait()
    dt = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({rc})")
    return dt * 1000


def make_store(work: str) -> dict:
    """A store with three tagged images (one rootfs tarball imported three times)."""
    root = os.path.join(work, "root")
    os.makedirs(os.path.join(root, "bin"))
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    tar = os.path.join(work, "root.tar")
    with tarfile.open(tar, "w") as t:
        t.add(root, arcname=".")
    env = {**os.environ, "HPCRUN_STORE": os.path.join(work, "store")}
    for i in range(3):
        subprocess.run([HPCRUN, "import", "-m", f"image {i}", tar, f"bench/img{i}:{i}"],
                       env=env, check=True, capture_output=True)
    return env


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--peer", default=PEER, help="the hpcrun to compare with, or 'none'")
    a = ap.parse_args()
    peer = None if a.peer == "none" or not os.access(a.peer, os.X_OK) else a.peer
    work = tempfile.mkdtemp(prefix="hpcrun-bench-cli-")
    try:
        env = make_store(work)
        cases = [("python -c pass", [sys.executable, "-c", "pass"]),
                 ("images (this)", [HPCRUN, "images"]),
                 ("--help (this)", [HPCRUN, "--help"]),
                 ("images --format json (this)", [HPCRUN, "images", "--format", "json"]),
                 ("run --help (this)", [HPCRUN, "run", "--help"])]
        if peer:
            cases += [("images (peer)", [peer, "images"]),
                      ("--help (peer)", [peer, "--help"]),
                      ("images --format json (peer)", [peer, "images", "--format", "json"])]
        times: dict = {name: [] for name, _ in cases}
        for _, argv in cases:  # warm the page cache and check each works
            spawn_wait(argv, env)
        for r in range(a.rounds):
            k = r % len(cases)
            for name, argv in cases[k:] + cases[:k]:
                times[name].append(spawn_wait(argv, env))
        print(f"{a.rounds} rounds, interleaved; this: {HPCRUN}; peer: {peer or 'none'}")
        print(f"{'':30} {'median':>8} {'p10':>8} {'p90':>8}  (ms)")
        med = {}
        for name, _ in cases:
            xs = times[name]
            med[name] = statistics.median(xs)
            print(f"{name:30} {med[name]:8.1f} {pct(xs, 0.1):8.1f} {pct(xs, 0.9):8.1f}")
        if peer:
            for what in ("images", "--help", "images --format json"):
                t, p = med[f"{what} (this)"], med[f"{what} (peer)"]
                print(f"ratio this/peer {what:22} {t / p:5.2f}x  ({t:.1f} vs {p:.1f} ms)")
        if shutil.which("hyperfine"):
            print("\ncross-check (not interleaved):")
            hf = ["hyperfine", "-N", "--warmup", "3", "--runs", str(max(10, a.rounds)),
                  "--style", "basic", f"{HPCRUN} images", f"{HPCRUN} --help"]
            if peer:
                hf += [f"{peer} images", f"{peer} --help"]
            subprocess.run(hf, env=env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
