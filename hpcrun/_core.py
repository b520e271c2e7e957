"""The only importer of the compiled C core (hpcrun._ccore, built from cext/).

Turns a runtime Spec into the C structures, calls the core, and turns its errno and
message buffer into ContainerError. Exit codes: see also cext/core.h.
"""
from __future__ import annotations

import os

from hpcrun._ccore import ffi, lib
from hpcrun.errors import ContainerError

ERRLEN = 2048

def _hint(msg: str) -> str | None:
    """The C core's hint for its message (one table, cext/task.c HINTS)."""
    h = lib.hpcrun_hint(msg.encode("utf-8", "replace"))
    return ffi.string(h).decode() if h != ffi.NULL else None


def _raise(err, code) -> None:
    msg = ffi.string(err).decode("utf-8", "replace") or "the container could not be entered"
    raise ContainerError(msg, _hint(msg), code[0])


class _Arena:
    """Keeps the cffi buffers alive for the duration of the call."""

    def __init__(self):
        self.keep = []

    def str(self, s):
        if s is None:
            return ffi.NULL
        b = ffi.new("char[]", os.fsencode(s))
        self.keep.append(b)
        return b

    def strv(self, items):
        arr = ffi.new("char *[]", len(items) + 1)
        for i, x in enumerate(items):
            arr[i] = self.str(x)
        arr[len(items)] = ffi.NULL
        self.keep.append(arr)
        return arr


def _cspec(a: _Arena, spec):
    """A runtime Spec as the C core's struct hpcrun_spec (buffers kept alive by a)."""
    s = ffi.new("struct hpcrun_spec *")
    s.image = a.str(spec.image)
    s.squashfuse = a.str(spec.squashfuse)
    s.flags = spec.flags
    s.hostname = a.str(spec.hostname)
    s.uid = spec.uid
    s.gid = spec.gid
    mounts = ffi.new("struct hpcrun_mount[]", max(1, len(spec.mounts)))
    for i, m in enumerate(spec.mounts):
        mounts[i].src = a.str(m.src)
        mounts[i].dst = a.str(m.dst)
        mounts[i].flags = m.flags
    a.keep.append(mounts)
    s.mounts = mounts
    s.n_mounts = len(spec.mounts)
    s.workdir = a.str(spec.workdir)
    s.workdir_required = 1 if spec.workdir_required else 0
    s.argv = a.strv(spec.argv)
    s.envp = a.strv(spec.env)
    s.stop_signal = spec.stop_signal
    s.preserve_fds = spec.preserve_fds
    s.net_pid = spec.net_pid
    s.net_start = spec.net_start
    if spec.overlay_lower:
        s.overlay_lower = a.strv(list(spec.overlay_lower))
        s.overlay_work = a.str(spec.overlay_work)
    lim = spec.limits
    if lim is not None:
        cl = ffi.new("struct hpcrun_limits *")
        a.keep.append(cl)
        cl.tier = lim.tier
        cl.cgroups = a.strv(lim.cgroups)
        cl.memory_cgroup = a.str(lim.memory_cgroup)
        cl.memory = lim.memory or 0
        cl.memory_swap = lim.memory_swap if lim.memory_swap and lim.memory_swap > 0 else 0
        cl.nproc = lim.pids if lim.tier == lib.HPCRUN_TIER_WATCHDOG else 0
        cl.interval_ms = lim.interval_ms
        cl.memory_shown = a.str(lim.memory_shown)
        s.limits = cl
    a.keep.append(s)
    return s


def enter(spec) -> int:
    """Enter the container of a runtime Spec and run its command.

    Never returns once the command runs. Default options: the process becomes the
    command. With a pid namespace (or a STOPSIGNAL, or a threaded caller) this process
    becomes a small C monitor (the interpreter's memory dropped) that forwards signals
    and exits with the command's status, 128+N for a death by signal N.
    Raises ContainerError (code 125/126/127) if the container can't be entered or the
    command can't be executed.
    """
    a = _Arena()
    s = _cspec(a, spec)
    err = ffi.new("char[]", ERRLEN)
    code = ffi.new("int *")
    r = lib.hpcrun_enter(s, err, ERRLEN, code)
    if r < 0:
        _raise(err, code)
    return r


