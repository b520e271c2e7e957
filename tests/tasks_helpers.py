"""Helpers for the per-task container tests (test_task*, test_srun*, test_jobscripts).

Images for cluster tests must be readable by the test user on every node: they are
made under util.shared_tmpdir(). Jobs are submitted as the test user; the queue is
read as root (any user may read it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time

import pytest

import util


def make_squashfs(rootfs: str, dest: str) -> str:
    """Pack a root filesystem directory into a squashfs file readable by everyone."""
    util.require(bool(subprocess.run(["which", "mksquashfs"], capture_output=True).stdout),
                 "mksquashfs is not installed (squashfs-tools)")
    subprocess.run(["mksquashfs", rootfs, dest, "-all-root", "-noappend", "-quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    os.chmod(dest, 0o644)
    return dest


def root_env(cluster) -> dict:
    e = dict(os.environ)
    e.update(cluster.env)
    return e


def sbatch(user, cluster, argv, *, cwd: str, env: dict | None = None) -> str:
    """Submit as the user; return the job id."""
    e = dict(cluster.env)
    e.update(env or {})
    cp = util.as_user(user, ["sbatch", "--parsable", *argv], env=e, cwd=cwd)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip().split(";")[0]


def sbatch_script(user, cluster, script: str, argv, *, cwd: str,
                  env: dict | None = None) -> str:
    """Write `script` to CWD/job.sh and submit it as the user with sbatch ARGV."""
    path = os.path.join(cwd, "job.sh")
    with open(path, "w") as f:
        f.write(script)
    return sbatch(user, cluster, [*argv, path], cwd=cwd, env=env)


def job_info(cluster, jobid: str) -> dict:
    """`scontrol show job -o ID` as a dict (JobState, ExitCode, NodeList, ...)."""
    cp = subprocess.run(["scontrol", "show", "job", "-o", str(jobid)], capture_output=True,
                        text=True, env=root_env(cluster))
    info = {}
    for line in cp.stdout.splitlines():
        for word in line.split():
            k, sep, v = word.partition("=")
            if sep and k not in info:
                info[k] = v
    return info


def wait_job(cluster, jobid: str, timeout: float = 180) -> dict:
    """Poll until the job (every array element too) has left the queue; return its info."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cp = subprocess.run(["squeue", "-h", "-j", str(jobid), "-o", "%T"], capture_output=True,
                            text=True, env=root_env(cluster))
        if cp.returncode == 0 and not cp.stdout.strip():
            return job_info(cluster, jobid)
        time.sleep(0.25)
    raise AssertionError(f"job {jobid} still queued after {timeout}s: {job_info(cluster, jobid)}")


def wait_for(pred, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def user_pids_with(user, token: str) -> list:
    """Live (non-zombie) processes of the user whose command line contains token."""
    out = []
    for pid, _ in util.live_processes():
        try:
            st = os.stat(f"/proc/{pid}")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if st.st_uid == user.uid and token in cmd:
            out.append((pid, cmd))
    return out


def prepare_log(cache: str) -> list:
    """Every prepare.log line under a node cache directory, all nodes together."""
    lines = []
    if not os.path.isdir(cache):
        return lines
    for node in sorted(os.listdir(cache)):
        p = os.path.join(cache, node, "prepare.log")
        if os.path.exists(p):
            with open(p) as f:
                lines += f.read().splitlines()
    return lines


def field(line: str, key: str) -> str:
    for w in line.split():
        if w.startswith(key + "="):
            return w[len(key) + 1:]
    return ""


# Fixtures shared by the task/srun/jobscript tests (imported by those modules).

BIG = "/opt/big.bin"   # a file inside the test image, so that unpacking takes a while


def ns_barrier(n):
    """Shell: record node and user namespace in /out, then wait until all n tasks have:
    namespaces all alive at once, so their inode numbers cannot be reused."""
    return ('echo "$SLURMD_NODENAME $(readlink /proc/self/ns/user)" > /out/ns.$SLURM_PROCID; '
            f'while [ "$(ls /out | grep -c ^ns)" -lt {n} ]; do sleep 0.1; done')


def ns_rows(out):
    rows = []
    for name in sorted(os.listdir(out)):
        if name.startswith("ns."):
            with open(os.path.join(out, name)) as f:
                rows.append(f.read().split())
    return rows


@pytest.fixture(scope="session")
def task_image():
    """A busybox image as a directory and as a squashfs file, readable by the test user.

    Holds a 16 MiB file (BIG) whose sha256 is in .big_sha256: tasks that compare it
    show that none of them saw a half-unpacked image.
    """
    d = util.shared_tmpdir("hpcrun-taskimg-")
    root = os.path.join(d, "rootfs")
    util.make_busybox_rootfs(root)
    data = os.urandom(16 << 20)
    os.makedirs(os.path.join(root, "opt"), exist_ok=True)
    with open(root + BIG, "wb") as f:
        f.write(data)
    sq = make_squashfs(root, os.path.join(d, "busybox.sqfs"))
    subprocess.run(["chmod", "-R", "a+rX", d], check=True)

    class Img:
        dir = root
        sqfs = sq
        big_sha256 = hashlib.sha256(data).hexdigest()
    yield Img
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def node_cache(user_tmp) -> str:
    """A fresh node cache for one test (HPCRUN_NODE_CACHE), owned by the test user."""
    return os.path.join(user_tmp, "nodecache")


MPI_HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rank, size, sum = 0, one = 1;
    char host[256];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    gethostname(host, sizeof host);
    MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("rank %d of %d on %s allreduce %d\n", rank, size, host, sum);
    MPI_Finalize();
    return 0;
}
"""


def make_mpi_rootfs(root: str) -> str:
    """A busybox image with /opt/mpi/hello and the host's Open MPI + PMIx inside
    (hpcrun.testing.make_mpi_rootfs)."""
    from hpcrun.testing import make_mpi_rootfs as make
    util.require(shutil.which("mpicc") is not None, "mpicc is not installed (libopenmpi-dev)")
    return make(root, {"hello": MPI_HELLO_C})


@pytest.fixture(scope="session")
def store_image(user, task_image):
    """An image in a store of the user's, kept as a squashfs file, with an ENV in its
    config (GREETING=hello-from-config): hpcrun task must unpack it once per node and
    still apply its config."""
    d = util.shared_tmpdir("hpcrun-taskstore-", owner=user)
    tar = os.path.join(d, "rootfs.tar")
    subprocess.run(["tar", "-C", task_image.dir, "--exclude", "./opt", "-cf", tar, "."],
                   check=True)
    os.chmod(tar, 0o644)
    store = os.path.join(d, "store")
    cp = util.hpcrun(user, "import", "--format", "squashfs", "-c", "ENV GREETING=hello-from-config",
                     tar, "tasktest:1", env={"HPCRUN_STORE": store})
    assert cp.returncode == 0, cp.stderr

    class Stored:
        name = "tasktest:1"
        env = {"HPCRUN_STORE": store}
    yield Stored
    subprocess.run(["chmod", "-R", "u+rwX", d])
    shutil.rmtree(d, ignore_errors=True)
