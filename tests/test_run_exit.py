"""hpcrun run: exit statuses (the command's, 126, 127, 128+N) and signal delivery."""
from __future__ import annotations

import signal
import subprocess

import pytest

import util
from fixtures_runtime import run

pytestmark = [pytest.mark.userns, pytest.mark.root]

PIDS = ["host", "private"]


@pytest.mark.parametrize("pid", PIDS)
def test_exit_0(user, rt_image, pid):
    assert run(user, f"--pid={pid}", rt_image, "true").returncode == 0


@pytest.mark.parametrize("pid", PIDS)
def test_exit_42(user, rt_image, pid):
    assert run(user, f"--pid={pid}", rt_image, "sh", "-c", "exit 42").returncode == 42


@pytest.mark.parametrize("pid", PIDS)
def test_not_executable_is_126(user, rt_image, pid):
    cp = run(user, f"--pid={pid}", rt_image, "/etc/passwd")
    assert cp.returncode == 126
    assert cp.stderr.splitlines()[0] == "hpcrun: error: can't execute /etc/passwd: Permission denied"


@pytest.mark.parametrize("pid", PIDS)
def test_not_found_is_127(user, rt_image, pid):
    cp = run(user, f"--pid={pid}", rt_image, "no-such-command")
    assert cp.returncode == 127
    assert cp.stderr.splitlines()[0] == \
        "hpcrun: error: command not found in the container: no-such-command"


@pytest.mark.parametrize("pid", PIDS)
def test_killed_by_signal_is_128_plus_n(user, rt_image, pid):
    # As a job script sees it ($?): with default options hpcrun *is* the command, so the
    # process itself dies of the signal; with a monitor, it exits 128+N.
    cp = util.as_user(user, ["sh", "-c", f"{util.HPCRUN} run --pid={pid} {rt_image} "
                                         "sh -c 'kill -KILL $$'; echo $?"])
    assert cp.stdout.strip() == "137"


def _start(user, *args):
    p = subprocess.Popen([util.HPCRUN, "run", *args], user=user.uid, group=user.gid,
                         extra_groups=[], env=util.user_env(user), cwd="/",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


@pytest.mark.parametrize("pid", PIDS)
@pytest.mark.parametrize("sig", ["TERM", "INT", "HUP", "USR1", "USR2"])
def test_signal_reaches_the_command(user, rt_image, pid, sig):
    p = _start(user, f"--pid={pid}", rt_image, "sh", "-c",
               f"trap 'echo got; exit 7' {sig}; echo ready; while :; do sleep 0.1; done")
    try:
        p.send_signal(getattr(signal, "SIG" + sig))
        rest, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:      # a failure must not leave the container running
            p.kill()
            p.communicate()
    assert (p.returncode, rest.strip()) == (7, "got"), err


def test_default_runs_no_launcher_process(user, rt_image):
    import os
    # With default options the command replaces the launcher: the pid we started is
    # the command itself (no Python stays resident).
    p = _start(user, rt_image, "sh", "-c", "echo ready; sleep 30")
    try:
        # (comm varies: busybox sh may exec its last command through /proc/self/exe)
        assert os.readlink(f"/proc/{p.pid}/exe") == "/bin/busybox"
    finally:
        p.kill()
        p.communicate()


def test_sigkill_of_monitor_ends_the_container(user, rt_image):
    import os
    import time
    token = f"hpcrun-rt-orphan-{os.getpid()}"
    p = _start(user, "--pid=private", rt_image, "sh", "-c", f"echo ready; sleep 300; : {token}")
    p.kill()
    p.communicate()
    from fixtures_runtime import processes_with
    for _ in range(100):           # bounded wait for the kernel to tear the pid ns down
        if not processes_with(token):
            break
        time.sleep(0.05)
    assert processes_with(token) == []


def test_pid_private_monitor_drops_the_interpreter(user, rt_image):
    # The host-side monitor was the Python launcher; it keeps no Python mapped.
    import os
    import sys
    p = _start(user, "--pid=private", rt_image, "sh", "-c", "echo ready; sleep 30")
    import time
    try:
        # (the launcher is C, or Python that execs the C executor, depending on the plan
        # cache: either way the monitor ends up with no Python mapped)
        python = os.path.realpath(sys.executable)
        for _ in range(100):   # bounded: the monitor trims itself right after the exec
            with open(f"/proc/{p.pid}/maps") as f:
                maps = f.read()
            with open(f"/proc/{p.pid}/comm") as f:
                name = f.read().strip()
            if python not in maps and name == "hpcrun:monitor":
                break
            time.sleep(0.05)
        assert name == "hpcrun:monitor"
        assert python not in maps
    finally:
        p.kill()
        p.communicate()


@pytest.mark.parametrize("pid", PIDS)
def test_ctrl_c_in_a_terminal_reaches_the_command_once(user, rt_image, pid):
    # ^C goes to the terminal's whole foreground process group, the command included;
    # the monitor and init must not pass it on a second time.
    import os
    import pty
    import shutil
    import time
    util.require(shutil.which("setsid") is not None, "util-linux setsid is missing")
    master, slave = pty.openpty()
    os.fchown(slave, user.uid, user.gid)
    script = ("trap 'echo got-int' INT; echo ready; i=0; "
              "while [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done; echo end")
    p = subprocess.Popen(["setsid", "-c", util.HPCRUN, "run", f"--pid={pid}", rt_image,
                          "sh", "-c", script],
                         user=user.uid, group=user.gid, extra_groups=[], env=util.user_env(user),
                         cwd="/", stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    buf = b""
    deadline = time.monotonic() + 30
    while b"ready" not in buf and time.monotonic() < deadline:
        buf += os.read(master, 1024)
    os.write(master, b"\x03")
    p.wait(timeout=60)
    while True:
        try:
            chunk = os.read(master, 1024)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
    os.close(master)
    assert buf.count(b"got-int") == 1, buf


def test_threaded_caller_takes_the_monitored_path(user, rt_image):
    # unshare(CLONE_NEWUSER) is EINVAL in a multi-threaded process: a caller that has
    # started threads still gets its container (through a cloned child and a monitor).
    import sys
    code = ("import sys, threading, time\n"
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
            "from hpcrun.cli.main import main\n"
            f"sys.exit(main(['run', {rt_image!r}, 'sh', '-c', 'exit 6']))\n")
    assert util.as_user(user, [sys.executable, "-c", code]).returncode == 6


def test_help_exits_0(user):
    cp = util.hpcrun(user, "run", "--help")
    assert cp.returncode == 0 and cp.stdout.startswith("usage: hpcrun run")


def test_threaded_caller_forwards_sigterm(user, rt_image):
    # The caller's other threads may take the signal: it must still reach the command.
    import sys
    code = ("import sys, threading, time\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "from hpcrun.cli.main import main\n"
            f"sys.exit(main(['run', {rt_image!r}, 'sh', '-c', "
            "\"trap 'echo got; exit 7' TERM; echo ready; while :; do sleep 0.1; done\"]))\n")
    p = subprocess.Popen([sys.executable, "-c", code], user=user.uid, group=user.gid,
                         extra_groups=[], env=util.user_env(user), cwd="/",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=30)
    assert (p.returncode, rest.strip()) == (7, "got"), err
