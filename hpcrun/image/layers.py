"""Layer tars: open (gzip / zstd / plain by magic), validate, flatten, without root.

The rules, applied the same way whether the layers are unpacked into a directory
(`extract`) or streamed as one flattened tar (`flatten_stream`, for tar2sqfs and export):

- Whiteouts as the OCI image spec defines them (layer.md): ``.wh.NAME`` hides NAME of
  the lower layers, ``.wh..wh..opq`` hides every lower entry of its directory. Other
  ``.wh..wh.*`` names (aufs bookkeeping) are ignored. A whiteout never hides an entry of
  its own layer.
- Regular files, directories, symlinks, hardlinks and FIFOs are kept; character and
  block devices are skipped with one warning (an unprivileged user cannot mknod).
- Ownership: every file becomes the caller's (directory format) or root's (squashfs,
  like ``mksquashfs -all-root``). setuid and setgid bits are dropped. In the directory
  format files get u+rw and directories u+rwx, so the owner can read and remove them
  (Charliecloud does the same).
- Hostile archives are refused as a whole (ImageError, nothing kept): an entry or a
  hardlink target with an absolute path or a ``..`` component; any entry, hardlink target
  or whiteout reached *through* a symlink of the image (a symlink may point anywhere, but
  nothing is ever written or removed through one); a hardlink to a missing file or a
  directory; more than ``max_image_size`` bytes of content (decompression-bomb guard); a
  truncated or corrupt compressed stream.

Nothing here follows a symlink on disk: parents are checked against the in-memory tree,
files are created with O_EXCL|O_NOFOLLOW under a fresh directory the caller owns.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
from typing import BinaryIO, Iterable, Iterator, Optional, Sequence
import copy
import hashlib
import json
import queue
import subprocess
import threading
import time

from .. import log
from ..errors import ImageError
from .. import log as _log

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
WH = ".wh."
OPQ = ".wh..wh..opq"
CHUNK = 1 << 20

_UNSAFE_HINT = ("the image is unsafe to unpack; nothing was written. "
                "Rebuild it with a standard tool (docker build, buildah, skopeo)")


def _unsafe(what: str) -> ImageError:
    return ImageError(f"refusing unsafe layer: {what}", _UNSAFE_HINT)


# ---------------------------------------------------------------------------
# Opening a layer


def sniff(head: bytes) -> str:
    """'gzip', 'zstd', 'xz' or 'tar' from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    return "tar"


class _Forward:
    """What tarfile's seeking mode needs of a stream that only goes forward: subclasses
    give read() and close() and keep `pos`; a forward seek reads (and so hashes) what
    tarfile skips."""

    what = "stream"
    pos = 0

    def read(self, n: int = -1) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def seek(self, off: int, whence: int = 0) -> int:
        target = off if whence == 0 else self.pos + off
        if target < self.pos:  # never seen from tarfile's sequential reading
            raise OSError(f"{self.what}: cannot seek backwards in a compressed layer")
        while self.pos < target:
            if not self.read(min(CHUNK, target - self.pos)):
                break
        return self.pos

    def tell(self) -> int:
        return self.pos

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Checked(_Forward):
    """A decompressing reader for tarfile's seeking mode ("r:"), which copies less than
    its stream mode: forward seeks read and discard. A worker thread decompresses and
    hashes ahead (zlib, lzma and hashlib release the GIL), so decompression overlaps
    the file creation of the main thread. Decompressor errors become ImageError naming
    the layer."""

    DEPTH = 8  # chunks decompressed ahead

    def __init__(self, inner, raw, what: str):
        self.inner = inner
        self.raw = raw
        self.what = what
        self.h = hashlib.sha256()  # of the uncompressed stream: the layer's diff_id
        self.pos = 0
        self._buf = b""
        self._off = 0
        self._eof = False
        self._stop = False
        self._q: "queue.Queue" = queue.Queue(self.DEPTH)
        self._t = threading.Thread(target=self._work, name="hpcrun-decompress", daemon=True)
        self._t.start()

    def _work(self) -> None:
        while not self._stop:
            try:
                data = self.inner.read(CHUNK)
                if data:
                    self.h.update(data)
                item = data
            except Exception as e:  # EOFError, zlib.error, lzma.LZMAError, ZstdError, OSError
                item = e
            while not self._stop:
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def _err(self, e: Exception) -> ImageError:
        if isinstance(e, EOFError):
            return ImageError(f"{self.what}: truncated compressed stream ({e})",
                              "the file or download is incomplete; fetch it again")
        return ImageError(f"{self.what}: corrupt compressed stream ({e})",
                          "the file or download is damaged; fetch it again")

    def _more(self) -> bool:
        if self._eof:
            return False
        item = self._q.get()
        if isinstance(item, Exception):
            self._eof = True
            raise self._err(item) from item
        if not item:
            self._eof = True
            return False
        self._buf, self._off = item, 0
        return True

    def read(self, n: int = -1) -> bytes:
        """n bytes (fewer only at the end), as tarfile expects of a file."""
        parts = []
        want = n if n is not None and n >= 0 else -1
        while want != 0:
            if self._off >= len(self._buf) and not self._more():
                break
            avail = len(self._buf) - self._off
            take = avail if want < 0 else min(avail, want)
            parts.append(self._buf[self._off:self._off + take]
                         if take < avail or self._off else self._buf)
            self._off += take
            if want > 0:
                want -= take
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        return data

    def close(self) -> None:
        self._stop = True
        try:
            while True:
                self._q.get_nowait()
        except Exception:
            pass
        self._t.join(timeout=10)
        try:
            self.inner.close()
        finally:
            self.raw.close()


