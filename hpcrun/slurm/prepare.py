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
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ImageError(f"cannot create the node cache {root}: {e.strerror}",
                         "set node_cache (HPCRUN_NODE_CACHE) to a writable node-local "
                         "directory") from None
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


# --- one container per node (hpcrun task --node-container) --------------------------
#
# The first task of a step on a node becomes the container (its process turns into the
# command); the node's other tasks of the step join it with setns (hpcrun._core.join),
# as pyxis's tasks join the container the first one created. One user namespace per
# node lets MPI ranks use cross-memory attach (CMA) between each other again.
#
#   <node_cache>/<node>/step-<job>.<step>.pid    "<pid> <starttime>" of the first task
#   <node_cache>/<node>/step-<job>.<step>.lock   flock: who is first
#
# The first task writes its pid, then enters. The others wait until that process has
# left the host's user namespace and exec'd the command (its command line is no longer
# the same `hpcrun task ...` as theirs), then join. If it died first (setup failed, or
# its command already ended: namespaces live only as long as a process is in them), the
# next task becomes the container instead; so short commands may get more than one
# container per node, while long-running ranks (MPI) all share one.

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


def _holder(pidfile: str) -> int | None:
    """The pid in pidfile if that very process (same start time) is still alive."""
    raw = _read(pidfile)
    if not raw:
        return None
    try:
        pid_s, start = raw.decode().split()
        pid = int(pid_s)
    except ValueError:
        return None
    if _starttime(pid) != start or not _has_namespaces(pid):
        return None
    return pid


def _has_namespaces(pid: int) -> bool:
    # An exiting process drops its namespaces (all but the user one, which belongs to
    # its credentials) before it becomes a zombie.
    try:
        os.stat(f"/proc/{pid}/ns/mnt")
        return True
    except OSError:
        return False


def _ready(pid: int) -> bool | None:
    """True: pid is in its container running the command; False: not yet; None: gone."""
    start = _starttime(pid)
    if start is None:
        return None
    try:
        if os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino:
            return False
    except OSError:
        return None
    cmd = _read(f"/proc/{pid}/cmdline")
    if cmd is None:
        return None
    return cmd != _read("/proc/self/cmdline")


def run_node_container(spec, timeout: float = 120.0) -> int:
    """Run spec's command in this node's container of the step: create it or join it."""
    import time
    from ..runtime import launch
    from ..runtime.spec import F_MONITOR, F_PID
    e = os.environ
    job, step = e.get("SLURM_JOB_ID"), e.get("SLURM_STEP_ID")
    if spec.flags & (F_PID | F_MONITOR) or not job or not step:
        # A pid namespace or a STOPSIGNAL puts a monitor process in front of the
        # command, and outside a Slurm step there is no step to share: own container.
        from .. import log
        log.info("--node-container: own container (pid namespace, STOPSIGNAL, or no step)")
        return launch.run(spec)
    root = cache_root()
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError as ex:
        raise ImageError(f"cannot create the node cache {root}: {ex.strerror}",
                         "set node_cache (HPCRUN_NODE_CACHE) to a writable node-local "
                         "directory") from None
    base = os.path.join(root, f"step-{job}.{step}")
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(base + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            pid = _holder(base + ".pid")
            if pid is None:
                tmp = f"{base}.pid.{os.getpid()}"
                with open(tmp, "w") as f:
                    f.write(f"{os.getpid()} {_starttime(os.getpid())}\n")
                os.rename(tmp, base + ".pid")
        finally:
            os.close(fd)
        if pid is None:
            return launch.run(spec)          # the first task: become the container
        while True:
            r = _ready(pid)
            if r or r is None or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        if r:
            from .. import _core
            from ..errors import HpcrunError
            start = _starttime(pid)
            try:
                return _core.join(pid, spec.argv, spec.env, spec.workdir)
            except HpcrunError:
                if _starttime(pid) == start and _has_namespaces(pid):
                    raise                    # it is still there: a real failure
                continue                     # its command ended under us: start over
        if r is False:
            from .. import log
            log.warning(f"--node-container: process {pid} did not start the container "
                        f"within {timeout:.0f} s; this task gets its own")
            return launch.run(spec)
        # The first task died before its container was up: try again (maybe be first).
        time.sleep(0.002)
