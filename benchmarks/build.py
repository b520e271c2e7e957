#!/usr/bin/env python3
"""`hpcrun build` against `ch-image build` (Debian's charliecloud-builders) on the same
Dockerfiles, side by side, as the unprivileged user.

Run as root (it drops to the test user for every measured command):
    /opt/hpcrun/venv-build/bin/python benchmarks/build.py [--rounds N]

Base: a Debian bookworm minbase root filesystem made with debootstrap (the tests' tar,
/var/tmp/hpcrun-debian-bookworm.tar, made here if missing), imported into each tool's
own fresh storage before anything is timed (hpcrun import; ch-image import). ch-image
keeps its default build cache (git) in its own storage directory (-s).

Measured each round, the tools interleaved (the order alternates every round):
  cold      the first build of Dockerfile A (base ingested/copied, every RUN runs)
  cached    the same build again, nothing changed
  touched   after changing the file that A's last COPY reads
  disk      storage used after building A and its sibling B (same base, one RUN
            differs), minus the storage holding only the imported base
Targets (issue 11): cold no slower; cached >= 3x faster; touched >= 2x faster.
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")
HPCRUN = os.path.join(os.path.dirname(sys.executable), "hpcrun")
PEER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"   # system python3 for ch-image
DEBIAN_TAR = os.environ.get("HPCRUN_TEST_DEBIAN_TAR", "/var/tmp/hpcrun-debian-bookworm.tar")
MIRROR = os.environ.get("HPCRUN_BENCH_MIRROR", "http://deb.debian.org/debian")

DOCKERFILE_A = """FROM base
RUN mkdir -p /opt/data && for i in $(seq 1 300); do echo "line $i" > /opt/data/f$i; done
RUN echo configured > /etc/bench.conf && ls /usr/bin | wc -l > /opt/bin-count
COPY lib /opt/lib
COPY app.py /opt/app.py
"""
DOCKERFILE_B = DOCKERFILE_A.replace("echo configured", "echo sibling-b")


def busybox_tar(root: str) -> str:
    """A busybox-static root filesystem (hpcrun.testing's), as a tar."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from hpcrun.testing import make_busybox_rootfs
    d = os.path.join(root, "bbroot")
    make_busybox_rootfs(d)
    out = os.path.join(root, "busybox.tar")
    subprocess.run(["tar", "-C", d, "--numeric-owner", "-cf", out, "."], check=True)
    os.chmod(out, 0o644)
    return out


def debian_tar() -> str:
    if os.path.exists(DEBIAN_TAR):
        return DEBIAN_TAR
    d = tempfile.mkdtemp(prefix="hpcrun-debootstrap-", dir="/var/tmp")
    try:
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", d, MIRROR],
                       check=True, stdout=subprocess.DEVNULL)
        tmp = DEBIAN_TAR + ".tmp"
        subprocess.run(["tar", "-C", d, "--numeric-owner", "--exclude=./dev/*",
                        "--exclude=./proc/*", "--exclude=./sys/*", "-cf", tmp, "."], check=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, DEBIAN_TAR)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return DEBIAN_TAR


class User:
    def __init__(self, work: str):
        self.pw = pwd.getpwnam(USER)
        self.work = work
        self.env = {"HOME": self.pw.pw_dir, "USER": USER, "LOGNAME": USER, "LANG": "C.UTF-8",
                    "PATH": PEER_PATH,
                    # ch-image 0.31 commits to its git cache with the user's identity
                    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
                    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}

    def run(self, argv, env=None, timeout=900) -> float:
        e = dict(self.env, **(env or {}))
        t0 = time.perf_counter()
        cp = subprocess.run(argv, user=self.pw.pw_uid, group=self.pw.pw_gid, extra_groups=[],
                            env=e, cwd=self.work, capture_output=True, text=True,
                            timeout=timeout)
        dt = time.perf_counter() - t0
        if cp.returncode != 0:
            sys.exit(f"failed: {' '.join(argv)}\n{cp.stdout[-2000:]}\n{cp.stderr[-2000:]}")
        return dt

    def mkdir(self, path: str) -> str:
        os.makedirs(path, exist_ok=True)
        os.chown(path, self.pw.pw_uid, self.pw.pw_gid)
        return path


def du(path: str) -> int:
    """Bytes of disk blocks in use (hard links counted once)."""
    cp = subprocess.run(["du", "-s", "-B1", path], capture_output=True, text=True, check=True)
    return int(cp.stdout.split()[0])


def write_context(u: User, d: str, df: str) -> None:
    u.mkdir(d)
    lib = os.path.join(d, "lib")
    os.makedirs(lib, exist_ok=True)
    for i in range(50):
        with open(os.path.join(lib, f"mod{i}.py"), "w") as f:
            f.write(f"# module {i}\n" + "x = 1\n" * 200)
    with open(os.path.join(d, "app.py"), "w") as f:
        f.write("print('app v1')\n")
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write(df)
    for root, dirs, files in os.walk(d):
        for n in dirs + files + ["."]:
            os.chown(os.path.join(root, n), u.pw.pw_uid, u.pw.pw_gid)


