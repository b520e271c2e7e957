"""Where the layered configuration lives (hpcrun/config.py reads them).

Its own module, with no imports beyond os, because the `hpcrun run` hot path needs the
list (the plan cache checks these files) without the configuration machinery.
"""
from __future__ import annotations

import os


def sysdir() -> str:
    return os.environ.get("HPCRUN_SYSCONFDIR", "/etc/hpcrun")


def files() -> list:
    """The configuration files, lowest precedence first (those that may not exist too)."""
    d = sysdir()
    out = [os.path.join(d, "hpcrun.conf")]
    confd = os.path.join(d, "conf.d")
    if os.path.isdir(confd):
        out += sorted(os.path.join(confd, f) for f in os.listdir(confd) if f.endswith(".conf"))
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    out.append(os.path.join(xdg, "hpcrun", "hpcrun.conf"))
    return out
