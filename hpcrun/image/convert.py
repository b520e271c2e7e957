"""`hpcrun convert SRC DST`: an image from one format into another, outside the store
or in and out of it (Charliecloud's ch-convert is the model).

Formats:

* ``dir``      a root filesystem directory (the image config in ``.hpcrun/config.json``)
* ``squashfs`` a squashfs file (``*.sqfs``, ``*.squashfs``): one file for a parallel
  filesystem, mounted with squashfuse by ``hpcrun run``
* ``tar``      a root filesystem tarball (``*.tar``, ``*.tar.gz``, ``*.tgz``); written
  with ``.hpcrun/config.json`` inside, so the config survives the round trip
* ``store``    an image in the store, by name (or id, as a source)

SRC's format is what it is: a directory, a file with the squashfs magic, a tarball, else
a store image. DST's comes from ``fmt`` (``--format``), else from its spelling: a
``.sqfs``/``.squashfs`` or ``.tar``/``.tar.gz``/``.tgz`` name, an existing directory or a
path spelled as one (``/...``, ``./...``, ``../...``, ``~...``, ending in ``/``), else a
store name. The image config (Env, Cmd, Entrypoint, WorkingDir, User...) goes along.

Atomic: DST is built beside itself under a temporary name and renamed into place, so a
failure (a damaged source, a full disk) leaves nothing at DST and no temporary behind.
An existing DST is refused, except an empty directory for the dir format. A store image
read as the source is leased (Store.lease) so that rmi does not take it away meanwhile.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Iterator, Optional

from .. import config as cfgmod
from ..errors import ImageError, NotFound, UsageError
from . import layers as L
from . import squash
from .archive import is_tar_header, import_tar, tar_dir
from .fstree import rmtree
from .reference import parse
from .store import Store

KINDS = ("dir", "squashfs", "tar", "store")
_ALIASES = {"sqfs": "squashfs", "directory": "dir", "tarball": "tar", "tgz": "tar",
            "image": "store"}
_SQFS_EXT = (".sqfs", ".squashfs")
_TAR_EXT = (".tar", ".tar.gz", ".tgz")
_HINT = ("SRC and DST: a root filesystem directory, a .sqfs/.squashfs file, a .tar/.tar.gz "
         "file or a store image name; --format dir|squashfs|tar|store names DST's format")


def convert(src: str, dst: str, fmt: str | None = None) -> str:
    """Convert the image SRC into DST (see the module docstring); returns what was
    written: DST's absolute path, or the store name."""
    skind = source_kind(src)
    dkind = dest_kind(dst, fmt)
    if skind == dkind:
        raise UsageError(f"convert {src} {dst}: both are in the {dkind} format",
                         "use 'hpcrun tag' to name a store image again" if dkind == "store"
                         else "copy it instead (cp -a), or name another format with --format")
    if dkind == "store":
        st = Store()
        try:
            with _source(src, skind, st.tmp) as (root, conf, _own):
                return _to_store(st, root, conf, dst, src)
        finally:
            st.close()
    final = os.path.abspath(os.path.expanduser(dst))
    parent = os.path.dirname(final)
    if not os.path.isdir(parent):
        raise NotFound(f"convert: directory {parent} does not exist",
                       "create it first, or give another DST")
    _refuse_existing(dst, final, dkind)
    scratch = _scratch(parent, os.path.basename(final))
    os.mkdir(scratch, 0o700)
    try:
        with _source(src, skind, scratch) as (root, conf, own):
            out = os.path.join(scratch, "out")
            if os.path.isfile(root) and dkind != "squashfs":   # a store's squashfs file
                tree = os.path.join(scratch, "tree")
                squash.unsquash(root, tree)
                root, own = tree, True
            if dkind == "dir":
                if own:
                    os.rename(root, out)      # already a fresh tree of ours
                else:
                    shutil.copytree(root, out, symlinks=True)
            elif dkind == "squashfs":
                if os.path.isfile(root):
                    shutil.copyfile(root, out)  # the store's own squashfs file
                else:
                    squash.from_dir(root, out)
            else:
                with open(out, "wb") as f:
                    tar_dir(root, f, meta=True, gzip=final.lower().endswith((".gz", ".tgz")))
                    f.flush()
                    os.fsync(f.fileno())
            os.rename(out, final)
        return final
    finally:
        rmtree(scratch)


def source_kind(src: str) -> str:
    """The format of the image SRC ("dir", "squashfs", "tar" or "store")."""
    p = os.path.expanduser(src)
    if os.path.isdir(p):
        return "dir"
    if os.path.isfile(p):
        try:
            with open(p, "rb") as f:
                head = f.read(512)
        except OSError as e:
            raise ImageError(f"can't read {src}: {e.strerror}", "check its permissions") from e
        if head[:4] == b"hsqs":
            return "squashfs"
        if L.sniff(head[:8]) in ("gzip", "zstd", "xz") or (len(head) == 512 and
                                                            is_tar_header(head)):
            return "tar"
        raise ImageError(f"{src}: neither a squashfs file nor a tarball", _HINT)
    if _spelled_as_path(src) or os.path.lexists(p):
        raise NotFound(f"no such file or directory: {src}", _HINT)
    return "store"


