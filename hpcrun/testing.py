"""Example images for tests, benchmarks and the demo: no registry needed.

`make_busybox_rootfs(DIR)` lays out a minimal root filesystem from the host's
busybox-static (Debian's busybox-static package) and its applet links;
`make_mpi_rootfs(DIR, {name: C source})` adds MPI programs and the host's Open MPI
(or MPICH: mpi="mpich"; and python3 with mpi4py: python=True).
From the shell: ``python -m hpcrun.testing busybox-rootfs DIR``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
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
             "/usr/lib/x86_64-linux-gnu/ucx",
             "/usr/share/openmpi", "/usr/share/pmix", "/etc/openmpi"]
# Debian's MPICH (libmpich12, ch4 over UCX): the library, UCX's transports (cma, ...,
# dlopened: without them UCX copies through TCP) and libfabric's providers; what the
# programs need beyond that comes with the ldd closure.
MPICH_TREES = ["/usr/lib/x86_64-linux-gnu/libfabric", "/usr/lib/x86_64-linux-gnu/ucx"]
MPICC = {"openmpi": "mpicc.openmpi", "mpich": "mpicc.mpich"}
MPI_LIBS = {"openmpi": ["/usr/lib/x86_64-linux-gnu/libmpi.so.40"],
            "mpich": ["/usr/lib/x86_64-linux-gnu/libmpich.so.12"]}


def _ldd(paths) -> set:
    libs = set()
    for p in paths:
        cp = subprocess.run(["ldd", p], capture_output=True, text=True)
        for line in cp.stdout.splitlines():
            for w in line.split():
                if w.startswith("/") and os.path.exists(w):
                    libs.add(w)
    return libs


def _copy_libs(root: str, elfs) -> None:
    for lib in _ldd(elfs):
        for p in {lib, os.path.realpath(lib)}:
            dest = root + p
            if os.path.lexists(dest):
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)


def _copy_tree(root: str, tree: str, elfs: list) -> None:
    if not os.path.exists(tree):
        return
    shutil.copytree(tree, root + tree, symlinks=True, dirs_exist_ok=True)
    for d, _, files in os.walk(tree):
        elfs += [os.path.join(d, n) for n in files if ".so" in n
                 and not os.path.islink(os.path.join(d, n))]


def make_mpi_rootfs(root: str, programs: dict, mpi: str = "openmpi",
                    python: bool = False, mpi4py: str = "") -> str:
    """A busybox image with MPI programs (name -> C source, built with the host's mpicc
    of `mpi` ("openmpi" or "mpich") into /opt/mpi/NAME) and that MPI inside.

    The libraries are the ldd closure of the programs and of every plugin of that MPI
    (Open MPI + PMIx; MPICH + libfabric's providers), plus the plugin directories, help
    files and settings, each copied to the same path as on the host, so the image runs
    the host's MPI with no host mount. python=True adds the host's python3 and mpi4py
    with the standard library (make_python_tree): Debian's python3-mpi4py (built for
    Open MPI), or the package directory `mpi4py` (e.g. one built with mpicc.mpich).
    """
    make_busybox_rootfs(root)
    os.makedirs(os.path.join(root, "opt/mpi"), exist_ok=True)
    elfs = []
    cc = MPICC[mpi]
    for name, source in programs.items():
        src = os.path.join(root, "opt/mpi", name + ".c")
        with open(src, "w") as f:
            f.write(source)
        prog = os.path.join(root, "opt/mpi", name)
        subprocess.run([cc, "-O2", "-o", prog, src], check=True)
        elfs.append(prog)
    for tree in (MPI_TREES if mpi == "openmpi" else MPICH_TREES):
        _copy_tree(root, tree, elfs)
    elfs += [p for p in MPI_LIBS[mpi] if os.path.exists(p)]
    if python:
        elfs += make_python_tree(root, mpi4py)
    _copy_libs(root, elfs)
    subprocess.run(["chmod", "-R", "a+rX", root], check=True)
    return root


def make_python_tree(root: str, mpi4py: str = "") -> list:
    """The host's python3 interpreter, its standard library (without tests and idle) and
    mpi4py (Debian's, or the package directory given), copied to the same paths in root
    (mpi4py to Debian's); returns the ELF files whose libraries the image then needs."""
    exe = os.path.realpath("/usr/bin/python3")
    os.makedirs(root + "/usr/bin", exist_ok=True)
    shutil.copy2(exe, root + exe)
    if not os.path.lexists(root + "/usr/bin/python3"):
        os.symlink(os.path.basename(exe), root + "/usr/bin/python3")
    stdlib = sysconfig.get_paths()["stdlib"]
    skip = shutil.ignore_patterns("test", "tests", "idlelib", "tkinter", "turtledemo",
                                  "__pycache__", "ensurepip", "lib2to3", "pydoc_data")
    shutil.copytree(stdlib, root + stdlib, symlinks=True, dirs_exist_ok=True, ignore=skip)
    elfs = [exe]
    dist = "/usr/lib/python3/dist-packages/mpi4py"
    src = mpi4py or dist
    if os.path.isdir(src):
        shutil.copytree(src, root + dist, symlinks=True, dirs_exist_ok=True, ignore=skip)
    for d in (stdlib + "/lib-dynload", dist):
        for dd, _, files in os.walk(root + d):
            elfs += [os.path.join(dd, n) for n in files if n.endswith(".so")]
    return elfs


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "busybox-rootfs":
        sys.stderr.write("usage: python -m hpcrun.testing busybox-rootfs DIR\n")
        return 2
    make_busybox_rootfs(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