class _Pipe(_Forward):
    """A decompressor command (zstd -dc) as a forward-seekable reader; its failure
    (exit status at end of stream) becomes ImageError naming the layer."""

    def __init__(self, argv: list, f, what: str):
        _log.debug("exec: " + " ".join(argv))
        self.what = what
        self.raw = f
        self.pos = 0
        self.h = hashlib.sha256()
        seekable = f.seekable()
        if seekable:
            os.lseek(f.fileno(), 0, os.SEEK_SET)  # peek() moved the descriptor
        self.p = subprocess.Popen(argv, stdin=f if seekable else subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=CHUNK)
        if not seekable:
            import threading  # lazy: only this branch needs it

            def feed() -> None:
                try:
                    while True:
                        b = f.read(CHUNK)
                        if not b:
                            break
                        self.p.stdin.write(b)
                except (BrokenPipeError, ValueError, OSError):
                    pass
                finally:
                    try:
                        self.p.stdin.close()
                    except OSError:
                        pass
            threading.Thread(target=feed, daemon=True).start()

    def _eof(self) -> None:
        rc = self.p.wait()
        if rc != 0:
            err = self.p.stderr.read().decode(errors="replace").strip().splitlines()
            detail = err[-1] if err else f"exit status {rc}"
            raise ImageError(f"{self.what}: corrupt or truncated compressed stream ({detail})",
                             "the file or download is damaged; fetch it again")

    def check(self) -> None:
        """Raise the decompressor's error if it has failed (waits briefly for its exit)."""
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return
        self._eof()

    def read(self, n: int = -1) -> bytes:
        data = self.p.stdout.read() if n is None or n < 0 else self.p.stdout.read(n)
        if not data and n != 0:
            self._eof()
        self.h.update(data)
        self.pos += len(data)
        return data

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        self.p.stdout.close()
        self.p.stderr.close()
        self.raw.close()


def open_layer(path_or_file, what: str | None = None):
    """A readable (and forward-seekable) stream of the uncompressed tar of a layer:
    gzip, zstd (with the zstandard module), xz or plain, told apart by magic."""
    if isinstance(path_or_file, (str, os.PathLike)):
        f = open(path_or_file, "rb", buffering=CHUNK)
        what = what or os.fspath(path_or_file)
    else:
        f = path_or_file
        what = what or getattr(f, "name", "layer")
        if not hasattr(f, "peek"):
            f = io.BufferedReader(f, CHUNK)  # type: ignore[arg-type]
    head = f.peek(8)[:8]
    kind = sniff(head)
    if kind == "gzip":
        import gzip  # lazy: only this branch needs it
        inner = gzip.GzipFile(fileobj=f, mode="rb")
    elif kind == "zstd":
        try:
            import zstandard  # type: ignore
        except ImportError:
            from ..proc import which  # lazy: only this branch needs it
            if which("zstd"):
                return _Pipe(["zstd", "-dc", "-q"], f, what)
            f.close()
            raise ImageError(f"{what}: zstd-compressed layer, but neither the zstandard module "
                             "nor the zstd command is installed",
                             "pip install 'hpcrun[zstd]', or install zstd") from None
        inner = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    elif kind == "xz":
        import lzma  # lazy: only this branch needs it
        inner = lzma.LZMAFile(f, "rb")
    else:
        return f
    return _Checked(inner, f, what)


