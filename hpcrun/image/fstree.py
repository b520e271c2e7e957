"""File trees the store keeps: remove them (read-only ones too) and measure them.

A leaf module (standard library only) so that the store and the format builders can
both use it without importing each other.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys


def rmtree(path: str) -> None:
    """shutil.rmtree that also removes read-only directories the caller owns."""

    def onerror(func, p, exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except FileNotFoundError:
            pass
        except OSError:
            if func is os.rmdir:
                shutil.rmtree(p, ignore_errors=True)
    if os.path.isdir(path) and not os.path.islink(path):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=onerror)
        else:
            shutil.rmtree(path, onerror=onerror)
    elif os.path.lexists(path):
        os.unlink(path)


def du(path: str) -> int:
    """Bytes of disk a file or tree takes (what prune reports as reclaimed)."""
    total = 0
    for dp, dn, fn in os.walk(path):
        for f in fn:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dp, f)).st_blocks * 512
    if os.path.isfile(path):
        total += os.lstat(path).st_size
    return total
