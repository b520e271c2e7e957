"""`hpcrun convert SRC DST` (issue 13): between a root filesystem directory, a squashfs
file, a tarball and a store image, the format taken from DST's spelling or --format;
atomic; the image config travels along. Real squashfs-tools, as the unprivileged user.
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile

import pytest

import util
from fixtures_image import hp, ok


@pytest.fixture
def work(user, store_env, image_files):
    """A directory of the test user's and a store holding test/busybox:1 with a config."""
    util.require(shutil.which("mksquashfs") is not None and shutil.which("unsquashfs")
                 is not None, "squashfs-tools")
    d = os.path.join(os.path.dirname(store_env["HPCRUN_STORE"]), "work")
    util.as_user(user, ["mkdir", d], check=True)
    tar = os.path.join(d, "rootfs.tar")
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    ok(hp(user, store_env, "export", "-o", tar, "test/busybox:1"))
    ok(hp(user, store_env, "import", "-c", "ENV GREETING=from-config", "-c",
          'CMD ["sh", "-c", "echo $GREETING"]', tar, "test/conf:1"))
    return d


def _run(user, env, image, cwd):
    return ok(hp(user, env, "run", image, cwd=cwd)).stdout


def _leftovers(d: str) -> list:
    return sorted(n for n in os.listdir(d) if ".hpcrun-convert-" in n)


def test_round_trip_through_every_format_keeps_the_config(user, store_env, work, rt_fuse_open):
    # The squashfs files run mounted with squashfuse (rt_fuse_open: a node that lets users
    # use FUSE; here /dev/fuse is root-only).
    env = store_env
    steps = [("test/conf:1", "img.sqfs"), ("img.sqfs", "./tree"), ("tree", "img.tar.gz"),
             ("img.tar.gz", "test/back:1"), ("test/back:1", "again.tar"),
             ("again.tar", "again.squashfs"), ("again.squashfs", "test/back:2"),
             ("test/back:2", "tree2/")]
    for src, dst in steps:
        cp = ok(hp(user, env, "convert", src, dst, cwd=work))
        written = cp.stdout.strip()
        if "/" in dst and not dst.startswith("test/") or dst.endswith(
                (".sqfs", ".tar", ".gz", ".squashfs")):
            assert written == os.path.join(work, dst.strip("./").rstrip("/")), (src, dst)
            image = written
        else:
            assert written == dst
            image = dst
        if not image.endswith((".tar", ".gz")):                   # tarballs do not run
            assert _run(user, env, image, work) == "from-config\n", (src, dst)
    assert open(os.path.join(work, "img.sqfs"), "rb").read(4) == b"hsqs"
    with tarfile.open(os.path.join(work, "img.tar.gz")) as t:   # gzip, config inside
        conf = json.load(t.extractfile(".hpcrun/config.json"))
    assert "GREETING=from-config" in conf["config"]["Env"]
    doc = json.loads(ok(hp(user, env, "inspect", "test/back:2")).stdout)[0]
    assert "GREETING=from-config" in doc["Config"]["Env"]
    assert doc["Config"]["Cmd"] == ["sh", "-c", "echo $GREETING"]
    # the tree is the user's and a normal directory image
    assert os.stat(os.path.join(work, "tree2", "bin", "busybox")).st_uid == user.uid
    assert _leftovers(work) == []


def test_format_option_overrides_the_spelling(user, store_env, work):
    cp = ok(hp(user, store_env, "convert", "--format", "squashfs", "test/conf:1", "image",
               cwd=work))
    assert cp.stdout == os.path.join(work, "image") + "\n"
    assert open(os.path.join(work, "image"), "rb").read(4) == b"hsqs"
    ok(hp(user, store_env, "convert", "--format", "tar", "image", "plain", cwd=work))
    with tarfile.open(os.path.join(work, "plain")) as t:
        assert "bin/busybox" in t.getnames()
    cp = ok(hp(user, store_env, "convert", "--format", "store", "image", "named.tar",
               cwd=work))
    assert cp.stdout == "named.tar:latest\n" and not os.path.exists(os.path.join(work, "named.tar"))
    assert _run(user, store_env, "named.tar", work) == "from-config\n"


