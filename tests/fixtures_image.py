"""Fixtures and builders for the image tests (store, layers, archives, squashfs, CLI).

The tests make their images themselves: layer tars written here with Python's tarfile
(busybox-static root filesystems plus layers with whiteouts, hardlinks, setuid bits,
foreign owners, devices), packed as docker-archive / OCI layouts by the small writers
below, or converted by skopeo as the independent tool. Every hpcrun command runs as
the unprivileged test user with HPCRUN_STORE pointing to a per-test store.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field

import pytest

import util


# ----------------------------------------------------------------- tar entries

def F(name, data=b"", mode=0o644, uid=0, gid=0, mtime=1_600_000_000):
    if isinstance(data, str):
        data = data.encode()
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), mode, uid, gid, mtime
    return ti, data


def D(name, mode=0o755, uid=0):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.mtime = tarfile.DIRTYPE, mode, uid, 1_600_000_000
    return ti, None


def S(name, target):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
    return ti, None


def H(name, target):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.LNKTYPE, target
    return ti, None


def DEV(name, major=1, minor=3):
    ti = tarfile.TarInfo(name)
    ti.type, ti.devmajor, ti.devminor, ti.mode = tarfile.CHRTYPE, major, minor, 0o666
    return ti, None


def FIFO(name):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode = tarfile.FIFOTYPE, 0o644
    return ti, None


def WH(name):
    """Whiteout of `name` (dir/.wh.base)."""
    d, _, b = name.rpartition("/")
    return F(f"{d}/.wh.{b}" if d else f".wh.{b}")


def OPQ(dirname):
    return F(f"{dirname}/.wh..wh..opq")


def tar_bytes(entries, compress: str = "") -> bytes:
    """A tar of the entries; compress '' / 'gzip'."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return gzip.compress(raw, 1) if compress == "gzip" else raw


def dir_entries(root: str):
    """Entries for a directory tree, owned by root (like an image built by Docker)."""
    out = []
    for dp, dn, fn in os.walk(root):
        dn.sort()
        for name in sorted(dn) + sorted(fn):
            p = os.path.join(dp, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                out.append(S(rel, os.readlink(p)))
            elif os.path.isdir(p):
                out.append(D(rel, st.st_mode & 0o7777))
            else:
                with open(p, "rb") as f:
                    out.append(F(rel, f.read(), st.st_mode & 0o7777))
    return out


# ----------------------------------------------------------------- images


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """An image made by the test: layer blobs (as stored), config, manifest."""
    layers: list                    # compressed (or not) layer blobs
    config: bytes = b""
    manifest: bytes = b""
    diff_ids: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return sha(self.config)

    @property
    def blobs(self) -> dict:
        d = {sha(b): b for b in self.layers}
        d[sha(self.config)] = self.config
        d[sha(self.manifest)] = self.manifest
        return d


def make_image(layer_entries: list, *, compress: str = "gzip", cmd=None, env=None,
               history=None) -> Image:
    raws = [tar_bytes(e) for e in layer_entries]
    blobs = [gzip.compress(r, 1) if compress == "gzip" else r for r in raws]
    diff_ids = [sha(r) for r in raws]
    cfg = {
        "architecture": "amd64", "os": "linux", "created": "2024-01-02T03:04:05Z",
        "config": {"Env": env or ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": cmd or ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history or [{"created": "2024-01-02T03:04:05Z",
                                "created_by": f"test layer {i + 1}"} for i in range(len(raws))],
    }
    config = json.dumps(cfg).encode()
    lt = ("application/vnd.oci.image.layer.v1.tar+gzip" if compress == "gzip"
          else "application/vnd.oci.image.layer.v1.tar")
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": lt, "digest": sha(b), "size": len(b)} for b in blobs],
    }).encode()
    return Image(blobs, config, manifest, diff_ids)


