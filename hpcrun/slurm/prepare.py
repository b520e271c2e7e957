"""Once-per-node image preparation for the tasks of a Slurm step.

Every task of a step runs ``hpcrun task IMAGE -- CMD``. An image that is a squashfs
file must be unpacked before the runtime can use it (FUSE is often not allowed on
compute nodes, and a per-task mount would be paid once per task). Here the first task
on a node unpacks it into a node-local cache while holding an flock; the other tasks
of the node block on the same lock, then find the finished directory and reuse it.

Layout, under the ``node_cache`` setting (default ``/var/tmp/hpcrun-<uid>/nodecache``,
node-local storage, never a shared filesystem)::

    <node_cache>/<node>/prepare.log        one line per preparation (tests count them)
    <node_cache>/<node>/sq-<key>.lock      the flock the tasks of the node queue on
    <node_cache>/<node>/sq-<key>/          the unpacked image, appears by atomic rename

``<node>`` is Slurm's node name (``SLURMD_NODENAME``) or the host name: on a real
cluster it is redundant, on the one-machine local cluster (whose nodes share a
filesystem) it keeps each node's cache apart. ``<key>`` is the image file's identity
(device, inode, size, mtime), so a replaced file is prepared again while the hot path
never reads the image's contents.

A directory image needs nothing. ``hpcrun task`` resolves an image name through the
runtime (hpcrun.runtime.image.resolve) and gives a squashfs file, named or not, to
unpack_once(). This module is on the per-task hot path: it imports only os and fcntl
at module level.
"""
from __future__ import annotations

import fcntl
import os

from ..errors import ImageError

LOG_NAME = "prepare.log"


def node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or os.uname().nodename


def _no_config_files() -> bool:
    """True when no hpcrun configuration file exists (the locations of hpcrun.config):
    then node_cache is its default and the config module (dataclasses, re: milliseconds
    per task) need not be imported."""
    sysdir = os.environ.get("HPCRUN_SYSCONFDIR", "/etc/hpcrun")
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return not any(os.path.exists(p) for p in (
        os.path.join(sysdir, "hpcrun.conf"), os.path.join(sysdir, "conf.d"),
        os.path.join(xdg, "hpcrun", "hpcrun.conf")))


def _make_cache_root(root: str) -> None:
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ImageError(f"cannot create the node cache {root}: {e.strerror}",
                         "set node_cache (HPCRUN_NODE_CACHE) to a writable node-local "
                         "directory") from None


def cache_root() -> str:
    """The node-local cache of this node (node_cache setting, then the node's name)."""
    base = os.environ.get("HPCRUN_NODE_CACHE")
    if not base:
        if _no_config_files():
            base = os.path.join("/var/tmp", f"hpcrun-{os.getuid()}", "nodecache")
        else:
            from .. import config
            base = str(config.get("node_cache"))
    return os.path.join(base, node_name())


