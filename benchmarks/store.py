#!/usr/bin/env python3
"""Layer -> runnable image, the store's part of a pull, side by side with the peers.

The download is the registry helper's benchmark (benchmarks/pull.py); this one times
what happens after it: one gzip layer already on local disk becomes

    dir       hpcrun: Store.commit_image(fmt="dir")        (Python tarfile, rootless rules)
              ch-image import LAYER (Charliecloud; Python tarfile, its pull's unpack step)
              tar -xzf (GNU tar: the C floor, no safety checks)
    squashfs  hpcrun: Store.commit_image(fmt="squashfs")   (flattened tar streamed into tar2sqfs)
              ch-image import + ch-convert -o squash       (Charliecloud's path: dir, then mksquashfs)
              tar -xzf + mksquashfs                         (the umoci-style path without umoci)

All as the unprivileged test user, rounds interleaved with a rotating order, medians
and ratios printed. The squashfs compressor is hpcrun's setting (squashfs_compressor,
default zstd:level=3); ch-convert and the mksquashfs path use mksquashfs's default
(gzip), as their users get them.

The layer defaults to a synthetic many-file tree (files sampled from /usr, ~353 MB,
~13k files, gzip -6), cached in /var/tmp/hpcrun-storebench; --layer uses another
(e.g. a debootstrap root filesystem tar.gz). Run as root:

    /opt/hpcrun/venv/bin/python benchmarks/store.py [--rounds 3] [--layer FILE.tar.gz]
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV_PY = sys.executable
WORK = "/var/tmp/hpcrun-storebench"
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")


def synth_layer(path: str) -> None:
    """~353 MB of real files sampled from /usr (mixed compressibility), gzip -6."""
    files, total, n = [], 0, 0
    for dp, dn, fn in os.walk("/usr"):
        dn.sort()
        for f in sorted(fn):
            p = os.path.join(dp, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            n += 1
            s = os.path.getsize(p)
            if (n % 7 == 0 and s < 1 << 20) or (1 << 20 < s < 12 << 20 and n % 6 == 0):
                files.append(p[1:])
                total += s
            if total > 353 << 20:
                break
        if total > 353 << 20:
            break
    lst = path + ".files"
    with open(lst, "w") as f:
        f.write("\0".join(files) + "\0")
    with open(path + ".tmp", "wb") as out:
        tar = subprocess.Popen(["tar", "-C", "/", "-cf", "-", "--null", "--files-from", lst],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        subprocess.run(["gzip", "-6"], stdin=tar.stdout, stdout=out, check=True)
        tar.wait()
    os.replace(path + ".tmp", path)
    print(f"synthetic layer: {len(files)} files, {total >> 20} MB -> {path}")


DRIVER = r"""
import hashlib, json, os, sys, time
sys.path.insert(0, sys.argv[1])
from hpcrun.image.store import Store
store_dir, layer, fmt = sys.argv[2], sys.argv[3], sys.argv[4]
info = json.load(open(layer + ".json"))
s = Store(store_dir)
dst = s.blob_path(info["digest"])
if not os.path.exists(dst):
    os.link(layer + ".user", dst)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": [info["diff_id"]]}}).encode()
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": "sha256:" + hashlib.sha256(cfg).hexdigest(), "size": len(cfg)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": info["digest"], "size": info["size"]}]}).encode()
t = time.time()
s.commit_image(man, cfg, fmt=fmt)
print(time.time() - t)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layer")
    ap.add_argument("--only", choices=("dir", "squashfs"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the benchmark drops to the unprivileged test user)")
    pw = pwd.getpwnam(USER)
    os.makedirs(WORK, exist_ok=True)
    os.chmod(WORK, 0o755)
    layer = a.layer or os.path.join(WORK, "layer.tar.gz")
    if not os.path.exists(layer):
        synth_layer(layer)
    # a copy owned by the user, so its store can hardlink it in as the layer blob
    import hashlib
    ucopy = os.path.join(WORK, "layer.user")
    meta = os.path.join(WORK, "layer.json")
    if not os.path.exists(meta) or json.load(open(meta)).get("src") != os.path.abspath(layer):
        shutil.copyfile(layer, ucopy)
        h, d = hashlib.sha256(), hashlib.sha256()
        with open(layer, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
        import gzip
        with gzip.open(layer, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                d.update(b)
        json.dump({"src": os.path.abspath(layer), "digest": "sha256:" + h.hexdigest(),
                   "diff_id": "sha256:" + d.hexdigest(), "size": os.path.getsize(layer)},
                  open(meta, "w"))
    os.chown(ucopy, pw.pw_uid, pw.pw_gid)
    base = os.path.join(WORK, "layer")
    for p in (ucopy, meta):
        os.chmod(p, 0o644)
    drv = os.path.join(WORK, "driver.py")
    with open(drv, "w") as f:
        f.write(DRIVER)
    os.chmod(drv, 0o644)
    scratch = os.path.join(WORK, "scratch")

    def as_user(argv, env=None, shell=False):
        e = {"HOME": pw.pw_dir, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
             "USER": pw.pw_name, "LOGNAME": pw.pw_name,
             "CH_IMAGE_STORAGE": os.path.join(scratch, "ch")}
        e.update(env or {})
        t = time.time()
        cp = subprocess.run(argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], env=e,
                            cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, shell=shell)
        dt = time.time() - t
        if cp.returncode != 0:
            sys.exit(f"failed: {argv}\n{cp.stderr[-2000:]}")
        return dt

    def fresh():
        if os.path.exists(scratch):
            subprocess.run(["chmod", "-R", "u+rwX", scratch], check=False)
            shutil.rmtree(scratch)
        os.mkdir(scratch)
        os.chown(scratch, pw.pw_uid, pw.pw_gid)
        os.sync()  # the previous variant's writeback is not charged to the next one

    variants = {
        "dir": {
            "hpcrun": lambda: as_user([VENV_PY, drv, REPO, os.path.join(scratch, "store"),
                                       base, "dir"]),
            "ch-image import": lambda: as_user(["ch-image", "--no-cache", "import", layer,
                                                "bench"]),
            "tar -xzf": lambda: as_user(f"mkdir d && tar -xzf {layer} -C d", shell=True),
        },
        "squashfs": {
            "hpcrun": lambda: as_user([VENV_PY, drv, REPO, os.path.join(scratch, "store"),
                                       base, "squashfs"]),
            "ch-image + ch-convert": lambda: as_user(
                f"ch-image --no-cache import {layer} bench && "
                f"ch-convert -i ch-image -o squash bench {scratch}/bench.sqfs", shell=True),
            "tar -xzf + mksquashfs": lambda: as_user(
                f"mkdir d && tar -xzf {layer} -C d && mksquashfs d bench.sqfs -noappend "
                f"-all-root -quiet -no-progress", shell=True),
        },
    }
    results: dict = {}
    sizes: dict = {}
    kinds = [a.only] if a.only else ["dir", "squashfs"]
    for r in range(a.rounds):
        for kind in kinds:
            names = list(variants[kind])
            names = names[r % len(names):] + names[:r % len(names)]
            for n in names:
                fresh()
                dt = variants[kind][n]()
                results.setdefault((kind, n), []).append(dt)
                size = ""
                for dp, _, fn in os.walk(scratch):
                    for f in fn:
                        if f.endswith(".sqfs"):
                            sizes[(kind, n)] = os.path.getsize(os.path.join(dp, f))
                            size = f"  ({sizes[(kind, n)] >> 20} MB)"
                print(f"round {r + 1} {kind:8} {n:24} {dt:6.2f} s{size}", flush=True)
    fresh()
    shutil.rmtree(scratch)
    print()
    print(f"layer: {layer} ({os.path.getsize(layer) >> 20} MB compressed), "
          f"{a.rounds} rounds, medians, cpus={os.cpu_count()}")
    for kind in kinds:
        ours = statistics.median(results[(kind, "hpcrun")])
        for n in variants[kind]:
            med = statistics.median(results[(kind, n)])
            ratio = "" if n == "hpcrun" else f"   {n} / hpcrun = {med / ours:.2f}x"
            size = f"  {sizes[(kind, n)] >> 20:4} MB" if (kind, n) in sizes else ""
            print(f"  {kind:8} {n:24} {med:6.2f} s{size}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
