#!/bin/bash
# MPI across nodes, the hybrid way: the host's srun starts the ranks (PMIx), the MPI
# library inside the image (here Open MPI 4 with PMIx) wires them up.
#
#   sbatch --export=ALL,IMAGE=/path/to/mpi-image.sqfs mpi.sh
#
# The image must hold an MPI built with PMIx support (Open MPI >= 4, MPICH with PMIx)
# and the program; PROGRAM (default /opt/mpi/hello) is its path inside the image.
# Each task binds Slurm's PMIx directories into its container, like enroot's
# PMI hook. --node-container gives the ranks of a node one container (the first rank
# creates it, the others join it), so they share a user namespace and Open MPI can use
# cross-memory attach (CMA) between them; without it each rank has its own container
# and Open MPI copies through shared memory instead (it warns about CMA).
#SBATCH --job-name=hpcrun-mpi
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --time=00:05:00
#SBATCH --output=mpi-%j.out
set -euo pipefail
IMAGE=${IMAGE:?set IMAGE to an image with MPI: a rootfs directory, a squashfs file or an image name}
PROGRAM=${PROGRAM:-/opt/mpi/hello}

# The step's plan, made once; each rank then starts through hpcrun's C program.
TASK=$(hpcrun task --plan --node-container "$IMAGE")
srun --mpi=pmix $TASK -- "$PROGRAM"
