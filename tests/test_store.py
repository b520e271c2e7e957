"""The store: races, SIGKILL at every step, cleanup, blob verification, locks, location.

Races and crashes run `hpcrun` as the unprivileged user. The SIGKILL tests use the
test-only hook HPCRUN_TEST_CRASH_AT=<step>, where the process kills itself with SIGKILL
at that step of a commit (see hpcrun/image/store.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import util
from fixtures_image import hp, ok, records


def _leftovers(store: str) -> list:
    """Everything that is not part of a recorded image."""
    out = [os.path.join("tmp", n) for n in os.listdir(os.path.join(store, "tmp"))]
    recs = {r[:-5] for r in records(store)}
    for n in os.listdir(os.path.join(store, "images")):
        if n not in recs:
            out.append(os.path.join("images", n))
    return out


def _complete(store: str, hexd: str) -> bool:
    root = os.path.join(store, "images", hexd, "rootfs")
    return (os.path.isfile(os.path.join(root, "bin", "busybox"))
            and os.path.isfile(os.path.join(root, ".hpcrun", "config.json")))


# ----------------------------------------------------------------- concurrency

def test_eight_concurrent_loads_make_one_image(user, store_env, image_files):
    env = dict(util.user_env(user), **store_env, HPCRUN_VERBOSE="1")
    procs = [subprocess.Popen([util.HPCRUN, "load", "-i", image_files["layered_docker"]],
                              user=user.uid, group=user.gid, extra_groups=[], env=env,
                              cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o[1] for o in outs]
    assert all(o[0] == "Loaded image: test/layered:1\n" for o in outs)
    store = store_env["HPCRUN_STORE"]
    hexd = image_files["layered"].id.split(":")[1]
    assert records(store) == [hexd + ".json"]
    assert os.listdir(os.path.join(store, "images")) == [hexd]


def test_eight_concurrent_loads_unpack_once(user, store_env, image_files):
    env = dict(util.user_env(user), **store_env, HPCRUN_VERBOSE="1")
    procs = [subprocess.Popen([util.HPCRUN, "load", "-i", image_files["bb_docker"]],
                              user=user.uid, group=user.gid, extra_groups=[], env=env,
                              cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert sum(e.count("unpacking image") for e in errs) == 1
    assert _leftovers(store_env["HPCRUN_STORE"]) == []


def test_concurrent_loads_give_a_complete_image(user, store_env, image_files):
    env = dict(util.user_env(user), **store_env)
    procs = [subprocess.Popen([util.HPCRUN, "load", "-q", "-i", image_files["bb_docker"]],
                              user=user.uid, group=user.gid, extra_groups=[], env=env,
                              cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(8)]
    for p in procs:
        p.communicate(timeout=300)
    assert _complete(store_env["HPCRUN_STORE"], image_files["bb"].id.split(":")[1])


# ----------------------------------------------------------------- SIGKILL

STEPS = ["blob-written", "extracted", "format-renamed", "record-written", "tagged"]


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_leaves_no_image_that_looks_complete(step, user, store_env, image_files):
    env = dict(store_env, HPCRUN_TEST_CRASH_AT=step)
    cp = hp(user, env, "load", "-i", image_files["bb_docker"])
    assert cp.returncode == -9
    store = store_env["HPCRUN_STORE"]
    hexd = image_files["bb"].id.split(":")[1]
    listed = ok(hp(user, store_env, "images", "-q", "--no-trunc")).stdout.split()
    # an image is either absent, or listed and complete
    if listed:
        assert listed == [image_files["bb"].id] and _complete(store, hexd)
    else:
        assert records(store) == []


@pytest.mark.parametrize("step", STEPS)
def test_next_command_cleans_leftovers(step, user, store_env, image_files):
    env = dict(store_env, HPCRUN_TEST_CRASH_AT=step)
    hp(user, env, "load", "-i", image_files["bb_docker"])
    ok(hp(user, store_env, "images"))
    assert _leftovers(store_env["HPCRUN_STORE"]) == []


@pytest.mark.parametrize("step", STEPS)
def test_load_after_sigkill_succeeds(step, user, store_env, image_files):
    env = dict(store_env, HPCRUN_TEST_CRASH_AT=step)
    hp(user, env, "load", "-i", image_files["bb_docker"])
    cp = ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    assert cp.stdout == "Loaded image: test/busybox:1\n"
    assert _complete(store_env["HPCRUN_STORE"], image_files["bb"].id.split(":")[1])


@pytest.mark.parametrize("step", ["extracted", "format-renamed"])
def test_sigkill_during_squashfs_build(step, user, store_env, image_files):
    env = dict(store_env, HPCRUN_TEST_CRASH_AT=step)
    cp = hp(user, env, "load", "--format", "squashfs", "-i", image_files["bb_docker"])
    assert cp.returncode == -9
    assert ok(hp(user, store_env, "images", "-q")).stdout == ""
    assert _leftovers(store_env["HPCRUN_STORE"]) == []


def test_cleanup_waits_while_another_process_uses_the_store(user, store_env, image_files):
    """A leftover in tmp/ may belong to a running process: it stays until nobody holds
    the store open."""
    store = store_env["HPCRUN_STORE"]
    ok(hp(user, store_env, "images"))
    marker = os.path.join(store, "tmp", "blob-inflight")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
            from hpcrun.image.store import Store
            s = Store({store!r})
            open({marker!r}, "w").close()
            print("ready", flush=True)
            sys.stdin.read()
        """)], user=user.uid, group=user.gid, extra_groups=[],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        ok(hp(user, store_env, "images"))
        assert os.path.exists(marker)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    ok(hp(user, store_env, "images"))
    assert not os.path.exists(marker)


