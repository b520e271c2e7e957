"""GPUs and other devices in containers: CDI specs first, NVIDIA driver injection where
no spec exists, and the allocation (Slurm's, CUDA_VISIBLE_DEVICES) respected.

Planning only: this module reads specs, the driver's files and the image, and returns
data (mounts, environment, the files it read); the C core does the mounting. Nothing
happens at import. runtime/launch.py plan() calls plan() here when `--gpus`,
`--device` or `--nv` is given.

CDI (the Container Device Interface, spec versions up to 1.1): specs are read from the
directories in HPCRUN_CDI_SPEC_DIRS (colon-separated; default /etc/cdi:/var/run/cdi,
a later directory's device beating an earlier one's of the same name), `*.json`,
`*.yaml` and `*.yml`. A device's `containerEdits` (and its spec's) become:
  deviceNodes   binds of the host's node (hostPath, else path) at path
  mounts        binds, read-only unless the options say rw
  env           appended after the image's ENV (-e and --env-file still win)
  hooks         update-ldcache: the image's own ldconfig, run once in a helper
                container over the injected libraries, writes an ld.so.cache into
                /var/tmp/hpcrun-UID/ldcache/<key> (key: the image's identity and the
                library set), bound read-only at /etc/ld.so.cache;
                create-symlinks: symlinks in the skeleton layer over the image;
                any other hook: one warning line naming it, not run.
Nothing in the image changes on disk.

A container with devices gets its own /dev: a tmpfs holding binds of the host's /dev
entries the caller can open (directories such as pts, shm, infiniband included; block
devices and GPU nodes left out), its symlinks, and then the injected nodes. So the
container sees only the GPUs it was given.

Without a CDI spec of kind nvidia.com/gpu (HPCRUN_GPU_KIND), where the NVIDIA driver is
installed: the driver's libraries are found through `ldconfig -p` against DRIVER_LIBS
(the capabilities in NVIDIA_DRIVER_CAPABILITIES, default compute,utility: graphics and
video only on request), its binaries (DRIVER_BINS) on the usual bin directories, its
nodes /dev/nvidia[0-9]*, nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset; the
libraries are bound read-only into LIB_DIR, the binaries into /usr/bin, and the
ld.so.cache is made as for update-ldcache. An image whose glibc is older than the
libraries need (their GLIBC_x.y version references) is refused.
HPCRUN_GPU_DRIVER_ROOT (a test hook) roots that discovery elsewhere: its dev/ holds
the nodes, usr/bin etc. the binaries, etc/ld.so.cache what `ldconfig -p` reads.

Which GPUs: the host's GPUs (the spec's devices named by index, else /dev/nvidiaN),
narrowed to SLURM_STEP_GPUS, else SLURM_JOB_GPUS, else CUDA_VISIBLE_DEVICES, and to
what a cgroup v1 devices controller allows; inside, CUDA_VISIBLE_DEVICES is 0..n-1,
the way Slurm sets it under ConstrainDevices.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct

from hpcrun.errors import HpcrunError, UsageError
from hpcrun.runtime.spec import M_CLOSED, M_FILE, M_RDONLY, M_SYMLINK, M_TMPFS, Mount

SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
GPU_KIND = "nvidia.com/gpu"
CDI_VERSIONS = ("0.3.0", "0.4.0", "0.5.0", "0.5.1", "0.6.0", "0.7.0", "0.8.0", "1.0.0",
                "1.1.0")
LIB_DIR = "/usr/local/nvidia/lib64"        # the no-spec path's library directory inside
LDCACHE_DIR = "/.hpcrun-ldcache"           # the helper container's output directory

# The driver's libraries by capability (NVIDIA_DRIVER_CAPABILITIES, as the NVIDIA
# container toolkit spells them); each name matches NAME and NAME.* in `ldconfig -p`.
DRIVER_LIBS = {
    "utility": ("libnvidia-ml.so", "libnvidia-cfg.so"),
    "compute": ("libcuda.so", "libcudadebugger.so", "libnvidia-ptxjitcompiler.so",
                "libnvidia-nvvm.so", "libnvidia-opencl.so", "libnvidia-gpucomp.so",
                "libnvidia-allocator.so", "libnvidia-pkcs11.so",
                "libnvidia-pkcs11-openssl3.so"),
    "video": ("libnvcuvid.so", "libnvidia-encode.so", "libnvidia-opticalflow.so"),
    "graphics": ("libGLX_nvidia.so", "libEGL_nvidia.so", "libGLESv2_nvidia.so",
                 "libGLESv1_CM_nvidia.so", "libnvidia-eglcore.so", "libnvidia-glcore.so",
                 "libnvidia-tls.so", "libnvidia-glsi.so", "libnvidia-fbc.so",
                 "libnvidia-rtcore.so", "libnvoptix.so", "libnvidia-glvkspirv.so"),
}
DEFAULT_CAPS = ("compute", "utility")
DRIVER_BINS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced",
               "nvidia-cuda-mps-control", "nvidia-cuda-mps-server")
DRIVER_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
BIN_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin")
# The environment variables planning reads here are part of the plan cache's key
# (runtime/plancache.py _GPU_KEYS, cext/launcher.c GPU_KEYS): keep them in step.
_HINT_SPEC = "fix the spec (see https://github.com/cncf-tags/container-device-interface)"


class DeviceError(HpcrunError):
    """A device request that can't be met, or a malformed CDI spec."""


