"""Flattening layers without root, and the hostile-tar suite.

Every case loads an archive as the unprivileged user (`hpcrun load`). Hostile archives
must be refused as a whole: exit 1, one error line and a hint, no image recorded, no
unpacked leftovers, nothing written or removed outside the store.
"""
from __future__ import annotations

import gzip
import os
import stat

import pytest

import util
from fixtures_image import (D, F, H, OPQ, S, WH, hp, make_image, ok, records,
                            write_oci_archive)


# ----------------------------------------------------------------- the flattened result

@pytest.fixture
def layered_root(user, store_env, image_files):
    cp = ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    root = ok(hp(user, store_env, "inspect", "-f", "{{.Hpcrun.Directory}}",
                 "test/layered:1")).stdout.strip()
    return root, cp


def test_whiteout_hides_lower_file(layered_root):
    assert not os.path.lexists(os.path.join(layered_root[0], "etc", "old"))


def test_whiteout_in_third_layer(layered_root):
    root = layered_root[0]
    assert not os.path.lexists(os.path.join(root, "opt", "b", "x"))
    assert open(os.path.join(root, "opt", "b", "y")).read() == "y"


def test_opaque_directory_hides_lower_entries(layered_root):
    assert sorted(os.listdir(os.path.join(layered_root[0], "opt", "a"))) == ["3"]


def test_untouched_lower_entries_stay(layered_root):
    assert open(os.path.join(layered_root[0], "data", "keep")).read() == "keep"


