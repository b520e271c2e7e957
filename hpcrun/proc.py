"""The one subprocess helper: every external command goes through run()."""
from __future__ import annotations

import os
import subprocess
from typing import Mapping, Sequence

from . import log
from .errors import CommandError, NotFound


def run(argv: Sequence[str], *, check: bool = True, capture: bool = True,
        input: str | bytes | None = None, env: Mapping[str, str] | None = None,
        cwd: str | None = None, timeout: float | None = None, hint: str | None = None,
        text: bool = True) -> subprocess.CompletedProcess:
    """Run argv, log it at debug level, raise CommandError (with stderr) on failure."""
    argv = [os.fspath(a) for a in argv]
    log.debug("exec: " + " ".join(argv))
    try:
        cp = subprocess.run(
            argv,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            text=text,
        )
    except FileNotFoundError as e:
        raise NotFound(f"{argv[0]}: command not found",
                       hint or f"install {argv[0]} or put it on PATH") from e
    if check and cp.returncode != 0:
        raise CommandError(argv, cp.returncode, cp.stderr if capture else "", hint)
    return cp


def which(name: str) -> str | None:
    from shutil import which as _which  # lazy: keeps hpcrun run's start-up small
    return _which(name)
