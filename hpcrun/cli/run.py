"""`hpcrun run [OPTIONS] IMAGE [--] CMD [ARG...]`: the per-task hot path.

A hand-written option parser (argparse alone costs milliseconds); only os/sys, the
runtime planning modules and the C core are imported on the way to exec.
Every failure raises an HpcrunError: the dispatcher prints it and exits 125
(126/127 kept), so a job script can tell hpcrun's failures from the command's.
"""
from __future__ import annotations

import sys

from hpcrun.errors import ImageError, UsageError

USAGE = """usage: hpcrun run [OPTIONS] IMAGE [--] CMD [ARG...]

Run CMD in IMAGE (a root directory, a squashfs file or an image name), rootless.

  -e, --env NAME[=VALUE]     set a variable (NAME alone copies the host's value)
      --env-file FILE        read NAME=VALUE lines
      --cleanenv             drop the host environment (SLURM_*, PMI*, PMIX_*, OMPI_*,
                             UCX_*, FI_* always pass)
  -v, --volume SRC[:DST[:ro|rw]]  bind a host path (repeatable; SRC must exist)
      --no-home              do not bind $HOME
      --scratch              bind $SLURM_TMPDIR (else $TMPDIR) at /scratch
  -w, --workdir DIR          working directory inside
      --entrypoint CMD       override the image's ENTRYPOINT
      --fakeroot             be uid/gid 0 inside (mapped to you)
      --writable-tmpfs       writable image; changes are discarded at exit
      --pid host|private     private: own pid namespace with a small init as PID 1
      --ipc host|private     private: own ipc namespace
      --network host|none    none: own network namespace with only lo
      --hostname NAME        own uts namespace with this host name
      --unpack               squashfs: extract once to a node-local cache instead of FUSE
      --join[=KEY]           one container per node for the ranks of an MPI launch
                             (the default under mpirun, mpiexec, srun); KEY: by hand
      --mpi host|image       host: bind the host's MPI and fabric libraries over the
                             image's ABI-compatible MPI (see 'hpcrun check --mpi IMAGE')
      --no-join              a container per rank (Open MPI then copies through shared
                             memory: OMPI_MCA_btl_vader_single_copy_mechanism=none)
  -h, --help                 this help

Exit status: the command's; 125 hpcrun failed, 126 cannot execute, 127 not found,
128+N killed by signal N.
"""

# option -> (attribute, kind): kind "flag" sets True/False, "value" takes one argument,
# "list" appends one argument, "choice:<a>|<b>" takes one of the choices.
OPTIONS = {
    "-e": ("env", "list"), "--env": ("env", "list"),
    "--env-file": ("env_files", "list"),
    "--cleanenv": ("cleanenv", "flag"),
    "-v": ("volumes", "list"), "--volume": ("volumes", "list"),
    "--no-home": ("home", "off"),
    "--scratch": ("scratch", "flag"),
    "-w": ("workdir", "value"), "--workdir": ("workdir", "value"),
    "--entrypoint": ("entrypoint", "value"),
    "--fakeroot": ("fakeroot", "flag"),
    "--writable-tmpfs": ("writable_tmpfs", "flag"),
    "--pid": ("pid", "choice:host|private"),
    "--ipc": ("ipc", "choice:host|private"),
    "--network": ("network", "choice:host|none"), "--net": ("network", "choice:host|none"),
    "--hostname": ("hostname", "value"),
    "--unpack": ("unpack", "flag"),
    "--join": ("join", "optional:auto"),
    "--no-join": ("join", "const:"),
    "--mpi": ("mpi", "choice:host|image"),
}


def parse(argv: list):
    """argv after 'run' -> RunOptions; options stop at IMAGE (everything after it is the
    command), as in Docker."""
    from hpcrun.runtime.spec import RunOptions
    vals: dict = {}
    lists: dict = {}
    i = 0
    n = len(argv)
    image = None
    while i < n:
        a = argv[i]
        if a == "--":
            i += 1
            if i < n:
                image = argv[i]
                i += 1
            break
        if not a.startswith("-") or a == "-":
            image = a
            i += 1
            break
        if a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        name, eq, inline = a.partition("=")
        if not eq and len(a) > 2 and a[1] != "-" and a[:2] in OPTIONS:
            name, inline, eq = a[:2], a[2:], "="      # -eFOO=bar, -v/src:/dst
        spec = OPTIONS.get(name)
        if spec is None:
            raise UsageError(f"unknown option {a!r} for run", "see 'hpcrun run --help'")
        attr, kind = spec
        if kind.startswith(("optional:", "const:")):
            # --join (a default value) or --join=KEY; --no-join (a constant)
            if eq and (kind.startswith("const:") or not inline):
                raise UsageError(f"option {name} takes no value" if kind.startswith("const:")
                                 else f"option {name}= needs a value", "see 'hpcrun run --help'")
            vals[attr] = inline if eq else kind.partition(":")[2]
            i += 1
            continue
        if kind in ("flag", "off"):
            if eq:
                raise UsageError(f"option {name} takes no value", "see 'hpcrun run --help'")
            vals[attr] = kind == "flag"
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= n:
                raise UsageError(f"option {name} needs a value", "see 'hpcrun run --help'")
            value = argv[i + 1]
            i += 2
        if kind == "list":
            lists.setdefault(attr, []).append(value)
        elif kind.startswith("choice:"):
            choices = kind[7:].split("|")
            if value not in choices:
                raise UsageError(f"unknown {name} value {value!r}",
                                 f"use {' or '.join(name + ' ' + c for c in choices)}")
            vals[attr] = value
        else:
            if attr == "hostname" and not value:
                raise UsageError("--hostname needs a non-empty name", "e.g. --hostname node1")
            vals[attr] = value
    if image is None:
        raise UsageError("no image given", "usage: hpcrun run [OPTIONS] IMAGE [--] CMD [ARG...]")
    command = argv[i:]
    if command and command[0] == "--":
        command = command[1:]
    for k, v in lists.items():
        vals[k] = tuple(v)
    return RunOptions(image=image, command=tuple(command), **vals)


