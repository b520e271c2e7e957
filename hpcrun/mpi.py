"""MPI launchers and libraries, as data (no I/O beyond reading the environment and,
for --mpi=host, the host's and the image's files).

launcher(environ): which launcher started this rank and how many ranks share its
node, read from the variables each launcher exports (cext/task.c's launcher_key reads
the same ones to name the node's container). Used by `hpcrun run` to decide whether
its ranks join one container per node (the default) and, where they cannot, to make
Open MPI use a transport that works between user namespaces.

On the `hpcrun run` hot path: imports os only.
"""
from __future__ import annotations

import os

SEPARATE = ("OMPI_MCA_btl_vader_single_copy_mechanism=none", "UCX_POSIX_USE_PROC_LINK=n",
            "UCX_TLS=^cma", "UCX_RNDV_THRESH=inf")


class Launcher:
    __slots__ = ("name", "local_rank", "local_size")

    def __init__(self, name, local_rank, local_size):
        self.name, self.local_rank, self.local_size = name, local_rank, local_size

    def __repr__(self):
        return f"Launcher({self.name!r}, {self.local_rank!r}, {self.local_size!r})"


def _int(v):
    return int(v) if v is not None and v.isdigit() else None


def launcher(environ=None) -> Launcher | None:
    """The MPI launcher (or srun) that started this process, or None. local_size None:
    the launcher does not say how many ranks share the node."""
    e = os.environ if environ is None else environ
    if "OMPI_COMM_WORLD_LOCAL_SIZE" in e:
        return Launcher("Open MPI", _int(e.get("OMPI_COMM_WORLD_LOCAL_RANK")),
                        _int(e.get("OMPI_COMM_WORLD_LOCAL_SIZE")))
    if "MPI_LOCALNRANKS" in e or "PMI_FD" in e or "HYDI_CONTROL_FD" in e:
        return Launcher("MPICH hydra", _int(e.get("MPI_LOCALRANKID")),
                        _int(e.get("MPI_LOCALNRANKS")))
    if e.get("SLURM_JOB_ID") and e.get("SLURM_STEP_ID"):
        tasks, nodes = _int(e.get("SLURM_STEP_NUM_TASKS")), _int(e.get("SLURM_STEP_NUM_NODES"))
        size = 1 if tasks is not None and tasks == nodes else None
        return Launcher("srun", _int(e.get("SLURM_LOCALID")), size)
    if e.get("PMIX_NAMESPACE") and "PMIX_RANK" in e:
        return Launcher("PMIx", None, None)
    return None


def several_on_node(environ=None) -> Launcher | None:
    """The launcher, where this rank may share its node with others of the launch."""
    ln = launcher(environ)
    return ln if ln is not None and ln.local_size != 1 else None


def separate_env(env, why: str) -> tuple:
    """The command's environment (NAME=VALUE items) for a rank in a user namespace of
    its own: Open MPI's cross-memory attach fails between user namespaces (and its
    fallback hangs at 64 KiB), and UCX (MPICH's ch4:ucx, Open MPI's pml ucx) can't open
    a peer's shared memory through /proc/PID/fd nor use CMA (and, without CMA, its
    rendezvous over TCP sometimes hangs at MPI_Finalize: eager only); these go off unless the user set them
    (cext/task.c's separate_env does the same). Says so at -v."""
    env = tuple(env)
    names = {kv.partition("=")[0] for kv in env}
    add = tuple(kv for kv in SEPARATE if kv.partition("=")[0] not in names)
    if add:
        from hpcrun import log
        for kv in add:
            log.info(f"{why}: this rank has a user namespace of its own, so {kv}")
    return env + add


# ---------------------------------------------------------------- --mpi=host
#
# The host's MPI library, its fabric libraries (libfabric, UCX, PMIx, hwloc) and their
# plugins and configuration, bound into the container over an image whose MPI has the
# same ABI: the MPICH ABI family (libmpi.so.12 / libmpich.so.12: MPICH, Intel MPI,
# MVAPICH, Cray MPICH) or Open MPI of the same major version (libmpi.so.40).

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64", "/lib64", "/usr/lib", "/usr/local/lib")
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


def _find_lib(root: str, names) -> tuple:
    """(soname, path inside root) of the first MPI library found under root's lib dirs
    (and /opt/*/lib), or (None, None)."""
    import glob
    dirs = list(LIB_DIRS) + sorted(d[len(root):] for d in glob.glob(root + "/opt/*/lib*"))
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


def _glibc_versions(data: bytes) -> list:
    import re
    return sorted({int(m) for m in re.findall(rb"GLIBC_2\.(\d+)", data)})


