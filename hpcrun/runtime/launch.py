"""Planning a container (options + image -> Spec) and handing it to the C core.

plan() reads the host (environment, user, cwd) but changes nothing; run() does.
"""
from __future__ import annotations

import os
import sys

from hpcrun.errors import NotFound, UsageError
from hpcrun.runtime import env as envpolicy
from hpcrun.runtime import mounts as mnt
from hpcrun.runtime.spec import (F_FAKEROOT, F_IPC, F_MONITOR, F_NET, F_NO_OVERLAY, F_PID,
                                 F_SQUASH, F_UTS, F_WRITABLE, M_CONTENT, Spec)

def stop_signal(value) -> int:
    """STOPSIGNAL: SIGTERM, TERM, 15 or SIGRTMIN+3 -> number (0: keep SIGTERM). The
    config was validated when it was read; a bad value here is still refused, never
    silently replaced by SIGTERM (hpcrun.image.ociconfig.parse_signal)."""
    if not value:
        return 0
    from hpcrun.errors import ImageError  # lazy: keeps hpcrun run's start-up small
    from hpcrun.image.ociconfig import parse_signal  # lazy: keeps hpcrun run's start-up small
    try:
        n = parse_signal(str(value))
    except ValueError as e:
        raise ImageError(f"invalid STOPSIGNAL in the image config: {e}",
                         "fix the image's StopSignal, or re-import it with "
                         "--change 'STOPSIGNAL SIGTERM'") from None
    return 0 if n == 15 else n


def _user_names(uid: int, gid: int):
    import grp  # lazy: keeps hpcrun run's start-up small
    import pwd  # lazy: keeps hpcrun run's start-up small
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = os.environ.get("USER") or f"user{os.getuid()}"
    try:
        group = grp.getgrgid(os.getgid()).gr_name
    except KeyError:
        group = name
    return name, group


def _image_user(value, rootfs):
    """The image's USER as inside (uid, gid), or None for root/unset (the caller's ids:
    a rootless container can map the caller to one id, so a non-root USER is honoured)."""
    if not value:
        return None
    user, _, group = str(value).partition(":")
    if user in ("0", "root"):
        return None
    uid = gid = None
    if user.isdigit():
        uid = int(user)
    elif rootfs:
        try:
            with open(os.path.join(rootfs, "etc/passwd")) as f:
                for line in f:
                    p = line.rstrip("\n").split(":")
                    if len(p) > 3 and p[0] == user and p[2].isdigit():
                        uid, gid = int(p[2]), int(p[3]) if p[3].isdigit() else None
                        break
        except OSError:
            pass
    if uid is None:
        return None
    if group.isdigit():
        gid = int(group)
    return uid, (gid if gid is not None else uid)