# ----------------------------------------------------------------- blobs (API)

@pytest.fixture
def store(tmp_path):
    from hpcrun.image.store import Store
    s = Store(str(tmp_path / "store"))
    yield s
    s.close()


def test_blob_writer_verifies_digest(store):
    from hpcrun.errors import ImageError
    data = b"hello"
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ImageError, match=r"layer sha256:\w+ digest mismatch: got sha256:"):
        with store.blob_writer(wrong) as w:
            w.write(data)
    assert not store.has_blob(wrong)
    assert os.listdir(store.tmp) == []


def test_blob_writer_checks_size(store):
    from hpcrun.errors import ImageError
    data = b"hello"
    dg = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageError, match="size mismatch"):
        with store.blob_writer(dg, size=6) as w:
            w.write(data)
    assert not store.has_blob(dg)


def test_blob_writer_removes_temp_on_exception(store):
    dg = "sha256:" + hashlib.sha256(b"x").hexdigest()
    with pytest.raises(RuntimeError):
        with store.blob_writer(dg) as w:
            w.write(b"x")
            raise RuntimeError("dropped")
    assert os.listdir(store.tmp) == []


def test_blob_writer_resumes(store):
    data = os.urandom(100_000)
    dg = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(ConnectionError):
        with store.blob_writer(dg, size=len(data), resume=True) as w:
            w.write(data[:40_000])
            raise ConnectionError("dropped")
    with store.blob_writer(dg, size=len(data), resume=True) as w:
        assert w.tell() == 40_000
        w.write(data[w.tell():])
    assert store.read_blob(dg) == data
    assert os.listdir(store.tmp) == []


def test_put_blob_bytes_refuses_wrong_digest(store):
    from hpcrun.errors import ImageError
    with pytest.raises(ImageError, match="digest mismatch"):
        store.put_blob_bytes(b"abc", "sha256:" + "0" * 64)


def test_malformed_digest_refused(store):
    from hpcrun.errors import ImageError
    with pytest.raises(ImageError, match="malformed digest"):
        store.blob_path("sha256:../../etc/passwd")


