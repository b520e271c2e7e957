"""The pyxis spelling: ``hpcrun srun --container-image=IMG [...] [srun options] -- CMD``.

Planning only (no I/O beyond reading paths): the ``--container-*`` options are taken
out of the command line and turned into ``hpcrun task`` options; everything else goes
to ``srun`` untouched. The result is one argv::

    srun [srun options] HPCRUN task [run options] IMAGE -- CMD...

which hpcrun.cli.srun then execs. Options are a table, as in pyxis: each has its pyxis
name, whether it takes a value, and the ``PYXIS_CONTAINER_*`` environment variable that
supplies it when the flag is absent (the command line wins, as in pyxis).
"""
from __future__ import annotations

import os
from ..errors import UsageError
from ..runtime import options as _options
from ..runtime.spec import _Frozen   # not dataclasses: ~10 ms of imports per step

USAGE = """usage: hpcrun srun --container-image=IMAGE [CONTAINER OPTIONS] [SRUN OPTIONS] [--] COMMAND [ARG...]

Run every task of a Slurm step in IMAGE, spelled like pyxis. Runs
'srun [SRUN OPTIONS] hpcrun task [...] IMAGE -- COMMAND'.

Container options (pyxis names; each also read from PYXIS_CONTAINER_<NAME> when absent):
  --container-image=IMAGE       rootfs directory, squashfs file or image name/reference
                                (pyxis's REGISTRY#IMAGE spelling is accepted)
  --container-mounts=SRC[:DST[:FLAGS]][,...]
                                bind mounts; FLAGS 'ro' or 'rw' (several joined by '+')
  --container-workdir=DIR       working directory inside the container
  --container-env=NAME[,NAME...]
                                take these variables' values from the host task
                                environment, over the image's
  --container-writable          writable root filesystem (a tmpfs overlay; discarded)
  --container-readonly          read-only root filesystem (the default)
  --[no-]container-mount-home   [do not] bind-mount $HOME (default: mounted)
  --[no-]container-remap-root   [do not] appear as root inside (default: your uid)
  --container-scratch           bind $SLURM_TMPDIR (else $TMPDIR) at /scratch
  --container-per-task          one container per task (default, as in pyxis: one per
                                node, created by its first task and joined by the others)
  --[no-]container-entrypoint   [do not] run the image's ENTRYPOINT in front of the
                                command (default: run it, as Docker does)

Not supported (an error says so): --container-name, --container-save.
"""


class Opt(_Frozen):
    """name: without the leading "--"; value: takes a value; env: the PYXIS_CONTAINER_*
    fallback ("" for none)."""

    __slots__ = ("name", "value", "env", "doc")
    _defaults = {"doc": ""}

    def __init__(self, name, value, env, doc=""):
        super().__init__(name=name, value=value, env=env, doc=doc)


# The table of container options (pyxis's names). Boolean pairs share a destination.
# Each one maps onto an entry of the option table (hpcrun/runtime/options.py, whose
# `pyxis` field names it); every other run option that applies to Slurm tasks is taken
# in the generic spelling --container-NAME[=VALUE] (e.g. --container-pid=private).
OPTIONS: dict[str, Opt] = {o.name: o for o in [
    Opt("container-image", True, "PYXIS_CONTAINER_IMAGE"),
    Opt("container-mounts", True, "PYXIS_CONTAINER_MOUNTS"),
    Opt("container-workdir", True, "PYXIS_CONTAINER_WORKDIR"),
    Opt("container-env", True, "PYXIS_CONTAINER_ENV"),
    Opt("container-writable", False, "PYXIS_CONTAINER_WRITABLE"),
    Opt("container-readonly", False, "PYXIS_CONTAINER_READONLY"),
    Opt("container-mount-home", False, "PYXIS_CONTAINER_MOUNT_HOME"),
    Opt("no-container-mount-home", False, ""),
    Opt("container-remap-root", False, "PYXIS_CONTAINER_REMAP_ROOT"),
    Opt("no-container-remap-root", False, ""),
    Opt("container-scratch", False, ""),
    Opt("container-per-task", False, ""),
    Opt("container-entrypoint", False, "PYXIS_CONTAINER_ENTRYPOINT"),
    Opt("no-container-entrypoint", False, ""),
]}
# The generic spellings, from the option table.
GENERIC = {"container-" + o.key: o for o in _options.TABLE
           if _options.SRUN in o.where and o.pyxis is None}
