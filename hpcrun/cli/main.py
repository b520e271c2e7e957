"""`hpcrun` entry point: global flags, then dispatch to the verb's module.

Kept import-light: `hpcrun run` is on the per-task hot path, so this module imports
only sys/os, and each verb's module is imported only when that verb is used. The hot
verbs (FAST) keep hand-written parsers and never import click; every other verb is a
click command, reached through hpcrun.cli.app (which imports click).
"""
import os
import sys

# The registry: one line per verb, verb -> (module under hpcrun.cli, section of
# `hpcrun --help`). To add a command group (instances, build, exec, ...): write
# hpcrun/cli/NAME.py with click commands and a module-level
# ``COMMANDS = {"verb": click_command, ...}``, then add one line per verb here:
#     "exec": ("instance", "Containers"),
# `hpcrun --help`, `hpcrun VERB --help` and shell completion pick it up from this table.
# Sections are listed in the order they first appear here.
VERBS = {
    "run": ("run", "Containers"),
    "check": ("check", "Containers"),
    "pull": ("image", "Images"),
    "push": ("image", "Images"),
    "login": ("image", "Images"),
    "logout": ("image", "Images"),
    "load": ("image", "Images"),
    "save": ("image", "Images"),
    "import": ("image", "Images"),
    "export": ("image", "Images"),
    "convert": ("image", "Images"),
    "images": ("image", "Images"),
    "inspect": ("image", "Images"),
    "history": ("image", "Images"),
    "tag": ("image", "Images"),
    "rmi": ("image", "Images"),
    "prune": ("image", "Images"),
    "build": ("build", "Images"),
    "submit": ("job", "Slurm"),
    "render": ("job", "Slurm"),
    "jobs": ("job", "Slurm"),
    "status": ("job", "Slurm"),
    "cancel": ("job", "Slurm"),
    "logs": ("job", "Slurm"),
    "wait": ("job", "Slurm"),
    "schema": ("job", "Slurm"),
    "srun": ("srun", "Slurm"),
    "task": ("task", "Slurm"),
    "cluster": ("cluster", "Slurm"),
}

# The hot paths: hand-written parsers, each module exposes
# ``main(verb: str, argv: list[str]) -> int`` and prints its own --help. No click here.
FAST = {"run", "task", "srun"}

# Verbs whose failures use Docker's run conventions (125 for hpcrun's own failure).
CONTAINER_VERBS = {"run", "srun", "task"}

# click's completion protocol: the shell calls `hpcrun` with this variable set.
COMPLETE_VAR = "_HPCRUN_COMPLETE"


def _fail(what, hint=None, code=2, exc=None):
    sys.stderr.write(f"hpcrun: error: {what}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    if exc is not None and int(os.environ.get("HPCRUN_VERBOSE", "0") or 0) >= 2:
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    return code


def main(argv=None):
    if COMPLETE_VAR in os.environ:
        from hpcrun.cli import app
        return app.complete()
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = 0
    while argv and argv[0].startswith("-"):
        a = argv.pop(0)
        if a in ("-h", "--help"):
            from hpcrun.cli import app
            return app.root_help(sys.stdout, 0)
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
        from hpcrun.cli import app
        return app.root_help(sys.stderr, 2)
    verb = argv.pop(0)
    entry = VERBS.get(verb)
    container = verb in CONTAINER_VERBS
    if entry is None:
        import difflib
        m = difflib.get_close_matches(verb, VERBS, n=1)
        return _fail(f"unknown command {verb!r}",
                     f"did you mean 'hpcrun {m[0]}'?" if m else "see 'hpcrun --help'",
                     125 if container else 2)
    from hpcrun.errors import HpcrunError
    try:
        if verb in FAST:
            # (__import__, not importlib.import_module: importing importlib costs the
            # hot path ~0.3 ms, its warnings module included)
            name = "hpcrun.cli." + entry[0]
            __import__(name)
            return sys.modules[name].main(verb, argv)
        from hpcrun.cli import app
        return app.main(verb, argv)
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
