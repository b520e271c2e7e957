"""Per-user state directories against another local user (issue 12, findings 1 and 2).

Two unprivileged users on one machine: the test user (hpcuser, the victim) and hpcevil
(created here if missing), who prepares the attack. Most tests stand a root-owned
sticky 1777 directory in for /var/tmp, so that they never touch the real
/var/tmp/hpcrun-<uid> other tests may use; one test uses the real default path of a
third user (hpcvictim, attacked by the test user), and only when it does not exist yet. Every refusal is the documented error (README, Security):
`hpcrun: error: refusing to use <what> <path>: <level> ... ` and a hint, and nothing of
the victim's is written into the attacker's directory.
"""
from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess

import pytest

import util

pytestmark = pytest.mark.userns

EVIL = "hpcevil"


@pytest.fixture(scope="module")
def evil(user) -> util.User:
    """The other local user (created with useradd if missing; it may stay)."""
    try:
        pw = pwd.getpwnam(EVIL)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", EVIL], check=True)
        pw = pwd.getpwnam(EVIL)
    return util.User(pw.pw_name, pw.pw_uid, pw.pw_gid, "/")


@pytest.fixture(scope="module")
def victim(user) -> util.User:
    """A third user, only for the test of the real default path (nobody else's tests
    make /var/tmp/hpcrun-<its uid>)."""
    try:
        pw = pwd.getpwnam("hpcvictim")
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/bin/sh", "hpcvictim"], check=True)
        pw = pwd.getpwnam("hpcvictim")
    return util.User(pw.pw_name, pw.pw_uid, pw.pw_gid, "/")


@pytest.fixture
def vartmp():
    """A root-owned sticky world-writable directory: /var/tmp for the test."""
    d = util.shared_tmpdir("hpcrun-vartmp-")
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_evil(evil, *argv):
    cp = util.as_user(evil, list(argv))
    assert cp.returncode == 0, cp.stderr
    return cp


def refused(cp, code, what, path, level, problem):
    """The documented refusal: one error line naming the path and the level, a hint."""
    lines = cp.stderr.splitlines()
    assert cp.returncode == code, cp.stderr
    above = "" if level == path else " (above it)"
    assert lines[0] == f"hpcrun: error: refusing to use {what} {path}: {level}{above} {problem}", \
        cp.stderr
    assert lines[1].startswith(f"hint: remove {level}, or ask its owner or an admin to; or set ")
    assert "Traceback" not in cp.stderr


def owned_by(evil) -> str:
    return f"is owned by {evil.name} (uid {evil.uid}), not by you"


def test_a_fresh_store_is_made_private(user, vartmp):
    top = os.path.join(vartmp, f"hpcrun-{user.uid}")
    cp = util.hpcrun(user, "images", env={"HPCRUN_STORE": os.path.join(top, "store")})
    assert cp.returncode == 0, cp.stderr
    for d in (top, os.path.join(top, "store")):
        st = os.lstat(d)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.uid, 0o700)


def test_store_under_a_0777_dir_another_user_made_is_refused(user, evil, vartmp):
    top = os.path.join(vartmp, f"hpcrun-{user.uid}")
    as_evil(evil, "mkdir", "-m", "0777", top)
    store = os.path.join(top, "store")
    cp = util.hpcrun(user, "images", env={"HPCRUN_STORE": store})
    refused(cp, 1, "the image store", store, top, owned_by(evil))
    assert os.listdir(top) == []          # nothing of the victim's went into it


def test_run_with_a_planted_store_root_is_refused_before_anything_runs(user, evil, vartmp,
                                                                       user_tmp):
    # The attack of finding 1: B owns A's store root and puts an image there.
    top = os.path.join(vartmp, f"hpcrun-{user.uid}")
    as_evil(evil, "mkdir", "-m", "0777", top)
    store = os.path.join(top, "store")
    as_evil(evil, "mkdir", "-m", "0777", store)
    cp = util.hpcrun(user, "run", "some/image", "id", env={"HPCRUN_STORE": store})
    refused(cp, 125, "the image store", store, top, owned_by(evil))
    assert cp.stdout == ""
    assert os.listdir(store) == []


def test_store_root_that_is_another_users_symlink_is_refused(user, evil, vartmp, user_tmp):
    # The symlink points at a directory of the victim's (think ~/.ssh): not followed.
    victim = os.path.join(user_tmp, "dotssh")
    util.as_user(user, ["mkdir", "-m", "0700", victim], check=True)
    top = os.path.join(vartmp, f"hpcrun-{user.uid}")
    as_evil(evil, "ln", "-s", victim, top)
    store = os.path.join(top, "store")
    cp = util.hpcrun(user, "images", env={"HPCRUN_STORE": store})
    refused(cp, 1, "the image store", store, top,
            f"is a symbolic link owned by {evil.name} (uid {evil.uid}) (only root's are followed)")
    assert os.listdir(victim) == []


