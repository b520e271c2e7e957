"""Small filesystem helpers shared by the store, auth, jobs, cluster and runtime."""
from __future__ import annotations

import contextlib
import os
from typing import BinaryIO, Iterator, Optional, Union


@contextlib.contextmanager
def atomic_file(path: str, *, mode: Optional[int] = None, fsync: bool = False,
                tmpdir: Optional[str] = None) -> Iterator[BinaryIO]:
    """A binary file to write that replaces PATH only when the block succeeds, so that
    readers see the old file or the new one, never a part: a uniquely named temporary
    file (in TMPDIR, else PATH's directory: it must be on PATH's filesystem), optionally
    fsynced, then renamed over PATH. MODE sets the exact permissions (else the umask
    applies). A failure (here or in the block) removes the temporary file and raises."""
    d = tmpdir or os.path.dirname(path) or "."
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    # Created with MODE itself (never wider: a reader could keep an early descriptor),
    # then set exactly, whatever the umask took away.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                 0o666 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write(path: str, data: Union[bytes, str], *, mode: Optional[int] = None,
                 fsync: bool = False, tmpdir: Optional[str] = None) -> None:
    """Replace PATH with DATA atomically (see atomic_file)."""
    with atomic_file(path, mode=mode, fsync=fsync, tmpdir=tmpdir) as f:
        f.write(data.encode() if isinstance(data, str) else data)