def join(pid: int, argv, env, workdir: str = "/") -> int:
    """Run argv inside the running container whose process is pid (setns into its user,
    mount, pid, ipc, uts and network namespaces). Returns only on failure (raising):
    the command replaces this process, or with a pid namespace a small C monitor stays
    and exits with the command's status. For ranks of a node sharing one container (CMA
    shared memory needs one user namespace)."""
    import sys  # lazy: keeps hpcrun run's start-up small
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    a = _Arena()
    err = ffi.new("char[]", ERRLEN)
    code = ffi.new("int *")
    r = lib.hpcrun_join(int(pid), a.strv(list(argv)), a.strv(list(env)), a.str(workdir),
                        err, ERRLEN, code)
    if r < 0:
        _raise(err, code)
    return r


def plan_exec(word: str, command) -> int:
    """Execute a container plan (hpcrun/runtime/plan.py) with the C executor, in this
    process. Never returns: the command replaces the process, or the process stays
    as its monitor; a failure prints one line and exits 125."""
    a = _Arena()
    argv = ["hpcrun", word, "--", *command]
    r = lib.hpcrun_plan_exec(len(argv), a.strv(argv))
    return int(r)


def version() -> str:
    return ffi.string(lib.hpcrun_core_version()).decode()


PROBES = {"userns": lib.HPCRUN_PROBE_USERNS, "mount": lib.HPCRUN_PROBE_MOUNT,
          "overlay": lib.HPCRUN_PROBE_OVERLAY, "fuse": lib.HPCRUN_PROBE_FUSE,
          "pid": lib.HPCRUN_PROBE_PID, "net": lib.HPCRUN_PROBE_NET,
          "overlay-build": lib.HPCRUN_PROBE_OVERLAY_BUILD}


def probe(what: str):
    """Ask the kernel whether a container step works here (in a forked child):
    (True, "") or (False, "can't ...: reason")."""
    err = ffi.new("char[]", ERRLEN)
    r = lib.hpcrun_probe(PROBES[what], err, ERRLEN)
    return r == 0, ffi.string(err).decode("utf-8", "replace")


def probe_at(what: str, directory: str):
    """probe() for a probe that works in an empty directory of the caller's
    ("overlay-build": a build's RUN root as an overlay, on that directory's file
    system); the caller removes the directory afterwards."""
    err = ffi.new("char[]", ERRLEN)
    r = lib.hpcrun_probe_at(PROBES[what], os.fsencode(directory), err, ERRLEN)
    return r == 0, ffi.string(err).decode("utf-8", "replace")


def instance(spec, state_dir: int, anchor: int = -1) -> int:
    """Start an instance of a runtime Spec (see cext/core.h hpcrun_instance): its C
    supervisor is PID 1 of new user and pid namespaces, detached, with the state
    directory open as descriptor 3; anchor: a pidfd whose process's end stops the
    instance (-1: none). Returns the supervisor's pid once the command runs; raises
    ContainerError (nothing left running) otherwise."""
    a = _Arena()
    s = _cspec(a, spec)
    err = ffi.new("char[]", ERRLEN)
    code = ffi.new("int *")
    pid = ffi.new("int *")
    if lib.hpcrun_instance(s, state_dir, anchor, pid, err, ERRLEN, code) < 0:
        _raise(err, code)
    return pid[0]


def serve(pid: int, in_fd: int = 0, out_fd: int = 1) -> int:
    """Join the container of process pid and answer command requests on in_fd until
    EOF (cext/core.h hpcrun_serve; hpcrun.api speaks the protocol). Never returns
    unless joining fails (raising ContainerError)."""
    err = ffi.new("char[]", ERRLEN)
    code = ffi.new("int *")
    lib.hpcrun_serve(int(pid), in_fd, out_fd, err, ERRLEN, code)
    _raise(err, code)
    return code[0]