def test_commit_with_missing_layer_refused(store):
    from hpcrun.errors import StoreError
    cfg = b'{"rootfs": {"type": "layers", "diff_ids": ["sha256:' + b"1" * 64 + b'"]}}'
    man = json.dumps({"schemaVersion": 2, "config": {
        "digest": "sha256:" + hashlib.sha256(cfg).hexdigest(), "size": len(cfg)},
        "layers": [{"digest": "sha256:" + "2" * 64, "size": 1}]}).encode()
    with pytest.raises(StoreError, match="is not in the store"):
        store.commit_image(man, cfg)
    assert store.images() == []


def test_store_directory_is_private(store):
    assert os.stat(store.root).st_mode & 0o077 == 0


# ----------------------------------------------------------------- location

def test_store_location_from_config_file(user, user_tmp, image_files):
    cfgdir = os.path.join(user_tmp, "xdg", "hpcrun")
    os.makedirs(cfgdir)
    where = os.path.join(user_tmp, "configured-store")
    with open(os.path.join(cfgdir, "hpcrun.conf"), "w") as f:
        f.write(f"store = {where}\n")
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", os.path.join(user_tmp, "xdg")],
                   check=True)
    ok(util.hpcrun(user, "load", "-i", image_files["bb_docker"],
                   env={"XDG_CONFIG_HOME": os.path.join(user_tmp, "xdg")}))
    assert records(where) == [image_files["bb"].id.split(":")[1] + ".json"]


def test_unwritable_store_is_a_clear_error(user):
    cp = util.hpcrun(user, "images", env={"HPCRUN_STORE": "/proc/hpcrun-store"})
    assert cp.returncode == 1
    assert cp.stderr.startswith("hpcrun: error: cannot create the image store /proc/hpcrun-store")
    assert "hint: set 'store'" in cp.stderr


