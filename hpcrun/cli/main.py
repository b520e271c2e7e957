"""`hpcrun` entry point: global flags, then dispatch to the verb's module.

Kept import-light: `hpcrun run` is on the per-task hot path, so this module imports
only sys/os, and each verb's module is imported only when that verb is used.
Each verb module exposes ``main(verb: str, argv: list[str]) -> int``.
"""
import os
import sys

# verb -> module under hpcrun.cli
VERBS = {
    # runtime
    "run": "run", "check": "check",
    # images
    "pull": "image", "push": "image", "login": "image", "logout": "image",
    "load": "image", "save": "image", "import": "image", "export": "image",
    "convert": "image", "images": "image", "inspect": "image", "history": "image",
    "tag": "image", "rmi": "image", "prune": "image",
    # slurm
    "submit": "job", "render": "job", "jobs": "job", "status": "job", "cancel": "job",
    "logs": "observe", "wait": "observe", "schema": "job",   # instance names, else job
    "srun": "srun", "task": "task",
    "cluster": "cluster",
    # instances
    "instance": "instance", "ps": "instance",
    "exec": "exec",
    "top": "observe", "stats": "observe", "kill": "observe", "pause": "observe",
    "unpause": "observe", "diff": "observe", "cp": "observe", "commit": "observe",
    # workflow tools that only know Singularity/Apptainer
    "singularity": "singularity", "shim": "singularity", "snakemake": "snakemake",
}

# Verbs whose failures use Docker's run conventions (125 for hpcrun's own failure).
CONTAINER_VERBS = {"run", "srun", "task", "exec", "singularity"}

USAGE = """usage: hpcrun [-v|-vv] COMMAND [ARGS...]

Rootless containers for HPC batch jobs.

Containers:  run, check
Images:      pull, push, login, logout, load, save, import, export, convert,
             images, inspect, history, tag, rmi, prune
Slurm:       submit, render, jobs, status, cancel, logs, wait, srun, task, schema,
             cluster up|down|status|env
Instances:   instance start|list|stop, exec, ps, top, stats, logs, kill, pause,
             unpause, wait, diff, cp, commit
Workflows:   snakemake IMAGE [ARGS], singularity (shim for tools), shim DIR

Run 'hpcrun COMMAND --help' for a command's options.
"""


def _fail(what, hint=None, code=2, exc=None):
    sys.stderr.write(f"hpcrun: error: {what}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    if exc is not None and int(os.environ.get("HPCRUN_VERBOSE", "0") or 0) >= 2:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    return code


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = 0
    while argv and argv[0].startswith("-"):
        a = argv.pop(0)
        if a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        if a == "--version":
            from hpcrun import __version__
            sys.stdout.write(f"hpcrun {__version__}\n")
            return 0
        if a in ("-v", "--verbose"):
            verbose += 1
        elif a == "-vv":
            verbose += 2
        else:
            return _fail(f"unknown option {a!r}", "see 'hpcrun --help'")
    if verbose:
        os.environ["HPCRUN_VERBOSE"] = str(verbose)
        from hpcrun import log
        log.set_verbosity(verbose)
    if not argv:
        sys.stderr.write(USAGE)
        return 2
    verb = argv.pop(0)
    mod = VERBS.get(verb)
    container = verb in CONTAINER_VERBS
    if mod is None:
        import difflib
        m = difflib.get_close_matches(verb, VERBS, n=1)
        return _fail(f"unknown command {verb!r}",
                     f"did you mean 'hpcrun {m[0]}'?" if m else "see 'hpcrun --help'",
                     125 if container else 2)
    from importlib import import_module
    from hpcrun.errors import HpcrunError
    try:
        module = import_module("hpcrun.cli." + mod)
        return module.main(verb, argv)
    except HpcrunError as e:
        code = e.code
        if container and code not in (126, 127):
            code = 125
        return _fail(e.what, e.hint, code, e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