def _argv(value) -> list:
    """A config's Entrypoint/Cmd: a list; one string is the one-element list, as in
    Docker's image config (hpcrun.image.ociconfig makes it a list when it is read)."""
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def plan(opts, image, environ=None) -> Spec:
    environ = dict(os.environ if environ is None else environ)
    conf = image.config or {}
    flags = 0

    # -- command: ENTRYPOINT + CMD, Docker's rules
    entry = _argv(conf.get("Entrypoint"))
    cmd = _argv(conf.get("Cmd"))
    if opts.entrypoint is not None:
        entry = [opts.entrypoint] if opts.entrypoint else []
        cmd = []
    if opts.command:
        cmd = list(opts.command)
    argv = entry + cmd
    if not argv:
        raise UsageError("no command given",
                         "give a command after the image: hpcrun run IMAGE -- CMD [ARG...]")

    # -- identity
    if opts.fakeroot:
        flags |= F_FAKEROOT
        uid = gid = 0
    else:
        ids = _image_user(conf.get("User"), image.path if image.kind == "dir" else None)
        uid, gid = ids if ids else (os.getuid(), os.getgid())
    name, group = _user_names(uid, gid)
    home = environ.get("HOME") or "/"
    if opts.fakeroot:
        passwd = "root:x:0:0:root:/root:/bin/sh"
        group_line = "root:x:0:"
    else:
        passwd = f"{name}:x:{uid}:{gid}:{name}:{home}:/bin/sh"
        group_line = f"{group}:x:{gid}:"

    # -- namespaces
    if opts.pid == "private":
        flags |= F_PID
    if opts.ipc == "private":
        flags |= F_IPC
    if opts.network == "none":
        flags |= F_NET
    net_pid = net_start = 0
    if opts.network.startswith("container:"):
        # Docker's rule: the network (and its host name) is the other container's.
        if opts.hostname:
            raise UsageError(f"--hostname conflicts with --network {opts.network}",
                             "the container shares the instance's network; drop --hostname "
                             "(Docker refuses it too)")
        net_pid, net_start = net_instance(opts.network[len("container:"):], environ)
    if opts.hostname:
        flags |= F_UTS
    if opts.writable_tmpfs:
        flags |= F_WRITABLE
    if environ.get("HPCRUN_NO_OVERLAY") == "1":
        flags |= F_NO_OVERLAY     # where overlayfs misbehaves: the underlay instead
    squashfuse = None
    if image.kind == "squashfs":
        flags |= F_SQUASH
        squashfuse = _squashfuse()

    # -- mounts
    mounts = mnt.defaults() + mnt.user_files(passwd, group_line)
    gpu_env, reads = (), ()
    if opts.gpus or opts.devices or opts.nv:
        from hpcrun.runtime import gpu     # only with devices: off the plain run's path
        inj = gpu.plan(opts, image, environ, uid if not opts.fakeroot else os.getuid(),
                       gid if not opts.fakeroot else os.getgid(), squashfuse)
        i = next(k for k, m in enumerate(mounts) if m.dst == "/dev")
        mounts[i:i + 1] = inj.dev                   # the container's own /dev
        mounts += inj.mounts
        gpu_env, reads = tuple(inj.env), tuple(inj.reads)
    if opts.ipc == "private":
        mounts.append(mnt.private_shm())
    if opts.home and home not in ("/", "") and os.path.isdir(home):
        mounts.append(mnt.bind(home, os.path.normpath(home), what="home directory"))
    if opts.scratch:
        src = environ.get("SLURM_TMPDIR") or environ.get("TMPDIR")
        if not src:
            raise UsageError("--scratch: neither SLURM_TMPDIR nor TMPDIR is set",
                             "set TMPDIR to a node-local directory, or drop --scratch")
        mounts.append(mnt.bind(src, "/scratch", what="scratch directory"))
    mounts += mnt.sort_binds([mnt.parse_volume(v) for v in opts.volumes])

    # -- environment
    env = envpolicy.compose(environ, list(conf.get("Env") or ()) + list(gpu_env),
                            opts.env_files, opts.env, opts.cleanenv)

    # -- working directory: -w, else WORKDIR, else the caller's cwd if visible, else /
    if opts.workdir:
        if not opts.workdir.startswith("/"):
            raise UsageError(f"-w {opts.workdir!r} is not an absolute path",
                             "give the working directory inside the container as /path")
        workdir, required = opts.workdir, True
    elif conf.get("WorkingDir"):
        workdir, required = "/" + str(conf["WorkingDir"]).lstrip("/"), False
    else:
        workdir, required = _visible_cwd(mounts), False

    stopsig = stop_signal(conf.get("StopSignal"))
    if stopsig and not (flags & F_PID):
        flags |= F_MONITOR      # translating SIGTERM needs a process in between

    # -- resource limits (imported only when asked for: the hot path stays small)
    limits = None
    if opts.cpus or opts.cpuset_cpus or opts.memory or opts.memory_swap or opts.pids_limit:
        from hpcrun import cgroups  # lazy: keeps hpcrun run's start-up small
        limits = cgroups.plan(opts, environ)
        mounts += cgroups.view_mounts(limits)
        if opts.limits_view:
            mounts += cgroups.content_mounts(limits)
        if limits.memory or limits.memory_swap or limits.cgroups or limits.pids:
            flags |= F_MONITOR  # it watches, reports the OOM and removes the cgroup
            if net_pid:
                # The watchdog and RLIMIT_NPROC count the processes of the container's
                # user namespace, which is the instance's here; cgroup tiers: not done.
                raise UsageError(f"--network {opts.network} can't be combined with "
                                 "--memory, --memory-swap or --pids-limit",
                                 "this container runs in the instance's user namespace; "
                                 "give the limits to the instance (hpcrun instance start "
                                 "--memory ...), or use --cpus/--cpuset-cpus")
    if environ.get("SLURM_JOB_ID") and (limits is None or not limits.cgroups):
        from hpcrun import cgroups  # a few /proc reads: the job's limits, seen inside
        mounts += cgroups.job_view_mounts(environ)
    return Spec(image=image.path, squashfuse=squashfuse, flags=flags, hostname=opts.hostname,
                uid=uid, gid=gid, mounts=tuple(mounts), workdir=workdir,
                workdir_required=required, argv=tuple(argv), env=tuple(env),
                stop_signal=stopsig, preserve_fds=preserve_fds(opts.preserve_fds),
                limits=limits, extra_env=gpu_env, reads=reads, net_pid=net_pid,
                net_start=net_start)


