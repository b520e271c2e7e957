"""MPI in containers, as data: which launcher started a rank, the host's MPI for
--mpi=host, the image's PMIx client; all decided here, carried out by the plan
executor (cext/task.c) or by binds and variables in the plan.

- join_word(): what a plan says about the ranks of an MPI launch on one node: share
  the node's container (join=auto, the default of `hpcrun run`; --join=KEY), or not
  (join=off: --no-join, and a container per task under srun). The executor reads the
  launcher's variables (OMPI_COMM_WORLD_LOCAL_*, MPI_LOCALNRANKS/PMI_FD of MPICH's
  hydra, SLURM_*, PMIX_*) per invocation, elects the node's first rank by flock,
  and sets SEPARATE below for ranks left in user namespaces of their own.
- host_plan(): --mpi=host, the host's MPI library, fabric libraries and plugin trees
  for an image whose MPI has the same ABI; HostMPIError where it has not.
- pmix_word(): the image's PMIx client version, so that the executor can refuse a
  launcher's PMIx server the client can't reach (a clear error, not a hang).

The hot path's part (join_word, pmix_word) lives in hpcrun/runtime/mpiplan.py.
"""
from __future__ import annotations

import os

from hpcrun.runtime.mpiplan import (LIB_DIRS, PMIX_LIBS, _find_lib, _inside,  # noqa: F401
                                    _read, join_word, pmix_version, pmix_word)

# For ranks in different user namespaces (the executor sets them, unless the user
# did): Open MPI's cross-memory attach fails between user namespaces (and its
# fallback hangs at 64 KiB); UCX (MPICH's ch4:ucx, Open MPI's pml ucx) can't open a
# peer's shared memory through /proc/PID/fd nor use CMA, and without CMA its
# rendezvous goes over TCP, whose close at MPI_Finalize sometimes hangs (UCX 1.13):
# eager messages only. See also cext/task.c separate_vars.
SEPARATE = ("OMPI_MCA_btl_vader_single_copy_mechanism=none", "UCX_POSIX_USE_PROC_LINK=n",
            "UCX_TLS=^cma", "UCX_RNDV_THRESH=inf")


# ---------------------------------------------------------------- --mpi=host
#
# The host's MPI library, its fabric libraries (libfabric, UCX, PMIx, hwloc) and their
# plugins and configuration, bound into the container over an image whose MPI has the
# same ABI: the MPICH ABI family (libmpi.so.12 / libmpich.so.12: MPICH, Intel MPI,
# MVAPICH, Cray MPICH) or Open MPI of the same major version (libmpi.so.40).

# soname -> ABI family
SONAMES = {"libmpi.so.40": "Open MPI", "libmpich.so.12": "MPICH ABI",
           "libmpi.so.12": "MPICH ABI"}
# never bound: the image's own C library and loader stay (the glibc check is for them)
GLIBC = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "libresolv.so",
         "ld-linux", "linux-vdso", "libutil.so", "libanl.so")
# plugin trees and configuration of the MPI and fabric libraries, where present
TREES = {
    "Open MPI": ("/usr/lib/x86_64-linux-gnu/openmpi", "/usr/share/openmpi", "/etc/openmpi",
                 "/usr/lib/x86_64-linux-gnu/pmix2", "/usr/share/pmix", "/etc/pmix"),
    "MPICH ABI": (),
}
HOST_DIR = "/.hpcrun-host-mpi"     # inside: the host's libraries, first on LD_LIBRARY_PATH
FABRIC_TREES = ("/usr/lib/x86_64-linux-gnu/ucx", "/etc/ucx", "/usr/lib/x86_64-linux-gnu/libfabric",
                "/etc/libfabric")


class HostMPIError(Exception):
    """--mpi=host can't be done: .what is one line naming the mismatch, .hint the fix."""

    def __init__(self, what, hint):
        super().__init__(what)
        self.what, self.hint = what, hint


def _glibc_versions(data: bytes) -> list:
    import re  # lazy: keeps hpcrun run's start-up small
    return sorted({int(m) for m in re.findall(rb"GLIBC_2\.(\d+)", data)})


def _version(family: str, root: str, libpath: str) -> str:
    """The MPI's release (4.1.4, 4.0.2), read from its libraries' strings."""
    import re  # lazy: keeps hpcrun run's start-up small
    real = os.path.realpath(root + libpath) if root else os.path.realpath(libpath)
    d = os.path.dirname(real)
    if family == "Open MPI":
        for name in ("libopen-pal.so.40", "libmpi.so.40"):
            m = re.search(rb"\bv(\d+\.\d+\.\d+)", _read(os.path.join(d, name)))
            if m:
                return m.group(1).decode()
        m = re.search(r"\.so\.40\.(\d)(\d)", real)      # 40.30 -> 4.1, 40.20 -> 4.0
        return f"{int(m.group(1)) + 1}.{int(m.group(1)) - 2}" if m else "?"
    m = re.search(rb"mpich-(\d+\.\d+(?:\.\d+)?)", _read(real)) or \
        re.search(rb"MPICH Version:\s*(\d+\.\d+(?:\.\d+)?)", _read(real))
    return m.group(1).decode() if m else "?"


