"""Render a resolved job step into the sbatch script that `hpcrun submit` sends.

Pure: a Step and the hpcrun executable's path in, script text out; no clock, no
environment, no Slurm. `#SBATCH` lines are sorted and every value is double-quoted
(sbatch's own parser strips double quotes and honours backslash escapes inside them),
so a rendered script is stable and diffable (the golden files in tests/golden/).

Dependencies between steps are not in the script: job ids exist only once the
earlier steps are submitted, so `submit` passes `--dependency=afterok:ID[:ID]` on the
sbatch command line (see `sbatch_argv`).
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Dict, List, Optional, Sequence
from shutil import which

from .jobfile import JobFile, Step
from ..runtime.image import is_path


def hpcrun_exe() -> str:
    """The absolute path of the running hpcrun, so batch jobs on nodes find the same one.

    HPCRUN_EXE overrides it (golden tests, or a site install at another path)."""
    env = os.environ.get("HPCRUN_EXE")
    if env:
        return env
    a0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(a0) == "hpcrun" and os.path.exists(a0):
        return os.path.abspath(a0)
    cand = os.path.join(os.path.dirname(sys.executable), "hpcrun")
    if os.path.exists(cand):
        return cand
    return which("hpcrun") or "hpcrun"


def _quote(v: str) -> str:
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def sbatch_options(step: Step) -> Dict[str, str]:
    """The #SBATCH options of a step, long option name (no dashes) -> value."""
    r = step.resources
    opts: Dict[str, Optional[object]] = {
        "job-name": step.job_name,
        "nodes": r.nodes,
        "ntasks": r.ntasks,
        "ntasks-per-node": r.ntasks_per_node,
        "cpus-per-task": r.cpus_per_task,
        "mem": r.mem,
        "time": r.time,
        "partition": r.partition,
        "account": r.account,
        "qos": r.qos,
        "gpus": r.gpus,
        "array": step.array,
        # Always explicit, so `hpcrun logs` knows where to look.
        "output": step.output or ("%x-%A_%a.out" if step.array else "%x-%j.out"),
        "error": step.error,
    }
    return {k: str(v) for k, v in opts.items() if v is not None}


def task_options(step: Step) -> List[str]:
    """The `hpcrun task` options and IMAGE of one step (before `--`)."""
    argv = ["--node-container"]
    for m in step.mounts:
        argv += ["-v", m]
    for k, v in step.env:
        argv += ["-e", f"{k}={v}"]
    if step.workdir:
        argv += ["-w", step.workdir]
    if step.scratch:
        argv.append("--scratch")
    if step.resources.gpus and not {"--gpus", "--nv", "--device"} & set(step.options):
        argv += ["--gpus", "all"]       # the task's container gets the GPUs Slurm allocated
    if step.resources.cpus_per_task and not any(
            o.split("=")[0] in ("--cpus", "--cpuset-cpus") for o in step.options):
        # A per-task limit: each task's container gets that many of its CPUs, by
        # affinity (a no-op where Slurm's task/affinity or task/cgroup bound it already).
        # resources.mem is the job's memory per node, Slurm's to enforce (its cgroup,
        # which the container sees); `container: {memory: ...}` is one container's.
        argv += ["--cpus", str(step.resources.cpus_per_task)]
    return argv + list(step.options) + [step.image]


def task_argv(step: Step, exe: str) -> List[str]:
    """`srun [--mpi=X] $TASK -- CMD...` for one step, TASK being what
    `HPCRUN task --plan [options] IMAGE` prints (the C front end and the step's plan)."""
    argv = ["srun"]
    if step.mpi:
        argv.append(f"--mpi={step.mpi}")
    return argv + ["$TASK", "--", *step.command]


def _is_reference(image: str) -> bool:
    """An image name or registry reference (not a path): it may need pulling. The
    rule is runtime/image.py is_path (the job file resolved relative paths already)."""
    return not is_path(image)


def render(step: Step, exe: str, source: Optional[str] = None) -> str:
    """The sbatch script for one step. `exe` is the absolute path of hpcrun."""
    lines = ["#!/bin/sh"]
    lines += [f"#SBATCH --{k}={_quote(v)}" for k, v in sorted(sbatch_options(step).items())]
    what = f"job file {os.path.basename(source)}" if source else "a job file"
    lines.append(f"# Rendered by 'hpcrun render' from {what}"
                 + (f", step {step.name!r}." if step.name else "."))
    lines.append("# The step's container is worked out once, here; srun then starts every task "
                 "through")
    lines.append("# hpcrun's C front end (no Python per task). A node's tasks share one "
                 "container; a")
    lines.append("# squashfs image is unpacked once per node. scancel and time-outs deliver "
                 "SIGTERM.")
    if step.depends_on:
        lines.append("# Runs after " + ", ".join(step.depends_on) + " succeeded ('hpcrun "
                     "submit' adds --dependency=afterok:<their job ids>).")
    lines.append("set -eu")
    lines.append(f"HPCRUN={shlex.quote(exe)}")
    if _is_reference(step.image):
        img = shlex.quote(step.image)
        lines.append("# The image is a name: pull it into the store unless it is there.")
        lines.append(f'"$HPCRUN" inspect {img} >/dev/null 2>&1 || "$HPCRUN" pull {img} >&2')
    opts = " ".join(shlex.quote(a) for a in task_options(step))
    lines.append(f'TASK=$("$HPCRUN" task --plan {opts})')
    words = [a if a == "$TASK" else shlex.quote(a) for a in task_argv(step, exe)]
    lines.append("exec " + " ".join(words))
    return "\n".join(lines) + "\n"


def render_file(job: JobFile, exe: str) -> Dict[str, str]:
    """Every step's script, step name -> text (name "" for a file without steps)."""
    return {s.name: render(s, exe, job.path) for s in job.steps}


def sbatch_argv(dependencies: Sequence[str] = (), test_only: bool = False) -> List[str]:
    """The sbatch command line that submits a rendered script read from stdin."""
    argv = ["sbatch", "--parsable"]
    if test_only:
        argv.append("--test-only")
    if dependencies:
        argv += ["--dependency=afterok:" + ":".join(dependencies), "--kill-on-invalid-dep=yes"]
    return argv
