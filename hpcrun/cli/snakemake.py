"""`hpcrun snakemake IMAGE [SNAKEMAKE ARGS...]`: run a Snakemake workflow with every
job's shell command in an hpcrun container of IMAGE, the Snakefile unchanged.

How: Snakemake (7.x: --use-singularity; 8+: --software-deployment-method apptainer)
runs a job's command as `singularity exec ... IMAGE bash -c CMD` when the job has a
container image. This puts hpcrun's Singularity shim (hpcrun shim) first on PATH,
and hands Snakemake a two-line Snakefile of its own that sets IMAGE as the workflow's
global container and includes yours (its first rule stays the default target), so no rule is edited. Tested with Snakemake 7.21
(Debian 12); the 8+ flag is chosen from `snakemake --version`.
"""
from __future__ import annotations

import os
import subprocess
import sys

from hpcrun.errors import NotFound, UsageError

USAGE = """usage: hpcrun snakemake IMAGE [SNAKEMAKE ARGS...]

Run Snakemake with each job in a container of IMAGE (a directory, squashfs file or
store image name), your Snakefile unchanged. IMAGE needs the shell the jobs use (bash
for Snakemake on a host that has bash).
"""


def _snakefile(args: list) -> tuple:
    for i, a in enumerate(args):
        if a in ("-s", "--snakefile") and i + 1 < len(args):
            return os.path.abspath(args[i + 1]), args[:i] + args[i + 2:]
        if a.startswith("--snakefile="):
            return os.path.abspath(a.split("=", 1)[1]), args[:i] + args[i + 1:]
    for cand in ("Snakefile", "snakefile", "workflow/Snakefile", "workflow/snakefile"):
        if os.path.exists(cand):
            return os.path.abspath(cand), args
    raise NotFound("no Snakefile here", "run in the workflow's directory, or give --snakefile")


def main(verb: str, argv: list) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    image, args = argv[0], argv[1:]
    from hpcrun.runtime import image as img  # lazy: only this command needs it
    path = img.resolve(image).path          # a missing image fails here, in one line
    snakefile, args = _snakefile(args)
    import shutil  # lazy: only this command needs it
    exe = shutil.which("snakemake")
    if exe is None:
        raise NotFound("snakemake is not installed", "apt-get install snakemake, or pip install snakemake")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    major = int(version.split(".")[0]) if version[:1].isdigit() else 7
    d = os.path.abspath(os.path.join(".snakemake", "hpcrun"))
    from hpcrun.cli import singularity  # lazy: only this command needs it
    import contextlib  # lazy: only this command needs it
    import io  # lazy: only this command needs it
    with contextlib.redirect_stdout(io.StringIO()):
        singularity.main("shim", [os.path.join(d, "bin")])
    wrapper = os.path.join(d, "Snakefile")
    with open(wrapper, "w") as f:
        # include: would keep no default target (it has no rule before the include); the
        # workflow object's own include can take the included file's first rule.
        f.write(f"# written by hpcrun snakemake\ncontainer: {path!r}\n"
                f"workflow.include({snakefile!r}, overwrite_default_target=True)\n")
    flag = ["--use-singularity"] if major < 8 else ["--software-deployment-method", "apptainer"]
    env = dict(os.environ, PATH=os.path.join(d, "bin") + os.pathsep + os.environ.get("PATH", ""))
    if "--cores" not in args and "-j" not in args and "-c" not in args and \
            not any(a.startswith(("--cores=", "-j", "-c")) for a in args):
        args = ["--cores", "1"] + args
    sys.stdout.flush()
    os.execve(exe, [exe, "--snakefile", wrapper, *flag, *args], env)
    raise UsageError("unreachable")
