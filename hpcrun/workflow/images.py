"""An image for the sample workflow: busybox plus host programs a workflow needs inside
(bash for Snakemake's shell commands, work_queue_worker for a container per worker),
each with its shared libraries, at the same paths as on the host."""
from __future__ import annotations

import os
import shutil
import subprocess

from hpcrun.testing import _ldd, make_busybox_rootfs

PROGRAMS = ("/usr/bin/bash", "/usr/bin/work_queue_worker")


def make_workflow_rootfs(root: str, programs=PROGRAMS) -> str:
    make_busybox_rootfs(root)
    have = [p for p in programs if os.path.exists(p)]
    for p in have + sorted(_ldd(have)):
        for q in {p, os.path.realpath(p)}:
            dest = root + q
            if os.path.lexists(dest) and not os.path.islink(dest):
                continue
            if os.path.islink(dest):
                os.unlink(dest)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.realpath(p), dest)
    if os.path.exists(root + "/usr/bin/bash") and not os.path.lexists(root + "/bin/bash"):
        os.symlink("/usr/bin/bash", root + "/bin/bash")
    subprocess.run(["chmod", "-R", "a+rX", root], check=True)
    return root
