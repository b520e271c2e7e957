"""Small filesystem helpers shared by the store, auth, jobs, cluster and runtime."""
from __future__ import annotations

import io
import os

from .errors import HpcrunError

# No typing or contextlib here: this module is on the `hpcrun run`/`task` start-up path
# (private_dir), where `import typing` alone costs milliseconds.


class atomic_file:
    """A binary file to write that replaces PATH only when the block succeeds, so that
    readers see the old file or the new one, never a part: a uniquely named temporary
    file (in TMPDIR, else PATH's directory: it must be on PATH's filesystem), optionally
    fsynced, then renamed over PATH. MODE sets the exact permissions (else the umask
    applies). A failure (here or in the block) removes the temporary file and raises.
    Use: ``with atomic_file(path, mode=0o600) as f: f.write(...)``."""

    def __init__(self, path: str, *, mode: int | None = None, fsync: bool = False,
                 tmpdir: str | None = None):
        self.path, self.mode, self.fsync = path, mode, fsync
        d = tmpdir or os.path.dirname(path) or "."
        self.tmp = os.path.join(
            d, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
        self.f: io.BufferedWriter | None = None

    def __enter__(self) -> io.BufferedWriter:
        # Created with MODE itself (never wider: a reader could keep an early descriptor),
        # then set exactly, whatever the umask took away.
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o666 if self.mode is None else self.mode)
        try:
            if self.mode is not None:
                os.fchmod(fd, self.mode)
            self.f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._remove()
            raise
        return self.f

    def __exit__(self, exc_type, exc, tb) -> bool:
        f = self.f
        assert f is not None
        try:
            if exc_type is None:
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
                f.close()
                os.replace(self.tmp, self.path)
                return False
        except BaseException:
            f.close()
            self._remove()
            raise
        f.close()
        self._remove()
        return False

    def _remove(self) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def atomic_write(path: str, data: bytes | str, *, mode: int | None = None,
                 fsync: bool = False, tmpdir: str | None = None) -> None:
    """Replace PATH with DATA atomically (see atomic_file)."""
    with atomic_file(path, mode=mode, fsync=fsync, tmpdir=tmpdir) as f:
        f.write(data.encode() if isinstance(data, str) else data)


# --------------------------------------------------------------- private state directories
#
# Every directory where hpcrun keeps a user's state (the image store, the --unpack and
# config caches, the Slurm node cache) is opened through private_dir(). Its default lives
# under /var/tmp/hpcrun-<uid>, a name any other local user can guess and create first
# (as a 0777 directory, or a symlink to a tree they control), after which they could
# swap the user's images for their own. The rule, checked on every level of the path:
#   - the state directory itself must be the caller's; a level owned by the caller must
#     be a real directory (lstat: no symlink) that neither group nor others can write;
#   - a level owned by root must be a directory; if group or others can write it, it
#     must be sticky (/tmp, /var/tmp: then no one else can rename or remove our entry);
#     a symlink owned by root (a system layout such as /home -> /export/home) is
#     followed and the directory it leads to is checked by the same rule;
#   - a level owned by anyone else is refused, and so is a symlink not owned by root.
# Missing levels are created 0700. Each level is opened from its parent's descriptor
# (openat, O_NOFOLLOW), and the check is made on the opened directory (fstat), so a
# swap between lstat and open is refused rather than followed. Once the path passes,
# no other unprivileged user can change any level of it, so callers may use the path.
# cext/task.c applies the same rule (private_dir there) to the node cache.

class UnsafeDir(HpcrunError):
    """A state directory (or a level above it, or an entry in it) that breaks the rule:
    someone else could control it. Never fall back to using it."""


def _refuse(what: str, path: str, level: str, problem: str, setting: str) -> HpcrunError:
    if level == path:
        where = f"{path} {problem}"
    else:
        where = f"{level} (above it) {problem}"
    return UnsafeDir(f"refusing to use {what} {path}: {where}",
                       f"remove {level}, or ask its owner or an admin to; or set {setting} "
                       "to a directory you own that no one else can write (see 'Security' "
                       "in the README)")


def _owner(uid: int) -> str:
    import pwd
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _problem(st: os.stat_result, me: int, last: bool) -> str | None:
    """Why the directory STAT cannot be trusted, or None (see the rule above); LAST: it
    is the state directory itself, which must be the caller's."""
    import stat as S
    if not S.S_ISDIR(st.st_mode):
        return "is not a directory"
    mode = S.S_IMODE(st.st_mode)
    if st.st_uid == 0 and not last:
        if mode & 0o022 and not mode & S.S_ISVTX:
            return f"is writable by group or others without the sticky bit (mode {mode:04o})"
        return None
    if st.st_uid == me:
        if mode & 0o022:
            return f"is writable by group or others (mode {mode:04o}; chmod go-w it)"
        return None
    return f"is owned by {_owner(st.st_uid)}, not by you"


def private_dir(path: str, what: str, setting: str) -> str:
    """PATH (made absolute) as a directory safe to keep the caller's state in, created
    (mode 0700) where missing; refused with UnsafeDir naming the level and the way to
    recover otherwise (see the rule above), HpcrunError if a level cannot be made. WHAT names the directory in messages
    ("the image store"), SETTING the setting that moves it ("HPCRUN_STORE or 'store'")."""
    import stat as S
    path = os.path.abspath(os.path.expanduser(path))
    me = os.geteuid()
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    level = "/"
    try:
        names = [p for p in path.split("/") if p]
        for i, name in enumerate(names):
            level = os.path.join(level, name)
            try:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    try:
                        os.mkdir(name, 0o700, dir_fd=fd)
                    except FileExistsError:
                        pass    # a racing process made it: checked below like any other
                    except OSError as e:
                        at = "" if level == path else f"{level}: "
                        raise HpcrunError(f"cannot create {what} {path}: {at}{e.strerror}",
                                          f"set {setting} to a directory you can write") from None
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                if S.S_ISLNK(st.st_mode):
                    if st.st_uid != 0:
                        raise _refuse(what, path, level, "is a symbolic link owned by "
                                      f"{_owner(st.st_uid)} (only root's are followed)",
                                      setting)
                elif not S.S_ISDIR(st.st_mode):
                    raise _refuse(what, path, level, "is not a directory", setting)
                else:
                    flags |= os.O_NOFOLLOW
                nfd = os.open(name, flags, dir_fd=fd)
            except UnsafeDir:
                raise
            except OSError as e:
                import errno
                if e.errno == errno.ELOOP:   # replaced by a symlink after the lstat
                    raise _refuse(what, path, level, "was replaced by a symbolic link",
                                  setting) from None
                at = "" if level == path else f"{level}: "
                raise HpcrunError(f"cannot use {what} {path}: {at}{e.strerror}",
                                  f"set {setting} to a directory you can write") from None
            os.close(fd)
            fd = nfd
            problem = _problem(os.fstat(fd), me, i == len(names) - 1)
            if problem:
                raise _refuse(what, path, level, problem, setting)
    finally:
        os.close(fd)
    return path


def private_entry(path: str, what: str, setting: str) -> bool:
    """True when PATH (in a directory private_dir() accepted) is a real directory owned
    by the caller, False when it does not exist; refused otherwise. In a private
    directory no one else can plant an entry; this catches what root or an earlier
    version left there."""
    import stat as S
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not S.S_ISDIR(st.st_mode):
        raise _refuse(what, path, path, "is not a directory", setting)
    if st.st_uid != os.geteuid():
        raise _refuse(what, path, path, f"is owned by {_owner(st.st_uid)}, not by you",
                      setting)
    return True
