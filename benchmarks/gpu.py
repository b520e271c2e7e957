#!/usr/bin/env python3
"""Start-up added by GPU injection, as an unprivileged user, interleaved.

Contenders (each round runs every one once, in rotating order):
  plain        hpcrun run IMAGE /bin/true
  cdi          hpcrun run --gpus all IMAGE /bin/true, with a synthetic CDI spec (two
               GPUs as /dev/null and /dev/zero under other names, a library, env, both
               hooks: the generated ld.so.cache is bound): target under 5 ms added
  no-spec      hpcrun run --gpus all IMAGE /bin/true, no spec, against a fake NVIDIA
               driver tree (tests/test_gpu_driver.py fake_driver: this machine has no GPU)
  cold cdi     the cdi run with HPCRUN_NO_PLAN_CACHE=1 (Python plans it every time)
Warm runs come from the plan cache (the C launcher, no Python); medians and the
difference to plain are printed. The image is busybox plus the host's glibc.

Run as root (it drops to HPCRUN_TEST_USER, default hpcuser). Usage:
benchmarks/gpu.py [--rounds N]. Needs gcc and glibc's ldconfig.
"""
from __future__ import annotations

import os
import pwd
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
HPCRUN = os.path.join(os.path.dirname(sys.executable), "hpcrun")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")


def spawn_wait(argv, env) -> float:
    t = time.perf_counter()
    # stderr to /dev/null: the spec's unknown hook is reported on every planned run
    pid = os.posix_spawn(argv[0], argv, env,
                         file_actions=[(os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    _, st = os.waitpid(pid, 0)
    dt = time.perf_counter() - t
    if os.waitstatus_to_exitcode(st) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({os.waitstatus_to_exitcode(st)})")
    return dt * 1000


def prepare(tmp: str) -> dict:
    import test_gpu
    import test_gpu_driver
    image = test_gpu.glibc_image(os.path.join(tmp, "image"))
    lib = os.path.join(tmp, "lib")
    os.makedirs(lib)
    test_gpu.build_lib(os.path.join(lib, "libfakegpu.so.1"), "libfakegpu.so.1")
    cdi = os.path.join(tmp, "cdi")
    os.makedirs(cdi)
    test_gpu.write_spec(cdi, lib)
    drv = test_gpu_driver.fake_driver(os.path.join(tmp, "driver"))
    os.system(f"chmod -R a+rX {tmp}")
    return {"image": image, "cdi": cdi, "driver": drv}


def measure(rounds: int, p: dict) -> None:
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pwd.getpwuid(os.getuid()).pw_dir,
            "LANG": "C.UTF-8"}
    cdi_env = {**base, "HPCRUN_CDI_SPEC_DIRS": p["cdi"]}
    drv_env = {**base, "HPCRUN_CDI_SPEC_DIRS": "", "HPCRUN_GPU_DRIVER_ROOT": p["driver"]}
    rows = {
        "plain": ([HPCRUN, "run", p["image"], "/bin/true"], base),
        "cdi": ([HPCRUN, "run", "--gpus", "all", p["image"], "/bin/true"], cdi_env),
        "no-spec": ([HPCRUN, "run", "--gpus", "all", p["image"], "/bin/true"], drv_env),
        "cold cdi": ([HPCRUN, "run", "--gpus", "all", p["image"], "/bin/true"],
                     {**cdi_env, "HPCRUN_NO_PLAN_CACHE": "1"}),
    }
    for argv, env in rows.values():        # warm-up: plan caches, ld.so.caches, page cache
        for _ in range(3):
            spawn_wait(argv, env)
    times = {k: [] for k in rows}
    keys = list(rows)
    for r in range(rounds):
        for k in (keys[r % len(keys):] + keys[:r % len(keys)]):
            if k == "cold cdi" and r % 5:
                continue                 # ~100 ms each: a fifth of the rounds suffice
            times[k].append(spawn_wait(*rows[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"hpcrun run /bin/true start-up, uid {os.getuid()}, {rounds} interleaved rounds, "
          f"{os.cpu_count()} CPUs (medians)")
    for k in keys:
        add = med[k] - med["plain"]
        print(f"  {k:10} {med[k]:8.2f} ms   added {add:+7.2f} ms   ratio "
              f"{med[k] / med['plain']:.3f}")
    print(f"  target: cdi adds < 5 ms: {'met' if med['cdi'] - med['plain'] < 5 else 'NOT met'}")


def main() -> int:
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 40
    tmp = tempfile.mkdtemp(prefix="hpcrun-gpubench-", dir="/tmp")
    os.chmod(tmp, 0o755)
    try:
        p = prepare(tmp)
        if os.geteuid() != 0:
            measure(rounds, p)
            return 0
        pw = pwd.getpwnam(USER)
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                os.chdir("/")
                measure(rounds, p)
                os._exit(0)
            except BaseException as e:  # noqa: BLE001 - report and leave the fork
                print(f"benchmark failed: {e}", file=sys.stderr)
                os._exit(1)
        _, st = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(st)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