def _closure(paths) -> list:
    """The host libraries these ELF files need (ldd), less the C library's own."""
    import subprocess  # lazy: keeps hpcrun run's start-up small
    out = []
    seen = set()
    for p in paths:
        cp = subprocess.run(["ldd", p], capture_output=True, text=True)
        for line in cp.stdout.splitlines():
            w = line.split()
            lib = w[2] if len(w) > 2 and w[1] == "=>" else (w[0] if w and w[0].startswith("/") else None)
            if not lib or not lib.startswith("/") or any(g in os.path.basename(lib) for g in GLIBC):
                continue
            if lib not in seen:
                seen.add(lib)
                out.append(lib)
    return out


def host_library(family: str | None = None, environ=None) -> tuple:
    """(soname, path) of the host's MPI: HPCRUN_HOST_MPI (a library file), else the
    first of the known sonames in the host's library directories, of `family` if
    given."""
    e = os.environ if environ is None else environ
    if e.get("HPCRUN_HOST_MPI"):
        p = e["HPCRUN_HOST_MPI"]
        base = os.path.basename(p)
        so = next((s for s in SONAMES if base.startswith(s)), None)
        if so is None or not os.path.exists(p):
            raise HostMPIError(f"HPCRUN_HOST_MPI={p} is not an MPI library "
                               f"({', '.join(SONAMES)})", "point it at the host's libmpi")
        return so, p
    names = [s for s, f in SONAMES.items() if family in (None, f)]
    return _find_lib("", names)


def host_plan(image_root: str, environ=None) -> dict:
    """What --mpi=host binds for this image, and why; raises HostMPIError when the
    host's MPI can't replace the image's (none in the image or on the host, another
    ABI family, another Open MPI major, a glibc too old for the host's libraries)."""
    so_i, path_i = _find_lib(image_root, list(SONAMES))
    if so_i is None:
        raise HostMPIError(f"--mpi=host: the image {image_root} has no MPI library "
                           f"({', '.join(SONAMES)})",
                           "install the MPI the program was built with in the image, or "
                           "drop --mpi=host")
    fam_i = SONAMES[so_i]
    ver_i = _version(fam_i, image_root, path_i)
    so_h, path_h = host_library(fam_i, environ)
    if so_h is None:
        any_h, any_p = host_library(None, environ)
        what = (f"{SONAMES[any_h]} {_version(SONAMES[any_h], '', any_p)} ({any_h})"
                if any_h else "none")
        raise HostMPIError(f"--mpi=host: the image's MPI is {fam_i} {ver_i} ({so_i}), the "
                           f"host's is {what}: not the same ABI",
                           "use an image built with the host's MPI family, or drop "
                           "--mpi=host (the image's own MPI then runs)")
    fam_h = SONAMES[so_h]
    ver_h = _version(fam_h, "", path_h)
    if fam_h != fam_i:
        raise HostMPIError(f"--mpi=host: the image's MPI is {fam_i} {ver_i} ({so_i}), the "
                           f"host's is {fam_h} {ver_h} ({so_h}): not the same ABI",
                           "use an image built with the host's MPI family, or drop "
                           "--mpi=host (the image's own MPI then runs)")
    if fam_h == "Open MPI" and ver_h.split(".")[0] != ver_i.split(".")[0]:
        raise HostMPIError(f"--mpi=host: the image's Open MPI is {ver_i}, the host's "
                           f"{ver_h}: Open MPI's ABI holds within a major version only",
                           f"rebuild the image with Open MPI {ver_h.split('.')[0]}.x, or "
                           "drop --mpi=host")
    libs = [path_h] + _closure([path_h])
    trees = [os.path.realpath(t) for t in TREES[fam_h] + FABRIC_TREES if os.path.isdir(t)]
    for t in trees:
        for d, _, files in os.walk(t):
            plugins = [os.path.join(d, n) for n in files if n.endswith(".so")]
            libs += [x for x in _closure(plugins) if x not in libs]
    need = max((v for lib in libs for v in _glibc_versions(_read(lib))), default=0)
    _, libc = _find_lib(image_root, ["libc.so.6"])
    have = max(_glibc_versions(_read(image_root + libc)), default=0) if libc else 0
    if not libc or need > have:
        raise HostMPIError(f"--mpi=host: the host's {fam_h} libraries need glibc 2.{need}, "
                           f"the image has " + (f"2.{have}" if libc else "no glibc"),
                           "use an image with a newer glibc (or the host's distribution "
                           "release), or drop --mpi=host")
    # Each library under the name the loader asks for (its soname, as ldd names it) in
    # one directory put first on LD_LIBRARY_PATH; the plugin trees and configuration at
    # the host's paths, where the libraries look for them.
    binds = _dedup([(os.path.realpath(lib), HOST_DIR + "/" + os.path.basename(lib))
                    for lib in libs] + [(t, t) for t in trees])
    return {"image": {"family": fam_i, "soname": so_i, "version": ver_i, "path": path_i,
                      "glibc": f"2.{have}"},
            "host": {"family": fam_h, "soname": so_h, "version": ver_h, "path": path_h,
                     "glibc_needed": f"2.{need}"},
            "why": (f"same ABI: {fam_h} ({so_h})" if fam_h == "MPICH ABI" else
                    f"same ABI: Open MPI {ver_h.split('.')[0]}.x ({so_h})"),
            "binds": binds, "ld_library_path": HOST_DIR}


