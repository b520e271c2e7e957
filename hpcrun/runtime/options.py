"""The container options: one table, from which every entry point is derived.

A container is made from several entry points: `hpcrun run`, `hpcrun task`,
`hpcrun task --plan`, `hpcrun srun` (pyxis's `--container-*` spellings) and job files
(`container:` keys and the shorthand keys `mounts`, `env`, `workdir`, `scratch`).
Each of them gets its parser, its help text and its list of value-taking options
from TABLE below, the way pyxis derives its flags from one table; `RunOptions`
(runtime/spec.py) takes its attributes and defaults from it too. Adding an option is
one `Option(...)` line here plus its meaning in runtime/launch.py `plan()`
(tests/test_options_table.py walks the table through every entry point).

Per-task hot path: this module imports nothing but the spec module and the errors.
"""
from __future__ import annotations

from hpcrun.errors import UsageError

# Entry points (Option.where).
RUN, TASK, PLAN, SRUN, JOB = "run", "task", "plan", "srun", "job"
ALL = frozenset((RUN, TASK, PLAN, SRUN, JOB))
TASKS = frozenset((TASK, PLAN, SRUN, JOB))     # Slurm tasks only

# Option kinds: flag (True), off (False), value (one argument), list (repeatable,
# appends), choice (one of `choices`, or a word starting with one of `prefixes`:
# container:NAME), optional (`--NAME` alone gives choices[0],
# `--NAME=VALUE` gives VALUE; never takes the next word).
FLAG, OFF, VALUE, LIST, CHOICE, OPTIONAL = "flag", "off", "value", "list", "choice", "optional"


class Option:
    """One container option.

    name: the long spelling (`--pid`); short: `-e` or None; aliases: other long
    spellings; attr: the RunOptions attribute; default: its value when not given;
    where: the entry points that accept it; pyxis: the `hpcrun srun` spelling where it
    is not the generic `--container-NAME` (None: generic; "": not on srun's line);
    job: the job file's shorthand key that sets it, where there is one; prefixes: a
    choice's open-ended values (`container:` takes `container:NAME`).
    """

    __slots__ = ("name", "short", "aliases", "attr", "kind", "choices", "default",
                 "metavar", "help", "where", "pyxis", "job", "prefixes")

    def __init__(self, name, attr, kind, help, *, short=None, aliases=(), choices=(),
                 default=None, metavar=None, where=ALL, pyxis=None, job=None, prefixes=()):
        self.name, self.short, self.aliases, self.attr = name, short, tuple(aliases), attr
        self.kind, self.choices, self.help, self.where = kind, tuple(choices), help, where
        self.pyxis, self.job, self.prefixes = pyxis, job, tuple(prefixes)
        if default is None:
            default = {FLAG: False, OFF: True, LIST: ()}.get(kind)
            if kind == CHOICE:
                default = choices[0]
        self.default = default
        self.metavar = metavar or ("|".join(self.choices + tuple(p + "NAME" for p in self.prefixes))
                                   if kind == CHOICE else "VALUE")

    @property
    def takes_value(self) -> bool:
        return self.kind in (VALUE, LIST, CHOICE)

    @property
    def spellings(self) -> tuple:
        return ((self.short,) if self.short else ()) + (self.name,) + self.aliases

    @property
    def key(self) -> str:
        """Its name without dashes: the job file's `container:` key."""
        return self.name[2:]

    def __repr__(self):
        return f"Option({self.name})"


