"""`hpcrun task [run options] IMAGE -- CMD`: one Slurm task's container.

This is what ``srun`` starts once per task (``srun ... hpcrun task IMAGE -- CMD``, as
written by ``hpcrun srun`` and by the scripts ``hpcrun submit`` renders). It is
``hpcrun run`` plus once-per-node preparation (hpcrun.slurm.prepare): a squashfs image
is unpacked by the first task on the node while the others wait, then every task runs
the unpacked copy. It runs ``hpcrun run``'s code in this same process, so a task costs
one Python start-up. Per-task hot path: import nothing heavy here.
"""
from __future__ import annotations

import sys

USAGE = """usage: hpcrun task [RUN OPTIONS] IMAGE -- COMMAND [ARG...]

Run one Slurm task's command in IMAGE: 'hpcrun run' plus once-per-node preparation.
Meant to be started by srun, once per task:

  srun -N2 -n8 hpcrun task /images/app.sqfs -- ./app

A squashfs IMAGE is unpacked once per node into the node-local cache (setting
node_cache, default /var/tmp/hpcrun-$UID/nodecache); the first task on a node does it,
the others wait and reuse it. Every 'hpcrun run' option is accepted (see
'hpcrun run --help'), and:

  --node-container   one container per node and step: the node's first task makes
                     it (held by a small keeper process until the step ends), the
                     others join it (one user namespace per node, so MPI ranks can
                     use cross-memory attach between each other).

Without Python in every task: work the step out once, then start the C front end:

  hpcrun task --plan [RUN OPTIONS] IMAGE
      prints PROGRAM PLAN, two words that need no quoting, for
  TASK=$(hpcrun task --plan --node-container /images/app.sqfs)
  srun -N2 -n8 $TASK -- ./app

(hpcrun srun does this itself.)
"""


def _plan(argv: list) -> int:
    """`hpcrun task --plan [run options] IMAGE`: print the C front end and a step plan."""
    from hpcrun.errors import UsageError
    from hpcrun.slurm import srun, stepplan
    if "--" in argv or image_index(argv) != len(argv) - 1:
        raise UsageError("--plan takes run options and IMAGE, no command",
                         "the command goes on the srun line: srun $TASK -- COMMAND")
    share = "--node-container" in argv
    args = [a for a in argv if a != "--node-container"]
    prog = stepplan.task_program()
    if prog is None:
        # Python in every task, the same options (one word, no quoting needed).
        words = [*srun.hpcrun_command(), "task", "--args=" + stepplan.encode_args(argv)]
    else:
        words = [prog, stepplan.make(args, srun.hpcrun_command(), share=share)]
    sys.stdout.write(" ".join(words) + "\n")
    return 0

# `hpcrun run` options that take a separate value; used only to find IMAGE when the
# command line has no `--` (with `--`, IMAGE is the word just before it).
_VALUE_OPTS = {"-v", "--volume", "-e", "--env", "--env-file", "-w", "--workdir",
               "--network", "--pid", "--name", "--mount", "-u", "--user", "--hostname",
               "--unpack-dir", "--tmpfs", "--cgroup", "--memory", "--cpus"}


def image_index(argv: list[str]) -> int:
    """Index of IMAGE in `[run options] IMAGE [--] CMD...` (-1 if there is none)."""
    if "--" in argv:
        i = argv.index("--") - 1
        if i < 0 or (argv[i].startswith("-") and argv[i] != "-"):
            return -1
        return i
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-" or not a.startswith("-"):
            return i
        if a in _VALUE_OPTS:
            i += 1
        i += 1
    return -1


def main(verb: str, argv: list[str]) -> int:
    from hpcrun.errors import UsageError
    if not argv or argv[0] in ("-h", "--help"):
        (sys.stdout if argv else sys.stderr).write(USAGE)
        return 0 if argv else 125
    if argv[0].startswith("--args="):
        # What `hpcrun task --plan` prints where the C front end is not built.
        from hpcrun.slurm import stepplan
        argv = stepplan.decode_args(argv[0][len("--args="):]) + argv[1:]
    if argv[0] == "--plan":
        return _plan(argv[1:])
    if argv[0] == "--unpack-only" and len(argv) == 2:
        # The C front end (cext/task.c) asks for a squashfs image's copy on this node.
        from hpcrun.slurm import prepare
        sys.stdout.write(prepare.unpack_once(argv[1]) + "\n")
        return 0
    if image_index(argv) < 0:
        raise UsageError("no IMAGE given",
                         "usage: hpcrun task [RUN OPTIONS] IMAGE -- COMMAND [ARG...]")
    from hpcrun.slurm import prepare
    argv = list(argv)
    node_container = False
    while "--node-container" in argv[:image_index(argv)]:
        argv.remove("--node-container")
        node_container = True
    if node_container:
        _node_container(argv)          # returns only where a node container can't be
    # Slurm's PMIx directories (MPI steps only), as options before the user's own.
    argv = prepare.slurm_binds() + argv
    from hpcrun.cli import run
    from hpcrun.runtime import image as img
    from hpcrun.runtime import launch
    opts = run.parse(argv)
    image = img.resolve(opts.image)
    if image.kind == "squashfs":
        # Once per node: the first task unpacks, the others wait for it and reuse it.
        root = prepare.unpack_once(image.path)
        image = img.Image(path=root, kind="dir", name=image.name,
                          config=image.config if image.config else img.dir_config(root))
    return launch.run(launch.plan(opts, image))


def _node_container(argv: list) -> None:
    """--node-container: hand the task to the C front end (cext/task.c), which makes the
    node's container for the step or joins it. Returns where that cannot be: outside a
    Slurm step, or where the front end is not built (then: a container of its own)."""
    import os
    from hpcrun import log
    from hpcrun.slurm import srun, stepplan
    if not (os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_STEP_ID")):
        log.info("--node-container: not in a Slurm step; a container of its own")
        return
    prog = stepplan.task_program()
    if prog is None:
        log.info("--node-container: the per-task program is not built for this platform; "
                 "a container of its own")
        return
    i = image_index(argv)
    command = argv[i + 2:] if i + 1 < len(argv) and argv[i + 1] == "--" else argv[i + 1:]
    plan = stepplan.make(argv[:i + 1], srun.hpcrun_command(), share=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(prog, [prog, plan, "--", *command])
