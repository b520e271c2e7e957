"""`hpcrun run [OPTIONS] IMAGE [--] CMD [ARG...]`: the per-task hot path.

The option parser is generated from the option table (hpcrun/runtime/options.py;
argparse or click alone cost milliseconds); only os/sys, the runtime planning modules
and the C core are imported on the way to exec. Every failure raises an HpcrunError:
the dispatcher prints it and exits 125 (126/127 kept), so a job script can tell
hpcrun's failures from the command's.
"""
from __future__ import annotations

import sys

from hpcrun.runtime import options, pipeline

ABOUT = "Run CMD in IMAGE (a root directory, a squashfs file or an image name), rootless."
EXIT = """Exit status: the command's; 125 hpcrun failed, 126 cannot execute, 127 not found,
128+N killed by signal N."""


def usage() -> str:
    return options.help_text(options.RUN, "hpcrun run [OPTIONS] IMAGE [--] CMD [ARG...]",
                             ABOUT, EXIT)


def parse(argv: list, entry: str = options.RUN):
    """argv after 'run' (or 'task') -> RunOptions; options stop at IMAGE (the runtime's
    run_options), and -h/--help prints this command's help."""
    try:
        return pipeline.run_options(argv, entry)
    except pipeline.HelpAsked:
        sys.stdout.write(usage())
        raise SystemExit(0) from None


def main(verb: str, argv: list) -> int:
    opts = parse(argv)
    i = options.image_index(argv, options.RUN)
    return pipeline.run(opts, words=argv[:i + 1] if i >= 0 else None)
