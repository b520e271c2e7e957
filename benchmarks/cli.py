#!/usr/bin/env python3
"""Wall time of the click command line: `hpcrun images`, `hpcrun --help`, interleaved.

Contenders (each round runs every one once, in rotating order, so drift hits all alike):
  python -c pass        the interpreter alone (the floor for a Python CLI)
  images   (this)       `hpcrun images` on a store of three images, this checkout (click)
  images   (peer)       the same, the command line before click (argparse), from
                        `git archive PEER_REV` of this repository
  --help   (this/peer)  `hpcrun --help` (click: imports every command module)
  images --format json  both
  run --help (this)     the hand-written run parser: click stays off this path
  ... (venv's hpcrun)   images and --help through the installed command, where it is
                        the C launcher in front of the Python CLI
Both run from the same interpreter through the same few-line launcher (bin/hpcrun's),
so only the command line differs. Prints the median and the spread (p10..p90) of
each, and this/peer ratios. A listing should stay well under 100 ms.

Usage: benchmarks/cli.py [--rounds N] [--peer-rev REV|none]
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The last commit of main before the click command line (argparse and globals()).
PEER_REV = "96a7020"
LAUNCHER = """#!{python}
import sys
sys.path.insert(0, {src!r})
from hpcrun.cli.main import main
sys.exit(main())
"""


def launcher(path: str, src: str) -> str:
    with open(path, "w") as f:
        f.write(LAUNCHER.format(python=sys.executable, src=src))
    os.chmod(path, 0o755)
    return path


def peer_tree(rev: str, dest: str) -> str:
    """`git archive REV` of this repository, unpacked at dest (pure Python verbs only:
    images and --help need no C core)."""
    os.makedirs(dest)
    arch = subprocess.run(["git", "-C", REPO, "archive", rev, "hpcrun"], check=True,
                          capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=arch, check=True)
    # the C core of this checkout, should a verb import it
    for name in os.listdir(os.path.join(REPO, "hpcrun")):
        if name.endswith(".so"):
            shutil.copy(os.path.join(REPO, "hpcrun", name), os.path.join(dest, "hpcrun"))
    return dest


def spawn_wait(argv, env) -> float:
    t = time.perf_counter()
    with open(os.devnull, "wb") as null:
        p = subprocess.Popen(argv, env=env, stdout=null, stderr=null)
        rc = p.wait()
    dt = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({rc})")
    return dt * 1000


def make_store(work: str, hpcrun: str) -> dict:
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
        subprocess.run([hpcrun, "import", "-m", f"image {i}", tar, f"bench/img{i}:{i}"],
                       env=env, check=True, capture_output=True)
    return env


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--peer-rev", default=PEER_REV,
                    help="the commit to compare with (default: main before click), or none")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hpcrun-bench-cli-")
    try:
        HPCRUN = launcher(os.path.join(work, "hpcrun-this"), REPO)
        peer = None
        if a.peer_rev != "none":
            src = peer_tree(a.peer_rev, os.path.join(work, "peer"))
            peer = launcher(os.path.join(work, "hpcrun-peer"), src)
        env = make_store(work, HPCRUN)
        cases = [("python -c pass", [sys.executable, "-c", "pass"]),
                 ("images (this)", [HPCRUN, "images"]),
                 ("--help (this)", [HPCRUN, "--help"]),
                 ("images --format json (this)", [HPCRUN, "images", "--format", "json"]),
                 ("run --help (this)", [HPCRUN, "run", "--help"])]
        installed = os.path.join(os.path.dirname(sys.executable), "hpcrun")
        if os.access(installed, os.X_OK):  # as users start it (the C launcher, or a script)
            cases += [("images (venv's hpcrun)", [installed, "images"]),
                      ("--help (venv's hpcrun)", [installed, "--help"])]
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
        print(f"{a.rounds} rounds, interleaved; this: {REPO}; peer: "
              f"{'git ' + a.peer_rev if peer else 'none'}")
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
