"""Example images for tests, benchmarks and the demo: no registry needed.

`make_busybox_rootfs(DIR)` lays out a minimal root filesystem from the host's
busybox-static (Debian's busybox-static package) and its applet links;
`make_mpi_rootfs(DIR, {name: C source})` adds MPI programs and the host's Open MPI.
From the shell: ``python -m hpcrun.testing busybox-rootfs DIR``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from .errors import NotFound

BUSYBOX = "/bin/busybox"
DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev",
        "home", "root", "var", "run", "mnt")


def busybox_version() -> str:
    out = subprocess.run([BUSYBOX], capture_output=True, text=True).stdout
    words = out.split()
    return words[1] if len(words) > 1 else "unknown"


def make_busybox_rootfs(root: str, busybox: str = BUSYBOX) -> str:
    """Fill ROOT with busybox, its applet links, /etc/passwd, /etc/group, /etc/os-release."""
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


# Where Debian's Open MPI and PMIx keep their plugins, help texts and settings.
MPI_TREES = ["/usr/lib/x86_64-linux-gnu/openmpi", "/usr/lib/x86_64-linux-gnu/pmix2",
             "/usr/share/openmpi", "/usr/share/pmix", "/etc/openmpi"]


def _ldd(paths) -> set:
    libs = set()
    for p in paths:
        cp = subprocess.run(["ldd", p], capture_output=True, text=True)
        for line in cp.stdout.splitlines():
            for w in line.split():
                if w.startswith("/") and os.path.exists(w):
                    libs.add(w)
    return libs


def make_mpi_rootfs(root: str, programs: dict) -> str:
    """A busybox image with MPI programs (name -> C source, built with the host's mpicc
    into /opt/mpi/NAME) and the host's Open MPI + PMIx inside.

    The libraries are the ldd closure of the programs and of every Open MPI / PMIx
    plugin, plus the plugin directories, help files and settings, each copied to the
    same path as on the host, so the image runs the host's MPI with no host mount.
    """
    make_busybox_rootfs(root)
    os.makedirs(os.path.join(root, "opt/mpi"), exist_ok=True)
    elfs = []
    for name, source in programs.items():
        src = os.path.join(root, "opt/mpi", name + ".c")
        with open(src, "w") as f:
            f.write(source)
        prog = os.path.join(root, "opt/mpi", name)
        subprocess.run(["mpicc", "-O2", "-o", prog, src], check=True)
        elfs.append(prog)
    for tree in MPI_TREES:
        if not os.path.exists(tree):
            continue
        shutil.copytree(tree, root + tree, symlinks=True, dirs_exist_ok=True)
        for d, _, files in os.walk(tree):
            elfs += [os.path.join(d, n) for n in files if ".so" in n
                     and not os.path.islink(os.path.join(d, n))]
    for lib in _ldd(elfs):
        for p in {lib, os.path.realpath(lib)}:
            dest = root + p
            if os.path.lexists(dest):
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)
    subprocess.run(["chmod", "-R", "a+rX", root], check=True)
    return root


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "busybox-rootfs":
        sys.stderr.write("usage: python -m hpcrun.testing busybox-rootfs DIR\n")
        return 2
    make_busybox_rootfs(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
