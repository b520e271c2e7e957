"""`mpirun`/`mpiexec.hydra` + `hpcrun run IMAGE`: the ranks of a node share one
container by default (cext/task.c's join), never hang, and leave nothing behind.

Real launchers (Debian's Open MPI 4.1 and MPICH 4.0), run as the unprivileged user on
this machine; each rank prints the inode of its user namespace (/proc/self/ns/user)
after 1 MiB ping-pongs and an allreduce. Every launch has a timeout.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

import util

pytestmark = [pytest.mark.userns, pytest.mark.root, pytest.mark.mpi]

NS_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
int main(int argc, char **argv) {
    int rank, size, n = argc > 1 ? atoi(argv[1]) : (1 << 20);
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    struct stat st;
    stat("/proc/self/ns/user", &st);
    char *buf = calloc(1, n);
    for (int it = 0; it < 20; it++) {              /* 1 MiB each way, 20 times */
        int peer = rank ^ 1;
        if (peer >= size)
            continue;
        if (rank & 1) {
            MPI_Recv(buf, n, MPI_CHAR, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(buf, n, MPI_CHAR, peer, 0, MPI_COMM_WORLD);
        } else {
            MPI_Send(buf, n, MPI_CHAR, peer, 0, MPI_COMM_WORLD);
            MPI_Recv(buf, n, MPI_CHAR, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        }
    }
    MPI_Allreduce(MPI_IN_PLACE, buf, n / 8, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    printf("RANK %d of %d userns=%lu\n", rank, size, (unsigned long)st.st_ino);
    MPI_Finalize();
    return 0;
}
"""
TIMEOUT = 120
LAUNCH = {
    "openmpi": ["mpirun", "--oversubscribe", "--mca", "btl", "self,vader", "-n"],
    "mpich": ["mpiexec.hydra", "-n"],
}


def _require(mpi):
    tool = {"openmpi": "mpicc.openmpi", "mpich": "mpicc.mpich"}[mpi]
    util.require(bool(shutil.which(tool)) and bool(shutil.which(LAUNCH[mpi][0])),
                 f"{tool} / {LAUNCH[mpi][0]} not installed (openmpi-bin, mpich)")


@pytest.fixture(scope="module")
def images():
    """name -> a directory image holding the ns program, built with that MPI."""
    from hpcrun.testing import make_mpi_rootfs
    d = util.shared_tmpdir("hpcrun-mpi-")
    out = {}
    for mpi in ("openmpi", "mpich"):
        if shutil.which({"openmpi": "mpicc.openmpi", "mpich": "mpicc.mpich"}[mpi]):
            out[mpi] = make_mpi_rootfs(os.path.join(d, mpi), {"ns": NS_C}, mpi=mpi)
    yield out
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cache(user):
    """A node cache of the user's own, for this test."""
    d = util.shared_tmpdir("hpcrun-mpicache-", owner=user)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def launch(user, mpi, n, *argv, env=None, timeout=TIMEOUT):
    return util.as_user(user, [*LAUNCH[mpi], str(n), *argv], env=env, timeout=timeout)


def namespaces(out: str) -> dict:
    """rank -> user namespace inode, from the ns program's lines."""
    ns = {}
    for line in out.splitlines():
        if line.startswith("RANK "):
            w = line.split()
            ns[int(w[1])] = w[4].partition("=")[2]
    return ns


def container_processes(user, cache) -> list:
    """The user's live processes in a user namespace other than the host's that this
    test started (their environment names its node cache; other sessions' containers
    of the same user are not ours)."""
    host = os.stat("/proc/self/ns/user").st_ino
    mark = f"HPCRUN_NODE_CACHE={cache}".encode()
    found = []
    for pid, comm in util.live_processes():
        try:
            if os.stat(f"/proc/{pid}").st_uid != user.uid:
                continue
            if os.stat(f"/proc/{pid}/ns/user").st_ino == host:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark in f.read().split(b"\0"):
                    found.append((pid, comm))
        except OSError:
            continue
    return found


