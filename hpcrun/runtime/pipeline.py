"""Options -> image -> container: the one pipeline every entry point goes through.

`hpcrun run`, `hpcrun task`, `hpcrun task --plan`, `hpcrun srun` and job files all
parse their options with the option table (runtime/options.py), resolve IMAGE with
one rule (runtime/image.py `resolve`), and call prepare() here, which plans the
container (runtime/launch.py `plan`: identity, namespaces, mounts, workdir) and
writes it as a plan (runtime/plan.py); the C executor runs it (`execute`).
The contexts differ only in what a squashfs image becomes and what Slurm adds:

  run   a squashfs file is mounted with squashfuse, or unpacked once into the
        unpack cache with --unpack
  task  a squashfs file is unpacked once per node (the node cache); Slurm's PMIx
        directories are bound; the Python form of a Slurm task
  plan  like task, but worked out once per step on the launching node: a squashfs
        file is unpacked by each node's executor, and where the image is not on a
        node the executor runs `hpcrun task ARGS` there instead

Per-task hot path: import-light (os, sys, and the runtime modules).
"""
from __future__ import annotations

import os
import sys

from hpcrun.errors import ImageError, UsageError
from hpcrun.runtime import env as envpolicy
from hpcrun.runtime import image as img
from hpcrun.runtime import launch, options
from hpcrun.runtime import plan as planfmt
from hpcrun.runtime.spec import RunOptions

RUN, TASK, PLAN = options.RUN, options.TASK, options.PLAN


class HelpAsked(UsageError):
    """-h/--help among the options: the command line (hpcrun/cli) prints its help."""


def run_options(argv, entry: str = RUN):
    """Option words (+ IMAGE [--] CMD) -> RunOptions; UsageError for bad options."""
    vals, image, command, help_asked = options.parse(list(argv), entry)
    if help_asked:
        raise HelpAsked("--help is not an option here", f"run 'hpcrun {entry} --help'")
    if image is None:
        raise UsageError("no IMAGE given" if entry != RUN else "no image given",
                         f"usage: hpcrun {entry} [OPTIONS] IMAGE [--] CMD [ARG...]")
    return RunOptions(image=image, command=tuple(command), **vals)


def resolve(opts, context: str = RUN):
    """The image to plan, as the context needs it: (Image, squashfs file the executor
    unpacks or None)."""
    image = img.resolve(opts.image)
    if image.kind != "squashfs":
        return image, None
    if context == PLAN:
        # Unpacked once per node by the executor (the node cache): planned as a directory.
        return img.Image(path=image.path, kind="dir", name=image.name,
                         config=image.config or img.squashfs_config(image.path)), image.path
    if context == TASK:
        from hpcrun.slurm import prepare  # lazy: keeps hpcrun run's start-up small
        root = prepare.unpack_once(image.path)
        return img.Image(path=root, kind="dir", name=image.name,
                         config=image.config if image.config else img.dir_config(root)), None
    if opts.unpack:
        root = img.unpack(image.path)
        return img.Image(path=root, kind="dir", config=image.config or img.dir_config(root),
                         name=image.name), None
    if not launch.fuse_allowed():
        raise ImageError(f"can't mount squashfs image {opts.image}: this node does not let "
                         "users use FUSE (/dev/fuse)",
                         "add --unpack to extract it once into a node-local cache, or ask "
                         "the admin to allow FUSE")
    if image.config is None:
        image = image.replace(config=img.squashfs_config(image.path))
    return image, None


