"""A new image whose layers extend a stored image's: its directory is a hard-link clone
of the parent's tree with only the other layers unpacked on top (Store._clone_dir).

Checked as the unprivileged user, by loading images with `hpcrun load`: the cloned tree
equals a fresh unpack of every layer in another store (files, contents, modes, times,
symlinks, hard links, the new layers' whiteouts and opaque directories), the parent's
files are shared and never changed, removing either image leaves the other whole, and a
SIGKILL in the middle leaves no half image.
"""
from __future__ import annotations

import os
import re
import shutil
import stat

import pytest

import util
from fixtures_image import (D, F, FIFO, H, OPQ, S, WH, busybox_entries, hp, make_image, ok,
                            records, tree_of, write_docker_archive)

pytestmark = [pytest.mark.userns, pytest.mark.root]


def _layers(bb_root: str) -> list:
    """A parent layer (busybox plus files to hide and replace) and two layers on it."""
    l1 = busybox_entries(bb_root, [
        F("etc/old", "old\n"), D("opt"), D("opt/a"), F("opt/a/1", "1"), F("opt/a/2", "2"),
        D("opt/b"), F("opt/b/x", "x"), F("opt/b/y", "y"), D("data"),
        F("data/keep", "keep", mtime=1_500_000_000), F("data/replace", "old content"),
        D("gone"), F("gone/f", "f"), F("exec", "#!/bin/sh\n", mode=0o750),
        D("ro", mode=0o555), F("ro/file", "r", mode=0o444), FIFO("fifo1"),
    ])
    l2 = [
        WH("etc/old"), OPQ("opt/a"), F("opt/a/3", "3"), WH("gone"),
        F("data/replace", "new content", mode=0o600), F("new", "new\n"), H("new2", "new"),
        H("keep-link", "data/keep"),           # a new hard link to a parent's file
        F("ro/added", "a"), F("usr/bin/suid", "#!/bin/sh\n", mode=0o4755),
    ]
    l3 = [WH("opt/b/x"), S("opt/c", "/opt/a"), F("etc/motd", "layer three\n"),
          D("data", mode=0o711), F("deep/er/file", "implicit dirs")]
    return [l1, l2, l3]


@pytest.fixture(scope="module")
def images(busybox_rootfs):
    """Docker archives of the parent (layer 1) and the child (layers 1-3), readable by
    the test user; plain tar layers, so the shared layer has one digest."""
    ls = _layers(busybox_rootfs)
    parent = make_image(ls[:1], compress="", cmd=["/bin/sh"])
    child = make_image(ls, compress="", cmd=["/bin/cat", "/etc/motd"])
    assert child.layers[0] == parent.layers[0]
    d = util.shared_tmpdir("hpcrun-clone-")
    # a sibling of the child: layers 1-2, then another layer 3 (a rebuild after its
    # last step changed): the child donates identical files of layer 2
    sib_l3 = [WH("opt/b/x"), S("opt/c", "/opt/a"), F("etc/motd", "sibling\n"),
              F("deep/er/file", "implicit dirs", mode=0o600)]
    sibling = make_image(ls[:2] + [sib_l3], compress="", cmd=["/bin/cat", "/etc/motd"])
    yield {"parent": parent, "child": child, "sibling": sibling, "dir": d,
           "sibling_tar": write_docker_archive(os.path.join(d, "sibling.tar"), sibling,
                                               ["test/sibling:1"]),
           "parent_tar": write_docker_archive(os.path.join(d, "parent.tar"), parent,
                                              ["test/parent:1"]),
           "child_tar": write_docker_archive(os.path.join(d, "child.tar"), child,
                                             ["test/child:1"])}
    shutil.rmtree(d, ignore_errors=True)


def _root(store: str, img) -> str:
    return os.path.join(store, "images", img.id.split(":")[1], "rootfs")


def _load(user, env, path):
    return ok(hp(user, dict(env, HPCRUN_VERBOSE="1"), "load", "-i", path))


