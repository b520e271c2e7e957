"""GPUs and CDI devices in containers (hpcrun/runtime/gpu.py), as the unprivileged user.

This machine has no GPU, so the devices are synthetic: CDI specs written here name
harmless host nodes (/dev/null, /dev/zero) under other names inside, a small library
built here with gcc, environment variables and both interpreted hooks; and, for the
no-spec path, a fake NVIDIA driver tree (fake_driver below). Everything else is real:
real user and mount namespaces, the image's own glibc ldconfig, the C core's binds
and skeleton symlinks, the C launcher's plan cache.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import util
from fixtures_runtime import host_mounts_mentioning

pytestmark = pytest.mark.userns

HAS_GCC = shutil.which("gcc") is not None

SPEC = """\
cdiVersion: "0.6.0"
kind: nvidia.com/gpu
containerEdits:
  env: [FAKE_DRIVER=VALUE]
  deviceNodes:
  - {path: /dev/fakectl, hostPath: /dev/null}
  mounts:
  - {hostPath: LIB/libfakegpu.so.1, containerPath: /opt/fake/lib/libfakegpu.so.1,
     options: [ro, nosuid, nodev, bind]}
  hooks:
  - {hookName: createContainer, path: /usr/bin/nvidia-cdi-hook,
     args: [nvidia-cdi-hook, create-symlinks, --link, "libfakegpu.so.1::/opt/fake/lib/libfakegpu.so",
            --link, "/opt/fake/lib/libfakegpu.so.1::/usr/lib/libfake-link.so"]}
  - {hookName: createContainer, path: /usr/bin/nvidia-ctk,
     args: [nvidia-ctk, hook, update-ldcache, --folder, /opt/fake/lib]}
  - {hookName: createContainer, path: /usr/bin/nvidia-cdi-hook,
     args: [nvidia-cdi-hook, enable-cuda-compat, --host-driver-version=999]}
devices:
- name: "0"
  containerEdits:
    deviceNodes: [{path: /dev/fakegpu0, hostPath: /dev/zero}]
- name: "1"
  containerEdits:
    deviceNodes: [{path: /dev/fakegpu1, hostPath: /dev/zero}]
    env: [FAKE_GPU1=yes]
"""

OTHER = {"cdiVersion": "1.1.0", "kind": "example.com/dev",
         "devices": [{"name": "a", "containerEdits": {
             "deviceNodes": [{"path": "/dev/exa", "hostPath": "/dev/zero"}],
             "env": ["EXA=1"]}},
                     {"name": "b", "containerEdits": {
                         "deviceNodes": [{"path": "/dev/exb", "hostPath": "/dev/null"}]}}]}


def _tree(root) -> list:
    """Every entry of an image with its type, size and mtime (to prove it unchanged)."""
    out = []
    for d, dirs, files in os.walk(root):
        for n in sorted(dirs + files):
            st = os.lstat(os.path.join(d, n))
            out.append((os.path.join(d, n), st.st_mode, st.st_size, st.st_mtime_ns))
    return sorted(out)


def glibc_image(root: str) -> str:
    """busybox plus the host's glibc (libc.so.6, the loader) and its ldconfig."""
    util.make_busybox_rootfs(root)
    libdir = os.path.join(root, "lib/x86_64-linux-gnu")
    os.makedirs(libdir, exist_ok=True)
    os.makedirs(os.path.join(root, "lib64"), exist_ok=True)
    for lib in ("libc.so.6", "ld-linux-x86-64.so.2"):
        shutil.copy2(os.path.join("/lib/x86_64-linux-gnu", lib), libdir)
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
               os.path.join(root, "lib64/ld-linux-x86-64.so.2"))
    ldc = os.path.join(root, "sbin/ldconfig")
    if os.path.lexists(ldc):
        os.unlink(ldc)
    shutil.copy2("/sbin/ldconfig", ldc)
    with open(os.path.join(root, "etc/ld.so.conf"), "w") as f:
        f.write("/lib/x86_64-linux-gnu\n")
    return root


