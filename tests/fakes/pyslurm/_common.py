"""Shared bits of the fake pyslurm (see __init__.py: a test-only stand-in, because the
real pyslurm builds only against Slurm 25.11 and this machine has 22.05)."""
from __future__ import annotations

import os
import subprocess

NO_VAL = 0xFFFFFFFE          # slurm.NO_VAL
INFINITE = 0xFFFFFFFF        # slurm.INFINITE
UNLIMITED = "UNLIMITED"      # pyslurm.constants.UNLIMITED


class PyslurmError(Exception):
    """pyslurm.PyslurmError."""


class RPCError(PyslurmError):
    """pyslurm.RPCError: a failed Slurm RPC, with Slurm's errno and message."""

    def __init__(self, errno=-1, msg=None):
        self.errno = errno
        self.msg = msg or "Unspecified error"
        super().__init__(self.msg)


def log(what: str) -> None:
    """Append one line per API call to $HPCRUN_FAKE_PYSLURM_LOG (tests read it)."""
    path = os.environ.get("HPCRUN_FAKE_PYSLURM_LOG")
    if path:
        with open(path, "a") as f:
            f.write(what + "\n")


def run(argv, input=None, check=False):
    """A Slurm command; a failure becomes RPCError, as a failed RPC does in pyslurm."""
    try:
        cp = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RPCError(errno=1007, msg=f"Unable to contact slurm controller ({e})") from None
    if check and cp.returncode != 0:
        lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
        raise RPCError(errno=1, msg=lines[-1] if lines else "Unspecified error")
    return cp
