"""`hpcrun srun --container-image=IMG [...] [srun options] -- CMD` (pyxis spelling).

Plans with hpcrun.slurm.srun and hpcrun.slurm.stepplan, then execs
``srun ... hpcrun/_task*.so PLAN -- CMD`` (the C per-task front end; ``srun ... hpcrun
task ...`` where it is not built) so that srun itself gets the terminal's signals and
its exit status is ours.
"""
from __future__ import annotations

import os
import sys


def main(verb: str, argv: list) -> int:
    from hpcrun.slurm import srun
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(srun.USAGE)
        return 0
    plan = srun.plan(argv)
    args = plan.argv(srun.hpcrun_command())
    if os.environ.get("HPCRUN_SRUN_DRY_RUN"):
        # Prints the srun command instead of running it (used by the tests of the
        # option mapping, and handy to see what would run).
        import shlex
        sys.stdout.write(" ".join(shlex.quote(a) for a in args) + "\n")
        return 0
    from hpcrun import log
    from hpcrun.runtime.image import is_path
    if not is_path(plan.image):
        # An image name: pull it here, once for the whole step, if the store lacks it
        # (the tasks then find it in the store; on a cluster whose store is node-local,
        # each node's first task pulls under the store's lock).
        from hpcrun.image.resolve import for_run
        for_run(plan.image, pull=True)
    if not _on_path("srun"):
        from hpcrun.errors import NotFound
        raise NotFound("srun: command not found",
                       "run inside a Slurm allocation on a machine with Slurm, or start "
                       "the local cluster: hpcrun cluster up; eval \"$(hpcrun cluster env)\"")
    # The tasks start through the C front end with a plan made here, once for the step
    # (hpcrun.slurm.stepplan); without it, `hpcrun task` (Python) in every task.
    from hpcrun.slurm import stepplan
    share = "--node-container" in plan.run_opts
    task_args = [a for a in plan.run_opts if a != "--node-container"] + [plan.image]
    fast = stepplan.srun_argv(plan.srun_opts, task_args, plan.command,
                              srun.hpcrun_command(), share)
    if fast is not None:
        args = fast
    log.debug("exec: " + " ".join(args))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp("srun", args)
    return 125  # not reached


def _on_path(name: str) -> bool:
    # (not shutil.which through hpcrun.proc: subprocess and typing cost ~8 ms per step)
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d or ".", name)
        if os.access(p, os.X_OK) and not os.path.isdir(p):
            return True
    return False
