"""Step plans: a step's container worked out once, for the C per-task front end.

``hpcrun srun`` runs once per step on the launching node. It resolves the image and
the ``hpcrun task`` options into a *step plan*, one command-line word, and runs::

    srun [srun options] .../hpcrun/_task<suffix>.so PLAN -- COMMAND...

The program cext/task.c (built as ``hpcrun/_task*.so``, an executable) then starts
each task's container with no Python at all: it adds the task's own environment,
Slurm's PMIx directories and the node's unpacked squashfs copy, and either enters a
container of its own or joins the node's (hpcrun/runtime/plan.py states the
grammar; cext/task.c executes it). What it cannot do (unpacking a squashfs
file the first time on a node) it hands to ``hpcrun task --unpack-only``.

Where there is no such program (a platform it is not built for) ``hpcrun srun`` falls
back to ``srun ... hpcrun task ...``, one Python start-up per task.
"""
from __future__ import annotations

import os
import sys

from hpcrun.runtime import plan as _plan

# The plan format itself (grammar, version, escaping) lives in hpcrun/runtime/plan.py.
encode_args = _plan.encode_args
decode_args = _plan.decode_args


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
    import struct  # lazy: keeps hpcrun run's start-up small
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


def make(task_args: list, hpcrun: list, environ=None, share: bool = False) -> str:
    """The step plan for `hpcrun task [run options] IMAGE` (task_args: the words before
    `--`; the command comes after the plan). `hpcrun`: how to start hpcrun (Python) on
    a node. Raises HpcrunError (UsageError, NotFound, ...) for bad options or images."""
    return prepare(task_args, hpcrun, environ, share)[0]


def prepare(task_args: list, hpcrun: list, environ=None, share: bool = False):
    """make(), and the Spec it was planned from: (plan word, Spec)."""
    from hpcrun.runtime import options, pipeline  # lazy: keeps hpcrun run's start-up small
    opts = pipeline.run_options(list(task_args), options.PLAN)
    if opts.command:
        from hpcrun.errors import UsageError  # lazy: keeps hpcrun run's start-up small
        raise UsageError("a step plan takes run options and IMAGE, no command",
                         "the command goes on the srun line: srun $TASK -- COMMAND")
    opts = opts.replace(node_container=share or opts.node_container)
    # Where the image is not on a node (the store is node-local by default), the task
    # runs `hpcrun task ARGS -- COMMAND` there instead, which pulls it into that store.
    args = [a for a in task_args if a != "--node-container"]
    if opts.node_container:
        args.insert(0, "--node-container")
    i = options.image_index(args, options.PLAN)
    if i >= 0 and os.path.exists(args[i]):
        args[i] = os.path.abspath(args[i])     # tasks may start elsewhere
    word, spec, _ = pipeline.prepare(opts, options.PLAN, environ,
                                     python=list(hpcrun) + ["task"], task_args=args)
    return word, spec


def srun_argv(srun_opts, task_args, command, hpcrun: list, share: bool,
              srun: str = "srun") -> list | None:
    """`srun [opts] PROGRAM PLAN -- COMMAND...`, or None where there is no program."""
    prog = task_program()
    if prog is None or os.environ.get("HPCRUN_TASK_PYTHON") == "1":
        return None
    plan = make(task_args, hpcrun, share=share)
    return [srun, *srun_opts, prog, plan, "--", *command]


