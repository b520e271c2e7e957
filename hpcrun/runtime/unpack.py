"""Unpack a squashfs image once into a private node-local cache, and reuse the copy.

The one implementation behind `hpcrun run --unpack` (cache: HPCRUN_UNPACK_CACHE, default
/var/tmp/hpcrun-<uid>/unpack) and the tasks of a Slurm step (hpcrun.slurm.prepare, cache:
node_cache/<node>; cext/task.c looks for the same entry names). Layout of a cache::

    <cache>/sq-<key>/          the unpacked tree, appears by atomic rename (complete or absent)
    <cache>/sq-<key>.lock      the flock that racing callers queue on
    <cache>/sq-<key>.tmp-<pid> a tree being unpacked (removed by the next lock holder)

<key> is the squashfs file's identity (device, inode, size, mtime in ns, all hex), so a
replaced or rewritten file is unpacked again while the fast path never reads the file.
Anyone who can stat the file can compute the key, which is why the cache directory must
be private (hpcrun.fsutil.private_dir: no one else can create an entry in it) and an
existing entry is used only if it is a real directory owned by the caller.

unsquashfs's exit status: 0 success; 2 "non-fatal errors": what an unprivileged user
cannot create (device nodes, some xattrs), which a rootless container could not use
anyway, so the tree is used and the errors are logged as a warning; 1 (corrupt or
truncated data) fails, and -ignore-errors is never passed (it would turn corruption into a
partial image). This module is on the per-task hot path: os and fcntl only at import
(no typing: milliseconds).
"""
from __future__ import annotations

import fcntl
import os

from hpcrun.errors import ImageError
from hpcrun.fsutil import private_dir, private_entry


def key(st: os.stat_result) -> str:
    """The cache entry name of a squashfs file (no hashing: hashlib costs milliseconds)."""
    return f"sq-{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def unpack_once(path: str, cache: str, *, what: str, setting: str,
                st: os.stat_result | None = None, on_unpacked=None) -> str:
    """The unpacked copy of squashfs file PATH in CACHE (a private directory, made if
    missing; WHAT and SETTING name it in errors), made by the first caller while the
    others wait on its lock. ON_UNPACKED(dest, seconds) runs after an unpacking, under
    the lock."""
    if st is None:
        try:
            st = os.stat(path)
        except OSError as e:
            raise ImageError(f"cannot read squashfs image {path}: {e.strerror}") from None
    private_dir(cache, what, setting)
    dest = os.path.join(cache, key(st))
    if private_entry(dest, what, setting):     # fast path: unpacked before
        return dest
    fd = os.open(dest + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)          # the first caller unpacks, the others wait
        if private_entry(dest, what, setting):
            return dest
        seconds = _unpack(path, dest)
        if on_unpacked is not None:
            on_unpacked(dest, seconds)
        return dest
    finally:
        os.close(fd)                            # closing releases the lock


def _unpack(path: str, dest: str) -> float:
    """Unpack into dest atomically (the caller holds dest's lock); the seconds it took."""
    import time

    from hpcrun import log, proc
    # We hold the lock: leftovers of a caller killed while unpacking are ours to remove.
    parent, stem = os.path.dirname(dest), os.path.basename(dest) + ".tmp-"
    for name in os.listdir(parent):
        if name.startswith(stem):
            rmtree(os.path.join(parent, name))
    tmp = f"{dest}.tmp-{os.getpid()}"
    t0 = time.monotonic()
    try:
        cp = proc.run(["unsquashfs", "-no-progress", "-quiet", "-no-xattrs", "-d", tmp, path],
                      check=False)
        err = (cp.stderr or "").strip().splitlines()
        if cp.returncode not in (0, 2) or not os.path.isdir(tmp):
            raise ImageError(f"cannot unpack squashfs image {path}: "
                             f"{err[-1] if err else f'unsquashfs exit status {cp.returncode}'}",
                             f"the file may be truncated or corrupt; check it with "
                             f"'unsquashfs -s {path}' and copy it again")
        if cp.returncode == 2:
            log.warning(f"unpacking {path}: some entries could not be created as an "
                        f"unprivileged user (device nodes, xattrs): "
                        f"{err[-1] if err else 'unsquashfs exit status 2'}")
    except BaseException:
        rmtree(tmp)
        raise
    os.rename(tmp, dest)                        # atomic: the tree is complete or absent
    return time.monotonic() - t0


def rmtree(p: str) -> None:
    """Remove an unpacked tree, read-only directories included."""
    import shutil

    def onerror(func, path, exc):               # unpacked read-only dirs: make writable, retry
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            func(path)
        except OSError:
            pass
    shutil.rmtree(p, onerror=onerror)
