"""`hpcrun srun` refuses bad arguments with one error line and a hint, before srun runs.

pyxis keeps these in their own file too. Nothing here needs a cluster: every case
fails while planning, so srun is never started (exit status 125, Docker's convention
for hpcrun's own failure).
"""
from __future__ import annotations

import pytest

import util


def _srun(user, *args, env=None):
    return util.hpcrun(user, "srun", *args, env=env)


def _fails(cp, first_line_part, hint_part=None):
    assert cp.returncode == 125, (cp.returncode, cp.stderr)
    first = cp.stderr.splitlines()[0]
    assert first.startswith("hpcrun: error: ") and first_line_part in first, cp.stderr
    assert "hint: " in cp.stderr
    if hint_part:
        assert hint_part in cp.stderr


def test_no_container_image(user):
    _fails(_srun(user, "-N1", "--", "true"), "no --container-image given", "PYXIS_CONTAINER_IMAGE")


def test_no_command(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}", "-N1"), "no command given")


def test_unknown_container_option_suggests(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}", "--container-mount=/tmp:/x",
                 "--", "true"),
           "unknown container option --container-mount", "did you mean --container-mounts?")


@pytest.mark.parametrize("flag", ["--container-name=x", "--container-save=/tmp/x.sqfs"])
def test_unsupported_pyxis_option(user, busybox_rootfs, flag):
    _fails(_srun(user, f"--container-image={busybox_rootfs}", flag, "--", "true"),
           f"{flag.split('=')[0]} is not supported")


def test_container_option_without_value(user):
    _fails(_srun(user, "--container-image"), "--container-image needs a value")


def test_container_option_with_empty_value(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}", "--container-workdir=",
                 "--", "true"), "--container-workdir has an empty value")


def test_value_given_to_a_switch(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}", "--container-writable=yes",
                 "--", "true"), "--container-writable takes no value")


def test_bad_mount_flag(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}", "--container-mounts=/tmp:/x:rx",
                 "--", "true"), "bad --container-mounts '/tmp:/x:rx': unknown mode 'rx'", "the mode is ro or rw")


def test_relative_mount_destination(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}", "--container-mounts=/tmp:data",
                 "--", "true"), "bad --container-mounts '/tmp:data': destination 'data' is not an absolute path")


def test_too_many_mount_fields(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}",
                 "--container-mounts=/tmp:/a:ro:x", "--", "true"), "bad --container-mounts '/tmp:/a:ro:x'")


def test_missing_mount_source(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}",
                 "--container-mounts=/nonexistent-src:/x", "--", "true"),
           "mount source /nonexistent-src does not exist")


def test_relative_workdir(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}", "--container-workdir=tmp",
                 "--", "true"), "--container-workdir='tmp' is not an absolute path")


def test_bad_env_name(user, busybox_rootfs):
    _fails(_srun(user, f"--container-image={busybox_rootfs}", "--container-env=A-B",
                 "--", "true"), "bad variable name 'A-B'")


def test_credentials_in_image(user):
    _fails(_srun(user, "--container-image=joe@nvcr.io#nvidia/pytorch:21.04", "--", "true"),
           "credentials in --container-image", "hpcrun login")


def test_bad_enroot_image_uri(user):
    _fails(_srun(user, "--container-image=nvcr.io#", "--", "true"), "bad --container-image")


def test_image_from_a_docker_daemon(user):
    _fails(_srun(user, "--container-image=dockerd://ubuntu:22.04", "--", "true"),
           "images from a local Docker or Podman daemon are not supported", "hpcrun load")
