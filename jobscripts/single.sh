#!/bin/bash
# One container per task, over two nodes: the simplest containerized job.
#
#   sbatch --export=ALL,IMAGE=/path/to/image.sqfs single.sh
#
# IMAGE is a root filesystem directory, a squashfs file, or a name from
# 'hpcrun images' (pull it once first: hpcrun pull ubuntu:22.04). A squashfs file is
# unpacked once per node by the first task there; the other tasks reuse it.
#SBATCH --job-name=hpcrun-single
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --time=00:05:00
#SBATCH --output=single-%j.out
set -euo pipefail
IMAGE=${IMAGE:?set IMAGE to an image: a rootfs directory, a squashfs file or an image name}

# Every task runs in the image; Slurm's variables (SLURM_*) are visible inside.
# The step's container is worked out once, here (Python); srun then starts every task
# through hpcrun's small C program, with no Python per task.
TASK=$(hpcrun task --plan "$IMAGE")
srun $TASK -- sh -c \
  'echo "task $SLURM_PROCID of $SLURM_NTASKS on $(hostname) uid=$(id -u)"'

# The image's own files, from one task (the simple form: Python in every task).
srun --nodes=1 --ntasks=1 hpcrun task "$IMAGE" -- cat /etc/os-release
