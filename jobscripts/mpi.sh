#!/bin/bash
# MPI across nodes, the hybrid way: the host's srun starts the ranks (PMIx), the MPI
# library inside the image (here Open MPI 4 with PMIx) wires them up.
#
#   sbatch --export=ALL,IMAGE=/path/to/mpi-image.sqfs mpi.sh
#
# The image must hold an MPI built with PMIx support (Open MPI >= 4, MPICH with PMIx)
# and the program; PROGRAM (default /opt/mpi/hello) is its path inside the image.
# 'hpcrun task' binds Slurm's PMIx directories into each container, like enroot's
# PMI hook. Each rank has its own container, so Linux's cross-memory attach between
# ranks on one node is off (different user namespaces): tell Open MPI not to try it.
#SBATCH --job-name=hpcrun-mpi
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --time=00:05:00
#SBATCH --output=mpi-%j.out
set -euo pipefail
IMAGE=${IMAGE:?set IMAGE to an image with MPI: a rootfs directory, a squashfs file or an image name}
PROGRAM=${PROGRAM:-/opt/mpi/hello}

srun --mpi=pmix hpcrun task -e OMPI_MCA_btl_vader_single_copy_mechanism=none "$IMAGE" -- "$PROGRAM"