for _name, _o in GENERIC.items():
    OPTIONS[_name] = Opt(_name, _o.takes_value, "", _o.help)
USAGE = USAGE.replace("\nNot supported", "\nEvery other 'hpcrun run' option for tasks, as --container-NAME[=VALUE]:\n" + "".join(
    f"  --{n + ('=' + o.metavar if o.takes_value else ''):28} {o.help}\n"
    for n, o in GENERIC.items()) + "\nNot supported", 1)

UNSUPPORTED = {
    "container-name": "hpcrun does not keep containers between steps; keep state in a "
                      "--container-mounts directory, or build an image with it",
    "container-save": "hpcrun does not save container state; write results to a "
                      "--container-mounts directory",
    "container-image-save": "pull the image into the store first with 'hpcrun pull'",
}

# srun options that take a value as a separate word (man srun, Slurm 22.05); used to
# find where the command starts when there is no "--". Options with optional values
# (-I, -K, --bcast, ...) only take one in the "=value" form, as in srun itself.
SRUN_SHORT_VALUE = set("ABCDFGJLMNSTWcdeimnopqrtwx")
SRUN_LONG_VALUE = {
    "accel-bind", "account", "acctg-freq", "bb", "bbf", "bcast-exclude", "begin", "chdir",
    "cluster-constraint", "clusters", "comment", "constraint", "container", "core-spec",
    "cores-per-socket", "cpu-bind", "cpu-freq", "cpus-per-gpu", "cpus-per-task",
    "deadline", "delay-boot", "dependency", "distribution", "epilog", "error", "exclude",
    "export", "extra-node-info", "gid", "gpu-bind", "gpu-freq", "gpus", "gpus-per-node",
    "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "het-group", "hint", "input",
    "job-name", "jobid", "licenses", "mail-type", "mail-user", "mcs-label", "mem",
    "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus", "mpi", "msg-timeout", "network",
    "nodefile", "nodelist", "nodes", "ntasks", "ntasks-per-core", "ntasks-per-gpu",
    "ntasks-per-node", "ntasks-per-socket", "open-mode", "output", "partition", "power",
    "prefer", "priority", "profile", "prolog", "qos", "relative", "reservation", "signal",
    "slurmd-debug", "sockets-per-node", "switches", "task-epilog", "task-prolog",
    "thread-spec", "threads", "threads-per-core", "time", "time-min", "tmp", "uid", "wait",
    "wckey",
}


class Plan(_Frozen):
    """What `hpcrun srun` will run: srun options, the task's run options, image, command."""

    __slots__ = ("srun_opts", "run_opts", "image", "command", "container")

    def __init__(self, srun_opts, run_opts, image, command, container=None):
        super().__init__(srun_opts=srun_opts, run_opts=run_opts, image=image,
                         command=command, container=dict(container or {}))

    def argv(self, hpcrun: list, srun: str = "srun") -> list:
        """The command in its Python form, `srun ... hpcrun task ...` (hpcrun.cli.srun
        runs the C front end instead where it is built: hpcrun.slurm.stepplan)."""
        return [srun, *self.srun_opts, *hpcrun, "task", *self.run_opts, self.image,
                "--", *self.command]


def _truthy(v: str) -> bool:
    return v.strip().lower() in ("1", "y", "yes", "true", "on")


