#!/usr/bin/env python3
"""CPU time of one `hpcrun run IMAGE -- /bin/true`, against a baseline installation.

Wall-clock start-up (benchmarks/startup.py) on a shared machine is mostly the
scheduler's noise; the CPU time a start costs (user + system of the whole process
tree, from wait4's rusage: the launcher that becomes the command, with --pid=private
the monitor, the init and the command) is not. Interleaved rounds, medians, the ratio.

Usage: benchmarks/startup_cpu.py --baseline PATH [--hpcrun PATH] [--rounds N]
(run as root it drops to HPCRUN_TEST_USER, default hpcuser). E.g. the baseline is
main's build in its own venv: `HPCRUN_VENV=/opt/hpcrun/venv-base ./dev setup --editable`
in a worktree of main.
"""
from __future__ import annotations

import os
import pwd
import shutil
import statistics
import sys
import tempfile

HPCRUN = os.path.join(os.path.dirname(sys.executable), "hpcrun")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")


def arg(name, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def cpu_ms(argv, env) -> float:
    pid = os.posix_spawn(argv[0], argv, env)
    _, st, ru = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(st) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed")
    return (ru.ru_utime + ru.ru_stime) * 1000


def measure(rounds: int, image: str, hpcrun: str, base: str) -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pwd.getpwuid(os.getuid()).pw_dir,
           "LANG": "C.UTF-8"}
    rows = {}
    for opts in ((), ("--pid=private",)):
        for label, h in (("hpcrun", hpcrun), ("baseline", base)):
            rows[(label, opts)] = [h, "run", *opts, image, "--", "/bin/true"]
    times = {k: [] for k in rows}
    for k, argv in rows.items():            # warm-up: the plan caches, the page cache
        for _ in range(5):
            cpu_ms(argv, env)
    keys = list(rows)
    for r in range(rounds):
        for k in (keys if r % 2 else keys[::-1]):
            times[k].append(cpu_ms(rows[k], env))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"CPU time (user+system) of one start, uid {os.getuid()}, {rounds} interleaved "
          f"rounds, {os.cpu_count()} CPUs")
    for opts in ((), ("--pid=private",)):
        a, b = med[("hpcrun", opts)], med[("baseline", opts)]
        name = " ".join(("run",) + opts)
        print(f"  {name:20} hpcrun {a:.3f} ms  baseline {b:.3f} ms  ratio {a / b:.3f}")


def main() -> int:
    base = arg("--baseline")
    if not base:
        print("usage: benchmarks/startup_cpu.py --baseline PATH [--hpcrun PATH] [--rounds N]",
              file=sys.stderr)
        return 2
    hpcrun = arg("--hpcrun", HPCRUN)
    rounds = int(arg("--rounds", "400"))
    tmp = tempfile.mkdtemp(prefix="hpcrun-benchcpu-", dir="/tmp")
    os.chmod(tmp, 0o755)
    try:
        from hpcrun.testing import make_busybox_rootfs
        image = os.path.join(tmp, "busybox")
        make_busybox_rootfs(image)
        if os.geteuid() != 0:
            measure(rounds, image, hpcrun, base)
            return 0
        pw = pwd.getpwnam(USER)
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                os.chdir("/")
                measure(rounds, image, hpcrun, base)
                sys.stdout.flush()
                os._exit(0)
            except BaseException as e:  # report, never fall back into the root parent
                print(f"benchmark failed: {e}", file=sys.stderr)
                os._exit(1)
        _, st = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(st)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