def _warn(msg: str) -> None:
    from hpcrun import log
    log.warning(msg)


def spec_dirs(environ) -> list:
    v = environ.get("HPCRUN_CDI_SPEC_DIRS")
    return [d for d in v.split(":") if d] if v is not None else list(SPEC_DIRS)


def requested(opts) -> bool:
    return bool(opts.gpus or opts.devices or opts.nv)


# ---------------------------------------------------------------- CDI specs

class CdiSpec:
    """One spec file: kind, version, spec-level edits and devices (name -> edits)."""

    __slots__ = ("path", "kind", "version", "edits", "devices")

    def __init__(self, path, kind, version, edits, devices):
        self.path, self.kind, self.version = path, kind, version
        self.edits, self.devices = edits, devices


def _bad(path, field, why):
    return DeviceError(f"malformed CDI spec {path}: {field}: {why}", _HINT_SPEC)


def _vers(v: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def _check_edits(path, where, e) -> dict:
    if e is None:
        return {}
    if not isinstance(e, dict):
        raise _bad(path, where, "is not a mapping")
    for key, kind in (("env", str), ("deviceNodes", dict), ("mounts", dict), ("hooks", dict)):
        items = e.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise _bad(path, f"{where}.{key}", "is not a list")
        for n, it in enumerate(items):
            f = f"{where}.{key}[{n}]"
            if not isinstance(it, kind):
                raise _bad(path, f, f"is not a {'string' if kind is str else 'mapping'}")
            if key == "env":
                if "=" not in it or it.startswith("="):
                    raise _bad(path, f, f"{it!r} is not NAME=VALUE")
                continue
            need = {"deviceNodes": ("path",), "mounts": ("hostPath", "containerPath"),
                    "hooks": ("hookName", "path")}.get(key, ())
            for k in need:
                if not isinstance(it.get(k), str) or not it.get(k):
                    raise _bad(path, f"{f}.{k}", "is missing")
            for k in ("path", "containerPath"):
                if key != "hooks" and isinstance(it.get(k), str) and not it[k].startswith("/"):
                    raise _bad(path, f"{f}.{k}", f"{it[k]!r} is not an absolute path")
            if key in ("mounts", "hooks") and it.get("args") is not None and not (
                    isinstance(it["args"], list) and all(isinstance(a, str) for a in it["args"])):
                raise _bad(path, f"{f}.args", "is not a list of strings")
            if key == "mounts" and it.get("options") is not None and not isinstance(it["options"], list):
                raise _bad(path, f"{f}.options", "is not a list")
            if key == "mounts" and it.get("type") not in (None, "", "bind", "none"):
                raise _bad(path, f"{f}.type", f"mount type {it['type']!r} is not supported "
                           "(only binds)")
    return e


def parse_spec(path: str, text: str) -> CdiSpec:
    """A spec file's text -> CdiSpec; DeviceError naming the file and field otherwise."""
    try:
        if path.endswith(".json"):
            doc = json.loads(text)
        else:
            import yaml     # only where a YAML spec exists
            doc = yaml.safe_load(text)
    except ValueError as e:
        raise _bad(path, "(file)", f"not valid JSON: {e}") from None
    except Exception as e:      # yaml.YAMLError, without importing yaml for JSON specs
        raise _bad(path, "(file)", f"not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise _bad(path, "(top level)", "is not a mapping")
    version = doc.get("cdiVersion")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise _bad(path, "cdiVersion", f"{version!r} is not a version")
    if _vers(version) > _vers(CDI_VERSIONS[-1]):
        raise _bad(path, "cdiVersion", f"{version} is newer than hpcrun reads "
                   f"(up to {CDI_VERSIONS[-1]})")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not re.fullmatch(r"[A-Za-z0-9.-]+/[A-Za-z0-9_.-]+", kind):
        raise _bad(path, "kind", f"{kind!r} is not VENDOR/CLASS")
    devs = doc.get("devices")
    if not isinstance(devs, list) or not devs:
        raise _bad(path, "devices", "is missing or empty")
    devices = {}
    for n, d in enumerate(devs):
        if not isinstance(d, dict):
            raise _bad(path, f"devices[{n}]", "is not a mapping")
        name = d.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", name):
            raise _bad(path, f"devices[{n}].name", f"{name!r} is not a device name")
        if name in devices:
            raise _bad(path, f"devices[{n}].name", f"{name!r} is defined twice")
        if "containerEdits" not in d:
            raise _bad(path, f"devices[{n}].containerEdits", "is missing")
        devices[name] = _check_edits(path, f"devices[{n}].containerEdits", d["containerEdits"])
    edits = _check_edits(path, "containerEdits", doc.get("containerEdits"))
    return CdiSpec(path, kind, version, edits, devices)


class Registry:
    """The specs of the spec directories: (kind, name) -> (spec, device edits)."""

    def __init__(self, dirs):
        self.dirs = list(dirs)
        self.specs = []
        self.reads = list(self.dirs)       # the directories (a new file changes them)
        self.devices = {}
        for d in self.dirs:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            here = {}
            for n in names:
                if not n.endswith((".json", ".yaml", ".yml")):
                    continue
                p = os.path.join(d, n)
                try:
                    with open(p, encoding="utf-8") as f:
                        text = f.read()
                except (OSError, UnicodeDecodeError) as e:
                    raise DeviceError(f"can't read CDI spec {p}: {e}", _HINT_SPEC) from None
                self.reads.append(p)
                spec = parse_spec(p, text)
                self.specs.append(spec)
                for name in spec.devices:
                    k = (spec.kind, name)
                    if k in here:
                        raise _bad(p, "devices", f"{spec.kind}={name} is also defined in "
                                   f"{here[k].path}")
                    here[k] = spec
                    self.devices[k] = spec          # a later directory wins

    def kinds(self) -> list:
        return sorted({k for k, _ in self.devices})

    def names(self, kind) -> list:
        return [n for k, n in self.devices if k == kind]

    def resolve(self, qualified: str) -> list:
        """`vendor/class=name` (or `=all`) -> [(spec, name)]."""
        kind, eq, name = qualified.partition("=")
        if not eq or "/" not in kind or not name:
            raise UsageError(f"--device {qualified!r} is not a CDI device name",
                             "write VENDOR/CLASS=NAME, e.g. --device nvidia.com/gpu=0")
        if (kind, name) in self.devices:
            return [(self.devices[(kind, name)], name)]
        if name == "all" and self.names(kind):
            return [(self.devices[(kind, n)], n) for n in self.names(kind)]
        where = ", ".join(self.dirs) or "(no directory)"
        known = ", ".join(f"{k}={n}" for k, n in sorted(self.devices)) or "none"
        raise DeviceError(f"no CDI spec defines device {qualified} (specs in {where})",
                          f"defined: {known}; generate a spec, e.g. 'nvidia-ctk cdi generate'")


# ---------------------------------------------------------------- ELF versions

_SHT_VERDEF, _SHT_VERNEED = 0x6ffffffd, 0x6ffffffe


def elf_versions(path: str) -> tuple:
    """(versions needed from glibc's libraries, versions defined) of an ELF file, read
    from its .gnu.version_r and .gnu.version_d sections; ((), ()) if it is not ELF."""
    import mmap
    try:
        with open(path, "rb") as f:
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return (), ()
    try:
        if m[:4] != b"\x7fELF":
            return (), ()
        is64, end = m[4] == 2, "<" if m[5] == 1 else ">"
        if is64:
            shoff, = struct.unpack_from(end + "Q", m, 0x28)
            shentsize, shnum = struct.unpack_from(end + "HH", m, 0x3A)
            shfmt = end + "IIQQQQIIQQ"
        else:
            shoff, = struct.unpack_from(end + "I", m, 0x20)
            shentsize, shnum = struct.unpack_from(end + "HH", m, 0x2E)
            shfmt = end + "IIIIIIIIII"
        secs = [struct.unpack_from(shfmt, m, shoff + i * shentsize) for i in range(shnum)]

        def cstr(sec, off):
            base = secs[sec][4] + off
            return bytes(m[base:m.find(b"\0", base)]).decode("ascii", "replace")
        need, have = set(), set()
        for s in secs:
            stype, offset, link, count = s[1], s[4], s[6], s[7]
            p = offset
            for _ in range(count):
                if stype == _SHT_VERNEED:
                    _, cnt, vfile, aux, nxt = struct.unpack_from(end + "HHIII", m, p)
                    lib = cstr(link, vfile)
                    a = p + aux
                    for _ in range(cnt):
                        _, _, _, name, anext = struct.unpack_from(end + "IHHII", m, a)
                        if lib.startswith("lib"):
                            need.add(cstr(link, name))
                        a += anext
                elif stype == _SHT_VERDEF:
                    _, _, _, cnt, _, aux, nxt = struct.unpack_from(end + "HHHHIII", m, p)
                    if cnt:
                        name, = struct.unpack_from(end + "I", m, p + aux)
                        have.add(cstr(link, name))
                else:
                    break
                if not nxt:
                    break
                p += nxt
        return tuple(sorted(need)), tuple(sorted(have))
    except (struct.error, IndexError, ValueError):
        return (), ()
    finally:
        m.close()


def glibc_version(names) -> tuple:
    """The highest GLIBC_x.y among version names: (x, y), or () if none."""
    best = ()
    for n in names:
        mm = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?", n)
        if mm:
            best = max(best, tuple(int(g) for g in mm.groups() if g is not None))
    return best


def _vstr(v) -> str:
    return ".".join(map(str, v))


# ---------------------------------------------------------------- the image

def in_root(root: str, path: str) -> str | None:
    """PATH inside the image at ROOT, symlinks resolved within ROOT; None if absent."""
    parts = [p for p in path.split("/") if p]
    done = ""
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            done = done.rsplit("/", 1)[0]
            continue
        if part == ".":
            continue
        cand = done + "/" + part
        full = root + cand
        if os.path.islink(full):
            hops += 1
            if hops > 40:
                return None
            t = os.readlink(full)
            if t.startswith("/"):
                done = ""
            parts = [p for p in t.split("/") if p] + parts
            continue
        if not os.path.lexists(full):
            return None
        done = cand
    return root + done


def image_glibc(root: str) -> tuple:
    """(version, path) of the image's glibc (its libc.so.6's highest GLIBC_x.y)."""
    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
              "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"):
        p = in_root(root, d + "/libc.so.6")
        if p and os.path.isfile(p):
            return glibc_version(elf_versions(p)[1]), p
    return (), None


def _ldconfig_in(root: str) -> str | None:
    for p in ("/sbin/ldconfig.real", "/usr/sbin/ldconfig.real", "/sbin/ldconfig",
              "/usr/sbin/ldconfig", "/usr/bin/ldconfig"):
        q = in_root(root, p)
        if q and os.path.isfile(q) and os.access(q, os.X_OK):
            return p
    return None


def _ident(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path} -"
    return f"{path} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}"


# ---------------------------------------------------------------- the driver, no spec

class Driver:
    """The NVIDIA driver on this host, as `ldconfig -p`, the bin directories and /dev
    show it (under HPCRUN_GPU_DRIVER_ROOT where that is set)."""

    def __init__(self, environ, caps=None):
        self.root = environ.get("HPCRUN_GPU_DRIVER_ROOT", "").rstrip("/")
        self.dev = (self.root or "") + "/dev"
        self.caps = caps or DEFAULT_CAPS
        self.reads = [self.dev]
        self._libs = None

    def gpus(self) -> list:
        """The GPU indices with a /dev/nvidiaN node."""
        try:
            names = os.listdir(self.dev)
        except OSError:
            return []
        return sorted(int(n[6:]) for n in names if re.fullmatch(r"nvidia\d+", n))

    def nodes(self, indices) -> list:
        out = [f"{self.dev}/nvidia{i}" for i in indices]
        out += [f"{self.dev}/{n}" for n in DRIVER_NODES if os.path.exists(f"{self.dev}/{n}")]
        caps = f"{self.dev}/nvidia-caps"
        if os.path.isdir(caps):
            out.append(caps)
        return out

    def libraries(self) -> list:
        """[(soname as listed, host path)] of the driver libraries of self.caps."""
        if self._libs is not None:
            return self._libs
        from hpcrun import proc
        argv = ["ldconfig", "-p"]
        if self.root:
            argv[1:1] = ["-C", self.root + "/etc/ld.so.cache"]
            self.reads.append(self.root + "/etc/ld.so.cache")
        else:
            self.reads.append("/etc/ld.so.cache")
        ldconfig = next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig")
                         if os.access(p, os.X_OK)), "ldconfig")
        argv[0] = ldconfig
        try:
            out = proc.run(argv, check=False).stdout
        except HpcrunError:
            out = ""
        want = [n for c in self.caps for n in DRIVER_LIBS.get(c, ())]
        wide = "x86-64" if struct.calcsize("P") == 8 else ""
        libs, seen = [], set()
        for line in out.splitlines():
            mm = re.match(r"\s+(\S+) \(([^)]*)\) => (\S+)$", line)
            if not mm:
                continue
            name, flags, path = mm.groups()
            if wide and "64" not in flags and "x32" not in flags and "AArch64" not in flags:
                continue        # a 32-bit library of a multilib driver
            if any(name == w or name.startswith(w + ".") for w in want) and name not in seen:
                seen.add(name)
                libs.append((name, path))
        self._libs = libs
        return libs

    def binaries(self) -> list:
        out = []
        for b in DRIVER_BINS:
            for d in BIN_DIRS:
                p = (self.root or "") + d + "/" + b
                if os.path.isfile(p) and os.access(p, os.X_OK):
                    out.append(p)
                    break
        return out


