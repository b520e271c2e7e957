"""File trees the store keeps: remove them (read-only ones too), measure them, and
clone them by hard links (a new image on top of its parent's unpacked tree).

A leaf module (standard library only) so that the store and the format builders can
both use it without importing each other.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import sys


# <linux/fs.h>: the flags chattr(1) sets; _IOR/_IOW of a long, though the kernel reads
# and writes an int at the start of the buffer
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


def mark_top(path: str) -> bool:
    """Mark the directory path "top of directory hierarchies" (chattr +T): ext4's Orlov
    allocator then places each directory made in it (a tree being unpacked or cloned,
    a build's work directory) in a block group with few directories, and the tree's
    own entries follow it there, instead of in path's group. That group is where the
    trees removed lately were: on an ext4 without a journal, every inode allocation
    first skips the inodes freed in the last minute or more (ext4 ialloc.c,
    recently_deleted), and after an rmi or a build's clean-up a clone's 800 mkdirs
    took 0.7 ms each instead of 0.1. False where the file system has no such flag."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        buf = fcntl.ioctl(fd, FS_IOC_GETFLAGS, bytes(8))
        flags = int.from_bytes(buf[:4], sys.byteorder)
        if not flags & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, (flags | FS_TOPDIR_FL).to_bytes(4, sys.byteorder)
                        + bytes(4))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def rmtree(path: str) -> None:
    """shutil.rmtree that also removes read-only directories the caller owns."""

    def onerror(func, p, exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                if func in (os.open, os.scandir) and os.access(p, os.R_OK | os.X_OK):
                    # a directory we could not list (an overlay's work/ is mode 000):
                    # now we can, and its parent is removed after it
                    rmtree(p)
                    return
            func(p)
        except FileNotFoundError:
            pass
        except OSError:
            if func is os.rmdir:
                shutil.rmtree(p, ignore_errors=True)
    if os.path.isdir(path) and not os.path.islink(path):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=onerror)
        else:
            shutil.rmtree(path, onerror=onerror)
    elif os.path.lexists(path):
        os.unlink(path)


def du(path: str) -> int:
    """Bytes of disk that removing a file or tree frees (what prune reports as
    reclaimed): a file hard-linked from outside the tree (an image cloned from its
    parent, the build cache's objects) frees nothing, so each inode counts once, and
    only when all its links are inside the tree."""
    total = 0
    seen: dict = {}
    for dp, dn, fn in os.walk(path):
        for f in fn:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dp, f))
                if st.st_nlink <= 1:
                    total += st.st_blocks * 512
                    continue
                n = seen.get(st.st_ino, 0) + 1
                seen[st.st_ino] = n
                if n == st.st_nlink:
                    total += st.st_blocks * 512
    if os.path.isfile(path):
        total += os.lstat(path).st_size
    return total


def link_clone(src: str, dst: str, skip: tuple = ()) -> list:
    """Make the new directory dst a copy of the tree src in which every non-directory
    is a hard link to src's (directories are new, with src's modes and times); the
    top-level names in `skip` are left out. Returns [(rel, kind, mtime_ns)] for every
    entry copied, kind 'd', 'f', 'l' or 'p' (what layers.Tree.seeded reads).

    Only for trees nothing writes in place (the store's unpacked images: containers
    see them read-only, writes go to an overlay's copy-up, a build's RUN has the
    base as an overlay's lower layer or works in a copy, and unpacking a layer
    replaces a file by unlink + O_EXCL create): sharing
    inodes is then safe. A file with too many links already (EMLINK) is copied. Raises
    OSError (src vanished, a full disk): the caller removes dst.
    """
    out: list = []
    dirs: list = []
    st = os.lstat(src)
    os.mkdir(dst, 0o700)
    dirs.append((dst, st.st_mode, st.st_mtime_ns))
    out.append(("", "d", st.st_mtime_ns))
    todo = [("", src, dst)]
    while todo:
        rel, s, d = todo.pop()
        with os.scandir(s) as it:
            entries = list(it)
        for e in entries:
            if not rel and e.name in skip:
                continue
            r = f"{rel}/{e.name}" if rel else e.name
            t = os.path.join(d, e.name)
            if e.is_dir(follow_symlinks=False):
                est = e.stat(follow_symlinks=False)
                os.mkdir(t, 0o700)
                dirs.append((t, est.st_mode, est.st_mtime_ns))
                out.append((r, "d", est.st_mtime_ns))
                todo.append((r, e.path, t))
                continue
            if e.is_symlink():
                kind = "l"
            elif e.is_file(follow_symlinks=False):
                kind = "f"
            elif stat.S_ISFIFO(e.stat(follow_symlinks=False).st_mode):
                kind = "p"
            else:
                continue                # sockets, devices: never in an unpacked image
            try:
                os.link(e.path, t, follow_symlinks=False)
            except OSError as ex:
                if ex.errno != errno.EMLINK:
                    raise
                shutil.copy2(e.path, t, follow_symlinks=False)
            out.append((r, kind, 0))
    # modes and times last, deepest first: a read-only directory would block its
    # children, and creating them changed the times
    for d, mode, mtime in reversed(dirs):
        os.chmod(d, stat.S_IMODE(mode))
        os.utime(d, ns=(mtime, mtime), follow_symlinks=False)
    return out