def split(argv: list) -> tuple:
    """Separate container options, srun options and the command.

    Returns (container: dict name -> value|True, srun_opts: list, command: list).
    """
    container: dict = {}
    srun_opts: list = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return container, srun_opts, list(argv[i + 1:])
        if not a.startswith("-") or a == "-":
            return container, srun_opts, list(argv[i:])
        if a.startswith("--"):
            name, eq, val = a[2:].partition("=")
            if name in UNSUPPORTED or (name.startswith("container-")
                                       or name.startswith("no-container-")):
                if name in UNSUPPORTED:
                    raise UsageError(f"--{name} is not supported",
                                     UNSUPPORTED[name])
                opt = OPTIONS.get(name)
                if opt is None:
                    import difflib
                    m = difflib.get_close_matches(name, [*OPTIONS, *UNSUPPORTED], n=1)
                    raise UsageError(f"unknown container option --{name}",
                                     f"did you mean --{m[0]}?" if m else
                                     "see 'hpcrun srun --help'")
                if opt.value:
                    if not eq:
                        if i + 1 >= len(argv):
                            raise UsageError(f"--{name} needs a value",
                                             f"write --{name}=VALUE")
                        i += 1
                        val = argv[i]
                    if val == "":
                        raise UsageError(f"--{name} has an empty value",
                                         f"write --{name}=VALUE")
                    if (name == "container-mounts" or (name in GENERIC and GENERIC[name].kind
                                                       == _options.LIST)) and name in container:
                        val = container[name] + "," + val     # repeated: accumulate
                    container[name] = val
                else:
                    if eq:
                        raise UsageError(f"--{name} takes no value",
                                         f"write just --{name}")
                    container[name] = True
                i += 1
                continue
            srun_opts.append(a)
            if not eq and name in SRUN_LONG_VALUE and i + 1 < len(argv):
                i += 1
                srun_opts.append(argv[i])
            i += 1
            continue
        # short option(s): -N2, -N 2, -l, -lN2
        srun_opts.append(a)
        j = 1
        while j < len(a):
            if a[j] in SRUN_SHORT_VALUE:
                if j == len(a) - 1 and i + 1 < len(argv):
                    i += 1
                    srun_opts.append(argv[i])
                break
            j += 1
        i += 1
    return container, srun_opts, []


def _env_fallbacks(container: dict, environ) -> dict:
    """Fill options absent from the command line from PYXIS_CONTAINER_* variables."""
    c = dict(container)
    pairs = {"container-mount-home": "no-container-mount-home",
             "container-remap-root": "no-container-remap-root",
             "container-writable": "container-readonly",
             "container-entrypoint": "no-container-entrypoint"}
    for name, opt in OPTIONS.items():
        if not opt.env or opt.env not in environ:
            continue
        other = pairs.get(name) or next((k for k, v in pairs.items() if v == name), None)
        if name in c or (other and other in c):
            continue                      # the command line wins
        raw = environ[opt.env]
        if opt.value:
            if raw:
                c[name] = raw
        elif _truthy(raw):
            c[name] = True
        elif other and not OPTIONS[other].env:
            c[other] = True               # PYXIS_CONTAINER_MOUNT_HOME=0 -> --no-...
    return c


def image_arg(image: str, cwd: str) -> str:
    """pyxis/enroot image spelling -> what `hpcrun run` takes.

    ``REGISTRY#IMAGE[:TAG]`` becomes ``REGISTRY/IMAGE[:TAG]``; a relative path that
    exists is made absolute (tasks may start elsewhere); ``USER@`` is refused.
    """
    if image.startswith(("dockerd://", "podman://")):
        raise UsageError(f"--container-image={image!r}: images from a local Docker or "
                         "Podman daemon are not supported",
                         "copy it into hpcrun once: docker save IMAGE | hpcrun load")
    if image.startswith("docker://"):
        image = image[len("docker://"):]
    from ..runtime.image import is_path
    if is_path(image, cwd):
        return os.path.normpath(os.path.join(cwd, os.path.expanduser(image)))
    if "@" in image.split("#", 1)[0] and "#" in image:
        raise UsageError(f"credentials in --container-image={image!r} are not "
                         "supported", "log in once with 'hpcrun login REGISTRY' instead")
    if "#" in image:
        reg, _, rest = image.partition("#")
        if not reg or not rest:
            raise UsageError(f"bad --container-image={image!r}",
                             "write REGISTRY#IMAGE[:TAG], REGISTRY/IMAGE[:TAG] or a path")
        image = f"{reg}/{rest}"
    return image


