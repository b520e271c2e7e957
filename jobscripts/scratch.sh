#!/bin/bash
# Node-local scratch: stage input to fast local disk on every node, compute there in
# the container, copy the results back to the submit directory, clean up.
#
#   sbatch --export=ALL,IMAGE=/path/to/image.sqfs scratch.sh
#
# SCRATCH_BASE is the node-local directory (default: $TMPDIR, else /tmp).
#SBATCH --job-name=hpcrun-scratch
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:05:00
#SBATCH --output=scratch-%j.out
set -euo pipefail
IMAGE=${IMAGE:?set IMAGE to an image: a rootfs directory, a squashfs file or an image name}
scratch=${SCRATCH_BASE:-${TMPDIR:-/tmp}}/hpcrun-scratch-$SLURM_JOB_ID
results=$PWD/scratch-results-$SLURM_JOB_ID
mkdir -p "$results"
trap 'srun --ntasks-per-node=1 rm -rf "$scratch"' EXIT

# One directory per node and task, on that node's own disk.
srun mkdir -p "$scratch"
srun sh -c "echo input-for-\$SLURM_PROCID > '$scratch/in.'\$SLURM_PROCID"

# Compute in the container, reading and writing /scratch (the node-local directory).
srun hpcrun task -v "$scratch:/scratch" "$IMAGE" -- \
  sh -c 'tr a-z A-Z < /scratch/in.$SLURM_PROCID > /scratch/out.$SLURM_PROCID'

# Copy the results home.
srun sh -c "cp '$scratch/out.'\$SLURM_PROCID '$results/'"
cat "$results"/out.*
