"""The mounts a container gets: a default table (data, not a chain of ifs) plus the
user's binds. Planning only; the C core does the mounting (cext/core.c do_mounts).

Every destination the image lacks is created in a skeleton layer above the image, so
the image is never changed on disk.
"""
from __future__ import annotations

import os

from hpcrun.errors import NotFound, UsageError
from hpcrun.runtime.spec import (M_CONTENT, M_FILE, M_OPTIONAL, M_PROC, M_RDONLY, M_SYSFS,
                                 M_TMPFS, M_USERFILE, Mount)

# dst, host source, flags. Order matters: a mount comes after the one it lies in.
TABLE = (
    ("/proc", "/proc", M_PROC),            # a new procfs with --pid=private, else the host's
    ("/sys", "/sys", M_SYSFS),             # a fresh one with --network none, else the host's
    ("/dev", "/dev", 0),                   # the host's, recursively: /dev/shm (MPI shared
                                           # memory), /dev/pts, fabric and GPU device nodes
    ("/tmp", None, M_TMPFS),               # private, discarded at exit
    ("/etc/hosts", "/etc/hosts", M_FILE | M_RDONLY | M_OPTIONAL),
    ("/etc/resolv.conf", "/etc/resolv.conf", M_FILE | M_RDONLY | M_OPTIONAL),
)


def defaults() -> list:
    out = []
    for dst, src, flags in TABLE:
        if src is not None:
            src = os.path.realpath(src)   # the C core must never follow a host symlink
        out.append(Mount(src=src, dst=dst, flags=flags))
    return out


def private_shm() -> Mount:
    """--ipc=private: System V IPC gets its own namespace, POSIX shared memory (/dev/shm)
    its own tmpfs, as Docker does."""
    return Mount(dst="/dev/shm", flags=M_TMPFS)


def user_files(passwd_line: str, group_line: str) -> list:
    """/etc/passwd and /etc/group: the image's entries plus the user (read-only)."""
    return [Mount(src=passwd_line, dst="/etc/passwd", flags=M_CONTENT | M_USERFILE),
            Mount(src=group_line, dst="/etc/group", flags=M_CONTENT | M_USERFILE)]


def bind(src: str, dst: str, readonly: bool = False, what: str = "bind source") -> Mount:
    """A bind of an existing host path; a missing source is an error, never created."""
    real = os.path.realpath(src)
    if not os.path.exists(real):
        raise NotFound(f"{what} does not exist: {src}",
                       "create it first or fix the path; hpcrun never creates bind sources")
    flags = (M_RDONLY if readonly else 0) | (0 if os.path.isdir(real) else M_FILE)
    return Mount(src=real, dst=dst, flags=flags)


def split_bind(arg: str, what: str = "--volume", flag_sep: str = "") -> tuple:
    """The one bind parser: SRC[:DST[:MODE]] -> (src, dst, readonly). DST defaults to
    SRC (an empty DST is refused, as Docker and pyxis refuse it); MODE is ro or rw, or
    several joined by flag_sep (pyxis's ro+rw...); DST must be absolute and not /."""
    hint = ("write SRC or SRC:DST[:ro|rw], e.g. /data:/data:ro"
            + (", several separated by ','" if what != "--volume" else ""))
    parts = arg.split(":")
    if not parts[0] or len(parts) > 3:
        raise UsageError(f"bad {what} {arg!r}", hint)
    if len(parts) > 1 and not parts[1]:
        raise UsageError(f"bad {what} {arg!r}: empty destination", hint)
    src = parts[0]
    dst = parts[1] if len(parts) > 1 else src
    modes = parts[2].split(flag_sep) if len(parts) > 2 and flag_sep else parts[2:]
    readonly = False
    for mode in modes:
        if mode not in ("ro", "rw"):
            raise UsageError(f"bad {what} {arg!r}: unknown mode {mode!r}", "the mode is ro or rw")
        readonly = mode == "ro"
    if not dst.startswith("/"):
        raise UsageError(f"bad {what} {arg!r}: destination {dst!r} is not an absolute path",
                         "write the destination inside the container as /path")
    dst = os.path.normpath(dst)
    if dst.startswith("//"):
        dst = "/" + dst.lstrip("/")
    if dst == "/":
        raise UsageError(f"bad {what} {arg!r}: cannot bind over /",
                         "bind to a directory inside the image")
    return src, dst, readonly


def parse_volume(arg: str) -> Mount:
    """-v SRC[:DST[:ro|rw]] (Docker's spelling; DST defaults to SRC)."""
    src, dst, readonly = split_bind(arg)
    return bind(os.path.abspath(src), dst, readonly)


def sort_binds(mounts: list) -> list:
    """Parents before children (as Docker does), stable otherwise."""
    return sorted(mounts, key=lambda m: m.dst.rstrip("/").count("/"))
