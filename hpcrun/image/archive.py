"""Image files: load (docker-archive, oci-archive), save (docker-archive), import a root
filesystem tar (with Dockerfile-style --change), export the flattened root filesystem.

Archives are read by member name only, never unpacked to disk, so a hostile name in an
archive cannot write anything; each layer then goes through the store's checks when the
image is committed (layers.py). Every blob named by digest is verified; for
uncompressed docker-archive layers the config's diff_ids are checked too.
"""
from __future__ import annotations

import io
import json
import os
import shlex
import sys
import tarfile
import time
from typing import BinaryIO, Optional, Sequence

from ..errors import ImageError, UsageError
from . import layers as L
from . import ociconfig
from .ociconfig import parse_signal
from .fstree import rmtree
from .store import (MT_DOCKER_MANIFEST, MT_OCI_MANIFEST, ImageRecord, Store, digest_hex,
                    sha256_bytes)

MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_LAYER_GZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def host_platform() -> tuple[str, str]:
    from .platform import host_platform as host
    p = host()
    return p["os"], p["architecture"]


# --------------------------------------------------------------------------- input


def _open_input(src, hint: str):
    """SRC opened for binary reading: a path (opened here) or an already open stream."""
    if not isinstance(src, (str, os.PathLike)):
        return src
    try:
        return open(src, "rb")
    except OSError as e:
        from ..errors import NotFound
        raise NotFound(f"cannot open {src}: {e.strerror}", hint) from e


class _Spool:
    """A seekable, uncompressed copy of an archive given as a path, a file or stdin."""

    def __init__(self, store: Store, src, what: str):
        self.tmp: Optional[str] = None
        self.what = what
        f = _open_input(src, "give an existing archive file with -i, or pipe it on stdin")
        head = f.peek(8)[:8] if hasattr(f, "peek") else b""
        seekable = isinstance(src, (str, os.PathLike))
        if seekable and L.sniff(head) == "tar":
            self.path = os.fspath(src)
            f.close()
            return
        # stdin, or a compressed archive: an uncompressed copy in the store's tmp/
        self.tmp = self.path = store.tmp_path("archive")
        try:
            stream = L.open_layer(f, what)
            with open(self.tmp, "wb") as out:
                while True:
                    chunk = stream.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
        except BaseException:
            self.close()
            raise
        finally:
            if seekable:
                f.close()

    def close(self) -> None:
        if self.tmp:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = None


def _open_tar(path: str, what: str) -> tuple[tarfile.TarFile, dict]:
    try:
        tf = tarfile.open(path, "r:")
        index = {}
        for m in tf.getmembers():
            index[m.name.lstrip("./") if m.name.startswith("./") else m.name] = m
    except tarfile.TarError as e:
        raise ImageError(f"{what}: not a tar archive ({e})",
                         "give a file written by 'docker save', 'hpcrun save' or "
                         "'skopeo copy ... docker-archive:/oci-archive:'") from e
    return tf, index


def _member(tf: tarfile.TarFile, index: dict, name: str, what: str):
    key = name[2:] if name.startswith("./") else name
    m = index.get(key)
    if m is None or not m.isreg():
        raise ImageError(f"{what}: {name!r} is missing from the archive",
                         "the archive is incomplete or damaged")
    return tf.extractfile(m)


# --------------------------------------------------------------------------- load


def load(store: Store, src, *, fmt: str = "dir") -> list[tuple[ImageRecord, list[str]]]:
    """Load every image of a docker-archive or oci-archive. Returns (record, tags) pairs."""
    what = src if isinstance(src, str) else "archive on stdin"
    spool = _Spool(store, src, what)
    try:
        tf, index = _open_tar(spool.path, what)
        with tf:
            if "manifest.json" in index:
                return _load_docker(store, tf, index, what, fmt)
            if "index.json" in index:
                return _load_oci(store, tf, index, what, fmt)
            raise ImageError(f"{what}: neither a docker-archive (manifest.json) nor an "
                             "oci-archive (index.json)",
                             "for a root filesystem tarball use 'hpcrun import'")
    finally:
        spool.close()


def layer_media(kind: str, oci: bool) -> str:
    """Layer media type for a compression kind ('tar', 'gzip', 'zstd', 'xz')."""
    if oci:
        return MT_OCI_LAYER + {"gzip": "+gzip", "zstd": "+zstd", "xz": "+xz"}.get(kind, "")
    return MT_DOCKER_LAYER_GZ if kind == "gzip" else MT_DOCKER_LAYER


