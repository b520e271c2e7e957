"""hpcrun run: bad input gets one `hpcrun: error:` line, a hint, the right exit code,
and leaves nothing behind."""
from __future__ import annotations

import os

import pytest

from fixtures_runtime import host_mounts_mentioning, run, user_entries_in_tmp

pytestmark = [pytest.mark.userns, pytest.mark.root]


def bad(cp, code, first):
    lines = cp.stderr.splitlines()
    assert cp.returncode == code, cp.stderr
    assert lines[0].startswith("hpcrun: error: " + first), cp.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: "), cp.stderr


def test_no_such_image(user):
    bad(run(user, "/no/such/image", "true"), 125, "no such image: /no/such/image")


def test_directory_not_a_rootfs(user, user_tmp):
    bad(run(user, user_tmp, "true"), 125, f"not a root filesystem: {user_tmp}")


def test_file_not_an_image(user, user_tmp):
    p = os.path.join(user_tmp, "notes.txt")
    with open(p, "w") as f:
        f.write("hello")
    bad(run(user, p, "true"), 125, f"not a root filesystem or squashfs image: {p}")


def test_corrupt_squashfs(user, rt_corrupt_squashfs, rt_fuse_open, rt_unpack_cache):
    bad(run(user, rt_corrupt_squashfs, "true", env=rt_unpack_cache), 125,
        f"can't mount squashfs {rt_corrupt_squashfs}")


def test_corrupt_squashfs_unpack(user, rt_corrupt_squashfs, rt_unpack_cache):
    bad(run(user, "--unpack", rt_corrupt_squashfs, "true", env=rt_unpack_cache), 125,
        f"cannot unpack squashfs image {rt_corrupt_squashfs}: ")
    cache = rt_unpack_cache["HPCRUN_UNPACK_CACHE"]
    assert [n for n in os.listdir(cache) if not n.endswith(".lock") and n != "config"] == []


def test_missing_bind_source(user, rt_image):
    bad(run(user, "-v", "/no/such/dir:/data", rt_image, "true"), 125,
        "bind source does not exist: /no/such/dir")


def test_bind_destination_cannot_be_created(user, rt_image, user_tmp):
    bad(run(user, "-v", f"{user_tmp}:/proc/hpcrun-x", rt_image, "true"), 125,
        f"can't bind {user_tmp} to /proc/hpcrun-x")


def test_bad_volume_mode(user, rt_image, user_tmp):
    bad(run(user, "-v", f"{user_tmp}:/data:rx", rt_image, "true"), 125, "bad --volume")


def test_relative_volume_destination(user, rt_image, user_tmp):
    bad(run(user, "-v", f"{user_tmp}:data", rt_image, "true"), 125, "bad --volume")


def test_unknown_network(user, rt_image):
    bad(run(user, "--network", "bridge", rt_image, "true"), 125,
        "unknown --network value 'bridge'")


def test_unknown_pid_mode(user, rt_image):
    bad(run(user, "--pid=shared", rt_image, "true"), 125, "unknown --pid value 'shared'")


def test_command_not_in_image(user, rt_image):
    bad(run(user, rt_image, "no-such-command"), 127,
        "command not found in the container: no-such-command")


def test_missing_command(user, rt_image):
    bad(run(user, rt_image), 125, "no command given")


def test_missing_image(user):
    bad(run(user), 125, "no image given")


def test_unknown_option(user, rt_image):
    bad(run(user, "--bogus", rt_image, "true"), 125, "unknown option '--bogus' for run")


def test_option_missing_value(user):
    bad(run(user, "-v"), 125, "option -v needs a value")


def test_relative_workdir(user, rt_image):
    bad(run(user, "-w", "rel", rt_image, "true"), 125, "-w 'rel' is not an absolute path")


def test_missing_env_file(user, rt_image):
    bad(run(user, "--env-file", "/no/such/file", rt_image, "true"), 125,
        "env file does not exist: /no/such/file")


def test_bad_env_name(user, rt_image):
    bad(run(user, "-e", "=x", rt_image, "true"), 125, "-e: bad variable name ''")


def test_scratch_without_tmpdir(user, rt_image):
    bad(run(user, "--scratch", rt_image, "true", env={"TMPDIR": "", "SLURM_TMPDIR": ""}), 125,
        "--scratch: neither SLURM_TMPDIR nor TMPDIR is set")


def test_user_namespaces_disabled(user, rt_image):
    from fixtures_runtime import without_userns
    import util
    bad(without_userns(user, [util.HPCRUN, "run", rt_image, "true"]), 125,
        "can't create a user namespace: No space left on device")


def test_bad_input_leaves_nothing_behind(user, rt_image, user_tmp):
    before = user_entries_in_tmp(user)
    run(user, "-v", f"{user_tmp}:/proc/hpcrun-x", rt_image, "true")
    run(user, "-w", "/no/dir", rt_image, "true")
    run(user, rt_image, "no-such-command")
    assert user_entries_in_tmp(user) == before
    assert host_mounts_mentioning(rt_image, "newroot", "oldroot") == []
