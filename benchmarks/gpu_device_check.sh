#!/bin/sh
# The real-GPU check of issue 14, as one short prepared script (a few minutes of device
# time). NOT RUN YET: the session that wrote it had no GPU machine; the hardware check
# is open until someone runs this where a GPU is.
#
# What it does, on a machine with an NVIDIA GPU and its driver (no CUDA toolkit, no
# network needed):
#   1. builds a minimal image: busybox plus the host's glibc and the host's python3
#      (for the ctypes program; its standard library, no site-packages);
#   2. runs `nvidia-smi -L` inside (`hpcrun run --gpus all`: a CDI spec in /etc/cdi or
#      /var/run/cdi if there is one, else driver injection);
#   3. runs a ctypes program calling cuInit, cuDeviceGetCount, cuDeviceGetName and
#      timing cuMemcpyHtoD of 1 GiB from pinned memory, inside and bare, interleaved
#      (3 rounds each), and prints the bandwidths and the ratio inside/bare (target
#      >= 0.99);
#   4. prints `hpcrun check`'s GPU lines.
#
# Usage, from the repository root with the C core built (hpcrun/_ccore*.so,
# hpcrun/_task*.so, build/hpcrun: carry them to the device machine):
#     sh benchmarks/gpu_device_check.sh            (HPCRUN=... to name another hpcrun)
# Without an installed hpcrun it uses `python3 -m hpcrun` from this tree (PYTHONPATH),
# which needs cffi's runtime module and PyYAML on that python3.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${HPCRUN:-}" ]; then
    if command -v hpcrun >/dev/null 2>&1; then
        HPCRUN=hpcrun
    else
        HPCRUN="env PYTHONPATH=$REPO python3 -m hpcrun"
    fi
fi
W=$(mktemp -d /tmp/hpcrun-gpucheck-XXXXXX)
trap 'rm -rf "$W"' EXIT
IMG=$W/image

echo "== host"
nvidia-smi -L || { echo "no nvidia-smi on the host: not a GPU machine"; exit 1; }
uname -r
ldd --version | head -1

echo "== image: busybox + host glibc + host python3 (stdlib only)"
BB=$(command -v busybox || echo /bin/busybox)
mkdir -p "$IMG/bin" "$IMG/etc" "$IMG/tmp" "$IMG/proc" "$IMG/sys" "$IMG/dev" "$IMG/lib64" \
         "$IMG/usr/bin" "$IMG/sbin"
cp "$BB" "$IMG/bin/busybox"
for a in sh ls cat echo env grep; do ln -sf /bin/busybox "$IMG/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$IMG/etc/passwd"
printf 'root:x:0:\n' > "$IMG/etc/group"
cp /sbin/ldconfig "$IMG/sbin/ldconfig"
PY=$(python3 -c 'import sys, os; print(os.path.realpath(sys.executable))')
STD=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
DYN=$(python3 -c 'import _ctypes, os; print(os.path.dirname(_ctypes.__file__))')
copy_with_libs() {       # a file and the shared libraries it loads, at the same paths
    for f in "$@"; do
        mkdir -p "$IMG$(dirname "$f")"
        cp -L "$f" "$IMG$f"
        ldd "$f" 2>/dev/null | awk '/=>/ {print $3} /^\t\// {print $1}' | while read -r l; do
            if [ -e "$l" ] && [ ! -e "$IMG$l" ]; then
                mkdir -p "$IMG$(dirname "$l")"
                cp -L "$l" "$IMG$l"
            fi
        done
    done
}
copy_with_libs "$PY" /lib64/ld-linux-x86-64.so.2 "$DYN"/_ctypes*.so "$DYN"/*.so
ln -sf "$PY" "$IMG/usr/bin/python3"
mkdir -p "$IMG$STD"
(cd "$STD" && tar cf - --exclude=site-packages --exclude=dist-packages --exclude=test \
    --exclude=__pycache__ .) | (cd "$IMG$STD" && tar xf -)
echo "/lib/x86_64-linux-gnu" > "$IMG/etc/ld.so.conf"
du -sh "$IMG"

cat > "$W/cucheck.py" <<'EOF'
"""cuInit, cuDeviceGetCount, cuDeviceGetName; cuMemcpyHtoD of 1 GiB, timed."""
import ctypes, sys, time
cu = ctypes.CDLL("libcuda.so.1")
def ck(r, what):
    if r != 0:
        sys.exit(f"{what} failed: CUresult {r}")
ck(cu.cuInit(0), "cuInit")
n = ctypes.c_int()
ck(cu.cuDeviceGetCount(ctypes.byref(n)), "cuDeviceGetCount")
dev = ctypes.c_int()
ck(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
name = ctypes.create_string_buffer(256)
ck(cu.cuDeviceGetName(name, 256, dev), "cuDeviceGetName")
print(f"devices {n.value}; device 0: {name.value.decode()}")
ctx = ctypes.c_void_p()
ck(cu.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev), "cuCtxCreate")
size = 1 << 30
host = ctypes.c_void_p()
ck(cu.cuMemAllocHost_v2(ctypes.byref(host), ctypes.c_size_t(size)), "cuMemAllocHost")
ctypes.memset(host, 1, size)
d = ctypes.c_uint64()
ck(cu.cuMemAlloc_v2(ctypes.byref(d), ctypes.c_size_t(size)), "cuMemAlloc")
ck(cu.cuMemcpyHtoD_v2(d, host, ctypes.c_size_t(size)), "cuMemcpyHtoD (warm-up)")
best = 0.0
for _ in range(5):
    t = time.perf_counter()
    ck(cu.cuMemcpyHtoD_v2(d, host, ctypes.c_size_t(size)), "cuMemcpyHtoD")
    ck(cu.cuCtxSynchronize(), "cuCtxSynchronize")
    best = max(best, size / (time.perf_counter() - t) / 1e9)
print(f"HtoD {best:.3f} GB/s")
cu.cuMemFree_v2(d); cu.cuMemFreeHost(host); cu.cuCtxDestroy_v2(ctx)
EOF
chmod -R a+rX "$W"

echo "== nvidia-smi -L inside"
$HPCRUN run --gpus all "$IMG" -- nvidia-smi -L

echo "== CUDA inside and bare (interleaved, 3 rounds)"
in=""; bare=""
for r in 1 2 3; do
    i=$($HPCRUN run --gpus all -v "$W/cucheck.py:/cucheck.py:ro" "$IMG" -- python3 /cucheck.py)
    b=$(python3 "$W/cucheck.py")
    [ "$r" = 1 ] && echo "inside: $(echo "$i" | head -1)" && echo "bare:   $(echo "$b" | head -1)"
    in="$in $(echo "$i" | awk '/HtoD/ {print $2}')"
    bare="$bare $(echo "$b" | awk '/HtoD/ {print $2}')"
done
python3 - "$in" "$bare" <<'EOF'
import statistics, sys
i = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
mi, mb = statistics.median(i), statistics.median(b)
print(f"HtoD 1 GiB, median of 3: inside {mi:.3f} GB/s, bare {mb:.3f} GB/s, "
      f"ratio {mi / mb:.4f} (target >= 0.99: {'met' if mi / mb >= 0.99 else 'NOT met'})")
EOF

echo "== hpcrun check (GPU lines)"
$HPCRUN check | grep -A20 '^GPUs:' || true
