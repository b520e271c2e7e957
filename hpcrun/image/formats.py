"""Format builders: make an image's root file system as a directory or a squashfs file,
from layer blobs or from the other format.

Builders write only where they are told (a path under the store's tmp/, or a path the
caller chose); putting the result in place by rename, and the records that name it,
belong to the store (store.py). See squash.py for the squashfs tools themselves.
"""
from __future__ import annotations

import os
from typing import Sequence

from .. import log
from ..errors import CommandError
from ..proc import which
from . import layers as L
from . import squash
from .fstree import link_clone, rmtree

META = ".hpcrun"            # rootfs/.hpcrun/config.json: the image config, in every format


def unpack_dir(layers: Sequence[str], dest: str, config: bytes, *, max_size: int | None):
    """Unpack layers into dest and write dest/.hpcrun/config.json; returns the
    layers.Tree (its .size and .layer_sizes are the content sizes)."""
    tree = L.extract(list(layers), dest, max_size=max_size, diff_ids=L.diff_ids_of(config))
    write_config(dest, config)
    return tree


def clone_dir(parent: str, first: int, size: int, layer_sizes: Sequence,
              layers: Sequence[str], out: str, config: bytes, *, max_size: int | None,
              cloned=None, donor: str | None = None):
    """Make the directory format at the new path `out` from `parent`, the unpacked
    directory of an image whose layers are the first `first` of `layers`: a hard-link
    clone of it (fstree.link_clone), then only the other layers unpacked on top
    (whiteouts and opaque directories applied as in a fresh unpack), then the config.
    size and layer_sizes are the parent's (its record's). `cloned`: called once the
    clone is made (the store releases the parent's lease and has a crash point there).
    donor: another image's directory whose identical files are linked, not written
    (layers.extract).
    Returns the layers.Tree, as unpack_dir does. On failure nothing is left at `out`."""
    try:
        listing = link_clone(parent, out, skip=(META,))
        if cloned is not None:
            cloned()
        tree = L.Tree.seeded(listing, first, size, layer_sizes, max_size)
        L.extract(list(layers), out, max_size=max_size, diff_ids=L.diff_ids_of(config),
                  onto=tree, donor=donor)
        write_config(out, config)
        return tree
    except BaseException:
        rmtree(out)
        raise


def write_config(rootfs: str, config: bytes) -> None:
    """Put the image config at rootfs/.hpcrun/config.json (what `run` of a directory reads)."""
    meta = os.path.join(rootfs, META)
    if os.path.lexists(meta):
        rmtree(meta)
    os.mkdir(meta, 0o755)
    with open(os.path.join(meta, "config.json"), "wb") as f:
        f.write(config)


def build_squashfs(layers: Sequence[str], out: str, config: bytes, *, max_size: int | None,
                   tmpdir: str):
    """Make the squashfs file `out` from layer blobs; returns the layers.Tree (sizes).

    Prefers streaming the flattened layers into tar2sqfs (no intermediate directory);
    otherwise unpacks into a directory under tmpdir and packs it with mksquashfs."""
    if which("tar2sqfs"):
        try:
            return squash.stream(list(layers), out, config, max_size)
        except L.NeedDirectory as e:
            log.info(f"squashfs: streaming not possible ({e}); unpacking to a directory")
        except CommandError as e:
            # tar2sqfs refused something the layers checks accepted: the slower path
            # through a directory and mksquashfs still gives the user an image
            log.warning(f"squashfs: {e.what}; retrying through a directory and mksquashfs")
    d = os.path.join(tmpdir, f"sqdir-{os.urandom(12).hex()}")
    os.mkdir(d, 0o700)
    try:
        tree = unpack_dir(list(layers), d, config, max_size=max_size)
        squash.from_dir(d, out)
        return tree
    finally:
        rmtree(d)


def build(fmt: str, layers: Sequence[str], out: str, config: bytes, *,
          max_size: int | None, tmpdir: str):
    """Build format `fmt` at the new path `out` (a directory for "dir"); returns the
    layers.Tree. On failure nothing is left at `out`."""
    if fmt == "dir":
        os.mkdir(out, 0o700)
        try:
            return unpack_dir(layers, out, config, max_size=max_size)
        except BaseException:
            rmtree(out)
            raise
    try:
        return build_squashfs(layers, out, config, max_size=max_size, tmpdir=tmpdir)
    except BaseException:
        rmtree(out)
        raise


def transcode(src: str, src_fmt: str, out: str, dst_fmt: str) -> None:
    """Make format dst_fmt at the new path `out` from the image at `src` in src_fmt
    (directory <-> squashfs). On failure nothing is left at `out`."""
    if src_fmt == dst_fmt:
        raise ValueError("transcode between the same format")
    try:
        if dst_fmt == "squashfs":
            squash.from_dir(src, out)
        else:
            squash.unsquash(src, out)
    except BaseException:
        rmtree(out)
        raise
