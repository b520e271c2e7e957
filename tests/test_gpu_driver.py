"""The no-spec path: NVIDIA driver injection (hpcrun/runtime/gpu.py Driver), as the
unprivileged user, against a fake driver tree (fake_driver below).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import util
from fixtures_runtime import host_mounts_mentioning
from test_gpu import _tree, bad, build_lib, glibc_image

pytestmark = pytest.mark.userns


def fake_driver(root: str) -> str:
    """A fake NVIDIA driver tree, because this machine has no GPU and no driver.

    It has what hpcrun's discovery looks at, rooted at ROOT (HPCRUN_GPU_DRIVER_ROOT):
    dev/nvidia0, dev/nvidia1, dev/nvidiactl, dev/nvidia-uvm (symlinks to /dev/null and
    /dev/zero: an unprivileged user can't make device nodes, and these are harmless),
    libcuda.so.1 and libnvidia-ml.so.1 (small libraries built here with gcc, needing a
    recent glibc through dlopen@GLIBC_2.34, as the real driver's do), an nvidia-smi
    script, and etc/ld.so.cache listing the libraries (what `ldconfig -p` reads)."""
    for d in ("dev", "usr/lib/x86_64-linux-gnu", "usr/bin", "etc"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for n, t in (("nvidia0", "/dev/null"), ("nvidia1", "/dev/null"),
                 ("nvidiactl", "/dev/null"), ("nvidia-uvm", "/dev/zero")):
        os.symlink(t, os.path.join(root, "dev", n))
    libdir = os.path.join(root, "usr/lib/x86_64-linux-gnu")
    body = "#include <dlfcn.h>\nvoid *fake_cu(void) { return dlopen(\"none\", 0); }"
    for so in ("libcuda.so.1", "libnvidia-ml.so.1"):
        build_lib(os.path.join(libdir, so), so, body)
    build_lib(os.path.join(libdir, "libnvidia-glcore.so.1"), "libnvidia-glcore.so.1")
    smi = os.path.join(root, "usr/bin/nvidia-smi")
    with open(smi, "w") as f:
        f.write('#!/bin/sh\necho "GPU 0: Fake GPU (UUID: GPU-fake)"\n')
    os.chmod(smi, 0o755)
    subprocess.run(["/sbin/ldconfig", "-X", "-C", os.path.join(root, "etc/ld.so.cache"),
                    "-f", "/dev/null", libdir], check=True, capture_output=True)
    subprocess.run(["chmod", "-R", "a+rX", root], check=True)
    return root


@pytest.fixture(scope="module")
def driver(rt_userns):
    util.require(os.path.exists("/sbin/ldconfig"), "glibc's ldconfig")
    d = util.shared_tmpdir("hpcrun-fakedrv-")
    fake_driver(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def image(rt_userns):
    d = util.shared_tmpdir("hpcrun-drvimg-")
    glibc_image(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def old_image(rt_userns):
    """An image whose libc.so.6 defines only up to GLIBC_2.17 (a stand-in built here
    with a version script: CentOS 7's glibc, too old for a current driver)."""
    d = util.shared_tmpdir("hpcrun-oldimg-")
    glibc_image(d)
    libc = os.path.join(d, "lib/x86_64-linux-gnu/libc.so.6")
    os.unlink(libc)
    vs = os.path.join(d, "v.map")
    with open(vs, "w") as f:
        f.write("GLIBC_2.2.5 { global: old_a; local: *; };\nGLIBC_2.17 { global: old_b; } GLIBC_2.2.5;\n")
    util.require(shutil.which("gcc") is not None, "gcc is not installed")
    subprocess.run(["gcc", "-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libc.so.6",
                    f"-Wl,--version-script={vs}", "-o", libc, "-x", "c", "-"],
                   input="int old_a(void) { return 1; } int old_b(void) { return 2; }",
                   text=True, check=True, capture_output=True)
    os.unlink(vs)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def drun(user, driver, *args, env=None):
    e = {"HPCRUN_CDI_SPEC_DIRS": "", "HPCRUN_GPU_DRIVER_ROOT": driver}
    e.update(env or {})
    return util.hpcrun(user, "run", *args, env=e)


def test_driver_injection(user, driver, image):
    before = _tree(image)
    cp = drun(user, driver, "--gpus", "all", image, "--", "sh", "-c",
              '/sbin/ldconfig -p | awk \'{print $1}\' | grep -E "^lib(cuda|nvidia)" | sort -u; '
              'ls /dev | grep nvidia | tr "\\n" " "; echo; nvidia-smi -L; '
              'echo "CVD=$CUDA_VISIBLE_DEVICES"; '
              'touch /usr/local/nvidia/lib64/libcuda.so.1 2>/dev/null || echo ro')
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout.splitlines()
    assert out[:2] == ["libcuda.so.1", "libnvidia-ml.so.1"], cp.stdout   # not graphics
    assert out[2].split() == ["nvidia-uvm", "nvidia0", "nvidia1", "nvidiactl"]
    assert out[3] == "GPU 0: Fake GPU (UUID: GPU-fake)"
    assert out[4:] == ["CVD=0,1", "ro"]
    assert _tree(image) == before
    assert not host_mounts_mentioning(image)


def test_graphics_on_request(user, driver, image):
    cp = drun(user, driver, "--nv", image, "--", "/sbin/ldconfig", "-p",
              env={"NVIDIA_DRIVER_CAPABILITIES": "compute,utility,graphics"})
    assert cp.returncode == 0, cp.stderr
    assert "/usr/local/nvidia/lib64/libnvidia-glcore.so.1" in cp.stdout


def test_driver_allocation(user, driver, image):
    cp = drun(user, driver, "--gpus", "all", image, "--", "sh", "-c",
              'ls /dev | grep "nvidia[0-9]"; echo "CVD=$CUDA_VISIBLE_DEVICES"',
              env={"SLURM_STEP_GPUS": "1"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["nvidia1", "CVD=0"]
    bad(drun(user, driver, "--gpus", "2", image, "true", env={"SLURM_STEP_GPUS": "1"}),
        "--gpus 2: only 1 GPU(s) available here")


def test_image_glibc_too_old(user, driver, old_image):
    err = bad(drun(user, driver, "--gpus", "all", old_image, "true"),
              f"image {old_image} has glibc 2.17, but the NVIDIA driver's libraries need "
              "glibc 2.34 or newer")
    assert err
    assert not host_mounts_mentioning(old_image)


def test_driver_without_libraries(user, image):
    d = util.shared_tmpdir("hpcrun-drvnolib-")
    try:
        os.makedirs(os.path.join(d, "dev"))
        os.symlink("/dev/null", os.path.join(d, "dev/nvidia0"))
        bad(drun(user, d, "--gpus", "all", image, "true"), "the NVIDIA driver's libraries")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_check_lists_gpus(user, driver):
    cp = util.hpcrun(user, "check", env={"HPCRUN_CDI_SPEC_DIRS": "",
                                         "HPCRUN_GPU_DRIVER_ROOT": driver})
    text = cp.stdout + cp.stderr
    assert "GPUs: 0, 1" in text and "NVIDIA driver" in text, text
