"""Resolve the IMAGE argument of `hpcrun run`: a root directory, a squashfs file, or an
image name from the store; and read its OCI image config where there is one.

Config convention for path images: `<rootfs>/.hpcrun/config.json` holds the OCI image
config JSON (the image helpers write it when they unpack or convert), as Charliecloud
keeps /ch/metadata.json. Every config read here is validated (hpcrun.image.ociconfig).
"""
from __future__ import annotations

import os

from hpcrun.errors import ImageError, NotFound
from hpcrun.runtime.spec import _Frozen

CONFIG = ".hpcrun/config.json"
SQUASHFS_MAGIC = b"hsqs"
# A directory counts as a root file system when it holds one of these.
ROOT_MARKERS = ("bin", "usr", "sbin", "lib")


def _oci():
    # lazy: only an image that has a config needs the validator (hpcrun run's hot path)
    from hpcrun.image import ociconfig
    return ociconfig


class Image(_Frozen):
    """kind: 'dir' or 'squashfs'; config: the OCI image config's "config" object or {}."""

    __slots__ = ("path", "kind", "config", "name")
    _defaults = {"config": None, "name": None}


def _inner(conf) -> dict:
    """The OCI image config keeps Env/Cmd/... under "config"; accept that object too."""
    return _oci().inner(conf)


def dir_config(root: str) -> dict:
    p = os.path.join(root, CONFIG)
    if not os.path.isfile(p):
        return {}
    return _oci().inner(_oci().read(p))


UNPACK_SETTING = "HPCRUN_UNPACK_CACHE"


def _cache_dir(kind: str) -> str:
    """The private cache directory of --unpack trees (kind "unpack") or of squashfs files'
    configs ("config"), made if missing (hpcrun.fsutil.private_dir)."""
    from hpcrun.fsutil import private_dir  # lazy: keeps hpcrun run's start-up small
    base = os.environ.get("HPCRUN_UNPACK_CACHE") or os.path.join(
        "/var/tmp", f"hpcrun-{os.getuid()}", "unpack")
    path = base if kind == "unpack" else os.path.join(base, kind)
    what = "the --unpack cache" if kind == "unpack" else "the image config cache"
    return private_dir(path, what, UNPACK_SETTING)


def squashfs_config(path: str) -> dict:
    """.hpcrun/config.json inside a squashfs file, without mounting it.

    Read once with `unsquashfs -cat` and remembered in the private node-local cache by
    the file's identity, so later runs skip the subprocess (atomic rename: racing runs
    agree). The cached copy is validated like the original (hpcrun.image.ociconfig).
    """
    from hpcrun.errors import HpcrunError  # lazy: keeps hpcrun run's start-up small
    from hpcrun.fsutil import UnsafeDir  # lazy: keeps hpcrun run's start-up small
    from hpcrun.runtime.unpack import key  # lazy: keeps hpcrun run's start-up small
    try:
        st = os.stat(path)
    except OSError as e:
        raise ImageError(f"cannot read squashfs image {path}: {e.strerror}") from None
    what = f"{CONFIG} in {path}"
    try:
        cache: str | None = os.path.join(_cache_dir("config"), key(st) + ".json")
    except UnsafeDir:
        raise               # someone else's directory: never read from or write to it
    except HpcrunError:
        cache = None        # it cannot be made (read-only /var/tmp): read the file each run
    try:
        fd = os.open(cache, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW) if cache else -1
    except OSError:
        fd = -1
    if fd >= 0:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(_oci().MAX_BYTES + 1)
        try:
            return _oci().inner(_oci().loads(raw or b"{}", what))
        except ImageError:
            pass            # a damaged copy: the file itself decides, and replaces it
    from hpcrun import proc  # lazy: keeps hpcrun run's start-up small
    if not proc.which("unsquashfs"):
        return {}
    cp = proc.run(["unsquashfs", "-cat", path, CONFIG], check=False, text=False)
    raw = cp.stdout if cp.returncode == 0 and cp.stdout else b"{}"
    conf = _oci().loads(raw, what)
    try:
        if cache:
            from hpcrun.fsutil import atomic_write  # lazy: keeps hpcrun run's start-up small
            atomic_write(cache, raw, mode=0o600)
    except OSError:
        pass   # a full cache only costs the next run a subprocess
    return _oci().inner(conf)


def is_squashfs(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == SQUASHFS_MAGIC
    except OSError:
        return False


def check_rootfs(path: str) -> None:
    try:
        names = set(os.listdir(path))
    except PermissionError:
        raise ImageError(f"can't read image directory {path}: permission denied",
                         "the image must be readable by you") from None
    if not names.intersection(ROOT_MARKERS):
        raise ImageError(f"not a root filesystem: {path}",
                         "a directory image must hold a root file system (bin/, usr/, ...); "
                         "get one with 'hpcrun pull' or 'hpcrun export'")


PATH_PREFIXES = ("/", "./", "../", "~")


def is_path(arg: str, cwd: str | None = None) -> bool:
    """The one rule for an IMAGE argument, at every entry point: spelled as a path
    (/, ./, ../, ~, . or ..), or naming a file or directory that exists (relative to
    cwd), it is a path: a root directory or a squashfs file. Anything else is an image
    name or id from the store (names contain "/" too: library/ubuntu, ghcr.io/org/img,
    localhost:5000/x). A file's suffix decides nothing (app.sqfs may be a name)."""
    if arg.startswith(PATH_PREFIXES) or arg in (".", ".."):
        return True
    return os.path.lexists(os.path.join(cwd, arg) if cwd else arg)


def resolve(arg: str) -> Image:
    if os.path.isdir(arg):
        path = os.path.realpath(arg)
        check_rootfs(path)
        return Image(path=path, kind="dir", config=dir_config(path))
    if os.path.isfile(arg):
        path = os.path.realpath(arg)
        if not is_squashfs(path):
            raise ImageError(f"not a root filesystem or squashfs image: {arg}",
                             "IMAGE is a root directory, a squashfs file or an image name "
                             "(see 'hpcrun images')")
        return Image(path=path, kind="squashfs", config=None)
    if is_path(arg):
        raise NotFound(f"no such image: {arg}",
                       "IMAGE is a root directory, a squashfs file or an image name "
                       "(see 'hpcrun images')")
    return _from_store(arg)


def _from_store(name: str) -> Image:
    try:
        from hpcrun.image.resolve import for_run  # lazy: keeps hpcrun run's start-up small
    except ImportError:
        raise NotFound(f"no such image: {name}",
                       "give a root directory or a squashfs file (the image store is "
                       "not available in this installation)") from None
    path, conf = for_run(name)
    path = os.fspath(path)
    kind = "dir" if os.path.isdir(path) else "squashfs"
    conf = _oci().inner(_oci().validate(conf, f"of image {name}")) if conf else {}
    return Image(path=path, kind=kind, config=conf, name=name)


def unpack(path: str) -> str:
    """--unpack: the squashfs file extracted once into the private node-local cache and
    reused (hpcrun.runtime.unpack, the same code as the Slurm node cache's)."""
    from hpcrun.runtime import unpack as unpacker  # lazy: keeps hpcrun run's start-up small
    base = os.environ.get("HPCRUN_UNPACK_CACHE") or os.path.join(
        "/var/tmp", f"hpcrun-{os.getuid()}", "unpack")
    return unpacker.unpack_once(path, base, what="the --unpack cache", setting=UNPACK_SETTING)