def _key(st: os.stat_result) -> str:
    # The file's identity, no hashing (hashlib costs milliseconds to import per task).
    return f"sq-{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def unpack_once(path: str, st: os.stat_result | None = None) -> str:
    """The unpacked copy of squashfs file `path` on this node, made by the first caller
    (under an flock; the others wait here) and logged in prepare.log."""
    if st is None:
        st = os.stat(path)
    root = cache_root()
    key = _key(st)
    dest = os.path.join(root, key)
    if os.path.isdir(dest):             # fast path: another task (or job) prepared it
        return dest
    _make_cache_root(root)
    fd = os.open(dest + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the first task prepares, the others wait here
        if os.path.isdir(dest):
            return dest
        seconds = _unpack(path, dest)
        _log(root, path, dest, seconds)
        return dest
    finally:
        os.close(fd)                     # closing releases the lock


def _unpack(path: str, dest: str) -> float:
    """Unpack the squashfs file into dest atomically; return the seconds it took."""
    import time
    from .. import proc
    # We hold the lock: leftovers of a task killed while unpacking are ours to remove.
    parent = os.path.dirname(dest)
    stem = os.path.basename(dest) + ".tmp-"
    for name in os.listdir(parent):
        if name.startswith(stem):
            _rmtree(os.path.join(parent, name))
    tmp = f"{dest}.tmp-{os.getpid()}"
    t0 = time.monotonic()
    # -no-xattrs: an unprivileged user cannot set security.* xattrs. Exit status 2 is
    # unsquashfs's "non-fatal errors": device nodes that only root may create, which a
    # rootless container cannot use anyway. Status 1 (corrupt or truncated data) fails;
    # never -ignore-errors, which would turn corruption into a partial image.
    try:
        cp = proc.run(["unsquashfs", "-no-progress", "-quiet", "-no-xattrs", "-d", tmp, path],
                      check=False)
        if cp.returncode not in (0, 2) or not os.path.isdir(tmp):
            err = (cp.stderr or "").strip().splitlines()
            raise ImageError(f"cannot unpack squashfs image {path}: "
                             f"{err[-1] if err else f'unsquashfs exit status {cp.returncode}'}",
                             f"the file may be truncated or corrupt; check it with "
                             f"'unsquashfs -s {path}' and copy it again")
    except BaseException:
        _rmtree(tmp)
        raise
    os.rename(tmp, dest)                 # atomic: the directory is complete or absent
    return time.monotonic() - t0


def _rmtree(p: str) -> None:
    import shutil

    def onerror(func, path, exc):        # unpacked read-only dirs: make writable, retry
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass
    shutil.rmtree(p, onerror=onerror)


def _log(root: str, path: str, dest: str, seconds: float) -> None:
    import time
    e = os.environ
    line = (f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} node={node_name()} "
            f"job={e.get('SLURM_JOB_ID', '-')} step={e.get('SLURM_STEP_ID', '-')} "
            f"task={e.get('SLURM_PROCID', '-')} pid={os.getpid()} "
            f"seconds={seconds:.3f} image={path} dest={dest}\n")
    # O_APPEND writes of one short line are atomic with respect to each other.
    fd = os.open(os.path.join(root, LOG_NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def log_lines(root: str | None = None) -> list[str]:
    """The preparation log of this node (or of the given node cache directory)."""
    try:
        with open(os.path.join(root or cache_root(), LOG_NAME)) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _tmpfs(environ) -> str:
    """Slurm's TmpFS for this node (slurm.conf; %n/%h expanded), default /tmp."""
    conf = environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    value = "/tmp"
    try:
        with open(conf) as f:
            for line in f:
                k, sep, v = line.strip().partition("=")
                if sep and k.strip().lower() == "tmpfs":
                    value = v.split("#", 1)[0].strip()
    except OSError:
        pass   # configless Slurm: the default
    node = environ.get("SLURMD_NODENAME") or os.uname().nodename
    return value.replace("%n", node).replace("%h", os.uname().nodename)


def slurm_binds(environ=None) -> list:
    """`-v` options a task of a PMIx step needs: Slurm's PMIx directories, same paths.

    Like enroot's 50-slurm-pmi hook. The PMIx server publishes its rendezvous files in
    PMIX_SERVER_TMPDIR, and gives the clients a per-step directory under TmpFS
    (spmix_appdir_<uid>_<job>.<step>) where Open MPI keeps its session files; both must
    be visible at the same paths inside the container. Nothing for a non-PMIx step.
    """
    environ = os.environ if environ is None else environ
    if "PMIX_NAMESPACE" not in environ and "PMIX_SERVER_TMPDIR" not in environ:
        return []
    dirs = []
    srv = environ.get("PMIX_SERVER_TMPDIR", "").rstrip("/")
    if srv:
        dirs.append(srv)
    job, step = environ.get("SLURM_JOB_ID"), environ.get("SLURM_STEP_ID")
    if job and step:
        dirs.append(os.path.join(_tmpfs(environ),
                                 f"spmix_appdir_{os.getuid()}_{job}.{step}"))
    out = []
    for d in dirs:
        if os.path.isdir(d):
            out += ["-v", f"{d}:{d}"]
    return out


# --- one container per node and step (hpcrun task --node-container, hpcrun-task) ---
#
# The tasks of a step on a node share one container, as pyxis's tasks join the
# container its first task created (one user namespace per node also lets MPI ranks use
# cross-memory attach between each other). A namespace lives only while a process is
# in it, and a task's command may end at once (`true`), so the container is held by a
# *keeper*: a fork of the first task that enters the container and then only waits,
# until the step's slurmstepd (the first task's parent) is gone, or a signal ends it.
#
#   <node_cache>/<node>/step-<job>.<step>.lock   flock: who makes the keeper
#   <node_cache>/<node>/step-<job>.<step>.plan   how a task joins it (a sh fragment)
#
# The plan is read by bin/hpcrun-task, the per-task front end srun starts: a POSIX sh
# script that sources the plan, checks that it is this step's and that the keeper is
# alive (pid and start time), applies the fixed environment additions and execs
# `nsenter --target KEEPER ... -- CMD`: no Python start-up in the task. Anything it
# cannot do (no plan yet, a stale one, other options, no nsenter) it hands to
# `hpcrun task --node-container`, which comes here, makes the keeper and the plan under
# the lock, and joins through the C core (hpcrun._core.join).
#
# The keeper enters the container with the runtime's own hpcrun_enter: it asks it to
# run a command that does not exist, so the C core builds the whole container (user
# namespace, mounts, pivot_root, working directory) and fails only at execve; the
# keeper, now inside, reports and waits. It holds no file of the task (stdio on
# /dev/null, every other descriptor closed), so srun never waits for it. When the step
# is over (or a signal ends it) it removes the plan and the lock, through a descriptor of
# the node cache directory it kept.

PLAN_VERSION = "1"
_KEEPER_ARGV0 = "/.hpcrun-keeper-holds-this-container"
# Namespaces a task joins, by spec flag (nsenter option, always --user --mount).
_JOINABLE = (("ipc", 0x08), ("net", 0x10), ("uts", 0x20))


def shareable(spec) -> bool:
    """Whether the tasks of a step can share spec's container through a keeper: not with
    a pid namespace or a STOPSIGNAL (a monitor process stands in front of the command)
    nor a FUSE-mounted squashfs (its server belongs to one process)."""
    from ..runtime.spec import F_MONITOR, F_PID, F_SQUASH
    return not spec.flags & (F_PID | F_MONITOR | F_SQUASH)


def plan_key(args) -> str:
    """What a plan is valid for: the task's options and IMAGE (the words before `--`,
    without `task` and `--node-container`), each ended by a newline. bin/hpcrun-task
    builds the same string from its own arguments."""
    return "".join(a + "\n" for a in args)


_MARK = object()


class _Marking(dict):
    """A host environment that answers every name it has with _MARK, so that the env
    policy's own parser tells which settings copy the task's value (NAME alone)."""

    def __init__(self, host):
        super().__init__()
        self.host = host

    def __contains__(self, name):
        return name in self.host

    def __getitem__(self, name):
        return _MARK


def env_additions(image_env, env_files, assigns, host) -> tuple:
    """The env policy split into what is the same for every task of the step and what is
    each task's own: (fixed {NAME: VALUE} in order, names taken from the task's own
    environment). See hpcrun.runtime.env.compose: host < image ENV < --env-file < -e."""
    from ..runtime import env as envpolicy
    fixed: dict = {}
    own: set = set()
    for item in image_env or ():
        name, sep, value = item.partition("=")
        if name and sep:
            fixed[name] = value
    marking = _Marking(host)
    pairs = []
    for path in env_files:
        pairs += envpolicy.read_env_file(path, marking)
    for arg in assigns:
        kv = envpolicy.parse_assign(arg, marking, "-e")
        if kv:
            pairs.append(kv)
    for name, value in pairs:
        if value is _MARK:          # NAME alone: each task's own value
            fixed.pop(name, None)
            own.add(name)
        else:
            fixed[name] = value
            own.discard(name)
    return fixed, own


def _sh_quote(s: str) -> str:
    # shlex.quote's rule, without importing re on the task's path.
    return "'" + s.replace("'", "'\"'\"'") + "'"


def _which(name: str) -> str:
    for d in os.environ.get("PATH", "").split(":") + ["/usr/bin", "/bin"]:
        p = os.path.join(d or ".", name)
        if os.access(p, os.X_OK) and not os.path.isdir(p):
            return os.path.abspath(p)
    return ""


def _sh_name(name: str) -> bool:
    return bool(name) and (name[0].isalpha() or name[0] == "_") and \
        name.replace("_", "a").isalnum() and name.isascii()


def render_plan(key: str, pid: int, start: str, nsenter: str, flags: int, fixed: dict,
                own: set, cleanenv: bool, host, entry=()) -> str:
    """The plan file's text: sh that bin/hpcrun-task sources (see the comment above)."""
    from ..runtime import env as envpolicy
    q = _sh_quote
    ns = ["--user", "--mount"] + [f"--{n}" for n, bit in _JOINABLE if flags & bit]
    lines = [f"# hpcrun node-container plan {PLAN_VERSION} {pid} {start} {key.encode().hex()}",
             f"hp_version={PLAN_VERSION}", f"hp_key={q(key)}", f"hp_pid={pid}",
             f"hp_start={start}", f"hp_nsenter={q(nsenter)}", "hp_env() {"]
    odd = []
    if cleanenv:
        # The first task's variable names stand for every task's (Slurm gives each task
        # the same names; only SLURM_* values differ, and those always pass).
        drop = sorted(n for n in host if not n.startswith(envpolicy.ALWAYS)
                      and n not in own and n not in fixed)
        for n in drop:
            (lines.append(f"    unset {n}") if _sh_name(n) else odd.append(n))
    for n, v in fixed.items():
        if _sh_name(n):
            lines.append(f"    export {n}={q(v)}")
        else:
            odd.append(n)
    if "PATH" not in fixed:
        lines.append(f"    [ \"${{PATH+x}}\" ] || export PATH={q(envpolicy.DEFAULT_PATH)}")
    lines.append("}")
    env_cmd = ""
    if odd:
        # Names sh cannot hold (dash drops them): set or removed by env(1) instead.
        sets = [q(f"{n}={fixed[n]}") for n in odd if n in fixed]
        unsets = [f"-u {q(n)}" for n in odd if n not in fixed]
        env_cmd = "env " + " ".join(unsets + sets) + " "
    lines.append("hp_join() { exec " + env_cmd + f"\"$hp_nsenter\" --target {pid} "
                 + " ".join(ns) + " --root --wd --preserve-credentials -- "
                 + "".join(q(a) + " " for a in entry) + "\"$@\"; }")
    return "\n".join(lines) + "\n"


def read_plan_head(path: str):
    """(pid, start, key) from a plan's first line, or None."""
    raw = _read(path)
    if not raw:
        return None
    head = raw.split(b"\n", 1)[0].decode(errors="replace").split()
    if len(head) != 8 or head[:4] != ["#", "hpcrun", "node-container", "plan"] \
            or head[4] != PLAN_VERSION or not head[5].isdigit():
        return None
    try:
        key = bytes.fromhex(head[7]).decode()
    except ValueError:
        return None
    return int(head[5]), head[6], key


def _starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return fields[19] if len(fields) > 19 and fields[0] not in "ZX" else None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _alive(pid: int, start: str) -> bool:
    """That very process (same start time) is alive and still has its namespaces."""
    if _starttime(pid) != start:
        return False
    try:
        os.stat(f"/proc/{pid}/ns/mnt")   # an exiting process drops them first
        return True
    except OSError:
        return False


def task_log(what: str) -> None:
    """With HPCRUN_TASK_LOG=1: one line per task in <node_cache>/<node>/tasks.log, how
    it started (`keeper`/`join` from Python here, `fast` from bin/hpcrun-task)."""
    if os.environ.get("HPCRUN_TASK_LOG") != "1":
        return
    e = os.environ
    line = (f"{what} job={e.get('SLURM_JOB_ID', '-')} step={e.get('SLURM_STEP_ID', '-')} "
            f"task={e.get('SLURM_PROCID', '-')} pid={os.getpid()}\n")
    try:
        fd = os.open(os.path.join(cache_root(), "tasks.log"),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _start_keeper(spec, watch: int, root: str, base: str) -> int:
    """Fork the keeper; it enters spec's container and stays until process `watch`
    (the step's slurmstepd) is gone or a signal ends it, then removes the step's plan
    and lock (`base`.plan/.lock in directory `root`). Returns its pid once it is inside."""
    import select  # noqa: F401  (loaded before the keeper leaves the host's filesystem)
    import signal
    from .. import _core
    from ..errors import ContainerError, HpcrunError
    try:
        pidfd = os.pidfd_open(watch)
    except (AttributeError, OSError):
        pidfd = -1                            # Linux < 5.3: poll instead
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the keeper
        dirfd = -1
        try:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, _leave)
            os.close(r)
            # The node cache stays reachable through this descriptor once the keeper
            # is inside the container.
            dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            keep = sorted({w, pidfd, dirfd} - {-1})
            lo = 3
            for fd in keep + [1 << 20]:
                if fd > lo:
                    os.closerange(lo, fd)
                lo = fd + 1
            try:
                _core.enter(spec.replace(argv=(_KEEPER_ARGV0,)))
            except ContainerError as ex:
                if ex.code != 127:            # it failed before the exec: say why
                    os.write(w, f"E {ex}".encode(errors="replace"))
                    os._exit(1)
            os.write(w, b"K")
            os.close(w)
            _wait_gone(watch, pidfd)
        except BaseException:
            pass
        if dirfd >= 0:
            _remove_plan(dirfd, base)
        os._exit(0)
    os.close(w)
    try:
        msg = b""
        while True:
            b = os.read(r, 4096)
            if not b:
                break
            msg += b
            if msg == b"K":
                break
    finally:
        os.close(r)
        if pidfd >= 0:
            os.close(pidfd)
    if msg != b"K":
        os.waitpid(pid, 0)
        raise HpcrunError(msg[2:].decode(errors="replace") if msg.startswith(b"E ")
                          else "the node container's keeper failed to start")
    return pid


def _leave(sig, frame):
    raise SystemExit(0)


def _remove_plan(dirfd: int, base: str) -> None:
    """The step is over: remove its plan, if it is still this keeper's, and its lock."""
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        fd = os.open(base + ".plan", os.O_RDONLY, dir_fd=dirfd)
        try:
            head = os.read(fd, 256).split(b"\n", 1)[0].split()
        finally:
            os.close(fd)
        if len(head) > 5 and head[5] == str(os.getpid()).encode():
            os.unlink(base + ".plan", dir_fd=dirfd)
            os.unlink(base + ".lock", dir_fd=dirfd)
    except OSError:
        pass


def _wait_gone(pid: int, pidfd: int) -> None:
    import select
    import time
    if pidfd >= 0:
        select.select([pidfd], [], [])
        return
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(1.0)


def run_node_container(spec, key: str, fixed: dict, own: set, cleanenv: bool,
                       entry=(), lockfd: int = -1) -> int:
    """Run spec's command in this node's container of the step: make the keeper and the
    plan if there is none (or a stale one), then join. `lockfd`: the step's lock, held
    already (bin/hpcrun-task took it); closed here."""
    from ..runtime import launch
    e = os.environ
    job, step = e.get("SLURM_JOB_ID"), e.get("SLURM_STEP_ID")
    if not shareable(spec) or not job or not step:
        if lockfd >= 0:
            os.close(lockfd)
        # Outside a Slurm step there is no step to share.
        from .. import log
        log.info("--node-container: own container (pid namespace, STOPSIGNAL, or no step)")
        return launch.run(spec)
    root = cache_root()
    _make_cache_root(root)
    base = os.path.join(root, f"step-{job}.{step}")
    made = False
    fd = lockfd
    try:
        if fd < 0:
            fd = os.open(base + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        head = read_plan_head(base + ".plan")
        if head and head[2] != key:
            # Another program of the step (srun --multi-prog) planned other options.
            from .. import log
            log.info("--node-container: this task's options differ from the step's "
                     "container; own container")
            os.close(fd)
            fd = -1
            return launch.run(spec)
        if head and _alive(head[0], head[1]):
            pid = head[0]
        else:
            pid = _start_keeper(spec, os.getppid(), root, os.path.basename(base))
            made = True
            text = render_plan(key, pid, _starttime(pid) or "0", _which("nsenter"),
                               spec.flags, fixed, own, cleanenv, e, entry)
            from ..fsutil import atomic_write
            atomic_write(base + ".plan", text)
    finally:
        if fd >= 0:
            os.close(fd)
    task_log("keeper" if made else "join")
    from .. import _core
    return _core.join(pid, spec.argv, spec.env, spec.workdir)
