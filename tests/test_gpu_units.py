"""runtime/gpu.py's pure parts: allocation, --gpus choice, the devices cgroup, CDI
parsing, ELF version references, job files' resources.gpus (no containers here)."""
from __future__ import annotations

import os
import subprocess

import pytest

from hpcrun.errors import HpcrunError, UsageError
from hpcrun.runtime import gpu


@pytest.mark.parametrize("env,want", [
    ({}, [0, 1, 2, 3]),
    ({"CUDA_VISIBLE_DEVICES": "2,0"}, [2, 0]),
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
    ({"SLURM_JOB_GPUS": "1,3"}, [1, 3]),
    ({"SLURM_JOB_GPUS": "1,3", "SLURM_STEP_GPUS": "3"}, [3]),
    ({"SLURM_STEP_GPUS": "1,3", "CUDA_VISIBLE_DEVICES": "1,3"}, [1, 3]),   # unconstrained
    ({"SLURM_STEP_GPUS": "1,3", "CUDA_VISIBLE_DEVICES": "0,1"}, [1, 3]),   # constrained
    ({"SLURM_STEP_GPUS": "1,3", "CUDA_VISIBLE_DEVICES": "1"}, [3]),
])
def test_allocated(env, want):
    assert gpu.allocated([0, 1, 2, 3], env)[0] == want


def test_allocated_errors():
    with pytest.raises(HpcrunError, match="SLURM_STEP_GPUS names GPU 5"):
        gpu.allocated([0, 1], {"SLURM_STEP_GPUS": "5"})
    with pytest.raises(HpcrunError, match="only 2 GPU"):
        gpu.allocated([0, 1], {"CUDA_VISIBLE_DEVICES": "3"})
    with pytest.raises(HpcrunError, match="GPU indices only"):
        gpu.allocated([0, 1], {"CUDA_VISIBLE_DEVICES": "GPU-1234"})


def test_cgroup_narrows():
    allowed = gpu.cgroup_allowed("c 195:1 rwm\nc 195:255 rwm\nc 1:3 rwm\n")
    assert (195, 1) in allowed and (195, 0) not in allowed
    assert gpu.cgroup_allowed("a *:* rwm\n") is None
    got, src = gpu.allocated([0, 1], {}, allowed, lambda i: (195, i))
    assert got == [1] and "cgroup" in src


def test_choose():
    assert gpu.choose("all", [1, 3], [0, 1, 2, 3], "x") == [1, 3]
    assert gpu.choose("1", [1, 3], [0, 1, 2, 3], "x") == [1]
    assert gpu.choose("device=3", [1, 3], [0, 1, 2, 3], "x") == [3]
    with pytest.raises(HpcrunError, match="--gpus 2: only 1 GPU"):
        gpu.choose("2", [0], [0], "all GPUs of this host")
    with pytest.raises(HpcrunError, match="no GPUs"):
        gpu.choose("all", [], [], "x")
    with pytest.raises(UsageError):
        gpu.choose("device=x", [0], [0], "x")


def test_spec_versions_and_fields():
    ok = '{"cdiVersion": "1.1.0", "kind": "a.b/c", "devices": [{"name": "d", "containerEdits": {}}]}'
    s = gpu.parse_spec("/x.json", ok)
    assert s.kind == "a.b/c" and list(s.devices) == ["d"]
    with pytest.raises(HpcrunError, match=r"/x.json: cdiVersion: 1.2.0 is newer"):
        gpu.parse_spec("/x.json", ok.replace("1.1.0", "1.2.0"))
    with pytest.raises(HpcrunError, match=r"devices\[0\].name"):
        gpu.parse_spec("/x.json", ok.replace('"d"', '"-bad"'))
    y = gpu.parse_spec("/x.yaml", "cdiVersion: 0.5.0\nkind: a.b/c\ndevices:\n- name: d\n"
                       "  containerEdits: {env: [A=1]}\n")
    assert y.devices["d"]["env"] == ["A=1"]


def test_hook_spellings():
    inj = gpu.Injection()
    gpu._hook(inj, "/s", {"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk",
                          "args": ["nvidia-ctk", "hook", "update-ldcache", "--folder=/a",
                                   "--folder", "/b"]})
    gpu._hook(inj, "/s", {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
                          "args": ["nvidia-cdi-hook", "create-symlinks", "--link", "t::/l"]})
    assert inj.folders == ["/a", "/b"] and inj.links == [("t", "/l")]
    with pytest.raises(HpcrunError, match="TARGET::/LINK"):
        gpu._hook(inj, "/s", {"hookName": "c", "path": "/h",
                              "args": ["h", "create-symlinks", "--link", "nolink"]})


def test_elf_versions(tmp_path):
    src = tmp_path / "f.c"
    src.write_text('#include <dlfcn.h>\nvoid *f(void) { return dlopen("x", 0); }\n')
    so = tmp_path / "libf.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", so, src], check=True)
    need, have = gpu.elf_versions(str(so))
    assert "GLIBC_2.34" in need and gpu.glibc_version(need) >= (2, 34)
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    if os.path.exists(libc):
        assert gpu.glibc_version(gpu.elf_versions(libc)[1]) >= (2, 34)
    assert gpu.elf_versions("/etc/passwd") == ((), ())


def test_job_file_gpus_reach_the_task():
    from hpcrun.slurm import jobfile, render
    step = jobfile.parse('{"image": "/tmp", "command": ["x"], "resources": {"gpus": "2"}}',
                         "/j.yaml").steps[0]
    argv = render.task_options(step)
    assert argv[-3:] == ["--gpus", "all", "/tmp"]