@pytest.fixture(scope="module")
def image(rt_userns):
    util.require(os.path.exists("/lib/x86_64-linux-gnu/libc.so.6") and
                 os.path.exists("/sbin/ldconfig"), "an x86-64 glibc host with ldconfig")
    d = util.shared_tmpdir("hpcrun-gpuimg-")
    glibc_image(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def build_lib(path: str, soname: str, body: str = "int fake_answer(void) { return 42; }") -> str:
    util.require(HAS_GCC, "gcc is not installed")
    src = path + ".c"
    with open(src, "w") as f:
        f.write(body + "\n")
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", path, src],
                   check=True, capture_output=True)
    os.unlink(src)
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def fakelib():
    d = util.shared_tmpdir("hpcrun-gpulib-")
    build_lib(os.path.join(d, "libfakegpu.so.1"), "libfakegpu.so.1")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_spec(d, fakelib, value="first", name="fake.yaml"):
    """(Re)write the GPU spec atomically (as a spec generator would)."""
    text = SPEC.replace("LIB", fakelib).replace("VALUE", value)
    tmp = os.path.join(d, "." + name)
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(d, name))


@pytest.fixture
def cdi(fakelib):
    d = util.shared_tmpdir("hpcrun-cdi-")
    write_spec(d, fakelib)
    with open(os.path.join(d, "other.json"), "w") as f:
        json.dump(OTHER, f)
    os.chmod(os.path.join(d, "other.json"), 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def gpurun(user, cdi_dir, *args, env=None):
    e = {"HPCRUN_CDI_SPEC_DIRS": cdi_dir}
    e.update(env or {})
    return util.hpcrun(user, "run", *args, env=e)


SHOW = ('for n in fakectl fakegpu0 fakegpu1 exa exb; do [ -c /dev/$n ] && '
        'echo "node $n $(stat -c %t:%T /dev/$n)"; done; '
        'echo "env CVD=${CUDA_VISIBLE_DEVICES-unset} FD=${FAKE_DRIVER-} G1=${FAKE_GPU1-} '
        'EXA=${EXA-}"')


def lines(cp, prefix):
    return [ln for ln in cp.stdout.splitlines() if ln.startswith(prefix)]


def test_cdi_gpus_all(user, image, cdi):
    before = _tree(image)
    cmd = (SHOW + '; /sbin/ldconfig -p | grep -o "libfakegpu[^ ]* .*"; '
           'echo "link $(readlink /opt/fake/lib/libfakegpu.so) $(readlink /usr/lib/libfake-link.so)"; '
           'echo "dev $(ls /dev | grep -c nvidia)"; '
           'echo "zero $(head -c 3 /dev/fakegpu0 | od -An -tx1 | tr -d " ")"; '
           'echo x > /dev/fakectl && echo x > /dev/null && echo "write ok"; '
           'echo "w $(touch /opt/fake/lib/x 2>/dev/null && echo writable || echo ro)"')
    cp = gpurun(user, cdi, "--gpus", "all", image, "--", "sh", "-c", cmd)
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout
    # device nodes: the host's /dev/null (1:3) and /dev/zero (1:5) under their new names
    assert "node fakectl 1:3" in out and "node fakegpu0 1:5" in out and "node fakegpu1 1:5" in out
    assert "env CVD=0,1 FD=first G1=yes" in out
    # the library is visible to the image's own ldconfig -p, through the generated cache
    assert "libfakegpu.so.1 (libc6,x86-64) => /opt/fake/lib/libfakegpu.so.1" in out, out
    assert "link libfakegpu.so.1 /opt/fake/lib/libfakegpu.so.1" in out
    assert "w ro" in out               # mounts are read-only unless the spec says rw
    assert "zero 000000" in out        # the node works (a bind keeps the host's dev access)
    assert "write ok" in out           # read-only binds of nodes are still written through
    # the unknown hook: reported once by name, not run
    warn = [ln for ln in cp.stderr.splitlines() if "enable-cuda-compat" in ln]
    assert len(warn) == 1 and warn[0].startswith("hpcrun: warning: CDI hook"), cp.stderr
    assert _tree(image) == before      # nothing in the image changed on disk
    assert not host_mounts_mentioning(image)


def test_the_generated_ld_cache_is_the_images_own(user, image, cdi):
    """The cache lists the image's libc at the image's path: made by ldconfig in the
    container's root, not the host's (whose cache lists hundreds of host libraries)."""
    cp = gpurun(user, cdi, "--gpus", "1", image, "--", "/sbin/ldconfig", "-p")
    assert cp.returncode == 0, cp.stderr
    assert "libc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6" in cp.stdout
    host = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True).stdout
    assert len(cp.stdout.splitlines()) < len(host.splitlines())
    assert "libpython" not in cp.stdout