@pytest.fixture
def both(user, store_env, images):
    """A store holding the parent, then the child (cloned from it)."""
    _load(user, store_env, images["parent_tar"])
    cp = _load(user, store_env, images["child_tar"])
    assert "onto a clone of " + images["parent"].id.split(":")[1][:12] in cp.stderr, cp.stderr
    assert "2 of 3 layers to unpack" in cp.stderr
    return store_env["HPCRUN_STORE"]


def test_cloned_tree_equals_a_fresh_unpack(user, both, images, user_tmp):
    fresh_env = {"HPCRUN_STORE": os.path.join(user_tmp, "fresh-store")}
    cp = _load(user, fresh_env, images["child_tar"])
    assert "onto a clone" not in cp.stderr
    cloned, cloned_links = tree_of(_root(both, images["child"]))
    fresh, fresh_links = tree_of(_root(fresh_env["HPCRUN_STORE"], images["child"]))
    assert cloned == fresh
    assert cloned_links == fresh_links
    # the new layers' whiteouts, opaque directory and replacements are applied
    for gone in ("etc/old", "opt/a/1", "opt/a/2", "gone", "gone/f", "opt/b/x"):
        assert gone not in cloned
    for here in ("opt/a/3", "opt/b/y", "opt/c", "ro/added", "deep/er/file", "fifo1"):
        assert here in cloned
    assert stat.S_IMODE(cloned["data"][1]) == 0o711
    assert ["data/keep", "keep-link"] in cloned_links and ["new", "new2"] in cloned_links
    # the same record figures as a fresh unpack: each layer's size in the history
    a = ok(hp(user, {"HPCRUN_STORE": both}, "history", "test/child:1")).stdout
    b = ok(hp(user, fresh_env, "history", "test/child:1")).stdout
    assert [ln.split()[-1] for ln in a.splitlines()] == [ln.split()[-1] for ln in b.splitlines()]


def test_parent_files_are_shared_and_unchanged(user, both, images, busybox_rootfs):
    p, c = _root(both, images["parent"]), _root(both, images["child"])
    assert os.stat(os.path.join(p, "bin", "busybox")).st_ino == \
        os.stat(os.path.join(c, "bin", "busybox")).st_ino
    # what the child replaced or hid is still the parent's
    with open(os.path.join(p, "data", "replace")) as f:
        assert f.read() == "old content"
    with open(os.path.join(c, "data", "replace")) as f:
        assert f.read() == "new content"
    for rel in ("etc/old", "opt/a/1", "gone/f", "opt/b/x"):
        assert os.path.isfile(os.path.join(p, rel)), rel
    assert stat.S_IMODE(os.stat(os.path.join(p, "data")).st_mode) == 0o755
    assert not os.path.lexists(os.path.join(p, "keep-link"))
    assert ok(hp(user, {"HPCRUN_STORE": both}, "run", "test/child:1")).stdout == "layer three\n"


def test_removing_the_child_leaves_the_parent_whole(user, both, images, user_tmp):
    env = {"HPCRUN_STORE": both}
    before = tree_of(_root(both, images["parent"]))
    ok(hp(user, env, "rmi", "test/child:1"))
    assert not os.path.exists(os.path.join(both, "images", images["child"].id.split(":")[1]))
    assert tree_of(_root(both, images["parent"])) == before
    fresh_env = {"HPCRUN_STORE": os.path.join(user_tmp, "fresh-parent")}
    _load(user, fresh_env, images["parent_tar"])
    assert tree_of(_root(fresh_env["HPCRUN_STORE"], images["parent"]))[0] == before[0]
    assert ok(hp(user, env, "run", "test/parent:1", "--", "cat", "/data/replace")).stdout \
        == "old content"


