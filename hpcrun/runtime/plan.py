"""Container plans: a container worked out once in Python, executed by the C core.

A plan is one command-line word that needs no quoting. Python writes it (make(), from
the same RunOptions and image every entry point resolves through runtime/pipeline.py);
the C executor (cext/task.c, `hpcrun_plan_exec`, linked into both the per-task
program hpcrun/_task*.so and the cffi module) reads it and does everything that is
per invocation: the environment, Slurm's PMIx binds, the scratch directory, the
working directory, the command, and the node container's keeper and join. Policy is
decided here, once; the executor never re-decides it, and there is one executor:
`hpcrun run`, `hpcrun task`, the per-task program and the Python fallbacks all end
in hpcrun_plan_exec.

Grammar (version 2): comma-separated KEY=VALUE words; in VALUE, '%XX' (hex) stands for
any byte but letters, digits and "/._+@-". Keys (repeatable ones *):

  v=2              plan version (the executor refuses any other)
  image=PATH       root directory, or squashfs file with flags & F_SQUASH
  sq=PATH          squashfs file unpacked once per node into the node cache (tasks)
  flags=N uid=N gid=N stop=N host=NAME fuse=PATH     as struct hpcrun_spec
  m=FLAGS:SRC:DST  * a mount, in order (SRC empty: none; SCRATCH: this invocation's
                     $SLURM_TMPDIR, else $TMPDIR: --scratch)
  wd=PATH wdreq=0|1  working directory          wdcwd=1  the caller's cwd as seen inside
  entry=ARG        * the image's ENTRYPOINT, in front of the command
  cmd=ARG          * the image's CMD: the command when none is given
  set=NAME:VALUE   * fixed environment additions, in order (image ENV < --env-file < -e)
  own=NAME         * names whose value is the caller's own where it has one (`-e NAME`;
                     a set= of the same name applies only where the caller has none)
  clean=1          --cleanenv: drop the rest of the caller's variables but ...
  always=PREFIX    * ... those starting with these
  pfds=N           --preserve-fds: descriptors 3 .. 2+N stay open in the command
  netns=PID:START  --network container:N: join the user and network namespaces of the
                     instance's supervisor PID, if its start time (field 22 of
                     /proc/PID/stat) is still START; such a plan is never cached
                     (runtime/pipeline.py run), and a step plan leaves it to each
                     node (pertask=1), where the instance is looked up
  pmix=1           bind Slurm's PMIx directories (tasks of a step)
  tmpfs=PATTERN    Slurm's TmpFS (%n, %h expanded by the executor), for those
  cache=DIR        node cache base (HPCRUN_NODE_CACHE wins)
  share=1          one container per node and step
  join=auto|off|KEY  the ranks of an MPI launch on a node (mpirun, mpiexec.hydra,
                     srun; told by their variables) share one container: the
                     launch's (auto), KEY's (--join=KEY), or none (off: --no-join,
                     a container per task); ranks left in user namespaces of their
                     own get MPI settings that work between them (hpcrun/mpi.py)
  pmixv=MAJOR.MINOR  the image's PMIx client version: a launcher's PMIx server it
                     can't reach is an error before the command starts
  pertask=1        devices (--gpus, --device, --nv) or limits (--memory, --cpuset-cpus,
                   ...): the executor runs `hpcrun task ARGS` on each node, which plans
                   them with that node's and step's GPUs, the task's CPUs and cgroup
  lim=T:M:S:N:I    resource limits (hpcrun/cgroups.py): tier, memory and memory+swap
                     bytes for the watchdog, RLIMIT_NPROC, sampling interval in ms
  limshow=TEXT     the memory limit as the OOM message shows it (512M)
  aff=LIST         the CPUs to bind to (0-3,5): sched_setaffinity before entering
  affn=N           only N of them: from the CPU the executor runs on, upwards, wrapping;
                     without aff=, N of the CPUs the task may use (a step plan's --cpus N)
  rl=NAME:S:H      * setrlimit(NAME, soft S, hard H) before entering (-1: unlimited)
  cg=PATH          * a cgroup directory the container joins (made already, removed at
                     the end by the monitor)     cgmem=PATH  the one with memory
  cgmk=CTL:POINT:ROOT  * a cgroup the executor makes itself and the container joins:
                     hpcrun-<its pid> in the caller's own cgroup of controller CTL
                     ("" for v2; /proc/self/cgroup) under the hierarchy mounted at POINT
                     whose root is ROOT (cext/task.c make_cgroups); so a run with a
                     cgroup of its own is cached like any other
  cgw=I:FILE:VALUE * write VALUE into FILE of the I-th cgmk= cgroup, in order (VALUE
                     @parent: the parent's FILE)     cgmem=@cgI, m=FLAGS:@cgI:DST  it
  limnode=CTL:POINT:ROOT  * a step plan's limits: lim= (and affn=) are the no-cgroup
                     tier's, which apply unless this node gives the task a writable
                     cgroup (its own v2 one, CTL empty, or all of the v1 ones named):
                     then `hpcrun task ARGS` plans one in Python
  limsay=TEXT      the tier line `-v` prints (HPCRUN_VERBOSE) where lim= applies
  py=ARG           * how to start `hpcrun task` (Python) for what the executor does not
  arg=ARG          * the `hpcrun task` options and IMAGE as given: where the image is
                     not on this node, `hpcrun task ARGS -- COMMAND` runs instead

Per-task hot path: imports os only.
"""
from __future__ import annotations

import os

VERSION = "2"
SCRATCH = "SCRATCH"       # a mount source the executor resolves per invocation
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/._+@-")


