"""What `hpcrun run NAME` calls to turn an image name into a path (planning, no running)."""
from __future__ import annotations

from typing import Optional


def for_run(name: str, *, pull: bool = True, store=None) -> tuple[str, Optional[dict]]:
    """(image path, image config) for NAME: the directory if the image has one, else its
    squashfs file. A missing image is pulled first when pull=True, as `docker run` does.

    The config is the full image config JSON (its "config" member holds Env, Cmd,
    Entrypoint, WorkingDir, User). The store lock is released before returning.
    """
    from ..errors import NotFound
    from .store import Store
    own = store is None
    st = store if store is not None else Store()
    try:
        rec = st.get(name)
        if rec is None:
            if not pull:
                raise NotFound(f"no such image: {name}",
                               f"pull it first: hpcrun pull {name}")
            from ..errors import HpcrunError
            from .pull import pull as do_pull
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
        return path, rec.config
    finally:
        if own:
            st.close()
