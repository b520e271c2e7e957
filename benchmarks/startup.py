#!/usr/bin/env python3
"""Start-up of /bin/true in one busybox image, as an unprivileged user, interleaved.

Contenders (each round runs every one once, in rotating order, so drift hits all alike):
  bare           /bin/true on the host
  python -c pass the venv's interpreter alone (the floor for a Python launcher)
  ch-run         Debian's charliecloud, directory image
  bwrap          bubblewrap: ro-bind image, /proc, /dev
  hpcrun         hpcrun run, directory image, warm plan cache (the C launcher finds the
                 plan Python made earlier: no interpreter starts; target <= 1.5 x ch-run)
  hpcrun cold    the same with HPCRUN_NO_PLAN_CACHE=1: Python plans every run (the
                 cold figure; target <= the 10.9 ms of the Python-only launcher)
  hpcrun pid     hpcrun run --pid=private (warm)
  hpcrun sqfs    hpcrun run on a squashfs file via squashfuse (needs /dev/fuse: opened to
                 users for the run when started as root, restored afterwards)
  ch-run sqfs    ch-run on the same squashfs file, where its build supports it
Then the host memory hpcrun keeps while a container runs: none by default (the
launcher became the command), the C monitor and init with --pid=private, bwrap's.

Run as root (it drops to HPCRUN_TEST_USER, default hpcuser, for the measurements) or
as any user. Usage: benchmarks/startup.py [--rounds N] [--hpcrun PATH] [--no-squashfs]
[--baseline PATH] (--baseline: another hpcrun to time in the same run, e.g. an older
release installed elsewhere)
(--hpcrun: the hpcrun command to time, default the one next to this Python; e.g. a
pip-installed one, whose generated launcher imports `re`, ~4 ms here).
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

HERE = os.path.dirname(os.path.abspath(__file__))
HPCRUN = os.path.join(os.path.dirname(sys.executable), "hpcrun")
BASELINE = None
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")


def make_rootfs(root: str) -> None:
    from hpcrun.testing import make_busybox_rootfs
    make_busybox_rootfs(root)


def spawn_wait(argv, env) -> float:
    t = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env)
    _, st = os.waitpid(pid, 0)
    dt = time.perf_counter() - t
    if os.waitstatus_to_exitcode(st) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({os.waitstatus_to_exitcode(st)})")
    return dt * 1000


def works(argv, env) -> bool:
    try:
        return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def rss_kib(pid: int):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def children(pid: int) -> list:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def memory(contenders: dict, env) -> list:
    """Start each with `sleep 3` and read the resident memory of what runs on the host
    besides the command."""
    rows = []
    for label, argv in contenders.items():
        argv = [a if a != "/bin/true" else "/bin/sleep" for a in argv] + ["3"]
        p = subprocess.Popen(argv, env=env)
        time.sleep(1.0)
        chain, pid = [], p.pid
        while pid and comm(pid) not in ("sleep",):
            chain.append((comm(pid), rss_kib(pid)))
            kids = children(pid)
            pid = kids[0] if kids else None
        p.wait()
        rows.append((label, chain))
    return rows


def measure(rounds: int, image: str, sqfs: str | None) -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pwd.getpwuid(os.getuid()).pw_dir,
           "USER": pwd.getpwuid(os.getuid()).pw_name, "LANG": "C.UTF-8",
           # hpcrun's node-local cache (the squashfs image config) in our temp dir
           "HPCRUN_UNPACK_CACHE": os.path.join(os.path.dirname(image), "cache")}
    contenders = {
        "bare": ["/bin/true"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "ch-run": [shutil.which("ch-run") or "/usr/bin/ch-run", image, "--", "/bin/true"],
        "bwrap": [shutil.which("bwrap") or "/usr/bin/bwrap", "--unshare-user", "--ro-bind", image,
                  "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"],
        "hpcrun": [HPCRUN, "run", image, "--", "/bin/true"],
        "hpcrun cold": [HPCRUN, "run", image, "--", "/bin/true"],
        "hpcrun pid": [HPCRUN, "run", "--pid=private", image, "--", "/bin/true"],
    }
    if BASELINE:
        # another installation of hpcrun, e.g. the release before the plan cache
        contenders["baseline"] = [BASELINE, "run", image, "--", "/bin/true"]
        contenders["baseline pid"] = [BASELINE, "run", "--pid=private", image, "--",
                                      "/bin/true"]
    # per-contender environment additions
    extra = {"hpcrun cold": {"HPCRUN_NO_PLAN_CACHE": "1"}}
    envs = {k: dict(env, **extra.get(k, {})) for k in contenders}
    if sqfs:
        contenders["hpcrun sqfs"] = [HPCRUN, "run", sqfs, "--", "/bin/true"]
        contenders["ch-run sqfs"] = [shutil.which("ch-run") or "/usr/bin/ch-run", sqfs, "--",
                                     "/bin/true"]
    skipped = {}
    envs = {k: dict(env, **extra.get(k, {})) for k in contenders}
    for k, argv in list(contenders.items()):
        if not works(argv, envs[k]):
            skipped[k] = "does not run here"
            del contenders[k]
    times = {k: [] for k in contenders}
    names = list(contenders)
    for k in names:                          # warm-up: page cache, pyc
        for _ in range(3):
            spawn_wait(contenders[k], envs[k])
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            times[k].append(spawn_wait(contenders[k], envs[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"start-up of /bin/true, uid {os.getuid()}, {rounds} interleaved rounds, "
          f"{os.cpu_count()} CPUs")
    print(f"{'':16} {'median ms':>10} {'p10':>7} {'p90':>7} {'x ch-run':>9} {'x bare':>8}")
    for k in names:
        v = sorted(times[k])
        p10, p90 = v[len(v) // 10], v[(len(v) * 9) // 10]
        xch = f"{med[k] / med['ch-run']:.2f}" if "ch-run" in med else "-"
        print(f"{k:16} {med[k]:10.2f} {p10:7.2f} {p90:7.2f} {xch:>9} {med[k] / med['bare']:8.2f}")
    for k, why in skipped.items():
        print(f"{k:16} skipped: {why}")
    for k, base in (("hpcrun", "baseline"), ("hpcrun cold", "baseline"),
                    ("hpcrun pid", "baseline pid")):
        if k in med and base in med:
            print(f"{k} / {base}: median {med[k] / med[base]:.3f}, "
                  f"p10 {sorted(times[k])[len(times[k]) // 10] / sorted(times[base])[len(times[base]) // 10]:.3f}")
    print()
    print("host memory while the container runs (the command itself not counted):")
    mem = {k: contenders[k] for k in ("hpcrun", "hpcrun pid", "bwrap", "ch-run") if k in contenders}
    for label, chain in memory(mem, env):
        if not chain:
            print(f"  {label:12} none: the launcher process became the command")
        else:
            total = sum(r or 0 for _, r in chain)
            parts = ", ".join(f"{c} {r} KiB" for c, r in chain)
            print(f"  {label:12} {total} KiB ({parts})")


def main() -> int:
    global HPCRUN, BASELINE
    rounds = 100
    if "--baseline" in sys.argv:
        BASELINE = sys.argv[sys.argv.index("--baseline") + 1]
    if "--rounds" in sys.argv:
        rounds = int(sys.argv[sys.argv.index("--rounds") + 1])
    if "--hpcrun" in sys.argv:
        HPCRUN = sys.argv[sys.argv.index("--hpcrun") + 1]
    tmp = tempfile.mkdtemp(prefix="hpcrun-bench-", dir="/tmp")
    os.chmod(tmp, 0o1777)   # the dropped user keeps its cache here
    image = os.path.join(tmp, "busybox")
    make_rootfs(image)
    sqfs = os.path.join(tmp, "busybox.sqfs")
    fuse_mode = None
    try:
        if shutil.which("mksquashfs") and "--no-squashfs" not in sys.argv:
            subprocess.run(["mksquashfs", image, sqfs, "-noappend", "-quiet", "-no-progress"],
                           check=True, capture_output=True)
            os.chmod(sqfs, 0o644)
        else:
            sqfs = None
        if os.geteuid() != 0:
            if sqfs and not os.access("/dev/fuse", os.R_OK | os.W_OK):
                print("note: /dev/fuse is not open to users here: no squashfs figure")
                sqfs = None
            measure(rounds, image, sqfs)
            return 0
        if sqfs and os.path.exists("/dev/fuse"):
            fuse_mode = os.stat("/dev/fuse").st_mode & 0o7777
            os.chmod("/dev/fuse", 0o666)
            print("note: /dev/fuse opened to users (0666) for this run, as on a node that "
                  "allows FUSE; restored afterwards")
        pw = pwd.getpwnam(USER)
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                os.chdir("/")
                measure(rounds, image, sqfs)
                sys.stdout.flush()
                os._exit(0)
            except BaseException as e:  # report, never fall back into the root parent
                print(f"benchmark failed: {e}", file=sys.stderr)
                os._exit(1)
        _, st = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(st)
    finally:
        if fuse_mode is not None:
            os.chmod("/dev/fuse", fuse_mode)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