def test_hardlink_is_a_hardlink(layered_root):
    root = layered_root[0]
    a, b = os.stat(os.path.join(root, "new")), os.stat(os.path.join(root, "new2"))
    assert (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def test_symlink_kept_verbatim(layered_root):
    assert os.readlink(os.path.join(layered_root[0], "opt", "c")) == "/opt/a"


def test_setuid_and_setgid_dropped(layered_root):
    root = layered_root[0]
    for f in ("suid", "sgid"):
        mode = os.stat(os.path.join(root, "usr", "bin", f)).st_mode
        assert mode & (stat.S_ISUID | stat.S_ISGID) == 0
        assert mode & 0o111  # still executable


def test_foreign_owner_becomes_the_user(layered_root, user):
    st = os.stat(os.path.join(layered_root[0], "home", "owned"))
    assert (st.st_uid, st.st_gid) == (user.uid, user.gid)


def test_device_node_skipped_with_warning(layered_root):
    root, cp = layered_root
    assert not os.path.lexists(os.path.join(root, "dev", "null"))
    assert "warning: skipped device node /dev/null" in cp.stderr


def test_fifo_created(layered_root):
    assert stat.S_ISFIFO(os.lstat(os.path.join(layered_root[0], "fifo")).st_mode)


def test_read_only_directory_gets_owner_write(layered_root):
    mode = os.stat(os.path.join(layered_root[0], "ro")).st_mode & 0o777
    assert mode == 0o755


def test_image_with_read_only_dirs_can_be_removed(user, store_env, layered_root):
    cp = ok(hp(user, store_env, "rmi", "test/layered:1"))
    assert cp.stdout.splitlines()[-1].startswith("Deleted: sha256:")
    assert not os.path.exists(layered_root[0])


def test_uncompressed_layers(user, store_env, busybox_rootfs, user_tmp):
    from fixtures_image import busybox_entries
    img = make_image([busybox_entries(busybox_rootfs), [F("etc/x", "plain")]], compress="")
    p = write_oci_archive(os.path.join(user_tmp, "plain.tar"), img, "plain/img:1")
    ok(hp(user, store_env, "load", "-i", p))
    root = ok(hp(user, store_env, "inspect", "-f", "{{.Hpcrun.Directory}}",
                 "plain/img:1")).stdout.strip()
    assert open(os.path.join(root, "etc", "x")).read() == "plain"


def _load_root(user, store_env, user_tmp, layers, name="t/img:1"):
    p = write_oci_archive(os.path.join(user_tmp, "t.tar"), make_image(layers), name)
    ok(hp(user, store_env, "load", "-i", p))
    return ok(hp(user, store_env, "inspect", "-f", "{{.Hpcrun.Directory}}",
                 name)).stdout.strip()


def test_implicit_directories_are_0755(user, store_env, user_tmp):
    root = _load_root(user, store_env, user_tmp, [[F("a/b/c", "deep")]])
    assert os.stat(os.path.join(root, "a", "b")).st_mode & 0o777 == 0o755


def test_whiteout_in_a_missing_directory_is_a_no_op(user, store_env, user_tmp):
    root = _load_root(user, store_env, user_tmp,
                      [BASE, [WH("newdir/gone"), F("newdir/file", "here")]])
    assert os.listdir(os.path.join(root, "newdir")) == ["file"]


def test_symlink_replaces_lower_directory(user, store_env, user_tmp):
    root = _load_root(user, store_env, user_tmp,
                      [[D("lib"), F("lib/old.so", "x"), D("usr"), D("usr/lib")],
                       [S("lib", "usr/lib")]])
    assert os.readlink(os.path.join(root, "lib")) == "usr/lib"


def test_directory_replaces_lower_file(user, store_env, user_tmp):
    root = _load_root(user, store_env, user_tmp,
                      [[F("thing", "file")], [D("thing", 0o750), F("thing/x", "in dir")]])
    assert os.stat(os.path.join(root, "thing")).st_mode & 0o777 == 0o750
    assert open(os.path.join(root, "thing", "x")).read() == "in dir"


def _tree(root: str, skip=(".hpcrun", "dev/null")) -> dict:
    """relative path -> ('d',) / ('l', target) / ('f', content) / ('p',)"""
    out = {}
    for dp, dn, fn in os.walk(root):
        for n in dn + fn:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d",)
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("p",)
            else:
                with open(p, "rb") as f:
                    out[rel] = ("f", f.read())
    return out


def test_flattening_matches_umoci(user, store_env, user_tmp, image_files, layered_root):
    """umoci (an independent OCI implementation) unpacks the same layers rootless."""
    import shutil
    import subprocess
    util.require(shutil.which("umoci") is not None, "umoci is not installed")
    from fixtures_image import write_oci_layout
    lay = write_oci_layout(os.path.join(user_tmp, "lay"), image_files["layered"], "x")
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", lay], check=True)
    bundle = os.path.join(user_tmp, "bundle")
    util.as_user(user, ["umoci", "unpack", "--rootless", "--image", f"{lay}:x", bundle],
                 check=True)
    assert _tree(layered_root[0]) == _tree(os.path.join(bundle, "rootfs"))


# ----------------------------------------------------------------- hostile archives

@pytest.fixture
def outside(user, user_tmp):
    """A directory the user can write, outside the store, with a victim file in it."""
    d = os.path.join(user_tmp, "outside")
    os.mkdir(d)
    with open(os.path.join(d, "victim"), "w") as f:
        f.write("intact")
    os.chown(d, user.uid, user.gid)
    os.chown(os.path.join(d, "victim"), user.uid, user.gid)
    return d


BASE = [D("etc"), F("etc/hostname", "base\n"), D("tmp", 0o1777)]


def _hostile_cases(outside):
    return {
        "dotdot": ([BASE + [F("../../../evil", "x")]], "path with '..'"),
        "dotdot_inner": ([BASE + [F("etc/../../evil", "x")]], "path with '..'"),
        "absolute": ([BASE + [F(outside + "/evil", "x")]], "absolute path"),
        "symlink_then_write": ([BASE + [S("link", outside), F("link/evil", "x")]],
                               "goes through the symlink 'link'"),
        "symlink_lower_write_upper": ([BASE + [S("link", outside)], [F("link/evil", "x")]],
                                      "goes through the symlink 'link'"),
        "relative_symlink_escape": ([BASE + [S("up", "../../../../../../.."),
                                             F("up" + outside + "/evil", "x")]],
                                    "goes through the symlink 'up'"),
        "symlink_dir_then_dir": ([BASE + [S("l", outside), D("l/sub")]],
                                 "goes through the symlink 'l'"),
        "hardlink_dotdot": ([BASE + [H("hl", "../../../../etc/passwd")]], "path with '..'"),
        "hardlink_absolute": ([BASE + [H("hl", "/etc/passwd")]], "absolute path"),
        "hardlink_through_symlink": ([BASE + [S("l", "/etc"), H("hl", "l/passwd")]],
                                     "goes through the symlink 'l'"),
        "hardlink_missing": ([BASE + [H("hl", "etc/nothere")]], "which is not in the image"),
        "whiteout_dotdot": ([BASE, [F("../.wh.victim")]], "path with '..'"),
        "whiteout_through_symlink": ([BASE + [S("l", outside)], [WH("l/victim")]],
                                     "goes through the symlink 'l'"),
        "opaque_through_symlink": ([BASE + [S("l", outside)], [OPQ("l")]],
                                   "goes through the symlink 'l'"),
        "whiteout_of_parent": ([BASE, [F("etc/.wh..")]], "names no file"),
        "write_through_file": ([BASE + [F("etc/hostname/x", "x")]], "not a directory"),
        "hardlink_replacing_its_target_dir": ([BASE + [H("etc", "etc/hostname")]],
                                              "which it would replace"),
    }


CASES = sorted(_hostile_cases("/o"))


def _nothing_outside(outside):
    assert sorted(os.listdir(outside)) == ["victim"]
    assert open(os.path.join(outside, "victim")).read() == "intact"


def _no_image(store):
    assert records(store) == []
    # no unpacked image and no leftovers in tmp/
    assert os.listdir(os.path.join(store, "images")) == []
    assert [n for n in os.listdir(os.path.join(store, "tmp"))] == []


@pytest.mark.parametrize("case", CASES)
def test_hostile_archive_refused(case, user, store_env, user_tmp, outside):
    layers, message = _hostile_cases(outside)[case]
    img = make_image(layers)
    p = write_oci_archive(os.path.join(user_tmp, "hostile.tar"), img, "evil/img:1")
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1, cp.stderr
    first = cp.stderr.splitlines()[0]
    assert first.startswith("hpcrun: error: refusing unsafe layer: "), cp.stderr
    assert message in first
    assert "hint: the image is unsafe" in cp.stderr
    _nothing_outside(outside)
    _no_image(store_env["HPCRUN_STORE"])
    for dp, dn, fn in os.walk(user_tmp):
        assert "evil" not in fn and "hl" not in fn


@pytest.mark.parametrize("case", ["symlink_then_write", "whiteout_through_symlink"])
def test_hostile_archive_refused_for_squashfs_too(case, user, store_env, user_tmp, outside):
    layers, message = _hostile_cases(outside)[case]
    p = write_oci_archive(os.path.join(user_tmp, "h.tar"), make_image(layers), "evil/img:1")
    cp = hp(user, store_env, "load", "--format", "squashfs", "-i", p)
    assert cp.returncode == 1 and message in cp.stderr
    _nothing_outside(outside)
    _no_image(store_env["HPCRUN_STORE"])


def _oci_with_blob(user_tmp, blob: bytes, name="x/y:1", raw: bytes | None = None):
    """An OCI archive whose single layer blob is `blob`; `raw` is the uncompressed tar
    (the config's diff_id), when the test wants the image to be consistent."""
    from fixtures_image import Image, sha
    import json
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers",
                                 "diff_ids": [sha(raw if raw is not None else blob)]}}).encode()
    man = json.dumps({"schemaVersion": 2,
                      "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": sha(cfg), "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                  "digest": sha(blob), "size": len(blob)}]}).encode()
    img = Image([blob], cfg, man, [sha(raw if raw is not None else blob)])
    return write_oci_archive(os.path.join(user_tmp, "one.tar"), img, name)


def test_truncated_gzip_refused(user, store_env, user_tmp):
    from fixtures_image import tar_bytes
    blob = tar_bytes(BASE + [F("big", os.urandom(200_000))], "gzip")
    p = _oci_with_blob(user_tmp, blob[: len(blob) // 2])
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1
    assert "truncated compressed stream" in cp.stderr.splitlines()[0]
    _no_image(store_env["HPCRUN_STORE"])


def test_corrupt_gzip_refused(user, store_env, user_tmp):
    from fixtures_image import tar_bytes
    blob = bytearray(tar_bytes(BASE + [F("big", os.urandom(50_000))], "gzip"))
    for i in range(100, 400):
        blob[i] ^= 0xFF
    p = _oci_with_blob(user_tmp, bytes(blob))
    cp = hp(user, store_env, "load", "-i", p)
    # zlib notices the damage, or the tar reader does (deflate may decode garbage)
    assert cp.returncode == 1 and cp.stderr.startswith("hpcrun: error: layer 1: ")
    _no_image(store_env["HPCRUN_STORE"])


def test_decompression_bomb_refused(user, store_env, user_tmp):
    from fixtures_image import tar_bytes
    blob = tar_bytes(BASE + [F("zeros", b"\0" * (3 << 20))], "gzip")
    assert len(blob) < 64 << 10
    p = _oci_with_blob(user_tmp, blob)
    env = dict(store_env, HPCRUN_MAX_IMAGE_SIZE="1M")
    cp = hp(user, env, "load", "-i", p)
    assert cp.returncode == 1
    assert "unpacks to more than" in cp.stderr and "max_image_size" in cp.stderr
    _no_image(store_env["HPCRUN_STORE"])


def test_bomb_limit_does_not_refuse_smaller_images(user, store_env, user_tmp):
    from fixtures_image import tar_bytes
    raw = tar_bytes(BASE + [F("zeros", b"\0" * (512 << 10))])
    p = _oci_with_blob(user_tmp, gzip.compress(raw), raw=raw)
    env = dict(store_env, HPCRUN_MAX_IMAGE_SIZE="1M")
    ok(hp(user, env, "load", "-i", p))


def test_not_a_tar_layer_refused(user, store_env, user_tmp):
    p = _oci_with_blob(user_tmp, gzip.compress(b"hello, not a tar" * 100))
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1 and "layer 1" in cp.stderr
    _no_image(store_env["HPCRUN_STORE"])


# ----------------------------------------------------------------- zstd layers

def _zstd(data: bytes) -> bytes:
    import shutil
    import subprocess
    util.require(shutil.which("zstd") is not None, "zstd is not installed")
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                          check=True).stdout


def test_zstd_layer(user, store_env, user_tmp):
    from fixtures_image import tar_bytes
    raw = tar_bytes(BASE + [F("etc/z", "zstd layer")])
    p = _oci_with_blob(user_tmp, _zstd(raw), raw=raw)
    ok(hp(user, store_env, "load", "-i", p))
    root = ok(hp(user, store_env, "inspect", "-f", "{{.Hpcrun.Directory}}",
                 "x/y:1")).stdout.strip()
    assert open(os.path.join(root, "etc", "z")).read() == "zstd layer"


def test_truncated_zstd_refused(user, store_env, user_tmp):
    from fixtures_image import tar_bytes
    blob = _zstd(tar_bytes(BASE + [F("big", os.urandom(300_000))]))
    p = _oci_with_blob(user_tmp, blob[: len(blob) // 2])
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1
    assert "compressed stream" in cp.stderr.splitlines()[0]
    _no_image(store_env["HPCRUN_STORE"])



# ----------------------------------------------------------------- diff_ids

def test_layer_not_matching_config_diff_id_refused(user, store_env, user_tmp):
    """The compressed blob is what the manifest names, but its content is not what the
    image config says: refused after unpacking, nothing recorded."""
    from fixtures_image import tar_bytes
    raw = tar_bytes(BASE + [F("etc/real", "x")])
    other = tar_bytes(BASE + [F("etc/claimed", "y")])
    p = _oci_with_blob(user_tmp, gzip.compress(raw), raw=other)
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1
    assert "does not match the image config's diff_id" in cp.stderr.splitlines()[0]
    _no_image(store_env["HPCRUN_STORE"])


def test_layer_not_matching_diff_id_refused_for_squashfs(user, store_env, user_tmp):
    from fixtures_image import tar_bytes
    raw = tar_bytes(BASE + [F("etc/real", "x")])
    other = tar_bytes(BASE + [F("etc/claimed", "y")])
    p = _oci_with_blob(user_tmp, gzip.compress(raw), raw=other)
    cp = hp(user, store_env, "load", "--format", "squashfs", "-i", p)
    assert cp.returncode == 1 and "diff_id" in cp.stderr
    _no_image(store_env["HPCRUN_STORE"])


def test_uncompressed_layer_not_matching_diff_id_refused(user, store_env, user_tmp):
    from fixtures_image import tar_bytes
    raw = tar_bytes(BASE + [F("etc/real", "x")])
    other = tar_bytes(BASE + [F("etc/claimed", "y")])
    p = _oci_with_blob(user_tmp, raw, raw=other)
    cp = hp(user, store_env, "load", "-i", p)
    assert cp.returncode == 1 and "does not match the image config's diff_id" in cp.stderr
    _no_image(store_env["HPCRUN_STORE"])


def test_device_warning_once_for_two_formats(user, store_env, image_files):
    cp = ok(hp(user, store_env, "load", "--format", "dir,squashfs", "-i",
               image_files["layered_docker"]))
    assert cp.stderr.count("skipped device node /dev/null") == 1
