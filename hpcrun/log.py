"""Logging to stderr. stdout carries results only.

Verbosity: 0 = warnings and errors, 1 (-v) = info, 2 (-vv) = debug and tracebacks.
Set from the CLI or from HPCRUN_VERBOSE.
"""
from __future__ import annotations

import os
import sys

_level = int(os.environ.get("HPCRUN_VERBOSE", "0") or 0)


def set_verbosity(n: int) -> None:
    global _level
    _level = n


def verbosity() -> int:
    return _level


def _emit(prefix: str, msg: str) -> None:
    sys.stderr.write(f"hpcrun: {prefix}{msg}\n")
    sys.stderr.flush()


def debug(msg: str) -> None:
    if _level >= 2:
        _emit("debug: ", msg)


def info(msg: str) -> None:
    if _level >= 1:
        _emit("", msg)


def warning(msg: str) -> None:
    _emit("warning: ", msg)


def progress(msg: str) -> None:
    """A progress line for humans; quiet unless stderr is a terminal or -v."""
    if _level >= 1 or sys.stderr.isatty():
        _emit("", msg)