def write_oci_layout(d: str, img: Image, ref_name: str | None = "latest") -> str:
    os.makedirs(os.path.join(d, "blobs", "sha256"), exist_ok=True)
    for dg, data in img.blobs.items():
        with open(os.path.join(d, "blobs", "sha256", dg.split(":")[1]), "wb") as f:
            f.write(data)
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(img.manifest), "size": len(img.manifest)}
    if ref_name:
        desc["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    with open(os.path.join(d, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [desc]}, f)
    with open(os.path.join(d, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return d


def write_oci_archive(path: str, img: Image, ref_name: str | None = "latest") -> str:
    d = path + ".d"
    write_oci_layout(d, img, ref_name)
    with tarfile.open(path, "w") as t:
        for name in sorted(os.listdir(d)):
            t.add(os.path.join(d, name), arcname=name)
    shutil.rmtree(d)
    os.chmod(path, 0o644)
    return path


def write_docker_archive(path: str, img: Image, repo_tags=None, layers_override=None) -> str:
    """The layout `docker save` writes (uncompressed layers as <diff_id>/layer.tar)."""
    raws = layers_override or [gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b
                               for b in img.layers]
    with tarfile.open(path, "w") as t:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o644
            t.addfile(ti, io.BytesIO(data))
        names = []
        for i, r in enumerate(raws):
            n = f"{img.diff_ids[i].split(':')[1]}/layer.tar"
            names.append(n)
            add(n, r)
        cname = img.id.split(":")[1] + ".json"
        add(cname, img.config)
        add("manifest.json", json.dumps([{"Config": cname, "RepoTags": repo_tags,
                                          "Layers": names}]).encode())
    os.chmod(path, 0o644)
    return path


def busybox_entries(root: str, extra=()):
    return dir_entries(root) + list(extra)


def layered_entries(busybox_root: str) -> list:
    """Three layers exercising whiteouts, opaque dirs, hardlinks, modes and owners."""
    l1 = busybox_entries(busybox_root, [
        F("etc/old", "old\n"), D("opt"), D("opt/a"), F("opt/a/1", "1"), F("opt/a/2", "2"),
        D("opt/b"), F("opt/b/x", "x"), F("opt/b/y", "y"), D("data"), F("data/keep", "keep"),
    ])
    l2 = [
        WH("etc/old"), OPQ("opt/a"), F("opt/a/3", "3"),
        F("usr/bin/suid", "#!/bin/sh\n", mode=0o4755), F("usr/bin/sgid", "x", mode=0o2755),
        F("home/owned", "foreign", uid=1234, gid=1234, mode=0o600),
        F("new", "new\n"), H("new2", "new"), DEV("dev/null"), FIFO("fifo"),
        D("ro", mode=0o555), F("ro/file", "r", mode=0o444),
    ]
    l3 = [WH("opt/b/x"), S("opt/c", "/opt/a"), F("etc/motd", "layer three\n")]
    return [l1, l2, l3]


# ----------------------------------------------------------------- fixtures


@pytest.fixture
def store_env(user, user_tmp):
    """Environment for the test user with a fresh store; the store path is env['HPCRUN_STORE']."""
    return {"HPCRUN_STORE": os.path.join(user_tmp, "store")}


@pytest.fixture(scope="session")
def image_files(busybox_rootfs):
    """Test images as files the test user can read: a session-wide directory."""
    d = util.shared_tmpdir("hpcrun-imgfiles-")
    bb = make_image([busybox_entries(busybox_rootfs)])
    layered = make_image(layered_entries(busybox_rootfs))
    files = {
        "bb": bb, "layered": layered,
        "bb_docker": write_docker_archive(os.path.join(d, "bb-docker.tar"), bb,
                                          ["test/busybox:1"]),
        "bb_oci": write_oci_archive(os.path.join(d, "bb-oci.tar"), bb, "test/busybox:oci"),
        "layered_docker": write_docker_archive(os.path.join(d, "layered-docker.tar"),
                                               layered, ["test/layered:1"]),
        "dir": d,
    }
    yield files
    shutil.rmtree(d, ignore_errors=True)


def hp(user, env, *args, **kw):
    """hpcrun as the test user with this store."""
    return util.hpcrun(user, *args, env=env, **kw)


def ok(cp: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert cp.returncode == 0, f"exit {cp.returncode}\nstdout: {cp.stdout}\nstderr: {cp.stderr}"
    return cp


def tree_of(root: str) -> tuple[dict, list]:
    """Every entry below root: kind, mode, mtime (not under .hpcrun, written at commit
    time), size and content digest or link target; and the groups of hard-linked paths
    (what a fresh unpack and a cloned one must agree on)."""
    out, inodes = {}, {}
    for dp, dn, fn in os.walk(root):
        for n in dn + fn:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            meta = rel == ".hpcrun" or rel.startswith(".hpcrun/")
            item = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                    None if meta else st.st_mtime_ns]
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    item += [st.st_size, hashlib.sha256(f.read()).hexdigest()]
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                item.append(os.readlink(p))
            out[rel] = item
    return out, sorted(sorted(g) for g in inodes.values() if len(g) > 1)


def records(store: str) -> list:
    d = os.path.join(store, "records")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []
