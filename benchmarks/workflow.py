#!/usr/bin/env python3
"""Workflow tools bare and in containers: one command runs every configuration,
interleaved, on the sample DAG (generate, compress, sort, merge sequence-like data;
hpcrun.workflow.dag), and checks that every configuration's outputs are identical.

Configurations (Makeflow drives all but `api`):
  bare        the tasks on the host, with the image's tools (its static busybox) first
              on PATH, so that every configuration runs the same programs
  per-task    a container per task:  makeflow --wrapper 'hpcrun run -v DIR:/mnt -w /mnt IMG'
  ch-run      a container per task:  makeflow --wrapper 'ch-run -b DIR:/mnt -c /mnt IMG --'
  per-worker  a container per worker: makeflow -T wq, work_queue_worker inside hpcrun run
  wq-bare     the same Work Queue run with the workers on the host: what Work Queue
              itself costs against makeflow's local mode, so that per-worker / wq-bare
              is the container's share
  shared      an instance, tasks entered with exec: --wrapper 'hpcrun exec -w /mnt NAME'
  api         the same DAG run by a small scheduler here through hpcrun.api
              (Instance.batch: one joined process per slot, a fork+exec per task)
Variants: the half-second workload (--lines, default 12000 reads per generated file:
about 0.5 s of CPU a task on average here, gen 1.4 s, compress 0.15 s, sort and merge
less) and a short-task one (--short-lines, default 200: about 10 ms a task). By default
the DAG has about 500 tasks (--tasks 500: 161 chains, 501 tasks), the issue's size;
`--tasks 100` is the quick one (101 tasks).

Makespan is wall time; on a shared machine it moves with everyone else's load, so the
CPU time of each run (user + system of every process it waited for: tasks, wrappers,
workers, exec servers) is reported beside it, and the CPU each configuration adds per
task over bare. And the machine's: the CPU time all processes used meanwhile (from
/proc/stat) less the run's own is "other CPU", what other sessions (and processes the
run did not wait for: an instance's supervisor, kernel threads) took from the same two
CPUs. A run with much other CPU is slower for that reason alone: compare makespans of
runs whose other CPU is near 0.

This machine is a virtual machine whose CPUs change speed under it: the same 501 tasks
took 261 to 338 CPU-seconds in one quiet run (other CPU under 1.5 s). So each run is
timed between two speed probes (the image's busybox awk counting to a fixed number,
one on each CPU at once, about 0.3 s) and is also reported "at common speed": its
makespan times the median probe over the probes around it. The raw makespans stay in
the tables beside it.

--paired A:B[,C:D...] measures differently, for drift: configuration A and configuration
B run the same DAG at the same time, one task at a time each, each pinned to one of the
two CPUs (every process of a run inherits its CPU: makeflow, wrappers, workers, an
instance's supervisor and its exec'd tasks), and the next round swaps the CPUs. Both
see the machine's speed of the same minutes, so B/A of one round holds what drift does
to both alike; the geometric mean of the rounds' B/A cancels a CPU that is steadily
faster than the other. `bare:bare` is the A/A control: how far from 1.000 a pair of
identical runs lands is this method's noise floor. Writes OUT/paired.md.

Then the per-command entry cost, interleaved: hpcrun.api exec, hpcrun exec, ch-run,
hpcrun run (each runs /bin/true in the same image).

Writes OUT/workflow.md (the Markdown table) and OUT/makespan.png, OUT/overhead.png
(matplotlib). Progress on a terminal; one line per run otherwise.

Run as root (it drops to HPCRUN_TEST_USER, default hpcuser) or as a user:
  benchmarks/workflow.py [--tasks 500] [--lines 12000] [--rounds 1] [--jobs 2] [--out DIR]
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hpcrun.workflow import dag  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)
HPCRUN = os.path.join(VENV_BIN, "hpcrun")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")
CONFIGS = ("bare", "per-task", "ch-run", "per-worker", "wq-bare", "shared", "api")
TTY = sys.stderr.isatty()


def say(msg: str, transient: bool = False) -> None:
    if transient:
        if TTY:
            sys.stderr.write("\r\033[K" + msg)
            sys.stderr.flush()
        return
    sys.stderr.write(("\r\033[K" if TTY else "") + msg + "\n")
    sys.stderr.flush()


class User:
    """Runs commands as the unprivileged user (or as ourselves when not root)."""

    def __init__(self, runtime_dir: str):
        self.root = os.geteuid() == 0
        self.pw = pwd.getpwnam(USER) if self.root else pwd.getpwuid(os.getuid())
        self.env = {"HOME": self.pw.pw_dir, "USER": self.pw.pw_name, "LANG": "C.UTF-8",
                    "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
                    "XDG_RUNTIME_DIR": runtime_dir}

    def popen(self, argv, cwd, env=None, **kw):
        if self.root:
            kw.update(user=self.pw.pw_uid, group=self.pw.pw_gid, extra_groups=[])
        return subprocess.Popen(argv, cwd=cwd, env=env or self.env, **kw)

    def run(self, argv, cwd="/", check=True, **kw):
        p = self.popen(argv, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        out, err = p.communicate()
        if check and p.returncode != 0:
            sys.exit(f"benchmarks/workflow.py: {' '.join(argv)} failed:\n{err.strip()}")
        return subprocess.CompletedProcess(argv, p.returncode, out, err)

    def chown(self, path: str) -> None:
        if self.root:
            for d, dirs, files in os.walk(path):
                for n in [d] + [os.path.join(d, x) for x in dirs + files]:
                    os.lchown(n, self.pw.pw_uid, self.pw.pw_gid)


def task_times(d: str) -> dict:
    """node id -> seconds from running to complete, from Makeflow's log."""
    start, out = {}, {}
    try:
        f = open(os.path.join(d, "wf.mf.makeflowlog"))
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            if line.startswith("#"):
                continue
            p = line.split()
            if len(p) < 3:
                continue
            ts, node, state = int(p[0]) / 1e6, p[1], p[2]
            if state == "1":
                start[node] = ts
            elif state == "2" and node in start:
                out[node] = ts - start[node]
    return out


