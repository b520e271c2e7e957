"""Fixtures for the runtime tests (hpcrun run, hpcrun check).

Every container runs as the unprivileged test user (util.hpcrun), in real user and
mount namespaces. Images are busybox-static root file systems owned by root and
read-only to the user, as a site-wide image would be.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

import util


def run(user, *args, **kw) -> subprocess.CompletedProcess:
    """`hpcrun run ARGS...` as the test user."""
    return util.hpcrun(user, "run", *args, **kw)


@pytest.fixture(scope="session")
def rt_userns(user) -> None:
    """Skip (fail in CI) where unprivileged user namespaces are not allowed."""
    cp = util.as_user(user, ["unshare", "-Urm", "true"])
    util.require(cp.returncode == 0, f"unprivileged user namespaces unavailable: {cp.stderr.strip()}")


@pytest.fixture(scope="session")
def rt_image(busybox_rootfs, rt_userns) -> str:
    """The shared busybox image (root-owned, read-only to the user)."""
    return busybox_rootfs


@pytest.fixture(scope="session")
def rt_user_image(user, rt_userns) -> str:
    """A busybox image owned by the user, as one unpacked into the user's own store."""
    d = util.shared_tmpdir("hpcrun-rtuimg-")
    util.make_busybox_rootfs(d)
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), user.uid, user.gid)
    os.chown(d, user.uid, user.gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def rt_config_image(rt_userns) -> str:
    """A busybox image with an OCI image config at .hpcrun/config.json."""
    d = util.shared_tmpdir("hpcrun-rtconf-")
    util.make_busybox_rootfs(d)
    os.makedirs(os.path.join(d, "opt/app"))
    with open(os.path.join(d, "opt/app/greet"), "w") as f:
        f.write('#!/bin/sh\necho "greet:$*"\n')
    os.chmod(os.path.join(d, "opt/app/greet"), 0o755)
    os.makedirs(os.path.join(d, ".hpcrun"))
    conf = {"architecture": "amd64", "os": "linux", "config": {
        "Env": ["PATH=/opt/app:/usr/bin:/bin", "IMAGE_VAR=from-image", "SHARED=image"],
        "WorkingDir": "/opt/app",
        "Entrypoint": ["greet"],
        "Cmd": ["default-arg"],
    }}
    with open(os.path.join(d, ".hpcrun/config.json"), "w") as f:
        json.dump(conf, f)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def rt_squashfs(busybox_rootfs, rt_userns) -> str:
    """The busybox image as a squashfs file (mksquashfs, root-owned, world-readable)."""
    util.require(shutil.which("mksquashfs") is not None, "squashfs-tools is not installed")
    d = util.shared_tmpdir("hpcrun-rtsqfs-")
    path = os.path.join(d, "busybox.sqfs")
    subprocess.run(["mksquashfs", busybox_rootfs, path, "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rt_corrupt_squashfs() -> str:
    """A file with the squashfs magic followed by garbage."""
    d = util.shared_tmpdir("hpcrun-rtbad-")
    path = os.path.join(d, "corrupt.sqfs")
    with open(path, "wb") as f:
        f.write(b"hsqs" + os.urandom(8192))
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rt_fuse_open(user):
    """Emulate a cluster node that lets users mount FUSE: /dev/fuse 0666 for the test,
    then restored (here it is root-only)."""
    util.require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    util.require(shutil.which("squashfuse") is not None, "squashfuse is not installed")
    util.require(os.geteuid() == 0, "opening /dev/fuse to users needs root")
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    yield
    os.chmod("/dev/fuse", mode)


@pytest.fixture
def rt_fuse_closed():
    """A node where users may not use FUSE (/dev/fuse root-only), as here by default."""
    util.require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o600)
    yield
    os.chmod("/dev/fuse", mode)


@pytest.fixture
def rt_unpack_cache(user, user_tmp) -> dict:
    """A per-test node-local cache for --unpack."""
    return {"HPCRUN_UNPACK_CACHE": os.path.join(user_tmp, "unpack")}


def host_mounts_mentioning(*needles: str) -> list:
    """Lines of the host's mount table that mention any needle."""
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if any(n in line for n in needles)]


def user_entries_in_tmp(user) -> set:
    """Entries of the host /tmp owned by the test user. Directories that test fixtures
    make for the user (util.shared_tmpdir, 'hpcrun-*'), possibly in a test module running
    beside this one, are not counted: hpcrun itself never writes to the host's /tmp."""
    out = set()
    for name in os.listdir("/tmp"):
        if name.startswith("hpcrun-"):
            continue
        try:
            if os.lstat(os.path.join("/tmp", name)).st_uid == user.uid:
                out.add(name)
        except FileNotFoundError:
            pass
    return out


def processes_with(token: str) -> list:
    """Host processes whose command line contains token."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if token in cmd:
            found.append((int(pid), cmd))
    return found


def without_userns(user, argv, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run argv as the user where user namespaces are disabled: inside a user namespace
    (ids mapped 1:1, made by root) whose user.max_user_namespaces is 0, as on a host
    with the sysctl at 0. Needs root and util-linux unshare/setpriv."""
    import time
    util.require(os.geteuid() == 0 and shutil.which("unshare") is not None
                 and shutil.which("setpriv") is not None, "needs root, unshare and setpriv")
    env = " ".join(f"{k}={v}" for k, v in util.user_env(user).items() if " " not in v)
    inner = ("echo 0 > /proc/sys/user/max_user_namespaces || exit 99; "
             f"exec setpriv --reuid {user.uid} --regid {user.gid} --clear-groups "
             f"env -i {env} " + " ".join(f"'{a}'" for a in argv))
    # The inner sh is exec'd once the maps exist, so it keeps its capabilities.
    p = subprocess.Popen(["unshare", "--user", "--", "sh", "-c", 'read _; exec sh -c "$0"', inner],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd="/")
    for _ in range(200):   # bounded wait for unshare to have made the namespace
        if os.readlink(f"/proc/{p.pid}/ns/user") != os.readlink("/proc/self/ns/user"):
            break
        time.sleep(0.01)
    for f in ("uid_map", "gid_map"):
        with open(f"/proc/{p.pid}/{f}", "w") as fh:
            fh.write("0 0 4294967295")
    out, err = p.communicate("\n", timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)
