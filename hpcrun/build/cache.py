"""The build cache: content-addressed files, file-system manifests and step entries.

Layout under <store root>/build-cache/ (0700)::

    objects/<sha256>        file contents, one copy per distinct content (shared by
                            every step and every image that holds the same bytes)
    fs/<sha256>.json        a file-system manifest: path -> type, mode, owner, size,
                            content digest or link target (content-addressed itself)
    entries/<key>.json      one step's result: {"fs": <fs id>, "config": {...}, ...};
                            key = sha256(parent key, the expanded instruction, the
                            digest of the context files it reads)
    tmp/                    everything is written here first, then renamed into place

Kill-safety: an object, a manifest and an entry each appear by rename(2), in that
order, so an entry only ever names manifests and objects that are complete; a killed
build leaves only tmp/ files and work trees, which the next build removes (under an
exclusive lock on locks/cache.lock; a running build holds it shared).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tarfile
import time

from hpcrun.build import tree as T
from hpcrun.image.fstree import mark_top
from hpcrun.image.store import rmtree

_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()


NO_OVERLAY = "off: HPCRUN_NO_OVERLAY=1"     # Cache.overlay_roots's why, the user's choice


class Cache:
    def __init__(self, store_root: str):
        self.root = os.path.join(store_root, "build-cache")
        self.objects = os.path.join(self.root, "objects")
        self.fs_dir = os.path.join(self.root, "fs")
        self.entries = os.path.join(self.root, "entries")
        self.tmp = os.path.join(self.root, "tmp")
        self.work = os.path.join(self.root, "work")
        self.locks = os.path.join(self.root, "locks")
        self._fs_memo: dict = {}
        old = os.umask(0o077)
        try:
            for d in (self.objects, self.fs_dir, self.entries, self.tmp, self.work, self.locks):
                os.makedirs(d, exist_ok=True)
        finally:
            os.umask(old)
        mark_top(self.work)     # each build's trees start a block group of their own
        self._hold = open(os.path.join(self.locks, "cache.lock"), "a+b")
        try:
            fcntl.flock(self._hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fcntl.flock(self._hold, fcntl.LOCK_SH)
        else:
            try:
                for d in (self.tmp, self.work):
                    for name in os.listdir(d):
                        rmtree(os.path.join(d, name))
            finally:
                fcntl.flock(self._hold, fcntl.LOCK_SH)

    def close(self) -> None:
        if self._hold is not None:
            self._hold.close()
            self._hold = None  # type: ignore[assignment]

    def tmp_path(self, prefix: str) -> str:
        return os.path.join(self.tmp, f"{prefix}-{os.urandom(8).hex()}")

    def work_dir(self) -> str:
        d = os.path.join(self.work, os.urandom(8).hex())
        os.mkdir(d, 0o700)
        return d

    def overlay_roots(self) -> tuple[bool, str]:
        """Whether RUN roots can be overlays here: overlayfs with userxattr in a user
        namespace on this cache's file system (asked in a child: cext/core.c
        HPCRUN_PROBE_OVERLAY_BUILD), and why not. HPCRUN_NO_OVERLAY=1 says no."""
        if os.environ.get("HPCRUN_NO_OVERLAY") == "1":
            return False, NO_OVERLAY
        from hpcrun import _core     # lazy: the compiled module, only once a RUN misses
        d = self.work_dir()
        try:
            return _core.probe_at("overlay-build", d)
        finally:
            rmtree(d)

    # ------------------------------------------------------------------ objects
    def object_path(self, digest: str) -> str:
        return os.path.join(self.objects, digest)

    def put_object(self, src: str, digest: str, link: bool = False) -> None:
        """link: hard-link instead of copying (only for files nothing writes to: an
        image the store unpacked); where that fails, copy."""
        dst = self.object_path(digest)
        if os.path.exists(dst):
            return
        tmp = self.tmp_path("obj")
        if link:
            try:
                os.link(src, tmp)
            except OSError:
                link = False
        if not link:
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o600)
        os.replace(tmp, dst)

    # ------------------------------------------------------------------ manifests
    def put_fs(self, entries: dict) -> str:
        data = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode()
        fsid = hashlib.sha256(data).hexdigest()
        p = os.path.join(self.fs_dir, fsid + ".json")
        if not os.path.exists(p):
            self._write(p, data)
        return fsid

    def get_fs(self, fsid: str) -> dict:
        """A manifest, read once per build (a Debian base's is 1 MB of JSON, and a
        step and the layer made from it read the same ones): callers must not change
        the dict they get (copy it first)."""
        doc = self._fs_memo.get(fsid)
        if doc is None:
            with open(os.path.join(self.fs_dir, fsid + ".json"), "rb") as f:
                doc = self._fs_memo[fsid] = json.loads(f.read())
        return doc

    def put_entry(self, key: str, doc: dict) -> None:
        self._write(os.path.join(self.entries, key + ".json"),
                    json.dumps(doc, sort_keys=True).encode())

    def get_entry(self, key: str) -> dict | None:
        p = os.path.join(self.entries, key + ".json")
        try:
            with open(p, "rb") as f:
                doc = json.loads(f.read())
        except (OSError, ValueError):
            return None
        if doc.get("fs") and not os.path.exists(os.path.join(self.fs_dir, doc["fs"] + ".json")):
            return None
        with contextlib.suppress(OSError):
            os.utime(p)              # prune keeps what was used recently
        return doc

    def _write(self, path: str, data: bytes) -> None:
        tmp = self.tmp_path("w")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    # ------------------------------------------------------------------ trees
    def snapshot(self, root: str, prev: dict | None, owners: dict | None = None,
                 default_owner=(0, 0), link: bool = False) -> dict:
        """Walk root into a manifest, hashing only files whose (size, mtime, inode)
        changed since prev; new contents go to objects/. owners: path -> [uid, gid]
        recorded for new entries (COPY --chown); unchanged paths keep theirs."""
        prev = prev or {}
        out: dict = {}
        owners = owners or {}
        root = root.rstrip("/")
        n = len(root) + 1
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = dirpath[n:]
            if rel_dir == "" and ".hpcrun" in dirnames:
                dirnames.remove(".hpcrun")
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.join(rel_dir, name) if rel_dir else name
                st = os.lstat(full)
                old = prev.get(rel)
                mode = stat.S_IMODE(st.st_mode)
                own = owners.get(rel) or (old[3] if old else list(default_owner))
                if stat.S_ISDIR(st.st_mode):
                    e = ["d", mode, 0, own, None, 0]
                elif stat.S_ISLNK(st.st_mode):
                    e = ["l", 0o777, 0, own, os.readlink(full), 0]
                elif stat.S_ISREG(st.st_mode):
                    sig = [st.st_size, st.st_mtime_ns, st.st_ino]
                    if old and old[0] == "f" and old[5] == sig and os.path.exists(
                            self.object_path(old[4])):
                        dg = old[4]
                    else:
                        dg = sha256_file(full)
                        self.put_object(full, dg, link)
                    e = ["f", mode, st.st_size, own, dg, sig]
                elif stat.S_ISFIFO(st.st_mode):
                    e = ["p", mode, 0, own, None, 0]
                else:
                    continue        # sockets, device nodes: not kept in an image
                out[rel] = e
        return out

    def materialize(self, entries: dict, root: str) -> dict:
        """Make the tree of a manifest under root (copies, never links to objects: a
        RUN may change files in place). Returns the manifest with this tree's stat
        signatures, so the next snapshot hashes only what changed."""
        out = {}
        dirs = []
        for rel in sorted(entries):
            e = entries[rel]
            p = os.path.join(root, rel)
            kind = e[0]
            if kind == "d":
                os.mkdir(p, 0o700)
                dirs.append((p, e[1]))
                out[rel] = e
            elif kind == "l":
                os.symlink(e[4], p)
                out[rel] = e
            elif kind == "f":
                shutil.copyfile(self.object_path(e[4]), p)
                os.chmod(p, e[1])
                st = os.lstat(p)
                out[rel] = e[:5] + [[st.st_size, st.st_mtime_ns, st.st_ino]]
            elif kind == "p":
                os.mkfifo(p, e[1])
                out[rel] = e
        for p, mode in reversed(dirs):
            os.chmod(p, mode | 0o700)   # we must be able to write in it (root could)
        return out

    def signatures(self, root: str, entries: dict) -> dict:
        """entries with the stat signatures of a tree known to match them (a copy of
        the unpacked base): the next snapshot then hashes only what a RUN changed."""
        out = {}
        for rel, e in entries.items():
            if e[0] == "f":
                try:
                    st = os.lstat(os.path.join(root, rel))
                except OSError:
                    out[rel] = e
                    continue
                out[rel] = e[:5] + [[st.st_size, st.st_mtime_ns, st.st_ino]]
            else:
                out[rel] = e
        return out

    def sync(self, root: str, old: dict, new: dict) -> dict:
        """Bring a tree that matches `old` to `new`, touching only what differs."""
        for rel in sorted(old, reverse=True):       # children before their parents
            o, n = old[rel], new.get(rel)
            if n is not None and (o[:5] == n[:5] or (o[0] == n[0] == "d")):
                continue
            p = os.path.join(root, rel)
            if os.path.isdir(p) and not os.path.islink(p):
                rmtree(p)
            elif os.path.lexists(p):
                os.unlink(p)
        out = {}
        for rel in sorted(new):
            n, o = new[rel], old.get(rel)
            if o is not None and o[:5] == n[:5]:
                out[rel] = o
                continue
            p = os.path.join(root, rel)
            if n[0] == "d":
                if not os.path.isdir(p):
                    os.mkdir(p, 0o700)
                os.chmod(p, n[1] | 0o700)
                out[rel] = n
            elif n[0] == "l":
                os.symlink(n[4], p)
                out[rel] = n
            elif n[0] == "f":
                shutil.copyfile(self.object_path(n[4]), p)
                os.chmod(p, n[1])
                st = os.lstat(p)
                out[rel] = n[:5] + [[st.st_size, st.st_mtime_ns, st.st_ino]]
            elif n[0] == "p":
                os.mkfifo(p, n[1])
                out[rel] = n
        return out

    # ---------------------------------------------------------- overlay layers
    # A RUN's root can be an overlay (cext/core.c overlay_root): the store's unpacked
    # base, then read-only layer directories, then the step's own upper directory. A
    # layer directory is made once and never written again (a later RUN's writes go to
    # its own upper, by copy-up), so the base's and earlier layers' files are never
    # changed in place. Whiteouts are what overlayfs itself makes: character devices
    # 0/0 (mknod(2) allows those without privilege, Linux 5.8), and opaque directories
    # carry user.overlay.opaque=y (the userxattr mount option; overlayfs.rst).

    def layer_dir(self, path: str, old: dict, new: dict, hide=(), root_mode: int = 0o755) -> None:
        """Make the new directory path a layer taking a tree that matches manifest old
        to manifest new (contents copied from objects/), with whiteouts for what new
        lacks and for the top-level names in hide."""
        write, gone = T.diff(old, new)
        os.mkdir(path, 0o700)
        dirs = [(path, root_mode)]
        made = set()

        def parent_of(rel):
            # a directory a whiteout or a new entry needs in the layer: with new's mode
            # (the topmost layer's directory is what the merged tree shows)
            d = posixpath.dirname(rel)
            if not d or d in made:
                return
            parent_of(d)
            p = os.path.join(path, d)
            if not os.path.isdir(p):
                os.mkdir(p, 0o700)
                dirs.append((p, new[d][1] if d in new else 0o755))
            made.add(d)
        for rel in list(hide) + gone:
            parent_of(rel)
            os.mknod(os.path.join(path, rel), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        for rel in write:
            e = new[rel]
            parent_of(rel)
            p = os.path.join(path, rel)
            kind = e[0]
            if kind == "d":
                if rel not in made:
                    os.mkdir(p, 0o700)
                    dirs.append((p, e[1]))
                    made.add(rel)
            elif kind == "l":
                os.symlink(e[4], p)
            elif kind == "f":
                shutil.copyfile(self.object_path(e[4]), p)
                os.chmod(p, e[1])
            elif kind == "p":
                os.mkfifo(p, e[1])
        for p, mode in reversed(dirs):
            os.chmod(p, mode)       # last, deepest first: a read-only one blocks its children

    def snapshot_upper(self, upper: str, prev: dict, default_owner=(0, 0)) -> dict:
        """The manifest of an overlay's merged tree after a RUN: prev (the tree before
        it) with the upper directory's entries applied. Every file there was written or
        copied up by the RUN, so each is hashed (the rest of the tree is not even
        listed); a whiteout removes its path, an opaque directory what lay below it. A
        path that keeps an entry keeps its recorded owner; new ones get default_owner.
        (overlayfs only ever makes character-device whiteouts in an upper directory;
        the xattr whiteouts of Linux 6.7 exist in prepared lower layers only.)"""
        out = dict(prev)
        root = upper.rstrip("/")
        n = len(root) + 1
        opened = []                 # directories the RUN left unreadable to us: read, then restored

        def fail(e):
            raise e
        for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
            rel_dir = dirpath[n:]
            if rel_dir == "":
                if ".hpcrun" in dirnames:
                    dirnames.remove(".hpcrun")
                if ".hpcrun" in filenames:
                    filenames.remove(".hpcrun")
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.join(rel_dir, name) if rel_dir else name
                st = os.lstat(full)
                m = st.st_mode
                old = prev.get(rel)
                own = old[3] if old else list(default_owner)
                cur = out.get(rel)
                if stat.S_ISCHR(m) and st.st_rdev == 0:
                    T.remove(out, rel)              # a whiteout
                    continue
                if stat.S_ISDIR(m):
                    if cur is not None and (cur[0] != "d" or _opaque(full)):
                        T.remove(out, rel)          # what lay below is hidden
                    out[rel] = ["d", stat.S_IMODE(m), 0, own, None, 0]
                    if m & 0o500 != 0o500:
                        os.chmod(full, stat.S_IMODE(m) | 0o700)
                        opened.append((full, stat.S_IMODE(m)))
                    continue
                if cur is not None and cur[0] == "d":
                    T.remove(out, rel)              # a file over a directory hides it
                if stat.S_ISREG(m):
                    dg = sha256_file(full)
                    self.put_object(full, dg)
                    out[rel] = ["f", stat.S_IMODE(m), st.st_size, own, dg,
                                [st.st_size, st.st_mtime_ns, st.st_ino]]
                elif stat.S_ISLNK(m):
                    out[rel] = ["l", 0o777, 0, own, os.readlink(full), 0]
                elif stat.S_ISFIFO(m):
                    out[rel] = ["p", stat.S_IMODE(m), 0, own, None, 0]
                else:
                    out.pop(rel, None)      # sockets, device nodes: not kept in an image
        for p, mode in reversed(opened):
            os.chmod(p, mode)
        return out

    def write_tar(self, entries: dict, out, paths=None, whiteouts=()) -> None:
        """A layer tar: the entries named in paths (all when None), owners as recorded,
        stable mtimes, and an OCI whiteout (.wh.NAME) for each path in whiteouts."""
        tf = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                          bufsize=_CHUNK)
        for rel in sorted(whiteouts):
            d, _, name = rel.rpartition("/")
            ti = tarfile.TarInfo(f"{d}/.wh.{name}" if d else f".wh.{name}")
            ti.mtime = 0
            tf.addfile(ti)
        for rel in (sorted(entries) if paths is None else paths):
            e = entries[rel]
            ti = tarfile.TarInfo(rel)
            ti.mode = e[1]
            ti.uid, ti.gid = e[3]
            ti.uname = ti.gname = ""
            ti.mtime = 0
            if e[0] == "d":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif e[0] == "l":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e[4]
                tf.addfile(ti)
            elif e[0] == "p":
                ti.type = tarfile.FIFOTYPE
                tf.addfile(ti)
            else:
                ti.size = e[2]
                with open(self.object_path(e[4]), "rb") as f:
                    tf.addfile(ti, f)
        tf.close()

    # ------------------------------------------------------------------ prune
    def prune(self, keep_days: float = 0.0) -> tuple[int, int]:
        """Remove entries not used for keep_days, then manifests and objects nothing
        references. Runs under the exclusive lock (waits for running builds)."""
        fcntl.flock(self._hold, fcntl.LOCK_UN)
        with open(os.path.join(self.locks, "cache.lock"), "a+b") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            now = time.time()
            removed = 0
            freed = 0
            live_fs = set()
            for name in os.listdir(self.entries):
                p = os.path.join(self.entries, name)
                try:
                    if now - os.stat(p).st_mtime >= keep_days * 86400:
                        os.unlink(p)
                        removed += 1
                        continue
                    with open(p, "rb") as f:
                        doc = json.loads(f.read())
                except (OSError, ValueError):
                    continue
                if doc.get("fs"):
                    live_fs.add(doc["fs"])
            live_obj = set()
            for name in os.listdir(self.fs_dir):
                fsid = name[:-5]
                p = os.path.join(self.fs_dir, name)
                if fsid not in live_fs:
                    freed += os.path.getsize(p)
                    os.unlink(p)
                    continue
                for e in self.get_fs(fsid).values():
                    if e[0] == "f":
                        live_obj.add(e[4])
            for name in os.listdir(self.objects):
                if name not in live_obj:
                    p = os.path.join(self.objects, name)
                    freed += os.path.getsize(p)
                    os.unlink(p)
        fcntl.flock(self._hold, fcntl.LOCK_SH)
        return removed, freed


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "user.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def du(path: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total