def net_instance(name: str, environ) -> tuple:
    """--network container:NAME: (pid, start time) of the supervisor of the caller's
    running instance NAME (hpcrun.instance.state; the C core checks both again when it
    joins). Under Slurm, names are the job's and the instance must be on this node."""
    from hpcrun.errors import HpcrunError  # lazy: only --network container:N
    from hpcrun.instance import state  # lazy: only --network container:N
    try:
        r = state.get_running(name)
        start = state.start_time(r.pid)
        if start is None or not start.isdigit():
            raise state.InstanceError(f"instance {name} is gone", "see 'hpcrun ps'")
    except HpcrunError as e:
        hint = e.hint
        if environ.get("SLURM_JOB_ID"):
            node = environ.get("SLURMD_NODENAME") or os.uname().nodename
            hint = (f"under Slurm the instance must run on every node of the step, in "
                    f"this job (none here, on {node}): start it with 'srun "
                    f"--ntasks-per-node=1 hpcrun instance start --name {name} ...' first")
        raise type(e)(f"--network container:{name}: {e.what}", hint) from None
    return r.pid, int(start)


def preserve_fds(value) -> int:
    """--preserve-fds N (Docker's, podman's): descriptors 3 .. 2+N stay open in the
    command; the C core closes every other one above 2 at exec, but PMI_FD's."""
    if value is None or value == "":
        return 0
    v = str(value)
    if not v.isdigit() or int(v) > 256:
        raise UsageError(f"--preserve-fds {value!r} is not a number of descriptors "
                         "from 0 to 256",
                         "give N >= 0: descriptors 3 .. 2+N are kept, e.g. --preserve-fds 1 "
                         "keeps descriptor 3 (hpcrun's own descriptors sit at 512 and up)")
    return int(v)


def _visible_cwd(mounts) -> str:
    """The caller's cwd as seen inside: through the bind that holds it (the longest
    source that contains it, e.g. a symlinked $HOME or -v $PWD:/work), else the same
    path (it may exist in the image; the C core falls back to / if not)."""
    try:
        cwd = os.getcwd()
    except OSError:
        return "/"
    best = None
    for m in mounts:
        if m.src and not m.flags & M_CONTENT and (cwd == m.src or cwd.startswith(m.src.rstrip("/") + "/")):
            if best is None or len(m.src) > len(best.src):
                best = m
    if best is None or best.src == "/":
        return cwd
    return (best.dst.rstrip("/") + cwd[len(best.src.rstrip("/")):]) or "/"


def _squashfuse() -> str:
    """squashfuse_ll (the low-level, inode-based server, as ch-run links) when present:
    far fewer path lookups per read than the high-level squashfuse."""
    dirs = os.environ.get("PATH", "").split(":") + ["/usr/bin", "/usr/local/bin"]
    for name in ("squashfuse_ll", "squashfuse"):
        for d in dirs:
            p = os.path.join(d or ".", name)
            if os.access(p, os.X_OK):
                return p
    raise NotFound("squashfuse is not installed, so a squashfs image can't be mounted",
                   "install squashfuse, or use --unpack to extract the image instead")


def fuse_allowed() -> bool:
    return os.access("/dev/fuse", os.R_OK | os.W_OK)


def run(spec: Spec) -> int:
    """Enter and run. Default options: never returns (the process becomes the command)."""
    from hpcrun import _core  # lazy: keeps hpcrun run's start-up small
    if os.environ.get("HPCRUN_VERBOSE", "0") not in ("", "0", "1"):
        _log_spec(spec)
    sys.stdout.flush()
    sys.stderr.flush()
    return _core.enter(spec)


def _log_spec(spec: Spec) -> None:
    """-vv: what the C core is about to do."""
    from hpcrun import log  # lazy: keeps hpcrun run's start-up small
    log.debug(f"image {spec.image} flags {spec.flags:#x} uid {spec.uid} gid {spec.gid}")
    for m in spec.mounts:
        src = "<content>" if m.flags & M_CONTENT else m.src
        log.debug(f"mount {src} -> {m.dst} flags {m.flags:#x}")
    log.debug(f"workdir {spec.workdir} ({'required' if spec.workdir_required else 'else /'})")
    log.debug("exec " + " ".join(spec.argv))