def _load_docker(store: Store, tf, index: dict, what: str, fmt: str):
    try:
        entries = json.load(_member(tf, index, "manifest.json", what))
        assert isinstance(entries, list)
    except (ValueError, AssertionError) as e:
        raise ImageError(f"{what}: manifest.json is malformed ({e})",
                         "the archive is damaged") from e
    out = []
    for n, ent in enumerate(entries):
        try:
            cfg_name, layer_names = ent["Config"], list(ent.get("Layers") or [])
            repo_tags = list(ent.get("RepoTags") or [])
        except (KeyError, TypeError) as e:
            raise ImageError(f"{what}: manifest.json entry {n} is malformed ({e})") from e
        cfg = _member(tf, index, cfg_name, what).read()
        cfgd = ociconfig.loads(cfg, f"{cfg_name} in {what}")
        diff_ids = (cfgd.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(layer_names):
            raise ImageError(f"{what}: the config lists {len(diff_ids)} layers, manifest.json "
                             f"{len(layer_names)}", "the archive is damaged")
        descs, kinds = [], []
        for i, lname in enumerate(layer_names):
            f = _member(tf, index, lname, what)
            head = f.read(8)
            f.seek(0)
            kinds.append(L.sniff(head))
            known = None
            base = lname.rsplit("/", 1)
            if len(base) == 2 and base[0].endswith("blobs/sha256") and len(base[1]) == 64:
                known = "sha256:" + base[1]
            if known and store.has_blob(known):
                dg, size = known, os.path.getsize(store.blob_path(known))
            else:
                dg, size = store.put_blob_file(f, known)
            if L.sniff(head) == "tar" and dg != diff_ids[i]:
                raise ImageError(f"{what}: layer {i + 1} ({lname}) digest mismatch: got {dg}, "
                                 f"the image config says {diff_ids[i]}",
                                 "the archive is damaged or was altered; nothing was recorded")
            descs.append({"mediaType": "", "size": size, "digest": dg})
        oci = any(k in ("zstd", "xz") for k in kinds)
        for d, k in zip(descs, kinds):
            d["mediaType"] = layer_media(k, oci)
        manifest = make_manifest(cfg, descs, oci=oci)
        tags = [t for t in repo_tags if t]
        rec = store.commit_image(manifest, cfg, tags=tags, fmt=fmt, source="docker-archive")
        out.append((rec, tags))
    return out


def _load_oci(store: Store, tf, index: dict, what: str, fmt: str):
    def blob(desc: dict) -> bytes:
        dg = desc.get("digest", "")
        data = _member(tf, index, "blobs/sha256/" + digest_hex(dg), what).read()
        if sha256_bytes(data) != dg:
            raise ImageError(f"{what}: blob {dg} digest mismatch: got {sha256_bytes(data)}",
                             "the archive is damaged or was altered; nothing was recorded")
        return data
    try:
        idx = json.load(_member(tf, index, "index.json", what))
        descs = list(idx.get("manifests") or [])
    except (ValueError, AttributeError) as e:
        raise ImageError(f"{what}: index.json is malformed ({e})") from e
    if not descs:
        raise ImageError(f"{what}: index.json names no image", "the archive is empty")
    out = []
    for desc in descs:
        ann = desc.get("annotations") or {}
        mbytes = blob(desc)
        mt = desc.get("mediaType") or json.loads(mbytes).get("mediaType", "")
        if mt in (MT_OCI_INDEX, MT_DOCKER_LIST):
            mbytes = _pick_platform(json.loads(mbytes), blob, what)
        try:
            man = json.loads(mbytes)
            cfg_desc = man["config"]
            layer_descs = list(man.get("layers") or [])
        except (ValueError, KeyError, TypeError) as e:
            raise ImageError(f"{what}: image manifest {desc.get('digest')} is malformed") from e
        cfg = blob(cfg_desc)
        ociconfig.loads(cfg, f"{cfg_desc.get('digest')} in {what}")
        for ld in layer_descs:
            dg = ld["digest"]
            if not store.has_blob(dg):
                store.put_blob_file(_member(tf, index, "blobs/sha256/" + digest_hex(dg), what), dg)
        tags = []
        name = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name")
        if name and ("/" in name or ":" in name):
            from .reference import try_parse
            if try_parse(name) is not None:
                tags.append(name)
        rec = store.commit_image(mbytes, cfg, tags=tags, fmt=fmt, source="oci-archive")
        out.append((rec, tags))
    return out


def _pick_platform(index: dict, blob, what: str) -> bytes:
    from .platform import host_platform as host, match_platform, platform_str
    want = host()
    d = match_platform(index, want)
    if d is None:
        raise ImageError(f"{what}: no image for {platform_str(want)} in the archive's index",
                         "save the image for this machine's platform")
    return blob(d)


def make_manifest(cfg: bytes, layer_descs: list, *, oci: bool = False) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST if oci else MT_DOCKER_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG if oci else MT_DOCKER_CONFIG,
                   "size": len(cfg), "digest": sha256_bytes(cfg)},
        "layers": layer_descs,
    }
    return json.dumps(doc, indent=3).encode()


