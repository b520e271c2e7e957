"""The node-local image store: content-addressed blobs, image records, tags, locks.

Layout under the root (``config.get("store")`` or HPCRUN_STORE; 0700)::

    blobs/sha256/<hex>          manifests, configs and layers, verified before renamed in
    images/<idhex>/rootfs/      the "dir" format (config copy in rootfs/.hpcrun/config.json)
    images/<idhex>/image.sqfs   the "squashfs" format
    records/<idhex>.json        the image record: THE commit point of an image
    tags.json                   {"tags": {"docker.io/library/x:tag": "sha256:<idhex>"}}
    locks/<name>.lock           flock(2) files
    tmp/                        everything is written here first, then renamed into place

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
around each download.

Test hook: HPCRUN_TEST_CRASH_AT=<step> makes the process SIGKILL itself at that step
(steps: blob-written, extracted, format-renamed, record-written, tagged). Tests only.
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

FORMATS = ("dir", "squashfs")
_HEX = re.compile(r"[0-9a-f]{64}\Z")
_SHORT = re.compile(r"[0-9a-f]{4,64}\Z")
PARTIAL_MAX_AGE = 24 * 3600

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def crash_point(step: str) -> None:
    """Test hook: SIGKILL ourselves at `step` when HPCRUN_TEST_CRASH_AT names it."""
    if os.environ.get("HPCRUN_TEST_CRASH_AT") == step:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def sha256_bytes(data: bytes) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str, what: str = "digest") -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not _HEX.match(hexpart):
        raise ImageError(f"unsupported or malformed {what}: {digest!r}",
                         "only sha256 digests (64 lowercase hex digits) are supported")
    return hexpart


def rmtree(path: str) -> None:
    """shutil.rmtree that also removes read-only directories the caller owns."""
    import shutil

    def onerror(func, p, exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except FileNotFoundError:
            pass
        except OSError:
            if func is os.rmdir:
                shutil.rmtree(p, ignore_errors=True)
    if os.path.isdir(path) and not os.path.islink(path):
        import sys
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=onerror)
        else:
            shutil.rmtree(path, onerror=onerror)
    elif os.path.lexists(path):
        os.unlink(path)


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
            from .. import config
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
            old = os.umask(0o077)
            try:
                for d in (self.blobs, self.images_dir, self.records, self.locks, self.tmp):
                    os.makedirs(d, exist_ok=True)
            finally:
                os.umask(old)
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
            keep = {"rootfs" if f == "dir" else "image.sqfs" for f in rec.get("formats", [])}
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
        import hashlib
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
        import hashlib
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
                             "pull or load the image again") from None

    # ------------------------------------------------------------------ records
    def _record_path(self, hexd: str) -> str:
        return os.path.join(self.records, hexd + ".json")

    def _read_record_raw(self, hexd: str) -> dict | None:
        try:
            with open(self._record_path(hexd), "rb") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise StoreError(f"image record {self._record_path(hexd)} is damaged ({e})",
                             f"remove it with 'hpcrun rmi -f sha256:{hexd}'") from e

    def _write_record(self, hexd: str, rec: dict) -> None:
        _atomic_write(self._record_path(hexd),
                      json.dumps(rec, indent=1, sort_keys=True).encode(), self.tmp)

    def _tags(self) -> dict[str, str]:
        try:
            with open(self.tags_file, "rb") as f:
                return json.load(f).get("tags", {})
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise StoreError(f"{self.tags_file} is damaged ({e})",
                             "remove it; images stay, their names are lost") from e

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
        try:
            cfg = json.loads(self.read_blob(raw["config_digest"]))
            man = json.loads(self.read_blob(raw["manifest_blob"]))
        except ValueError as e:
            raise StoreError(f"image sha256:{hexd[:12]}: damaged manifest or config ({e})",
                             f"remove it with 'hpcrun rmi -f {hexd[:12]}'") from e
        d = os.path.join(self.images_dir, hexd)
        formats = tuple(raw.get("formats", ()))
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
                    tree = self._build_formats(hexd, layers, config, missing, rec is not None)
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
                       exists: bool):
        """Build formats into tmp/, rename into images/<hex>/. Caller holds the image lock."""
        from .. import config as cfgmod
        max_size = int(cfgmod.get("max_image_size"))  # type: ignore[arg-type]
        d = os.path.join(self.images_dir, hexd)
        os.makedirs(d, mode=0o700, exist_ok=True)
        tree = None
        for f in formats:
            log.info(f"unpacking image {hexd[:12]} ({f})")
            final = os.path.join(d, "rootfs" if f == "dir" else "image.sqfs")
            if os.path.lexists(final):  # leftover of a killed commit (no record names it)
                rmtree(final)
            if f == "dir":
                tmp = self.tmp_path("rootfs")
                os.mkdir(tmp, 0o700)
                try:
                    tree = unpack_dir(layers, tmp, config, max_size=max_size)
                    crash_point("extracted")
                    os.rename(tmp, final)
                except BaseException:
                    rmtree(tmp)
                    raise
            else:
                from . import squash
                tmp = self.tmp_path("sqfs")
                try:
                    tree = squash.build(layers, tmp, config, max_size=max_size,
                                        tmpdir=self.tmp)
                    crash_point("extracted")
                    os.rename(tmp, final)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise
            crash_point("format-renamed")
        return tree

    def convert(self, name_or_id: str, fmt: str, keep: bool = False) -> ImageRecord:
        """Add format `fmt` to an image; remove the other formats unless keep."""
        rec = self.require(name_or_id)
        formats = parse_formats(fmt)
        hexd = rec.hex
        with self.lock("image-" + hexd):
            raw = self._read_record_raw(hexd)
            if raw is None:
                raise NotFound(f"image {name_or_id} was removed meanwhile")
            have = list(raw.get("formats", []))
            missing = [f for f in formats if f not in have]
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
                                        missing, True)
            new = [f for f in FORMATS if f in formats or (keep and f in have)]
            if "dir" in have and "dir" not in new:
                self._refuse_if_running(rec, "drop the directory of")
            raw["formats"] = new
            self._write_record(hexd, raw)
            d = os.path.join(self.images_dir, hexd)
            for f in have:
                if f not in new:
                    rmtree(os.path.join(d, "rootfs" if f == "dir" else "image.sqfs"))
        out = self._record(hexd)
        assert out is not None
        return out

    def _convert_from_existing(self, hexd: str, src_fmt: str, missing: list) -> None:
        from . import squash
        d = os.path.join(self.images_dir, hexd)
        for f in missing:
            if f == "squashfs":
                tmp = self.tmp_path("sqfs")
                try:
                    squash.from_dir(os.path.join(d, "rootfs"), tmp)
                    os.rename(tmp, os.path.join(d, "image.sqfs"))
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                    raise
            else:
                tmp = self.tmp_path("rootfs")
                try:
                    squash.unsquash(os.path.join(d, "image.sqfs"), tmp)
                    os.rename(tmp, os.path.join(d, "rootfs"))
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
                    log.warning(f"image {name[:12]} is damaged ({e.what}); remove it with "
                                f"'hpcrun rmi -f {name[:12]}'")
                    continue
                if r is not None:
                    out.append(r)
        out.sort(key=lambda r: (r.committed, r.created), reverse=True)
        return out

    def get(self, name_or_id: str) -> ImageRecord | None:
        """By tag, by full or short id (optionally 'sha256:'-prefixed), by repo digest."""
        s = name_or_id.strip()
        tm = self._tags()
        from .reference import try_parse
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
        from .reference import try_parse
        ref = try_parse(name_or_id)
        by_name = ref is not None and ref.digest is None and str(ref) in rec.tags
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
            if not left:
                self._refuse_if_running(rec, "delete")   # before any name is removed
            self._write_tags(tm)
        if not left:
            self._delete_image(rec.hex)
            lines.append(f"Deleted: {rec.id}")
        return lines

    def _remove_damaged(self, name_or_id: str) -> list[str]:
        """rmi -f of an image whose record or blobs are damaged: by id only."""
        h = name_or_id[len("sha256:"):] if name_or_id.startswith("sha256:") else name_or_id
        hits = [n[:-5] for n in os.listdir(self.records) if n.endswith(".json")
                and _SHORT.match(h) and n.startswith(h)]
        if len(hits) != 1:
            raise StoreError(f"cannot remove damaged image {name_or_id}",
                             "give its id as 'hpcrun images' or the warning shows it")
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

    def prune(self, all: bool = False) -> tuple[list[str], int]:
        """Remove untagged images (all images with all=True), unreferenced blobs and
        leftovers. Returns (deleted image ids, bytes reclaimed)."""
        deleted, freed = [], 0
        roots = container_roots()
        for r in self.images():
            if all or not r.tags:
                pids = running_containers(r.dir_path, roots) if r.dir_path else []
                if pids:
                    log.warning(f"kept {r.short_id}: a running container uses it "
                                f"(pid {', '.join(map(str, pids[:5]))})")
                    continue
                if all:
                    with self.lock("tags"):
                        tm = {t: i for t, i in self._tags().items() if i != r.id}
                        self._write_tags(tm)
                freed += _du(os.path.join(self.images_dir, r.hex))
                self._delete_image(r.hex)
                deleted.append(r.id)
        # Blobs and leftovers only when no other hpcrun process uses the store: a running
        # pull owns blobs that no record names yet.
        fcntl.flock(self._hold, fcntl.LOCK_UN)
        try:
            fcntl.flock(self._hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fcntl.flock(self._hold, fcntl.LOCK_SH)
            log.warning("other hpcrun processes use the store: unreferenced blobs kept")
            return deleted, freed
        try:
            self._clean(partials=True)
            used = set()
            for name in os.listdir(self.records):
                raw = self._read_record_raw(name[:-5]) if name.endswith(".json") else None
                if raw is None:
                    continue
                used.add(digest_hex(raw["config_digest"]))
                used.add(digest_hex(raw["manifest_blob"]))
                try:
                    man = json.loads(self.read_blob(raw["manifest_blob"]))
                    used.update(digest_hex(x["digest"]) for x in man.get("layers", []))
                except (StoreError, ValueError):
                    pass
            for name in os.listdir(self.blobs):
                if name not in used:
                    p = os.path.join(self.blobs, name)
                    freed += os.lstat(p).st_size
                    os.unlink(p)
        finally:
            fcntl.flock(self._hold, fcntl.LOCK_SH)
        return deleted, freed


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
    from .reference import parse
    return parse(name)


def _familiar(canonical: str) -> str:
    from .reference import try_parse
    r = try_parse(canonical)
    return r.familiar if r is not None else canonical


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _du(path: str) -> int:
    total = 0
    for dp, dn, fn in os.walk(path):
        for f in fn:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dp, f)).st_blocks * 512
    if os.path.isfile(path):
        total += os.lstat(path).st_size
    return total


def unpack_dir(layers: list, dest: str, config: bytes, *, max_size: int | None):
    """Unpack layers into dest and write dest/.hpcrun/config.json; returns the
    layers.Tree (its .size and .layer_sizes are the content sizes)."""
    from .layers import diff_ids_of, extract
    tree = extract(layers, dest, max_size=max_size, diff_ids=diff_ids_of(config))
    meta = os.path.join(dest, ".hpcrun")
    if os.path.lexists(meta):
        rmtree(meta)
    os.mkdir(meta, 0o755)
    with open(os.path.join(meta, "config.json"), "wb") as f:
        f.write(config)
    return tree


def container_roots() -> list:
    """(pid, (st_dev, st_ino) of its root, lower layers of its root overlay) of every
    process in a root other than ours: running containers (this user's, or all as
    root). Read once, matched against images by running_containers."""
    try:
        own = os.stat("/")
    except OSError:
        return []
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            r = os.stat(f"/proc/{name}/root")
        except OSError:
            continue                    # gone, or not ours to look at
        if (r.st_dev, r.st_ino) != (own.st_dev, own.st_ino):
            out.append((int(name), (r.st_dev, r.st_ino), _root_lowers(name)))
    return out


def running_containers(rootfs: str, roots=None) -> list[int]:
    """Pids of running containers whose root file system is the image directory
    `rootfs`: bound as the root, or the lower layer of the overlay hpcrun puts on it
    (the C core mounts lowerdir=.../oldroot<rootfs>). `roots`: container_roots(), if
    already read."""
    try:
        real = os.path.realpath(rootfs)
        st = os.stat(real)
    except OSError:
        return []
    lower = "/oldroot" + real
    return sorted(pid for pid, root, lowers in (container_roots() if roots is None else roots)
                  if root == (st.st_dev, st.st_ino) or lower in lowers)


def _root_lowers(pid: str) -> set:
    """The lower layers of the overlays mounted at process pid's root."""
    lowers: set = set()
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return lowers
    for line in lines:
        fields = line.split(" - ", 1)
        if len(fields) != 2 or line.split()[4] != "/":
            continue
        opts = fields[1].split()
        if len(opts) < 3 or opts[0] != "overlay":
            continue
        for opt in opts[2].split(","):
            if opt.startswith("lowerdir="):
                lowers.update(opt[len("lowerdir="):].split(":"))
    return lowers