def _version(family: str, root: str, libpath: str) -> str:
    """The MPI's release (4.1.4, 4.0.2), read from its libraries' strings."""
    import re
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
    import subprocess
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


def image_root(name: str) -> str:
    """A directory image's root for --mpi=host (a squashfs file must be unpacked first:
    the libraries are looked for in it)."""
    from hpcrun.runtime import image as img
    image = img.resolve(name)
    if image.kind != "dir":
        raise HostMPIError(f"--mpi=host: {name} is a squashfs image, whose libraries can't "
                           "be checked before it is mounted",
                           "add --unpack (hpcrun run) or use the image's directory")
    return image.path


def host_run_args(plan: dict, image_env=()) -> list:
    """`hpcrun run` options that carry out a host_plan: read-only binds and the
    library path (the image's own LD_LIBRARY_PATH after the host's libraries)."""
    args = []
    for src, dst in plan["binds"]:
        args += ["-v", f"{src}:{dst}:ro"]
    old = next((kv.partition("=")[2] for kv in image_env
                if kv.startswith("LD_LIBRARY_PATH=")), "")
    args += ["-e", "LD_LIBRARY_PATH=" + plan["ld_library_path"] + (":" + old if old else "")]
    return args


def check_report(argv: list) -> tuple:
    """`hpcrun check --mpi IMAGE [--format json]`: (text, exit status): what --mpi=host
    would bind for IMAGE and why, or why it would refuse (status 1)."""
    import json
    fmt = "json" if "--format=json" in argv or argv[-2:] == ["--format", "json"] else "text"
    words = [a for a in argv if a not in ("--mpi", "--format", "json", "text")
             and not a.startswith(("--format=", "--mpi="))]
    if argv[0].startswith("--mpi="):
        words.insert(0, argv[0].partition("=")[2])
    if len(words) != 1:
        from hpcrun.errors import UsageError
        raise UsageError("check --mpi takes one IMAGE", "usage: hpcrun check --mpi IMAGE "
                         "[--format json]")
    try:
        plan = host_plan(image_root(words[0]))
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
# where it listens in one variable per wire version it speaks; a client looks for the
# variables of its own version and older ones. A client that finds none of them does
# not fail cleanly: depending on the version it retries or waits. So hpcrun checks the
# image's PMIx library against the variables before the rank starts.
PMIX_URIS = (("PMIX_SERVER_URI41", (4, 1)), ("PMIX_SERVER_URI4", (4, 0)),
             ("PMIX_SERVER_URI3", (3, 0)), ("PMIX_SERVER_URI21", (2, 1)),
             ("PMIX_SERVER_URI2", (2, 0)), ("PMIX_SERVER_URI", (1, 0)))
PMIX_LIBS = ("libpmix.so.2", "libpmix.so.1", "libpmix.so")


def pmix_version(image_root: str) -> tuple | None:
    """(major, minor, text) of the image's PMIx client library, or None (no PMIx)."""
    import re
    _, path = _find_lib(image_root, PMIX_LIBS)
    if path is None:
        return None
    data = _read(os.path.realpath(image_root + path) if os.path.islink(image_root + path)
                 else image_root + path)
    if not data and os.path.islink(image_root + path):
        data = _read(image_root + os.path.join(os.path.dirname(path),
                                               os.readlink(image_root + path)))
    m = re.search(rb"(?:OpenPMIx|PMIx) v?(\d+)\.(\d+)\.(\d+\w*)", data) or \
        re.search(rb"pmix-(\d+)\.(\d+)\.(\d+\w*)", data)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), b".".join(m.groups()).decode()


def pmix_check(image_root: str, environ=None) -> None:
    """Raise HostMPIError where this rank's launcher runs a PMIx server the image's
    PMIx client can't reach (it offers only newer wire versions)."""
    e = os.environ if environ is None else environ
    offered = [k for k, _ in PMIX_URIS if k in e]
    if "PMIX_NAMESPACE" not in e or not offered:
        return
    v = pmix_version(image_root)
    if v is None:
        return                     # no PMIx in the image: its MPI uses something else
    usable = [k for k, ver in PMIX_URIS if k in e and ver <= (v[0], v[1])]
    if usable:
        return
    server = e.get("PMIX_VERSION", "newer")
    raise HostMPIError(f"PMIx mismatch: the image's PMIx {v[2]} looks for "
                       f"{' or '.join(k for k, ver in PMIX_URIS if ver <= (v[0], v[1]))}, "
                       f"the launcher's PMIx server ({server}) offers only "
                       f"{', '.join(offered)}",
                       "rebuild the image with a PMIx of version 2.1 or later (PMIx "
                       "talks across versions from there), or use --mpi=host")
