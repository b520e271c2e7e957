"""`hpcrun pull`: registry -> store.

Steps: manifest (an index picks the platform: --platform, default the host's), config
blob, layer blobs in parallel (config ``pull_parallel``), then ``Store.commit_image``
unpacks them into the requested format and records the image.

Every blob is fetched under the store lock ``blob-<digest>`` and checked again inside
it, so eight processes pulling one image download each layer once; the others print
"Already exists". Blobs go through ``Store.blob_writer``, which verifies the digest and
renames into place; nothing is recorded before every blob is complete and verified,
so a pull killed at any moment leaves no image that looks complete (``Store()`` cleans
the leftovers; a partial layer is kept so the next pull resumes it).
"""
from __future__ import annotations

import json
import threading
from typing import Optional, Union

from .. import config, log
from ..errors import ImageError, RegistryError
from . import ociconfig
from .progress import Progress, short
from .reference import Reference, parse
from .registry import (INDEX_TYPES, MANIFEST_TYPES, Registry, check_digest, parse_platform,
                       platform_str, select_platform)

LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)


class _Aborted(Exception):
    pass


def _validate_manifest(doc: dict, what: str) -> tuple[dict, list[dict]]:
    cfg = doc.get("config")
    layers = doc.get("layers")
    if not isinstance(cfg, dict) or not isinstance(layers, list):
        raise ImageError(f"manifest of {what} lacks config or layers", "the image is malformed")
    check_digest(cfg.get("digest"), f"config digest in {what}")
    for d in layers:
        if not isinstance(d, dict):
            raise ImageError(f"manifest of {what} has a malformed layer entry")
        check_digest(d.get("digest"), f"layer digest in {what}")
        mt = d.get("mediaType", "")
        if mt and mt not in LAYER_TYPES:
            raise ImageError(f"{what}: layer {d['digest']} has unsupported media type {mt!r}",
                             "hpcrun unpacks tar layers (plain, gzip or zstd)")
        if mt.endswith("+zstd"):
            try:
                import zstandard  # noqa: F401
            except ImportError:
                raise ImageError(f"{what}: layer {d['digest']} is zstd-compressed, but the zstandard "
                                 "module is missing", "pip install 'hpcrun[zstd]' (or zstandard)") from None
        if not isinstance(d.get("size", 0), int) or d.get("size", 0) < 0:
            raise ImageError(f"manifest of {what} gives layer {d['digest']} a bad size")
    limit = int(config.get("max_image_size"))
    total = sum(d.get("size", 0) for d in layers)
    if total > limit:
        raise ImageError(f"{what}: layers are {total} bytes compressed, over max_image_size ({limit})",
                         "raise max_image_size in the config if this image is expected")
    return cfg, layers


def _config_platform(cfg: dict) -> dict:
    p = {"os": cfg.get("os", ""), "architecture": cfg.get("architecture", "")}
    if cfg.get("variant"):
        p["variant"] = cfg["variant"]
    return p


def resolve(reg: Registry, ref: Reference, platform: Optional[str]) -> tuple[bytes, str, str]:
    """(manifest bytes, its digest, the digest the reference resolves to) for one platform."""
    body, mtype, digest = reg.get_manifest(ref.repository, ref.ref)
    top = digest
    if mtype in INDEX_TYPES:
        index = json.loads(body)
        want = parse_platform(platform)
        try:
            d = select_platform(index, want)
        except RegistryError as e:
            raise RegistryError(f"{ref.familiar}: {e.what}", e.hint) from None
        check_digest(d.get("digest"), "manifest digest in the index")
        body, mtype, digest = reg.get_manifest(ref.repository, d["digest"],
                                               what=f"{ref.familiar} ({platform_str(want)})")
        if mtype not in MANIFEST_TYPES:
            raise ImageError(f"{ref.familiar}: the entry for {platform_str(want)} is not an image "
                             f"manifest ({mtype})", "nested indexes are not supported")
    return body, digest, top