def test_store_that_is_a_symlink_of_root_is_followed(user, vartmp, user_tmp):
    # A system layout (/home -> /export/home): root's symlinks are followed, and what
    # they lead to is checked by the same rule.
    link = os.path.join(vartmp, "site")
    os.symlink(user_tmp, link)
    cp = util.hpcrun(user, "images", env={"HPCRUN_STORE": os.path.join(link, "store")})
    assert cp.returncode == 0, cp.stderr
    assert os.path.isdir(os.path.join(user_tmp, "store", "records"))


def test_own_store_writable_by_others_is_refused(user, user_tmp):
    store = os.path.join(user_tmp, "store")
    util.as_user(user, ["mkdir", "-m", "0777", store], check=True)
    util.as_user(user, ["chmod", "0777", store], check=True)
    cp = util.hpcrun(user, "images", env={"HPCRUN_STORE": store})
    refused(cp, 1, "the image store", store, store,
            "is writable by group or others (mode 0777; chmod go-w it)")


def test_store_in_a_shared_sticky_dir_itself_is_refused(user, vartmp):
    # /var/tmp itself is no store: anyone can create entries in it.
    cp = util.hpcrun(user, "images", env={"HPCRUN_STORE": vartmp})
    refused(cp, 1, "the image store", vartmp, vartmp, "is owned by root (uid 0), not by you")


def test_store_through_a_file_is_refused(user, user_tmp):
    f = os.path.join(user_tmp, "file")
    util.as_user(user, ["touch", f], check=True)
    store = os.path.join(f, "store")
    cp = util.hpcrun(user, "images", env={"HPCRUN_STORE": store})
    refused(cp, 1, "the image store", store, f, "is not a directory")


def test_the_default_store_root_planted_by_another_user_is_refused(user, victim):
    # The real guessable path /var/tmp/hpcrun-<uid>. The test user's own is in use by
    # other tests, so here the test user is the attacker, and the victim a third user
    # whose state directory does not exist yet.
    top = f"/var/tmp/hpcrun-{victim.uid}"
    if os.path.lexists(top):
        pytest.skip(f"{top} exists: not touched")
    util.as_user(user, ["mkdir", "-m", "0777", top], check=True)
    try:
        cp = util.hpcrun(victim, "images")
        refused(cp, 1, "the image store", f"{top}/store", top, owned_by(user))
        assert os.listdir(top) == []
    finally:
        shutil.rmtree(top, ignore_errors=True)
    util.as_user(user, ["ln", "-s", "/tmp", top], check=True)
    try:
        cp = util.hpcrun(victim, "run", "--unpack", "/no/such.sqfs", "true")
        assert cp.returncode == 125 and "Traceback" not in cp.stderr, cp.stderr
        cp = util.hpcrun(victim, "images")
        refused(cp, 1, "the image store", f"{top}/store", top,
                f"is a symbolic link owned by {user.name} (uid {user.uid}) (only root's are "
                "followed)")
        assert not os.path.exists("/tmp/store") and not os.path.exists("/tmp/plans")
    finally:
        os.unlink(top)


# ------------------------------------------------------------------ the unpack caches


def _key(path: str) -> str:
    st = os.stat(path)
    return f"sq-{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _trojan(root: str) -> None:
    """A root filesystem whose every command prints PWNED."""
    util.make_busybox_rootfs(root)
    for name in ("cat", "id", "true"):
        p = os.path.join(root, "bin", name)
        if os.path.lexists(p):
            os.unlink(p)
        with open(p, "w") as f:
            f.write("#!/bin/sh\necho PWNED\n")
        os.chmod(p, 0o755)


def test_unpack_entry_planted_in_a_cache_another_user_owns_is_refused(
        user, evil, vartmp, rt_squashfs, rt_fuse_closed):
    # Finding 2: the key is computable by anyone who can stat the squashfs file.
    top = os.path.join(vartmp, f"hpcrun-{user.uid}")
    cache = os.path.join(top, "unpack")
    planted = os.path.join(cache, _key(rt_squashfs))
    _trojan(planted)
    subprocess.run(["chown", "-R", f"{evil.uid}:{evil.gid}", top], check=True)
    os.chmod(top, 0o777)
    os.chmod(cache, 0o777)
    cp = util.hpcrun(user, "run", "--unpack", rt_squashfs, "cat", "/etc/os-release",
                     env={"HPCRUN_UNPACK_CACHE": cache})
    refused(cp, 125, "the --unpack cache", cache, top, owned_by(evil))
    assert "PWNED" not in cp.stdout


