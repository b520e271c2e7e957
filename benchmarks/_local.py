"""What the cluster benchmarks share: the venv's hpcrun, the unprivileged user, a local
cluster of their own with a work directory, a node cache, and running as the user."""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hpcrun.slurm.cluster import LocalCluster  # noqa: E402

VENV_BIN = os.path.dirname(sys.executable)
HPCRUN = os.path.join(VENV_BIN, "hpcrun")
USER = os.environ.get("HPCRUN_TEST_USER", "hpcuser")


class Bench:
    """A running local cluster, a world-readable work directory, the user's environment."""

    def __init__(self, cluster: LocalCluster, work: str, pw, env: dict):
        self.cluster, self.work, self.pw, self.env = cluster, work, pw, env
        self.cache = env["HPCRUN_NODE_CACHE"]

    def run(self, argv, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run argv as the unprivileged user in the work directory, output captured."""
        return subprocess.run(argv, user=self.pw.pw_uid, group=self.pw.pw_gid,
                              extra_groups=[], env=self.env, cwd=self.work,
                              capture_output=True, text=True, timeout=timeout)

    def plan(self, *opts_and_image) -> list:
        """The words `hpcrun task --plan OPTS IMAGE` prints (program and step plan)."""
        cp = self.run([HPCRUN, "task", "--plan", *opts_and_image])
        if cp.returncode != 0:
            sys.exit(f"hpcrun task --plan failed: {cp.stderr.strip()}")
        return cp.stdout.split()


@contextlib.contextmanager
def local_cluster(script: str, name: str, nodes: int, keep: bool = False, prepare=None,
                  **env):
    """Root check, a work directory, `prepare(work)` (make images there), then a fresh
    local cluster NAME of NODES nodes; yields a Bench and removes it all afterwards
    (the cluster stays with keep=True)."""
    if os.geteuid() != 0:
        sys.exit(f"benchmarks/{script}: run as root (it starts a local cluster)")
    pw = pwd.getpwnam(USER)
    work = tempfile.mkdtemp(prefix=f"hpcrun-bench-{name}-", dir="/tmp")
    os.chmod(work, 0o755)
    cluster = LocalCluster(name)
    try:
        if prepare:
            prepare(work)
        cache = os.path.join(work, "nodecache")
        os.makedirs(cache)
        os.chown(cache, pw.pw_uid, pw.pw_gid)
        t0 = time.perf_counter()
        cluster.up(nodes, replace=True)
        print(f"cluster: {nodes} nodes idle in {time.perf_counter() - t0:.2f} s")
        e = {"HOME": pw.pw_dir, "USER": USER, "LOGNAME": USER, "LANG": "C.UTF-8",
             "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
             "HPCRUN_NODE_CACHE": cache, **cluster.env(), **env}
        yield Bench(cluster, work, pw, e)
    finally:
        if not keep:
            cluster.down()
        shutil.rmtree(work, ignore_errors=True)