def esc(value) -> str:
    b = os.fsencode(value) if not isinstance(value, bytes) else value
    if b"\0" in b:
        raise ValueError("a NUL byte cannot be passed in a plan")
    return "".join(chr(c) if c in _PLAIN else f"%{c:02X}" for c in b)


def encode_args(args) -> str:
    """Words as one shell word that needs no quoting (decode_args reverses it)."""
    return ",".join(esc(a) for a in args)


def decode_args(word: str) -> list:
    from urllib.parse import unquote  # lazy: keeps hpcrun run's start-up small
    return [unquote(a, errors="surrogateescape") for a in word.split(",")]


def make(opts, image, spec, *, fixed_env, own_env, sq=None, pmix=False, tmpfs=None,
         cache=None, share=False, python=(), task_args=(), pertask=False, join=None,
         pmixv=None, affn=0, limnode=()) -> str:
    """The plan word for a planned container (runtime/pipeline.py calls this).

    spec: the launch.plan() Spec of (opts, image); fixed_env/own_env: the env policy
    split (runtime.env.split); sq: a squashfs file the executor unpacks once per node;
    python/task_args: the Python fallback where the image is not on a node."""
    conf = image.config or {}
    words = [f"v={VERSION}"]
    if sq:
        words.append("sq=" + esc(sq))
    words.append("image=" + esc(spec.image))
    words += [f"flags={spec.flags}", f"uid={spec.uid}", f"gid={spec.gid}",
              f"stop={spec.stop_signal or 0}"]
    if spec.squashfuse:
        words.append("fuse=" + esc(spec.squashfuse))
    if spec.hostname:
        words.append("host=" + esc(spec.hostname))
    lim = spec.limits
    made = list(lim.cgroups) if lim is not None and lim.makers else []
    for m in spec.mounts:
        src = esc(m.src) if m.src else ""
        if opts.scratch and m.dst == "/scratch":
            src = SCRATCH
        elif m.src in made:
            src = f"@cg{made.index(m.src)}"     # the cgroup the executor makes (cgmk=)
        words.append(f"m={m.flags}:{src}:{esc(m.dst)}")
    if opts.workdir or conf.get("WorkingDir"):
        words += ["wd=" + esc(spec.workdir), f"wdreq={1 if spec.workdir_required else 0}"]
    else:
        words.append("wdcwd=1")
    # The image's ENTRYPOINT stays in front of the command (Docker's rule); its CMD is
    # the command when none is given (and none with --entrypoint).
    from hpcrun.runtime import launch
    entry = launch._argv(conf.get("Entrypoint"))
    if opts.entrypoint is not None:
        entry = [opts.entrypoint] if opts.entrypoint else []
    words += ["entry=" + esc(a) for a in entry]
    if opts.entrypoint is None:
        words += ["cmd=" + esc(a) for a in launch._argv(conf.get("Cmd"))]
    for name, value in fixed_env.items():
        words.append(f"set={esc(name)}:{esc(value)}")
    words += ["own=" + esc(name) for name in sorted(own_env)]
    if opts.cleanenv:
        from hpcrun.runtime import env as envpolicy  # lazy: keeps hpcrun run's start-up small
        words.append("clean=1")
        words += ["always=" + esc(p) for p in envpolicy.ALWAYS]
    if spec.preserve_fds:
        words.append(f"pfds={spec.preserve_fds}")
    if spec.net_pid:
        words.append(f"netns={spec.net_pid}:{spec.net_start}")
    if pmix:
        words.append("pmix=1")
    if tmpfs:
        words.append("tmpfs=" + esc(tmpfs))
    if cache:
        words.append("cache=" + esc(cache))
    if share:
        words.append("share=1")
    if join:
        words.append("join=" + esc(join))
    if pmixv:
        words.append("pmixv=" + esc(pmixv))
    if pertask:
        words.append("pertask=1")
    if lim is not None:
        swap = lim.memory_swap if lim.memory_swap and lim.memory_swap > 0 else 0
        nproc = lim.pids if lim.tier == 3 else 0      # cgroups.TIER_WATCHDOG
        words.append(f"lim={lim.tier}:{lim.memory or 0}:{swap}:{nproc}:{lim.interval_ms}")
        if lim.memory_shown:
            words.append("limshow=" + esc(lim.memory_shown))
        if made:
            # the executor makes them (hpcrun-<its pid>, under its own cgroups)
            words += ["cgmk=" + ":".join(esc(x) for x in mk) for mk in lim.makers]
            words += [f"cgw={made.index(d)}:{esc(f)}:{esc(v)}" for d, f, v in lim.writes]
            if lim.memory_cgroup:
                words.append(f"cgmem=@cg{made.index(lim.memory_cgroup)}")
        else:
            words += ["cg=" + esc(d) for d in lim.cgroups]
            if lim.memory_cgroup:
                words.append("cgmem=" + esc(lim.memory_cgroup))
        if lim.affinity:
            from hpcrun.cgroups import format_cpuset  # lazy: keeps hpcrun run's start-up small
            words.append("aff=" + esc(format_cpuset(lim.affinity)))
            if lim.affinity_count:
                words.append(f"affn={lim.affinity_count}")
    if opts.ulimits:
        from hpcrun.cgroups import parse_ulimits  # lazy: keeps hpcrun run's start-up small
        for name, soft, hard in parse_ulimits(opts.ulimits):
            words.append(f"rl={name}:{soft}:{hard}")
    if affn:
        words.append(f"affn={affn}")          # of the task's own CPUs (no aff=)
    if limnode:
        words += ["limnode=" + ":".join(esc(x) for x in mk) for mk in limnode]
        words.append("limsay=" + esc(lim.summary()))
    words += ["py=" + esc(a) for a in python]
    words += ["arg=" + esc(a) for a in task_args]
    return ",".join(words)