def test_eight_concurrent_squashfs_loads(user, store_env, image_files):
    util.require(shutil.which("tar2sqfs") is not None, "tar2sqfs is not installed")
    env = dict(util.user_env(user), **store_env)
    procs = [subprocess.Popen([util.HPCRUN, "load", "--format", "squashfs", "-i",
                               image_files["layered_docker"]],
                              user=user.uid, group=user.gid, extra_groups=[], env=env,
                              cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(8)]
    for p in procs:
        p.communicate(timeout=300)
    assert [p.returncode for p in procs] == [0] * 8
    hexd = image_files["layered"].id.split(":")[1]
    store = store_env["HPCRUN_STORE"]
    assert os.listdir(os.path.join(store, "images", hexd)) == ["image.sqfs"]
    assert _leftovers(store) == []


def test_prune_keeps_blobs_while_another_process_uses_the_store(user, store_env, image_files):
    store = store_env["HPCRUN_STORE"]
    ok(hp(user, store_env, "images"))
    stray = os.path.join(store, "blobs", "sha256", "f" * 64)
    with open(stray, "wb") as f:
        f.write(b"a blob a running pull has not committed yet")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
            from hpcrun.image.store import Store
            s = Store({store!r})
            print("ready", flush=True)
            sys.stdin.read()
        """)], user=user.uid, group=user.gid, extra_groups=[],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        cp = ok(hp(user, store_env, "prune"))
        assert "unreferenced blobs kept" in cp.stderr
        assert os.path.exists(stray)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    ok(hp(user, store_env, "prune"))
    assert not os.path.exists(stray)


def test_damaged_image_does_not_hide_the_others(user, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
    store = store_env["HPCRUN_STORE"]
    os.unlink(os.path.join(store, "blobs", "sha256", image_files["bb"].id[7:]))  # its config
    cp = ok(hp(user, store_env, "images", "-q", "--no-trunc"))
    assert cp.stdout == image_files["layered"].id + "\n"
    assert "warning:" in cp.stderr and "rmi -f" in cp.stderr


def test_damaged_image_can_be_removed(user, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    store = store_env["HPCRUN_STORE"]
    os.unlink(os.path.join(store, "blobs", "sha256", image_files["bb"].id[7:]))
    cp = ok(hp(user, store_env, "rmi", "-f", image_files["bb"].id[7:19]))
    assert cp.stdout.splitlines()[-1] == f"Deleted: {image_files['bb'].id}"
    assert records(store) == []


def test_record_keeps_the_exact_manifest_bytes(store):
    """push sends the stored manifest byte for byte: the record names its blob."""
    import gzip
    layer = gzip.compress(b"\0" * 1024)
    ldg = store.put_blob_bytes(layer)
    diff_id = "sha256:" + hashlib.sha256(b"\0" * 1024).hexdigest()
    cfg = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    man = (json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" +
                       hashlib.sha256(cfg).hexdigest(), "size": len(cfg)},
                       "layers": [{"digest": ldg, "size": len(layer)}]}, indent=7) + "\n").encode()
    rec = store.commit_image(man, cfg, fmt="dir")
    assert store.read_blob(rec.manifest_blob) == man


@pytest.mark.root
def test_full_disk_is_a_clear_error_and_leaves_nothing(user, user_tmp):
    """A 2 MiB tmpfs as the store; the image unpacks to 3 MiB."""
    from fixtures_image import F, make_image, write_oci_archive
    mnt = os.path.join(user_tmp, "small")
    os.mkdir(mnt)
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o",
                         f"size=2m,uid={user.uid},gid={user.gid},mode=0700", "tmpfs", mnt],
                        capture_output=True, text=True)
    util.require(cp.returncode == 0, f"cannot mount a tmpfs: {cp.stderr.strip()}")
    try:
        img = make_image([[F("zeros", b"\0" * (3 << 20))]])
        p = write_oci_archive(os.path.join(user_tmp, "big.tar"), img, "big/img:1")
        env = {"HPCRUN_STORE": os.path.join(mnt, "store")}
        cp = hp(user, env, "load", "-i", p)
        assert cp.returncode == 1
        assert "No space left on device" in cp.stderr.splitlines()[0]
        assert "hint:" in cp.stderr and "Traceback" not in cp.stderr
        assert records(env["HPCRUN_STORE"]) == []
        assert _leftovers(env["HPCRUN_STORE"]) == []
    finally:
        subprocess.run(["umount", mnt], check=False)


@pytest.mark.parametrize("step", ["extracted", "format-renamed"])
def test_sigkill_during_convert_keeps_the_image_as_it_was(step, user, store_env, image_files):
    util.require(shutil.which("tar2sqfs") is not None, "tar2sqfs is not installed")
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    env = dict(store_env, HPCRUN_TEST_CRASH_AT=step)
    assert hp(user, env, "convert", "--format", "squashfs", "test/busybox:1").returncode == -9
    cp = ok(hp(user, store_env, "inspect", "-f", "{{json .Hpcrun.Formats}}", "test/busybox:1"))
    assert cp.stdout.strip() == '["dir"]'
    hexd = image_files["bb"].id[7:]
    assert os.listdir(os.path.join(store_env["HPCRUN_STORE"], "images", hexd)) == ["rootfs"]
    assert _complete(store_env["HPCRUN_STORE"], hexd)


@pytest.mark.parametrize("delay", [0.0, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3])
def test_sigkill_from_outside_at_any_moment(delay, user, store_env, image_files):
    """Killed from outside after `delay` seconds (wherever it is then): the image is absent
    or complete, the next command cleans up, and a new load works."""
    import signal
    import time
    env = dict(util.user_env(user), **store_env)
    p = subprocess.Popen([util.HPCRUN, "load", "--format", "dir,squashfs", "-i",
                          image_files["layered_docker"]], user=user.uid, group=user.gid,
                         extra_groups=[], env=env, cwd="/", stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    store = store_env["HPCRUN_STORE"]
    hexd = image_files["layered"].id[7:]
    listed = ok(hp(user, store_env, "images", "-q", "--no-trunc")).stdout.split()
    if listed:
        assert listed == [image_files["layered"].id]
        assert os.path.isfile(os.path.join(store, "images", hexd, "rootfs", ".hpcrun",
                                           "config.json"))
        assert os.path.isfile(os.path.join(store, "images", hexd, "image.sqfs"))
    assert _leftovers(store) == []
    ok(hp(user, store_env, "load", "-i", image_files["layered_docker"]))