def pull(ref: Union[str, Reference], *, store=None, platform: Optional[str] = None,
         fmt: str = "dir", quiet: bool = False, insecure: Optional[bool] = None,
         progress: Optional[Progress] = None):
    """Pull an image into the store and return its ImageRecord."""
    from .store import Store

    r = parse(ref) if isinstance(ref, str) else ref
    store = store if store is not None else Store()
    prog = progress or Progress(quiet=quiet)
    reg = Registry(r.registry, insecure=insecure)
    try:
        mbytes, mdigest, top = resolve(reg, r, platform)
        prog.line(f"{r.tag or r.digest}: Pulling from {r.repository}")
        manifest = json.loads(mbytes)
        cfg_desc, layers = _validate_manifest(manifest, r.familiar)

        # Config first: small, and it names the image (its digest is the image id).
        cd = cfg_desc["digest"]
        with store.lock("blob-" + cd):
            if not store.has_blob(cd):
                store.put_blob_bytes(reg.get_blob_bytes(r.repository, cd), cd)
        cfg_bytes = store.read_blob(cd)
        cfg = ociconfig.loads(cfg_bytes, f"{cd} of {r.familiar}")
        if platform and cfg.get("architecture"):
            want, have = parse_platform(platform), _config_platform(cfg)
            if (want["os"], want["architecture"]) != (have["os"], have["architecture"]) or \
                    (want.get("variant") and have.get("variant") and want["variant"] != have["variant"]):
                raise RegistryError(f"image {r.familiar} was found but does not match the specified "
                                    f"platform: wanted {platform_str(want)}, actual: {platform_str(have)}",
                                    "drop --platform or pick the platform the image was built for")
        existed = store.get(f"sha256:{cd.split(':', 1)[1]}") is not None

        fetched = _fetch_layers(reg, store, r, layers, prog)

        # The store keeps the exact manifest bytes: push sends them back byte for byte.
        rec = store.commit_image(mbytes, cfg_bytes, tags=[str(r)],
                                 fmt=fmt, source=str(r), manifest_digest=top)
        for d in fetched:
            prog.status(d, "Pull complete")
        prog.line(f"Digest: {top}")
        if existed and not fetched:
            prog.line(f"Status: Image is up to date for {r.familiar}")
        else:
            prog.line(f"Status: Downloaded newer image for {r.familiar}")
        return rec
    finally:
        reg.close()


def _fetch_layers(reg: Registry, store, r: Reference, layers: list[dict], prog: Progress) -> list[str]:
    """Download the missing layer blobs, `pull_parallel` at once; returns those fetched."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    todo: list[dict] = []
    seen = set()
    for d in layers:
        dg = d["digest"]
        if dg in seen:
            continue
        seen.add(dg)
        if store.has_blob(dg):
            prog.status(dg, "Already exists")
        else:
            prog.status(dg, "Pulling fs layer")
            todo.append(d)
    if not todo:
        return []
    abort = threading.Event()
    fetched: list[str] = []

    def one(desc: dict) -> None:
        dg, size = desc["digest"], desc.get("size")
        lock = store.lock("blob-" + dg)
        with lock:
            if store.has_blob(dg):          # another process finished it while we waited
                prog.status(dg, "Already exists")
                return
            if abort.is_set():
                raise _Aborted()
            prog.status(dg, "Downloading")

            def advance(n: int) -> None:
                if abort.is_set():
                    raise _Aborted()
                prog.advance(dg, n, size)

            with store.blob_writer(dg, size=size, resume=True) as w:
                if w.tell():
                    log.info(f"{short(dg)}: resuming at byte {w.tell()}")
                reg.fetch_blob(r.repository, dg, w, size=size, progress=advance)
                prog.status(dg, "Verifying Checksum")
            prog.status(dg, "Download complete")
            fetched.append(dg)

    workers = max(1, min(int(config.get("pull_parallel") or 1), len(todo)))
    if workers == 1:
        for d in todo:
            one(d)
        return fetched
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pull")
    try:
        futs = [ex.submit(one, d) for d in todo]
        done, _ = wait(futs, return_when=FIRST_EXCEPTION)
        errs = [f.exception() for f in done if f.exception() is not None]
        if errs:
            abort.set()
            wait(futs)
            real = [e for e in errs if not isinstance(e, _Aborted)]
            raise real[0] if real else errs[0]
    except BaseException:
        abort.set()
        raise
    finally:
        ex.shutdown(wait=True)
    return fetched

