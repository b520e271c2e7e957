"""`hpcrun singularity ...` (and `hpcrun shim DIR`): the Singularity/Apptainer command
lines that workflow tools generate, run by hpcrun.

Why a shim: Makeflow (--singularity), Snakemake (--use-singularity in 7.x, --sdm
apptainer in 8+), Nextflow and CWL runners only know how to call `singularity` or
`apptainer`. They use a handful of its subcommands (--version, exec, run, instance
start/stop, exec instance://N), which map one-to-one to hpcrun's. `hpcrun shim DIR`
writes `singularity` and `apptainer` scripts into DIR; put DIR first on PATH and those
tools run their tasks in hpcrun containers unchanged. Only what those tools use is
understood; anything else is refused with a one-line error, never ignored silently.

On the per-task path: a hand-written parser, then `hpcrun run` (or `exec`) in-process.
"""
from __future__ import annotations

import os
import sys

from hpcrun.errors import UsageError

VERSION = "apptainer version 1.1.0-hpcrun"

# singularity option -> (hpcrun run option or None to drop, takes a value)
EXEC_OPTS = {
    "--bind": ("-v", True), "-B": ("-v", True), "--mount": (None, True),
    "--home": ("home", True), "-H": ("home", True),
    "--pwd": ("-w", True), "--workdir": (None, True), "-W": (None, True),
    "--env": ("-e", True), "--cleanenv": ("--cleanenv", False), "-e": ("--cleanenv", False),
    "--contain": (None, False), "-c": (None, False), "--containall": ("--cleanenv", False),
    "-C": ("--cleanenv", False), "--writable-tmpfs": ("--writable-tmpfs", False),
    "--fakeroot": ("--fakeroot", False), "-f": ("--fakeroot", False),
    "--no-home": ("--no-home", False), "--net": (None, False), "--nv": (None, False),
    "--quiet": (None, False), "-q": (None, False), "--silent": (None, False),
    "-s": (None, False), "--debug": (None, False), "-d": (None, False),
}

SCRIPT = '#!/bin/sh\n# hpcrun\'s Singularity/Apptainer shim (hpcrun shim)\nexec {exe} singularity "$@"\n'


def _split_binds(value: str) -> list:
    return [b for b in value.split(",") if b]


def exec_args(argv: list):
    """singularity exec/run options -> (hpcrun run options, image, command)."""
    out: list = []
    home = None
    pwd = None
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        name, eq, inline = a.partition("=")
        spec = EXEC_OPTS.get(name)
        if spec is None:
            raise UsageError(f"singularity shim: unsupported option {a!r}",
                             "use hpcrun run directly for this (see 'hpcrun run --help')")
        target, takes = spec
        value = None
        if takes:
            if eq:
                value = inline
                i += 1
            else:
                if i + 1 >= len(argv):
                    raise UsageError(f"singularity shim: {name} needs a value", None)
                value = argv[i + 1]
                i += 2
        else:
            i += 1
        if target == "-v":
            for b in _split_binds(value):
                out += ["-v", b if ":" in b or not b.startswith("/") else f"{b}:{b}"]
        elif target == "home":
            home = value.split(":")[0]
        elif target == "-w":
            pwd = value
        elif target == "-e":
            out += ["-e", value]
        elif target:
            out.append(target)
    if i >= len(argv):
        raise UsageError("singularity shim: no image given", "singularity exec IMAGE CMD...")
    image = argv[i]
    cmd = argv[i + 1:]
    # Singularity binds the working directory and runs there; so does the shim.
    cwd = os.getcwd()
    if home and home != os.environ.get("HOME"):
        out += ["-v", f"{home}:{home}"]
    if cwd not in ("/",) and not cwd.startswith(os.environ.get("HOME", "\0") + "/") \
            and cwd != os.environ.get("HOME"):
        out += ["-v", f"{cwd}:{cwd}"]
    out += ["-w", pwd or cwd]
    for p in ("docker://", "oras://", "library://"):
        if image.startswith(p):
            image = image[len(p):]
    return out, image, cmd


def main(verb: str, argv: list) -> int:
    if verb == "shim":
        return _shim(argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write("usage: hpcrun singularity --version | exec|run [OPTIONS] IMAGE "
                         "[CMD...] | instance start|stop|list ...\n\nThe Singularity/Apptainer "
                         "command lines workflow tools generate, run by hpcrun (see "
                         "'hpcrun shim').\n")
        return 0
    while argv and argv[0] in ("--quiet", "-q", "--silent", "-s", "--debug", "-d"):
        argv = argv[1:]
    if argv and argv[0] in ("--version", "version"):
        sys.stdout.write(VERSION + "\n")
        return 0
    sub, rest = argv[0], argv[1:]
    if sub in ("exec", "run"):
        opts, image, cmd = exec_args(rest)
        if image.startswith("instance://"):
            from hpcrun.cli import exec as execcli  # lazy: only this command needs it
            wd = opts[opts.index("-w") + 1]
            return execcli.main("exec", ["-w", wd, image[len("instance://"):], *cmd])
        if sub == "exec" and not cmd:
            raise UsageError("singularity shim: exec needs a command", "singularity exec IMAGE CMD")
        from hpcrun.cli import run as runcli  # lazy: only this command needs it
        return runcli.main("run", [*opts, image, *(["--"] + cmd if cmd else [])])
    if sub == "instance" and rest:
        from hpcrun.cli import instance as inst  # lazy: only this command needs it
        if rest[0] == "start":
            opts, image, names = exec_args(rest[1:])
            if len(names) != 1:
                raise UsageError("singularity shim: instance start IMAGE NAME", None)
            return inst.main("instance", ["start", "--name", names[0], *opts, image])
        if rest[0] == "stop":
            args = ["--all" if a in ("-a", "--all") else a for a in rest[1:]]
            return inst.main("instance", ["stop", *args])
        if rest[0] == "list":
            return inst.main("ps", [])
    raise UsageError(f"singularity shim: unsupported command {' '.join(argv[:2])!r}",
                     "the shim knows --version, exec, run, instance start|stop|list")


SHIM_USAGE = """usage: hpcrun shim DIR

Write the Singularity shim's 'singularity' and 'apptainer' scripts into DIR.
Put DIR first on PATH, and Makeflow, Snakemake and other tools that call singularity
run hpcrun containers.
"""


def _shim(argv: list) -> int:
    if argv in (["-h"], ["--help"]):
        sys.stdout.write(SHIM_USAGE)
        return 0
    if len(argv) != 1 or argv[0].startswith("-"):
        raise UsageError("usage: hpcrun shim DIR",
                         "writes 'singularity' and 'apptainer' into DIR; put DIR first on PATH")
    d = argv[0]
    os.makedirs(d, exist_ok=True)
    exe = os.path.realpath(sys.argv[0]) if sys.argv and os.path.isabs(sys.argv[0]) \
        else f"{sys.executable} -m hpcrun"
    if not os.access(exe.split()[0], os.X_OK) or exe.endswith(".py"):
        exe = f"{sys.executable} -m hpcrun"
    for n in ("singularity", "apptainer"):
        p = os.path.join(d, n)
        with open(p + ".tmp", "w") as f:
            f.write(SCRIPT.format(exe=exe))
        os.chmod(p + ".tmp", 0o755)
        os.replace(p + ".tmp", p)
        sys.stdout.write(p + "\n")
    return 0
