#!/bin/bash
# A job array: four independent containerized runs, one per input.
#
#   sbatch --export=ALL,IMAGE=/path/to/image.sqfs array.sh
#
# Each element sees its index as SLURM_ARRAY_TASK_ID, here used to pick an input.
# The pyxis spelling (hpcrun srun --container-image=...) works like srun with pyxis.
#SBATCH --job-name=hpcrun-array
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --time=00:05:00
#SBATCH --output=array-%A_%a.out
set -euo pipefail
IMAGE=${IMAGE:?set IMAGE to an image: a rootfs directory, a squashfs file or an image name}

inputs=(alpha beta gamma delta)
input=${inputs[$SLURM_ARRAY_TASK_ID]}
mkdir -p results
hpcrun srun --container-image="$IMAGE" --container-mounts="$PWD/results:/results" \
  -- sh -c "echo element \$SLURM_ARRAY_TASK_ID of job \$SLURM_ARRAY_JOB_ID processed $input \
            | tee /results/$input.txt"