def main(verb: str, argv: list) -> int:
    opts = parse(argv)
    if opts.mpi == "host":
        argv = _host_mpi(argv, opts)
        opts = parse(argv)
    separate = None
    import os
    if "PMIX_NAMESPACE" in os.environ and os.path.isdir(opts.image):
        _pmix_check(opts.image)
    if opts.join != "":
        separate = _join(argv, opts)   # returns only where the ranks can't share one
    elif _mpi().several_on_node() is not None:
        separate = "--no-join"
    from hpcrun.runtime import image as img
    from hpcrun.runtime import launch
    image = img.resolve(opts.image)
    if image.kind == "squashfs":
        if opts.unpack:
            root = img.unpack(image.path)
            image = img.Image(path=root, kind="dir", config=image.config or img.dir_config(root),
                              name=image.name)
        elif not launch.fuse_allowed():
            raise ImageError(f"can't mount squashfs image {opts.image}: this node does not let "
                             "users use FUSE (/dev/fuse)",
                             "add --unpack to extract it once into a node-local cache, or ask "
                             "the admin to allow FUSE")
        elif image.config is None:
            image = image.replace(config=img.squashfs_config(image.path))
    if separate:
        # The launcher's PMIx server directory (its dstore) at the same path, as the C
        # front end binds it for the ranks it starts.
        from hpcrun.slurm import prepare
        binds = prepare.slurm_binds()[1::2]
        if binds:
            opts = opts.replace(volumes=tuple(binds) + tuple(opts.volumes))
    spec = launch.plan(opts, image)
    if separate:
        spec = spec.replace(env=_mpi().separate_env(spec.env, separate))
    return launch.run(spec)


def _host_mpi(argv: list, opts) -> list:
    """--mpi=host: argv with the binds and library path that put the host's MPI in
    place of the image's, before IMAGE (so a rank handed to the C front end has them
    too). Refuses an image whose MPI is not ABI-compatible (hpcrun.mpi.host_plan)."""
    mpi = _mpi()
    from hpcrun.runtime import image as img
    try:
        image = img.resolve(opts.image)
        root = img.unpack(image.path) if image.kind == "squashfs" and opts.unpack else None
        plan = mpi.host_plan(root or mpi.image_root(opts.image))
    except mpi.HostMPIError as e:
        raise UsageError(e.what, e.hint) from None
    from hpcrun import log
    log.info(f"--mpi=host: {plan['why']}; binding {len(plan['binds'])} host paths")
    extra = mpi.host_run_args(plan, (image.config or {}).get("Env") or ())
    words = argv[:len(argv) - len(opts.command)]
    j = len(words) - 2 if len(words) > 1 and words[-1] == "--" else len(words) - 1
    if j > 0 and words[j - 1] == "--":
        j -= 1
    return words[:j] + extra + words[j:] + argv[len(words):]


def _pmix_check(root: str) -> None:
    """A PMIx client in the image that can't reach the launcher's server is a clear
    error here, not a hang in MPI_Init (hpcrun.mpi.pmix_check)."""
    mpi = _mpi()
    try:
        mpi.pmix_check(root)
    except mpi.HostMPIError as e:
        raise UsageError(e.what, e.hint) from None


def _mpi():
    from hpcrun import mpi
    return mpi


def _join(argv: list, opts):
    """Ranks of an MPI launch on one node share one container (Open MPI's cross-memory
    attach works only within a user namespace): hand the rank to the C front end
    (cext/task.c), which makes the node's container or joins it. Returns None where
    there is nothing to join (not under a launcher, the node's only rank), else why
    the rank gets a container of its own (no C front end here)."""
    import os
    ln = _mpi().several_on_node() if opts.join is None else True
    if ln is None:
        return None
    from hpcrun import log
    from hpcrun.slurm import srun, stepplan
    prog = stepplan.task_program()
    if prog is None:
        return "the per-task program is not built for this platform"
    words = argv[:len(argv) - len(opts.command)]
    if len(words) > 1 and words[-1] == "--":
        words = words[:-1]
    plan = stepplan.make(words, srun.hpcrun_command(), join=opts.join or "auto")
    log.debug(f"joining the node's container: {prog} {plan}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(prog, [prog, plan, "--", *opts.command])
