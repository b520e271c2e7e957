"""mpi4py programs in images, started by the host's srun across nodes of the local
cluster (PMIx for Open MPI, PMI-2 for MPICH), as the unprivileged user.

`srun --mpi=X hpcrun run IMAGE -- python3 allreduce.py`: every rank's container is
joined to its node's (the default), each rank prints its node and user namespace, and
an allreduce of 1 MiB of doubles across all ranks must give the rank count everywhere.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import util

pytestmark = [pytest.mark.userns, pytest.mark.root, pytest.mark.slurm, pytest.mark.mpi]

ALLREDUCE_PY = r"""
import array, os
from mpi4py import MPI
comm = MPI.COMM_WORLD
n = 1 << 17                                   # 1 MiB of doubles
buf = array.array("d", [1.0]) * n
out = array.array("d", [0.0]) * n
comm.Allreduce([buf, MPI.DOUBLE], [out, MPI.DOUBLE], op=MPI.SUM)
total = comm.allreduce(comm.Get_rank(), op=MPI.SUM)
ok = out[0] == out[-1] == comm.Get_size() and total == sum(range(comm.Get_size()))
print("RANK", comm.Get_rank(), comm.Get_size(), os.environ.get("SLURMD_NODENAME"),
      os.stat("/proc/self/ns/user").st_ino, "ok" if ok else "WRONG", flush=True)
"""
TIMEOUT = 240


def _mpi4py_for_mpich() -> str:
    """An mpi4py package built with mpicc.mpich (pip's sdist), or "" where it can't be."""
    d = "/var/tmp/hpcrun-test-mpi4py-mpich"
    pkg = os.path.join(d, "root/usr/lib/python3/dist-packages/mpi4py")
    if os.path.isdir(pkg):
        return pkg
    for cand in ("root/usr/lib/python3.11/site-packages/mpi4py",
                 "root/usr/local/lib/python3.11/dist-packages/mpi4py"):
        if os.path.isdir(os.path.join(d, cand)):
            return os.path.join(d, cand)
    if not shutil.which("mpicc.mpich"):
        return ""
    os.makedirs(d, exist_ok=True)
    cp = subprocess.run(
        "pip download -q mpi4py==3.1.4 --no-binary :all: --no-deps -d . && "
        "tar xzf mpi4py-3.1.4.tar.gz && cd mpi4py-3.1.4 && "
        "python3 setup.py -q build --mpicc=mpicc.mpich && "
        "python3 setup.py -q install --root ../root --prefix /usr",
        shell=True, cwd=d, capture_output=True, text=True, timeout=1200)
    if cp.returncode:
        return ""
    return _mpi4py_for_mpich()


@pytest.fixture(scope="module")
def py_images():
    """mpi -> a directory image with python3, mpi4py for that MPI and allreduce.py."""
    from hpcrun.testing import make_mpi_rootfs
    d = util.shared_tmpdir("hpcrun-mpi4py-")
    out = {}
    util.require(os.path.isdir("/usr/lib/python3/dist-packages/mpi4py"),
                 "python3-mpi4py is not installed")
    out["openmpi"] = make_mpi_rootfs(os.path.join(d, "openmpi"), {}, python=True)
    m4p = _mpi4py_for_mpich()
    if m4p:
        out["mpich"] = make_mpi_rootfs(os.path.join(d, "mpich"), {}, mpi="mpich",
                                       python=True, mpi4py=m4p)
    for root in out.values():
        with open(os.path.join(root, "opt/mpi/allreduce.py"), "w") as f:
            f.write(ALLREDUCE_PY)
        os.chmod(os.path.join(root, "opt/mpi/allreduce.py"), 0o644)
    yield out
    shutil.rmtree(d, ignore_errors=True)


def _ranks(out: str) -> list:
    return [line.split()[1:] for line in out.splitlines() if line.startswith("RANK ")]


# MPICH under srun --mpi=pmi2 across the local cluster's nodes sometimes never ends
# after every rank has printed its result (MPICH's UCX over TCP between the nodes'
# containers, all on one machine); seen in 2 of 4 full CI runs, never alone. Until it
# is understood it runs with the scale tests (-m slow), not in CI's default selection.
@pytest.mark.parametrize("pmi,mpi", [("pmix", "openmpi"),
                                     pytest.param("pmi2", "mpich", marks=pytest.mark.slow)])
@pytest.mark.parametrize("nodes", [2, 4])
def test_srun_mpi4py_allreduce_across_nodes(slurm_cluster, user, user_tmp, py_images,
                                            pmi, mpi, nodes):
    util.require(mpi in py_images, f"no mpi4py for {mpi} (pip could not build it)")
    env = dict(slurm_cluster.env, HPCRUN_NODE_CACHE=os.path.join(user_tmp, "nc"))
    if mpi == "mpich":
        # The local cluster's nodes are one machine: UCX takes ranks of two nodes for
        # neighbours and tries shared memory (through /proc/PID/fd) and CMA between the
        # nodes' containers, which are different user namespaces. On a real cluster the
        # nodes are different machines; here the user turns those two off, as hpcrun
        # does itself for ranks of one node in separate containers (--no-join).
        env.update(UCX_POSIX_USE_PROC_LINK="n", UCX_TLS="^cma")
    cp = util.as_user(user, ["srun", f"--mpi={pmi}", f"-N{nodes}", "--ntasks-per-node=2",
                             util.HPCRUN, "run", py_images[mpi], "--",
                             "python3", "/opt/mpi/allreduce.py"],
                      env=env, timeout=TIMEOUT, cwd=user_tmp)
    assert cp.returncode == 0, cp.stderr
    ranks = _ranks(cp.stdout)
    assert sorted(int(r[0]) for r in ranks) == list(range(2 * nodes)), cp.stdout
    assert all(r[1] == str(2 * nodes) and r[4] == "ok" for r in ranks), cp.stdout
    by_node: dict = {}
    for r in ranks:
        by_node.setdefault(r[2], set()).add(r[3])
    assert len(by_node) == nodes
    # one container per node: the two ranks of a node share its user namespace
    assert all(len(ns) == 1 for ns in by_node.values()), by_node
    assert str(os.stat("/proc/self/ns/user").st_ino) not in {r[3] for r in ranks}
