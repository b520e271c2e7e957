"""Step plans: a step's container worked out once, for the C per-task front end.

``hpcrun srun`` runs once per step on the launching node. It resolves the image and
the ``hpcrun task`` options into a *step plan*, one command-line word, and runs::

    srun [srun options] .../hpcrun/_task<suffix>.so PLAN -- COMMAND...

The program cext/task.c (built as ``hpcrun/_task*.so``, an executable) then starts
each task's container with no Python at all: it adds the task's own environment,
Slurm's PMIx directories and the node's unpacked squashfs copy, and either enters a
container of its own or joins the node's (see cext/task.c for the grammar written
here and what the program does with it). What it cannot do (unpacking a squashfs
file the first time on a node) it hands to ``hpcrun task --unpack-only``.

Where there is no such program (a platform it is not built for) ``hpcrun srun`` falls
back to ``srun ... hpcrun task ...``, one Python start-up per task.
"""
from __future__ import annotations

import os
import sys

VERSION = "1"
SCRATCH = "SCRATCH"       # a mount source the program resolves per task (--scratch)
# Bytes a value keeps as they are; every other one is written %XX. The plan is then
# one shell word that needs no quoting: `srun $(hpcrun task --plan IMAGE) -- CMD`.
_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/._+@-")


def _esc(value) -> str:
    b = os.fsencode(value) if not isinstance(value, bytes) else value
    if b"\0" in b:
        raise ValueError("a NUL byte cannot be passed to a task")
    return "".join(chr(c) if c in _PLAIN else f"%{c:02X}" for c in b)


def encode_args(args) -> str:
    """Words as one shell word that needs no quoting (decode_args reverses it)."""
    return ",".join(_esc(a) for a in args)


def decode_args(word: str) -> list:
    from urllib.parse import unquote
    return [unquote(a, errors="surrogateescape") for a in word.split(",")]


def task_program() -> str | None:
    """The built front end (hpcrun/_task*.so), if it is here and can run."""
    import importlib.machinery      # (not glob: it imports re, milliseconds per step)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = os.path.join(here, "_task" + suffix)
        if os.access(p, os.X_OK) and _interpreter_ok(p):
            return p
    return None


def _interpreter_ok(path: str) -> bool:
    """Its program interpreter (ELF PT_INTERP) exists here: it was built for this
    platform's C library."""
    import struct
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:       # 64-bit ELF only
                return False
            end = "<" if head[5] == 1 else ">"
            phoff, = struct.unpack(end + "Q", head[32:40])
            phentsize, phnum = struct.unpack(end + "HH", head[54:58])
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                ph = f.read(phentsize)
                ptype, = struct.unpack(end + "I", ph[:4])
                if ptype == 3:                                  # PT_INTERP
                    off, = struct.unpack(end + "Q", ph[8:16])
                    size, = struct.unpack(end + "Q", ph[32:40])
                    f.seek(off)
                    interp = f.read(size).rstrip(b"\0")
                    return os.path.exists(interp)
    except (OSError, struct.error, IndexError):
        return False
    return False


def make(task_args: list, hpcrun: list, environ=None, share: bool = False,
         join: "str | None" = None) -> str:
    """The step plan for `hpcrun task [run options] IMAGE` (task_args: the words before
    `--`; the command comes after the plan). `hpcrun`: how to start hpcrun (Python) on
    a node. join: "auto" or a key: the ranks of an MPI launch on a node share one
    container (`hpcrun run` under mpirun; cext/task.c). Raises HpcrunError (UsageError, NotFound, ...) for bad options or images."""
    from ..cli import run
    from ..runtime import env as envpolicy
    from ..runtime import image as img
    from ..runtime import launch
    from . import prepare
    environ = dict(os.environ if environ is None else environ)
    opts = run.parse(list(task_args) + ["--", "true"])
    image = img.resolve(opts.image)
    words = [f"v={VERSION}"]
    if image.kind == "squashfs":
        # Unpacked once per node (prepare.unpack_once's cache): planned as a directory.
        words.append("sq=" + _esc(image.path))
        image = img.Image(path=image.path, kind="dir", name=image.name,
                          config=image.config or {})
    if opts.scratch and not (environ.get("SLURM_TMPDIR") or environ.get("TMPDIR")):
        environ["TMPDIR"] = "/tmp"    # each task binds its own (below); Slurm's default
    spec = launch.plan(opts, image, environ)
    words.append("image=" + _esc(spec.image))
    words += [f"flags={spec.flags}", f"uid={spec.uid}", f"gid={spec.gid}",
              f"stop={spec.stop_signal or 0}"]
    if spec.squashfuse:
        words.append("fuse=" + _esc(spec.squashfuse))
    if spec.hostname:
        words.append("host=" + _esc(spec.hostname))
    for m in spec.mounts:
        src = _esc(m.src) if m.src else ""
        if opts.scratch and m.dst == "/scratch":
            src = SCRATCH             # this task's $SLURM_TMPDIR, else $TMPDIR
        words.append(f"m={m.flags}:{src}:{_esc(m.dst)}")
    if opts.workdir or (image.config or {}).get("WorkingDir"):
        words += ["wd=" + _esc(spec.workdir), f"wdreq={1 if spec.workdir_required else 0}"]
    else:
        words.append("wdcwd=1")                  # each task's own cwd, as seen inside
    # The image's ENTRYPOINT stays in front of the command (Docker's rule); its CMD is
    # the command when the srun line gives none (and none with --entrypoint).
    for a in spec.argv[:len(spec.argv) - 1]:
        words.append("entry=" + _esc(a))
    if opts.entrypoint is None:
        words += ["cmd=" + _esc(a) for a in launch._argv((image.config or {}).get("Cmd"))]
    fixed, own = prepare.env_additions((image.config or {}).get("Env") or (),
                                       opts.env_files, opts.env, environ)
    for name, value in fixed.items():
        words.append(f"set={_esc(name)}:{_esc(value)}")
    for name in sorted(own):
        words.append("own=" + _esc(name))
    if opts.cleanenv:
        words.append("clean=1")
        words += ["always=" + _esc(p) for p in envpolicy.ALWAYS]
    words.append("tmpfs=" + _esc(prepare.tmpfs_pattern(environ)))
    words.append("cache=" + _esc(prepare.cache_base()))
    if share:
        words.append("share=1")
    if join:
        words.append("join=" + _esc(join))
    words += ["py=" + _esc(a) for a in list(hpcrun) + ["task"]]
    # Where the image is not on a node (the store is node-local by default), the task
    # runs `hpcrun task ARGS -- COMMAND` there instead, which pulls it into that store.
    args = (["--node-container"] if share else []) + list(task_args)
    if os.path.exists(args[-1]):
        args[-1] = os.path.abspath(args[-1])     # tasks may start elsewhere
    words += ["arg=" + _esc(a) for a in args]
    return ",".join(words)


def srun_argv(srun_opts, task_args, command, hpcrun: list, share: bool,
              srun: str = "srun") -> list | None:
    """`srun [opts] PROGRAM PLAN -- COMMAND...`, or None where there is no program."""
    prog = task_program()
    if prog is None or os.environ.get("HPCRUN_TASK_PYTHON") == "1":
        return None
    plan = make(task_args, hpcrun, share=share)
    return [srun, *srun_opts, prog, plan, "--", *command]


if __name__ == "__main__":       # pragma: no cover - a debugging aid
    sys.stdout.write(make(sys.argv[1:], ["hpcrun"]) + "\n")