def _tar(stream, what: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r:")
    except tarfile.ReadError as e:
        raise ImageError(f"{what}: not a tar archive ({e})",
                         "a layer must be a tar, optionally gzip or zstd compressed") from e


def verify_diff_id(stream, index: int, diff_ids, what: str) -> None:
    """After a layer's last member: read the rest of the uncompressed stream and compare
    its sha256 with the image config's diff_id (Docker checks the same). A plain tar
    layer has no hasher here: its blob digest is its diff_id (the store compares them)."""
    h = getattr(stream, "h", None)
    if not diff_ids or index >= len(diff_ids) or h is None:
        return
    while stream.read(CHUNK):
        pass
    h = getattr(stream, "h", None)
    if h is None:
        return
    got = "sha256:" + h.hexdigest()
    if got != diff_ids[index]:
        raise ImageError(f"{what}: uncompressed content {got} does not match the image "
                         f"config's diff_id {diff_ids[index]}",
                         "the image is damaged or was altered; nothing was recorded")


def diff_ids_of(config: bytes | None) -> list | None:
    """The config's rootfs.diff_ids, or None when it has none to check against."""
    if not config:
        return None
    try:
        ids = (json.loads(config).get("rootfs") or {}).get("diff_ids")
    except (ValueError, AttributeError):
        return None
    if isinstance(ids, list) and all(isinstance(x, str) for x in ids):
        return ids
    return None


def _damaged(what: str, e: Exception, stream=None) -> ImageError:
    if isinstance(stream, _Pipe):
        stream.check()  # a decompressor that failed explains the damage better
    return ImageError(f"{what}: damaged tar archive ({e})",
                      "the file or download is damaged; fetch it again")


def members(tf: tarfile.TarFile, what: str) -> Iterator[tarfile.TarInfo]:
    """The members in order (callers turn tarfile.TarError into ImageError)."""
    return iter(tf)


# ---------------------------------------------------------------------------
# Names


def norm_name(name: str, what: str) -> str:
    """Archive name -> relative path without '.' parts; '' is the root. Refuses .. and /."""
    if "\x00" in name:
        raise _unsafe(f"{what}: NUL byte in name {name!r}")
    if name.startswith("/"):
        raise _unsafe(f"{what}: absolute path {name!r}")
    parts = []
    for p in name.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            raise _unsafe(f"{what}: path with '..' {name!r}")
        parts.append(p)
    return "/".join(parts)


def _parent(path: str) -> str:
    i = path.rfind("/")
    return path[:i] if i >= 0 else ""


def _base(path: str) -> str:
    return path[path.rfind("/") + 1:]


# ---------------------------------------------------------------------------
# The logical tree


class Node:
    __slots__ = ("kind", "layer", "idx", "target", "mode", "mtime")

    def __init__(self, kind: str, layer: int, idx: Optional[int], mode: int = 0o755,
                 mtime: float = 0, target: "Node | None" = None):
        self.kind = kind        # 'd' dir, 'f' file, 'l' symlink, 'p' fifo
        self.layer = layer
        self.idx = idx          # member number in its layer; None = implicit directory
        self.mode = mode
        self.mtime = mtime
        self.target = target    # for hardlinks: the node linked to


class Tree:
    """The flattened tree in memory: applies entries and whiteouts, checks safety.

    Every mutating method returns the paths whose subtrees must be removed on disk.
    """

    def __init__(self, max_size: int | None = None):
        self.nodes: dict[str, Node] = {"": Node("d", -1, None, 0o755)}
        self.children: dict[str, set] = {"": set()}
        self.max_size = max_size
        self.size = 0
        self.layer_sizes: dict[int, int] = {}  # content bytes each layer adds (history)
        self.devices: list[str] = []
        self.stream_ok = True      # False when a hardlink's target was replaced later
        self.links: list[tuple[str, Node, str]] = []  # (path, node, target path)
        self.last_target = ""      # target of the hardlink add() returned last
        self.first = 0             # layers already on disk (a seeded tree): not read again
        self.seed_mtimes: dict[str, int] = {}  # directories of the seed: their mtime (ns)

    @classmethod
    def seeded(cls, listing: Sequence, first: int, size: int, layer_sizes: Sequence,
               max_size: int | None = None) -> "Tree":
        """The tree of an image made of `first` layers, from the listing of its unpacked
        directory (fstree.link_clone's), as if those layers had been added: extract()
        then applies only the layers after them, with the same whiteout, safety and
        size rules as a fresh unpack. Every entry counts as one of the lower layers."""
        t = cls(max_size)
        lower = first - 1
        for rel, kind, mtime_ns in listing:
            if rel == "":
                t.nodes[""].layer = lower
                t.seed_mtimes[""] = mtime_ns
                continue
            t._insert(rel, Node(kind, lower, 0, 0o755 if kind == "d" else 0o644))
            if kind == "d":
                t.seed_mtimes[rel] = mtime_ns
        t.first = first
        t.size = size
        t.layer_sizes = {i: n for i, n in enumerate(layer_sizes[:first])}
        return t

    # -- checks
    def check_parents(self, path: str, what: str, name: str) -> list[str]:
        """Refuse a path reached through a symlink or a non-directory; return missing dirs."""
        missing = []
        if not path:
            return missing
        parts = path.split("/")[:-1]
        cur = ""
        for p in parts:
            cur = f"{cur}/{p}" if cur else p
            n = self.nodes.get(cur)
            if n is None:
                missing.append(cur)
            elif n.kind == "l":
                raise _unsafe(f"{what}: {name!r} goes through the symlink {cur!r}")
            elif n.kind != "d":
                raise _unsafe(f"{what}: {name!r} goes through {cur!r}, which is not a directory")
        return missing

    def _remove(self, path: str) -> None:
        n = self.nodes.pop(path, None)
        if n is None:
            return
        self.children.get(_parent(path), set()).discard(_base(path))
        if n.kind == "d":
            stack = [path]
            while stack:
                d = stack.pop()
                for c in self.children.pop(d, ()):
                    cp = f"{d}/{c}" if d else c
                    cn = self.nodes.pop(cp, None)
                    if cn is not None and cn.kind == "d":
                        stack.append(cp)

    def _insert(self, path: str, node: Node) -> None:
        self.nodes[path] = node
        self.children.setdefault(_parent(path), set()).add(_base(path))
        if node.kind == "d":
            self.children.setdefault(path, set())

    # -- operations
    def add(self, m: tarfile.TarInfo, layer: int, idx: int, what: str
            ) -> tuple[str, str, list[str], list[str]]:
        """Apply one tar member. Returns (action, path, removed, missing_dirs).

        action: 'dir', 'file', 'symlink', 'hardlink', 'fifo', 'whiteout', 'skip'.
        For 'hardlink' the target path is in self.last_target.
        """
        path = norm_name(m.name, what)
        base = _base(path)
        if base.startswith(WH):
            self.check_parents(path, what, m.name)  # a missing parent: nothing to hide
            if base == OPQ:
                return "whiteout", path, self._opaque(_parent(path), layer), []
            if base.startswith(WH + WH):
                return "skip", path, [], []
            real = base[len(WH):]
            if real in ("", ".", ".."):
                raise _unsafe(f"{what}: whiteout {m.name!r} names no file in its directory")
            target = f"{_parent(path)}/{real}" if _parent(path) else real
            n = self.nodes.get(target)
            if n is not None and n.layer < layer:
                self._remove(target)
                return "whiteout", target, [target], []
            return "skip", path, [], []
        if path == "":
            if not m.isdir():
                raise _unsafe(f"{what}: the root {m.name!r} is not a directory")
            root = self.nodes[""]
            root.mode, root.mtime, root.layer, root.idx = m.mode, m.mtime, layer, idx
            return "dir", "", [], []
        missing = self.check_parents(path, what, m.name)
        for d in missing:
            self._insert(d, Node("d", layer, None, 0o755))
        if m.ischr() or m.isblk():
            self.devices.append("/" + path)
            return "skip", path, [], missing
        removed: list[str] = []
        old = self.nodes.get(path)
        if m.isdir():
            if old is not None and old.kind == "d":
                old.layer, old.idx, old.mode, old.mtime = layer, idx, m.mode, m.mtime
                return "dir", path, [], missing
            if old is not None:
                self._remove(path)
                removed.append(path)
            self._insert(path, Node("d", layer, idx, m.mode, m.mtime))
            return "dir", path, removed, missing
        if m.islnk():
            tpath = norm_name(m.linkname, what)
            self.check_parents(tpath, what, m.linkname)
            t = self.nodes.get(tpath)
            if t is None:
                raise _unsafe(f"{what}: hardlink {m.name!r} to {m.linkname!r}, "
                              "which is not in the image")
            if t.kind == "d":
                raise _unsafe(f"{what}: hardlink {m.name!r} to the directory {m.linkname!r}")
            if tpath == path:
                return "skip", path, [], missing
            if tpath.startswith(path + "/"):
                raise _unsafe(f"{what}: hardlink {m.name!r} to {m.linkname!r}, "
                              "which it would replace")
            node = Node(t.kind, layer, idx, t.mode, t.mtime, target=t)
            action = "hardlink"
            self.last_target = tpath
        elif m.issym():
            node = Node("l", layer, idx, 0o777, m.mtime)
            action = "symlink"
        elif m.isfifo():
            node = Node("p", layer, idx, m.mode, m.mtime)
            action = "fifo"
        elif m.isreg():
            self.size += m.size
            self.layer_sizes[layer] = self.layer_sizes.get(layer, 0) + m.size
            if self.max_size is not None and self.size > self.max_size:
                raise ImageError(
                    f"{what}: the image unpacks to more than {_human(self.max_size)} "
                    "(max_image_size)",
                    "raise max_image_size in the configuration or HPCRUN_MAX_IMAGE_SIZE "
                    "if the image is genuine")
            node = Node("f", layer, idx, m.mode, m.mtime)
            action = "file"
        else:
            _warn_once(f"{what}: skipping {m.name!r} of unsupported tar type {m.type!r}")
            return "skip", path, [], missing
        if old is not None:
            self._remove(path)
            removed.append(path)
        self._insert(path, node)
        if action == "hardlink":
            self.links.append((path, node, self.last_target))
        return action, path, removed, missing

    def _opaque(self, d: str, layer: int) -> list[str]:
        removed = []
        for c in sorted(self.children.get(d, ())):
            cp = f"{d}/{c}" if d else c
            n = self.nodes[cp]
            if n.layer < layer:
                self._remove(cp)
                removed.append(cp)
            elif n.kind == "d":
                removed += self._opaque(cp, layer)
        return removed

    def finish(self) -> None:
        """Checks after the last layer: hardlinks whose target was replaced break streaming."""
        for path, node, tpath in self.links:
            if self.nodes.get(path) is node and self.nodes.get(tpath) is not node.target:
                self.stream_ok = False
        if self.devices:
            more = f" and {len(self.devices) - 1} more" if len(self.devices) > 1 else ""
            _warn_once(f"skipped device node {self.devices[0]}{more} "
                        "(an unprivileged user cannot create devices; /dev is mounted at run time)")


_warned: set = set()


def _warn_once(msg: str) -> None:
    """One warning per process (building two formats reads the layers twice)."""
    if msg not in _warned:
        _warned.add(msg)
        log.warning(msg)


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return f"{n}B"


def human_size(n: float) -> str:
    """Docker's size display (decimal units)."""
    return _human(n)


# ---------------------------------------------------------------------------
# Unpacking into a directory


def _rm(p: str) -> None:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        import shutil  # lazy: only this branch needs it
        shutil.rmtree(p)
    else:
        os.unlink(p)


DONOR_MAX = 4 << 20     # files up to this size are compared with a donor's (in memory)


class _Donor:
    """Another unpacked image's directory (the store's: never written in place) whose
    files may stand in for a layer's: a regular file is hard-linked from it instead of
    written when the donor has one at the same path with the same size, mode, mtime
    and bytes (compared), so the result is what writing it would give. Paths are
    looked up only through real directories of the donor (each checked once)."""

    def __init__(self, root: str):
        self.root = root
        self.dirs: dict[str, bool] = {"": True}

    def _dir(self, rel: str) -> bool:
        ok = self.dirs.get(rel)
        if ok is None:
            ok = self._dir(_parent(rel))
            if ok:
                try:
                    ok = stat.S_ISDIR(os.lstat(os.path.join(self.root, rel)).st_mode)
                except OSError:
                    ok = False
            self.dirs[rel] = ok
        return ok

    def link(self, path: str, full: str, m: tarfile.TarInfo, data: bytes) -> bool:
        if not self._dir(_parent(path)) or m.mtime != int(m.mtime):
            return False
        src = os.path.join(self.root, path)
        try:
            st = os.lstat(src)
            if not stat.S_ISREG(st.st_mode) or st.st_size != len(data) or \
                    stat.S_IMODE(st.st_mode) != (m.mode & 0o1777) | 0o600 or \
                    st.st_mtime_ns != int(m.mtime) * 10**9:
                return False
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                same = os.read(fd, len(data) + 1) == data if data else True
            finally:
                os.close(fd)
            if not same:
                return False
            os.link(src, full, follow_symlinks=False)
        except OSError:
            return False
        return True


def _member_bytes(tf: tarfile.TarFile, m: tarfile.TarInfo, what: str) -> bytes:
    data = tf.extractfile(m).read(m.size) if m.size else b""  # type: ignore[union-attr]
    if len(data) != m.size:
        raise ImageError(f"{what}: {m.name!r} is truncated", "the layer is damaged; fetch it again")
    return data


def extract(layers: Sequence, dest: str, *, max_size: int | None = None,
            diff_ids: list | None = None, onto: Tree | None = None,
            donor: str | None = None) -> Tree:
    """Unpack layers (paths or binary files, lowest first) into the empty directory dest,
    or, with onto (Tree.seeded), into dest that already holds the first onto.first
    layers: only the others are read, applied on top of what is there. donor: an
    unpacked image's directory whose identical files are hard-linked instead of
    written (see _Donor).

    Raises ImageError for a hostile or damaged layer; the caller removes dest then.
    Returns the tree (its .size is the content size).
    """
    tree = onto if onto is not None else Tree(max_size)
    giver = _Donor(donor) if donor else None
    dirs: dict[str, tuple[int, float]] = {}
    touched: set = set()    # seeded directories whose entries changed: their mtime back
    cur = ""
    for li in range(tree.first, len(layers)):
        layer = layers[li]
        what = f"layer {li + 1}"
        stream = open_layer(layer, what)
        try:
            tf = _tar(stream, what)
            for idx, m in enumerate(members(tf, what)):
                cur = m.name
                action, path, removed, missing = tree.add(m, li, idx, what)
                for r in removed:
                    _rm(os.path.join(dest, r))
                for d in missing:
                    os.mkdir(os.path.join(dest, d), 0o700)
                    dirs[d] = (0o755, m.mtime)  # like tar2sqfs's implicit directories
                if onto is not None:
                    for p in removed + missing + ([path] if action != "skip" else []):
                        touched.add(_parent(p))
                if action in ("skip", "whiteout"):
                    continue
                full = os.path.join(dest, path) if path else dest
                if action == "dir":
                    if not os.path.lexists(full):
                        os.mkdir(full, 0o700)
                    dirs[path] = (m.mode, m.mtime)
                elif action == "file":
                    if giver is not None and m.size <= DONOR_MAX:
                        data = _member_bytes(tf, m, what)
                        if giver.link(path, full, m, data):
                            continue
                        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                        try:
                            _write_all(fd, data)
                            os.fchmod(fd, (m.mode & 0o1777) | 0o600)
                            os.utime(fd, (m.mtime, m.mtime))
                        finally:
                            os.close(fd)
                        continue
                    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600)
                    try:
                        src = tf.extractfile(m)
                        left = m.size
                        while left > 0:
                            buf = src.read(min(CHUNK, left))  # type: ignore[union-attr]
                            if not buf:
                                raise ImageError(f"{what}: {m.name!r} is truncated",
                                                 "the layer is damaged; fetch it again")
                            _write_all(fd, buf)
                            left -= len(buf)
                        os.fchmod(fd, (m.mode & 0o1777) | 0o600)
                        os.utime(fd, (m.mtime, m.mtime))
                    finally:
                        os.close(fd)
                elif action == "symlink":
                    os.symlink(m.linkname, full)
                    os.utime(full, (m.mtime, m.mtime), follow_symlinks=False)
                elif action == "hardlink":
                    os.link(os.path.join(dest, tree.last_target), full, follow_symlinks=False)
                elif action == "fifo":
                    os.mkfifo(full, 0o600)
                    os.chmod(full, (m.mode & 0o1777) | 0o600)
                    os.utime(full, (m.mtime, m.mtime), follow_symlinks=False)
            verify_diff_id(stream, li, diff_ids, what)
        except tarfile.TarError as e:
            raise _damaged(what, e, stream) from e
        except OSError as e:
            from ..errors import StoreError  # lazy: only this branch needs it
            raise StoreError(f"cannot unpack {what} entry {cur!r} into {dest}: {e.strerror}",
                             "check the free space and permissions of the image store "
                             "(HPCRUN_STORE)") from e
        finally:
            stream.close()
    tree.finish()
    if onto is None:
        dirs.setdefault("", (0o755, tree.nodes[""].mtime))
    else:
        # a seeded directory the new layers did not name keeps its mtime, as in a
        # fresh unpack (where the last layer naming it set it)
        for path in touched:
            n = tree.nodes.get(path)
            if path not in dirs and n is not None and n.kind == "d" \
                    and path in tree.seed_mtimes:
                t = tree.seed_mtimes[path]
                os.utime(os.path.join(dest, path) if path else dest, ns=(t, t),
                         follow_symlinks=False)
    # Directory modes and times last: children change a directory's mtime, and a
    # read-only directory would have blocked its children.
    for path in sorted(dirs, key=len, reverse=True):
        n = tree.nodes.get(path)
        if n is None or n.kind != "d":
            continue  # removed by a later whiteout or replaced by a non-directory
        mode, mtime = dirs[path]
        full = os.path.join(dest, path) if path else dest
        os.chmod(full, (mode & 0o1777) | 0o700)
        os.utime(full, (mtime, mtime), follow_symlinks=False)
    return tree