def _mounts(spec: str, cwd: str) -> list:
    """--container-mounts=SRC[:DST[:FLAGS]][,...] (pyxis: FLAGS joined by '+') -> -v words,
    parsed by the one bind parser (runtime/mounts.py split_bind)."""
    from ..runtime.mounts import split_bind
    out = []
    for item in spec.split(","):
        if not item:
            continue
        src, dst, ro = split_bind(item, "--container-mounts", flag_sep="+")
        src = os.path.normpath(os.path.join(cwd, os.path.expanduser(src)))
        if not os.path.exists(src):
            raise UsageError(f"mount source {src} does not exist",
                             f"create it or fix --container-mounts={spec}")
        out += ["-v", f"{src}:{dst}" + (":ro" if ro else "")]
    return out


def plan(argv: list, environ=None,
         cwd: "str | None" = None) -> Plan:
    """Parse `hpcrun srun` arguments into a Plan (raises UsageError on bad input)."""
    environ = os.environ if environ is None else environ
    cwd = cwd or os.getcwd()
    container, srun_opts, command = split(list(argv))
    container = _env_fallbacks(container, environ)
    if "container-image" not in container:
        raise UsageError("no --container-image given",
                         "write hpcrun srun --container-image=IMAGE [srun options] -- CMD "
                         "(or set PYXIS_CONTAINER_IMAGE); for a job without a container "
                         "use plain srun")
    if not command:
        raise UsageError("no command given",
                         "put the command after '--': hpcrun srun --container-image=IMAGE "
                         "-N2 -- hostname")
    run: list = []
    if "container-mounts" in container:
        run += _mounts(str(container["container-mounts"]), cwd)
    if container.get("no-container-mount-home") and not container.get("container-mount-home"):
        run.append("--no-home")           # hpcrun run binds $HOME unless told not to
    if "container-workdir" in container:
        wd = str(container["container-workdir"])
        if not wd.startswith("/"):
            raise UsageError(f"--container-workdir={wd!r} is not an absolute "
                             "path", "give the directory as it is inside the container")
        run += ["-w", wd]
    if "container-env" in container:
        for name in str(container["container-env"]).split(","):
            name = name.strip()
            if not name:
                continue
            if not name.replace("_", "a").isalnum() or name[0].isdigit():
                raise UsageError(f"bad variable name {name!r} in "
                                 "--container-env", "give NAME[,NAME...] of host variables")
            run += ["-e", name]
    if container.get("container-writable") and not container.get("container-readonly"):
        run.append("--writable-tmpfs")
    if container.get("container-remap-root") and not container.get("no-container-remap-root"):
        run.append("--fakeroot")
    if container.get("container-scratch"):
        run.append("--scratch")
    if container.get("no-container-entrypoint") and not container.get("container-entrypoint"):
        run.append("--entrypoint=")      # the command alone, without the image's ENTRYPOINT
    generic: dict = {}
    for name, o in GENERIC.items():
        if name in container:
            v = container[name]
            if o.kind == _options.LIST:
                generic[o.attr] = tuple(x for x in str(v).split(",") if x)
            elif o.takes_value:
                generic[o.attr] = _options._check_value(o, str(v))
            else:
                generic[o.attr] = o.kind == _options.FLAG
    run += _options.to_argv(generic)
    if not container.get("container-per-task"):
        # As with pyxis: the first task on a node creates the container, the others
        # join it (hpcrun task --node-container).
        run.insert(0, "--node-container")
    image = image_arg(str(container["container-image"]), cwd)
    return Plan(tuple(srun_opts), tuple(run), image, tuple(command), container)


def hpcrun_command(argv0: "str | None" = None) -> list:
    """How the tasks start hpcrun: this very entry point, by absolute path."""
    import sys
    a0 = argv0 if argv0 is not None else sys.argv[0]
    if a0 and os.path.basename(a0) == "hpcrun":
        p = os.path.abspath(a0)
        if os.access(p, os.X_OK):
            return [p]
    return [sys.executable, "-m", "hpcrun"]     # same interpreter, same installation
