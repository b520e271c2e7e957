"""Squashfs images (tar2sqfs streaming, mksquashfs fallback) and `hpcrun convert`.

Contents are read back with the independent tools sqfs2tar / unsquashfs.
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile

import pytest

import util
from fixtures_image import F, H, D, hp, make_image, ok, write_oci_archive


def _need(tool):
    util.require(shutil.which(tool) is not None, f"{tool} is not installed")


def _sqfs(user, env, name):
    return ok(hp(user, env, "inspect", "-f", "{{.Hpcrun.Squashfs}}", name)).stdout.strip()


def _members(sqfs) -> dict:
    """name -> TarInfo, read back with sqfs2tar (squashfs-tools-ng)."""
    _need("sqfs2tar")
    data = subprocess.run(["sqfs2tar", "--no-xattr", sqfs], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        out = {}
        for m in t.getmembers():
            out[m.name.rstrip("/")] = _M(m, t.extractfile(m).read() if m.isreg() else None)
        return out


class _M:
    """A tar member read back, with its content."""

    def __init__(self, info: tarfile.TarInfo, content):
        self.info, self.content = info, content

    def __getattr__(self, name):
        return getattr(self.info, name)


@pytest.fixture
def layered_sqfs(user, store_env, image_files):
    _need("tar2sqfs")
    ok(hp(user, store_env, "load", "--format", "squashfs", "-i", image_files["layered_docker"]))
    return _members(_sqfs(user, store_env, "test/layered:1"))


def test_squashfs_is_a_single_file(user, store_env, image_files):
    _need("tar2sqfs")
    ok(hp(user, store_env, "load", "--format", "squashfs", "-i", image_files["bb_docker"]))
    p = _sqfs(user, store_env, "test/busybox:1")
    assert os.path.isfile(p) and p.endswith("image.sqfs")
    assert ok(hp(user, store_env, "inspect", "-f", "{{.Hpcrun.Directory}}",
                 "test/busybox:1")).stdout.strip() == "<no value>"


def test_squashfs_applies_whiteouts(layered_sqfs):
    assert "etc/old" not in layered_sqfs and "opt/b/x" not in layered_sqfs
    assert sorted(n for n in layered_sqfs if n.startswith("opt/a/")) == ["opt/a/3"]


def test_squashfs_has_the_config(layered_sqfs, image_files):
    assert layered_sqfs[".hpcrun/config.json"].content == image_files["layered"].config


def test_squashfs_files_owned_by_root_without_setuid(layered_sqfs):
    m = layered_sqfs["usr/bin/suid"]
    assert (m.uid, m.gid) == (0, 0)
    assert m.mode & 0o6000 == 0
    assert layered_sqfs["home/owned"].uid == 0


def test_squashfs_skips_devices(layered_sqfs):
    assert "dev/null" not in layered_squashfs_names(layered_sqfs)


def layered_squashfs_names(members):
    return set(members)


def test_squashfs_matches_directory_format(user, store_env, image_files):
    _need("tar2sqfs")
    ok(hp(user, store_env, "load", "--format", "dir,squashfs", "-i",
          image_files["layered_docker"]))
    names = set(_members(_sqfs(user, store_env, "test/layered:1")))
    root = ok(hp(user, store_env, "inspect", "-f", "{{.Hpcrun.Directory}}",
                 "test/layered:1")).stdout.strip()
    walked = set()
    for dp, dn, fn in os.walk(root):
        for n in dn + fn:
            walked.add(os.path.relpath(os.path.join(dp, n), root))
    assert names == walked


def test_hardlink_whose_target_is_replaced_later(user, store_env, user_tmp):
    """The stream cannot say this; the directory fallback keeps the old content."""
    _need("tar2sqfs")
    img = make_image([[D("d"), F("d/a", "old"), H("d/b", "d/a")], [F("d/a", "new")]])
    p = write_oci_archive(os.path.join(user_tmp, "hl.tar"), img, "hl/img:1")
    ok(hp(user, store_env, "load", "--format", "squashfs", "-i", p))
    m = _members(_sqfs(user, store_env, "hl/img:1"))
    got = {n: (m[n].content if m[n].isreg() else m[m[n].linkname].content)
           for n in ("d/a", "d/b")}
    assert got == {"d/a": b"new", "d/b": b"old"}


def test_same_name_twice_in_one_layer(user, store_env, user_tmp):
    _need("tar2sqfs")
    img = make_image([[F("x", "first"), F("x", "second")]])
    p = write_oci_archive(os.path.join(user_tmp, "dup.tar"), img, "dup/img:1")
    ok(hp(user, store_env, "load", "--format", "squashfs", "-i", p))
    assert _members(_sqfs(user, store_env, "dup/img:1"))["x"].content == b"second"


def test_mksquashfs_fallback_without_tar2sqfs(user, store_env, image_files, user_tmp):
    _need("mksquashfs")
    fake = os.path.join(user_tmp, "bin")
    os.mkdir(fake)
    os.symlink(shutil.which("mksquashfs"), os.path.join(fake, "mksquashfs"))
    env = dict(store_env, PATH=f"{util.VENV_BIN}:{fake}")
    ok(hp(user, env, "load", "--format", "squashfs", "-i", image_files["layered_docker"]))
    m = _members(_sqfs(user, store_env, "test/layered:1"))
    assert "etc/motd" in m and "etc/old" not in m
    assert m["usr/bin/suid"].mode & 0o6000 == 0


def test_compressor_setting(user, store_env, image_files):
    _need("tar2sqfs")
    _need("unsquashfs")
    env = dict(store_env, HPCRUN_SQUASHFS_COMPRESSOR="lz4")
    ok(hp(user, env, "load", "--format", "squashfs", "-i", image_files["bb_docker"]))
    cp = subprocess.run(["unsquashfs", "-s", _sqfs(user, store_env, "test/busybox:1")],
                        capture_output=True, text=True, check=True)
    assert "Compression lz4" in cp.stdout


def test_unknown_compressor_refused(user, store_env, image_files):
    env = dict(store_env, HPCRUN_SQUASHFS_COMPRESSOR="snappy")
    cp = hp(user, env, "load", "--format", "squashfs", "-i", image_files["bb_docker"])
    assert cp.returncode == 1
    assert "unknown squashfs compressor 'snappy'" in cp.stderr and "hint:" in cp.stderr
    assert ok(hp(user, store_env, "images", "-q")).stdout == ""


# ----------------------------------------------------------------- convert

def test_convert_dir_to_squashfs(user, store_env, image_files):
    _need("tar2sqfs")
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    cp = ok(hp(user, store_env, "convert", "--format", "squashfs", "test/layered:1"))
    p = cp.stdout.strip()
    assert p.endswith("image.sqfs") and os.path.isfile(p)
    doc = ok(hp(user, store_env, "inspect", "-f", "{{json .Hpcrun.Formats}}",
                "test/layered:1")).stdout.strip()
    assert doc == '["squashfs"]'


def test_convert_keep_keeps_both(user, store_env, image_files):
    _need("tar2sqfs")
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    cp = ok(hp(user, store_env, "convert", "--keep", "--format", "squashfs", "test/busybox:1"))
    paths = cp.stdout.split()
    assert len(paths) == 2 and all(os.path.exists(p) for p in paths)


def test_convert_squashfs_to_dir(user, store_env, image_files):
    _need("tar2sqfs")
    ok(hp(user, store_env, "load", "--format", "squashfs", "-i", image_files["layered_docker"]))
    root = ok(hp(user, store_env, "convert", "--format", "dir", "test/layered:1")).stdout.strip()
    assert open(os.path.join(root, "etc", "motd")).read() == "layer three\n"
    assert not os.path.exists(os.path.join(os.path.dirname(root), "image.sqfs"))


def test_convert_squashfs_to_dir_without_layers_uses_unsquashfs(user, store_env, image_files):
    _need("unsquashfs")
    _need("tar2sqfs")
    ok(hp(user, store_env, "load", "--format", "squashfs", "-i", image_files["layered_docker"]))
    store = store_env["HPCRUN_STORE"]
    for dg in ok(hp(user, store_env, "inspect", "-f", "{{json .Hpcrun.Layers}}",
                    "test/layered:1")).stdout.strip().strip("[]").replace('"', "").split(", "):
        os.unlink(os.path.join(store, "blobs", "sha256", dg.split(":")[1]))
    root = ok(hp(user, store_env, "convert", "--format", "dir", "test/layered:1")).stdout.strip()
    assert open(os.path.join(root, "etc", "motd")).read() == "layer three\n"
    st = os.stat(os.path.join(root, "bin", "busybox"))
    assert st.st_uid == user.uid


def test_convert_unknown_format(user, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    cp = hp(user, store_env, "convert", "--format", "ext4", "test/busybox:1")
    assert cp.returncode == 1
    assert "unknown image format 'ext4'" in cp.stderr and "hint: use dir or squashfs" in cp.stderr


def test_convert_unknown_image(user, store_env):
    cp = hp(user, store_env, "convert", "--format", "squashfs", "nope:1")
    assert cp.returncode == 1 and "no such image: nope:1" in cp.stderr


def test_failing_tar2sqfs_falls_back_to_mksquashfs(user, store_env, image_files, user_tmp):
    """A tar2sqfs that fails (a stand-in script: the real one cannot be made to fail on
    a valid stream) leaves the job to mksquashfs, with a warning."""
    _need("mksquashfs")
    fake = os.path.join(user_tmp, "bin")
    os.mkdir(fake)
    with open(os.path.join(fake, "tar2sqfs"), "w") as f:
        f.write("#!/bin/sh\ncat >/dev/null\necho 'tar2sqfs: simulated failure' >&2\nexit 1\n")
    os.chmod(os.path.join(fake, "tar2sqfs"), 0o755)
    os.symlink(shutil.which("mksquashfs"), os.path.join(fake, "mksquashfs"))
    env = dict(store_env, PATH=f"{util.VENV_BIN}:{fake}:/usr/bin:/bin")  # fake one first
    cp = ok(hp(user, env, "load", "--format", "squashfs", "-i", image_files["bb_docker"]))
    assert "simulated failure; retrying through a directory and mksquashfs" in cp.stderr
    assert "bin/busybox" in _members(_sqfs(user, store_env, "test/busybox:1"))


def test_directory_redefined_by_a_later_layer(user, store_env, user_tmp):
    """The stream emits the directory after its lower children; tar2sqfs must keep both."""
    _need("tar2sqfs")
    img = make_image([[D("x", 0o755), F("x/f", "lower")], [D("x", 0o750)]])
    p = write_oci_archive(os.path.join(user_tmp, "redef.tar"), img, "redef/img:1")
    ok(hp(user, store_env, "load", "--format", "squashfs", "-i", p))
    m = _members(_sqfs(user, store_env, "redef/img:1"))
    assert m["x"].mode & 0o777 == 0o750 and m["x/f"].content == b"lower"
