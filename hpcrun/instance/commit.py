"""`hpcrun commit NAME IMAGE[:TAG]`: a --writable-tmpfs instance's changes become a new
image in the store, through the store's public API (put_blob_file, commit_image).

The new image is the instance's image plus one layer: the overlay's upper directory as
an uncompressed tar, its whiteouts written as `.wh.NAME` files (OCI), hpcrun's own mount
points left out. An image from the store keeps its layers; a directory image becomes one
base layer of its own first.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import tempfile
import time

from hpcrun.instance import observe, state
from hpcrun.image.store import Store


def _tar_tree(out: str, top: str, *, uid: int, gid: int, skip=(), whiteouts: bool) -> None:
    """Write TOP's tree to the tar OUT (owner set to uid/gid, as inside)."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for d, dirs, files in os.walk(top):
            dirs.sort()
            rel_d = os.path.relpath(d, top)
            for n in sorted(dirs) + sorted(files):
                full = os.path.join(d, n)
                rel = os.path.normpath(os.path.join(rel_d, n))
                if "/" + rel in skip:
                    continue
                st = os.lstat(full)
                if whiteouts and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    ti = tarfile.TarInfo(os.path.join(os.path.dirname(rel), ".wh." + n))
                    ti.mtime = int(st.st_mtime)
                    tf.addfile(ti)
                    continue
                ti = tf.gettarinfo(full, rel)
                ti.uid, ti.gid, ti.uname, ti.gname = uid, gid, "", ""
                if ti.isreg():
                    with open(full, "rb") as f:
                        tf.addfile(ti, f)
                elif ti.isdir() or ti.issym() or ti.islnk():
                    tf.addfile(ti)
            dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]


def _put(store, path: str) -> dict:
    """An uncompressed tar into the store's blobs; its manifest entry (digest = diff_id)."""
    with open(path, "rb") as f:
        dg, size = store.put_blob_file(f)
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": dg, "size": size}


def commit(r: state.Record, image: str) -> str:
    """Commit instance R as IMAGE; returns the new image's id."""
    info = r.info()
    upper = observe.upper_dir(r)
    skip = {m for m in observe.mount_points(r) if m != "/"}
    store = Store()
    base_layers: list = []
    base_cfg: dict = {}
    with tempfile.TemporaryDirectory(dir=store.tmp) as tmp:
        rec = None
        for cand in store.images():
            if cand.dir_path and os.path.realpath(cand.dir_path) == info.get("image_path"):
                rec = cand
                break
        if rec is not None:
            base_layers = [dict(x) for x in rec.manifest.get("layers", [])]
            base_cfg = dict(rec.config)
        else:
            base = os.path.join(tmp, "base.tar")
            _tar_tree(base, info["image_path"], uid=0, gid=0, whiteouts=False,
                      skip={"/.hpcrun"})
            base_layers = [_put(store, base)]
            base_cfg = {"architecture": "amd64", "os": "linux", "config": {},
                        "rootfs": {"type": "layers", "diff_ids": [base_layers[0]["digest"]]}}
            conf_file = os.path.join(info["image_path"], ".hpcrun/config.json")
            if os.path.exists(conf_file):
                with open(conf_file) as f:
                    c = json.load(f)
                base_cfg["config"] = c.get("config", c)
        layer = os.path.join(tmp, "layer.tar")
        _tar_tree(layer, upper, uid=info.get("uid", 0), gid=info.get("gid", 0),
                  skip=skip, whiteouts=True)
        new = _put(store, layer)
        dg = new["digest"]
        cfg = dict(base_cfg)
        rootfs = dict(cfg.get("rootfs") or {"type": "layers", "diff_ids": []})
        rootfs["diff_ids"] = list(rootfs.get("diff_ids", [])) + [dg]
        cfg["rootfs"] = rootfs
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        cfg["created"] = now
        cfg["history"] = list(cfg.get("history", [])) + [
            {"created": now, "created_by": f"hpcrun commit {r.name}"}]
        cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
        cfg_digest = "sha256:" + hashlib.sha256(cfg_bytes).hexdigest()
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": cfg_digest, "size": len(cfg_bytes)},
                    "layers": base_layers + [new]}
        out = store.commit_image(json.dumps(manifest, sort_keys=True).encode(), cfg_bytes,
                                 tags=[image], source=f"commit of instance {r.name}")
    return out.id
