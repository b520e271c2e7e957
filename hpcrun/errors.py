"""Exception classes and exit codes.

Exit codes follow Docker's conventions (see also cext/core.h, which mirrors them).
For `run` (and other verbs that run a container command): the command's own status;
125 hpcrun itself failed (including a bad option), 126 the command cannot be
executed, 127 the command was not found; a command killed by signal N is 128+N.
For every other verb: 0 success, 1 failure, 2 bad usage.
"""
from __future__ import annotations

EXIT_FAILED = 125       # hpcrun itself failed
EXIT_CANNOT_EXEC = 126  # command found but not executable
EXIT_NOT_FOUND = 127    # command not found
EXIT_ERROR = 1          # failure of any verb that does not run a container command
EXIT_USAGE = 2          # bad usage for verbs that do not run a container command


class HpcrunError(Exception):
    """An error meant for the user: one line `what`, plus an optional `hint`.

    The CLI prints ``hpcrun: error: <what>`` and ``hint: <hint>`` and exits with ``code``.
    """

    code = EXIT_ERROR

    def __init__(self, what: str, hint: str | None = None, code: int | None = None):
        super().__init__(what)
        self.what = what
        self.hint = hint
        if code is not None:
            self.code = code


class UsageError(HpcrunError):
    """A wrong flag or argument."""

    code = EXIT_USAGE


class NotFound(HpcrunError):
    """A path, image, job or other named thing does not exist."""


class CommandError(HpcrunError):
    """A subprocess failed; carries its argv, status and stderr."""

    def __init__(self, argv, returncode: int, stderr: str = "", hint: str | None = None):
        prog = argv[0] if argv else "?"
        last = (stderr or "").strip().splitlines()
        detail = last[-1] if last else f"exit status {returncode}"
        super().__init__(f"{prog} failed: {detail}", hint)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class ImageError(HpcrunError):
    """A malformed, unsafe or missing image."""


class RegistryError(HpcrunError):
    """A registry answered with an error or could not be reached."""


class StoreError(HpcrunError):
    """The image store is inconsistent, locked or unwritable."""


class SlurmError(HpcrunError):
    """Slurm refused or failed a request."""


class JobFileError(HpcrunError):
    """A job file is malformed; `what` names the file, line and field path."""


class ContainerError(HpcrunError):
    """The C core failed while entering the container (step and path named)."""