def dest_kind(dst: str, fmt: str | None) -> str:
    """The format DST is written in: `fmt` if given, else from DST's spelling."""
    if fmt:
        f = _ALIASES.get(fmt.strip().lower(), fmt.strip().lower())
        if f not in KINDS:
            raise UsageError(f"unknown format {fmt!r}", "use dir, squashfs, tar or store")
        return f
    low = dst.lower()
    if low.endswith(_SQFS_EXT):
        return "squashfs"
    if low.endswith(_TAR_EXT):
        return "tar"
    if os.path.isdir(os.path.expanduser(dst)) or _spelled_as_path(dst) or dst.endswith("/"):
        return "dir"
    return "store"


def _spelled_as_path(s: str) -> bool:
    # the rule `hpcrun run` uses for IMAGE: names contain "/" too (library/ubuntu)
    return s.startswith(("/", "./", "../", "~")) or s in (".", "..")


def _scratch(parent: str, base: str) -> str:
    return os.path.join(parent, f".{base}.hpcrun-convert-{os.urandom(6).hex()}")


def _refuse_existing(dst: str, final: str, kind: str) -> None:
    if not os.path.lexists(final):
        return
    if kind == "dir" and os.path.isdir(final) and not os.path.islink(final) \
            and not os.listdir(final):
        return                                  # an empty directory is filled
    raise ImageError(f"convert: {dst} already exists",
                     "remove it first, or give a new path (an existing directory must "
                     "be empty)")


@contextlib.contextmanager
def _source(src: str, kind: str, scratch: str) -> Iterator[tuple[str, Optional[bytes], bool]]:
    """(root, image config bytes or None, own): SRC as a root filesystem directory.
    own: the directory is a temporary of ours (under scratch) that may be moved. For a
    store image with only a squashfs file, root is that file (copied as it is, or
    unpacked by the caller)."""
    if kind == "dir":
        root = os.path.realpath(os.path.expanduser(src))
        yield root, _dir_config(root), False
        return
    if kind == "store":
        with _store_source(src) as got:
            yield got
        return
    tmp = os.path.join(scratch, f"src-{os.urandom(6).hex()}")
    try:
        if kind == "squashfs":
            squash.unsquash(os.path.expanduser(src), tmp)
        else:
            os.mkdir(tmp, 0o700)
            try:
                L.extract([os.path.expanduser(src)], tmp,
                          max_size=int(cfgmod.get("max_image_size")))  # type: ignore[arg-type]
            except ImageError as e:     # "layer 1: ..." is this tarball
                raise ImageError(f"{src}: {e.what.removeprefix('layer 1: ')}", e.hint) from e
        yield tmp, _dir_config(tmp), True
    finally:
        if os.path.lexists(tmp):
            rmtree(tmp)


@contextlib.contextmanager
def _store_source(name: str) -> Iterator[tuple[str, Optional[bytes], bool]]:
    st = Store()
    try:
        rec = st.require(name)
        fd = st.lease(rec.hex)          # rmi waits for us, then refuses
        try:
            rec = st.require(rec.id)    # still there under the lease
            conf = json.dumps(rec.config, sort_keys=True).encode()
            if rec.dir_path:
                yield rec.dir_path, conf, False
            elif rec.sqfs_path:
                yield rec.sqfs_path, conf, False
            else:
                raise NotFound(f"image {name} has no format to convert from",
                               "pull or load it again")
        finally:
            os.close(fd)
    finally:
        st.close()


def _dir_config(root: str) -> Optional[bytes]:
    """The image config a root filesystem directory carries, checked to be an object."""
    p = os.path.join(root, ".hpcrun", "config.json")
    try:
        with open(p, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ImageError(f"can't read the image config {p}: {e.strerror}") from e
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ImageError(f"image config {p} is not JSON ({e})",
                         "fix or remove it (the image then has no config)") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("config", {}), dict):
        raise ImageError(f"image config {p} is not an OCI image config object",
                         "fix or remove it (the image then has no config)")
    return data


def _to_store(st: Store, root: str, conf: Optional[bytes], name: str, src: str) -> str:
    ref = parse(name)
    if ref.digest:
        raise UsageError(f"cannot convert to a digest reference: {name!r}",
                         "give REPOSITORY[:TAG]")
    base = (json.loads(conf).get("config") or {}) if conf else {}
    layer = st.tmp_path("convert")
    try:
        with open(layer, "wb") as f:
            tar_dir(root, f)
        import_tar(st, layer, name, base=base, created_by=f"hpcrun convert {src}")
    finally:
        rmtree(layer)
    return ref.familiar