def wait_for(cond, secs, what):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("mpi", ["openmpi", "mpich"])
@pytest.mark.parametrize("n", [2, 4])
def test_default_ranks_share_one_user_namespace(user, images, cache, mpi, n):
    _require(mpi)
    cp = launch(user, mpi, n, util.HPCRUN, "run", images[mpi], "--", "/opt/mpi/ns",
                env={"HPCRUN_NODE_CACHE": cache})
    assert cp.returncode == 0, cp.stderr
    ns = namespaces(cp.stdout)
    assert sorted(ns) == list(range(n)), cp.stdout
    assert len(set(ns.values())) == 1, ns              # one container for the node
    assert str(os.stat("/proc/self/ns/user").st_ino) not in ns.values()   # a container
    assert "PMIX ERROR" not in cp.stderr and "cma-different-user-namespace" not in cp.stderr
    wait_for(lambda: not container_processes(user, cache), 30, "the keeper to leave")


@pytest.mark.parametrize("mpi", ["openmpi", "mpich"])
def test_no_join_completes_and_says_why(user, images, cache, mpi):
    _require(mpi)
    cp = launch(user, mpi, 2, util.HPCRUN, "-v", "run", "--no-join", images[mpi], "--",
                "/opt/mpi/ns", env={"HPCRUN_NODE_CACHE": cache})
    assert cp.returncode == 0, cp.stderr
    ns = namespaces(cp.stdout)
    assert len(ns) == 2 and len(set(ns.values())) == 2, ns     # a container per rank
    assert "OMPI_MCA_btl_vader_single_copy_mechanism=none" in cp.stderr
    assert "PMIX ERROR" not in cp.stderr


def test_user_setting_of_single_copy_is_kept(user, images, cache):
    _require("openmpi")
    cp = launch(user, "openmpi", 2, "-x", "OMPI_MCA_btl_vader_single_copy_mechanism=cma",
                util.HPCRUN, "-v", "run", "--no-join", images["openmpi"], "--",
                "/bin/sh", "-c", "echo SC=$OMPI_MCA_btl_vader_single_copy_mechanism",
                env={"HPCRUN_NODE_CACHE": cache})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["SC=cma", "SC=cma"]


NS_SH = "stat -L -c %i /proc/self/ns/user"


def test_late_rank_joins_after_first_rank_ended(user, images, cache):
    # Rank 0 runs a command that ends at once; rank 1 starts 2 s later: the keeper
    # (held until mpirun ends, not until rank 0 does) still holds the container.
    _require("openmpi")
    wrap = (f"[ $OMPI_COMM_WORLD_RANK = 1 ] && sleep 2; exec {util.HPCRUN} run "
            f"{images['openmpi']} -- /bin/sh -c '{NS_SH}'")
    cp = launch(user, "openmpi", 2, "/bin/sh", "-c", wrap, env={"HPCRUN_NODE_CACHE": cache})
    assert cp.returncode == 0, cp.stderr
    inodes = cp.stdout.split()
    assert len(inodes) == 2 and inodes[0] == inodes[1], cp.stdout


def _fnv(s: str) -> str:
    h = 1469598103934665603
    for b in s.encode():
        h = ((h ^ b) * 1099511628211) & (2 ** 64 - 1)
    return f"{h:016x}"