def _dedup(binds) -> list:
    out, seen = [], set()
    for s, d in binds:
        if d not in seen:
            seen.add(d)
            out.append((s, d))
    return out


def image_root(image) -> str:
    """A directory image's root for --mpi=host (a squashfs file must be unpacked first:
    its libraries are looked for before it is mounted)."""
    if image.kind != "dir" or not os.path.isdir(image.path):
        raise HostMPIError(f"--mpi=host: {image.path} is a squashfs image, whose libraries "
                           "can't be checked before it is mounted",
                           "add --unpack (hpcrun run), or use the image's directory")
    return image.path


def with_host_mpi(opts, image):
    """opts with what --mpi=host adds (runtime/launch.py plan calls this): the host's
    libraries bound read-only, and LD_LIBRARY_PATH with their directory first (then the
    image's own LD_LIBRARY_PATH). Raises UsageError for an incompatible image."""
    from hpcrun.errors import UsageError  # lazy: keeps hpcrun run's start-up small
    try:
        plan = host_plan(image_root(image))
    except HostMPIError as e:
        raise UsageError(e.what, e.hint) from None
    from hpcrun import log  # lazy: keeps hpcrun run's start-up small
    log.info(f"--mpi=host: {plan['why']}; binding {len(plan['binds'])} host paths")
    old = next((kv.partition("=")[2] for kv in (image.config or {}).get("Env") or ()
                if kv.startswith("LD_LIBRARY_PATH=")), "")
    lib = "LD_LIBRARY_PATH=" + plan["ld_library_path"] + (":" + old if old else "")
    return opts.replace(volumes=tuple(opts.volumes) + tuple(f"{a}:{b}:ro"
                                                            for a, b in plan["binds"]),
                        env=(lib,) + tuple(opts.env))


def check_report(image: str, fmt: str = "text") -> tuple:
    """`hpcrun check --mpi IMAGE [--format json]`: (text, exit status): what --mpi=host
    would bind for IMAGE and why, or why it would refuse (status 1)."""
    import json  # lazy: keeps hpcrun run's start-up small
    words = [image]
    try:
        from hpcrun.runtime import image as img  # lazy: keeps hpcrun run's start-up small
        plan = host_plan(image_root(img.resolve(words[0])))
    except HostMPIError as e:
        if fmt == "json":
            return json.dumps({"compatible": False, "error": e.what, "hint": e.hint},
                              indent=2) + "\n", 1
        return f"--mpi=host: refused\n  {e.what}\n  hint: {e.hint}\n", 1
    if fmt == "json":
        return json.dumps(dict(plan, compatible=True), indent=2) + "\n", 0
    i, h = plan["image"], plan["host"]
    lines = [f"--mpi=host: compatible ({plan['why']})",
             f"  image: {i['family']} {i['version']} ({i['path']}), glibc {i['glibc']}",
             f"  host:  {h['family']} {h['version']} ({h['path']}), needs glibc "
             f"{h['glibc_needed']}",
             f"  binds ({len(plan['binds'])}, read-only; LD_LIBRARY_PATH={plan['ld_library_path']}):"]
    lines += [f"    {s} -> {d}" for s, d in plan["binds"]]
    return "\n".join(lines) + "\n", 0


# ---------------------------------------------------------------- PMIx versions
#
# A PMIx server (srun --mpi=pmix, Open MPI's mpirun/orted, PRRTE) tells its clients
# where it listens in one variable per wire version it speaks (PMIX_SERVER_URI41 ...
# PMIX_SERVER_URI); a client looks for those of its own version and older ones, and
# one that finds none does not fail cleanly. The plan carries the image's client
# version (pmixv=); the executor (cext/task.c pmix_check) compares it with the
# variables of each invocation.
