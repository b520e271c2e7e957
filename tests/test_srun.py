"""`hpcrun srun --container-*`: each pyxis flag, run on the local cluster as the user.

Named after the flags they exercise, as pyxis's own tests are. Bad arguments are in
test_srun_badargs.py; the option-to-argv mapping alone in test_srun_plan.py.
"""
from __future__ import annotations

import os

import pytest

import util
from tasks_helpers import node_cache, prepare_log, store_image, task_image  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.userns]


def _srun(user, cluster, cache, *args, env=None, cwd=None):
    e = dict(cluster.env, HPCRUN_NODE_CACHE=cache)
    e.update(env or {})
    return util.hpcrun(user, "srun", *args, env=e, cwd=cwd, timeout=180)


def _lines(cp):
    return [ln for ln in cp.stdout.splitlines() if ln.strip()]


def test_container_image_squashfs(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n4",
               f"--container-image={task_image.sqfs}", "--", "cat", "/etc/os-release")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.count("NAME=busybox-test") == 4
    assert len(prepare_log(node_cache)) == 2


def test_container_image_directory(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.dir}", "cat", "/etc/os-release")
    assert cp.returncode == 0, cp.stderr
    assert "NAME=busybox-test" in cp.stdout


def test_container_image_name_from_the_store(slurm_cluster, user, store_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n4",
               f"--container-image={store_image.name}", "--", "sh", "-c", "echo $GREETING",
               env=store_image.env)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == ["hello-from-config"] * 4


def test_container_image_name_missing(slurm_cluster, user, store_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "--container-image=localhost:1/nope:1",
               "--", "true", env=store_image.env)
    assert cp.returncode == 125
    assert cp.stderr.startswith("hpcrun: error: ") and "hint: " in cp.stderr


def test_container_image_from_environment(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1", "--", "cat", "/etc/os-release",
               env={"PYXIS_CONTAINER_IMAGE": task_image.sqfs})
    assert cp.returncode == 0, cp.stderr
    assert "NAME=busybox-test" in cp.stdout


def test_srun_options_pass_through(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n4", "-l",
               f"--container-image={task_image.sqfs}", "--", "sh", "-c", "echo $SLURM_PROCID")
    assert cp.returncode == 0, cp.stderr
    assert sorted(_lines(cp)) == ["0: 0", "1: 1", "2: 2", "3: 3"]


def test_exit_status_passes_through(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", "--", "sh", "-c", "exit 3")
    assert cp.returncode == 3


def test_container_mounts(slurm_cluster, user, user_tmp, task_image, node_cache):
    with open(os.path.join(user_tmp, "hello.txt"), "w") as f:
        f.write("from the host\n")
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n2",
               f"--container-image={task_image.sqfs}", f"--container-mounts={user_tmp}:/data",
               "--", "cat", "/data/hello.txt")
    assert cp.returncode == 0, cp.stderr
    assert _lines(cp) == ["from the host"] * 2


def test_container_mounts_read_write(slurm_cluster, user, user_tmp, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n2",
               f"--container-image={task_image.sqfs}", f"--container-mounts={user_tmp}:/data:rw",
               "--", "sh", "-c", "echo $SLURM_PROCID > /data/out.$SLURM_PROCID")
    assert cp.returncode == 0, cp.stderr
    assert sorted(n for n in os.listdir(user_tmp) if n.startswith("out.")) == ["out.0", "out.1"]


def test_container_mounts_read_only(slurm_cluster, user, user_tmp, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", f"--container-mounts={user_tmp}:/data:ro",
               "--", "touch", "/data/nope")
    assert cp.returncode != 0
    assert "Read-only file system" in cp.stderr
    assert not os.path.exists(os.path.join(user_tmp, "nope"))


def test_container_mounts_several_and_short_form(slurm_cluster, user, user_tmp, task_image,
                                                 node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}",
               f"--container-mounts={user_tmp}:/a,{user_tmp}", "--",
               "sh", "-c", f"test -d /a && test -d {user_tmp} && echo both")
    assert cp.returncode == 0, cp.stderr
    assert _lines(cp) == ["both"]


def test_container_workdir(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", "--container-workdir=/etc", "--", "pwd")
    assert cp.returncode == 0, cp.stderr
    assert _lines(cp) == ["/etc"]


def test_container_env(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", "--container-env=HPCRUN_T1,HPCRUN_T2",
               "--", "sh", "-c", 'echo "$HPCRUN_T1 $HPCRUN_T2"',
               env={"HPCRUN_T1": "one", "HPCRUN_T2": "two"})
    assert cp.returncode == 0, cp.stderr
    assert _lines(cp) == ["one two"]


def test_container_readonly_by_default(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", "--", "touch", "/newfile")
    assert cp.returncode != 0


def test_container_writable(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", "--container-writable",
               "--", "sh", "-c", "touch /newfile && echo written")
    assert cp.returncode == 0, cp.stderr
    assert _lines(cp) == ["written"]


def test_container_remap_root(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", "--container-remap-root", "--", "id", "-u")
    assert cp.returncode == 0, cp.stderr
    assert _lines(cp) == ["0"]


def test_no_container_remap_root_is_your_uid(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", "--", "id", "-u")
    assert cp.returncode == 0, cp.stderr
    assert _lines(cp) == [str(user.uid)]


def test_container_mount_home(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", "--container-mount-home",
               "--", "sh", "-c", f"test -d {user.home} && echo home")
    assert cp.returncode == 0, cp.stderr
    assert _lines(cp) == ["home"]


def test_no_container_mount_home(slurm_cluster, user, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N1",
               f"--container-image={task_image.sqfs}", "--no-container-mount-home",
               "--", "sh", "-c", f"test -e {user.home} && echo home || echo none")
    assert cp.returncode == 0, cp.stderr
    assert _lines(cp) == ["none"]


def _barrier(n):
    # Namespaces all alive at once, so that their inode numbers cannot be reused.
    return ('echo "$SLURMD_NODENAME $(readlink /proc/self/ns/user)" > /out/ns.$SLURM_PROCID; '
            f'while [ "$(ls /out | grep -c ^ns)" -lt {n} ]; do sleep 0.1; done')


def _userns_per_node(out):
    by_node = {}
    for name in os.listdir(out):
        if name.startswith("ns."):
            with open(os.path.join(out, name)) as f:
                node, ns = f.read().split()
            by_node.setdefault(node, set()).add(ns)
    return by_node


def test_one_container_per_node_by_default(slurm_cluster, user, user_tmp, task_image,
                                           node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n6",
               f"--container-image={task_image.sqfs}", f"--container-mounts={user_tmp}:/out",
               "--", "sh", "-c", _barrier(6))
    assert cp.returncode == 0, cp.stderr
    by_node = _userns_per_node(user_tmp)
    assert len(by_node) == 2 and all(len(v) == 1 for v in by_node.values())


def test_container_per_task(slurm_cluster, user, user_tmp, task_image, node_cache):
    cp = _srun(user, slurm_cluster, node_cache, "-N2", "-n6", "--container-per-task",
               f"--container-image={task_image.sqfs}", f"--container-mounts={user_tmp}:/out",
               "--", "sh", "-c", _barrier(6))
    assert cp.returncode == 0, cp.stderr
    assert sum(len(v) for v in _userns_per_node(user_tmp).values()) == 6
