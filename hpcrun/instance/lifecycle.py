"""Starting and stopping instances.

start() plans the container as `hpcrun run` does (hpcrun.runtime.launch.plan), always
with a private pid namespace, and hands it to the C supervisor (hpcrun_instance), which
returns once the command runs. stop() signals the supervisor and waits for it.
"""
from __future__ import annotations

import json
import os
import signal
import time

from hpcrun.errors import UsageError
from hpcrun.instance import state
from hpcrun.instance.state import InstanceError
from hpcrun.runtime.spec import F_MONITOR, F_PID

NAMES = ("ada", "bohr", "curie", "dirac", "euler", "fermi", "gauss", "hopper", "kepler",
         "lovelace", "noether", "pascal", "turing", "volta")


def _free_name(base: str) -> str:
    import random  # lazy: keeps hpcrun run's start-up small
    for _ in range(100):
        n = f"{random.choice(NAMES)}_{random.randrange(16**4):04x}"
        if not os.path.exists(os.path.join(base, n)):
            return n
    raise InstanceError("could not pick a free instance name", "give one with --name")


def _claim(base: str, name: str) -> str:
    """Create NAME's directory (mkdir is the lock); a stale one is removed first."""
    d = os.path.join(base, name)
    for _ in range(2):
        try:
            os.mkdir(d, 0o700)
            return d
        except FileExistsError:
            r = state.lookup(name, base)
            starting = (not os.path.exists(os.path.join(d, "pid"))
                        and time.time() - os.stat(d).st_mtime < 60)
            if r is not None and (r.running or r.exit_code() is not None or starting):
                what = "running" if r.running else ("starting" if starting else "exited")
                raise InstanceError(f"instance name {name!r} is already in use ({what})",
                                    f"pick another --name, or 'hpcrun instance stop {name}'")
            state.remove(d)
    raise InstanceError(f"can't claim instance name {name!r}", "try again")


def start(opts, name: str | None = None, environ=None) -> state.Record:
    """Start an instance of RunOptions OPTS; returns its record once the command runs.
    Without a command the supervisor just waits (an instance to `exec` into)."""
    from hpcrun import _core  # lazy: keeps hpcrun run's start-up small
    from hpcrun.runtime import image as img  # lazy: keeps hpcrun run's start-up small
    from hpcrun.runtime import launch  # lazy: keeps hpcrun run's start-up small
    if opts.network.startswith("container:"):
        raise UsageError(f"instance start can't take --network {opts.network}",
                         "an instance's exec joins its user namespace, which would be the "
                         "other instance's; use 'hpcrun run --network container:N', or "
                         "'hpcrun exec N' into that instance")
    base = state.root()
    if name is not None:
        state.check_name(name)
    image = img.resolve(opts.image)
    if image.kind == "squashfs" and image.config is None:
        image = image.replace(config=img.squashfs_config(image.path))
    conf = image.config or {}
    idle = not opts.command and not conf.get("Entrypoint") and opts.entrypoint is None
    if idle:
        opts = opts.replace(command=("true",))     # plan() wants a command; none runs
    spec = launch.plan(opts, image, environ)
    argv = () if idle else spec.argv
    lim = spec.limits
    # With a memory limit or a cgroup the C core starts a monitor beside the supervisor
    # (cext/core.c instance_monitor); F_MONITOR is run's way of asking for one.
    spec = spec.replace(flags=(spec.flags | F_PID) & ~F_MONITOR, argv=argv)
    name = name or _free_name(base)
    d = _claim(base, name)
    try:
        with open(os.path.join(d, "env"), "wb") as f:
            f.write(b"".join(os.fsencode(e) + b"\0" for e in spec.env))
        with open(os.path.join(d, "exec"), "w") as f:
            f.write(f"{spec.uid}\n{spec.workdir}\n")
        info = {"name": name, "image": opts.image, "image_path": image.path,
                "image_kind": image.kind, "command": list(argv), "workdir": spec.workdir,
                "uid": spec.uid, "gid": spec.gid, "writable": bool(opts.writable_tmpfs),
                "created": time.time(), "slurm_job": os.environ.get("SLURM_JOB_ID")}
        cpus = None
        if lim is not None:
            from hpcrun import cgroups, log  # lazy: only an instance with limits
            log.info(lim.summary())
            cpus = cgroups.affinity_of(lim)
            # What `hpcrun exec` applies to what it starts in the instance (the C
            # launcher leaves an exec into an instance with this file to Python).
            with open(os.path.join(d, "limits"), "w") as f:
                json.dump({"tier": cgroups.TIER_NAMES[lim.tier], "notes": list(lim.notes),
                           "cgroups": list(lim.cgroups), "memory": lim.memory or 0,
                           "cpus": sorted(cpus) if cpus else None,
                           "nproc": lim.pids if lim.tier == cgroups.TIER_WATCHDOG else 0}, f)
        with open(os.path.join(d, "record.json"), "w") as f:
            json.dump(info, f)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        anchor = _slurm_anchor()
        before = os.sched_getaffinity(0) if cpus else None
        made = False
        try:
            if lim is not None and lim.cgroups:
                cgroups.create(lim)     # removed by the instance's monitor at its end
                made = True
            if cpus:
                os.sched_setaffinity(0, cpus)     # inherited by the supervisor
            pid = _core.instance(spec, fd, anchor)
        except BaseException:
            if made:
                cgroups.remove(lim)
            raise
        finally:
            if before:
                os.sched_setaffinity(0, before)
            os.close(fd)
            if anchor >= 0:
                os.close(anchor)
        start = state.start_time(pid)
        if start is None:
            # It ended at once (e.g. the command exited): the record still tells why.
            start = "0"
        with open(os.path.join(d, ".pid.tmp"), "w") as f:
            f.write(f"{pid} {start}\n")
        os.replace(os.path.join(d, ".pid.tmp"), os.path.join(d, "pid"))
    except BaseException:
        state.remove(d)
        raise
    return state.Record(name, d, pid)