def _write_all(fd: int, buf: bytes) -> None:
    mv = memoryview(buf)
    while mv:
        n = os.write(fd, mv)
        mv = mv[n:]


# ---------------------------------------------------------------------------
# One flattened tar stream


class NeedDirectory(Exception):
    """The layers cannot be flattened as a stream (a hardlink whose target was replaced
    by a later layer); the caller falls back to unpacking into a directory."""


def plan(layers: list, *, max_size: int | None = None, diff_ids: list | None = None) -> Tree:
    """First pass: read every layer's headers, apply whiteouts, check safety."""
    tree = Tree(max_size)
    for li, layer in enumerate(layers):
        what = f"layer {li + 1}"
        stream = open_layer(layer, what)
        try:
            for idx, m in enumerate(members(_tar(stream, what), what)):
                tree.add(m, li, idx, what)
            verify_diff_id(stream, li, diff_ids, what)
        except tarfile.TarError as e:
            raise _damaged(what, e, stream) from e
        finally:
            stream.close()
    tree.finish()
    return tree


def _out_info(m: tarfile.TarInfo, path: str, root_owned: bool, kind: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path + ("/" if kind == "dir" and path else "") if path else "./")
    ti.type = tarfile.REGTYPE if m.isreg() else m.type
    ti.mode = m.mode & 0o1777
    ti.mtime = m.mtime
    ti.size = m.size if m.isreg() else 0
    ti.linkname = m.linkname
    if root_owned:
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
    else:
        ti.uid, ti.gid, ti.uname, ti.gname = m.uid, m.gid, m.uname, m.gname
    return ti


