#!/bin/bash
# The README's main job (what './dev demo' runs), as root:
#   1. uses the Slurm that is configured here, or else brings up (or reuses) the local
#      2-node cluster: hpcrun cluster up 2
#   2. builds a small example image (busybox-static in a squashfs file)
#   3. submits jobscripts/single.sh over two nodes AS THE UNPRIVILEGED USER (hpcuser,
#      created if missing): one container per task
#   4. waits for it and prints its output: both nodes' host names, the uid inside, the
#      image's os-release.
# The local cluster is left running for more experiments; 'hpcrun cluster down' removes
# it. Environment: HPCRUN_DEMO_USER (default hpcuser), HPCRUN_DEMO_DIR (default
# ~USER/hpcrun-demo: image, job script and output; a home directory because on a real
# cluster it must be visible from every node), HPCRUN (the hpcrun command),
# HPCRUN_NODE_CACHE (passed on to the job when set).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -t 2 ]; then b=$'\033[1m' n=$'\033[0m'; else b= n=; fi
say() { printf '%sdemo:%s %s\n' "$b" "$n" "$*" >&2; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it may start the local cluster and create a user); try: sudo $0"
HPCRUN=${HPCRUN:-$(command -v hpcrun || echo "${HPCRUN_VENV:-/opt/hpcrun/venv}/bin/hpcrun")}
[ -x "$HPCRUN" ] || die "hpcrun is not installed at $HPCRUN (run ./dev setup first)"
bindir=$(dirname "$HPCRUN")
demo_user=${HPCRUN_DEMO_USER:-hpcuser}

# 1. Slurm: a real configured cluster answers 'scontrol ping'; else the local one.
if [ -n "${SLURM_CONF:-}" ] || scontrol ping >/dev/null 2>&1; then
  say "using the Slurm cluster configured on this machine ($(scontrol ping 2>&1 | head -n 1))"
  local_cluster=no
else
  say "no Slurm configured here: starting the local 2-node cluster (hpcrun cluster up 2)"
  exports=$("$HPCRUN" cluster up 2) || die "could not start the local cluster (see above)"
  eval "$exports"
  local_cluster=yes
fi
export SLURM_CONF=${SLURM_CONF:-}

# 2. The unprivileged user, and a directory of theirs for the image and the output.
if ! id "$demo_user" >/dev/null 2>&1; then
  say "creating the unprivileged user $demo_user"
  useradd -m -s /bin/sh "$demo_user"
fi
home=$(getent passwd "$demo_user" | cut -d: -f6)
demo_dir=${HPCRUN_DEMO_DIR:-$home/hpcrun-demo}
install -d -o "$demo_user" -g "$(id -g "$demo_user")" -m 755 "$demo_dir"

# 3. The example image: busybox-static and its applets, packed into a squashfs file.
image=$demo_dir/busybox.sqfs
if [ ! -s "$image" ]; then
  say "building the example image $image"
  [ -x /bin/busybox ] || die "busybox-static is not installed (apt-get install busybox-static)"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,proc,sys,dev,home,root,var,run,mnt}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\n' > "$root/etc/group"
  cat > "$root/etc/os-release" <<EOS
NAME="BusyBox"
ID=busybox
VERSION_ID="$(/bin/busybox | head -n 1 | awk '{print $2}')"
PRETTY_NAME="hpcrun example image (BusyBox $(/bin/busybox | head -n 1 | awk '{print $2}'))"
EOS
  mksquashfs "$root" "$image.tmp" -all-root -noappend -quiet >/dev/null
  mv "$image.tmp" "$image"
  chmod 644 "$image"
fi

# 4. Submit as the user, from their directory, and wait.
cp "$here/single.sh" "$demo_dir/single.sh"
chmod 644 "$demo_dir/single.sh"
as_user() {
  runuser -u "$demo_user" -- env -i HOME="$home" USER="$demo_user" LOGNAME="$demo_user" \
    PATH="$bindir:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 SLURM_CONF="$SLURM_CONF" \
    IMAGE="$image" ${HPCRUN_NODE_CACHE:+HPCRUN_NODE_CACHE="$HPCRUN_NODE_CACHE"} "$@"
}
say "submitting single.sh as $demo_user: 2 nodes, 2 containers per node, image $image"
jobid=$(cd "$demo_dir" && as_user sbatch --parsable --chdir="$demo_dir" \
          --output="$demo_dir/single-%j.out" "$demo_dir/single.sh")
jobid=${jobid%%;*}
say "job $jobid submitted; waiting for it"
for _ in $(seq 1 600); do
  state=$(squeue -h -j "$jobid" -o %T 2>/dev/null || true)
  [ -z "$state" ] && break
  sleep 0.2
done
info=$(scontrol show job "$jobid" 2>/dev/null || true)
state=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$info" | head -n 1)
code=$(sed -n 's/.*[^a-zA-Z]ExitCode=\([0-9:]*\).*/\1/p' <<<"$info" | head -n 1)
out=$demo_dir/single-$jobid.out

echo
echo "===== job $jobid: ${state:-finished}, exit code ${code:-?} ===== ($out)"
cat "$out"
echo "====="
echo
if [ "$local_cluster" = yes ]; then
  say "the local cluster is still running (hpcrun cluster status); as $demo_user:"
  say "  eval \"\$(hpcrun cluster env)\"; hpcrun srun --container-image=$image -N2 -- hostname"
  say "remove it with: hpcrun cluster down"
fi
[ "${state:-COMPLETED}" = COMPLETED ] || die "job $jobid ended $state (exit code $code)"