def prepare(opts, context: str = RUN, environ=None, *, python=(), task_args=()):
    """Plan the container of `opts` for `context`: (plan word, Spec, Image)."""
    environ = dict(os.environ if environ is None else environ)
    slurm = context in (TASK, PLAN)
    if slurm and opts.scratch and not (environ.get("SLURM_TMPDIR") or environ.get("TMPDIR")):
        environ["TMPDIR"] = "/tmp"    # each task binds its own; Slurm's default
    image, sq = resolve(opts, context)
    if opts.mpi == "host":
        from hpcrun import mpi           # the host's MPI: read-only binds, LD_LIBRARY_PATH
        opts = mpi.with_host_mpi(opts, image)
    conf = image.config or {}
    if opts.entrypoint is not None:
        default = [opts.entrypoint] if opts.entrypoint else []
    else:
        default = launch._argv(conf.get("Entrypoint")) + launch._argv(conf.get("Cmd"))
    if context != PLAN and not opts.command and not default:
        raise UsageError("no command given",
                         "give a command after the image: hpcrun run IMAGE -- CMD [ARG...]")
    # Devices in a step plan: GPUs are allocated per node and step, so each task plans
    # them on its own node (plan.py pertask); the plan made here has none. Once there
    # (the executor's `hpcrun task`, which may plan the node container), they are planned.
    pertask = (context == PLAN and bool(opts.gpus or opts.devices or opts.nv)
               and not environ.get("HPCRUN_TASK_FALLBACK"))
    popts = opts.replace(gpus=None, devices=(), nv=False) if pertask else opts
    # --network container:N in a step plan: the instance is each node's own (a pid on
    # that node), so each task looks it up and plans on its node, as for devices.
    if context == PLAN and opts.network.startswith("container:") and \
            not environ.get("HPCRUN_TASK_FALLBACK"):
        pertask = True
        popts = popts.replace(network="host")
    # Limits in a step plan: the tier (a cgroup this node lets the user write under the
    # task's own, else the watchdog) and the CPUs allowed are each node's and task's
    # (Slurm binds every task to CPUs of its own), not the planning node's. The plan
    # checks the values now; a bare --cpus N it carries itself (affn=: N of each task's
    # CPUs, by affinity, in the C executor); the others each task plans on its node, as
    # for devices. Once there (HPCRUN_TASK_FALLBACK), they are planned here.
    # --memory, --memory-swap and --pids-limit (with a whole --cpus N or none) the plan
    # carries as the no-cgroup tier applies them, which the C executor does itself on a
    # node that gives the task no writable cgroup (most clusters, for users); where one
    # does, that task plans its cgroup in Python (plan word limnode=).
    affn = 0
    step = None
    if context == PLAN and not environ.get("HPCRUN_TASK_FALLBACK") and \
            (opts.cpus or opts.cpuset_cpus or opts.memory or opts.memory_swap
             or opts.pids_limit):
        from hpcrun import cgroups, log  # lazy: keeps hpcrun run's start-up small
        cgroups.check(opts)
        affn = cgroups.whole_cpus_only(opts)
        step = None if affn else cgroups.step_watchdog(opts)
        if step is not None:
            affn = step[1]
            log.info("limits: in a step plan: on a node with no writable cgroup, "
                     + "; ".join(step[0].notes) + " (the C executor); where a node has one, "
                     "its tasks plan a cgroup of their own (each says its tier)")
        elif affn:
            log.info(f"limits: in a step plan: cpus {affn} of each task's CPUs by affinity")
        else:
            pertask = True
            log.info("limits: in a step plan: planned by each task on its node, under "
                     "its own cgroup (each says its tier)")
        popts = popts.replace(cpus=None, cpuset_cpus=None, memory=None, memory_swap=None,
                              pids_limit=None, limits_view=False)
    spec = launch.plan(popts.replace(command=opts.command or ("true",)), image, environ)
    if step is not None:
        # it watches and reports the OOM (as launch.plan sets for limits of a run)
        spec = spec.replace(limits=step[0], flags=spec.flags | launch.F_MONITOR)
    fixed, own = envpolicy.split(list(conf.get("Env") or ()) + list(spec.extra_env),
                                 opts.env_files, opts.env)
    # The executor binds a PMIx server's directory (PMIX_SERVER_TMPDIR: mpirun's,
    # srun's) where an invocation has one; Slurm's per-step directory too in tasks.
    extra = {"pmix": True}
    if slurm:
        # lazy: keeps hpcrun run's start-up small
        from hpcrun.slurm import prepare as slurmprep
        extra = dict(pmix=True, tmpfs=slurmprep.tmpfs_pattern(environ),
                     cache=slurmprep.cache_base(),
                     share=bool(opts.node_container) and context == PLAN)
    from hpcrun.runtime import mpiplan as mpi  # lazy: keeps hpcrun run's start-up small
    word = planfmt.make(opts, image, spec, fixed_env=fixed, own_env=own, sq=sq,
                        python=python, task_args=task_args, pertask=pertask,
                        join=mpi.join_word(opts, context, extra.get("share", False)),
                        pmixv=mpi.pmix_word(image), affn=affn,
                        limnode=step[2] if step is not None else (), **extra)
    return word, spec, image


