#!/bin/bash
# Several steps in one job, with dependencies between them: two steps run side by
# side, each on its own node, and a third step starts only when both succeeded.
#
#   sbatch --export=ALL,IMAGE=/path/to/image.sqfs multistep.sh
#
# To chain whole jobs instead, see pipeline.sh (sbatch --dependency=afterok:JOBID).
#SBATCH --job-name=hpcrun-multistep
#SBATCH --nodes=2
#SBATCH --ntasks=2
#SBATCH --time=00:05:00
#SBATCH --output=multistep-%j.out
set -euo pipefail
IMAGE=${IMAGE:?set IMAGE to an image: a rootfs directory, a squashfs file or an image name}
work=$PWD/multistep-$SLURM_JOB_ID
mkdir -p "$work"

# Steps 1 and 2 in parallel (--exact: each takes only what it asks for).
pids=()
for part in 1 2; do
  srun --exact --nodes=1 --ntasks=1 --mem-per-cpu=64M hpcrun task -v "$work:/work" "$IMAGE" -- \
    sh -c "seq $((part * 10 - 9)) $((part * 10)) > /work/part$part.txt; echo step $part done" &
  pids+=($!)
done
for p in "${pids[@]}"; do
  wait "$p"   # a failed step stops the job here (set -e): step 3 never starts
done

# Step 3 depends on both: it sums what they wrote.
srun --nodes=1 --ntasks=1 hpcrun task -v "$work:/work:ro" "$IMAGE" -- \
  sh -c 'cat /work/part1.txt /work/part2.txt | awk "{s += \$1} END {print \"sum\", s}"'
