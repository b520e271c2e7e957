"""hpcrun run: the environment policy, one rule per test (README, "Environment")."""
from __future__ import annotations

import os

import pytest

from fixtures_runtime import run

pytestmark = [pytest.mark.userns, pytest.mark.root]


def env_of(user, image, *opts, host=None):
    cp = run(user, *opts, image, "env", env=host or {})
    assert cp.returncode == 0, cp.stderr
    return dict(l.split("=", 1) for l in cp.stdout.splitlines() if "=" in l)


def test_host_variable_passes(user, rt_image):
    assert env_of(user, rt_image, host={"MY_VAR": "x"})["MY_VAR"] == "x"


def test_cleanenv_drops_host_variables(user, rt_image):
    assert "MY_VAR" not in env_of(user, rt_image, "--cleanenv", host={"MY_VAR": "x"})


@pytest.mark.parametrize("name", ["SLURM_JOB_ID", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK",
                                  "UCX_TLS", "FI_PROVIDER"])
def test_cleanenv_keeps_mpi_and_slurm(user, rt_image, name):
    assert env_of(user, rt_image, "--cleanenv", host={name: "7"})[name] == "7"


def test_image_env_is_set(user, rt_config_image):
    e = env_of(user, rt_config_image, "--entrypoint", "env")
    assert e["IMAGE_VAR"] == "from-image"


def test_image_env_beats_host(user, rt_config_image):
    e = env_of(user, rt_config_image, "--entrypoint", "env", host={"SHARED": "host"})
    assert e["SHARED"] == "image"


def test_image_path_beats_host_path(user, rt_config_image):
    e = env_of(user, rt_config_image, "--entrypoint", "env", host={"PATH": "/host/only:/usr/bin"})
    assert e["PATH"] == "/opt/app:/usr/bin:/bin"


def test_cleanenv_keeps_image_env(user, rt_config_image):
    e = env_of(user, rt_config_image, "--cleanenv", "--entrypoint", "env")
    assert e["IMAGE_VAR"] == "from-image"


def test_env_file_beats_image(user, rt_config_image, user_tmp):
    p = os.path.join(user_tmp, "vars")
    with open(p, "w") as f:
        f.write("# comment\n\nSHARED=file\nFROM_FILE=1\n")
    e = env_of(user, rt_config_image, "--env-file", p, "--entrypoint", "env")
    assert (e["SHARED"], e["FROM_FILE"]) == ("file", "1")


def test_env_file_name_alone_copies_host(user, rt_image, user_tmp):
    p = os.path.join(user_tmp, "vars")
    with open(p, "w") as f:
        f.write("COPY_ME\n")
    assert env_of(user, rt_image, "--cleanenv", "--env-file", p,
                  host={"COPY_ME": "h"})["COPY_ME"] == "h"


def test_e_beats_env_file(user, rt_image, user_tmp):
    p = os.path.join(user_tmp, "vars")
    with open(p, "w") as f:
        f.write("K=file\n")
    assert env_of(user, rt_image, "--env-file", p, "-e", "K=flag")["K"] == "flag"


def test_e_beats_image(user, rt_config_image):
    assert env_of(user, rt_config_image, "-e", "SHARED=flag", "--entrypoint", "env")["SHARED"] == "flag"


def test_e_name_alone_copies_host(user, rt_image):
    assert env_of(user, rt_image, "--cleanenv", "-e", "HOSTVAL",
                  host={"HOSTVAL": "v"})["HOSTVAL"] == "v"


def test_e_name_alone_unset_on_host_is_skipped(user, rt_image):
    assert "NOT_ON_HOST" not in env_of(user, rt_image, "-e", "NOT_ON_HOST")


def test_e_value_may_contain_equals(user, rt_image):
    assert env_of(user, rt_image, "-e", "K=a=b")["K"] == "a=b"


def test_default_path_when_none_set(user, rt_image):
    e = env_of(user, rt_image, "--cleanenv")
    assert e["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_command_found_on_image_path(user, rt_config_image):
    # greet lives in /opt/app, which only the image's PATH names.
    cp = run(user, "--entrypoint=", rt_config_image, "greet", "x", env={"PATH": "/usr/bin:/bin"})
    assert cp.stdout.strip() == "greet:x"
