"""What `hpcrun run NAME` calls to turn an image name into a path (planning, no running).

The image is leased here (Store.lease): a shared flock on the image's lease file, on an
O_CLOEXEC descriptor kept open in this process. The execve of the command closes it,
when the container's root is pinned and the /proc scan of rmi / prune / convert sees
the container; a process that stays as the container's monitor keeps it. So an image
cannot be deleted between resolving it and starting the container on it.
"""
from __future__ import annotations

import os
from typing import Optional

from ..errors import HpcrunError, NotFound, StoreError
from .store import REPAIR_HINT, Store, stop_point

_LEASES: list = []     # fds of the leases this process holds (closed by execve)
_LEASE_PATHS: list = []


def for_run(name: str, *, pull: bool = True, store=None,
            lease: bool = True) -> tuple[str, Optional[dict]]:
    """(image path, image config) for NAME: the directory if the image has one, else its
    squashfs file. A missing image is pulled first when pull=True, as `docker run` does.

    The config is the full image config JSON (its "config" member holds Env, Cmd,
    Entrypoint, WorkingDir, User). The store lock is released before returning; with
    lease=True the image's lease stays held (see the module docstring).
    """
    own = store is None
    st = store if store is not None else Store()
    try:
        rec = st.get(name)
        if rec is None:
            if not pull:
                raise NotFound(f"no such image: {name}",
                               f"pull it first: hpcrun pull {name}")
            from .pull import pull as do_pull  # lazy: only a missing image pulls
            try:
                rec = do_pull(name, store=st)
            except HpcrunError as e:
                raise NotFound(f"no such image: {name}: not a path, not in the store, "
                               f"and pulling it failed: {e.what}",
                               e.hint or "see 'hpcrun images', or give a directory or "
                               "squashfs file") from e
        path = rec.path
        if path is None:
            raise NotFound(f"image {name} has no runnable format",
                           f"hpcrun convert --format dir {name}")
        if lease:
            fd = st.lease(rec.hex)
            _LEASES.append(fd)
            _LEASE_PATHS.append(st.lease_path(rec.hex))
            # under the lease: a delete that ran before it is visible now
            if not os.path.exists(st._record_path(rec.hex)):
                release()
                raise NotFound(f"no such image: {name}: it was removed while starting",
                               "pull, load or import it again")
            if not os.path.lexists(path):
                release()
                raise StoreError(f"image {rec.short_id} is damaged: {path} is missing",
                                 REPAIR_HINT)
        stop_point("resolved")
        return path, rec.config
    finally:
        if own:
            st.close()


def held() -> bool:
    """Whether this process holds an image lease (then it must reach the command's
    execve itself, not exec another program first: runtime/pipeline.execute)."""
    return bool(_LEASES)


def inherit() -> None:
    """Let the leases survive an exec into the C executor (runtime/pipeline.execute):
    each moves to a descriptor >= 512 without close-on-exec. The executor marks every
    inherited descriptor close-on-exec but those it is told to keep (PMI_FD,
    --preserve-fds N, which never reach 512), so the command's execve still closes
    them: the lease lasts exactly until the container's root is pinned."""
    import fcntl
    for i, fd in enumerate(_LEASES):
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 512)     # (F_DUPFD: no close-on-exec)
        os.close(fd)
        _LEASES[i] = high


def lease_paths() -> list:
    """The lease files this process holds (the plan cache records them for the C
    launcher, which takes the same lease on a warm run)."""
    return list(_LEASE_PATHS)


def release() -> None:
    """Give up the leases this process holds (a caller that will not exec)."""
    while _LEASES:
        os.close(_LEASES.pop())
    del _LEASE_PATHS[:]
