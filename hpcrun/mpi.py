"""MPI launchers and libraries, as data (no I/O beyond reading the environment and,
for --mpi=host, the host's and the image's files).

launcher(environ): which launcher started this rank and how many ranks share its
node, read from the variables each launcher exports (cext/task.c's launcher_key reads
the same ones to name the node's container). Used by `hpcrun run` to decide whether
its ranks join one container per node (the default) and, where they cannot, to make
Open MPI use a transport that works between user namespaces.

On the `hpcrun run` hot path: imports os only.
"""
from __future__ import annotations

import os

SEPARATE = ("OMPI_MCA_btl_vader_single_copy_mechanism=none", "UCX_POSIX_USE_PROC_LINK=n",
            "UCX_TLS=^cma", "UCX_RNDV_THRESH=inf")


class Launcher:
    __slots__ = ("name", "local_rank", "local_size")

    def __init__(self, name, local_rank, local_size):
        self.name, self.local_rank, self.local_size = name, local_rank, local_size

    def __repr__(self):
        return f"Launcher({self.name!r}, {self.local_rank!r}, {self.local_size!r})"


def _int(v):
    return int(v) if v is not None and v.isdigit() else None


def launcher(environ=None) -> Launcher | None:
    """The MPI launcher (or srun) that started this process, or None. local_size None:
    the launcher does not say how many ranks share the node."""
    e = os.environ if environ is None else environ
    if "OMPI_COMM_WORLD_LOCAL_SIZE" in e:
        return Launcher("Open MPI", _int(e.get("OMPI_COMM_WORLD_LOCAL_RANK")),
                        _int(e.get("OMPI_COMM_WORLD_LOCAL_SIZE")))
    if "MPI_LOCALNRANKS" in e or "PMI_FD" in e or "HYDI_CONTROL_FD" in e:
        return Launcher("MPICH hydra", _int(e.get("MPI_LOCALRANKID")),
                        _int(e.get("MPI_LOCALNRANKS")))
    if e.get("SLURM_JOB_ID") and e.get("SLURM_STEP_ID"):
        tasks, nodes = _int(e.get("SLURM_STEP_NUM_TASKS")), _int(e.get("SLURM_STEP_NUM_NODES"))
        size = 1 if tasks is not None and tasks == nodes else None
        return Launcher("srun", _int(e.get("SLURM_LOCALID")), size)
    if e.get("PMIX_NAMESPACE") and "PMIX_RANK" in e:
        return Launcher("PMIx", None, None)
    return None


def several_on_node(environ=None) -> Launcher | None:
    """The launcher, where this rank may share its node with others of the launch."""
    ln = launcher(environ)
    return ln if ln is not None and ln.local_size != 1 else None


def separate_env(env, why: str) -> tuple:
    """The command's environment (NAME=VALUE items) for a rank in a user namespace of
    its own: Open MPI's cross-memory attach fails between user namespaces (and its
    fallback hangs at 64 KiB), and UCX (MPICH's ch4:ucx, Open MPI's pml ucx) can't open
    a peer's shared memory through /proc/PID/fd nor use CMA (and, without CMA, its
    rendezvous over TCP sometimes hangs at MPI_Finalize: eager only); these go off unless the user set them
    (cext/task.c's separate_env does the same). Says so at -v."""
    env = tuple(env)
    names = {kv.partition("=")[0] for kv in env}
    add = tuple(kv for kv in SEPARATE if kv.partition("=")[0] not in names)
    if add:
        from hpcrun import log
        for kv in add:
            log.info(f"{why}: this rank has a user namespace of its own, so {kv}")
    return env + add
