#!/usr/bin/env python3
"""Pull a many-file image from a local TLS registry and make it runnable, against peers.

Run as root (it starts a registry and drops to the test user for every measured
command):  /opt/hpcrun/venv/bin/python benchmarks/pull.py [--rounds N]

The image: a Debian bookworm root filesystem made with ``debootstrap --variant=minbase``
from the configured Debian mirror (cached under /var/tmp/hpcrun-bench and reused), in
one gzip layer (level 6, Docker's default), pushed by skopeo to docker-registry with
TLS on 127.0.0.1 (a CA made with openssl; every client verifies it).

Measured as the unprivileged user, interleaved (the order rotates every round), each
from an empty store/output:
  ch-image         ch-image pull (charliecloud-builders), to its directory storage
                   (its default, with the git build cache)
  ch-image nocache the same with --no-cache
  ch-image+sqfs    ch-image pull, then ch-convert to squashfs
  skopeo+umoci     skopeo copy to an OCI layout, umoci unpack --rootless, mksquashfs
  hpcrun sqfs      hpcrun pull --format squashfs (its default compressor, zstd)
  hpcrun sqfs gz   the same with squashfs_compressor=gzip (what ch-convert and mksquashfs use)
  hpcrun dir       hpcrun pull --format dir
Targets (issue 3): squashfs >= 1.5x faster than ch-image+sqfs; dir no slower than ch-image.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import time

BENCH = os.environ.get("HPCRUN_BENCH_DIR", "/var/tmp/hpcrun-bench")
ROOTFS = os.path.join(BENCH, "debian-bookworm-minbase")
LAYOUT = os.path.join(BENCH, "oci-debian")
MIRROR = os.environ.get("HPCRUN_BENCH_MIRROR", "http://deb.debian.org/debian")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")
HPCRUN = os.path.join(os.path.dirname(sys.executable), "hpcrun")
PEER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"   # system python3 for ch-image
REPO = "bench/debian:bookworm"


def sh(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def ensure_rootfs() -> None:
    if os.path.isdir(ROOTFS):
        return
    os.makedirs(BENCH, exist_ok=True)
    tmp = ROOTFS + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"debootstrap --variant=minbase bookworm from {MIRROR} (once; cached in {ROOTFS})", flush=True)
    sh(["debootstrap", "--variant=minbase", "bookworm", tmp, MIRROR], stdout=subprocess.DEVNULL)
    os.rename(tmp, ROOTFS)


def ensure_layout() -> dict:
    """An OCI layout with the root filesystem as one gzip layer; returns facts about it."""
    facts = os.path.join(LAYOUT, "facts.json")
    if os.path.exists(facts):
        with open(facts) as f:
            return json.load(f)
    shutil.rmtree(LAYOUT, ignore_errors=True)
    os.makedirs(os.path.join(LAYOUT, "blobs", "sha256"))
    # Like a docker image: /dev, /proc, /sys empty; numeric owners.
    tar = subprocess.Popen(["tar", "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*",
                            "--exclude=./sys/*", "-C", ROOTFS, "-cf", "-", "."], stdout=subprocess.PIPE)
    tmp = os.path.join(LAYOUT, "layer.tmp")
    diff, comp, size, usize = hashlib.sha256(), hashlib.sha256(), 0, 0
    with open(tmp, "wb") as raw:
        class Tee:
            def write(self, b):
                nonlocal size
                comp.update(b)
                size += len(b)
                return raw.write(b)

            def flush(self):
                raw.flush()
        with gzip.GzipFile(fileobj=Tee(), mode="wb", compresslevel=6, mtime=0) as gz:
            while True:
                b = tar.stdout.read(1 << 20)
                if not b:
                    break
                diff.update(b)
                usize += len(b)
                gz.write(b)
    if tar.wait() != 0:
        raise SystemExit("tar failed")
    ldg = "sha256:" + comp.hexdigest()
    os.rename(tmp, os.path.join(LAYOUT, "blobs", "sha256", ldg[7:]))

    def blob(data: bytes, mt: str) -> dict:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(LAYOUT, "blobs", "sha256", d[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": mt, "digest": d, "size": len(data)}

    cfg = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
           "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                      "Cmd": ["bash"]},
           "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff.hexdigest()]},
           "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "debootstrap --variant=minbase"}]}
    c = blob(json.dumps(cfg).encode(), "application/vnd.oci.image.config.v1+json")
    man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": c,
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ldg,
                       "size": size}]}
    m = blob(json.dumps(man).encode(), man["mediaType"])
    m["annotations"] = {"org.opencontainers.image.ref.name": "bookworm"}
    with open(os.path.join(LAYOUT, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [m]}, f)
    with open(os.path.join(LAYOUT, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    nfiles = sum(len(fs) + len(ds) for _, ds, fs in os.walk(ROOTFS))
    out = {"compressed": size, "uncompressed": usize, "entries": nfiles}
    with open(facts, "w") as f:
        json.dump(out, f)
    return out


class Registry:
    def __init__(self, d: str):
        self.dir = d
        os.makedirs(d, exist_ok=True)
        ssl = lambda *a: sh(["openssl", *a], capture_output=True)  # noqa: E731
        ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt",
            "-days", "2", "-subj", "/CN=hpcrun bench CA")
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/srv.key", "-out", f"{d}/srv.csr",
            "-subj", "/CN=localhost")
        with open(f"{d}/ext.cnf", "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        ssl("x509", "-req", "-in", f"{d}/srv.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
            "-CAcreateserial", "-out", f"{d}/srv.crt", "-days", "2", "-extfile", f"{d}/ext.cnf")
        os.makedirs(f"{d}/certs", exist_ok=True)
        shutil.copy(f"{d}/ca.crt", f"{d}/certs/ca.crt")
        for root, dirs, files in os.walk(d):
            for n in dirs + files:
                os.chmod(os.path.join(root, n), 0o755 if n in dirs else 0o644)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        with open(f"{d}/config.yml", "w") as f:
            f.write(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {d}/data
http:
  addr: {self.host}
  tls:
    certificate: {d}/srv.crt
    key: {d}/srv.key
health:
  storagedriver:
    enabled: false
""")
        self.log = open(f"{d}/registry.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", f"{d}/config.yml"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("docker-registry did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def as_user(pw, argv, env, cwd):
    t = time.monotonic()
    cp = subprocess.run(argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], env=env, cwd=cwd,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dt = time.monotonic() - t
    if cp.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({cp.returncode}):\n{cp.stderr[-3000:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated subset of the tool names")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: it starts a registry and measures as the test user")
    pw = pwd.getpwnam(USER)
    ensure_rootfs()
    facts = ensure_layout()
    work = os.path.join(BENCH, "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.chown(work, pw.pw_uid, pw.pw_gid)
    reg = Registry(os.path.join(BENCH, "registry"))
    try:
        sh(["skopeo", "--insecure-policy", "copy", "--preserve-digests", "--dest-cert-dir",
            f"{reg.dir}/certs", f"oci:{LAYOUT}:bookworm", f"docker://{reg.host}/{REPO}"],
           capture_output=True)
        ref = f"{reg.host}/{REPO}"
        base = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name, "LANG": "C.UTF-8",
                "PATH": PEER_PATH,
                # ch-image's build cache is a git repository; the user may have no git identity.
                "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
                "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
        ca = f"{reg.dir}/ca.crt"

        def w(name):
            return os.path.join(work, name)

        tools = {
            "ch-image": [["ch-image", "pull", ref]],
            "ch-image nocache": [["ch-image", "--no-cache", "pull", ref]],
            "ch-image+sqfs": [["ch-image", "pull", ref],
                              ["ch-convert", "-i", "ch-image", "-o", "squash", ref,
                               w("ch.sqfs")]],
            "skopeo+umoci": [["skopeo", "--insecure-policy", "copy", "--src-cert-dir", f"{reg.dir}/certs",
                              f"docker://{ref}", f"oci:{w('oci')}:img"],
                             ["umoci", "unpack", "--rootless", "--image", f"{w('oci')}:img", w("bundle")],
                             ["mksquashfs", w("bundle") + "/rootfs", w("umoci.sqfs"), "-noappend",
                              "-quiet", "-no-progress"]],
            "hpcrun sqfs": [[HPCRUN, "pull", "-q", "--format", "squashfs", ref]],
            "hpcrun sqfs gz": [["env", "HPCRUN_SQUASHFS_COMPRESSOR=gzip", HPCRUN, "pull", "-q",
                                "--format", "squashfs", ref]],
            "hpcrun dir": [[HPCRUN, "pull", "-q", "--format", "dir", ref]],
        }
        if args.only:
            keep = [t.strip() for t in args.only.split(",")]
            tools = {k: v for k, v in tools.items() if k in keep}
        env = dict(base, CH_IMAGE_STORAGE=w("ch"), REQUESTS_CA_BUNDLE=ca, SSL_CERT_FILE=ca, HPCRUN_STORE=w("store"),
                   XDG_CONFIG_HOME=w("config"), HPCRUN_SYSCONFDIR=w("etc"))
        times: dict[str, list[float]] = {k: [] for k in tools}
        names = list(tools)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                dt = 0.0
                for argv in tools[name]:
                    dt += as_user(pw, argv, env, work)
                times[name].append(dt)
                print(f"round {r + 1} {name:16s} {dt:7.2f} s", flush=True)
                for n in os.listdir(work):
                    shutil.rmtree(os.path.join(work, n), ignore_errors=True) if os.path.isdir(
                        os.path.join(work, n)) else os.unlink(os.path.join(work, n))
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print()
    print(f"image: Debian bookworm minbase, {facts['entries']} entries, "
          f"{facts['uncompressed'] / 1e6:.0f} MB as tar, {facts['compressed'] / 1e6:.0f} MB gzip, one layer;"
          f" TLS registry on loopback; {args.rounds} interleaved rounds, median (min)")
    for k, v in times.items():
        print(f"  {k:16s} {med[k]:7.2f} s  ({min(v):.2f})")

    def ratio(a, b, label):
        if a in med and b in med:
            print(f"  {label}: {med[a] / med[b]:.2f}x")
    print("ratios (>1: hpcrun faster)")
    ratio("ch-image+sqfs", "hpcrun sqfs", "ch-image pull + ch-convert  vs hpcrun pull --format squashfs")
    ratio("ch-image+sqfs", "hpcrun sqfs gz", "ch-image pull + ch-convert  vs the same, gzip squashfs  ")
    ratio("skopeo+umoci", "hpcrun sqfs", "skopeo + umoci + mksquashfs vs hpcrun pull --format squashfs")
    ratio("ch-image", "hpcrun dir", "ch-image pull (dir)         vs hpcrun pull --format dir")
    ratio("ch-image nocache", "hpcrun dir", "ch-image --no-cache pull    vs hpcrun pull --format dir")
    return 0


if __name__ == "__main__":
    sys.exit(main())
