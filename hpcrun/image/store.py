"""The node-local image store: content-addressed blobs, image records, tags, locks.

Layout under the root (``config.get("store")`` or HPCRUN_STORE; 0700)::

    blobs/sha256/<hex>          manifests, configs and layers, verified before renamed in
    images/<idhex>/rootfs/      the "dir" format (config copy in rootfs/.hpcrun/config.json)
    images/<idhex>/image.sqfs   the "squashfs" format
    records/<idhex>.json        the image record: THE commit point of an image
    tags.json                   {"tags": {"docker.io/library/x:tag": "sha256:<idhex>"}}
    locks/<name>.lock           flock(2) files
    locks/lease-<idhex>.lock    the image's lease: shared by a starting `run`, exclusive
                                for rmi / prune / convert (see Store.lease)
    tmp/                        everything is written here first, then renamed into place
    damaged/                    what `hpcrun prune --repair` moved aside (Store.repair)

Crash safety (SIGKILL at any moment): blobs, image formats and records are each
written under tmp/ and renamed into place, in this order: blobs, image formats, record,
tags. An image exists only when its record does, and a record names only formats that
were in place before it was written, so a killed process leaves nothing that looks
complete. Leftovers (tmp/ files, image directories or formats without a record) are
removed by the next Store() that finds itself alone: every Store holds a shared flock
on locks/store.lock for its lifetime, and cleaning needs it exclusively (non-blocking,
so it never waits for a running job). Partial downloads (tmp/<hex>.partial) are kept a
day so a pull can resume.

Concurrency: per-image work runs under lock("image-<idhex>") and re-checks the record
after taking the lock, so eight processes committing the same image build it once;
tags.json changes under lock("tags"). The registry client takes lock("blob-<digest>")
around each download. A `run` holds the image's lease from resolving it until its
command's execve; rmi, prune and convert take the lease exclusively (waiting at most
LEASE_WAIT) before they look for running containers in /proc, then delete.

Damage: a store file that cannot be read, is not JSON or holds the wrong types is a
StoreError naming the file, with REPAIR_HINT; Store.repair() moves such files aside.

A new image whose layers extend those of an image already unpacked here (a build on
its base, a pull that shares the lower layers) gets its directory as a hard-link clone
of that parent's tree with only the other layers unpacked on top (Store._clone_dir):
the same tree as a fresh unpack, made in tmp/ and renamed in like one. Sharing inodes
is safe because nothing writes a store tree in place (fstree.link_clone says why);
removing either image only unlinks its names.

Test hooks: HPCRUN_TEST_CRASH_AT=<step> makes the process SIGKILL itself at that step
(steps: blob-written, cloned, extracted, format-renamed, record-written, tagged);
HPCRUN_TEST_STOP_AT=resolved / exclusive makes `run` SIGSTOP itself once it has
resolved (and leased) the image, `rmi` once it holds the lease exclusively.
Tests only.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

from .. import log
from ..errors import ImageError, NotFound, StoreError
from ..fsutil import private_dir
from .fstree import du, mark_top, rmtree
from .inuse import container_roots, running_containers
_HEX = re.compile(r"[0-9a-f]{64}\Z")
_SHORT = re.compile(r"[0-9a-f]{4,64}\Z")
PARTIAL_MAX_AGE = 24 * 3600
LEASE_WAIT = 2.0       # seconds rmi / prune / convert wait for a starting `run`

FORMATS = ("dir", "squashfs")

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def entry_name(fmt: str) -> str:
    """The name of a format inside images/<hex>/."""
    return "rootfs" if fmt == "dir" else "image.sqfs"


def crash_point(step: str) -> None:
    """Test hook: SIGKILL ourselves at `step` when HPCRUN_TEST_CRASH_AT names it."""
    if os.environ.get("HPCRUN_TEST_CRASH_AT") == step:
        import signal  # lazy: keeps hpcrun run's start-up small
        os.kill(os.getpid(), signal.SIGKILL)


def stop_point(step: str) -> None:
    """Test hook: SIGSTOP ourselves at `step` when HPCRUN_TEST_STOP_AT names it (a test
    then acts in the window and sends SIGCONT). Tests only."""
    if os.environ.get("HPCRUN_TEST_STOP_AT") == step:
        import signal  # lazy: keeps hpcrun run's start-up small
        os.kill(os.getpid(), signal.SIGSTOP)


def sha256_bytes(data: bytes) -> str:
    import hashlib  # lazy: keeps hpcrun run's start-up small
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str, what: str = "digest") -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not _HEX.match(hexpart):
        raise ImageError(f"unsupported or malformed {what}: {digest!r}",
                         "only sha256 digests (64 lowercase hex digits) are supported")
    return hexpart


def _atomic_write(path: str, data: bytes, tmpdir: str) -> None:
    # Under the store's tmp/, so a crash leaves nothing but what the next cleanup removes.
    from ..fsutil import atomic_write
    atomic_write(path, data, fsync=True, tmpdir=tmpdir)


@dataclass(frozen=True)
class ImageRecord:
    id: str                         # "sha256:<config digest hex>" (Docker's image id)
    manifest_digest: Optional[str]  # registry digest when pulled
    tags: tuple                     # canonical reference strings
    created: str
    size: int                       # bytes of file content once unpacked
    config: dict                    # the parsed image config JSON
    manifest: dict                  # the parsed manifest
    dir_path: Optional[str]         # <root>/images/<hex>/rootfs if the dir format exists
    sqfs_path: Optional[str]        # <root>/images/<hex>/image.sqfs if squashfs exists
    repo_digests: tuple = ()        # "docker.io/library/x@sha256:..."
    source: str = ""
    committed: str = ""
    formats: tuple = field(default=())
    manifest_blob: str = ""         # digest of the exact manifest bytes in blobs/ (push sends them)
    layer_sizes: tuple = ()         # unpacked content bytes per layer (history's SIZE)

    @property
    def hex(self) -> str:
        return self.id.split(":", 1)[1]

    @property
    def short_id(self) -> str:
        return self.hex[:12]

    @property
    def layers(self) -> list:
        return [layer["digest"] for layer in self.manifest.get("layers", [])]

    @property
    def path(self) -> Optional[str]:
        """What `run` uses: the directory if there is one, else the squashfs file."""
        return self.dir_path or self.sqfs_path


class BlobWriter:
    """File-like object handed out by Store.blob_writer: hashes what it writes."""

    def __init__(self, f, hasher, offset: int):
        self._f = f
        self._h = hasher
        self._n = offset

    def write(self, data) -> int:
        self._f.write(data)
        self._h.update(data)
        self._n += len(data)
        return len(data)

    def tell(self) -> int:
        return self._n

    def flush(self) -> None:
        self._f.flush()

    @property
    def name(self) -> str:
        return self._f.name


class Store:
    """See the module docstring. One instance per process is the usual use."""

    def __init__(self, root: str | None = None):
        if root is None:
            from .. import config  # lazy: keeps hpcrun run's start-up small
            root = str(config.get("store"))
        self.root = os.path.abspath(os.path.expanduser(root))
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.images_dir = os.path.join(self.root, "images")
        self.records = os.path.join(self.root, "records")
        self.locks = os.path.join(self.root, "locks")
        self.tmp = os.path.join(self.root, "tmp")
        self.tags_file = os.path.join(self.root, "tags.json")
        # The root must be private (another user could pre-create a guessable path):
        # then no one else can plant anything below it (see fsutil.private_dir).
        private_dir(self.root, "the image store", "'store' in the configuration or HPCRUN_STORE")
        try:
            self._make_dirs()
            self._hold = open(os.path.join(self.locks, "store.lock"), "a+b")
        except OSError as e:
            raise StoreError(f"cannot use the image store {self.root}: {e.strerror}",
                             "set 'store' in the configuration or HPCRUN_STORE to a "
                             "node-local directory you can write") from e
        try:
            fcntl.flock(self._hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fcntl.flock(self._hold, fcntl.LOCK_SH)  # someone else works; don't clean
        else:
            try:
                self._clean()
            finally:
                fcntl.flock(self._hold, fcntl.LOCK_SH)

    @contextlib.contextmanager
    def _alone(self) -> Iterator[bool]:
        """The store lock exclusively, if no other Store is open (True), else False;
        shared again afterwards."""
        fcntl.flock(self._hold, fcntl.LOCK_UN)
        try:
            fcntl.flock(self._hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fcntl.flock(self._hold, fcntl.LOCK_SH)
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(self._hold, fcntl.LOCK_SH)

    def _make_dirs(self) -> None:
        """The store's root and its directories (private: 0700). Raises OSError."""
        old = os.umask(0o077)
        try:
            for d in (self.blobs, self.images_dir, self.records, self.locks, self.tmp):
                os.makedirs(d, exist_ok=True)
        finally:
            os.umask(old)

    def close(self) -> None:
        """Release the shared store lock (lets other processes clean leftovers)."""
        if self._hold is not None:
            self._hold.close()
            self._hold = None  # type: ignore[assignment]

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ cleaning
    def _clean(self, partials: bool = False) -> list[str]:
        """Remove what crashed operations left (only called while no other Store is open)."""
        removed = []
        now = time.time()
        for name in os.listdir(self.tmp):
            p = os.path.join(self.tmp, name)
            if name.endswith(".partial") and not partials:
                try:
                    if now - os.lstat(p).st_mtime < PARTIAL_MAX_AGE:
                        continue
                except FileNotFoundError:
                    continue
            rmtree(p)
            removed.append(p)
        recorded = {n[:-5] for n in os.listdir(self.records) if n.endswith(".json")}
        for name in os.listdir(self.images_dir):
            d = os.path.join(self.images_dir, name)
            if name not in recorded:
                rmtree(d)
                removed.append(d)
                continue
            entries = os.listdir(d)
            if len(entries) < 2:
                continue  # a recorded image's one format (cheap: run calls this often)
            try:
                rec = self._read_record_raw(name) or {}
            except StoreError:
                continue
            keep = {entry_name(f) for f in rec.get("formats", [])}
            for entry in entries:
                if entry not in keep:
                    rmtree(os.path.join(d, entry))
                    removed.append(os.path.join(d, entry))
        if removed:
            log.info(f"store: removed {len(removed)} leftovers of interrupted operations")
        return removed

    # ------------------------------------------------------------------ locks
    @contextlib.contextmanager
    def lock(self, name: str, shared: bool = False) -> Iterator[None]:
        """flock on <root>/locks/<name>.lock (exclusive unless shared)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        with open(os.path.join(self.locks, safe + ".lock"), "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ leases
    def lease_path(self, hexd: str) -> str:
        return os.path.join(self.locks, f"lease-{hexd}.lock")

    def _open_lease(self, hexd: str, how: int) -> int:
        """open + flock of the image's lease file; the fd is O_CLOEXEC, so an execve
        releases it. Retries when the file was unlinked (by a delete) while we waited,
        so holders always share one inode."""
        path = self.lease_path(hexd)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, how)
                st = os.fstat(fd)
                try:
                    cur = os.stat(path)
                except FileNotFoundError:
                    cur = None
                if cur is not None and (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def lease(self, hexd: str) -> int:
        """The shared lease `run` holds on an image from resolving it until the
        container's root is pinned (the fd is closed by the execve, or stays with the
        container's monitor): rmi, prune and convert do not take the image away
        meanwhile. Returns the fd; blocks while a delete is under way."""
        try:
            return self._open_lease(hexd, fcntl.LOCK_SH)
        except OSError as e:
            raise StoreError(f"can't take the lease {self.lease_path(hexd)}: {e.strerror}",
                             "the store must be yours and writable") from e

    def _exclusive_lease(self, hexd: str, wait: float) -> int | None:
        """The lease exclusively (no container is starting on the image), waiting at
        most `wait` seconds; None if a `run` still holds it then."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._open_lease(hexd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.02)

    def _take_exclusive(self, rec: "ImageRecord", what: str, stack: contextlib.ExitStack,
                        name: str = "", running: bool = True) -> None:
        """Exclusive lease for rmi/convert (closed by the stack), or refuse, naming
        the image; then (running=True) refuse if a running container uses its directory."""
        fd = self._exclusive_lease(rec.hex, LEASE_WAIT)
        if fd is None:
            label = f"{name} ({rec.short_id})" if name and name != rec.short_id else rec.short_id
            raise ImageError(f"unable to {what} {label} - a container is starting on it "
                             "(or its monitor still runs)",
                             "try again once the container has started or stopped")
        stack.callback(os.close, fd)
        stop_point("exclusive")
        if running:
            self._refuse_if_running(rec, what)

    def tmp_path(self, prefix: str = "t") -> str:
        return os.path.join(self.tmp, f"{prefix}-{os.urandom(12).hex()}")

    # ------------------------------------------------------------------ blobs
    def has_blob(self, digest: str) -> bool:
        return os.path.exists(self.blob_path(digest))

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blobs, digest_hex(digest))

    @contextlib.contextmanager
    def blob_writer(self, digest: str, size: int | None = None,
                    resume: bool = False) -> Iterator[BlobWriter]:
        """Write a blob: temp file in tmp/, verified (sha256, size), fsynced, renamed in."""
        import hashlib  # lazy: keeps hpcrun run's start-up small
        hexd = digest_hex(digest)
        h = hashlib.sha256()
        if resume:
            tmp = os.path.join(self.tmp, hexd + ".partial")
            f = open(tmp, "a+b")
            f.seek(0)
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
            offset = f.tell()
        else:
            tmp = self.tmp_path("blob")
            f = open(tmp, "wb")
            offset = 0
        w = BlobWriter(f, h, offset)
        ok = False
        try:
            yield w
            f.flush()
            got = "sha256:" + h.hexdigest()
            if got != "sha256:" + hexd:
                resume = False
                raise ImageError(f"layer {digest} digest mismatch: got {got}",
                                 "the registry or file delivered other content than its "
                                 "manifest names; nothing was stored")
            if size is not None and w.tell() != size:
                resume = False
                raise ImageError(f"layer {digest} size mismatch: got {w.tell()} bytes, "
                                 f"expected {size}", "the download is incomplete")
            os.fsync(f.fileno())
            f.close()
            os.replace(tmp, os.path.join(self.blobs, hexd))
            ok = True
            crash_point("blob-written")
        finally:
            if not f.closed:
                f.close()
            if not ok and not resume:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def put_blob_bytes(self, data: bytes, digest: str | None = None) -> str:
        got = sha256_bytes(data)
        if digest is not None and digest != got:
            raise ImageError(f"layer {digest} digest mismatch: got {got}",
                             "the content does not match its digest; nothing was stored")
        if not self.has_blob(got):
            with self.blob_writer(got, len(data)) as w:
                w.write(data)
        return got

    def put_blob_file(self, src, digest: str | None = None) -> tuple[str, int]:
        """Copy a file object into the store; returns (digest, size)."""
        import hashlib  # lazy: keeps hpcrun run's start-up small
        tmp = self.tmp_path("blob")
        h = hashlib.sha256()
        n = 0
        try:
            with open(tmp, "wb") as out:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    h.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            got = "sha256:" + h.hexdigest()
            if digest is not None and got != digest:
                raise ImageError(f"layer {digest} digest mismatch: got {got}",
                                 "the archive is damaged; nothing was stored")
            os.replace(tmp, os.path.join(self.blobs, h.hexdigest()))
            return got, n
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def read_blob(self, digest: str) -> bytes:
        try:
            with open(self.blob_path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store {self.root}",
                             "pull or load the image again, or run 'hpcrun prune --repair'"
                             ) from None

    # ------------------------------------------------------------------ records
    def _record_path(self, hexd: str) -> str:
        return os.path.join(self.records, hexd + ".json")

    def _read_record_raw(self, hexd: str) -> dict | None:
        path = self._record_path(hexd)
        doc = _load_json(path, "image record")
        if doc is None:
            return None
        why = _record_problem(doc)
        if why:
            raise StoreError(f"image record {path} is damaged: {why}", REPAIR_HINT)
        return doc

    def _write_record(self, hexd: str, rec: dict) -> None:
        _atomic_write(self._record_path(hexd),
                      json.dumps(rec, indent=1, sort_keys=True).encode(), self.tmp)

    def _tags(self) -> dict[str, str]:
        doc = _load_json(self.tags_file, "image store file")
        if doc is None:
            return {}
        tags, why = _tags_of(doc)
        if why:
            raise StoreError(f"image store file {self.tags_file} is damaged: {why}",
                             REPAIR_HINT)
        return tags

    def _write_tags(self, tags: dict[str, str]) -> None:
        _atomic_write(self.tags_file,
                      json.dumps({"tags": tags}, indent=1, sort_keys=True).encode(), self.tmp)

    def _record(self, hexd: str, tags_map: dict[str, str] | None = None) -> ImageRecord | None:
        raw = self._read_record_raw(hexd)
        if raw is None:
            return None
        if tags_map is None:
            tags_map = self._tags()
        img_id = "sha256:" + hexd
        tags = tuple(sorted(t for t, i in tags_map.items() if i == img_id))
        cfg = self._json_blob(hexd, raw["config_digest"], "config")
        man = self._json_blob(hexd, raw["manifest_blob"], "manifest")
        layers = man.get("layers", [])
        if not isinstance(layers, list) or not all(
                isinstance(x, dict) and isinstance(x.get("digest"), str) for x in layers):
            raise StoreError(f"image sha256:{hexd[:12]} is damaged: its manifest blob "
                             f"{self.blob_path(raw['manifest_blob'])} has malformed 'layers'",
                             REPAIR_HINT)
        d = os.path.join(self.images_dir, hexd)
        formats = tuple(raw.get("formats", ()))
        for f in formats:   # one lstat per format: a vanished rootfs is damage, not a FUSE issue
            if not os.path.lexists(os.path.join(d, entry_name(f))):
                raise StoreError(f"image sha256:{hexd[:12]} is damaged: its "
                                 f"{'directory' if f == 'dir' else 'squashfs file'} "
                                 f"{os.path.join(d, entry_name(f))} is missing", REPAIR_HINT)
        return ImageRecord(
            id=img_id, manifest_digest=raw.get("manifest_digest"), tags=tags,
            created=raw.get("created", ""), size=int(raw.get("size", 0)), config=cfg,
            manifest=man,
            dir_path=os.path.join(d, "rootfs") if "dir" in formats else None,
            sqfs_path=os.path.join(d, "image.sqfs") if "squashfs" in formats else None,
            repo_digests=tuple(raw.get("repo_digests", ())), source=raw.get("source", ""),
            committed=raw.get("committed", ""), formats=formats,
            manifest_blob=raw.get("manifest_blob", ""),
            layer_sizes=tuple(raw.get("layer_sizes") or ()))

    def _json_blob(self, hexd: str, digest: str, what: str) -> dict:
        """A record's manifest or config blob, parsed; damage is a StoreError."""
        try:
            with open(self.blob_path(digest), "rb") as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise StoreError(f"image sha256:{hexd[:12]} is damaged: its {what} blob "
                             f"{self.blob_path(digest)} is missing", REPAIR_HINT) from None
        except OSError as e:
            raise StoreError(f"can't read {self.blob_path(digest)}: {e.strerror}",
                             "check the store's permissions (it must be yours)") from e
        except (ValueError, RecursionError) as e:
            raise StoreError(f"image sha256:{hexd[:12]} is damaged: its {what} blob "
                             f"{self.blob_path(digest)} is not JSON ({e})", REPAIR_HINT) from e
        if not isinstance(doc, dict):
            raise StoreError(f"image sha256:{hexd[:12]} is damaged: its {what} blob "
                             f"{self.blob_path(digest)} is not a JSON object", REPAIR_HINT)
        return doc

    # ------------------------------------------------------------------ repair
    def repair(self) -> list[str]:
        """`hpcrun prune --repair`: move damaged records and tags.json aside into
        <root>/damaged/ so that every command works again; returns what was done, one
        line each. A damaged image is lost (pull, load or import it again); a damaged
        tags.json keeps the entries that were still well-formed and name an image, and
        the images it no longer names stay (untagged). Deletes no healthy image."""
        done: list[str] = []
        with self.lock("tags"):
            for name in sorted(os.listdir(self.records)):
                hexd = name[:-5]
                if not (name.endswith(".json") and _HEX.match(hexd)):
                    continue
                try:
                    with self.lock("image-" + hexd):
                        self._record(hexd, {})
                except StoreError as e:
                    if "is damaged" not in e.what and "can't read" not in e.what:
                        raise
                    dest = self._move_aside(self._record_path(hexd))
                    done.append(f"moved {self._record_path(hexd)} aside to {dest}: {e.what}")
            try:
                tags = self._tags()
            except StoreError as e:
                tags = self._salvage_tags()
                dest = self._move_aside(self.tags_file)
                done.append(f"moved {self.tags_file} aside to {dest}: {e.what}; "
                            f"kept {len(tags)} well-formed name(s)")
                self._write_tags(tags)
                named = set(tags.values())
                for n in sorted(os.listdir(self.records)):
                    if n.endswith(".json") and "sha256:" + n[:-5] not in named:
                        done.append(f"image sha256:{n[:12]} has no name now: name it with "
                                    f"'hpcrun tag {n[:12]} NAME' before a prune removes it")
            known = {"sha256:" + n[:-5] for n in os.listdir(self.records) if n.endswith(".json")}
            gone = sorted(t for t, i in tags.items() if i not in known)
            if gone:
                for t in gone:
                    del tags[t]
                    done.append(f"removed the name {_familiar(t)}: its image is gone")
                self._write_tags(tags)
        if done:
            with self._alone() as alone:
                if alone:               # else others use the store: the next Store() cleans
                    self._clean()       # the images/<hex> of records moved aside
        return done

    def _move_aside(self, path: str) -> str:
        d = os.path.join(self.root, "damaged")
        os.makedirs(d, mode=0o700, exist_ok=True)
        dest = os.path.join(d, f"{os.path.basename(path)}.{time.strftime('%Y%m%dT%H%M%S')}"
                               f".{os.urandom(3).hex()}")
        os.rename(path, dest)
        return dest

    def _salvage_tags(self) -> dict[str, str]:
        """The well-formed entries of a damaged tags.json (none if it can't be read)."""
        try:
            with open(self.tags_file, "rb") as f:
                doc = json.load(f)
        except (OSError, ValueError, RecursionError):
            return {}
        tm = doc.get("tags") if isinstance(doc, dict) else None
        if not isinstance(tm, dict):
            return {}
        return {t: i for t, i in tm.items() if isinstance(t, str) and isinstance(i, str)
                and _ID.match(i)}

    # ------------------------------------------------------------------ commit
    def commit_image(self, manifest: bytes, config: bytes, *, tags: Sequence[str] = (),
                     fmt: str = "dir", source: str = "",
                     manifest_digest: str | None = None) -> ImageRecord:
        """Unpack an image whose blobs are all in the store and record it (see module doc)."""
        try:
            man = json.loads(manifest)
            cfg_digest = man["config"]["digest"]
            layer_digests = [layer["digest"] for layer in man.get("layers", [])]
        except (ValueError, KeyError, TypeError) as e:
            raise ImageError(f"malformed image manifest ({e})",
                             "expected a Docker schema 2 or OCI image manifest") from e
        try:
            cfg = json.loads(config)
        except ValueError as e:
            raise ImageError(f"malformed image config {cfg_digest} ({e})") from e
        if sha256_bytes(config) != cfg_digest:
            raise ImageError(f"config {cfg_digest} digest mismatch: got {sha256_bytes(config)}",
                             "the image is damaged; nothing was stored")
        formats = parse_formats(fmt)
        for dg in layer_digests:
            if not self.has_blob(dg):
                raise StoreError(f"layer {dg} is not in the store",
                                 "download or load every layer before committing the image")
        diff_ids = (cfg.get("rootfs") or {}).get("diff_ids")
        if isinstance(diff_ids, list) and len(diff_ids) != len(layer_digests):
            raise ImageError(f"image config lists {len(diff_ids)} layers, the manifest "
                             f"{len(layer_digests)}", "the image is malformed")
        if isinstance(diff_ids, list):
            # an uncompressed layer's digest is its diff_id (compressed ones are checked
            # while they are unpacked)
            from .layers import sniff
            for i, dg in enumerate(layer_digests):
                with open(self.blob_path(dg), "rb") as f:
                    plain = sniff(f.read(8)) == "tar"
                if plain and dg != diff_ids[i]:
                    raise ImageError(f"layer {i + 1} ({dg}) does not match the image config's "
                                     f"diff_id {diff_ids[i]}",
                                     "the image is damaged or was altered; nothing was recorded")
        manifest_blob = self.put_blob_bytes(manifest)
        self.put_blob_bytes(config)
        hexd = digest_hex(cfg_digest)
        norm_tags, repo_digests = [], []
        for t in tags:
            r = normalize(t)
            if r.digest:
                repo_digests.append(f"{r.name}@{r.digest}")
            else:
                norm_tags.append(str(r))
                if manifest_digest:
                    repo_digests.append(f"{r.name}@{manifest_digest}")

        with self.lock("image-" + hexd):
            rec = self._read_record_raw(hexd)
            have = set(rec.get("formats", [])) if rec else set()
            missing = [f for f in formats if f not in have]
            size = rec.get("size", 0) if rec else 0
            layer_sizes = rec.get("layer_sizes") if rec else None
            if missing:
                layers = [self.blob_path(dg) for dg in layer_digests]
                try:
                    tree = self._build_formats(hexd, layers, config, missing, rec is not None,
                                               layer_digests)
                    size = tree.size
                    layer_sizes = [tree.layer_sizes.get(i, 0) for i in range(len(layers))]
                except BaseException:
                    if rec is None:  # leave no trace of an image that failed
                        rmtree(os.path.join(self.images_dir, hexd))
                    raise
            if rec is None:
                rec = {
                    "id": "sha256:" + hexd, "config_digest": cfg_digest,
                    "manifest_blob": manifest_blob,
                    "manifest_digest": manifest_digest or manifest_blob,
                    "created": cfg.get("created", ""), "size": size,
                    "source": source, "committed": _now(), "formats": [],
                    "repo_digests": [], "layer_sizes": layer_sizes,
                }
            rec["formats"] = [f for f in FORMATS if f in have or f in missing]
            rec["repo_digests"] = sorted(set(rec.get("repo_digests", [])) | set(repo_digests))
            if missing or repo_digests or not have:
                self._write_record(hexd, rec)
                crash_point("record-written")
        if norm_tags:
            with self.lock("tags"):
                tm = self._tags()
                for t in norm_tags:
                    tm[t] = "sha256:" + hexd
                self._write_tags(tm)
            crash_point("tagged")
        out = self._record(hexd)
        assert out is not None
        return out

    def _build_formats(self, hexd: str, layers: list, config: bytes, formats: list,
                       exists: bool, digests: Sequence[str] = ()):
        """Build formats into tmp/, rename into images/<hex>/. Caller holds the image lock.
        The directory format is cloned from a parent's tree where one has a prefix of
        the layers (digests; see _clone_dir), else unpacked from every layer."""
        from .. import config as cfgmod  # lazy: keeps hpcrun run's start-up small
        from .formats import build as build_format  # lazy: `run` never builds (tarfile)
        max_size = int(cfgmod.get("max_image_size"))  # type: ignore[arg-type]
        mark_top(self.tmp)      # each tree made there starts a block group of its own
        d = os.path.join(self.images_dir, hexd)
        os.makedirs(d, mode=0o700, exist_ok=True)
        tree = None
        for f in formats:
            final = os.path.join(d, entry_name(f))
            if os.path.lexists(final):  # leftover of a killed commit (no record names it)
                rmtree(final)
            tmp = self.tmp_path(f)
            tree = None
            if f == "dir" and digests:
                tree = self._clone_dir(hexd, layers, list(digests), config, tmp, max_size)
            if tree is None:
                log.info(f"unpacking image {hexd[:12]} ({f})")
                tree = build_format(f, layers, tmp, config, max_size=max_size,
                                    tmpdir=self.tmp)
            try:
                crash_point("extracted")
                os.rename(tmp, final)
            except BaseException:
                rmtree(tmp)
                raise
            crash_point("format-renamed")
        return tree

    def _clone_parent(self, hexd: str, digests: list, diff_ids) -> tuple | None:
        """(hex, number of layers, layer sizes, donor hex or None) of the recorded image
        with a directory whose layers are the longest prefix of `digests` (all of them
        counts: the same layers under another config), or None. Its diff_ids must be
        the new config's for those layers (a fresh unpack would check them against the
        content, which the parent's unpack did); its record must give its layers'
        sizes. The donor: the image with a directory that shares more leading layers
        with `digests` than the parent without being a prefix (the previous build of
        the same Dockerfile), whose identical files are linked, not written."""
        best = None
        donor: tuple = (None, 0)
        for name in os.listdir(self.records):
            h = name[:-5]
            if not name.endswith(".json") or h == hexd or not _HEX.match(h):
                continue
            try:
                raw = self._read_record_raw(h)
                if raw is None or "dir" not in raw.get("formats", []):
                    continue
                man = self._json_blob(h, raw["manifest_blob"], "manifest")
            except StoreError:
                continue                # damaged: never a parent
            pl = [x.get("digest") for x in man.get("layers", []) if isinstance(x, dict)]
            ls = raw.get("layer_sizes")
            common = 0
            while common < min(len(pl), len(digests)) and pl[common] == digests[common]:
                common += 1
            if common < len(pl):
                if common > donor[1]:
                    donor = (h, common)
                continue
            if len(pl) > len(digests) or not isinstance(ls, list) or len(ls) != len(pl):
                continue
            if best is not None and len(pl) <= best[1]:
                continue
            if isinstance(diff_ids, list):
                try:
                    pcfg = self._json_blob(h, raw["config_digest"], "config")
                except StoreError:
                    continue
                pids = (pcfg.get("rootfs") or {}).get("diff_ids")
                if not isinstance(pids, list) or pids[:len(pl)] != diff_ids[:len(pl)]:
                    continue
            best = (h, len(pl), ls)
        if best is None:
            return None
        return best + ((donor[0] if donor[1] > best[1] else None),)

    def _clone_dir(self, hexd: str, layers: list, digests: list, config: bytes, out: str,
                   max_size: int):
        """The directory format of image hexd at `out`, from a parent image's tree
        (_clone_parent) when there is one: its files hard-linked (a store tree is never
        written in place: see fstree.link_clone), only the layers it lacks unpacked on
        top. The parent's lease is held shared while its tree is read, so rmi, prune
        and convert do not take it away meanwhile (they wait as for a starting `run`).
        Returns the layers.Tree, or None when there is no parent (or it is going away):
        then the caller unpacks every layer."""
        from .layers import diff_ids_of  # lazy: `run` never builds (tarfile)
        found = self._clone_parent(hexd, digests, diff_ids_of(config))
        if found is None:
            return None
        ph, first, sizes, dh = found
        try:
            fd = self._open_lease(ph, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return None                 # being deleted or converted: unpack instead
        held = [fd]
        donor = None
        with contextlib.ExitStack() as stack:
            if dh is not None:          # leased while its files are read and linked
                try:
                    dfd = self._open_lease(dh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    dh = None
                else:
                    stack.callback(os.close, dfd)
                    try:
                        draw = self._read_record_raw(dh)
                    except StoreError:
                        draw = None
                    if draw is not None and "dir" in draw.get("formats", []):
                        donor = os.path.join(self.images_dir, dh, "rootfs")
            if donor is None:
                dh = None
            return self._clone_from(hexd, ph, first, sizes, layers, out, config, max_size,
                                    held, donor, dh)

    def _clone_from(self, hexd, ph, first, sizes, layers, out, config, max_size, held,
                    donor, dh):
        """_clone_dir's work once the parent (lease fd in held) and the donor are known."""
        from .formats import clone_dir  # lazy: `run` never builds (tarfile)

        def release() -> None:
            if held:
                os.close(held.pop())
            crash_point("cloned")
        try:
            try:
                raw = self._read_record_raw(ph)   # still there, with its directory?
            except StoreError:
                return None
            if raw is None or "dir" not in raw.get("formats", []):
                return None
            log.info(f"unpacking image {hexd[:12]} (dir) onto a clone of {ph[:12]}: "
                     f"{len(layers) - first} of {len(layers)} layers to unpack"
                     + (f", identical files linked from {dh[:12]}" if dh else ""))
            try:
                return clone_dir(os.path.join(self.images_dir, ph, "rootfs"), first,
                                 sum(sizes), sizes, layers, out, config, max_size=max_size,
                                 cloned=release, donor=donor)
            except OSError as e:    # the clone itself (a full disk, a damaged parent)
                log.info(f"cloning {ph[:12]}'s tree failed ({e}); unpacking every layer")
                return None
        finally:
            if held:
                os.close(held.pop())

    def convert(self, name_or_id: str, fmt: str, keep: bool = False) -> ImageRecord:
        """Add format `fmt` to an image; remove the other formats unless keep."""
        rec = self.require(name_or_id)
        formats = parse_formats(fmt)
        hexd = rec.hex
        with contextlib.ExitStack() as leased, self.lock("image-" + hexd):
            raw = self._read_record_raw(hexd)
            if raw is None:
                raise NotFound(f"image {name_or_id} was removed meanwhile")
            have = list(raw.get("formats", []))
            missing = [f for f in formats if f not in have]
            new = [f for f in FORMATS if f in formats or (keep and f in have)]
            dropped = [f for f in have if f not in new]
            what = "drop the directory of" if "dir" in dropped else "drop the squashfs file of"
            if dropped:     # fail early, before a long build; held again for the drop
                with contextlib.ExitStack() as probe:
                    self._take_exclusive(rec, what, probe, name_or_id, "dir" in dropped)
            if missing:
                layers = [self.blob_path(dg) for dg in rec.layers]
                lost = [dg for dg in rec.layers if not self.has_blob(dg)]
                if lost:
                    if not have:
                        raise StoreError(f"image {name_or_id}: layers missing and no format "
                                         "to convert from", "pull or load it again")
                    self._convert_from_existing(hexd, have[0], missing)
                else:
                    self._build_formats(hexd, layers, self.read_blob(raw["config_digest"]),
                                        missing, True, rec.layers)
            d = os.path.join(self.images_dir, hexd)
            if dropped:
                try:
                    self._take_exclusive(rec, what, leased, name_or_id, "dir" in dropped)
                except ImageError:
                    for f in missing:   # not recorded: take back what this call built
                        rmtree(os.path.join(d, entry_name(f)))
                    raise
            raw["formats"] = new
            self._write_record(hexd, raw)
            for f in dropped:
                rmtree(os.path.join(d, entry_name(f)))
        out = self._record(hexd)
        assert out is not None
        return out

    def _convert_from_existing(self, hexd: str, src_fmt: str, missing: list) -> None:
        from .formats import transcode  # lazy: `run` never builds
        d = os.path.join(self.images_dir, hexd)
        for f in missing:
            tmp = self.tmp_path(f)
            transcode(os.path.join(d, entry_name(src_fmt)), src_fmt, tmp, f)
            try:
                os.rename(tmp, os.path.join(d, entry_name(f)))
            except BaseException:
                rmtree(tmp)
                raise

    # ------------------------------------------------------------------ queries
    def images(self) -> list[ImageRecord]:
        tm = self._tags()
        out = []
        for name in sorted(os.listdir(self.records)):
            if name.endswith(".json") and _HEX.match(name[:-5]):
                try:
                    r = self._record(name[:-5], tm)
                except StoreError as e:  # one damaged image does not hide the others
                    log.warning(f"{e.what}; run 'hpcrun prune --repair' (or "
                                f"'hpcrun rmi -f {name[:12]}')")
                    continue
                if r is not None:
                    out.append(r)
        out.sort(key=lambda r: (r.committed, r.created), reverse=True)
        return out

    def get(self, name_or_id: str) -> ImageRecord | None:
        """By tag, by full or short id (optionally 'sha256:'-prefixed), by repo digest."""
        s = name_or_id.strip()
        tm = self._tags()
        from .reference import try_parse  # lazy: keeps hpcrun run's start-up small
        ref = None if s.startswith("sha256:") else try_parse(s)
        if ref is not None:
            if ref.digest is not None:
                want = f"{ref.name}@{ref.digest}"
                for r in self.images():
                    if want in r.repo_digests or (ref.tag and str(ref) in r.tags):
                        return r
            else:
                img = tm.get(str(ref))
                if img is not None:
                    return self._record(digest_hex(img), tm)
        h = s[len("sha256:"):] if s.startswith("sha256:") else s
        if _SHORT.match(h):
            if len(h) == 64:
                return self._record(h, tm)
            hits = [n[:-5] for n in os.listdir(self.records)
                    if n.endswith(".json") and n.startswith(h)]
            if len(hits) > 1:
                raise ImageError(f"short id {h!r} is ambiguous: it matches {len(hits)} images",
                                 "give more digits of the id")
            if hits:
                return self._record(hits[0], tm)
        if s.startswith("sha256:"):
            for r in self.images():
                if r.manifest_digest == s:
                    return r
        return None

    def require(self, name_or_id: str) -> ImageRecord:
        r = self.get(name_or_id)
        if r is None:
            raise NotFound(f"no such image: {name_or_id}",
                           "see 'hpcrun images'; pull, load or import it first")
        return r

    # ------------------------------------------------------------------ names
    def tag(self, src: str, new: str) -> None:
        rec = self.require(src)
        r = normalize(new)
        if r.digest:
            raise ImageError(f"cannot tag with a digest: {new!r}", "give REPOSITORY[:TAG]")
        with self.lock("tags"):
            tm = self._tags()
            tm[str(r)] = rec.id
            self._write_tags(tm)

    def untag(self, name: str) -> None:
        r = normalize(name)
        with self.lock("tags"):
            tm = self._tags()
            if str(r) not in tm:
                raise NotFound(f"no such image: {name}", "see 'hpcrun images'")
            del tm[str(r)]
            self._write_tags(tm)

    def _refuse_if_running(self, rec: "ImageRecord", what: str) -> None:
        """Docker refuses to delete an image a running container uses, even with -f."""
        pids = running_containers(rec.dir_path) if rec.dir_path else []
        if pids:
            raise ImageError(
                f"unable to {what} {rec.short_id} - image is being used by a running "
                f"container (pid {', '.join(map(str, pids[:5]))})",
                "stop the container first (kill PID), then try again")

    def remove(self, name_or_id: str, force: bool = False) -> list[str]:
        """Docker's rmi: untag a name; delete the image when no name is left.

        Returns the lines Docker prints ("Untagged: ...", "Deleted: sha256:...").
        """
        try:
            rec = self.require(name_or_id)
        except StoreError:
            if not force:
                raise
            return self._remove_damaged(name_or_id)
        lines: list[str] = []
        from .reference import try_parse  # lazy: keeps hpcrun run's start-up small
        ref = try_parse(name_or_id)
        by_name = ref is not None and ref.digest is None and str(ref) in rec.tags
        with contextlib.ExitStack() as leased:
            with self.lock("tags"):
                tm = self._tags()
                if by_name:
                    del tm[str(ref)]
                    lines.append(f"Untagged: {ref.familiar}")  # type: ignore[union-attr]
                else:
                    mine = sorted(t for t, i in tm.items() if i == rec.id)
                    if len(mine) > 1 and not force:
                        raise ImageError(
                            f"unable to delete {rec.short_id} (must be forced) - image is "
                            f"referenced in multiple repositories",
                            "remove the names one by one or use 'hpcrun rmi -f'")
                    for t in mine:
                        del tm[t]
                        lines.append(f"Untagged: {_familiar(t)}")
                left = [t for t, i in tm.items() if i == rec.id]
                if not left:   # before any name is removed
                    self._take_exclusive(rec, "delete", leased, name_or_id)
                self._write_tags(tm)
            if not left:
                self._delete_image(rec.hex)
                lines.append(f"Deleted: {rec.id}")
        return lines

    def _remove_damaged(self, name_or_id: str) -> list[str]:
        """rmi -f of an image whose record or blobs are damaged: by id, or by a name."""
        h = name_or_id[len("sha256:"):] if name_or_id.startswith("sha256:") else name_or_id
        hits = [n[:-5] for n in os.listdir(self.records) if n.endswith(".json")
                and _SHORT.match(h) and n.startswith(h)]
        if not hits:
            from .reference import try_parse  # lazy: keeps hpcrun run's start-up small
            ref = try_parse(name_or_id)
            img_id = self._tags().get(str(ref)) if ref is not None else None
            if img_id and os.path.lexists(self._record_path(digest_hex(img_id))):
                hits = [digest_hex(img_id)]
        if len(hits) != 1:
            raise StoreError(f"cannot remove damaged image {name_or_id}",
                             "give its id as 'hpcrun images' or the warning shows it, "
                             "or run 'hpcrun prune --repair'")
        img = "sha256:" + hits[0]
        lines = []
        with self.lock("tags"):
            tm = self._tags()
            for t in sorted(t for t, i in tm.items() if i == img):
                del tm[t]
                lines.append(f"Untagged: {_familiar(t)}")
            self._write_tags(tm)
        self._delete_image(hits[0])
        return lines + [f"Deleted: {img}"]

    def _delete_image(self, hexd: str) -> None:
        with self.lock("image-" + hexd):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._record_path(hexd))  # the image is gone from here on
            d = os.path.join(self.images_dir, hexd)
            if os.path.lexists(d):
                tmp = self.tmp_path("rm")
                os.rename(d, tmp)
                rmtree(tmp)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lease_path(hexd))   # a waiting `run` reopens, finds no record

    def _blobs_in_use(self) -> set | None:
        """Hex digests of every blob a record needs; None if a record is damaged (then
        what it needs cannot be known, and prune keeps every blob)."""
        used = set()
        for name in os.listdir(self.records):
            if not (name.endswith(".json") and _HEX.match(name[:-5])):
                continue
            try:
                raw = self._read_record_raw(name[:-5])
                if raw is None:
                    continue
                man = self._json_blob(name[:-5], raw["manifest_blob"], "manifest")
            except StoreError:
                return None
            used.add(digest_hex(raw["config_digest"]))
            used.add(digest_hex(raw["manifest_blob"]))
            layers = man.get("layers", [])
            for x in layers if isinstance(layers, list) else ():
                d = x.get("digest") if isinstance(x, dict) else None
                if isinstance(d, str) and _ID.match(d):
                    used.add(digest_hex(d))
        return used

    def prune(self, all: bool = False) -> tuple[list[str], int]:
        """Remove untagged images (all images with all=True), unreferenced blobs and
        leftovers. Returns (deleted image ids, bytes reclaimed)."""
        deleted, freed = [], 0
        with contextlib.ExitStack() as leased:
            # every candidate's lease first, then one /proc scan: a container that
            # started before we held its image's lease is visible in the scan
            candidates = []
            for r in self.images():
                if all or not r.tags:
                    fd = self._exclusive_lease(r.hex, LEASE_WAIT)
                    if fd is None:
                        log.warning(f"kept {r.short_id}: a container is starting on it")
                        continue
                    leased.callback(os.close, fd)
                    candidates.append(r)
            roots = container_roots() if candidates else []
            for r in candidates:
                pids = running_containers(r.dir_path, roots) if r.dir_path else []
                if pids:
                    log.warning(f"kept {r.short_id}: a running container uses it "
                                f"(pid {', '.join(map(str, pids[:5]))})")
                    continue
                if all:
                    with self.lock("tags"):
                        tm = {t: i for t, i in self._tags().items() if i != r.id}
                        self._write_tags(tm)
                freed += du(os.path.join(self.images_dir, r.hex))
                self._delete_image(r.hex)
                deleted.append(r.id)
        # Blobs and leftovers only when no other hpcrun process uses the store: a running
        # pull owns blobs that no record names yet.
        with self._alone() as alone:
            if not alone:
                log.warning("other hpcrun processes use the store: unreferenced blobs kept")
                return deleted, freed
            self._clean(partials=True)
            used = self._blobs_in_use()
            if used is None:
                log.warning("damaged image records: unreferenced blobs kept (run "
                            "'hpcrun prune --repair' first)")
                return deleted, freed
            for name in os.listdir(self.blobs):
                if name not in used:
                    p = os.path.join(self.blobs, name)
                    freed += os.lstat(p).st_size
                    os.unlink(p)
        return deleted, freed