TABLE = (
    Option("--env", "env", LIST, "set a variable (NAME alone copies the host's value)",
           short="-e", metavar="NAME[=VALUE]", pyxis="container-env", job="env"),
    Option("--env-file", "env_files", LIST, "read NAME=VALUE lines", metavar="FILE"),
    Option("--cleanenv", "cleanenv", FLAG,
           "drop the host environment (SLURM_*, PMI*, PMIX_*, OMPI_*, UCX_*, FI_* always pass)"),
    Option("--volume", "volumes", LIST, "bind a host path (repeatable; SRC must exist)",
           short="-v", metavar="SRC[:DST[:ro|rw]]", pyxis="container-mounts", job="mounts"),
    Option("--no-home", "home", OFF, "do not bind $HOME",
           pyxis="no-container-mount-home"),
    Option("--scratch", "scratch", FLAG, "bind $SLURM_TMPDIR (else $TMPDIR) at /scratch",
           pyxis="container-scratch", job="scratch"),
    Option("--workdir", "workdir", VALUE, "working directory inside", short="-w",
           metavar="DIR", pyxis="container-workdir", job="workdir"),
    Option("--entrypoint", "entrypoint", VALUE,
           "override the image's ENTRYPOINT (empty: none) and drop its CMD",
           metavar="CMD", pyxis="no-container-entrypoint"),
    Option("--fakeroot", "fakeroot", FLAG, "be uid/gid 0 inside (mapped to you)",
           pyxis="container-remap-root"),
    Option("--writable-tmpfs", "writable_tmpfs", FLAG,
           "writable image; changes are discarded at exit", pyxis="container-writable"),
    Option("--pid", "pid", CHOICE, "private: own pid namespace with a small init as PID 1",
           choices=("host", "private")),
    Option("--ipc", "ipc", CHOICE, "private: own ipc namespace", choices=("host", "private")),
    Option("--network", "network", CHOICE, "none: own network namespace with only lo; "
           "container:NAME: your instance NAME's (not with --hostname)",
           aliases=("--net",), choices=("host", "none"), prefixes=("container:",)),
    Option("--hostname", "hostname", VALUE, "own uts namespace with this host name",
           metavar="NAME"),
    Option("--unpack", "unpack", FLAG,
           "squashfs: extract once to a node-local cache instead of FUSE "
           "(Slurm tasks always do)", where=frozenset((RUN,)), pyxis=""),
    Option("--join", "join", OPTIONAL,
           "one container per node for the ranks of an MPI launch (the default under "
           "mpirun, mpiexec, srun); =KEY: join the node's container of KEY",
           choices=("auto",), metavar="[=KEY]", where=frozenset((RUN,)), pyxis=""),
    Option("--no-join", "no_join", FLAG,
           "a container per rank (MPI then avoids cross-memory attach between them)",
           where=frozenset((RUN,)), pyxis=""),
    Option("--mpi", "mpi", CHOICE,
           "host: the host's MPI and fabric libraries over the image's ABI-compatible MPI "
           "(see 'hpcrun check --mpi IMAGE')", choices=("image", "host"),
           where=frozenset((RUN, TASK)), pyxis=""),
    Option("--preserve-fds", "preserve_fds", VALUE,
           "keep descriptors 3 .. 2+N open in the command (the others above 2 are "
           "closed; PMI_FD's always stays)", metavar="N", where=frozenset((RUN,)), pyxis=""),
    Option("--gpus", "gpus", VALUE,
           "GPUs: all, a number, or device=ID[,ID...] (Docker's spelling; of those "
           "allocated: SLURM_STEP_GPUS, CUDA_VISIBLE_DEVICES)", metavar="all|N|device=ID"),
    Option("--device", "devices", LIST, "a CDI device (repeatable; NAME may be all)",
           metavar="VENDOR/CLASS=NAME"),
    Option("--nv", "nv", FLAG, "all GPUs (Apptainer's spelling of --gpus all)"),
    # Resource limits (hpcrun/cgroups.py), on every entry point. In a Slurm job they are
    # applied under the task's own cgroup, never by leaving it; the job's own resources
    # (--mem, --cpus-per-task, a job file's resources:) are Slurm's limits, which its
    # task/cgroup enforces and the container sees. A step plan hands the per-node ones
    # to each task (runtime/pipeline.py prepare).
    Option("--cpus", "cpus", VALUE, "CPU quota (1.5: one and a half CPUs; without a "
           "writable cgroup: that many whole CPUs, by affinity)", metavar="N"),
    Option("--cpuset-cpus", "cpuset_cpus", VALUE, "CPUs the container may use (0-3,5)",
           metavar="LIST"),
    Option("--memory", "memory", VALUE, "memory limit (512m, 4g); at it the container is "
           "killed: exit 137", short="-m", metavar="SIZE"),
    Option("--memory-swap", "memory_swap", VALUE, "memory plus swap (-1: unlimited swap)",
           metavar="SIZE"),
    Option("--pids-limit", "pids_limit", VALUE, "most processes and threads (-1: unlimited)",
           metavar="N"),
    Option("--limits", "limits", CHOICE, "strict: a limit this host can't enforce is an "
           "error; best-effort: apply what it can, say what it did", choices=("strict",
           "best-effort")),
    Option("--ulimit", "ulimits", LIST, "a resource limit, as Docker's: NAME=SOFT[:HARD] "
           "(nofile, nproc, core, stack, memlock, as; as only by name: it is address "
           "space, not memory)", metavar="NAME=N[:N]"),
    Option("--limits-view", "limits_view", FLAG, "/proc/meminfo, /proc/cpuinfo and "
           "/sys/devices/system/cpu/online show the limits (as lxcfs does)"),
    Option("--node-container", "node_container", FLAG,
           "one container per node and step, made by the node's first task and joined "
           "by the others", where=frozenset((TASK, PLAN)), pyxis="container-per-task"),
)

