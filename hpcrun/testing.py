"""Example images for tests, benchmarks and the demo: no registry needed.

`make_busybox_rootfs(DIR)` lays out a minimal root filesystem from the host's
busybox-static (Debian's busybox-static package) and its applet links.
From the shell: ``python -m hpcrun.testing busybox-rootfs DIR``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

BUSYBOX = "/bin/busybox"
DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev",
        "home", "root", "var", "run", "mnt")


def busybox_version() -> str:
    out = subprocess.run([BUSYBOX], capture_output=True, text=True).stdout
    words = out.split()
    return words[1] if len(words) > 1 else "unknown"


def make_busybox_rootfs(root: str, busybox: str = BUSYBOX) -> str:
    """Fill ROOT with busybox, its applet links, /etc/passwd, /etc/group, /etc/os-release."""
    from .errors import NotFound
    if not os.path.exists(busybox):
        raise NotFound(f"{busybox} not found", "install busybox-static")
    for d in DIRS:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2(busybox, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        p = os.path.join(root, a)
        if not os.path.lexists(p) and a != "bin/busybox":
            os.makedirs(os.path.dirname(p), exist_ok=True)
            os.symlink("/bin/busybox", p)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\n")
    with open(os.path.join(root, "etc", "os-release"), "w") as f:
        f.write("ID=busybox\nNAME=busybox-test\n")
    return root


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "busybox-rootfs":
        sys.stderr.write("usage: python -m hpcrun.testing busybox-rootfs DIR\n")
        return 2
    make_busybox_rootfs(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