REPAIR_HINT = ("run 'hpcrun prune --repair' to move damaged store files aside (a damaged "
               "image is then gone: pull, load or import it again)")
_ID = re.compile(r"sha256:[0-9a-f]{64}\Z")


def _load_json(path: str, what: str):
    """A store file's JSON, None if the file does not exist; anything else that keeps it
    from being read is a StoreError that names the file."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"can't read {what} {path}: {e.strerror}",
                         f"the store must be yours and readable (chmod 600 {path}), or "
                         "run 'hpcrun prune --repair' to move it aside") from e
    except (ValueError, RecursionError) as e:
        raise StoreError(f"{what} {path} is damaged: not JSON ({e})", REPAIR_HINT) from e


def _tags_of(doc) -> tuple[dict, str]:
    """(tags, "") for a well-formed tags.json document, else ({}, what is wrong)."""
    if not isinstance(doc, dict):
        return {}, f"expected a JSON object, found {type(doc).__name__}"
    tm = doc.get("tags", {})
    if not isinstance(tm, dict):
        return {}, f"'tags' is {type(tm).__name__}, not an object"
    for t, i in tm.items():
        if not isinstance(i, str) or not _ID.match(i):
            return {}, f"the name {t!r} maps to {i!r}, not an image id"
    return tm, ""


def _record_problem(doc) -> str:
    """What is wrong with an image record document ("" if nothing)."""
    if not isinstance(doc, dict):
        return f"expected a JSON object, found {type(doc).__name__}"
    for k in ("config_digest", "manifest_blob"):
        v = doc.get(k)
        if not isinstance(v, str) or not _ID.match(v):
            return f"'{k}' is {v!r}, not a sha256 digest"
    formats = doc.get("formats", [])
    if not isinstance(formats, list) or any(f not in FORMATS for f in formats):
        return f"'formats' is {formats!r}, not a list of {' / '.join(FORMATS)}"
    for k in ("repo_digests",):
        v = doc.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            return f"'{k}' is {v!r}, not a list of strings"
    for k in ("size",):
        v = doc.get(k, 0)
        if not isinstance(v, int) or isinstance(v, bool):
            return f"'{k}' is {v!r}, not a number"
    ls = doc.get("layer_sizes")
    if ls is not None and (not isinstance(ls, list)
                           or not all(isinstance(x, int) for x in ls)):
        return f"'layer_sizes' is {ls!r}, not a list of numbers"
    for k in ("created", "source", "committed", "manifest_digest"):
        v = doc.get(k, "")
        if v is not None and not isinstance(v, str):
            return f"'{k}' is {v!r}, not a string"
    return ""


def parse_formats(fmt: str) -> list[str]:
    out = []
    for f in (fmt or "dir").replace("+", ",").split(","):
        f = f.strip().lower()
        if f == "sqfs":
            f = "squashfs"
        if f == "both":
            out += ["dir", "squashfs"]
            continue
        if f not in FORMATS:
            raise ImageError(f"unknown image format {f!r}", "use dir or squashfs")
        out.append(f)
    return [f for f in FORMATS if f in out]


def normalize(name: str):
    """Parse a name with the registry helper's reference rules."""
    from .reference import parse  # lazy: keeps hpcrun run's start-up small
    return parse(name)


def _familiar(canonical: str) -> str:
    from .reference import try_parse  # lazy: keeps hpcrun run's start-up small
    r = try_parse(canonical)
    return r.familiar if r is not None else canonical


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