def watch(p, d: str, label: str, total: int) -> None:
    """Wait for process p, showing how many tasks are done (on a terminal)."""
    while p.poll() is None:
        if TTY:
            done = len(task_times(d))
            say(f"{label}: {done}/{total} tasks", transient=True)
        time.sleep(0.1)


def run_makeflow(u: User, d: str, argv: list, label: str, total: int, env=None) -> float:
    t = time.perf_counter()
    # Output to a file, not a pipe: watch() does not read while it waits, and 500 tasks'
    # lines fill a pipe (64 KiB): makeflow then blocks in write() and never reaps a task.
    with open(os.path.join(d, "makeflow.out"), "w+") as log:
        p = u.popen(argv, d, env=env, stdout=log, stderr=subprocess.STDOUT)
        watch(p, d, label, total)
        log.seek(0)
        out = log.read()
    dt = time.perf_counter() - t
    if p.returncode != 0 or "failed" in out.split("nothing left to do")[0][-2000:]:
        sys.exit(f"benchmarks/workflow.py: {label} failed:\n{out[-2000:]}")
    return dt


def run_api(u: User, d: str, image: str, jobs: int, chains: int, lines: int,
            runtime_dir: str) -> tuple:
    """The DAG level by level through hpcrun.api, in a child as the user; (makespan,
    per-task seconds)."""
    script = f"""
import json, sys, time
sys.path.insert(0, {os.path.dirname(HERE)!r})
from hpcrun.api import Instance
from hpcrun.workflow import dag
tasks = dag.tasks({chains}, {lines})
inst = Instance.start({image!r}, name="bench-api", volumes=[{d!r} + ":/mnt"], workdir="/mnt")
try:
    done, times, t0 = set(), [], time.perf_counter()
    pending = list(tasks)
    while pending:
        ready = [t for t in pending if all(i in done for i in t[1])]
        pending = [t for t in pending if t not in ready]
        def one(t):
            s = time.perf_counter()
            r = inst.exec(["sh", "wf.sh", *t[2]], workdir="/mnt")
            if r.status != 0:
                raise SystemExit(r.stderr.decode())
            return time.perf_counter() - s
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor({jobs}) as pool:
            times += list(pool.map(one, ready))
        done.update(o for t in ready for o in t[0])
    print(json.dumps([time.perf_counter() - t0, times]))
finally:
    inst.stop()
"""
    import json
    cp = u.run([sys.executable, "-c", script], cwd=d)
    span, times = json.loads(cp.stdout)
    return span, times