# --------------------------------------------------------------------------- save


def save(store: Store, names: Sequence[str], out: BinaryIO) -> None:
    """Write a docker-archive (what `docker load` and skopeo read) of the images to out."""
    recs = []
    for n in names:
        rec = store.require(n)
        from .reference import try_parse
        ref = try_parse(n)
        tags = [ref.familiar] if ref is not None and str(ref) in rec.tags else []
        recs.append((rec, tags))
    tarf = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20)
    written: set = set()
    manifest, repos = [], {}
    for rec, tags in recs:
        diff_ids = (rec.config.get("rootfs") or {}).get("diff_ids") or []
        layer_names = []
        for i, dg in enumerate(rec.layers):
            lid = digest_hex(diff_ids[i]) if i < len(diff_ids) else digest_hex(dg)
            lname = f"{lid}/layer.tar"
            layer_names.append(lname)
            if lname in written:
                continue
            written.add(lname)
            _add_layer(store, tarf, dg, lname)
        cname = rec.hex + ".json"
        if cname not in written:
            written.add(cname)
            _add_bytes(tarf, cname, store.read_blob(rec.id))
        manifest.append({"Config": cname, "RepoTags": tags or None, "Layers": layer_names})
        for t in tags:
            repo, _, tag = t.rpartition(":")
            repos.setdefault(repo, {})[tag] = layer_names[-1].split("/")[0] if layer_names else ""
    _add_bytes(tarf, "manifest.json", json.dumps(manifest).encode())
    if repos:
        _add_bytes(tarf, "repositories", json.dumps(repos).encode())
    tarf.close()