def execute(word: str, command) -> int:
    """Run a plan with the C executor, in this process: through the cffi module (it is
    cheaper than an exec into the per-task program: ~0.9 ms of CPU here, and no dearer
    than an exec into the static launcher), else, where the module cannot load, by
    exec'ing that program. Either way this process becomes the command or stays as
    its monitor (which drops the interpreter's memory)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.environ.get("HPCRUN_EXECUTOR") != "program":    # (a test hook, as "cffi")
        try:
            from hpcrun import _core    # lazy: the cffi module, only to execute
        except ImportError:
            _core = None
        if _core is not None:
            return _core.plan_exec(word, list(command))
    from hpcrun.slurm import stepplan   # lazy: only where the cffi module is missing
    prog = stepplan.task_program()
    if prog is None:
        from hpcrun.errors import ContainerError  # lazy: only this failure needs it
        raise ContainerError("neither the C core nor the per-task program of hpcrun is "
                             "built for this platform", "reinstall hpcrun: pip install .")
    _hand_on_leases()
    os.execv(prog, [prog, word, "--", *command])
    return 125      # not reached


def _hand_on_leases() -> None:
    """A store image's lease (hpcrun.image.resolve) must last until the command's
    execve, when the container's root is pinned: it is handed on through an exec."""
    resolve = sys.modules.get("hpcrun.image.resolve")
    if resolve is not None and resolve.held():
        resolve.inherit()


def run(opts, context: str = RUN, words=None) -> int:
    """`hpcrun run` / the Python form of `hpcrun task`: prepare, then execute.
    words: `hpcrun run`'s option words and IMAGE as given, to remember the plan for
    the C launcher (runtime/plancache.py) under them."""
    word, spec, image = prepare(opts, context)
    if os.environ.get("HPCRUN_VERBOSE", "0") not in ("", "0", "1"):
        launch._log_spec(spec)
    lim = spec.limits
    if lim is not None or opts.ulimits:
        from hpcrun import cgroups, log  # lazy: keeps hpcrun run's start-up small
        if lim is not None:
            log.info(lim.summary())
        if any(u.startswith("as=") for u in opts.ulimits):
            log.warning("--ulimit as limits address space, not memory: CUDA, ASAN and JVMs "
                        "reserve far more than they use and fail under it; --memory is the "
                        "memory limit")
    # Limits are words the C executor applies itself (affinity, rlimits, the watchdog;
    # a cgroup v1 of its own it makes: cgmk=, under the caller's cgroups of the moment),
    # so such a plan is cached as any other. Not: a cgroup v2 plan (Python enables the
    # controllers for it first), one with cgroups Python must make (no mount known),
    # and --ulimit as, so that its warning is never skipped.
    # A Slurm job's cgroup view names this job's cgroup (the cache key has no job id).
    own = set(lim.cgroups) if lim is not None and lim.makers else set()
    v1_own = bool(own) and lim.tier == 1        # cgroups.TIER_CGROUP1
    # --network container:N names an instance's pid: planned again every run, so that
    # an instance started again under the same name is found.
    cacheable = (lim is None or not lim.cgroups or v1_own) and not spec.net_pid and \
        not any(u.startswith("as=") for u in opts.ulimits) and \
        not any(m.dst.startswith("/sys/fs/cgroup") and m.src not in own for m in spec.mounts)
    if words is not None and context == RUN and cacheable and \
            not os.environ.get("HPCRUN_NO_PLAN_CACHE"):
        from hpcrun.runtime import plancache  # lazy: keeps hpcrun run's start-up small
        plancache.store(words, word, plancache.checks(opts, image, spec))
    return execute_limited(word, spec, opts.command)


def execute_limited(word: str, spec, command) -> int:
    """execute(), making the plan's cgroups first where its limits have any and the
    executor does not make them itself (the hpcrun-<pid> of this process, which becomes
    the container's monitor); for cgroup v2, enabling the controllers they need."""
    lim = spec.limits
    if lim is None or not lim.cgroups:
        return execute(word, command)
    from hpcrun import cgroups  # lazy: keeps hpcrun run's start-up small
    if lim.makers:
        cgroups.prepare(lim)        # the executor makes them (plan words cgmk=, cgw=)
        return execute(word, command)
    # The cgroup is made here, just before the executor; its monitor moves the container
    # in and removes it (and removes it too if entering fails).
    cgroups.create(lim)
    try:
        return execute(word, command)
    except BaseException:
        cgroups.remove(lim)
        raise
