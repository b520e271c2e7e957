"""Squashfs images: one file instead of a metadata storm on a parallel filesystem.

The squashfs tools themselves (which format to build from what is formats.py):
``tar2sqfs`` (squashfs-tools-ng) fed the flattened layers on its stdin as one tar, so no
intermediate directory is written (a single-layer image is checked and streamed in one
pass); ``mksquashfs`` from a directory; ``unsquashfs`` back into one. Every file is owned by root in the image (``-all-root``), setuid and
setgid bits are dropped, as in the directory format.

The compressor comes from the ``squashfs_compressor`` setting, ``NAME[:OPTIONS]`` in
tar2sqfs's spelling (``zstd:level=3`` default, ``lz4``, ``lz4:hc``, ``gzip:level=6``,
``xz``); compression dominates the time, and zstd at a low level is a good balance of
speed and size.
"""
from __future__ import annotations

import os
import subprocess
import tempfile

from .. import log
from ..errors import CommandError, ImageError, NotFound
from ..proc import run, which
from . import layers as L


def compressor() -> tuple[str, str]:
    from .. import config
    spec = str(config.get("squashfs_compressor"))
    name, _, opts = spec.partition(":")
    name = name.strip().lower()
    if name not in ("gzip", "lzma", "lzo", "xz", "lz4", "zstd"):
        raise ImageError(f"unknown squashfs compressor {name!r} (squashfs_compressor)",
                         "use zstd, lz4, gzip, xz, lzo or lzma, e.g. 'zstd:level=3'")
    return name, opts.strip()


def _jobs() -> str:
    return str(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 1)))


def tar2sqfs_argv(out: str) -> list[str]:
    name, opts = compressor()
    argv = ["tar2sqfs", "--quiet", "--no-skip", "--no-xattr", "--force", "-j", _jobs(),
            "-c", name]
    if opts:
        argv += ["-X", opts]
    return argv + [out]


def mksquashfs_argv(src: str, out: str) -> list[str]:
    name, opts = compressor()
    argv = ["mksquashfs", src, out, "-noappend", "-all-root", "-no-xattrs", "-quiet",
            "-no-progress", "-processors", _jobs(), "-comp", name]
    kv = dict(o.partition("=")[::2] for o in opts.split(",") if o)
    if "level" in kv and name in ("zstd", "gzip"):
        argv += ["-Xcompression-level", kv["level"]]
    if "hc" in kv and name == "lz4":
        argv += ["-Xhc"]
    return argv


def stream(layers: list, out: str, config: bytes, max_size: int | None):
    """Flatten layer blobs straight into tar2sqfs; returns the layers.Tree (sizes).
    Raises layers.NeedDirectory when the layers cannot be flattened as a stream."""
    argv = tar2sqfs_argv(out)
    log.debug("exec: " + " ".join(argv))
    errf = tempfile.TemporaryFile()  # not a pipe: a chatty tar2sqfs must not block us
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf)
    ok = False
    tree = None
    try:
        try:
            tree = L.flatten_stream(layers, p.stdin, max_size=max_size, root_owned=True,
                                    extra=L.meta_entries(config),
                                    diff_ids=L.diff_ids_of(config))
            p.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        rc = p.wait()
        if rc != 0 or tree is None:
            errf.seek(0)
            err = errf.read().decode(errors="replace")
            raise CommandError(argv, rc, err, "squashfs-tools-ng could not build the image")
        ok = True
        return tree
    finally:
        errf.close()
        if not ok:
            if p.poll() is None:
                p.kill()
            p.wait()
            try:
                os.unlink(out)
            except FileNotFoundError:
                pass


def from_dir(src: str, out: str) -> None:
    """Pack a directory (a store rootfs) into a squashfs file with mksquashfs."""
    if not which("mksquashfs"):
        raise NotFound("mksquashfs: command not found",
                       "install squashfs-tools (or squashfs-tools-ng for tar2sqfs)")
    try:
        run(mksquashfs_argv(src, out))
    except BaseException:
        try:
            os.unlink(out)
        except FileNotFoundError:
            pass
        raise


def unsquash(sqfs: str, dest: str) -> None:
    """Unpack a squashfs file into the new directory dest (owner u+rw, no setuid)."""
    run(["unsquashfs", "-no-xattrs", "-no-progress", "-d", dest, sqfs],
        hint="is the squashfs file complete and is squashfs-tools installed?")
    for dp, dn, fn in os.walk(dest):
        for d in dn:
            p = os.path.join(dp, d)
            st = os.lstat(p)
            os.chmod(p, (st.st_mode & 0o1777) | 0o700)
        for f in fn:
            p = os.path.join(dp, f)
            st = os.lstat(p)
            if not os.path.islink(p):
                os.chmod(p, (st.st_mode & 0o1777) | 0o600)