def _add_bytes(tarf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
    tarf.addfile(ti, io.BytesIO(data))


def _add_layer(store: Store, tarf: tarfile.TarFile, dg: str, lname: str) -> None:
    """docker-archive layers are uncompressed tars: decompress through tmp/ if needed."""
    path = store.blob_path(dg)
    with open(path, "rb") as f:
        head = f.read(8)
    tmp = None
    try:
        if L.sniff(head) != "tar":
            tmp = store.tmp_path("layer")
            with L.open_layer(path, dg) as src, open(tmp, "wb") as dst:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    dst.write(chunk)
            path = tmp
        ti = tarfile.TarInfo(lname)
        ti.size, ti.mode, ti.mtime = os.path.getsize(path), 0o644, 0
        d = tarfile.TarInfo(lname.split("/")[0])
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
        tarf.addfile(d)
        with open(path, "rb") as f:
            tarf.addfile(ti, f)
    finally:
        if tmp:
            os.unlink(tmp)


# --------------------------------------------------------------------------- import


_CHANGE_HINT = ("supported: ENV, CMD, ENTRYPOINT, WORKDIR, USER, LABEL, EXPOSE, VOLUME, "
                "STOPSIGNAL, e.g. --change 'ENV PATH=/usr/bin:/bin'")


def apply_changes(conf: dict, changes: Sequence[str]) -> dict:
    """Apply Dockerfile-style instructions (docker import --change) to a config's "config"."""
    for ch in changes:
        instr, _, rest = ch.strip().partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if not rest and instr:
            raise UsageError(f"--change {ch!r}: {instr} needs an argument", _CHANGE_HINT)
        if instr == "ENV":
            env = dict(e.split("=", 1) for e in conf.get("Env") or [] if "=" in e)
            for k, v in _pairs(rest, ch, legacy=True):
                env[k] = v
            conf["Env"] = [f"{k}={v}" for k, v in env.items()]
        elif instr in ("CMD", "ENTRYPOINT"):
            conf["Cmd" if instr == "CMD" else "Entrypoint"] = _exec_form(rest, ch)
        elif instr == "WORKDIR":
            if not rest.startswith("/"):
                raise UsageError(f"--change {ch!r}: WORKDIR must be an absolute path",
                                 "e.g. --change 'WORKDIR /work'")
            conf["WorkingDir"] = rest
        elif instr == "USER":
            conf["User"] = rest
        elif instr == "LABEL":
            labels = conf.get("Labels") or {}
            for k, v in _pairs(rest, ch, legacy=False):
                labels[k] = v
            conf["Labels"] = labels
        elif instr == "EXPOSE":
            ports = conf.get("ExposedPorts") or {}
            for p in rest.split():
                num, _, proto = p.partition("/")
                if not num.isdigit() or proto not in ("", "tcp", "udp", "sctp"):
                    raise UsageError(f"--change {ch!r}: invalid port {p!r}", "e.g. EXPOSE 8080/tcp")
                ports[f"{num}/{proto or 'tcp'}"] = {}
            conf["ExposedPorts"] = ports
        elif instr == "VOLUME":
            vols = conf.get("Volumes") or {}
            for v in (_json_list(rest, ch) if rest.startswith("[") else rest.split()):
                vols[v] = {}
            conf["Volumes"] = vols
        elif instr == "STOPSIGNAL":
            try:
                parse_signal(rest)
            except ValueError as e:
                raise UsageError(f"--change {ch!r}: {e}",
                                 "e.g. --change 'STOPSIGNAL SIGINT' (a name or a number)") from None
            conf["StopSignal"] = rest
        else:
            raise UsageError(f"--change {ch!r}: unsupported instruction {instr!r}", _CHANGE_HINT)
    return conf


def _pairs(rest: str, ch: str, legacy: bool) -> list[tuple[str, str]]:
    try:
        toks = shlex.split(rest)
    except ValueError as e:
        raise UsageError(f"--change {ch!r}: {e}", "check the quoting") from e
    if legacy and toks and "=" not in toks[0]:
        # ENV KEY VALUE... (the old form: everything after the key is the value)
        return [(toks[0], rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else "")]
    out = []
    for t in toks:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise UsageError(f"--change {ch!r}: expected KEY=VALUE, got {t!r}",
                             "e.g. --change 'ENV A=1 B=2'")
        out.append((k, v))
    return out


def _json_list(rest: str, ch: str) -> list[str]:
    try:
        v = json.loads(rest)
    except ValueError as e:
        raise UsageError(f"--change {ch!r}: not a JSON array ({e})",
                         'use the exec form ["prog", "arg"] or a plain command line') from e
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise UsageError(f"--change {ch!r}: expected a JSON array of strings",
                         'e.g. CMD ["python3", "-V"]')
    return v


def _exec_form(rest: str, ch: str) -> list[str]:
    if rest.startswith("["):
        return _json_list(rest, ch)
    return ["/bin/sh", "-c", rest]


def _check_tar_input(f, what: str) -> None:
    """Refuse what cannot be a tarball before storing any of it: a device (/dev/zero, a
    terminal: endless or interactive input), or data that is neither compressed nor
    starts with a tar header (an endless stream of zeros from a pipe is caught here)."""
    import stat as S
    try:
        mode = os.fstat(f.fileno()).st_mode
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        mode = None
    if mode is not None and not (S.S_ISREG(mode) or S.S_ISFIFO(mode) or S.S_ISSOCK(mode)):
        kind = "a terminal" if S.S_ISCHR(mode) and os.isatty(f.fileno()) else \
            "a device" if S.S_ISCHR(mode) or S.S_ISBLK(mode) else "not a regular file"
        raise ImageError(f"cannot import {what}: it is {kind}",
                         "give a root filesystem tarball (a file, or a pipe on stdin)")
    head = f.peek(512)[:512] if hasattr(f, "peek") else b""
    if len(head) == 512 and L.sniff(head[:8]) == "tar" and not is_tar_header(head):
        raise ImageError(f"{what}: not a tar archive",
                         "give a root filesystem tarball (tar, tar.gz or tar.zst)")


class _Bounded:
    """A reader that refuses to give more than LIMIT bytes (max_image_size): an endless
    compressed or piped input ends with a clear error, not a full disk."""

    def __init__(self, f, limit: int, what: str):
        self.f, self.left, self.limit, self.what = f, limit, limit, what

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(n)
        self.left -= len(b)
        if self.left < 0:
            raise ImageError(f"cannot import {self.what}: larger than max_image_size "
                             f"({self.limit} bytes)",
                             "raise max_image_size (HPCRUN_MAX_IMAGE_SIZE) if the tarball "
                             "is really that large")
        return b


def import_tar(store: Store, src, name: Optional[str] = None, changes: Sequence[str] = (),
               *, fmt: str = "dir", message: str = "", base: Optional[dict] = None,
               created_by: str = "hpcrun import") -> ImageRecord:
    """Make a one-layer image from a root filesystem tar (path, file object or stdin).
    base: the runtime config (Env, Cmd, ...) to start from (convert keeps an image's)."""
    conf = apply_changes(dict(base or {}), changes)   # bad --change fails before any work
    if name:
        from .store import normalize
        if normalize(name).digest:
            raise UsageError(f"cannot import as a digest reference: {name!r}",
                             "give REPOSITORY[:TAG]")
    f = _open_input(src, "give a root filesystem tarball, or - for stdin")
    try:
        _check_tar_input(f, src if isinstance(src, str) else "stdin")
        from .. import config as cfgmod
        dg, size = store.put_blob_file(_Bounded(f, int(cfgmod.get("max_image_size")),  # type: ignore[arg-type]
                                                src if isinstance(src, str) else "stdin"))
    finally:
        if isinstance(src, (str, os.PathLike)):
            f.close()
    # diff_id: the digest of the uncompressed tar; reading it all also proves it is a tar
    import hashlib
    h = hashlib.sha256()
    with open(store.blob_path(dg), "rb") as raw:
        head = raw.read(8)
    stream = L.open_layer(store.blob_path(dg), "the tarball")
    try:
        first = stream.read(512)
        if len(first) < 512 or not is_tar_header(first):
            raise ImageError(f"{src if isinstance(src, str) else 'stdin'}: not a tar archive",
                             "give a root filesystem tarball (tar, tar.gz or tar.zst)")
        h.update(first)
        while True:
            chunk = stream.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    finally:
        stream.close()
    os_, arch = host_platform()
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    cfg = {
        "architecture": arch, "os": os_, "created": now, "config": conf,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + h.hexdigest()]},
        "history": [{"created": now, "created_by": created_by,
                     **({"comment": message} if message else {})}],
    }
    ociconfig.validate(cfg, "made by --change")
    cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
    kind = L.sniff(head)
    oci = kind in ("zstd", "xz")
    desc = {"mediaType": layer_media(kind, oci), "size": size, "digest": dg}
    manifest = make_manifest(cfg_bytes, [desc], oci=oci)
    return store.commit_image(manifest, cfg_bytes, tags=[name] if name else [], fmt=fmt,
                              source="import")


