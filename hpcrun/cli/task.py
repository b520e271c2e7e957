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
                     use cross-memory attach between each other). The front end
                     hpcrun-task does the joining without starting Python.
"""

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
    if image_index(argv) < 0:
        raise UsageError("no IMAGE given",
                         "usage: hpcrun task [RUN OPTIONS] IMAGE -- COMMAND [ARG...]")
    import os
    # bin/hpcrun-task hands over the step's lock it already holds (see prepare).
    lockfd = os.environ.pop("HPCRUN_TASK_LOCKFD", None)
    lockfd = int(lockfd) if lockfd and lockfd.isdigit() else -1
    if lockfd >= 0:
        try:
            os.set_inheritable(lockfd, False)    # never held by the command
        except OSError:
            lockfd = -1
    from hpcrun.slurm import prepare
    argv = list(argv)
    node_container = False
    while "--node-container" in argv[:image_index(argv)]:
        argv.remove("--node-container")
        node_container = True
    i = image_index(argv)
    key = prepare.plan_key(argv[:i + 1])     # what the node's container is planned for
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
    spec = launch.plan(opts, image)
    if lockfd >= 0 and not node_container:
        os.close(lockfd)
    if node_container:
        fixed, own = prepare.env_additions((image.config or {}).get("Env") or (),
                                           opts.env_files, opts.env, os.environ)
        # The image's ENTRYPOINT stays in front of the command (Docker's rule).
        entry = spec.argv[:len(spec.argv) - len(opts.command)] if opts.command else None
        if entry is None:
            key = ""        # no command: the image's CMD; hpcrun-task leaves it to Python
        return prepare.run_node_container(spec, key, fixed, own, opts.cleanenv, entry or (),
                                          lockfd)
    return launch.run(spec)