def flatten_stream(layers: list, out: BinaryIO, *, max_size: int | None = None,
                   root_owned: bool = True, exclude: tuple = (".hpcrun",),
                   single_pass_ok: bool = True, extra: Sequence = (),
                   diff_ids: list | None = None) -> Tree:
    """Write the flattened image as one tar to out (tar2sqfs's stdin, an export file).

    Two passes (plan, then emit) for several layers; one pass for a single layer, which
    is checked as it streams (the caller discards the output on error). Raises
    NeedDirectory when a stream cannot express the result.
    """
    if len(layers) == 1 and single_pass_ok:
        tree = Tree(max_size)
        emitted: set = set()
        out_tf = _writer(out)
        what = "layer 1"
        stream = open_layer(layers[0], what)
        try:
            tf = _tar(stream, "layer 1")
            for idx, m in enumerate(members(tf, "layer 1")):
                action, path, removed, _ = tree.add(m, 0, idx, "layer 1")
                if path in emitted or removed:
                    # a name twice in one layer: the stream cannot take it back
                    raise NeedDirectory(path)
                if action in ("skip", "whiteout") or _excluded(path, exclude):
                    continue
                emitted.add(path)
                if action == "hardlink":
                    m = _as_link(m, tree.last_target)
                ti = _out_info(m, path, root_owned, action)
                out_tf.addfile(ti, tf.extractfile(m) if ti.size else None)
            verify_diff_id(stream, 0, diff_ids, what)
        except tarfile.TarError as e:
            raise _damaged(what, e, stream) from e
        finally:
            stream.close()
        tree.finish()
        _extra(out_tf, extra)
        out_tf.close()
        return tree
    tree = plan(layers, max_size=max_size, diff_ids=diff_ids)
    if not tree.stream_ok:
        raise NeedDirectory("hardlink target replaced by a later layer")
    keep: dict[int, dict[int, str]] = {}
    for path, n in tree.nodes.items():
        if n.idx is not None and not _excluded(path, exclude):
            keep.setdefault(n.layer, {})[n.idx] = path
    out_tf = _writer(out)
    for li, layer in enumerate(layers):
        want = keep.get(li)
        if not want:
            continue
        what = f"layer {li + 1}"
        stream = open_layer(layer, what)
        try:
            tf = _tar(stream, what)
            for idx, m in enumerate(members(tf, what)):
                path = want.get(idx)
                if path is None:
                    continue
                n = tree.nodes[path]
                kind = "dir" if n.kind == "d" else "other"
                if m.islnk():
                    m = _as_link(m, norm_name(m.linkname, what))
                ti = _out_info(m, path, root_owned, kind)
                out_tf.addfile(ti, tf.extractfile(m) if ti.size else None)
        except tarfile.TarError as e:
            raise _damaged(what, e, stream) from e
        finally:
            stream.close()
    _extra(out_tf, extra)
    out_tf.close()
    return tree


def _writer(out) -> tarfile.TarFile:
    tf = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK)
    tf.copybufsize = CHUNK  # type: ignore[attr-defined]  # fewer, larger copies
    return tf


def _extra(out_tf: tarfile.TarFile, extra: Sequence) -> None:
    for ti, data in extra:
        out_tf.addfile(ti, io.BytesIO(data) if data else None)


def meta_entries(config: bytes, mtime: float | None = None) -> list:
    """Tar entries for .hpcrun/config.json (the image config next to the root filesystem)."""
    t = mtime if mtime is not None else time.time()
    d = tarfile.TarInfo(".hpcrun/")
    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, t
    f = tarfile.TarInfo(".hpcrun/config.json")
    f.mode, f.mtime, f.size = 0o644, t, len(config)
    return [(d, b""), (f, config)]


def _as_link(m: tarfile.TarInfo, target: str) -> tarfile.TarInfo:
    m = copy.copy(m)
    m.linkname = target
    m.size = 0
    return m


def _excluded(path: str, exclude: tuple) -> bool:
    for e in exclude:
        if path == e or path.startswith(e + "/"):
            return True
    return False
