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
filesystem) it keeps each node's cache apart. The unpacking itself, the key (the image
file's identity) and the safety rules (a private directory, entries owned by the caller)
are hpcrun.runtime.unpack's, shared with `hpcrun run --unpack`.

A directory image needs nothing. ``hpcrun task`` resolves an image name through the
runtime (hpcrun.runtime.image.resolve) and gives a squashfs file, named or not, to
unpack_once(). This module is on the per-task hot path: it imports only os at module
level.
"""
from __future__ import annotations

import os

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


def cache_base() -> str:
    """The node_cache setting (HPCRUN_NODE_CACHE wins): one directory per node below."""
    base = os.environ.get("HPCRUN_NODE_CACHE")
    if not base:
        if _no_config_files():
            base = os.path.join("/var/tmp", f"hpcrun-{os.getuid()}", "nodecache")
        else:
            from .. import config
            base = str(config.get("node_cache"))
    return base


def cache_root() -> str:
    """The node-local cache of this node (node_cache setting, then the node's name)."""
    return os.path.join(cache_base(), node_name())


NODE_CACHE_SETTING = "node_cache (HPCRUN_NODE_CACHE)"


def unpack_once(path: str, st: os.stat_result | None = None) -> str:
    """The unpacked copy of squashfs file `path` on this node, made by the first caller
    (under an flock; the others wait) and logged in prepare.log: hpcrun.runtime.unpack
    in this node's private cache directory."""
    from ..runtime import unpack
    root = cache_root()
    return unpack.unpack_once(path, root, what="the node cache", setting=NODE_CACHE_SETTING,
                              st=st, on_unpacked=lambda dest, s: _log(root, path, dest, s))


def _log(root: str, path: str, dest: str, seconds: float) -> None:
    import time
    e = os.environ
    line = (f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} node={node_name()} "
            f"job={e.get('SLURM_JOB_ID', '-')} step={e.get('SLURM_STEP_ID', '-')} "
            f"task={e.get('SLURM_PROCID', '-')} pid={os.getpid()} "
            f"seconds={seconds:.3f} image={path} dest={dest}\n")
    # O_APPEND writes of one short line are atomic with respect to each other.
    fd = os.open(os.path.join(root, LOG_NAME),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _tmpfs(environ) -> str:
    """Slurm's TmpFS for this node (slurm.conf; %n/%h expanded), default /tmp."""
    value = tmpfs_pattern(environ)
    node = environ.get("SLURMD_NODENAME") or os.uname().nodename
    return value.replace("%n", node).replace("%h", os.uname().nodename)


def tmpfs_pattern(environ) -> str:
    """Slurm's TmpFS setting as written in slurm.conf (%n, %h unexpanded), or /tmp."""
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
    return value


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


# --- one container per node and step: cext/task.c, planned by hpcrun.slurm.stepplan ---
#
# The tasks of a step on a node share one container, as pyxis's tasks join the
# container its first task created (one user namespace per node also lets MPI ranks use
# cross-memory attach between each other). The C front end does it: the node's first
# task makes the container, held by a keeper process, and writes
#   <node_cache>/<node>/step-<job>.<step>.plan   (one line: keeper pid, start time, key)
# under the flock <node_cache>/<node>/step-<job>.<step>.lock; the others join it. What
# the program needs from Python is worked out once per step (stepplan), including the
# environment split below.

