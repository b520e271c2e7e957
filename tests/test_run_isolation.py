"""hpcrun run: one isolation fact per test, as the unprivileged user."""
from __future__ import annotations

import os

import pytest

import util
from fixtures_runtime import run

pytestmark = [pytest.mark.userns, pytest.mark.root]


def out(cp):
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


def test_uid_gid_are_the_callers(user, rt_image):
    assert out(run(user, rt_image, "id", "-u")) == str(user.uid)
    assert out(run(user, rt_image, "id", "-g")) == str(user.gid)


def test_fakeroot_is_uid_0(user, rt_image):
    assert out(run(user, "--fakeroot", rt_image, "id", "-u")) == "0"


def test_fakeroot_is_gid_0(user, rt_image):
    assert out(run(user, "--fakeroot", rt_image, "id", "-g")) == "0"


def test_setgroups_is_denied(user, rt_image):
    assert out(run(user, rt_image, "cat", "/proc/self/setgroups")) == "deny"


def test_passwd_has_the_user(user, rt_image):
    lines = out(run(user, rt_image, "cat", "/etc/passwd")).splitlines()
    assert f"{user.name}:x:{user.uid}:{user.gid}:{user.name}:{user.home}:/bin/sh" in lines
    assert lines[0].startswith("root:")   # the image's own entries stay


def test_group_has_the_group(user, rt_image):
    assert f"hpcuser:x:{user.gid}:" in out(run(user, rt_image, "cat", "/etc/group")).splitlines()


def test_whoami_resolves(user, rt_image):
    assert out(run(user, rt_image, "whoami")) == user.name


def test_cannot_write_the_image(user, rt_image):
    cp = run(user, rt_image, "touch", "/bin/new-file")
    assert cp.returncode != 0
    assert "Read-only file system" in cp.stderr


def test_image_not_changed_by_missing_mount_points(user, rt_image):
    # $HOME is not in the image: its mount point is made above the image, not in it.
    assert not os.path.exists(os.path.join(rt_image, user.home.lstrip("/")))
    assert out(run(user, rt_image, "sh", "-c", f"test -d {user.home} && echo yes")) == "yes"
    assert not os.path.exists(os.path.join(rt_image, user.home.lstrip("/")))


def test_cannot_write_an_image_one_owns(user, rt_user_image):
    cp = run(user, rt_user_image, "touch", "/bin/new-file")
    assert cp.returncode != 0
    assert "Read-only file system" in cp.stderr


def test_writable_tmpfs_allows_writes(user, rt_user_image):
    # Writes follow the image's permissions: the user owns this image (as in the store).
    assert out(run(user, "--writable-tmpfs", rt_user_image, "sh", "-c",
                   "echo hi > /bin/new-file && cat /bin/new-file")) == "hi"


def test_writable_tmpfs_changes_vanish(user, rt_user_image):
    out(run(user, "--writable-tmpfs", rt_user_image, "sh", "-c", "echo hi > /etc/vanish"))
    assert not os.path.exists(os.path.join(rt_user_image, "etc/vanish"))
    cp = run(user, "--writable-tmpfs", rt_user_image, "cat", "/etc/vanish")
    assert cp.returncode != 0


def test_writable_tmpfs_deletes_vanish(user, rt_user_image):
    out(run(user, "--writable-tmpfs", rt_user_image, "rm", "/etc/os-release"))
    assert os.path.exists(os.path.join(rt_user_image, "etc/os-release"))


def test_tmp_is_private_tmpfs(user, rt_image):
    marker = util.shared_tmpdir("hpcrun-rtmark-")   # in the host's /tmp
    try:
        assert out(run(user, rt_image, "ls", "-a", "/tmp")).split() == [".", ".."]
    finally:
        os.rmdir(marker)


def test_pid_private_pid1_is_init(user, rt_image):
    comm = out(run(user, "--pid=private", rt_image, "cat", "/proc/1/comm"))
    assert comm == "hpcrun:init"


def test_pid_private_hides_host_processes(user, rt_image):
    pids = [p for p in out(run(user, "--pid", "private", rt_image, "ls", "/proc")).split()
            if p.isdigit()]
    # init, the command (ls): nothing of the host
    assert sorted(int(p) for p in pids) == [1, 2]


def test_pid_private_init_reaps_orphans(user, rt_image):
    # The subshell's sleep is orphaned, re-parented to PID 1 and, once it exits, reaped.
    states = out(run(user, "--pid=private", rt_image, "sh", "-c",
                     "(sleep 0.1 &); sleep 0.6; cat /proc/[0-9]*/stat | cut -d' ' -f2,3"))
    assert "Z" not in [l.split()[-1] for l in states.splitlines()]
    assert "(sleep)" not in states


