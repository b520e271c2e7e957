"""A RUN's root as an overlay (the store's base and the stage's earlier layers below,
the step's own upper directory on top): copy-up keeps every lower file as it was, the
step's manifest is read from the upper directory (whiteouts, opaque directories, kind
changes), a RUN after cache hits or a COPY sees every earlier step, and the image equals
the one the copied root (HPCRUN_NO_OVERLAY=1) gives.

As the unprivileged user, on the session's busybox image (fixtures of test_build.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess

import pytest

import util
from fixtures_image import hp, ok, tree_of
from hpcrun.build.executor import MAX_LAYERS
from test_build import (_steps, bstore, build, build_until_started, ctx,  # noqa: F401
                        inspect, run)

pytestmark = [pytest.mark.userns, pytest.mark.root]


def _root(store, image_id):
    return os.path.join(store, "images", image_id.split(":")[1], "rootfs")


def _objects_intact(store):
    """Every object of the build cache still holds the content its name says."""
    d = os.path.join(store, "build-cache", "objects")
    bad = []
    for name in os.listdir(d):
        with open(os.path.join(d, name), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != name:
                bad.append(name)
    return bad


def test_run_writes_in_place_only_through_copy_up(user, bstore, ctx):
    """A RUN that overwrites a base file in place (dd conv=notrunc: no new inode) and a
    later RUN that does the same to an earlier RUN's file change only their own
    layers: the base image, the cache's objects and a sibling reusing the first step
    see the old bytes."""
    store = bstore["HPCRUN_STORE"]
    base = inspect(user, bstore, "test/busybox:1")
    os_release = os.path.join(_root(store, base["Id"]), "etc", "os-release")
    with open(os_release, "rb") as f:
        before = f.read()
    ino = os.stat(os_release).st_ino
    ctx("Dockerfile", "FROM test/busybox:1\n"
                      "RUN printf one > /made && printf XX | dd of=/etc/os-release conv=notrunc\n"
                      "RUN printf two | dd of=/made bs=1 seek=3 conv=notrunc\n")
    ok(build(user, bstore, ctx.dir, "-t", "inplace:1"))
    assert run(user, bstore, "inplace:1", "cat", "/made") == "onetwo"
    assert run(user, bstore, "inplace:1", "head", "-c", "4", "/etc/os-release") == "XX=b"
    with open(os_release, "rb") as f:
        assert f.read() == before
    assert os.stat(os_release).st_ino == ino
    assert run(user, bstore, "test/busybox:1", "cat", "/etc/os-release") == before.decode()
    assert _objects_intact(store) == []
    # the first step's layer still holds "one": a sibling built on it reads that
    ctx("Dockerfile", "FROM test/busybox:1\n"
                      "RUN printf one > /made && printf XX | dd of=/etc/os-release conv=notrunc\n"
                      "RUN cat /made > /seen\n")
    cp = ok(build(user, bstore, ctx.dir, "-t", "inplace:2"))
    assert _steps(cp.stderr) == ["hit", "run"]
    assert run(user, bstore, "inplace:2", "cat", "/seen") == "one"


REMOVALS = """FROM test/busybox:1
RUN rm -rf /usr && mkdir -p /usr/new && echo n > /usr/new/f && rm /bin/vi
RUN rm /etc/os-release && mkdir /etc/os-release && echo g > /etc/os-release/x && chmod 0711 /etc
RUN rm -r /usr/new && echo file > /usr/new && mkfifo /fifo && ln -s /usr/new /lnk
RUN rm /etc/os-release/x && rmdir /etc/os-release && echo back > /etc/os-release
"""


def test_removals_opaque_directories_and_kind_changes(user, bstore, ctx):
    """A removed base directory made again hides the base's contents (an opaque
    directory), a file that becomes a directory and back, a directory of an earlier
    RUN that becomes a file: the image holds exactly what the last RUN saw."""
    ctx("Dockerfile", REMOVALS)
    ok(build(user, bstore, ctx.dir, "-t", "rm:1"))
    out = run(user, bstore, "rm:1", "sh", "-c",
              "ls /usr; cat /usr/new /etc/os-release; test -p /fifo && echo fifo; "
              "readlink /lnk; test -e /bin/vi || echo no-vi; stat -c %a /etc")
    assert out == "new\nfile\nback\nfifo\n/usr/new\nno-vi\n711\n"


def test_a_directory_the_run_left_unreadable_is_recorded_whole(user, bstore, ctx):
    ctx("Dockerfile", "FROM test/busybox:1\nRUN mkdir -p /locked/in && echo x > /locked/in/f "
                      "&& chmod 0 /locked/in\nRUN stat -c %a /locked/in > /mode\n")
    ok(build(user, bstore, ctx.dir, "-t", "locked:1"))
    assert run(user, bstore, "locked:1", "cat", "/mode") == "0\n"
    out = ok(hp(user, bstore, "run", "--fakeroot", "locked:1", "--", "cat", "/locked/in/f")).stdout
    assert out == "x\n"


def test_overlay_and_copied_roots_give_the_same_image(user, bstore, ctx):
    """The same Dockerfile built on an overlay root and on a copied one
    (HPCRUN_NO_OVERLAY=1, --no-cache) gives the same tree and the same layers."""
    ctx("data.txt", "data\n")
    ctx("Dockerfile", REMOVALS + "COPY data.txt /etc/data.txt\nRUN cat /etc/data.txt > /copied\n")
    ok(build(user, bstore, ctx.dir, "-t", "eq:ovl"))
    cp = ok(build(user, dict(bstore, HPCRUN_NO_OVERLAY="1"), ctx.dir, "--no-cache",
                  "-t", "eq:copy"))
    assert _steps(cp.stderr) == ["run"] * 6
    store = bstore["HPCRUN_STORE"]
    a, b = inspect(user, bstore, "eq:ovl"), inspect(user, bstore, "eq:copy")
    assert a["RootFS"]["Layers"] == b["RootFS"]["Layers"]
    trees = []
    for img in (a, b):
        tree, links = tree_of(_root(store, img["Id"]))
        tree.pop(".hpcrun/config.json")     # its "created" differs
        trees.append((tree, links))
    assert trees[0] == trees[1]
    assert run(user, bstore, "eq:ovl", "cat", "/copied") == "data\n"


def test_a_run_after_cache_hits_and_copies_sees_every_earlier_step(user, bstore, ctx):
    """The layer made before a RUN that misses after hits (or after a COPY) carries the
    earlier steps' files and whiteouts; the base's .hpcrun stays hidden, as in a copy."""
    ctx("a.txt", "from a\n")
    ctx("Dockerfile", "FROM test/busybox:1\nRUN rm /bin/vi && echo one > /one\n"
                      "COPY a.txt /one\nRUN echo first\n")
    ok(build(user, bstore, ctx.dir, "-t", "late:1"))
    ctx("Dockerfile", "FROM test/busybox:1\nRUN rm /bin/vi && echo one > /one\n"
                      "COPY a.txt /one\n"
                      "RUN test ! -e /bin/vi && cat /one > /seen && echo two > /two\n"
                      "COPY a.txt /two\nRUN cat /two >> /seen && test ! -e /.hpcrun\n")
    cp = ok(build(user, bstore, ctx.dir, "-t", "late:2"))
    assert _steps(cp.stderr) == ["hit", "hit", "run", "run", "run"]
    assert run(user, bstore, "late:2", "cat", "/seen") == "from a\nfrom a\n"


def test_user_run_sees_the_base_root_mode(user, bstore, ctx):
    """The merged root shows the upper directory's mode: the base's root's (0755), so
    an unprivileged USER can list it."""
    ctx("Dockerfile", "FROM test/busybox:1\nUSER 1000\nRUN ls / > /tmp/ls && stat -c %a / "
                      "> /tmp/mode\nUSER root\nRUN cp /tmp/mode /tmp/ls /\n")
    ok(build(user, bstore, ctx.dir, "-t", "mode:1"))
    assert run(user, bstore, "mode:1", "cat", "/mode") == "755\n"
    assert "bin" in run(user, bstore, "mode:1", "cat", "/ls").split()


def test_the_base_cannot_be_removed_while_a_run_uses_it(user, bstore, ctx):
    """The base image is a layer of the RUN's root: the build holds its lease, so rmi
    is refused meanwhile, and the build finishes on an intact base."""
    hold = f"/dev/shm/hpcrun-test-build-ovl-hold-{os.getpid()}"
    with open(hold, "w"):
        pass
    ctx("Dockerfile", f"FROM test/busybox:1\nRUN echo started; while [ -e {hold} ]; "
                      "do sleep 0.1; done; cat /etc/os-release > /os\n")
    p = build_until_started(user, bstore, "held:1", ctx.dir)
    try:
        rmi = hp(user, bstore, "rmi", "test/busybox:1")
        assert rmi.returncode != 0
        assert "a container is starting on it" in rmi.stderr
    finally:
        os.unlink(hold)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
    assert p.returncode == 0, err
    assert "busybox-test" in run(user, bstore, "held:1", "cat", "/os")


def test_a_stage_deeper_than_the_layer_limit_is_merged_and_whole(user, bstore, ctx):
    """More RUN steps in a stage than MAX_LAYERS: the overlay takes 120 layers (through
    the C core's short links), then the stage's layers are merged into one made from
    the manifest, and the last RUN still sees every earlier step."""
    n = MAX_LAYERS + 4
    lines = ["FROM test/busybox:1", "RUN rm /bin/vi && echo 0 > /f0"]
    lines += [f"RUN echo {i} > /f{i} && rm /f{i - 1}" for i in range(1, n)]
    lines += [f"RUN test ! -e /bin/vi && test ! -e /f{n - 2} && cat /f{n - 1} > /last "
              "&& ls / | grep -c '^f' > /count"]
    ctx("Dockerfile", "\n".join(lines) + "\n")
    ok(build(user, bstore, ctx.dir, "-q", "-t", "deep:1", timeout=600))
    assert run(user, bstore, "deep:1", "cat", "/last", "/count") == f"{n - 1}\n1\n"


def test_trees_are_made_in_directories_marked_top_of_hierarchy(user, bstore, ctx, user_tmp):
    """The store's tmp/ and the build cache's work/ carry chattr's T flag where the
    file system has it (ext4): each image tree or build tree made there starts in a
    block group of its own (fstree.mark_top says why)."""
    probe = os.path.join(user_tmp, "probe-T")
    os.mkdir(probe)
    util.require(shutil.which("lsattr") is not None and subprocess.run(
        ["chattr", "+T", probe], capture_output=True).returncode == 0,
        "this file system has no T flag (chattr +T)")
    ctx("Dockerfile", "FROM test/busybox:1\nRUN echo x > /x\n")
    ok(build(user, bstore, ctx.dir, "-t", "top:1"))
    store = bstore["HPCRUN_STORE"]
    for d in (os.path.join(store, "tmp"), os.path.join(store, "build-cache", "work")):
        flags = subprocess.run(["lsattr", "-d", d], capture_output=True, text=True,
                               check=True).stdout.split()[0]
        assert "T" in flags, (d, flags)