def test_cuda_visible_devices_narrows(user, image, cdi):
    cp = gpurun(user, cdi, "--gpus", "all", image, "--", "sh", "-c", SHOW,
                env={"CUDA_VISIBLE_DEVICES": "1"})
    assert cp.returncode == 0, cp.stderr
    nodes = lines(cp, "node ")
    assert "node fakegpu1 1:5" in nodes and not any("fakegpu0" in n for n in nodes), cp.stdout
    assert "env CVD=0 " in cp.stdout          # renumbered: the container sees one GPU


def test_slurm_step_gpus(user, image, cdi):
    cp = gpurun(user, cdi, "--gpus", "all", image, "--", "sh", "-c", SHOW,
                env={"SLURM_STEP_GPUS": "1", "SLURM_JOB_GPUS": "0,1"})
    assert cp.returncode == 0, cp.stderr
    nodes = lines(cp, "node ")
    assert "node fakegpu1 1:5" in nodes and not any("fakegpu0" in n for n in nodes)
    assert "env CVD=0 " in cp.stdout
    # Slurm (unconstrained) also sets CUDA_VISIBLE_DEVICES to the same global indices
    cp = gpurun(user, cdi, "--gpus", "1", image, "--", "sh", "-c", SHOW,
                env={"SLURM_JOB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert cp.returncode == 0, cp.stderr
    assert "node fakegpu0 1:5" in lines(cp, "node ") and "env CVD=0 " in cp.stdout
    assert not any("fakegpu1" in n for n in lines(cp, "node "))


def test_device_by_cdi_name(user, image, cdi):
    cp = gpurun(user, cdi, "--device", "example.com/dev=a", image, "--", "sh", "-c", SHOW)
    assert cp.returncode == 0, cp.stderr
    assert lines(cp, "node ") == ["node exa 1:5"]
    assert "CVD=unset" in cp.stdout and "EXA=1" in cp.stdout
    cp = gpurun(user, cdi, "--device", "example.com/dev=all", "--device", "nvidia.com/gpu=1",
                image, "--", "sh", "-c", SHOW)
    assert cp.returncode == 0, cp.stderr
    assert sorted(lines(cp, "node ")) == ["node exa 1:5", "node exb 1:3", "node fakectl 1:3",
                                          "node fakegpu1 1:5"]


def test_nv_is_gpus_all(user, image, cdi):
    cp = gpurun(user, cdi, "--nv", image, "--", "sh", "-c", SHOW)
    assert cp.returncode == 0, cp.stderr
    assert "env CVD=0,1 " in cp.stdout


@pytest.mark.parametrize("mode", ["underlay", "writable"])
def test_symlinks_without_overlay_and_writable(user, image, cdi, mode):
    env = {"HPCRUN_NO_OVERLAY": "1"} if mode == "underlay" else {}
    extra = ["--writable-tmpfs"] if mode == "writable" else []
    before = _tree(image)
    cp = gpurun(user, cdi, *extra, "--gpus", "all", image, "--", "sh", "-c",
                'readlink /opt/fake/lib/libfakegpu.so; /sbin/ldconfig -p | grep -c libfakegpu',
                env=env)
    if mode == "writable" and cp.returncode != 0 and "overlay" in cp.stderr:
        util.require(False, f"no writable overlay here: {cp.stderr.strip()}")
    assert cp.returncode == 0, cp.stderr
    link, count = cp.stdout.split()
    assert link == "libfakegpu.so.1" and int(count) >= 2, cp.stdout
    assert _tree(image) == before


def test_no_devices_without_the_option(user, image, cdi):
    """Without --gpus the host's /dev is bound as always and no spec is read."""
    with open(os.path.join(cdi, "broken.json"), "w") as f:
        f.write("{")
    cp = gpurun(user, cdi, image, "--", "sh", "-c", "test -e /dev/fakectl || echo none")
    assert cp.returncode == 0 and cp.stdout == "none\n", cp.stderr


# ---------------------------------------------------------------- bad input

def bad(cp, first):
    lines_ = cp.stderr.splitlines()
    assert cp.returncode == 125, cp.stderr
    errs = [ln for ln in lines_ if ln.startswith("hpcrun: error: ")]
    assert len(errs) == 1 and errs[0].startswith("hpcrun: error: " + first), cp.stderr
    assert lines_[lines_.index(errs[0]) + 1].startswith("hint: "), cp.stderr
    return errs[0]


def no_leftovers(user, image):
    assert not host_mounts_mentioning(image)
    d = f"/var/tmp/hpcrun-{user.uid}/ldcache"
    if os.path.isdir(d):
        assert not [n for n in os.listdir(d) if ".tmp-" in n]


def test_undefined_cdi_name(user, image, cdi):
    err = bad(gpurun(user, cdi, "--device", "example.com/dev=zz", image, "true"),
              "no CDI spec defines device example.com/dev=zz")
    assert cdi in err
    no_leftovers(user, image)


def test_bad_cdi_name_spelling(user, image, cdi):
    bad(gpurun(user, cdi, "--device", "nonsense", image, "true"), "--device 'nonsense'")


@pytest.mark.parametrize("text,field", [
    ('{"cdiVersion": "0.6.0", "kind": "x.com/y", "devices": [{"name": "a", '
     '"containerEdits": {"deviceNodes": [{"hostPath": "/dev/null"}]}}]}',
     "devices[0].containerEdits.deviceNodes[0].path"),
    ('{"cdiVersion": "9.0.0", "kind": "x.com/y", "devices": []}', "cdiVersion"),
    ('{"cdiVersion": "0.6.0", "kind": "nokind", "devices": [{"name": "a", "containerEdits": {}}]}',
     "kind"),
    ('{"cdiVersion": "0.6.0", "kind": "x.com/y", "devices": [{"name": "a", "containerEdits": '
     '{"mounts": [{"hostPath": "/tmp", "containerPath": "/t", "type": "tmpfs"}]}}]}',
     "devices[0].containerEdits.mounts[0].type"),
    ('{"cdiVersion": "0.6.0", "kind": "x.com/y", "devices": [{"name": "a", "containerEdits": '
     '{"env": ["NOEQUALS"]}}]}', "devices[0].containerEdits.env[0]"),
    ("cdiVersion: [unclosed", "(file)"),
])
def test_malformed_spec_names_file_and_field(user, image, cdi, text, field):
    name = "bad.yaml" if text.startswith("cdiVersion:") else "bad.json"
    with open(os.path.join(cdi, name), "w") as f:
        f.write(text)
    os.chmod(os.path.join(cdi, name), 0o644)
    err = bad(gpurun(user, cdi, "--gpus", "all", image, "true"), "malformed CDI spec")
    assert os.path.join(cdi, name) in err and field in err, err
    no_leftovers(user, image)


def test_gpus_on_a_host_without_gpus(user, image, tmp_path):
    empty = util.shared_tmpdir("hpcrun-nogpu-")
    try:
        err = bad(gpurun(user, empty, "--gpus", "all", image, "true",
                         env={"HPCRUN_GPU_DRIVER_ROOT": empty}), "--gpus all: this host has no GPUs")
        assert err
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    no_leftovers(user, image)


def test_more_gpus_than_allocated(user, image, cdi):
    bad(gpurun(user, cdi, "--gpus", "2", image, "true", env={"SLURM_STEP_GPUS": "1"}),
        "--gpus 2: only 1 GPU(s) available here (SLURM_STEP_GPUS)")
    bad(gpurun(user, cdi, "--gpus", "3", image, "true"), "--gpus 3: only 2 GPU(s)")
    bad(gpurun(user, cdi, "--gpus", "device=0", image, "true", env={"CUDA_VISIBLE_DEVICES": "1"}),
        "--gpus device=0: GPU 0 is not allocated")
    bad(gpurun(user, cdi, "--gpus", "device=7", image, "true"), "--gpus device=7: this host has no GPU 7")
    bad(gpurun(user, cdi, "--gpus", "some", image, "true"), "--gpus 'some' is not all")
    no_leftovers(user, image)


def test_missing_host_node(user, image, cdi):
    with open(os.path.join(cdi, "gone.json"), "w") as f:
        json.dump({"cdiVersion": "0.6.0", "kind": "x.com/gone", "devices": [
            {"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/nothere"}]}}]}, f)
    os.chmod(os.path.join(cdi, "gone.json"), 0o644)
    err = bad(gpurun(user, cdi, "--device", "x.com/gone=a", image, "true"), "CDI spec")
    assert "/dev/nothere does not exist" in err


