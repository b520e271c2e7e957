#!/bin/bash
# A pipeline of jobs: run this on the login node (bash pipeline.sh), not with sbatch.
# It submits multistep.sh, then a job that starts only if that one succeeded
# (sbatch --dependency=afterok:JOBID), and prints both job ids.
#
#   IMAGE=/path/to/image.sqfs bash pipeline.sh
set -euo pipefail
IMAGE=${IMAGE:?set IMAGE to an image: a rootfs directory, a squashfs file or an image name}
export IMAGE
here=$(cd "$(dirname "$0")" && pwd)

first=$(sbatch --parsable --export=ALL "$here/multistep.sh")
first=${first%%;*}
second=$(sbatch --parsable --export=ALL --dependency="afterok:$first" \
  --job-name=hpcrun-after --ntasks=1 --output="after-%j.out" \
  --wrap="srun hpcrun task -v '$PWD:/work:ro' '$IMAGE' -- tail -n 1 /work/multistep-$first.out")
second=${second%%;*}
echo "$first $second"
