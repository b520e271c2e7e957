"""Hostile image configs and inputs (issue 12, findings 5 and 10): every entry point
refuses them with one `hpcrun: error: invalid image config <file>: field <field> ...`
line (exit 125 from run, 1 from the image verbs), never a traceback, and never uses
them half. The rules are hpcrun.image.ociconfig's (README, Security).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import util
from fixtures_image import busybox_entries, make_image, write_docker_archive, write_oci_archive

pytestmark = pytest.mark.userns


@pytest.fixture
def config_image(user_tmp):
    """make(config) -> a busybox directory image whose .hpcrun/config.json is CONFIG
    (bytes, or an object written as JSON)."""
    def make(config, name="img"):
        root = os.path.join(user_tmp, name)
        util.make_busybox_rootfs(root)
        os.makedirs(os.path.join(root, ".hpcrun"), exist_ok=True)
        data = config if isinstance(config, bytes) else json.dumps(config).encode()
        with open(os.path.join(root, ".hpcrun", "config.json"), "wb") as f:
            f.write(data)
        subprocess.run(["chmod", "-R", "a+rX", root], check=True)
        return root
    return make


def refused(cp, code, path, field, problem=""):
    lines = cp.stderr.splitlines()
    assert cp.returncode == code, cp.stderr
    assert "Traceback" not in cp.stderr
    want = f"hpcrun: error: invalid image config {path}:"
    if field:
        want += f" field {field}"
    assert lines[0].startswith(want), cp.stderr
    assert problem in lines[0], cp.stderr
    assert lines[1].startswith("hint: ")


@pytest.mark.parametrize("config, field, problem", [
    ({"config": {"Env": [1, None]}}, "config.Env[0]", "must be a string, not a number"),
    ({"config": {"Env": "A=1"}}, "config.Env", "must be a list, not a string"),
    ({"config": {"Entrypoint": {"a": 1}}}, "config.Entrypoint", "must be a list, not an object"),
    ({"config": {"Cmd": ["echo", 3]}}, "config.Cmd[1]", "must be a string"),
    ({"config": {"Env": ["A=x\u0000y"]}}, "config.Env[0]", "holds a NUL character"),
    ({"config": {"Cmd": ["/bin/echo", "a\u0000b"]}}, "config.Cmd[1]", "holds a NUL character"),
    ({"config": {"WorkingDir": 5}}, "config.WorkingDir", "must be a string"),
    ({"config": {"User": ["root"]}}, "config.User", "must be a string"),
    ({"config": {"StopSignal": "SIGFOO"}}, "config.StopSignal", "no signal 'SIGFOO'"),
    ({"config": {"StopSignal": "9999"}}, "config.StopSignal", "no signal number 9999"),
    ({"config": {"StopSignal": 9}}, "config.StopSignal", "must be a string"),
    ({"config": {"Labels": {"a": 1}}}, "config.Labels['a']", "must be a string"),
    ({"config": "nope"}, "config", "must be an object"),
    ({"rootfs": {"diff_ids": [7]}}, "rootfs.diff_ids[0]", "must be a string"),
    ([1, 2], "", "must be a JSON object, not a list"),
])
def test_run_refuses_a_hostile_dir_config(user, config_image, config, field, problem):
    root = config_image(config)
    cp = util.hpcrun(user, "run", root, "true")
    refused(cp, 125, os.path.join(root, ".hpcrun/config.json"), field, problem)


@pytest.mark.parametrize("data, problem", [
    (b"[" * 100000 + b"]" * 100000, "nested deeper than 64 levels"),
    (b'{"config": {"Labels": ' + b'{"a": ' * 70 + b'""' + b"}" * 72, "nested deeper than 64"),
    (b"{not json", "not JSON"),
])
def test_run_refuses_malformed_or_deep_json(user, config_image, data, problem):
    root = config_image(data)
    cp = util.hpcrun(user, "run", root, "true")
    refused(cp, 125, os.path.join(root, ".hpcrun/config.json"), "", problem)


def test_a_string_cmd_is_one_argument_as_in_docker(user, config_image):
    # Docker's image config accepts a string for Cmd/Entrypoint (its strslice type) and
    # runs it as the one-element list, not through a shell.
    root = config_image({"config": {"Cmd": "/bin/echo"}})
    cp = util.hpcrun(user, "run", root)
    assert (cp.returncode, cp.stdout) == (0, "\n"), cp.stderr
    root = config_image({"config": {"Cmd": "echo hi"}}, "img2")
    cp = util.hpcrun(user, "run", root)
    assert cp.returncode == 127, cp.stderr           # no program called "echo hi"


def test_valid_config_with_nulls_and_unknown_fields_runs(user, config_image):
    root = config_image({"config": {"Env": None, "Entrypoint": None, "Cmd": ["/bin/echo", "ok"],
                                    "Volumes": None, "OnBuild": None, "StopSignal": "SIGRTMIN+3",
                                    "Something": {"x": [1, 2]}}})
    cp = util.hpcrun(user, "run", root)
    assert (cp.returncode, cp.stdout) == (0, "ok\n"), cp.stderr


def test_run_of_a_squashfs_with_a_hostile_config_is_refused(user, config_image, user_tmp,
                                                            rt_fuse_closed, rt_unpack_cache):
    util.require(shutil.which("mksquashfs") is not None, "squashfs-tools is not installed")
    root = config_image({"config": {"Env": [1, None]}})
    sq = os.path.join(user_tmp, "bad.sqfs")
    subprocess.run(["mksquashfs", root, sq, "-noappend", "-quiet", "-no-progress"], check=True,
                   capture_output=True)
    os.chmod(sq, 0o644)
    cp = util.hpcrun(user, "run", "--unpack", sq, "true", env=rt_unpack_cache)
    assert cp.returncode == 125, cp.stderr
    first = cp.stderr.splitlines()[0]
    assert first.startswith("hpcrun: error: invalid image config ") and \
        "field config.Env[0] must be a string" in first, cp.stderr


def test_load_refuses_a_hostile_config(user, store_env, user_tmp, busybox_rootfs):
    img = make_image([busybox_entries(busybox_rootfs)], env=[1, None])
    for write in (write_docker_archive, write_oci_archive):
        path = os.path.join(user_tmp, f"bad-{write.__name__}.tar")
        write(path, img, ["test/bad:1"] if write is write_docker_archive else "test/bad:1")
        cp = util.hpcrun(user, "load", "-i", path, env=store_env)
        assert cp.returncode == 1, cp.stderr
        first = cp.stderr.splitlines()[0]
        assert first.startswith("hpcrun: error: invalid image config ") and \
            path in first and "field config.Env[0] must be a string" in first, cp.stderr
    cp = util.hpcrun(user, "images", "-q", env=store_env)
    assert cp.stdout == ""                            # nothing was recorded


# ------------------------------------------------------------------ import (finding 10)


@pytest.fixture
def rootfs_tar(user_tmp, busybox_rootfs):
    path = os.path.join(user_tmp, "rootfs.tar")
    subprocess.run(["tar", "-C", busybox_rootfs, "-cf", path, "."], check=True)
    os.chmod(path, 0o644)
    return path


@pytest.mark.parametrize("value, problem", [
    ("SIGFOO", "no signal 'SIGFOO'"), ("9999", "no signal number 9999"), ("0", "no signal"),
    ("SIGRTMIN+99", "no signal 'SIGRTMIN+99'"),
])
def test_import_refuses_an_unknown_stopsignal(user, store_env, rootfs_tar, value, problem):
    cp = util.hpcrun(user, "import", "--change", f"STOPSIGNAL {value}", rootfs_tar, "x/y:1",
                     env=store_env)
    assert cp.returncode == 2, cp.stderr
    first = cp.stderr.splitlines()[0]
    assert first.startswith(f"hpcrun: error: --change 'STOPSIGNAL {value}': ") and \
        problem in first, cp.stderr
    assert "Traceback" not in cp.stderr


@pytest.mark.parametrize("value", ["SIGINT", "int", "9", "SIGRTMIN+3", "RTMAX"])
def test_import_accepts_a_real_stopsignal(user, store_env, rootfs_tar, value):
    cp = util.hpcrun(user, "import", "--change", f"STOPSIGNAL {value}", rootfs_tar, "x/y:1",
                     env=store_env)
    assert cp.returncode == 0, cp.stderr
    cp = util.hpcrun(user, "inspect", "x/y:1", env=store_env)
    assert json.loads(cp.stdout)[0]["Config"]["StopSignal"] == value


def test_import_of_a_device_is_refused(user, store_env):
    cp = util.hpcrun(user, "import", "/dev/zero", "x/zero:1", env=store_env, timeout=60)
    assert cp.returncode == 1, cp.stderr
    assert cp.stderr.splitlines()[0] == "hpcrun: error: cannot import /dev/zero: it is a device"


def test_import_of_a_device_on_stdin_is_refused(user, store_env):
    with open("/dev/zero", "rb") as zero:
        cp = util.hpcrun(user, "import", "-", "x/zero:1", env=store_env, stdin=zero, timeout=60)
    assert cp.returncode == 1, cp.stderr
    assert cp.stderr.splitlines()[0] == "hpcrun: error: cannot import stdin: it is a device"


def test_import_of_endless_zeros_from_a_pipe_is_refused_at_once(user, store_env):
    zero = subprocess.Popen(["cat", "/dev/zero"], stdout=subprocess.PIPE)
    try:
        cp = util.hpcrun(user, "import", "-", "x/zero:1", env=store_env, stdin=zero.stdout,
                         timeout=60)
    finally:
        zero.kill()
        zero.wait()
    assert cp.returncode == 1, cp.stderr
    assert cp.stderr.splitlines()[0] == "hpcrun: error: stdin: not a tar archive"


def test_import_input_is_bounded_by_max_image_size(user, store_env, user_tmp):
    # An endless compressed stream: the bound stops it with a clear error.
    gz = subprocess.Popen("head -c 50000000 /dev/zero | gzip -1", shell=True,
                          stdout=subprocess.PIPE)
    try:
        cp = util.hpcrun(user, "import", "-", "x/big:1", env={**store_env,
                         "HPCRUN_MAX_IMAGE_SIZE": "1K"}, stdin=gz.stdout, timeout=60)
    finally:
        gz.kill()
        gz.wait()
    assert cp.returncode == 1, cp.stderr
    assert cp.stderr.splitlines()[0].startswith("hpcrun: error: cannot import stdin: larger "
                                                "than max_image_size"), cp.stderr
    assert os.listdir(os.path.join(store_env["HPCRUN_STORE"], "tmp")) == []


@pytest.mark.registry
def test_pull_refuses_a_hostile_config(user, user_env_for, registry, oci_layout, busybox_layer):
    from fixtures_registry import err, skopeo_push
    m = oci_layout.image([busybox_layer], env=("A=1\u0000B",))
    oci_layout.tag(m, "v1")
    skopeo_push(oci_layout, "v1", registry, "ns/hostile:v1")
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = util.hpcrun(user, "pull", f"{registry.host}/ns/hostile:v1", env=env)
    assert cp.returncode == 1, cp.stderr
    line = err(cp)
    assert line.startswith("hpcrun: error: invalid image config sha256:") and \
        "field config.Env[0] holds a NUL character" in line, cp.stderr
    assert "Traceback" not in cp.stderr
    cp = util.hpcrun(user, "images", "-q", env=env)
    assert cp.stdout == ""