# ---------------------------------------------------------------- the plan cache

def test_plan_cache_sees_the_spec(user, image, cdi, fakelib):
    """A changed spec is never run from a stale plan; nor a changed allocation."""
    util.require(shutil.which("strace") is not None, "strace is not installed")
    from test_plan_cache import execs
    cmd = 'echo "$FAKE_DRIVER $CUDA_VISIBLE_DEVICES $(ls /dev | grep fakegpu | tr "\\n" " ")"'
    env = {"HPCRUN_CDI_SPEC_DIRS": cdi}
    assert util.hpcrun(user, "run", "--gpus", "all", image, "sh", "-c", cmd, env=env).returncode == 0
    cp, progs = execs(user, "run", "--gpus", "all", image, "sh", "-c", cmd, env=env)
    assert cp.stdout == "first 0,1 fakegpu0 fakegpu1 \n", cp.stderr
    assert not any("python" in p for p in progs), progs       # warm: no Python
    write_spec(cdi, fakelib, value="second")
    cp, progs = execs(user, "run", "--gpus", "all", image, "sh", "-c", cmd, env=env)
    assert cp.stdout == "second 0,1 fakegpu0 fakegpu1 \n", cp.stderr
    assert any("python" in p for p in progs)                 # re-planned
    # a new spec file in the directory counts too (the directory is checked)
    with open(os.path.join(cdi, "more.json"), "w") as f:
        json.dump({"cdiVersion": "0.6.0", "kind": "x.com/z", "devices": [
            {"name": "a", "containerEdits": {"env": ["Z=1"]}}]}, f)
    os.chmod(os.path.join(cdi, "more.json"), 0o644)
    cp, progs = execs(user, "run", "--gpus", "all", image, "sh", "-c", cmd, env=env)
    assert cp.returncode == 0 and any("python" in p for p in progs)
    # the allocation is part of the key (the C launcher's and Python's alike)
    cvd = {**env, "CUDA_VISIBLE_DEVICES": "1"}
    cp = util.hpcrun(user, "run", "--gpus", "all", image, "sh", "-c", cmd, env=cvd)
    assert cp.stdout == "second 0 fakegpu1 \n", cp.stderr
    cp, progs = execs(user, "run", "--gpus", "all", image, "sh", "-c", cmd, env=cvd)
    assert cp.stdout == "second 0 fakegpu1 \n" and not any("python" in p for p in progs)
    cp, progs = execs(user, "run", "--gpus", "all", image, "sh", "-c", cmd, env=env)
    assert cp.stdout == "second 0,1 fakegpu0 fakegpu1 \n", cp.stderr
    # the generated ld.so.cache is checked: removed, the run is planned (and made) again
    plans = f"/var/tmp/hpcrun-{user.uid}/plans"
    entries = [open(os.path.join(plans, n)).read() for n in os.listdir(plans)]
    caches = {ln.split()[1] for e in entries if "HPCRUN_CDI_SPEC_DIRS" in e
              for ln in e.splitlines() if ln.startswith("check ") and "/ldcache/" in ln}
    assert caches, "the plan's checks name the generated ld.so.cache"
    for c in caches:
        if os.path.exists(c):
            os.unlink(c)
    cp, progs = execs(user, "run", "--gpus", "all", image, "/sbin/ldconfig", "-p", env=env)
    assert cp.returncode == 0 and "libfakegpu.so.1" in cp.stdout, cp.stderr
    assert any("python" in p for p in progs)


