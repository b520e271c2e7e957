"""The plan cache: `hpcrun run`'s plans, kept so the C launcher can skip Python.

The `hpcrun` command is a small C program (cext/launcher.c). For `hpcrun run` it looks
the invocation up here and, on a valid entry, hands the plan straight to the C plan
executor; on a miss it starts Python, which plans the run and calls store() before
executing. The entry format and the rules for keys and checks are stated once, at the
top of cext/launcher.c; this module writes what that program reads.

Safety: an entry is keyed by the uid, the cwd, the environment variables planning
reads and the option words, and carries the identity (dev, inode, size, mtime, ctime)
of every file planning read. A changed, retagged or removed image fails a check, so a
stale entry is never run; a corrupt entry fails its checksum and is replaced; the
directory is the caller's own (0700, checked), so users never share an entry.
"""
from __future__ import annotations

import os

from hpcrun.runtime import plan as planfmt

HEAD = "hpcrun-plan-cache 2"
_GPU_KEYS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS",
             "NVIDIA_DRIVER_CAPABILITIES")
_FNV0 = 1469598103934665603
_FNVP = 1099511628211


def _fnv(data: bytes) -> int:
    h = _FNV0
    for b in data:
        h = ((h ^ b) * _FNVP) & 0xFFFFFFFFFFFFFFFF
    return h


def cache_dir() -> str:
    return os.path.join("/var/tmp", f"hpcrun-{os.getuid()}", "plans")


def key(words, environ=None) -> str:
    """The key material for `hpcrun run WORDS...` (options and IMAGE as given)."""
    environ = os.environ if environ is None else environ
    parts = ["v=1", f"uid={os.getuid()}", os.getcwd(),
             "HOME=" + environ.get("HOME", ""),
             "XDG_CONFIG_HOME=" + environ.get("XDG_CONFIG_HOME", "")]
    parts += sorted(f"{k}={v}" for k, v in environ.items() if k.startswith("HPCRUN_"))
    # What GPU planning reads (runtime/gpu.py; cext/launcher.c GPU_KEYS), where set
    parts += [f"{k}={environ[k]}" for k in _GPU_KEYS if k in environ]
    parts += list(words)
    return "".join(planfmt.esc(p) + "," for p in parts)


def _identity(path: str) -> str:
    try:
        st = os.lstat(path)
    except OSError:
        return f"{planfmt.esc(path)} -"
    return (f"{planfmt.esc(path)} {st.st_dev} {st.st_ino} {st.st_size} "
            f"{st.st_mtime_ns} {st.st_ctime_ns}")


def _resolves(path: str) -> str:
    """`real` check: the path still resolves to the same place, of the same type (a
    directory's contents may change: a bind source or $HOME is written to all along)."""
    real = os.path.realpath(path)
    kind = "D" if os.path.isdir(real) else ("F" if os.path.exists(real) else "-")
    return f"real {planfmt.esc(path)} {planfmt.esc(real)} {kind}"


def checks(opts, image, spec, environ=None) -> list:
    """What the plan depends on: `check` lines (a file's identity: its content
    matters) and `real` lines (a path's resolution: where it leads matters); before
    them, a store image's `lease` line (the lease file the launcher holds shared from
    before the checks until the command's execve, as `run` does in Python)."""
    environ = os.environ if environ is None else environ
    ident = [os.path.join(image.path, ".hpcrun", "config.json"),
             os.path.join(image.path, "etc", "passwd"), "/etc/passwd", "/etc/group"]
    real = [image.path]
    if opts.image.startswith(("/", "./", "../")) or os.path.lexists(opts.image):
        real.append(os.path.abspath(opts.image))
    if image.kind == "squashfs":
        ident.append(image.path)
    if image.name:
        # A store image: its tags and records (a retag, pull or rmi changes one of them).
        from hpcrun import config
        root = os.path.abspath(os.path.expanduser(str(config.get("store"))))
        ident += [os.path.join(root, "tags.json"), os.path.join(root, "records")]
    ident += list(spec.reads)     # devices: CDI specs, their directories, the ld.so.cache
    for m in spec.mounts:
        if m.src and m.src.startswith("/") and not (m.flags & 0x420):   # M_CONTENT, M_SYMLINK
            real.append(m.src)
    real += [os.path.abspath(v.split(":", 1)[0]) for v in opts.volumes]
    if spec.limits is not None:
        real += [mk[1] for mk in spec.limits.makers]    # cgroup mounts (plan word cgmk=)
    if environ.get("HOME"):
        real.append(environ["HOME"])
    ident += [os.path.abspath(f) for f in opts.env_files]
    from hpcrun import configfiles  # lazy: keeps hpcrun run's start-up small
    ident += configfiles.files() + [os.path.join(configfiles.sysdir(), "conf.d")]
    out, seen = [], set()
    if image.name:
        # first: the launcher takes a store image's lease before it checks the rest
        import sys
        resolve = sys.modules.get("hpcrun.image.resolve")
        out += [f"lease {planfmt.esc(p)}" for p in (resolve.lease_paths() if resolve else [])]
    for kind, paths in (("check", ident), ("real", real)):
        for p in paths:
            if (kind, p) not in seen:
                seen.add((kind, p))
                out.append(_identity(p) if kind == "check" else _resolves(p))
    return out


def store(words, word: str, check_lines, environ=None) -> None:
    """Write the entry for `hpcrun run WORDS...` (atomic; errors only cost a miss)."""
    from hpcrun import fsutil  # lazy: keeps hpcrun run's start-up small
    from hpcrun.errors import HpcrunError  # lazy: keeps hpcrun run's start-up small
    try:
        d = fsutil.private_dir(cache_dir(), "the plan cache",
                               "HPCRUN_NO_PLAN_CACHE=1 (no cache)")
    except fsutil.UnsafeDir:
        raise                  # a planted or foreign directory: say so, run nothing
    except HpcrunError:
        return                 # one that cannot be made (read-only /var/tmp): no cache
    try:
        k = key(words, environ)
        body = f"{HEAD}\nkey {k}\n" + "".join(
            c + "\n" if c.startswith(("real ", "lease ")) else f"check {c}\n"
            for c in check_lines) + \
            f"plan {word}\n"
        data = body.encode() + f"sum {_fnv(body.encode()):016x}\n".encode()
        name = os.path.join(d, f"{_fnv(k.encode()):016x}")
        tmp = f"{name}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, name)
    except (OSError, ValueError):
        pass
