"""`hpcrun push`: store -> registry.

For each layer, then the config: ``HEAD`` (already there: "Layer already exists"),
else a cross-repository mount from another repository of the same registry that the
image came from or is tagged in ("Mounted from ns/other"), else an upload
(``POST``, ``PATCH``, ``PUT ?digest=``: "Pushed"). Last the manifest, sent as the
exact bytes the store holds, so the registry (and skopeo) see the same digest that
``hpcrun images --digests`` shows. Layers upload ``pull_parallel`` at once.
"""
from __future__ import annotations

import json
from typing import Optional
from concurrent.futures import ThreadPoolExecutor

from .. import config
from ..errors import NotFound, StoreError, UsageError
from .progress import Progress
from .reference import Reference, parse, try_parse
from .registry import DOCKER_MANIFEST, OCI_MANIFEST, Registry, sha256_digest

DOCKER_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"


def manifest_bytes(store, rec) -> bytes:
    """The image manifest exactly as stored (pulled, loaded or built)."""
    cands = [getattr(rec, "manifest_blob", None)]
    raw = getattr(store, "_read_record_raw", None)
    if raw is not None:
        cands.append((raw(rec.hex) or {}).get("manifest_blob"))
    cands.append(rec.manifest_digest)
    for c in cands:
        if c and store.has_blob(c):
            b = store.read_blob(c)
            try:
                if json.loads(b) == rec.manifest:
                    return b
            except ValueError:
                continue
    # No stored bytes (should not happen): serialise; the pushed digest is of these bytes.
    return json.dumps(rec.manifest, indent=3).encode()


def _media_type(man: dict) -> str:
    if man.get("mediaType"):
        return man["mediaType"]
    if (man.get("config") or {}).get("mediaType") == DOCKER_CONFIG_TYPE:
        return DOCKER_MANIFEST
    return OCI_MANIFEST


def _mount_sources(rec, target: Reference) -> list[str]:
    """Other repositories on the target registry that should hold this image's blobs."""
    out = []
    for s in list(rec.tags) + list(getattr(rec, "repo_digests", ()) or ()) + [getattr(rec, "source", "")]:
        r = try_parse(s) if s else None
        if r is not None and r.registry == target.registry and r.repository != target.repository \
                and r.repository not in out:
            out.append(r.repository)
    return out


def push(store, name: str, dest: Optional[str] = None, *, quiet: bool = False,
         insecure: Optional[bool] = None, chunk_size: int = 0,
         progress: Optional[Progress] = None) -> str:
    """Push image `name` from the store to `dest` (default: `name`). Returns the manifest digest."""
    if store is None:
        from .store import Store  # lazy: only this branch needs it
        store = Store()
    rec = store.get(name)
    if rec is None:
        raise NotFound(f"no such image: {name}", "see 'hpcrun images'; pull, load or import it first")
    target_s = dest or name
    if target_s.startswith("sha256:") or (dest is None and rec.hex.startswith(target_s)):
        raise UsageError(f"cannot push {target_s!r}: an image id is not a repository name",
                         "give a destination: hpcrun push IMAGE REGISTRY/REPO[:TAG]")
    target = parse(target_s)
    if target.digest:
        raise UsageError(f"cannot push to a digest reference: {target_s}",
                         "give REGISTRY/REPO[:TAG]; the registry computes the digest")
    prog = progress or Progress(quiet=quiet)
    mbytes = manifest_bytes(store, rec)
    man = json.loads(mbytes)
    layers = [d for d in man.get("layers") or []]
    cfg = man.get("config") or {}
    for d in layers + [cfg]:
        if not store.has_blob(d.get("digest", "")):
            raise StoreError(f"{target_s}: blob {d.get('digest')} of the image is not in the store",
                             "pull or load the image again (a squashfs-only conversion may have dropped it)")
    reg = Registry(target.registry, insecure=insecure)
    repo = target.repository
    sources = _mount_sources(rec, target)
    try:
        prog.line(f"The push refers to repository [{target.name}]")
        _upload_all(reg, store, repo, layers, sources, prog, chunk_size)
        _upload_one(reg, store, repo, cfg, sources, None, chunk_size)
        digest = reg.put_manifest(repo, target.tag or "latest", mbytes, _media_type(man))
        assert digest == sha256_digest(mbytes)
        prog.line(f"{target.tag or 'latest'}: digest: {digest} size: {len(mbytes)}")
        return digest
    finally:
        reg.close()


def _upload_one(reg: Registry, store, repo: str, desc: dict, sources: list[str],
                prog: Optional[Progress], chunk_size: int) -> None:
    dg = desc["digest"]
    say = (lambda t: prog.status(dg, t)) if prog is not None else (lambda t: None)
    if reg.has_blob(repo, dg):
        say("Layer already exists")
        return
    loc = None
    for src in sources[:3]:
        loc = reg.mount_blob(repo, dg, src)
        if loc is None:
            say(f"Mounted from {src}")
            return
        break        # the registry opened an ordinary upload instead: use it
    say("Pushing")
    path = store.blob_path(dg)
    size = desc.get("size")
    reg.upload_blob(repo, dg, path, location=loc, chunk_size=chunk_size,
                    progress=(lambda n: prog.advance(dg, n, size)) if prog is not None else None)
    say("Pushed")


def _upload_all(reg, store, repo, layers, sources, prog, chunk_size) -> None:
    todo, seen = [], set()
    for d in layers:
        if d["digest"] not in seen:
            seen.add(d["digest"])
            todo.append(d)
            prog.status(d["digest"], "Preparing")
    workers = max(1, min(int(config.get("pull_parallel") or 1), len(todo) or 1))
    if workers == 1:
        for d in todo:
            _upload_one(reg, store, repo, d, sources, prog, chunk_size)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="push") as ex:
        futs = [ex.submit(_upload_one, reg, store, repo, d, sources, prog, chunk_size) for d in todo]
        for f in futs:
            f.result()
