"""What a run's plan needs from MPI, worked out on every plan (the hot path): the join
policy under an MPI launcher and the image's PMIx client version. The rest of MPI
(--mpi=host, `hpcrun check --mpi`) is hpcrun/mpi.py, which imports this.
"""
from __future__ import annotations

import os

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64", "/lib64", "/usr/lib", "/usr/local/lib")
PMIX_LIBS = ("libpmix.so.2", "libpmix.so.1", "libpmix.so")


def join_word(opts, context: str, share: bool) -> str | None:
    """The plan's join= value for these options in this context (runtime/pipeline.py):
    run: auto, KEY (--join=KEY) or off (--no-join); a Slurm task's own container
    (not the step's node container): off."""
    if context == "run":
        if getattr(opts, "no_join", False):
            return "off"
        return getattr(opts, "join", None) or "auto"
    return None if share else "off"


def _find_lib(root: str, names) -> tuple:
    """(soname, path inside root) of the first of `names` found under root's library
    directories (and /opt/*/lib*), or (None, None)."""
    dirs = list(LIB_DIRS)
    try:
        for o in sorted(os.listdir(root + "/opt")):
            for sub in ("lib", "lib64"):
                dirs.append(f"/opt/{o}/{sub}")
    except OSError:
        pass
    for d in dirs:
        for so in names:
            p = d + "/" + so
            if os.path.exists(root + p):
                return so, p
    return None, None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def pmix_version(image_root: str) -> tuple | None:
    """(major, minor, text) of the image's PMIx client library, or None (no PMIx, or
    no version string found). Reads the library's bytes (no `re`: hot path)."""
    _, path = _find_lib(image_root, PMIX_LIBS)
    if path is None:
        return None
    data = _read(image_root + _inside(image_root, path))
    for mark in (b"OpenPMIx ", b"PMIx v", b"pmix-"):
        at = data.find(mark)
        while at >= 0:
            j = at + len(mark)
            k = j
            while k < len(data) and data[k:k + 1] in b"0123456789.abcrc":
                k += 1
            text = data[j:k].decode("ascii", "replace").rstrip(".")
            parts = text.split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return int(parts[0]), int(parts[1]), text
            at = data.find(mark, k)
    return None


def _inside(root: str, path: str) -> str:
    """path inside the image with its symlinks resolved within the image."""
    for _ in range(16):
        if not os.path.islink(root + path):
            return path
        t = os.readlink(root + path)
        path = t if t.startswith("/") else os.path.normpath(os.path.join(os.path.dirname(path), t))
    return path


def pmix_word(image) -> str | None:
    """The plan's pmixv= value: the image's PMIx client MAJOR.MINOR, where it has one."""
    if image.kind != "dir" or not os.path.isdir(image.path):
        return None
    v = pmix_version(image.path)
    return f"{v[0]}.{v[1]}" if v else None
