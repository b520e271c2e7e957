"""The chtest image: busybox plus tests/chtest.c compiled static (and a setuid-root
copy of it), a root-owned 0600 file and a 0700 directory (for the permission checks). Built by the test modules that
run checks inside a container (test_isolation_chtest.py, test_run_fds.py)."""
from __future__ import annotations

import os
import shutil
import subprocess

import util

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "chtest.c")
IN_IMAGE = "/usr/local/bin/chtest"
SECRET = "/secret"
SETUID = "/usr/local/bin/chtest-setuid"


def compile_chtest(out: str) -> str:
    util.require(shutil.which("gcc") is not None, "gcc is not installed")
    cp = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", out, SOURCE],
                        capture_output=True, text=True)
    util.require(cp.returncode == 0, f"can't build a static chtest: {cp.stderr.strip()}")
    return out


def build(root: str) -> str:
    """A root-owned image at root (which must not exist yet)."""
    os.makedirs(root)
    os.chmod(root, 0o755)
    util.make_busybox_rootfs(root)
    os.makedirs(os.path.join(root, "usr/local/bin"), exist_ok=True)
    compile_chtest(os.path.join(root, IN_IMAGE.lstrip("/")))
    os.chmod(os.path.join(root, IN_IMAGE.lstrip("/")), 0o755)
    suid = os.path.join(root, SETUID.lstrip("/"))      # a setuid-root copy
    shutil.copy2(os.path.join(root, IN_IMAGE.lstrip("/")), suid)
    os.chown(suid, 0, 0)
    os.chmod(suid, 0o4755)
    with open(os.path.join(root, SECRET.lstrip("/")), "w") as f:
        f.write("root only\n")
    os.chmod(os.path.join(root, SECRET.lstrip("/")), 0o600)
    os.makedirs(os.path.join(root, "secret-dir"), mode=0o700)
    return root