def cpu_children() -> float:
    """User + system seconds of every child (and its descendants) waited for so far."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_cpu() -> float:
    """CPU seconds every process of the machine has used (busy time in /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system (idle iowait) irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """This process's CPU seconds and its waited-for children's."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + cpu_children()


def host_env(u: User, image: str) -> dict:
    """The user's environment with the image's own tools (static busybox) first on PATH,
    for tasks on the host: the containers' cost is then the only difference, not
    busybox awk against mawk."""
    return dict(u.env, PATH=f"{image}/bin:{image}/usr/bin:" + u.env["PATH"])


def run_config(cfg: str, u: User, work: str, image: str, args, chains: int, lines: int,
               label: str, runtime_dir: str, instance: str = "bench-shared") -> tuple:
    """(makespan, {task: seconds}, outputs, number of tasks, CPU seconds of the run,
    CPU seconds the rest of the machine used during the makespan)."""
    cpu0 = cpu_children()
    d = tempfile.mkdtemp(prefix=f"{cfg}-", dir=work)
    os.chmod(d, 0o755)
    info = dag.write(d, chains, lines)
    u.chown(d)
    total = info["tasks"]
    mf = ["makeflow", "-j", str(args.jobs)]
    wrap = None
    if cfg == "per-task":
        wrap = f"{HPCRUN} run -v {d}:/mnt -w /mnt {image}"
    elif cfg == "ch-run":
        wrap = f"ch-run -b {d}:/mnt -c /mnt {image} --"
    elif cfg == "shared":
        u.run([HPCRUN, "instance", "start", "--name", instance, "-v", f"{d}:/mnt", image])
        wrap = f"{HPCRUN} exec -w /mnt {instance}"
    times: dict = {}
    m0, o0 = machine_cpu(), own_cpu()
    try:
        if cfg == "api":
            span, tl = run_api(u, d, image, args.jobs, chains, lines, runtime_dir)
            times = {str(i): t for i, t in enumerate(tl)}
        elif cfg in ("per-worker", "wq-bare"):
            span = run_workers(u, d, image, args, label, total, container=cfg == "per-worker")
            times = task_times(d)
        else:
            argv = mf + (["--wrapper", wrap] if wrap else []) + ["wf.mf"]
            env = None
            if cfg == "bare":
                env = host_env(u, image)
            span = run_makeflow(u, d, argv, label, total, env)
            times = task_times(d)
        other = max(0.0, (machine_cpu() - m0) - (own_cpu() - o0))
    finally:
        if cfg == "shared":
            u.run([HPCRUN, "instance", "stop", instance], check=False)
    outputs = dag.text_outputs(d)
    shutil.rmtree(d, ignore_errors=True)
    return span, times, outputs, total, cpu_children() - cpu0, other


def run_workers(u: User, d: str, image: str, args, label: str, total: int,
                container: bool = True) -> float:
    wdir = tempfile.mkdtemp(prefix="workers-", dir=os.path.dirname(d))
    os.chmod(wdir, 0o755)
    u.chown(wdir)
    t = time.perf_counter()
    mflog = open(os.path.join(d, "makeflow.out"), "w+")     # not a pipe: see run_makeflow
    mf = u.popen(["makeflow", "-T", "wq", "-p", "0", "-Z", "port.txt", "wf.mf"], d,
                 stdout=mflog, stderr=subprocess.STDOUT)
    port_file = os.path.join(d, "port.txt")
    while not (os.path.exists(port_file) and os.path.getsize(port_file)):
        if mf.poll() is not None:
            mflog.seek(0)
            sys.exit(f"benchmarks/workflow.py: makeflow -T wq ended: {mflog.read()[-1000:]}")
        time.sleep(0.05)
    with open(port_file) as f:
        port = f.read().strip()
    if container:
        argv = [HPCRUN, "run", "-v", f"{wdir}:/work", image, "work_queue_worker", "-s", "/work"]
        env = None
    else:       # the host's worker, with the image's tools (as bare)
        argv = ["work_queue_worker", "-s", wdir]
        env = host_env(u, image)
    workers = [u.popen(argv + ["--cores", "1", "-t", "10", "localhost", port], "/", env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(args.jobs)]
    watch(mf, d, label, total)
    mflog.seek(0)
    out = mflog.read()
    mflog.close()
    span = time.perf_counter() - t
    for w in workers:
        w.terminate()
        w.wait()
    shutil.rmtree(wdir, ignore_errors=True)
    if mf.returncode != 0:
        sys.exit(f"benchmarks/workflow.py: {label} failed:\n{out[-2000:]}")
    return span


def speed_probe(image: str, jobs: int) -> float:
    """Seconds `jobs` copies of a fixed CPU-bound loop take at once (the image's static
    busybox awk, as the tasks use): the machine's speed of the moment."""
    argv = [os.path.join(image, "bin", "busybox"), "awk",
            "BEGIN { for (i = 0; i < 400000; i++) s += i % 7; print s }"]
    t = time.perf_counter()
    ps = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for _ in range(jobs)]
    for p in ps:
        p.wait()
    return time.perf_counter() - t


