#!/bin/bash
# MPI across nodes with the image's usual recipe: Open MPI's mpirun inside the
# allocation starts `hpcrun run` once per rank (Apptainer's "hybrid" model).
#
#   sbatch --export=ALL,IMAGE=/path/to/mpi-image.sqfs mpirun.sh
#
# mpirun reads the allocation from Slurm and starts its daemons on the other nodes
# with srun; each daemon starts its node's ranks. `hpcrun run` sees the launcher
# (OMPI_COMM_WORLD_LOCAL_RANK/SIZE) and puts the ranks of a node in one container
# (the first makes it, the others join it), so they share a user namespace and Open
# MPI's shared-memory transport uses cross-memory attach as on bare metal; nothing to
# add to the command line. The image needs an Open MPI of the host's major version
# (here the host's own: 4.1) and the program; PROGRAM (default /opt/mpi/hello) is its
# path inside the image. `--unpack`: a squashfs image (a file, or a store image kept
# as one) is extracted once per node into the node-local unpack cache, no FUSE needed
# (drop it where users may use FUSE: squashfuse then mounts it); a directory is used
# as it is.
#SBATCH --job-name=hpcrun-mpirun
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --time=00:05:00
#SBATCH --output=mpirun-%j.out
set -euo pipefail
IMAGE=${IMAGE:?set IMAGE to an image with Open MPI: a rootfs directory, a squashfs file or an image name}
PROGRAM=${PROGRAM:-/opt/mpi/hello}

# One rank per Slurm task; TCP between the nodes, shared memory within a node.
mpirun --mca btl self,vader,tcp hpcrun run --unpack "$IMAGE" -- "$PROGRAM"
# Each rank's node and user namespace: one namespace per node.
mpirun hpcrun run --unpack "$IMAGE" -- /bin/sh -c \
    'echo "userns ${SLURMD_NODENAME:-$(hostname)} $(stat -L -c %i /proc/self/ns/user)"'