BY_SPELLING = {s: o for o in TABLE for s in o.spellings}
BY_ATTR = {o.attr: o for o in TABLE}
# Short options that take a value may be glued to it: -eNAME=x, -v/src:/dst.
_SHORT_VALUE = {o.short for o in TABLE if o.short and o.takes_value}


def defaults() -> dict:
    return {o.attr: o.default for o in TABLE}


def usage_hint(entry: str) -> str:
    return f"see 'hpcrun {entry} --help'"


def _check_value(opt: Option, value: str) -> str:
    prefix = next((p for p in opt.prefixes if value.startswith(p)), None)
    if opt.kind == CHOICE and value not in opt.choices and prefix is None:
        raise UsageError(f"unknown {opt.name} value {value!r}",
                         f"use {' or '.join(opt.name + ' ' + c for c in opt.choices + tuple(p + 'NAME' for p in opt.prefixes))}")
    if prefix == "container:":
        name = value[len(prefix):]
        if not name:
            raise UsageError(f"{opt.name} container: needs the name of an instance",
                             f"e.g. {opt.name} container:web (see 'hpcrun ps')")
        # lazy: only this value needs the instance name rule (hpcrun.instance.state: os only)
        from hpcrun.instance.state import check_name
        check_name(name)
    if opt.attr == "hostname" and not value:
        raise UsageError("--hostname needs a non-empty name", "e.g. --hostname node1")
    return value


def parse(argv, entry: str = RUN):
    """Options, IMAGE and command for `entry` (run, task, plan): `[OPTIONS] IMAGE [--]
    CMD...`; options stop at IMAGE (everything after it is the command), as in Docker.
    Returns (values: dict attr -> value for the options given, image or None, command,
    help_asked)."""
    vals: dict = {}
    lists: dict = {}
    i, n = 0, len(argv)
    image = None
    while i < n:
        a = argv[i]
        if a == "--":
            # run: `--` ends the options and IMAGE follows; task and plan: the `--`
            # separates IMAGE from the command, so one before IMAGE means there is none.
            i += 1
            if i < n and entry == RUN:
                image = argv[i]
                i += 1
            break
        if not a.startswith("-") or a == "-":
            image = a
            i += 1
            break
        if a in ("-h", "--help"):
            return vals, None, [], True
        name, eq, inline = a.partition("=")
        if not eq and len(a) > 2 and a[1] != "-" and a[:2] in _SHORT_VALUE:
            name, inline, eq = a[:2], a[2:], "="      # -eFOO=bar, -v/src:/dst
        opt = BY_SPELLING.get(name)
        if opt is None or entry not in opt.where:
            where = "" if opt is None else f" (it applies to {', '.join(sorted(opt.where))})"
            raise UsageError(f"unknown option {a!r} for {entry}{where}", usage_hint(entry))
        if opt.kind == OPTIONAL:
            if eq and not inline:
                raise UsageError(f"option {name}= needs a value", usage_hint(entry))
            vals[opt.attr] = inline if eq else opt.choices[0]
            i += 1
            continue
        if not opt.takes_value:
            if eq:
                raise UsageError(f"option {name} takes no value", usage_hint(entry))
            vals[opt.attr] = opt.kind == FLAG
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= n:
                raise UsageError(f"option {name} needs a value", usage_hint(entry))
            value = argv[i + 1]
            i += 2
        value = _check_value(opt, value)
        if opt.kind == LIST:
            lists.setdefault(opt.attr, []).append(value)
        else:
            vals[opt.attr] = value
    command = list(argv[i:])
    if command and command[0] == "--":
        command = command[1:]
    for k, v in lists.items():
        vals[k] = tuple(v)
    return vals, image, command, False