def entry_cost(u: User, image: str, rounds: int, work: str) -> dict:
    """Per-command entry, ms (median): API exec, hpcrun exec, ch-run, hpcrun run."""
    script = f"""
import json, sys, time, subprocess, os
sys.path.insert(0, {os.path.dirname(HERE)!r})
from hpcrun.api import Instance
inst = Instance.start({image!r}, name="bench-entry")
inst.exec(["true"])
res = {{"api exec": [], "hpcrun exec": [], "ch-run": [], "hpcrun run": []}}
argvs = {{"hpcrun exec": [{HPCRUN!r}, "exec", "bench-entry", "true"],
          "ch-run": [{shutil.which("ch-run")!r}, {image!r}, "--", "true"],
          "hpcrun run": [{HPCRUN!r}, "run", {image!r}, "true"]}}
try:
    for i in range({rounds}):
        order = list(res)
        order = order[i % 4:] + order[:i % 4]
        for k in order:
            t = time.perf_counter()
            if k == "api exec":
                assert inst.exec(["true"]).status == 0
            else:
                pid = os.posix_spawn(argvs[k][0], argvs[k], os.environ)
                assert os.waitpid(pid, 0)[1] == 0
            res[k].append((time.perf_counter() - t) * 1000)
finally:
    inst.stop()
print(json.dumps(res))
"""
    import json
    cp = u.run([sys.executable, "-c", script], cwd=work)
    return {k: statistics.median(v) for k, v in json.loads(cp.stdout).items()}


