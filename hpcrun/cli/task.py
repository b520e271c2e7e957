"""`hpcrun task [run options] IMAGE -- CMD`: one Slurm task's container.

This is what ``srun`` starts once per task where the C per-task program is not used
(``srun ... hpcrun task IMAGE -- CMD``). It is ``hpcrun run`` plus once-per-node
preparation: the options are the option table's (hpcrun/runtime/options.py), the
container is planned by the same pipeline (hpcrun/runtime/pipeline.py) and executed by
the same C executor as the per-task program, so a task behaves the same either way.
Per-task hot path: import nothing heavy here.
"""
from __future__ import annotations

import sys

from hpcrun.runtime import options

ABOUT = """Run one Slurm task's command in IMAGE: 'hpcrun run' plus once-per-node preparation.
Meant to be started by srun, once per task:

  srun -N2 -n8 hpcrun task /images/app.sqfs -- ./app

A squashfs IMAGE is unpacked once per node into the node-local cache (setting
node_cache, default /var/tmp/hpcrun-$UID/nodecache); the first task on a node does it,
the others wait and reuse it."""

EXTRA = """Without Python in every task: work the step out once, then start the C front end:

  hpcrun task --plan [OPTIONS] IMAGE
      prints PROGRAM PLAN, two words that need no quoting, for
  TASK=$(hpcrun task --plan --node-container /images/app.sqfs)
  srun -N2 -n8 $TASK -- ./app

(hpcrun srun does this itself.)"""


def usage() -> str:
    return options.help_text(options.TASK, "hpcrun task [OPTIONS] IMAGE -- COMMAND [ARG...]",
                             ABOUT, EXTRA)


def _plan(argv: list) -> int:
    """`hpcrun task --plan [run options] IMAGE`: print the C front end and a step plan."""
    from hpcrun.errors import UsageError  # lazy: keeps hpcrun run's start-up small
    from hpcrun.slurm import srun, stepplan  # lazy: keeps hpcrun run's start-up small
    i = options.image_index(argv, options.PLAN)
    if i < 0 or i != len(argv) - 1:
        raise UsageError("--plan takes run options and IMAGE, no command",
                         "the command goes on the srun line: srun $TASK -- COMMAND")
    from hpcrun.runtime import pipeline  # lazy: keeps hpcrun run's start-up small
    pipeline.run_options(argv, options.PLAN)          # the options are checked here
    prog = stepplan.task_program()
    if prog is None:
        # Python in every task, the same options (one word, no quoting needed).
        words = [*srun.hpcrun_command(), "task", "--args=" + stepplan.encode_args(argv)]
    else:
        words = [prog, stepplan.make(argv, srun.hpcrun_command())]
    sys.stdout.write(" ".join(words) + "\n")
    return 0


def main(verb: str, argv: list[str]) -> int:
    from hpcrun.errors import UsageError  # lazy: keeps hpcrun run's start-up small
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(usage())
        return 0 if argv else 125
    if argv[0].startswith("--args="):
        # What `hpcrun task --plan` prints where the C front end is not built.
        from hpcrun.runtime import plan
        argv = plan.decode_args(argv[0][len("--args="):]) + argv[1:]
    if argv[0] == "--plan":
        return _plan(argv[1:])
    if argv[0] == "--unpack-only" and len(argv) == 2:
        # The C executor (cext/task.c) asks for a squashfs image's copy on this node.
        from hpcrun.slurm import prepare
        sys.stdout.write(prepare.unpack_once(argv[1]) + "\n")
        return 0
    from hpcrun.runtime import pipeline  # lazy: keeps hpcrun run's start-up small
    opts = pipeline.run_options(argv, options.TASK)
    if opts.node_container:
        import os  # lazy: keeps hpcrun run's start-up small
        from hpcrun import log  # lazy: keeps hpcrun run's start-up small
        if os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_STEP_ID"):
            # The node's container for the step: planned as the per-task program would
            # be, executed by the same C executor in this process.
            i = options.image_index(argv, options.TASK)
            from hpcrun.slurm import srun, stepplan  # lazy: keeps hpcrun run's start-up small
            word, spec = stepplan.prepare(argv[:i + 1], srun.hpcrun_command(), share=True)
            if spec.limits is not None:
                log.info(spec.limits.summary())
            # Limits planned here (a step plan's pertask): a cgroup of this task's own.
            return pipeline.execute_limited(word, spec, opts.command)
        log.info("--node-container: not in a Slurm step; a container of its own")
    return pipeline.run(opts, options.TASK)