def test_pruning_the_parent_leaves_the_child_whole(user, both, images):
    env = {"HPCRUN_STORE": both}
    before = tree_of(_root(both, images["child"]))
    ok(hp(user, env, "rmi", "test/parent:1"))
    ok(hp(user, env, "prune"))
    assert records(both) == [images["child"].id.split(":")[1] + ".json"]
    assert tree_of(_root(both, images["child"])) == before
    assert ok(hp(user, env, "run", "test/child:1")).stdout == "layer three\n"


@pytest.mark.parametrize("step", ["cloned", "extracted", "format-renamed"])
def test_sigkill_while_cloning_leaves_no_half_image(step, user, store_env, images):
    _load(user, store_env, images["parent_tar"])
    store = store_env["HPCRUN_STORE"]
    before = tree_of(_root(store, images["parent"]))
    cp = hp(user, dict(store_env, HPCRUN_TEST_CRASH_AT=step), "load", "-i",
            images["child_tar"])
    assert cp.returncode == -9
    listed = ok(hp(user, store_env, "images", "-q", "--no-trunc")).stdout.split()
    assert listed == [images["parent"].id]
    assert os.listdir(os.path.join(store, "tmp")) == []      # cleaned by that command
    assert sorted(os.listdir(os.path.join(store, "images"))) == \
        [images["parent"].id.split(":")[1]]
    assert tree_of(_root(store, images["parent"])) == before
    cp = _load(user, store_env, images["child_tar"])
    assert "onto a clone" in cp.stderr
    assert ok(hp(user, store_env, "run", "test/child:1")).stdout == "layer three\n"


def test_prune_reports_only_what_removing_a_clone_frees(user, both, images):
    """The child's files shared with the parent free nothing when the child goes: prune
    reports the blocks of its own files and blobs, far less than busybox alone."""
    env = {"HPCRUN_STORE": both}
    ok(hp(user, env, "tag", "test/parent:1", "test/child:1"))     # the child is untagged
    out = ok(hp(user, env, "prune")).stdout
    assert records(both) == [images["parent"].id.split(":")[1] + ".json"]
    num, unit = re.fullmatch(r"Total reclaimed space: ([0-9.]+)([kMG]?B)\n",
                             out.splitlines(True)[-1]).groups()
    freed = float(num) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    busybox = os.lstat(os.path.join(_root(both, images["parent"]), "bin", "busybox"))
    assert freed < busybox.st_blocks * 512 / 4, out


def test_a_sibling_links_the_identical_files_of_the_child(user, both, images, user_tmp):
    """Layers 1-2 shared with the child, layer 3 not: the parent is cloned, and layer
    2's files are linked from the child where size, mode, time and bytes agree."""
    cp = _load(user, {"HPCRUN_STORE": both}, images["sibling_tar"])
    child_hex = images["child"].id.split(":")[1]
    assert f"identical files linked from {child_hex[:12]}" in cp.stderr, cp.stderr
    s_root, c_root = _root(both, images["sibling"]), _root(both, images["child"])

    def ino(root, rel):
        return os.lstat(os.path.join(root, rel)).st_ino
    for rel in ("new", "data/replace", "opt/a/3", "ro/added"):       # layer 2: linked
        assert ino(s_root, rel) == ino(c_root, rel), rel
    assert ino(s_root, "new2") == ino(s_root, "new")                   # its hard link too
    assert ino(s_root, "etc/motd") != ino(c_root, "etc/motd")          # other bytes
    assert ino(s_root, "deep/er/file") != ino(c_root, "deep/er/file")  # another mode
    fresh_env = {"HPCRUN_STORE": os.path.join(user_tmp, "fresh-sibling")}
    _load(user, fresh_env, images["sibling_tar"])
    assert tree_of(s_root) == tree_of(_root(fresh_env["HPCRUN_STORE"], images["sibling"]))
    assert ok(hp(user, {"HPCRUN_STORE": both}, "run", "test/sibling:1")).stdout == "sibling\n"
    # the child's files are still the child's
    with open(os.path.join(c_root, "etc", "motd")) as f:
        assert f.read() == "layer three\n"