def paired(u: User, work: str, image: str, args, chains: int, runtime: str) -> int:
    """--paired: each pair's configurations at once, one CPU each, CPUs swapped every
    round; writes OUT/paired.md."""
    import threading
    pairs = [tuple(x.split(":")) for x in args.paired.split(",")]
    for pr in pairs:
        if len(pr) != 2 or any(c not in CONFIGS or c == "api" for c in pr):
            sys.exit(f"benchmarks/workflow.py: --paired {':'.join(pr)}: want A:B of "
                     f"{', '.join(c for c in CONFIGS if c != 'api')}")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("benchmarks/workflow.py: --paired needs two CPUs")
    one = argparse.Namespace(**dict(vars(args), jobs=1))
    rows, ratios = [], {pr: [] for pr in pairs}
    ref = None
    for r in range(args.rounds):
        for a, b in pairs:
            res: dict = {}
            cpu_of = {0: cpus[r % 2], 1: cpus[(r + 1) % 2]}

            def go(i, cfg):
                os.sched_setaffinity(0, {cpu_of[i]})     # this thread: its children inherit
                try:
                    res[i] = run_config(cfg, u, work, image, one, chains, args.lines,
                                        f"round {r + 1} {a}:{b} {cfg}@cpu{cpu_of[i]}",
                                        runtime, instance=f"bench-shared-{i}")
                except SystemExit as e:
                    res[i] = e
            ts = [threading.Thread(target=go, args=(i, c)) for i, c in enumerate((a, b))]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            for i in (0, 1):
                if isinstance(res[i], SystemExit):
                    sys.exit(res[i].code)
                outs = res[i][2]
                ref = ref if ref is not None else outs
                if outs != ref:
                    sys.exit(f"benchmarks/workflow.py: round {r + 1} {(a, b)[i]}: outputs differ")
            sa, sb = res[0][0], res[1][0]
            ratios[(a, b)].append(sb / sa)
            rows.append((r + 1, a, cpu_of[0], sa, b, cpu_of[1], sb, sb / sa))
            say(f"round {r + 1}/{args.rounds} {a}@cpu{cpu_of[0]} {sa:.2f} s, "
                f"{b}@cpu{cpu_of[1]} {sb:.2f} s: {b}/{a} {sb / sa:.4f}, outputs identical")
    ntasks = res[0][3]
    md = [f"Paired: {ntasks} tasks ({chains} chains, {args.lines} reads per generated "
          f"file), each configuration of a pair one task at a time on its own CPU, both "
          f"at once, CPUs swapped every round; {args.rounds} round(s).", "",
          "| pair B:A | B/A, geometric mean | rounds (B/A) |", "|---|---:|---|"]
    for (a, b), v in ratios.items():
        md.append(f"| {b} : {a} | {statistics.geometric_mean(v):.4f} | {', '.join(f'{x:.4f}' for x in v)} |")
    md += ["", "| round | A | CPU | makespan (s) | B | CPU | makespan (s) | B/A |",
           "|---:|---|---:|---:|---|---:|---:|---:|"]
    md += [f"| {r} | {a} | {ca} | {sa:.2f} | {b} | {cb} | {sb:.2f} | {x:.4f} |"
           for r, a, ca, sa, b, cb, sb, x in rows]
    os.makedirs(args.out, exist_ok=True)
    text = "\n".join(md) + "\n"
    with open(os.path.join(args.out, "paired.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)
    return 0


def plots(out: str, results: dict, at_common: dict, overheads: dict) -> list:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    files = []
    variants = list(results)
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4), squeeze=False)
    for ax, v in zip(axes[0], variants):
        cfgs = list(results[v])
        x = range(len(cfgs))
        ax.bar([i - 0.2 for i in x], [statistics.median(results[v][c]) for c in cfgs], 0.4,
               color="#4477aa", label="measured")
        ax.bar([i + 0.2 for i in x], [at_common[v][c] for c in cfgs], 0.4,
               color="#88ccee", label="at common CPU speed")
        ax.set_xticks(list(x), cfgs)
        ax.legend(fontsize="small")
        ax.set_title(f"makespan, {v} (median)")
        ax.set_ylabel("seconds")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    p = os.path.join(out, "makespan.png")
    fig.savefig(p, dpi=100)
    files.append(p)
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4), squeeze=False)
    for ax, v in zip(axes[0], variants):
        cfgs = [c for c in overheads[v] if overheads[v][c]]
        ax.boxplot([[x * 1000 for x in overheads[v][c]] for c in cfgs], tick_labels=cfgs,
                   showfliers=False)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"per-task overhead vs bare, {v}")
        ax.set_ylabel("ms")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    p = os.path.join(out, "overhead.png")
    fig.savefig(p, dpi=100)
    files.append(p)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=500,
                    help="about this many tasks (default 500: 501; 100: 101)")
    ap.add_argument("--lines", type=int, default=12000,
                    help="reads per generated file, half-second variant (default 12000)")
    ap.add_argument("--short-lines", type=int, default=200, help="reads, short-task variant")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every configuration")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="tasks at once")
    ap.add_argument("--entry-rounds", type=int, default=200)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--variants", default="half-second,short")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "workflow"))
    ap.add_argument("--paired", metavar="A:B[,C:D]",
                    help="run A and B at once, one CPU each, CPUs swapped every round "
                         "(half-second variant only), e.g. bare:bare,bare:shared")
    args = ap.parse_args()
    configs = args.configs.split(",")
    for c in configs:
        if c not in CONFIGS:
            sys.exit(f"benchmarks/workflow.py: unknown configuration {c!r} ({', '.join(CONFIGS)})")
    chains = max(1, round((args.tasks - 1) / 3.1))
    for tool in ("makeflow", "work_queue_worker", "ch-run"):
        if not shutil.which(tool):
            sys.exit(f"benchmarks/workflow.py: {tool} is not installed "
                     "(apt-get install coop-computing-tools charliecloud)")
    work = tempfile.mkdtemp(prefix="hpcrun-bench-wf-", dir="/tmp")
    os.chmod(work, 0o755)
    runtime = os.path.join(work, "runtime")
    os.mkdir(runtime, 0o700)
    u = User(runtime)
    u.chown(runtime)
    image = os.path.join(work, "image")
    from hpcrun.workflow.images import make_workflow_rootfs
    make_workflow_rootfs(image)
    variants = {"half-second": args.lines, "short": args.short_lines}
    variants = {k: variants[k] for k in args.variants.split(",")}
    results: dict = {v: {c: [] for c in configs} for v in variants}
    task_t: dict = {v: {c: [] for c in configs} for v in variants}
    cpu_s: dict = {v: {c: [] for c in configs} for v in variants}
    other_s: dict = {v: {c: [] for c in configs} for v in variants}
    runs: list = []
    probe_s: dict = {v: {c: [] for c in configs} for v in variants}
    overheads: dict = {v: {c: [] for c in configs if c != "bare"} for v in variants}
    ntasks = 0
    try:
        if args.paired:
            return paired(u, work, image, args, chains, runtime)
        for v, lines in variants.items():
            ref = None
            for r in range(args.rounds):
                order = configs[r % len(configs):] + configs[:r % len(configs)]
                for c in order:
                    label = f"{v} round {r + 1}/{args.rounds} {c}"
                    before = min(speed_probe(image, args.jobs) for _ in range(2))
                    span, times, outs, ntasks, cpu, other = run_config(
                        c, u, work, image, args, chains, lines, label, runtime)
                    probe = (before + min(speed_probe(image, args.jobs) for _ in range(2))) / 2
                    if ref is None:
                        ref = outs
                    if outs != ref:
                        sys.exit(f"benchmarks/workflow.py: {label}: outputs differ")
                    results[v][c].append(span)
                    cpu_s[v][c].append(cpu)
                    other_s[v][c].append(other)
                    task_t[v][c].append(times)
                    probe_s[v][c].append(probe)
                    runs.append((v, r + 1, c, span, cpu, other, probe))
                    say(f"{label}: {span:.2f} s, CPU {cpu:.2f} s, other CPU {other:.2f} s, "
                        f"speed probe {probe:.3f} s, {ntasks} tasks, outputs identical")
            bare_t = task_t[v].get("bare") or []
            if bare_t:
                med = {}
                for times in bare_t:
                    for n, t in times.items():
                        med.setdefault(n, []).append(t)
                base = statistics.median([statistics.median(x) for x in med.values()])
                for c in overheads[v]:
                    for times in task_t[v][c]:
                        if c == "api":
                            overheads[v][c] += [t - base for t in times.values()]
                        else:
                            overheads[v][c] += [t - statistics.median(med[n])
                                                for n, t in times.items() if n in med]
        say("per-command entry ...")
        entry = entry_cost(u, image, args.entry_rounds, work)
    finally:
        subprocess.run([HPCRUN, "instance", "stop", "--all"], env=u.env, capture_output=True,
                       **({"user": u.pw.pw_uid, "group": u.pw.pw_gid} if u.root else {}))
        shutil.rmtree(work, ignore_errors=True)

    os.makedirs(args.out, exist_ok=True)
    lines_md = [f"Sample DAG: {ntasks} tasks ({chains} chains), {args.jobs} at once, "
                f"{args.rounds} round(s), interleaved; {os.cpu_count()} CPUs.", ""]
    at_common: dict = {}
    for v in variants:
        common = statistics.median([x for c in configs for x in probe_s[v][c]])
        at = {c: statistics.median([sp * common / pr for sp, pr in
                                    zip(results[v][c], probe_s[v][c])]) for c in configs}
        at_common[v] = at
        b = statistics.median(results[v]["bare"]) if "bare" in results[v] else None
        ch = statistics.median(results[v]["ch-run"]) if "ch-run" in results[v] else None
        lines_md += [f"**{v}** ({variants[v]} reads per generated file)", "",
                     "| configuration | makespan (s) | vs bare | vs ch-run | CPU (s) | CPU vs bare "
                     "| CPU per task over bare (ms) | per-task wall over bare, median (ms) "
                     "| other CPU (s) | at common speed (s) | vs bare | vs ch-run |",
                     "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        bc = statistics.median(cpu_s[v]["bare"]) if "bare" in cpu_s[v] else None
        for c in configs:
            m = statistics.median(results[v][c])
            cm = statistics.median(cpu_s[v][c])
            oh = overheads[v].get(c)
            row = f"| {c} | {m:.2f} |"
            row += f" {m / b:.3f}x |" if b else " - |"
            row += f" {m / ch:.3f}x |" if ch else " - |"
            row += f" {cm:.2f} |"
            row += f" {cm / bc:.3f}x | {(cm - bc) / ntasks * 1000:.1f} |" if bc else " - | - |"
            row += f" {statistics.median(oh) * 1000:.1f} |" if oh else " - |"
            row += f" {statistics.median(other_s[v][c]):.2f} | {at[c]:.2f} |"
            row += f" {at[c] / at['bare']:.3f}x |" if "bare" in at else " - |"
            row += f" {at[c] / at['ch-run']:.3f}x |" if "ch-run" in at else " - |"
            lines_md.append(row)
        lines_md.append("")
    lines_md += ["**Every run**, in the order run (other CPU: what the rest of the machine "
                 "used meanwhile, /proc/stat less the run's own; speed probe: seconds of "
                 "the fixed loop around the run, lower is faster)", "",
                 "| variant | round | configuration | makespan (s) | CPU (s) | other CPU (s) "
                 "| speed probe (s) |",
                 "|---|---:|---|---:|---:|---:|---:|"]
    lines_md += [f"| {v} | {r} | {c} | {sp:.2f} | {cp:.2f} | {ot:.2f} | {pr:.3f} |"
                 for v, r, c, sp, cp, ot, pr in runs]
    lines_md.append("")
    lines_md += ["**Per-command entry** (median of %d, /bin/true)" % args.entry_rounds, "",
                 "| entry | ms | vs ch-run |", "|---|---:|---:|"]
    for k, ms in entry.items():
        lines_md.append(f"| {k} | {ms:.2f} | {ms / entry['ch-run']:.2f}x |")
    md = "\n".join(lines_md) + "\n"
    with open(os.path.join(args.out, "workflow.md"), "w") as f:
        f.write(md)
    sys.stdout.write(md)
    for p in plots(args.out, results, at_common, overheads):
        say(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