def test_stale_state_of_a_crash_is_survived(user, images, cache):
    # A crashed launch left its plan (naming a dead keeper) and its lock: a new launch
    # with the same key makes a new container, without waiting.
    _require("openmpi")
    node = os.path.join(cache, os.uname().nodename)
    os.makedirs(node, mode=0o700)
    base = os.path.join(node, "join-" + _fnv("crashkey"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(base + ".plan", "w") as f:
        f.write(f"# hpcrun node-container plan 1 {dead.pid} 12345 c0000000000000000\n")
    open(base + ".lock", "w").close()
    for p in (node, base + ".plan", base + ".lock"):
        os.chown(p, user.uid, user.gid)
    t0 = time.monotonic()
    cp = launch(user, "openmpi", 2, util.HPCRUN, "run", "--join=crashkey", images["openmpi"],
                "--", "/opt/mpi/ns", env={"HPCRUN_NODE_CACHE": cache})
    assert cp.returncode == 0, cp.stderr
    assert len(set(namespaces(cp.stdout).values())) == 1
    assert time.monotonic() - t0 < 30         # no semaphore-style wait for the dead one


def test_join_key_of_another_user_is_refused(user, images):
    # root's node directory under a shared node cache: hpcrun does not join there.
    _require("openmpi")
    d = util.shared_tmpdir("hpcrun-mpishared-")
    try:
        os.makedirs(os.path.join(d, os.uname().nodename), mode=0o700)
        cp = util.hpcrun(user, "run", "--join=shared", images["openmpi"], "--", "true",
                         env={"HPCRUN_NODE_CACHE": d}, timeout=60)
        assert cp.returncode == 125
        lines = cp.stderr.strip().splitlines()
        assert lines[0].startswith("hpcrun: error: join key shared: ") and \
            "belongs to uid 0, another user" in lines[0], cp.stderr
        assert lines[1].startswith("hint: ")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_stuck_lock_holder_is_a_bounded_error(user, images, cache):
    # Another rank holds the node's lock and never finishes: the wait has a bound.
    _require("openmpi")
    node = os.path.join(cache, os.uname().nodename)
    os.makedirs(node, mode=0o700)
    os.chown(node, user.uid, user.gid)
    lock = os.path.join(node, "join-" + _fnv("stuck") + ".lock")
    holder = subprocess.Popen(["flock", lock, "sleep", "60"], user=user.uid, group=user.gid,
                              extra_groups=[])
    try:
        wait_for(lambda: os.path.exists(lock), 10, "the lock")
        time.sleep(0.3)
        cp = util.hpcrun(user, "run", "--join=stuck", images["openmpi"], "--", "true",
                         env={"HPCRUN_NODE_CACHE": cache, "HPCRUN_JOIN_TIMEOUT": "2"},
                         timeout=60)
        assert cp.returncode == 125
        assert cp.stderr.startswith("hpcrun: error: timed out after 2 s waiting for the "
                                    "node's container"), cp.stderr
    finally:
        holder.kill()
        holder.wait()


def test_killed_rank_ends_the_job_and_leaves_nothing(user, images, cache):
    _require("openmpi")
    script = ("if [ $OMPI_COMM_WORLD_RANK = 1 ]; then sleep 1; kill -9 $$; fi; "
              "exec /opt/mpi/ns $((1<<20)) & sleep 60")
    t0 = time.monotonic()
    cp = launch(user, "openmpi", 2, util.HPCRUN, "run", images["openmpi"], "--", "/bin/sh",
                "-c", script, env={"HPCRUN_NODE_CACHE": cache}, timeout=90)
    assert cp.returncode != 0
    assert time.monotonic() - t0 < 60          # mpirun ended the job, no 60 s sleep
    wait_for(lambda: not container_processes(user, cache), 30, "no container process left")
    node = os.path.join(cache, os.uname().nodename)
    assert not [n for n in os.listdir(node) if n.endswith(".plan")]


def test_image_without_mpi_is_a_clear_error(user, busybox_rootfs, cache):
    _require("openmpi")
    cp = launch(user, "openmpi", 2, util.HPCRUN, "run", busybox_rootfs, "--", "/opt/mpi/ns",
                env={"HPCRUN_NODE_CACHE": cache}, timeout=60)
    assert cp.returncode != 0
    assert "hpcrun: error: " in cp.stderr and "/opt/mpi/ns" in cp.stderr


def test_squashfs_image_ranks_share_one_mount(user, images, cache, rt_fuse_open):
    # A squashfs image mounted with squashfuse (a node that lets users use FUSE, which
    # rt_fuse_open emulates): the ranks join the keeper's container and its one mount;
    # nothing is left after.
    _require("openmpi")
    util.require(bool(shutil.which("mksquashfs")), "mksquashfs is not installed")
    sq = os.path.join(os.path.dirname(images["openmpi"]), "ompi.sqfs")
    if not os.path.exists(sq):
        subprocess.run(["mksquashfs", images["openmpi"], sq, "-all-root", "-noappend",
                        "-quiet"], check=True, stdout=subprocess.DEVNULL)
        os.chmod(sq, 0o644)
    cp = launch(user, "openmpi", 3, util.HPCRUN, "run", sq, "--", "/opt/mpi/ns",
                env={"HPCRUN_NODE_CACHE": cache})
    assert cp.returncode == 0, cp.stderr
    ns = namespaces(cp.stdout)
    assert len(ns) == 3 and len(set(ns.values())) == 1, ns
    wait_for(lambda: not container_processes(user, cache), 30, "the keeper to leave")