class Hpcrun:
    name = "hpcrun"

    def __init__(self, u: User, root: str, base: str):
        self.u, self.store = u, u.mkdir(os.path.join(u.mkdir(root), "hpcrun-store"))
        self.env = {"HPCRUN_STORE": self.store}
        u.run([HPCRUN, "import", base, "base"], self.env)
        self.base_bytes = du(self.store)

    def build(self, ctx: str, tag: str) -> float:
        return self.u.run([HPCRUN, "build", "-q", "-t", tag, ctx], self.env)

    def disk(self) -> int:
        return du(self.store) - self.base_bytes

    def cache_dir(self) -> int:
        # its objects are hard links to the base image's files where they can be:
        # counted here as if they were copies
        return du(os.path.join(self.store, "build-cache"))


class ChImage:
    name = "ch-image"

    def __init__(self, u: User, root: str, base: str):
        self.u, self.storage = u, os.path.join(u.mkdir(root), "ch-storage")  # ch-image makes it
        u.run(["ch-image", "-s", self.storage, "import", base, "base"])
        self.base_bytes = du(self.storage)

    def build(self, ctx: str, tag: str) -> float:
        return self.u.run(["ch-image", "-s", self.storage, "build", "-t", tag, ctx])

    def disk(self) -> int:
        return du(self.storage) - self.base_bytes

    def cache_dir(self) -> int:
        return sum(du(os.path.join(self.storage, d)) for d in ("bucache", "bularge")
                   if os.path.isdir(os.path.join(self.storage, d)))


def one_round(u: User, tool_cls, base: str, root: str) -> dict:
    d = u.mkdir(os.path.join(root, tool_cls.name))
    ctx_a, ctx_b = os.path.join(d, "ctx-a"), os.path.join(d, "ctx-b")
    write_context(u, ctx_a, DOCKERFILE_A)
    write_context(u, ctx_b, DOCKERFILE_B)
    t = tool_cls(u, os.path.join(d, "s1"), base)
    out = {"cold": t.build(ctx_a, "a"), "cached": t.build(ctx_a, "a")}
    with open(os.path.join(ctx_a, "app.py"), "w") as f:
        f.write("print('app v2')\n")
    out["touched"] = t.build(ctx_a, "a")
    # disk: a fresh storage with the base, then the two siblings
    t2 = tool_cls(u, u.mkdir(os.path.join(d, "s2")), base)
    t2.build(ctx_a, "a")
    t2.build(ctx_b, "b")
    out["disk"] = t2.disk()
    out["cache"] = t2.cache_dir()
    shutil.rmtree(d, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--base", action="append", choices=["debian", "busybox"],
                    help="base image(s) to build on (default: both)")
    ap.add_argument("--only", choices=["hpcrun", "ch-image"], help="measure one tool (debugging)")
    a = ap.parse_args()
    a.base = a.base or ["busybox", "debian"]
    if os.geteuid() != 0:
        sys.exit("benchmarks/build.py: run as root (it drops to the test user)")
    if shutil.which("ch-image", path=PEER_PATH) is None:
        sys.exit("ch-image is not installed (Debian: charliecloud-builders)")
    root = tempfile.mkdtemp(prefix="hpcrun-bench-build-", dir="/var/tmp")
    os.chmod(root, 0o755)
    u = User(root)
    try:
        for base_name in a.base:
            base = debian_tar() if base_name == "debian" else busybox_tar(root)
            report(u, base_name, base, root, a)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(u: User, base_name: str, base: str, root: str, a) -> None:
    results: dict = {"hpcrun": [], "ch-image": []}
    print(f"== base: {base_name}", flush=True)
    for r in range(a.rounds):
        order = [Hpcrun, ChImage] if r % 2 == 0 else [ChImage, Hpcrun]
        for cls in order:
            if a.only and cls.name != a.only:
                continue
            res = one_round(u, cls, base, root)
            results[cls.name].append(res)
            print(f"round {r + 1} {cls.name:9s} cold {res['cold']:6.2f} s  cached "
                  f"{res['cached']:6.2f} s  touched {res['touched']:6.2f} s  A+B storage "
                  f"{res['disk'] / 2**20:7.1f} MiB  cache dir {res['cache'] / 2**20:7.1f} MiB",
                  flush=True)

    if a.only:
        return

    def med(tool, k):
        return statistics.median(x[k] for x in results[tool])
    print(f"medians over {a.rounds} rounds (base {base_name}; Dockerfile: 2 RUN, 2 COPY)")
    print(f"{'':10s}{'hpcrun':>10s}{'ch-image':>10s}{'ratio':>8s}  target")
    for k, target in (("cold", ">= 1x"), ("cached", ">= 3x"), ("touched", ">= 2x")):
        h, c = med("hpcrun", k), med("ch-image", k)
        print(f"{k:10s}{h:9.2f}s{c:9.2f}s{c / h:7.2f}x  {target}")
    h, c = med("hpcrun", "disk"), med("ch-image", "disk")
    print(f"{'A+B disk':10s}{h / 2**20:7.1f}MiB{c / 2**20:7.1f}MiB{c / max(h, 1):7.1f}x  "
          "(storage grown beyond the imported base, images and cache)")
    h, c = med("hpcrun", "cache"), med("ch-image", "cache")
    print(f"{'A+B cache':10s}{h / 2**20:7.1f}MiB{c / 2**20:7.1f}MiB{c / max(h, 1):7.1f}x  "
          "(the cache directory alone; hpcrun's hard links to the base counted as files)\n",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