def test_step_plan_plans_devices_on_each_task(user, image, cdi):
    """`hpcrun task --plan --gpus all` (job files, hpcrun srun --container-gpus): GPUs
    are allocated per node and step, so the plan defers them to each task, which plans
    them with its own SLURM_STEP_GPUS."""
    env = {"HPCRUN_CDI_SPEC_DIRS": cdi}
    cp = util.hpcrun(user, "task", "--plan", "--gpus", "all", image, env=env)
    assert cp.returncode == 0, cp.stderr
    plan = cp.stdout.split()
    assert "pertask=1" in plan[-1].split(",")
    for step_gpus, want in (("1", "fakegpu1 CVD=0"), ("0,1", "fakegpu0 fakegpu1 CVD=0,1")):
        run = util.as_user(user, [*plan, "--", "sh", "-c",
                                  'echo $(ls /dev | grep fakegpu) CVD=$CUDA_VISIBLE_DEVICES'],
                           env={**env, "SLURM_STEP_GPUS": step_gpus})
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == want


@pytest.fixture(scope="module")
def sqfs_image(image):
    util.require(shutil.which("mksquashfs") is not None, "squashfs-tools is not installed")
    d = util.shared_tmpdir("hpcrun-gpusqfs-")
    path = os.path.join(d, "gpu.sqfs")
    subprocess.run(["mksquashfs", image, path, "-noappend", "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(d, ignore_errors=True)


def test_squashfs_image(user, sqfs_image, cdi, rt_fuse_open):
    """A squashfs image: the helper container mounts it too, to run its ldconfig."""
    cp = gpurun(user, cdi, "--gpus", "all", sqfs_image, "--", "sh", "-c",
                SHOW + '; /sbin/ldconfig -p | grep -c "libfakegpu.so.1 "')
    assert cp.returncode == 0, cp.stderr
    assert "node fakegpu0 1:5" in cp.stdout and int(cp.stdout.splitlines()[-1]) >= 1


def test_image_without_ldconfig(user, rt_image, cdi, rt_squashfs, rt_fuse_open):
    """No ldconfig in the image (busybox-static): the rest is injected, one warning."""
    for img in (rt_image, rt_squashfs):
        cp = gpurun(user, cdi, "--gpus", "all", img, "--", "sh", "-c", SHOW)
        assert cp.returncode == 0, cp.stderr
        assert "node fakegpu1 1:5" in cp.stdout
        assert sum("has no ldconfig" in ln for ln in cp.stderr.splitlines()) == 1, cp.stderr
