"""`hpcrun run --network container:N`: a new container that shares the network namespace
of the user's instance N (Docker's `--network container:`), as the unprivileged user.

The new container has its own root file system, mount and (with --pid=private) pid
namespaces; only the network is the instance's: its interfaces, and what listens on
its 127.0.0.1. Bad input gets one error line, a hint, exit 125, and leaves nothing."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

import util
from fixtures_instance import alive, ns_members

pytestmark = [pytest.mark.userns, pytest.mark.root]

PORT = "18473"


def bad(cp, code, first):
    lines = cp.stderr.splitlines()
    assert cp.returncode == code, cp.stderr
    assert lines and lines[0].startswith("hpcrun: error: " + first), cp.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: "), cp.stderr


def net_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def only_the_instance_in_its_net(inst, name):
    """Every process in the instance's network namespace is one of the instance's own
    (its pid namespace): nothing of a `run` stayed behind."""
    pid = inst.pid(name)
    assert sorted(ns_members(pid, "net")) == sorted(ns_members(pid, "pid"))


@pytest.fixture
def web(inst, rt_image):
    """An instance on a network of its own (--network none: only lo)."""
    inst.ok("instance", "start", "--name", "web", "--network", "none", "--writable-tmpfs",
            rt_image)
    return "web"


def test_shares_the_instances_network_namespace(inst, rt_image, web):
    pid = inst.pid(web)
    assert net_of(pid) != net_of(os.getpid())
    cp = inst.ok("run", "--network", f"container:{web}", rt_image,
                 "sh", "-c", "readlink /proc/self/ns/net; cat /proc/net/dev; ip -o link")
    out = cp.stdout.splitlines()
    assert out[0] == net_of(pid)
    # The instance's interfaces (only lo), not the host's.
    devs = [ln.split(":")[0].strip() for ln in out[1:] if ":" in ln and "|" not in ln
            and not ln.startswith(tuple("0123456789"))]
    assert devs == ["lo"], cp.stdout
    links = [ln.split(":")[1].strip() for ln in out if ln[:1].isdigit()]
    assert links == ["lo"], cp.stdout
    # ip addr in the instance says the same as in the new container.
    assert inst.ok("exec", web, "ip", "-o", "addr").stdout == \
        inst.ok("run", "--net", f"container:{web}", rt_image, "ip", "-o", "addr").stdout
    # A fresh sysfs of that network namespace.
    assert inst.ok("run", f"--network=container:{web}", rt_image,
                   "ls", "/sys/class/net").stdout.split() == ["lo"]
    only_the_instance_in_its_net(inst, web)


def test_reaches_a_listener_on_the_instances_loopback(inst, rt_image):
    inst.ok("instance", "start", "--name", "srv", "--network", "none", rt_image, "sh", "-c",
            f"while :; do echo hello-from-instance | nc -l -p {PORT} 127.0.0.1; done")
    for _ in range(50):
        cp = inst("run", "--network", "container:srv", rt_image,
                  "sh", "-c", f"nc 127.0.0.1 {PORT} < /dev/null")
        if cp.stdout.strip() == "hello-from-instance":
            break
        time.sleep(0.1)
    assert cp.returncode == 0 and cp.stdout.strip() == "hello-from-instance", cp.stderr
    # The host's network has no such listener: the port lives in the instance's.
    cp = inst("run", rt_image, "sh", "-c", f"nc 127.0.0.1 {PORT} < /dev/null")
    assert "hello-from-instance" not in cp.stdout
    # The other way: a listener in the new container, reached from inside the instance.
    import subprocess
    server = subprocess.Popen(
        ["runuser", "-u", inst.user.name, "--", "env", f"XDG_RUNTIME_DIR={inst.xdg}",
         util.HPCRUN, "run", "--network", "container:srv", rt_image,
         "sh", "-c", "echo hello-from-run | nc -l -p 18474 127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(50):
            cp = inst("exec", "srv", "sh", "-c", "nc 127.0.0.1 18474 < /dev/null")
            if cp.stdout.strip() == "hello-from-run":
                break
            time.sleep(0.1)
        assert cp.stdout.strip() == "hello-from-run", cp.stderr
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    only_the_instance_in_its_net(inst, "srv")


def test_has_its_own_filesystem_and_namespaces(inst, rt_image, rt_user_image, web, user):
    pid = inst.pid(web)
    inst.ok("exec", web, "sh", "-c", "echo x > /made-in-instance")
    cp = inst.ok("run", "--network", f"container:{web}", rt_user_image, "sh", "-c",
                 "test -e /made-in-instance && echo seen; readlink /proc/self/ns/mnt;"
                 "readlink /proc/self/ns/pid; readlink /proc/self/ns/uts; id -u; id -g")
    seen_mnt_pid_uts_uid_gid = cp.stdout.split()
    assert "seen" not in seen_mnt_pid_uts_uid_gid
    mnt, pidns, uts, uid, gid = seen_mnt_pid_uts_uid_gid
    assert mnt != os.readlink(f"/proc/{pid}/ns/mnt")
    assert pidns == os.readlink(f"/proc/{os.getpid()}/ns/pid")      # --pid host (default)
    assert uts == os.readlink(f"/proc/{os.getpid()}/ns/uts")
    # The identity of a normal run: the user's own ids.
    assert (int(uid), int(gid)) == (user.uid, user.gid)
    plain = inst.ok("run", rt_user_image, "sh", "-c", "id; cat /etc/passwd | tail -1").stdout
    assert inst.ok("run", "--network", f"container:{web}", rt_user_image, "sh", "-c",
                   "id; cat /etc/passwd | tail -1").stdout == plain
    # --pid=private: a pid namespace of its own (not the instance's), the same network.
    cp = inst.ok("run", "--pid=private", "--network", f"container:{web}", rt_image, "sh", "-c",
                 "echo $$; readlink /proc/self/ns/pid; readlink /proc/self/ns/net")
    me, pidns, net = cp.stdout.split()
    assert me == "2" and pidns != os.readlink(f"/proc/{pid}/ns/pid") and net == net_of(pid)
    # A writable file system of its own does not reach the instance's.
    inst.ok("run", "--writable-tmpfs", "--network", f"container:{web}", rt_image,
            "sh", "-c", "echo y > /made-in-run")
    assert inst("exec", web, "test", "-e", "/made-in-run").returncode == 1
    only_the_instance_in_its_net(inst, web)


def test_exit_status_and_signals_are_the_commands(inst, rt_image, web):
    assert inst("run", "--network", f"container:{web}", rt_image,
                "sh", "-c", "exit 7").returncode == 7
    assert inst("run", "--network", f"container:{web}", rt_image,
                "no-such-command").returncode == 127
    # As a plain run: hpcrun became the command, which the signal ended.
    killed = ("sh", "-c", "kill -TERM $$")
    assert inst("run", "--network", f"container:{web}", rt_image, *killed).returncode == \
        inst("run", rt_image, *killed).returncode == -signal.SIGTERM
    assert inst("run", "--pid=private", "--network", f"container:{web}", rt_image,
                *killed).returncode == 128 + signal.SIGTERM


def test_never_cached_and_follows_a_restarted_instance(inst, rt_image, user):
    inst.ok("instance", "start", "--name", "re", "--network", "none", rt_image)
    first = net_of(inst.pid("re"))
    args = ("run", "--network", "container:re", rt_image, "readlink", "/proc/self/ns/net")
    assert inst.ok(*args).stdout.strip() == first
    assert inst.ok(*args).stdout.strip() == first
    plans = f"/var/tmp/hpcrun-{user.uid}/plans"
    for n in os.listdir(plans) if os.path.isdir(plans) else ():
        with open(os.path.join(plans, n), "rb") as f:
            assert b"netns=" not in f.read(), n
    inst.ok("instance", "stop", "re")
    bad(inst(*args), 125, "--network container:re: no such instance: re")
    inst.ok("instance", "start", "--name", "re", "--network", "none", rt_image)
    assert inst.ok(*args).stdout.strip() == net_of(inst.pid("re"))


def test_slurm_task_and_step_plan(inst, rt_image, web):
    pid = inst.pid(web)
    # (outside any job, the instance was started outside one too)
    cp = inst.ok("task", "--network", f"container:{web}", rt_image, "--",
                 "readlink", "/proc/self/ns/net")
    assert cp.stdout.strip() == net_of(pid)
    # A step plan is made on one node; the instance is each node's: every task plans it.
    cp = inst.ok("task", "--plan", "--network", f"container:{web}", rt_image)
    prog, word = cp.stdout.split()
    assert "pertask=1" in word.split(",") and "netns=" not in word
    run = util.as_user(inst.user, [prog, word, "--", "readlink", "/proc/self/ns/net"],
                       env=inst.env())
    assert run.returncode == 0 and run.stdout.strip() == net_of(pid), run.stderr
    # In a job, names are the job's: on a node (here) where it has no such instance.
    bad(inst("task", "--network", f"container:{web}", rt_image, "--", "true",
             env={"SLURM_JOB_ID": "4242"}), 125, f"--network container:{web}: no such instance")
    cp = inst("task", "--network", f"container:{web}", rt_image, "--", "true",
              env={"SLURM_JOB_ID": "4242"})
    assert "srun --ntasks-per-node=1 hpcrun instance start" in cp.stderr


# -- bad input --------------------------------------------------------------------------

def test_no_name(inst, rt_image):
    bad(inst("run", "--network", "container:", rt_image, "true"), 125,
        "--network container: needs the name of an instance")


def test_no_such_instance(inst, rt_image):
    bad(inst("run", "--network", "container:nope", rt_image, "true"), 125,
        "--network container:nope: no such instance: nope")
    bad(inst("run", "--network", "container:../x", rt_image, "true"), 125,
        "invalid instance name '../x'")


def test_another_users_instance(inst, evil_inst, rt_image):
    evil_inst.ok("instance", "start", "--name", "theirs", "--network", "none", rt_image)
    try:
        # Not visible by name: each user's instances are in a directory of their own.
        bad(inst("run", "--network", "container:theirs", rt_image, "true"), 125,
            "--network container:theirs: no such instance: theirs")
        # A plan naming their supervisor's pid directly: the kernel refuses its namespaces.
        pid = evil_inst.pid("theirs")
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
        prog, word = inst.ok("task", "--plan", rt_image).stdout.split()
        cp = util.as_user(inst.user, [prog, f"{word},netns={pid}:{start}", "--", "true"],
                          env=inst.env())
        bad(cp, 125, f"can't open the namespaces of instance process {pid}")
        assert alive([pid]) == [pid]
        assert sorted(ns_members(pid, "net")) == sorted(ns_members(pid, "pid"))
    finally:
        evil_inst.ok("instance", "stop", "theirs")


def test_a_killed_instance_is_gone(inst, rt_image, web):
    pid = inst.pid(web)
    members = ns_members(pid)
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not alive(members):
            break
        time.sleep(0.05)
    bad(inst("run", "--network", f"container:{web}", rt_image, "true"), 125,
        f"--network container:{web}: instance {web} is gone")
    assert not os.path.exists(inst.state(web))     # the stale record was removed
    assert alive(members) == []


def test_an_exited_instance(inst, rt_image):
    inst.ok("instance", "start", "--name", "done", rt_image, "true")
    for _ in range(100):
        if os.path.exists(os.path.join(inst.state("done"), "exit")):
            break
        time.sleep(0.05)
    bad(inst("run", "--network", "container:done", rt_image, "true"), 125,
        "--network container:done: instance done is not running (exited with 0)")


def test_a_plan_for_a_reused_pid_is_refused(inst, rt_image, web):
    """The executor checks the supervisor's start time again when it joins."""
    pid = inst.pid(web)
    prog, word = inst.ok("task", "--plan", rt_image).stdout.split()
    cp = util.as_user(inst.user, [prog, f"{word},netns={pid}:1", "--", "true"], env=inst.env())
    bad(cp, 125, f"can't share the network of instance process {pid}: the instance is gone")
    only_the_instance_in_its_net(inst, web)


def test_conflicting_options(inst, rt_image, web):
    # Docker refuses --hostname with container: networking; so does hpcrun.
    bad(inst("run", "--network", f"container:{web}", "--hostname", "h", rt_image, "true"),
        125, f"--hostname conflicts with --network container:{web}")
    # The ids inside are the instance's (its user namespace): a different mapping is refused.
    bad(inst("run", "--fakeroot", "--network", f"container:{web}", rt_image, "true"), 125,
        f"can't share the network of instance process {inst.pid(web)}: its user namespace "
        "maps you to uid")
    # Limits that count the container's user namespace (the instance's here).
    bad(inst("run", "--memory", "64m", "--network", f"container:{web}", rt_image, "true"),
        125, f"--network container:{web} can't be combined with --memory")
    # An instance can't take another's network.
    bad(inst("instance", "start", "--name", "two", "--network", f"container:{web}", rt_image),
        2, f"instance start can't take --network container:{web}")
    assert not os.path.exists(inst.state("two"))
    only_the_instance_in_its_net(inst, web)


def test_job_file_schema_takes_container_networks():
    from hpcrun.slurm import jobfile
    s = jobfile.schema()["definitions"]["container"]["properties"]["network"]
    assert "container:" in json.dumps(s)
