"""hpcrun run: image config (ENTRYPOINT, CMD, WORKDIR, STOPSIGNAL, USER) and -w rules."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import util
from fixtures_runtime import run

pytestmark = [pytest.mark.userns, pytest.mark.root]


def test_entrypoint_and_cmd_by_default(user, rt_config_image):
    cp = run(user, rt_config_image)
    assert (cp.returncode, cp.stdout.strip()) == (0, "greet:default-arg")


def test_arguments_replace_cmd(user, rt_config_image):
    assert run(user, rt_config_image, "a", "b").stdout.strip() == "greet:a b"


def test_entrypoint_option_overrides(user, rt_config_image):
    assert run(user, "--entrypoint", "echo", rt_config_image, "hi").stdout.strip() == "hi"


def test_empty_entrypoint_runs_the_command(user, rt_config_image):
    assert run(user, "--entrypoint=", rt_config_image, "echo", "x").stdout.strip() == "x"


def test_workdir_from_image(user, rt_config_image):
    assert run(user, "--entrypoint", "pwd", rt_config_image).stdout.strip() == "/opt/app"


def test_w_beats_image_workdir(user, rt_config_image):
    assert run(user, "-w", "/etc", "--entrypoint", "pwd", rt_config_image).stdout.strip() == "/etc"


def test_cwd_used_when_visible(user, rt_image, user_tmp):
    cp = run(user, "-v", f"{user_tmp}:{user_tmp}", rt_image, "pwd", cwd=user_tmp)
    assert cp.stdout.strip() == user_tmp


def test_cwd_inside_a_bind_maps_to_its_destination(user, rt_image, user_tmp):
    sub = os.path.join(user_tmp, "sub")
    os.mkdir(sub)
    os.chown(sub, user.uid, user.gid)
    cp = run(user, "-v", f"{user_tmp}:/work", rt_image, "pwd", cwd=sub)
    assert cp.stdout.strip() == "/work/sub"


def test_cwd_not_visible_falls_back_to_root(user, rt_image, user_tmp):
    assert run(user, "--no-home", rt_image, "pwd", cwd=user_tmp).stdout.strip() == "/"


def test_w_missing_on_read_only_image_is_an_error(user, rt_image):
    cp = run(user, "-w", "/no/such/dir", rt_image, "pwd")
    assert cp.returncode == 125
    assert cp.stderr.startswith("hpcrun: error: can't create working directory /no/such/dir")


def test_w_on_writable_mount_is_created(user, rt_image):
    assert run(user, "-w", "/tmp/a/b", rt_image, "pwd").stdout.strip() == "/tmp/a/b"


def test_stopsignal_is_what_sigterm_becomes(user, rt_user_image):
    import signal
    import subprocess
    d = util.shared_tmpdir("hpcrun-rtstop-")
    try:
        shutil.copytree(rt_user_image, os.path.join(d, "img"), symlinks=True)
        os.makedirs(os.path.join(d, "img/.hpcrun"))
        with open(os.path.join(d, "img/.hpcrun/config.json"), "w") as f:
            json.dump({"config": {"StopSignal": "SIGUSR1"}}, f)
        p = subprocess.Popen(
            [util.HPCRUN, "run", os.path.join(d, "img"), "sh", "-c",
             "trap 'echo usr1; exit 3' USR1; trap 'echo term; exit 4' TERM; echo ready; "
             "while :; do sleep 0.1; done"],
            user=user.uid, group=user.gid, extra_groups=[], env=util.user_env(user), cwd="/",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        rest, _ = p.communicate(timeout=30)
        assert (p.returncode, rest.strip()) == (3, "usr1")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_image_user_is_honoured(user, rt_user_image):
    d = util.shared_tmpdir("hpcrun-rtusr-")
    try:
        shutil.copytree(rt_user_image, os.path.join(d, "img"), symlinks=True)
        os.makedirs(os.path.join(d, "img/.hpcrun"))
        with open(os.path.join(d, "img/.hpcrun/config.json"), "w") as f:
            json.dump({"config": {"User": "1234:1234"}}, f)
        cp = run(user, os.path.join(d, "img"), "id", "-u")
        assert cp.stdout.strip() == "1234"
    finally:
        shutil.rmtree(d, ignore_errors=True)