def image_index(argv, entry: str = TASK) -> int:
    """Index of IMAGE in `[options] IMAGE [--] CMD...` (-1 if there is none), by the
    same rules as parse()."""
    i, n = 0, len(argv)
    while i < n:
        a = argv[i]
        if a == "--":
            return i + 1 if i + 1 < n and entry == RUN else -1
        if not a.startswith("-") or a == "-":
            return i
        name, eq, _ = a.partition("=")
        opt = BY_SPELLING.get(name)
        if opt is not None and opt.takes_value and not eq:
            i += 1
        i += 1
    return -1


def to_argv(values: dict) -> list:
    """Option values (attr -> value) back to canonical words, in table order: the
    inverse of parse() for the options (what srun's and job files' mappings emit)."""
    out = []
    for o in TABLE:
        if o.attr not in values:
            continue
        v = values[o.attr]
        if o.kind == LIST:
            for item in v:
                out.append(f"{o.name}={item}")
        elif o.kind in (FLAG, OFF):
            if bool(v) != bool(o.default):
                out.append(o.name)
        elif o.kind == OPTIONAL:
            if v is not None:
                out.append(o.name if v == o.choices[0] else f"{o.name}={v}")
        elif v is not None and v != o.default:
            out.append(f"{o.name}={v}")
    return out


def help_text(entry: str, usage: str, about: str, extra: str = "") -> str:
    """`hpcrun ENTRY --help`, generated from the table."""
    lines = [f"usage: {usage}", "", about, ""]
    for o in TABLE:
        if entry not in o.where:
            continue
        spell = (f"{o.short}, " if o.short else "    ") + o.name
        if o.aliases:
            spell += ", " + ", ".join(o.aliases)
        if o.takes_value:
            spell += " " + o.metavar
        elif o.kind == OPTIONAL:
            spell += o.metavar
        if len(spell) > 28:
            lines.append(f"  {spell}")
            lines.append(f"  {'':28} {o.help}")
        else:
            lines.append(f"  {spell:28} {o.help}")
    lines.append(f"  {'-h, --help':28} this help")
    if extra:
        lines += ["", extra.rstrip("\n")]
    return "\n".join(lines) + "\n"


# -- job files: `container:` keys (the table's names without dashes) -----------------

def job_schema() -> dict:
    """The JSON schema of a job file's `container:` mapping, from the table."""
    props = {}
    for o in TABLE:
        if JOB not in o.where:
            continue
        if o.kind == LIST:
            s = {"type": "array", "items": {"type": "string"}}
        elif o.kind in (FLAG, OFF):
            s = {"type": "boolean"}
        elif o.kind == CHOICE and o.prefixes:
            alts = "|".join(list(o.choices) + [p + ".+" for p in o.prefixes])
            s = {"type": "string", "pattern": f"^({alts})$"}
        elif o.kind == CHOICE:
            s = {"type": "string", "enum": list(o.choices)}
        elif o.metavar in ("N", "SIZE"):
            s = {"type": ["string", "number"]}       # cpus: 2, memory: 512m
        else:
            s = {"type": "string"}
        s["description"] = f"{o.help} (hpcrun run {o.name})"
        props[o.key] = s
    return {"type": "object", "additionalProperties": False, "properties": props,
            "description": "Container options: any 'hpcrun run' option by its long name "
                           "without dashes (see 'hpcrun run --help'); a flag takes "
                           "true/false, a repeatable option a list."}


def job_argv(mapping: dict) -> list:
    """A validated `container:` mapping -> option words."""
    vals = {}
    for key, v in mapping.items():
        o = BY_SPELLING.get("--" + key)
        if o is None or JOB not in o.where:
            raise UsageError(f"unknown container option {key!r}", "see 'hpcrun run --help'")
        if o.kind in (FLAG, OFF):
            vals[o.attr] = (not v) if o.kind == OFF else bool(v)
        elif o.kind == LIST:
            vals[o.attr] = tuple(_check_value(o, str(x)) for x in v)
        else:
            vals[o.attr] = _check_value(o, str(v))
    return to_argv(vals)