def test_unpack_entry_not_owned_by_the_user_is_refused(user, evil, user_tmp, rt_squashfs,
                                                       rt_fuse_closed):
    # In a private cache no one else can plant an entry; one that is there anyway (made by
    # root, left by an older version) is checked before it is used.
    cache = os.path.join(user_tmp, "unpack")
    util.as_user(user, ["mkdir", "-m", "0700", cache], check=True)
    planted = os.path.join(cache, _key(rt_squashfs))
    _trojan(planted)
    subprocess.run(["chown", "-R", f"{evil.uid}:{evil.gid}", planted], check=True)
    cp = util.hpcrun(user, "run", "--unpack", rt_squashfs, "cat", "/etc/os-release",
                     env={"HPCRUN_UNPACK_CACHE": cache})
    refused(cp, 125, "the --unpack cache", planted, planted, owned_by(evil))
    assert "PWNED" not in cp.stdout


def test_unpack_cache_is_private_and_works(user, user_tmp, rt_squashfs, rt_fuse_closed):
    cache = os.path.join(user_tmp, "a", "unpack")
    cp = util.hpcrun(user, "run", "--unpack", rt_squashfs, "cat", "/etc/os-release",
                     env={"HPCRUN_UNPACK_CACHE": cache})
    assert cp.returncode == 0, cp.stderr
    assert "NAME=busybox-test" in cp.stdout
    for d in (os.path.dirname(cache), cache, os.path.join(cache, _key(rt_squashfs))):
        st = os.lstat(d)
        assert st.st_uid == user.uid and not st.st_mode & 0o022, d


def test_node_cache_another_user_owns_is_refused_by_hpcrun_task(user, evil, vartmp,
                                                                rt_squashfs):
    top = os.path.join(vartmp, f"hpcrun-{user.uid}")
    as_evil(evil, "mkdir", "-m", "0777", top)
    base = os.path.join(top, "nodecache")
    cp = util.hpcrun(user, "task", "--unpack-only", rt_squashfs,
                     env={"HPCRUN_NODE_CACHE": base, "SLURMD_NODENAME": "n1"})
    refused(cp, 125, "the node cache", os.path.join(base, "n1"), top, owned_by(evil))
    assert os.listdir(top) == []


def test_node_cache_another_user_owns_is_refused_by_the_task_program(user, evil, vartmp,
                                                                     rt_squashfs):
    # The C front end (cext/task.c) checks the node cache by the same rule before it
    # looks for an unpacked image there.
    top = os.path.join(vartmp, f"hpcrun-{user.uid}")
    base = os.path.join(top, "nodecache")
    env = {"HPCRUN_NODE_CACHE": base, "SLURMD_NODENAME": "n1"}
    cp = util.hpcrun(user, "task", "--plan", rt_squashfs, env=env)
    assert cp.returncode == 0, cp.stderr
    prog, plan = cp.stdout.split()
    planted = os.path.join(base, "n1", _key(rt_squashfs))
    _trojan(planted)
    subprocess.run(["chown", "-R", f"{evil.uid}:{evil.gid}", top], check=True)
    os.chmod(top, 0o777)
    cp = util.as_user(user, [prog, plan, "--", "cat", "/etc/os-release"], env=env)
    refused(cp, 125, "the node cache", os.path.join(base, "n1"), top,
            f"is owned by uid {evil.uid}, not by you")
    assert "PWNED" not in cp.stdout


def test_task_program_refuses_a_planted_symlink_in_the_node_cache(user, evil, vartmp,
                                                                  rt_squashfs, user_tmp):
    top = os.path.join(vartmp, f"hpcrun-{user.uid}")
    base = os.path.join(top, "nodecache")
    env = {"HPCRUN_NODE_CACHE": base, "SLURMD_NODENAME": "n1"}
    cp = util.hpcrun(user, "task", "--plan", rt_squashfs, env=env)
    assert cp.returncode == 0, cp.stderr
    prog, plan = cp.stdout.split()
    as_evil(evil, "ln", "-s", user_tmp, top)
    cp = util.as_user(user, [prog, plan, "--", "cat", "/etc/os-release"], env=env)
    refused(cp, 125, "the node cache", os.path.join(base, "n1"), top,
            f"is a symbolic link owned by uid {evil.uid} (only root's are followed)")
    assert os.listdir(user_tmp) == []


def test_squashfs_config_cache_another_user_owns_is_refused(user, evil, vartmp, rt_squashfs,
                                                            rt_fuse_open):
    # The config of a squashfs image is remembered in <unpack cache>/config: a planted
    # copy would set the container's command and environment.
    top = os.path.join(vartmp, f"hpcrun-{user.uid}")
    as_evil(evil, "mkdir", "-m", "0777", top)
    cache = os.path.join(top, "unpack")
    cp = util.hpcrun(user, "run", rt_squashfs, "true", env={"HPCRUN_UNPACK_CACHE": cache})
    refused(cp, 125, "the image config cache", os.path.join(cache, "config"), top,
            owned_by(evil))
    assert os.listdir(top) == []
