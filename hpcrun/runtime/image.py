"""Resolve the IMAGE argument of `hpcrun run`: a root directory, a squashfs file, or an
image name from the store; and read its OCI image config where there is one.

Config convention for path images: `<rootfs>/.hpcrun/config.json` holds the OCI image
config JSON (the image helpers write it when they unpack or convert), as Charliecloud
keeps /ch/metadata.json. json is imported only when that file exists.
"""
from __future__ import annotations

import os

from hpcrun.errors import ImageError, NotFound
from hpcrun.runtime.spec import _Frozen

CONFIG = ".hpcrun/config.json"
SQUASHFS_MAGIC = b"hsqs"
# A directory counts as a root file system when it holds one of these.
ROOT_MARKERS = ("bin", "usr", "sbin", "lib")


class Image(_Frozen):
    """kind: 'dir' or 'squashfs'; config: the OCI image config's "config" object or {}."""

    __slots__ = ("path", "kind", "config", "name")
    _defaults = {"config": None, "name": None}


def _load_json(path: str, what: str):
    import json
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ImageError(f"can't read the image config {what}: {e}",
                         "the image's config JSON is malformed; re-pull or re-convert it") from None


def _inner(conf) -> dict:
    """The OCI image config keeps Env/Cmd/... under "config"; accept that object too."""
    if not isinstance(conf, dict):
        return {}
    inner = conf.get("config")
    if isinstance(inner, dict):
        return inner
    return conf if ("Env" in conf or "Cmd" in conf or "Entrypoint" in conf) else {}


def dir_config(root: str) -> dict:
    p = os.path.join(root, CONFIG)
    if not os.path.isfile(p):
        return {}
    return _inner(_load_json(p, p))


def _cache_dir(kind: str) -> str:
    base = os.environ.get("HPCRUN_UNPACK_CACHE") or os.path.join(
        "/var/tmp", f"hpcrun-{os.getuid()}", "unpack")
    return base if kind == "unpack" else os.path.join(base, kind)


def _identity(path: str) -> str:
    """A squashfs file's identity: a changed or replaced file gets a new key."""
    st = os.stat(path)
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{int(st.st_mtime_ns):x}"


def squashfs_config(path: str) -> dict:
    """.hpcrun/config.json inside a squashfs file, without mounting it.

    Read once with `unsquashfs -cat` and remembered in the node-local cache by the file's
    identity, so later runs skip the subprocess (atomic rename: racing runs agree).
    """
    import json
    cache = os.path.join(_cache_dir("config"), _identity(path) + ".json")
    try:
        with open(cache, "rb") as f:
            return _inner(json.loads(f.read() or b"{}"))
    except (OSError, ValueError):
        pass
    from hpcrun import proc
    if not proc.which("unsquashfs"):
        return {}
    cp = proc.run(["unsquashfs", "-cat", path, CONFIG], check=False, text=False)
    raw = cp.stdout if cp.returncode == 0 and cp.stdout else b"{}"
    try:
        conf = json.loads(raw)
    except ValueError:
        raise ImageError(f"can't read the image config in {path}: malformed JSON",
                         "re-convert the image") from None
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        from hpcrun.fsutil import atomic_write
        atomic_write(cache, raw)
    except OSError:
        pass   # a read-only or full cache only costs the next run a subprocess
    return _inner(conf)


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
        from hpcrun.image.resolve import for_run
    except ImportError:
        raise NotFound(f"no such image: {name}",
                       "give a root directory or a squashfs file (the image store is "
                       "not available in this installation)") from None
    path, conf = for_run(name)
    path = os.fspath(path)
    kind = "dir" if os.path.isdir(path) else "squashfs"
    return Image(path=path, kind=kind, config=_inner(conf) if conf else {}, name=name)


def unpack(path: str) -> str:
    """--unpack: extract a squashfs file once into a node-local cache and reuse it.

    Keyed by the file's identity (device, inode, size, mtime); concurrent callers are
    serialised by flock on node-local storage and the result appears by atomic rename,
    so a half-extracted tree is never used.
    """
    import fcntl
    import shutil

    from hpcrun import proc
    key = _identity(path)
    cache = _cache_dir("unpack")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    dest = os.path.join(cache, key)
    if os.path.isdir(dest):
        return dest
    with open(os.path.join(cache, key + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(dest):
            return dest
        tmp = os.path.join(cache, f".{key}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            proc.run(["unsquashfs", "-no-progress", "-quiet", "-no-xattrs", "-d", tmp, path],
                     hint="the squashfs file may be corrupt or truncated")
            os.rename(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