def test_existing_destination_is_refused_and_an_empty_dir_filled(user, store_env, work):
    ok(hp(user, store_env, "convert", "test/conf:1", "a.sqfs", cwd=work))
    before = os.stat(os.path.join(work, "a.sqfs"))
    cp = hp(user, store_env, "convert", "test/conf:1", "a.sqfs", cwd=work)
    assert cp.returncode == 1
    assert cp.stderr.splitlines()[0] == "hpcrun: error: convert: a.sqfs already exists"
    assert os.stat(os.path.join(work, "a.sqfs")).st_mtime_ns == before.st_mtime_ns
    util.as_user(user, ["mkdir", os.path.join(work, "empty")], check=True)
    ok(hp(user, store_env, "convert", "a.sqfs", "empty", cwd=work))
    assert os.path.isfile(os.path.join(work, "empty", ".hpcrun", "config.json"))
    cp = hp(user, store_env, "convert", "a.sqfs", "empty", cwd=work)
    assert cp.returncode == 1 and "already exists" in cp.stderr


SAME = {("bad-magic.sqfs", "out.sqfs"), ("truncated.tar.gz", "out.tar")}   # usage errors


@pytest.mark.parametrize("bad", ["garbage", "bad-magic.sqfs", "truncated.tar.gz"])
@pytest.mark.parametrize("dst", ["./out", "out.sqfs", "out.tar", "test/out:1"])
def test_a_bad_source_leaves_nothing_behind(user, store_env, work, bad, dst):
    src = os.path.join(work, bad)
    if bad == "garbage":
        data = b"not an image\n"
    elif bad == "bad-magic.sqfs":
        data = b"hsqs" + b"\0" * 4096
    else:
        ok(hp(user, store_env, "convert", "test/conf:1", "whole.tar.gz", cwd=work))
        with open(os.path.join(work, "whole.tar.gz"), "rb") as f:
            whole = f.read()
        data = whole[:len(whole) // 2]
    util.as_user(user, ["sh", "-c", f"cat > {src}"], input=data, text=False, check=True)
    images = ok(hp(user, store_env, "images", "-q")).stdout
    store_tmp = os.path.join(store_env["HPCRUN_STORE"], "tmp")
    cp = hp(user, store_env, "convert", bad, dst, cwd=work)
    assert cp.returncode == (2 if (bad, dst) in SAME else 1), cp
    lines = cp.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("hpcrun: error: ") and \
        lines[1].startswith("hint: "), cp.stderr
    assert "Traceback" not in cp.stderr
    assert not os.path.lexists(os.path.join(work, dst.lstrip("./")))
    assert _leftovers(work) == []
    assert ok(hp(user, store_env, "images", "-q")).stdout == images
    assert os.listdir(store_tmp) == []


def test_same_format_and_bad_spellings_are_refused(user, store_env, work):
    ok(hp(user, store_env, "convert", "test/conf:1", "./d", cwd=work))
    for args, msg in [
            (("./d", "./d2"), "both are in the dir format"),
            (("test/conf:1", "test/other:1"), "both are in the store format"),
            (("./missing", "x.sqfs"), "no such file or directory: ./missing"),
            (("no/such:image", "x.sqfs"), "no such image: no/such:image"),
            (("--format", "zip", "./d", "x"), "unknown format 'zip'"),
            (("./d", "/nonexistent-dir/x.sqfs"), "directory /nonexistent-dir does not exist"),
            (("./d", "Upper/Case:1"), "")]:
        cp = hp(user, store_env, "convert", *args, cwd=work)
        assert cp.returncode in (1, 2), (args, cp)
        assert cp.stderr.startswith("hpcrun: error: ") and msg in cp.stderr, (args, cp.stderr)
        assert "Traceback" not in cp.stderr
    assert _leftovers(work) == []


def test_store_form_still_converts_in_place(user, store_env, work):
    cp = ok(hp(user, store_env, "convert", "--format", "squashfs", "test/conf:1"))
    assert cp.stdout.strip().endswith("/image.sqfs")
    cp = hp(user, store_env, "convert", "test/conf:1")
    assert cp.returncode == 2 and "needs --format" in cp.stderr
