"""`hpcrun srun`'s translation of pyxis options into `srun ... hpcrun task ...`.

HPCRUN_SRUN_DRY_RUN=1 prints the srun command line instead of running it, so these
check the mapping itself; test_srun.py runs the same flags on the local cluster.
"""
from __future__ import annotations

import os
import shlex

import util


def _plan(user, *args, env=None):
    e = {"HPCRUN_SRUN_DRY_RUN": "1"}
    e.update(env or {})
    cp = util.hpcrun(user, "srun", *args, env=e)
    assert cp.returncode == 0, cp.stderr
    return shlex.split(cp.stdout)


def _task_part(argv):
    """(srun part, task options after the default --node-container)."""
    i = argv.index("task")
    task = argv[i + 1:]
    assert task[0] == "--node-container"
    return argv[:i - 1], task[1:]


def test_one_container_per_node_by_default(user, busybox_rootfs):
    argv = _plan(user, f"--container-image={busybox_rootfs}", "--", "true")
    assert argv[argv.index("task") + 1] == "--node-container"


def test_container_per_task(user, busybox_rootfs):
    argv = _plan(user, f"--container-image={busybox_rootfs}", "--container-per-task", "--", "true")
    assert argv[argv.index("task") + 1:] == [busybox_rootfs, "--", "true"]


def test_srun_options_pass_through_untouched(user, busybox_rootfs):
    argv = _plan(user, "-N2", "-n", "4", "--mpi", "pmix", "-l",
                 f"--container-image={busybox_rootfs}", "--exclusive", "--", "hostname")
    srun, task = _task_part(argv)
    assert srun == ["srun", "-N2", "-n", "4", "--mpi", "pmix", "-l", "--exclusive"]
    assert task == [busybox_rootfs, "--", "hostname"]


def test_command_without_double_dash(user, busybox_rootfs):
    argv = _plan(user, "-N", "2", f"--container-image={busybox_rootfs}", "sh", "-c", "echo hi")
    srun, task = _task_part(argv)
    assert srun == ["srun", "-N", "2"]
    assert task == [busybox_rootfs, "--", "sh", "-c", "echo hi"]


def test_tasks_run_this_hpcrun(user, busybox_rootfs):
    # The dry run shows the Python form (`hpcrun task`); a real run starts the C front
    # end with a step plan instead (test_task_program.py).
    argv = _plan(user, f"--container-image={busybox_rootfs}", "--", "true")
    assert argv[argv.index("task") - 1] == util.HPCRUN


def test_mounts_become_volumes(user, busybox_rootfs):
    argv = _plan(user, f"--container-image={busybox_rootfs}",
                 "--container-mounts=/tmp:/data:ro,/etc", "--container-mounts=/usr:/u:rw",
                 "--", "true")
    _, task = _task_part(argv)
    assert task[:6] == ["-v", "/tmp:/data:ro", "-v", "/etc:/etc", "-v", "/usr:/u"]


def test_enroot_image_uri(user):
    argv = _plan(user, "--container-image=nvcr.io#nvidia/pytorch:21.04", "--", "true")
    _, task = _task_part(argv)
    assert task == ["nvcr.io/nvidia/pytorch:21.04", "--", "true"]


def test_relative_image_path_made_absolute(user, user_tmp, busybox_rootfs):
    os.symlink(busybox_rootfs, os.path.join(user_tmp, "img"))
    e = {"HPCRUN_SRUN_DRY_RUN": "1"}
    cp = util.hpcrun(user, "srun", "--container-image=img", "--", "true", env=e, cwd=user_tmp)
    assert cp.returncode == 0, cp.stderr
    _, task = _task_part(shlex.split(cp.stdout))
    assert task[0] == os.path.join(user_tmp, "img")


def test_pyxis_environment_fallbacks(user, busybox_rootfs):
    argv = _plan(user, "--", "true", env={"PYXIS_CONTAINER_IMAGE": busybox_rootfs,
                                          "PYXIS_CONTAINER_WORKDIR": "/tmp",
                                          "PYXIS_CONTAINER_WRITABLE": "1"})
    _, task = _task_part(argv)
    assert task == ["-w", "/tmp", "--writable-tmpfs", busybox_rootfs, "--", "true"]


def test_command_line_beats_environment(user, busybox_rootfs):
    argv = _plan(user, "--container-workdir=/etc", "--container-readonly", "--", "true",
                 env={"PYXIS_CONTAINER_IMAGE": busybox_rootfs, "PYXIS_CONTAINER_WORKDIR": "/tmp",
                      "PYXIS_CONTAINER_WRITABLE": "1"})
    _, task = _task_part(argv)
    assert task == ["-w", "/etc", busybox_rootfs, "--", "true"]


def test_container_env_names(user, busybox_rootfs):
    argv = _plan(user, f"--container-image={busybox_rootfs}", "--container-env=FOO,BAR",
                 "--", "true")
    _, task = _task_part(argv)
    assert task[:4] == ["-e", "FOO", "-e", "BAR"]


def test_no_container_mount_home(user, busybox_rootfs):
    argv = _plan(user, f"--container-image={busybox_rootfs}", "--no-container-mount-home",
                 "--", "true")
    assert _task_part(argv)[1][0] == "--no-home"


def test_home_mount_off_from_environment(user, busybox_rootfs):
    argv = _plan(user, f"--container-image={busybox_rootfs}", "--", "true",
                 env={"PYXIS_CONTAINER_MOUNT_HOME": "0"})
    assert _task_part(argv)[1][0] == "--no-home"


def test_container_remap_root(user, busybox_rootfs):
    argv = _plan(user, f"--container-image={busybox_rootfs}", "--container-remap-root",
                 "--", "true")
    assert _task_part(argv)[1][0] == "--fakeroot"


def test_docker_transport_prefix(user):
    argv = _plan(user, "--container-image=docker://busybox:1.36", "--", "true")
    assert _task_part(argv)[1] == ["busybox:1.36", "--", "true"]