def is_tar_header(block: bytes) -> bool:
    if block[257:262] == b"ustar":
        return True
    try:
        chk = int(block[148:156].rstrip(b"\0 ").decode() or "-1", 8)
    except ValueError:
        return False
    return chk == sum(block[:148]) + 256 + sum(block[156:512])


# --------------------------------------------------------------------------- export


def export(store: Store, name: str, out: BinaryIO) -> None:
    """Write the image's flattened root filesystem (without .hpcrun/) as one tar."""
    rec = store.require(name)
    paths = [store.blob_path(dg) for dg in rec.layers]
    if all(os.path.exists(p) for p in paths):
        from .. import config
        try:
            L.flatten_stream(paths, out, root_owned=False,
                             max_size=int(config.get("max_image_size")),  # type: ignore[arg-type]
                             single_pass_ok=False)
            return
        except L.NeedDirectory:
            pass
    if rec.dir_path:
        tar_dir(rec.dir_path, out)
        return
    if rec.sqfs_path:
        tmp = store.tmp_path("export")
        try:
            from .squash import unsquash
            unsquash(rec.sqfs_path, tmp)
            tar_dir(tmp, out)
        finally:
            rmtree(tmp)
        return
    raise ImageError(f"image {name} has neither layers nor a format to export",
                     "pull or load it again")


def tar_dir(root: str, out: BinaryIO, *, meta: bool = False, gzip: bool = False) -> None:
    """A root filesystem directory as one tar stream, every entry owned by root;
    .hpcrun/ (the image config) only with meta=True."""
    tarf = tarfile.open(fileobj=out, mode="w|gz" if gzip else "w|",
                        format=tarfile.PAX_FORMAT, bufsize=1 << 20)

    def owner(ti: tarfile.TarInfo):
        if not meta and (ti.name == ".hpcrun" or ti.name.startswith(".hpcrun/")):
            return None
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti
    for entry in sorted(os.listdir(root)):
        tarf.add(os.path.join(root, entry), arcname=entry, filter=owner)
    tarf.close()


def stdout_binary() -> BinaryIO:
    return sys.stdout.buffer