def _slurm_anchor() -> int:
    """Under Slurm, a pidfd of the slurmstepd above us (-1 elsewhere): the supervisor
    leaves the step's process tree when it detaches, so where Slurm tracks processes by
    parentage (proctrack/linuxproc) rather than by cgroup, the instance itself ends
    with the step. A pidfd names the process itself, never a reused pid."""
    if not os.environ.get("SLURM_JOB_ID"):
        return -1
    pid = os.getppid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            return -1
        if s[s.index("(") + 1:s.rindex(")")] == "slurmstepd":
            try:
                return os.pidfd_open(pid)
            except OSError:
                return -1
        pid = int(s[s.rindex(")") + 2:].split()[1])
    return -1


def _gone(pid: int, start: str) -> bool:
    return state.start_time(pid) != start


def wait_gone(r: state.Record, timeout: float | None) -> bool:
    """Wait for the supervisor to end (reaping it if it is our child); True if it did."""
    try:
        with open(os.path.join(r.dir, "pid")) as f:
            pid_s, start = f.read().split()
    except (OSError, ValueError):
        return True
    pid = int(pid_s)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.002
    while not _gone(pid, start):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def signal_instance(r: state.Record, sig: int) -> None:
    try:
        os.kill(r.pid, sig)
    except ProcessLookupError:
        pass


def stop(name: str, timeout: float = 10.0) -> int | None:
    """Stop NAME: its stop signal (SIGTERM) to the supervisor, SIGKILL after TIMEOUT
    seconds; then its record goes. Returns the command's exit code (None if killed)."""
    state.check_name(name)
    r = state.lookup(name)
    if r is None:
        raise state.NotFound(f"no such instance: {name}",
                             "see 'hpcrun ps -a' for your instances")
    if r.running:
        from hpcrun.instance import observe  # lazy: keeps hpcrun run's start-up small
        if observe.paused(r):
            observe.pause(r, False)     # a stopped process would take SIGTERM only later
        signal_instance(r, signal.SIGTERM)
        if not wait_gone(r, timeout):
            signal_instance(r, signal.SIGKILL)   # PID 1 killed: the kernel ends the rest
            wait_gone(r, None)
    code = r.exit_code()
    state.remove(r.dir)
    return code