def test_host_pid_namespace_by_default(user, rt_image):
    # MPI ranks must see each other: the host's pid namespace is shared by default.
    assert out(run(user, rt_image, "sh", "-c", "readlink /proc/self/ns/pid")) == \
        os.readlink("/proc/self/ns/pid")


def test_ipc_private_new_namespace(user, rt_image):
    assert out(run(user, "--ipc=private", rt_image, "readlink", "/proc/self/ns/ipc")) != \
        os.readlink("/proc/self/ns/ipc")


def test_ipc_host_by_default(user, rt_image):
    assert out(run(user, rt_image, "readlink", "/proc/self/ns/ipc")) == \
        os.readlink("/proc/self/ns/ipc")


def test_network_none_sees_only_lo(user, rt_image):
    names = out(run(user, "--network", "none", rt_image, "ls", "/sys/class/net")).split()
    ifaces = out(run(user, "--network", "none", rt_image, "cat", "/proc/net/dev"))
    assert [l.split(":")[0].strip() for l in ifaces.splitlines()[2:]] == ["lo"]
    assert names  # /sys is there


def test_network_none_lo_is_up(user, rt_image):
    flags = out(run(user, "--network=none", rt_image, "cat", "/sys/class/net/lo/flags"))
    assert int(flags, 16) & 0x1


def test_hostname(user, rt_image):
    assert out(run(user, "--hostname", "node-x", rt_image, "hostname")) == "node-x"


def test_dev_shm_is_the_hosts(user, rt_image, user_tmp):
    name = f"hpcrun-rt-shm-{os.getpid()}"
    try:
        out(run(user, rt_image, "sh", "-c", f"echo shared > /dev/shm/{name}"))
        with open(f"/dev/shm/{name}") as f:
            assert f.read() == "shared\n"
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


def test_ro_bind_refuses_writes(user, rt_image, user_tmp):
    cp = run(user, "-v", f"{user_tmp}:/data:ro", rt_image, "touch", "/data/x")
    assert cp.returncode != 0 and "Read-only file system" in cp.stderr
    assert not os.path.exists(os.path.join(user_tmp, "x"))


def test_rw_bind_writes_through(user, rt_image, user_tmp):
    out(run(user, "-v", f"{user_tmp}:/data", rt_image, "sh", "-c", "echo through > /data/x"))
    with open(os.path.join(user_tmp, "x")) as f:
        assert f.read() == "through\n"


def test_bind_file(user, rt_image, user_tmp):
    p = os.path.join(user_tmp, "settings")
    with open(p, "w") as f:
        f.write("v=1\n")
    assert out(run(user, "-v", f"{p}:/etc/settings:ro", rt_image, "cat", "/etc/settings")) == "v=1"


def test_home_is_bound(user, rt_image):
    name = f".hpcrun-rt-home-{os.getpid()}"
    path = os.path.join(user.home, name)
    try:
        out(run(user, rt_image, "sh", "-c", f"echo home > $HOME/{name}"))
        with open(path) as f:
            assert f.read() == "home\n"
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_no_home(user, rt_image):
    cp = run(user, "--no-home", rt_image, "ls", user.home)
    assert cp.returncode != 0


def test_scratch_is_tmpdir(user, rt_image, user_tmp):
    with open(os.path.join(user_tmp, "in-scratch"), "w") as f:
        f.write("s")
    assert out(run(user, "--scratch", rt_image, "ls", "/scratch",
                   env={"TMPDIR": user_tmp})) == "in-scratch"


def test_scratch_prefers_slurm_tmpdir(user, rt_image, user_tmp):
    sl = os.path.join(user_tmp, "slurm")
    os.mkdir(sl)
    os.chown(sl, user.uid, user.gid)
    open(os.path.join(sl, "from-slurm"), "w").close()
    assert out(run(user, "--scratch", rt_image, "ls", "/scratch",
                   env={"TMPDIR": "/tmp", "SLURM_TMPDIR": sl})) == "from-slurm"


def test_hosts_file_is_the_hosts(user, rt_image):
    with open("/etc/hosts") as f:
        assert out(run(user, rt_image, "cat", "/etc/hosts")) == f.read().strip()


def test_network_none_sysfs_shows_only_lo(user, rt_image):
    assert out(run(user, "--network", "none", rt_image, "ls", "/sys/class/net")).split() == ["lo"]


def test_ipc_private_has_its_own_dev_shm(user, rt_image):
    name = f"hpcrun-rt-ipc-{os.getpid()}"
    try:
        out(run(user, "--ipc=private", rt_image, "sh", "-c", f"echo x > /dev/shm/{name}"))
        assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")
