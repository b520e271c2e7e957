"""pyslurm.slurmctld, faked (see __init__.py: test-only, because the real pyslurm builds
only against Slurm 25.11 and this machine has 22.05): just Config.load().version."""
from __future__ import annotations

import re

from ._common import RPCError, log, run


class Config:
    """pyslurm.slurmctld.Config (the `version` property only)."""

    def __init__(self, version=""):
        self._version = version

    @staticmethod
    def load():
        log("slurmctld.Config.load")
        cp = run(["scontrol", "show", "config"], check=True)
        m = re.search(r"^SLURM_VERSION\s*=\s*(\S+)", cp.stdout, re.M)
        if not m:
            raise RPCError(errno=1, msg="no SLURM_VERSION in the controller's configuration")
        return Config(m.group(1))

    @property
    def version(self):
        return self._version
