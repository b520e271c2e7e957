"""Instances (hpcrun instance start/list/stop, hpcrun exec) as the unprivileged user:
lifecycle, what exec sees, what stop and a killed supervisor leave behind."""
from __future__ import annotations

import os
import signal
import time

import pytest

import util
from fixtures_instance import alive, ns_members

pytestmark = [pytest.mark.userns, pytest.mark.root]


def test_lifecycle_start_list_exec_stop(inst, rt_image):
    assert inst.ok("instance", "start", "--name", "life", rt_image).stdout == "life\n"
    ps = inst.ok("ps").stdout.splitlines()
    assert ps[0].split()[:3] == ["NAME", "PID", "IMAGE"]
    assert ps[1].split()[0] == "life" and ps[1].split()[1] == str(inst.pid("life"))
    assert inst.ok("instance", "ls").stdout == inst.ok("ps").stdout
    assert inst.ok("exec", "life", "cat", "/proc/1/comm").stdout.strip() == "hpcrun:instance"
    assert inst.ok("instance", "stop", "life").stdout == "life\n"
    assert inst.ok("ps").stdout.splitlines()[1:] == []


def test_supervisor_is_pid_1_and_reaps_orphans(inst, rt_image):
    inst.ok("instance", "start", "--name", "reap", rt_image)
    # A daemonized grandchild is reparented to PID 1, which reaps it: no zombie remains.
    inst.ok("exec", "reap", "sh", "-c", "(sleep 0.2 &) ; true")
    time.sleep(1)
    zombies = [p for p in ns_members(inst.pid("reap"))
               if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"]
    assert zombies == []


def test_exec_sees_the_instances_filesystem_and_environment(inst, rt_image):
    inst.ok("instance", "start", "--name", "fs", "--writable-tmpfs", "-e", "FROM_START=yes",
            "--hostname", "inside", rt_image)
    inst.ok("exec", "fs", "sh", "-c", "echo written > /made-by-exec")
    assert inst.ok("exec", "fs", "cat", "/made-by-exec").stdout == "written\n"
    assert inst.ok("exec", "fs", "hostname").stdout.strip() == "inside"
    env = inst.ok("exec", "-e", "EXTRA=1", "fs", "env").stdout.splitlines()
    assert "FROM_START=yes" in env and "EXTRA=1" in env
    # The image's root is not the host's.
    assert inst("exec", "fs", "test", "-e", util.VENV_BIN).returncode == 1


def test_exec_workdir_user_and_exit_status(inst, rt_image, user):
    inst.ok("instance", "start", "--name", "wd", rt_image)
    assert inst.ok("exec", "-w", "/etc", "wd", "pwd").stdout == "/etc\n"
    assert inst("exec", "wd", "sh", "-c", "exit 7").returncode == 7
    assert inst.ok("exec", "-u", str(user.uid), "wd", "id", "-u").stdout == f"{user.uid}\n"
    cp = inst("exec", "-u", "0", "wd", "id")
    assert cp.returncode == 125 and "maps only uid" in cp.stderr
    cp = inst("exec", "-w", "/no/such", "wd", "pwd")
    assert cp.returncode == 125 and "/no/such" in cp.stderr
    assert inst("exec", "wd", "no-such-command").returncode == 127


def test_stop_leaves_no_process_mount_or_state(inst, rt_image):
    inst.ok("instance", "start", "--name", "clean", "--writable-tmpfs", rt_image)
    inst.ok("exec", "clean", "sh", "-c", "sleep 300 > /dev/null 2>&1 &")
    pid = inst.pid("clean")
    members = ns_members(pid)
    mnt = ns_members(pid, "mnt")
    assert len(members) >= 2
    with open("/proc/self/mountinfo") as f:
        host_mounts = f.read()
    inst.ok("instance", "stop", "-t", "5", "clean")
    assert alive(members + mnt) == []
    assert not os.path.exists(inst.state("clean"))
    with open("/proc/self/mountinfo") as f:
        assert f.read() == host_mounts


def test_stop_kills_a_command_that_ignores_sigterm(inst, rt_image):
    inst.ok("instance", "start", "--name", "stubborn", rt_image,
            "sh", "-c", "trap '' TERM; while :; do sleep 1; done")
    members = ns_members(inst.pid("stubborn"))
    t = time.monotonic()
    inst.ok("instance", "stop", "-t", "1", "stubborn")
    assert time.monotonic() - t >= 1
    assert alive(members) == []


def test_sigkill_of_the_supervisor_is_cleaned_by_the_next_command(inst, rt_image):
    inst.ok("instance", "start", "--name", "victim", "--writable-tmpfs", rt_image)
    inst.ok("exec", "victim", "sh", "-c", "sleep 300 > /dev/null 2>&1 &")
    pid = inst.pid("victim")
    members = ns_members(pid) + ns_members(pid, "mnt")
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not alive(members):
            break
        time.sleep(0.05)
    assert alive(members) == []          # the kernel ends the pid namespace with PID 1
    assert os.path.exists(inst.state("victim"))
    assert "victim" not in inst.ok("ps", "-a").stdout
    assert not os.path.exists(inst.state("victim"))
    # The name is free again.
    inst.ok("instance", "start", "--name", "victim", rt_image)


def test_a_reused_pid_is_not_the_instance(inst, rt_image):
    """The record holds the start time: a live process with the recorded pid but another
    start time (as after pid reuse) is not taken for the instance."""
    inst.ok("instance", "start", "--name", "reuse", rt_image)
    pidfile = os.path.join(inst.state("reuse"), "pid")
    with open(pidfile) as f:
        pid, start = f.read().split()
    with open(pidfile, "w") as f:
        f.write(f"{pid} {int(start) + 1}\n")
    cp = inst("exec", "reuse", "true")
    assert cp.returncode == 125 and "reuse is gone" in cp.stderr
    os.kill(int(pid), signal.SIGKILL)


def test_instance_with_a_command_ends_with_it_and_keeps_its_code(inst, rt_image):
    inst.ok("instance", "start", "--name", "cmd", rt_image, "sh", "-c", "exit 4")
    for _ in range(100):
        if "Exited (4)" in inst.ok("ps", "-a").stdout:
            break
        time.sleep(0.05)
    assert "Exited (4)" in inst.ok("ps", "-a").stdout
    assert "cmd" not in inst.ok("ps").stdout
    cp = inst("exec", "cmd", "true")
    assert cp.returncode == 125 and "not running (exited with 4)" in cp.stderr
    inst.ok("instance", "stop", "cmd")
    assert not os.path.exists(inst.state("cmd"))


def test_state_directory_is_private(inst, rt_image):
    inst.ok("instance", "start", "--name", "priv", rt_image)
    st = os.stat(os.path.join(inst.xdg, "hpcrun"))
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == inst.user.uid


def test_default_state_directory_without_xdg(user, rt_image):
    base = f"/var/tmp/hpcrun-{user.uid}"
    env = {"XDG_RUNTIME_DIR": ""}
    cp = util.hpcrun(user, "instance", "start", "--name", "noxdg", rt_image, env=env)
    try:
        assert cp.returncode == 0, cp.stderr
        st = os.stat(base)      # shared with the store and caches: ours, not writable to others
        assert st.st_mode & 0o022 == 0 and st.st_uid == user.uid
        st = os.stat(os.path.join(base, "instances"))
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == user.uid
        assert os.path.isdir(os.path.join(base, "instances", "noxdg"))
    finally:
        util.hpcrun(user, "instance", "stop", "noxdg", env=env)
    assert not os.path.exists(os.path.join(base, "instances", "noxdg"))


def test_list_json(inst, rt_image):
    import json
    inst.ok("instance", "start", "--name", "js", rt_image)
    rows = json.loads(inst.ok("ps", "--format", "json").stdout)
    assert [(r["name"], r["pid"], r["status"]) for r in rows] == [("js", inst.pid("js"), "running")]


def test_names_are_scoped_to_the_slurm_job(inst, rt_image):
    job = {"SLURM_JOB_ID": "4242"}
    inst.ok("instance", "start", "--name", "scoped", rt_image, env=job)
    assert os.path.isdir(os.path.join(inst.xdg, "hpcrun", "job4242", "scoped"))
    assert "scoped" in inst.ok("ps", env=job).stdout
    assert "scoped" not in inst.ok("ps").stdout                  # outside the job
    assert "scoped" not in inst.ok("ps", env={"SLURM_JOB_ID": "1"}).stdout
    # The same name in another scope is another instance.
    inst.ok("instance", "start", "--name", "scoped", rt_image)
    inst.ok("instance", "stop", "scoped", env=job)
    inst.ok("instance", "stop", "scoped")


def test_exec_through_the_launcher_starts_no_python(inst, rt_image):
    """The installed command (cext/launcher.c) reads the record and joins in C."""
    from fixtures_instance import traced_execs
    with open(util.HPCRUN, "rb") as f:
        util.require(f.read(4) == b"\x7fELF", "the hpcrun command is not the C launcher here")
    inst.ok("instance", "start", "--name", "fast", "-e", "FROM=start", rt_image)
    cp, progs = traced_execs(inst.user, [util.HPCRUN, "exec", "-e", "X=1", "-w", "/etc", "fast",
                                         "sh", "-c", "echo $FROM $X $PWD"], inst.env())
    assert cp.returncode == 0 and cp.stdout == "start 1 /etc\n", cp.stderr
    assert not any("python" in p for p in progs), progs
    # What the fast path leaves (here -u) goes to Python, with the same result.
    cp, progs = traced_execs(inst.user, [util.HPCRUN, "exec", "-u", str(inst.user.uid), "fast",
                                         "sh", "-c", "echo $FROM"], inst.env())
    assert cp.returncode == 0 and cp.stdout == "start\n", cp.stderr
    assert any("python" in p for p in progs), progs