# ---------------------------------------------------------------- allocation

def _ids(value) -> list:
    return [v.strip() for v in value.split(",") if v.strip()]


def cgroup_allowed(text: str):
    """A cgroup v1 devices.list -> set of allowed (major, minor) for char devices, or
    None where everything is allowed ('a *:* rwm')."""
    allowed = set()
    for line in text.splitlines():
        p = line.split()
        if len(p) < 2:
            continue
        if p[0] == "a" or (p[0] == "c" and p[1] in ("*:*",)):
            return None
        if p[0] == "c":
            ma, _, mi = p[1].partition(":")
            if ma.isdigit():
                allowed.add((int(ma), -1 if mi == "*" else int(mi) if mi.isdigit() else -2))
    return allowed


def _cgroup_devices():
    """This process's cgroup v1 devices.list, where Slurm's ConstrainDevices set one
    (with cgroup v2 the filter is an eBPF program, which can't be read back)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrl, path = line.rstrip("\n").split(":", 2)
                if "devices" in ctrl.split(","):
                    with open(f"/sys/fs/cgroup/devices{path}/devices.list") as g:
                        return cgroup_allowed(g.read())
    except (OSError, ValueError):
        pass
    return None


def allocated(host: list, environ, cgroup=None, node_of=None) -> tuple:
    """(GPUs this process may use, from where): host indices narrowed by Slurm's
    allocation, else CUDA_VISIBLE_DEVICES, and by the devices cgroup."""
    avail, src = list(host), "all GPUs of this host"
    src_name = "SLURM_STEP_GPUS" if environ.get("SLURM_STEP_GPUS") else "SLURM_JOB_GPUS"
    slurm = environ.get(src_name)
    if slurm:
        try:
            ids = [int(v) for v in _ids(slurm)]
        except ValueError:
            raise DeviceError(f"{src_name}={slurm!r} is not a list of GPU indices",
                              "hpcrun reads Slurm's GPU indices (gres/gpu)") from None
        missing = [i for i in ids if i not in host]
        if missing:
            raise DeviceError(f"{src_name} names GPU {missing[0]}, which this host does not "
                              f"have (GPUs here: {', '.join(map(str, host)) or 'none'})",
                              "check the node's gres.conf against its devices")
        avail, src = ids, src_name
    cvd = environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        vals = _ids(cvd)
        if not vals or vals in (["-1"], ["NoDevFiles"]):
            return [], "CUDA_VISIBLE_DEVICES (empty)"
        if not all(v.isdigit() for v in vals):
            raise DeviceError(f"CUDA_VISIBLE_DEVICES={cvd!r}: hpcrun maps GPU indices only",
                              "give indices (e.g. 0,1), or use --device nvidia.com/gpu=UUID")
        ix = [int(v) for v in vals]
        if slurm and sorted(ix) == sorted(avail):
            pass            # Slurm without ConstrainDevices: the same global indices
        else:
            # Positions among what is visible (Slurm under ConstrainDevices renumbers)
            bad = [i for i in ix if i >= len(avail)]
            if bad:
                raise DeviceError(f"CUDA_VISIBLE_DEVICES={cvd} names device {bad[0]}, but "
                                  f"only {len(avail)} GPU(s) are visible ({src})",
                                  "unset CUDA_VISIBLE_DEVICES or fix it")
            avail = [avail[i] for i in ix]
            src = "CUDA_VISIBLE_DEVICES" + (f" within {src}" if slurm else "")
    if cgroup is not None and node_of is not None:
        keep = []
        for i in avail:
            mm = node_of(i)
            if mm is None or mm in cgroup or (mm[0], -1) in cgroup:
                keep.append(i)
        if keep != avail:
            avail, src = keep, src + " and the devices cgroup"
    return avail, src


def choose(request: str, avail: list, host: list, src: str) -> list:
    """--gpus all|N|device=ID[,ID...] among the available GPUs."""
    r = request.strip().strip('"')
    if not host:
        raise DeviceError(f"--gpus {request}: this host has no GPUs",
                          "run where a GPU is allocated (e.g. sbatch --gpus 1), or drop --gpus")
    if r == "all":
        if not avail:
            raise DeviceError(f"--gpus all: no GPU is allocated to this process ({src})",
                              "request GPUs from Slurm (--gpus N), or check "
                              "CUDA_VISIBLE_DEVICES")
        return list(avail)
    if r.isdigit():
        n = int(r)
        if n < 1:
            raise UsageError(f"--gpus {request}: give at least 1", "e.g. --gpus 1 or --gpus all")
        if n > len(avail):
            raise DeviceError(f"--gpus {n}: only {len(avail)} GPU(s) available here ({src})",
                              "ask for fewer, or request more from Slurm (--gpus N)")
        return avail[:n]
    if r.startswith("device="):
        out = []
        for v in _ids(r[7:]):
            if not v.isdigit():
                raise UsageError(f"--gpus {request}: {v!r} is not a GPU index",
                                 "e.g. --gpus device=0,1; for UUIDs use --device "
                                 "nvidia.com/gpu=UUID")
            i = int(v)
            if i not in host:
                raise DeviceError(f"--gpus {request}: this host has no GPU {i}",
                                  f"GPUs here: {', '.join(map(str, host))}")
            if i not in avail:
                raise DeviceError(f"--gpus {request}: GPU {i} is not allocated to this "
                                  f"process ({src})", "ask for one of: "
                                  + (", ".join(map(str, avail)) or "none"))
            out.append(i)
        if not out:
            raise UsageError(f"--gpus {request}: no device given", "e.g. --gpus device=0")
        return out
    raise UsageError(f"--gpus {request!r} is not all, a number or device=ID[,ID...]",
                     "e.g. --gpus all, --gpus 2, --gpus device=0,1 (Docker's spelling)")


# ---------------------------------------------------------------- the injection

class Injection:
    """What plan() returns: the /dev and device mounts, the environment additions
    (NAME=VALUE, after the image's ENV), the files read (for the plan cache), and
    for `hpcrun check`: how it was done."""

    def __init__(self):
        self.mounts = []         # after the default table's /dev replacement
        self.dev = []            # the container's own /dev (replaces the host's bind)
        self.env = []
        self.reads = []
        self.method = ""
        self.gpus = []
        self.folders = []        # update-ldcache folders inside
        self.links = []          # (target, link)


def _hook(inj: Injection, spec_path: str, h: dict) -> None:
    args = list(h.get("args") or [os.path.basename(h["path"])])
    words = args[1:]
    if words and words[0] == "hook":          # `nvidia-ctk hook NAME ...`
        words = words[1:]
    name = words[0] if words else os.path.basename(h["path"])
    opts = words[1:]

    def values(flag):
        out, i = [], 0
        while i < len(opts):
            a = opts[i]
            if a == flag and i + 1 < len(opts):
                out.append(opts[i + 1])
                i += 2
                continue
            if a.startswith(flag + "="):
                out.append(a[len(flag) + 1:])
            i += 1
        return out
    if name == "update-ldcache":
        for f in values("--folder"):
            if f not in inj.folders:
                inj.folders.append(f)
    elif name == "create-symlinks":
        for ln in values("--link"):
            target, sep, link = ln.partition("::")
            if not sep or not link.startswith("/"):
                raise _bad(spec_path, "hooks.args", f"--link {ln!r} is not TARGET::/LINK")
            inj.links.append((target, link))
    else:
        _warn(f"CDI hook {name!r} of {spec_path} is not run (hpcrun interprets "
              "update-ldcache and create-symlinks only)")


def _apply(inj: Injection, spec: CdiSpec, edits: dict, seen: set) -> None:
    for e in edits.get("env") or ():
        inj.env.append(e)
    for n, d in enumerate(edits.get("deviceNodes") or ()):
        host = d.get("hostPath") or d["path"]
        real = os.path.realpath(host)
        if not os.path.exists(real):
            raise DeviceError(f"CDI spec {spec.path}: device node {host} does not exist on "
                              "this host", "regenerate the spec for this node's devices")
        if d["path"] not in seen:
            seen.add(d["path"])
            # read-only: a device is still written through (MNT_READONLY leaves device
            # I/O alone), but its inode can't be changed
            inj.mounts.append(Mount(src=real, dst=d["path"],
                                    flags=M_RDONLY | (0 if os.path.isdir(real) else M_FILE)))
    for m in edits.get("mounts") or ():
        real = os.path.realpath(m["hostPath"])
        if not os.path.exists(real):
            raise DeviceError(f"CDI spec {spec.path}: mount source {m['hostPath']} does not "
                              "exist on this host", "regenerate the spec for this node")
        if m["containerPath"] in seen:
            continue
        seen.add(m["containerPath"])
        opts = m.get("options") or ()
        flags = (0 if "rw" in opts else M_RDONLY) | (0 if os.path.isdir(real) else M_FILE)
        inj.mounts.append(Mount(src=real, dst=os.path.normpath(m["containerPath"]),
                                flags=flags))
    for h in edits.get("hooks") or ():
        _hook(inj, spec.path, h)


def _own_dev(inj: Injection, gpu_names) -> None:
    """The container's /dev: a tmpfs with the host's usable entries, GPU nodes left out."""
    inj.dev.append(Mount(src=None, dst="/dev", flags=M_TMPFS | M_CLOSED))
    try:
        names = sorted(os.listdir("/dev"))
    except OSError:
        names = []
    for n in names:
        p = "/dev/" + n
        if n.startswith("nvidia") or p in gpu_names:
            continue
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            inj.dev.append(Mount(src=os.readlink(p), dst=p, flags=M_SYMLINK))
        elif stat.S_ISDIR(st.st_mode):
            inj.dev.append(Mount(src=p, dst=p, flags=0))
        elif stat.S_ISCHR(st.st_mode) and (os.access(p, os.R_OK) or os.access(p, os.W_OK)):
            inj.dev.append(Mount(src=p, dst=p, flags=M_FILE))
    inj.reads.append("/dev")


def plan(opts, image, environ, uid: int, gid: int, squashfuse=None) -> Injection:
    """The devices of --gpus / --nv / --device for IMAGE, as mounts and environment."""
    inj = Injection()
    reg = Registry(spec_dirs(environ))
    inj.reads += reg.reads
    kind = environ.get("HPCRUN_GPU_KIND") or GPU_KIND
    gpu_req = "all" if opts.nv and not opts.gpus else opts.gpus
    seen: set = set()
    chosen = []                     # (spec, device name)
    gpu_nodes = set()
    for s in reg.specs:
        if s.kind == kind:
            for e in [s.edits] + list(s.devices.values()):
                gpu_nodes.update(d["path"] for d in e.get("deviceNodes") or ())
    driver = None
    if gpu_req:
        cdi_gpus = sorted(int(n) for n in reg.names(kind) if n.isdigit())
        if cdi_gpus:
            host = cdi_gpus
            inj.method = f"CDI ({kind})"
        else:
            driver = Driver(environ, _caps(environ))
            host = driver.gpus()
            inj.reads += driver.reads
            inj.method = "NVIDIA driver (no CDI spec)"
        avail, src = allocated(host, environ, _cgroup_devices() if not driver or not driver.root
                               else None, _node_of(driver) if driver else None)
        inj.gpus = choose(gpu_req, avail, host, src)
        if cdi_gpus:
            chosen += [(reg.devices[(kind, str(i))], str(i)) for i in inj.gpus]
        inj.env.append("CUDA_VISIBLE_DEVICES=" + ",".join(str(i) for i in range(len(inj.gpus))))
    for name in opts.devices:
        chosen += reg.resolve(name)
    done_specs = []
    for spec, name in chosen:
        if spec not in done_specs:
            done_specs.append(spec)
            _apply(inj, spec, spec.edits, seen)
        _apply(inj, spec, spec.devices[name], seen)
    if driver is not None:
        _driver_edits(inj, driver, image, seen)
    _own_dev(inj, gpu_nodes)
    if inj.links:
        inj.mounts += [Mount(src=t, dst=os.path.normpath(ln), flags=M_SYMLINK)
                       for t, ln in inj.links]
    if inj.folders:
        cache = ldcache(image, inj.mounts, inj.folders, uid, gid, squashfuse)
        if cache:
            inj.reads.append(cache)
            inj.mounts.append(Mount(src=cache, dst="/etc/ld.so.cache", flags=M_FILE | M_RDONLY))
    return inj


def _caps(environ) -> tuple:
    v = environ.get("NVIDIA_DRIVER_CAPABILITIES")
    if not v:
        return DEFAULT_CAPS
    caps = tuple(c.strip() for c in v.split(",") if c.strip())
    return tuple(DRIVER_LIBS) if "all" in caps else caps


def _node_of(driver):
    def node(i):
        try:
            st = os.stat(f"{driver.dev}/nvidia{i}")
        except OSError:
            return None
        return (os.major(st.st_rdev), os.minor(st.st_rdev))
    return node


def _driver_edits(inj: Injection, driver: Driver, image, seen: set) -> None:
    """The no-spec path: nodes, libraries (into LIB_DIR), binaries, read-only."""
    for p in driver.nodes(inj.gpus):
        dst = "/dev/" + os.path.basename(p)
        real = os.path.realpath(p)
        seen.add(dst)
        inj.mounts.append(Mount(src=real, dst=dst,
                                flags=M_RDONLY | (0 if os.path.isdir(real) else M_FILE)))
    libs = driver.libraries()
    if not libs:
        raise DeviceError("the NVIDIA driver's libraries are not in the linker cache "
                          "(ldconfig -p lists none of libcuda, libnvidia-ml, ...)",
                          "install the driver's user-space libraries, or write a CDI spec "
                          "('nvidia-ctk cdi generate')")
    need = ()
    for name, path in libs:
        real = os.path.realpath(path)
        need = max(need, glibc_version(elf_versions(real)[0]))
        inj.reads.append(real)
        dst = f"{LIB_DIR}/{name}"
        if dst not in seen:
            seen.add(dst)
            inj.mounts.append(Mount(src=real, dst=dst, flags=M_FILE | M_RDONLY))
    if image.kind == "dir" and need:
        have, libc = image_glibc(image.path)
        if have and have < need:
            raise DeviceError(f"image {image.path} has glibc {_vstr(have)}, but the NVIDIA "
                              f"driver's libraries need glibc {_vstr(need)} or newer",
                              "use an image with a newer glibc, or a CDI spec whose libraries "
                              "fit the image")
    for b in driver.binaries():
        dst = "/usr/bin/" + os.path.basename(b)
        if dst not in seen:
            seen.add(dst)
            inj.mounts.append(Mount(src=os.path.realpath(b), dst=dst, flags=M_FILE | M_RDONLY))
    if LIB_DIR not in inj.folders:
        inj.folders.append(LIB_DIR)


# ---------------------------------------------------------------- ld.so.cache

def _cache_root() -> str:
    return os.path.join("/var/tmp", f"hpcrun-{os.getuid()}", "ldcache")


def ldcache(image, mounts, folders, uid, gid, squashfuse=None) -> str | None:
    """An ld.so.cache made by the image's own ldconfig over the injected libraries, in
    the image's root (a helper container), never the host's: cached per user, keyed by
    the image's identity and the library set. None (one warning) where the image has
    no ldconfig."""
    if image.kind == "dir":
        ldc = _ldconfig_in(image.path)
        if ldc is None:
            _warn(f"update-ldcache: image {image.path} has no ldconfig; the injected "
                  "libraries are not in its linker cache (set LD_LIBRARY_PATH)")
            return None
        parts = [image.path, _ident(image.path + ldc)]
        for p in ("/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/ld.so.cache"):
            q = in_root(image.path, p)
            parts.append(_ident(q) if q else p + " -")
    else:
        ldc = None
        parts = [_ident(image.path)]
    libs = [m for m in mounts if not (m.flags & M_TMPFS) and not m.dst.startswith("/dev/")]
    parts += [f"{m.flags} {m.src if m.flags & M_SYMLINK else _ident(m.src)} {m.dst}"
              for m in libs]
    parts += folders
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
    d = _cache_root()
    out = os.path.join(d, key)
    if os.path.isfile(out):
        return out
    from hpcrun import fsutil
    d = fsutil.private_dir(d, "the ld.so.cache directory", "HPCRUN_CDI_SPEC_DIRS")
    tmp = f"{key}.tmp-{os.getpid()}"
    if not run_ldconfig(image, libs, folders, ldc, d, tmp, uid, gid, squashfuse):
        _warn(f"update-ldcache: image {image.path} has no ldconfig; the injected "
              "libraries are not in its linker cache (set LD_LIBRARY_PATH)")
        return None
    os.replace(os.path.join(d, tmp), out)
    return out


def run_ldconfig(image, libs, folders, ldc, outdir, name, uid, gid, squashfuse) -> bool:
    """Run the image's ldconfig in a helper container (the libraries bound as in the
    real one, OUTDIR bound at LDCACHE_DIR): `ldconfig -X -C LDCACHE_DIR/NAME FOLDERS`.
    False where a squashfs image turns out to have no ldconfig."""
    from hpcrun.runtime.spec import F_SQUASH, Spec
    flags = F_SQUASH if image.kind == "squashfs" else 0
    out = f"{LDCACHE_DIR}/{name}"
    if ldc:
        argv = [ldc, "-X", "-C", out, *folders]
    else:   # a squashfs image, not looked into here: the usual places
        argv = ["/bin/sh", "-c", 'for l in /sbin/ldconfig.real /sbin/ldconfig '
                '/usr/sbin/ldconfig; do [ -x $l ] && exec $l "$@"; done; exit 99', "sh",
                "-X", "-C", out, *folders]
    spec = Spec(image=image.path, squashfuse=squashfuse, flags=flags, uid=uid, gid=gid,
                mounts=tuple(libs) + (Mount(src=outdir, dst=LDCACHE_DIR, flags=0),),
                workdir="/", argv=tuple(argv), env=("PATH=/usr/sbin:/usr/bin:/sbin:/bin",))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:        # the helper: enter and exec ldconfig (never back here on success)
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            from hpcrun import _core
            _core.enter(spec)
        except BaseException as e:      # noqa: BLE001 - report, then leave the fork
            os.write(2, f"{getattr(e, 'what', e)}\n".encode(errors="replace"))
        os._exit(125)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode(errors="replace")
    _, st = os.waitpid(pid, 0)
    if not ldc and os.waitstatus_to_exitcode(st) == 99:
        return False
    if os.waitstatus_to_exitcode(st) != 0 or not os.path.isfile(os.path.join(outdir, name)):
        try:
            os.unlink(os.path.join(outdir, name))
        except OSError:
            pass
        last = (msg.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"update-ldcache: the image's ldconfig failed: {last}",
                          "check that the image's ldconfig runs (hpcrun run IMAGE ldconfig -p)")
    return True


# ---------------------------------------------------------------- hpcrun check

def report(environ=None) -> dict:
    """What `hpcrun check` shows: GPUs, CDI specs read, how injection would be done."""
    environ = os.environ if environ is None else environ
    out = {"spec_dirs": spec_dirs(environ), "specs": [], "error": None}
    kind = environ.get("HPCRUN_GPU_KIND") or GPU_KIND
    try:
        reg = Registry(out["spec_dirs"])
    except DeviceError as e:
        out["error"] = e.what
        reg = None
    if reg is not None:
        out["specs"] = [{"path": s.path, "kind": s.kind, "version": s.version,
                         "devices": sorted(s.devices)} for s in reg.specs]
        cdi = sorted(int(n) for n in reg.names(kind) if n.isdigit())
    else:
        cdi = []
    driver = Driver(environ, _caps(environ))
    if cdi:
        out["gpus"], out["method"] = cdi, f"CDI spec ({kind})"
    else:
        out["gpus"] = driver.gpus()
        libs = driver.libraries() if out["gpus"] else []
        out["libraries"] = [p for _, p in libs]
        out["method"] = ("NVIDIA driver: bind its libraries, binaries and nodes read-only"
                         if out["gpus"] and libs else "none (no GPU found)")
    try:
        out["allocated"], out["allocation"] = allocated(out["gpus"], environ)
    except DeviceError as e:
        out["allocated"], out["allocation"] = [], e.what
    return out


def report_lines(r: dict) -> list:
    """report() as `hpcrun check` prints it."""
    out = [f"GPUs: {', '.join(map(str, r['gpus'])) or 'none'}"
           + (f" (allocated: {', '.join(map(str, r['allocated'])) or 'none'}, from "
              f"{r['allocation']})" if r["gpus"] else ""),
           f"GPU injection: {r['method']}",
           f"CDI spec directories: {', '.join(r['spec_dirs']) or 'none'}"]
    for s in r["specs"]:
        out.append(f"  CDI spec {s['path']}: {s['kind']} (cdiVersion {s['version']}), "
                   f"devices {', '.join(s['devices'])}")
    if r["error"]:
        out.append(f"  {r['error']}")
    for p in r.get("libraries") or ():
        out.append(f"  driver library {p}")
    return out
