"""The image lease (issue 12, finding 4): `rmi` never deletes an image a container is
starting on.

`run NAME` holds a shared flock on the image's lease file from resolving the image until
the command's execve; rmi / prune / convert take it exclusively before they scan /proc
for running containers. Everything runs as the unprivileged user. The window tests use
the test-only hook HPCRUN_TEST_STOP_AT=resolved|exclusive (the process SIGSTOPs itself
while it holds the lease; the test acts, then sends SIGCONT).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

import util
from fixtures_image import hp, ok

# The container reads all of its busybox after a pause: a delete under it shows as a
# missing or truncated file, and the "intact" line never comes.
PROBE = ("echo started; sleep 0.3; "
         "cat /bin/busybox /etc/passwd >/dev/null 2>&1 && ls /bin/sh >/dev/null && echo intact")


@pytest.fixture
def bb(user, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    return "test/busybox:1"


def _popen(user, env, *args, **extra):
    e = dict(util.user_env(user), **env, **extra)
    return subprocess.Popen([util.HPCRUN, *args], user=user.uid, group=user.gid,
                            extra_groups=[], env=e, cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_stopped(p: subprocess.Popen) -> None:
    """Until p has SIGSTOPped itself (state T), or exited (then fail with its output)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if p.poll() is not None:
            out, err = p.communicate()
            pytest.fail(f"exited {p.returncode} before the hook: {out} {err}")
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.02)
    pytest.fail("the stop hook was never reached")


def _wait_flock_waiter(p: subprocess.Popen) -> None:
    """Until p waits for a flock (a '->' entry of /proc/locks names it)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with open("/proc/locks") as f:
            if any("->" in line and f" {p.pid} " in line for line in f):
                return
        if p.poll() is not None:
            pytest.fail(f"exited {p.returncode} without waiting for the lease: "
                        f"{p.communicate()}")
        time.sleep(0.02)
    pytest.fail(f"pid {p.pid} never waited for the lease")


def test_rmi_refuses_while_a_run_holds_the_lease(user, store_env, bb):
    run = _popen(user, store_env, "run", bb, "sh", "-c", PROBE, HPCRUN_TEST_STOP_AT="resolved")
    try:
        _wait_stopped(run)
        cp = hp(user, store_env, "rmi", bb)
    finally:
        os.kill(run.pid, signal.SIGCONT)
    out, err = run.communicate(timeout=120)
    assert cp.returncode == 1, cp
    assert cp.stderr.splitlines()[0] == (
        f"hpcrun: error: unable to delete {bb} ({cp.stderr.split('(')[1].split(')')[0]}) - a "
        "container is starting on it (or its monitor still runs)")
    assert "Deleted" not in cp.stdout
    assert run.returncode == 0, err
    assert out.split() == ["started", "intact"]
    assert bb in ok(hp(user, store_env, "images", "--format", "json")).stdout.replace(
        '"Repository": "test/busybox", "Tag": "1"', bb)
    ok(hp(user, store_env, "rmi", bb))          # lease gone with the container


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_run_waiting_on_a_delete_fails_cleanly(user, store_env, bb, warm):
    """A delete under way holds the lease: `run` (Python, or the C launcher with a
    cached plan) waits, then finds the image gone and starts nothing."""
    if warm:
        _warm(user, store_env, bb)
    rmi = _popen(user, store_env, "rmi", bb, HPCRUN_TEST_STOP_AT="exclusive")
    try:
        _wait_stopped(rmi)
        run = _popen(user, store_env, "run", bb, "sh", "-c", PROBE)
        _wait_flock_waiter(run)
        if warm:
            assert os.path.realpath(f"/proc/{run.pid}/exe") == os.path.realpath(util.HPCRUN)
    finally:
        os.kill(rmi.pid, signal.SIGCONT)
    rout, rerr = rmi.communicate(timeout=120)
    out, err = run.communicate(timeout=120)
    assert rmi.returncode == 0 and "Deleted: sha256:" in rout, rerr
    assert run.returncode == 125
    assert out == ""                            # the container never started
    assert err.startswith(f"hpcrun: error: no such image: {bb}"), err
    if not warm:    # (warm: the launcher's entry misses, and Python finds no image)
        assert err.splitlines() == [
            f"hpcrun: error: no such image: {bb}: it was removed while starting",
            "hint: pull, load or import it again"]


def test_prune_keeps_an_image_a_run_holds(user, store_env, bb):
    ok(hp(user, store_env, "tag", bb, "test/other:1"))
    ok(hp(user, store_env, "rmi", bb))           # a name is left: untag only
    run = _popen(user, store_env, "run", "test/other:1", "sh", "-c", PROBE,
                 HPCRUN_TEST_STOP_AT="resolved")
    try:
        _wait_stopped(run)
        cp = ok(hp(user, store_env, "prune", "-a"))
    finally:
        os.kill(run.pid, signal.SIGCONT)
    out, err = run.communicate(timeout=120)
    assert "kept " in cp.stderr and "a container is starting on it" in cp.stderr
    assert "deleted:" not in cp.stdout
    assert run.returncode == 0 and out.split() == ["started", "intact"], err


def test_convert_refuses_to_drop_a_leased_directory(user, store_env, bb):
    util.require(subprocess.run(["which", "mksquashfs"], capture_output=True).returncode == 0,
                 "squashfs-tools")
    run = _popen(user, store_env, "run", bb, "sh", "-c", PROBE, HPCRUN_TEST_STOP_AT="resolved")
    try:
        _wait_stopped(run)
        cp = hp(user, store_env, "convert", "--format", "squashfs", bb)
    finally:
        os.kill(run.pid, signal.SIGCONT)
    out, err = run.communicate(timeout=120)
    assert cp.returncode == 1, cp
    assert "unable to drop the directory of" in cp.stderr and "starting" in cp.stderr
    assert run.returncode == 0 and out.split() == ["started", "intact"], err
    fmt = ok(hp(user, store_env, "images", "--format", "json")).stdout
    assert '"dir"' in fmt and "squashfs" not in fmt     # nothing half-converted


def test_many_runs_racing_rmi_never_lose_files(user, store_env, image_files):
    """The finding's trial, repeated: each `run` either refuses the rmi, or fails
    cleanly before its command starts, or finishes before the delete: a container never
    sees its files vanish."""
    rng = random.Random(1234)
    outcomes = {"refused": 0, "run failed cleanly": 0, "ran before delete": 0}
    for trial in range(20):
        ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
        lead = rng.uniform(-0.15, 0.25)     # where in the window rmi lands; not a threshold
        if lead < 0:
            rmi_p = _popen(user, store_env, "rmi", "test/busybox:1")
            time.sleep(-lead)
            run = _popen(user, store_env, "run", "test/busybox:1", "sh", "-c", PROBE)
        else:
            run = _popen(user, store_env, "run", "test/busybox:1", "sh", "-c", PROBE)
            time.sleep(lead)
            rmi_p = _popen(user, store_env, "rmi", "test/busybox:1")
        rout, rerr = rmi_p.communicate(timeout=120)
        rmi = subprocess.CompletedProcess(rmi_p.args, rmi_p.returncode, rout, rerr)
        out, err = run.communicate(timeout=120)
        assert "Traceback" not in err + rmi.stderr
        if "started" in out:
            assert out.split() == ["started", "intact"], (trial, out, err, rmi)
            assert run.returncode == 0
        else:
            assert run.returncode == 125 and err.startswith("hpcrun: error: "), (trial, err)
        if rmi.returncode == 0:
            outcomes["ran before delete" if "started" in out else "run failed cleanly"] += 1
        else:
            assert "a container is starting on it" in rmi.stderr or \
                "being used by a running container" in rmi.stderr, rmi.stderr
            outcomes["refused"] += 1
            ok(hp(user, store_env, "rmi", "test/busybox:1"))
    print(outcomes)


# ----------------------------------------------------------------- the C launcher's warm path

def _lease_file(store_env) -> str:
    locks = os.path.join(store_env["HPCRUN_STORE"], "locks")
    (name,) = [n for n in os.listdir(locks) if n.startswith("lease-")]
    return os.path.join(locks, name)


def _warm(user, store_env, bb) -> None:
    """Run twice: the first plans in Python and writes the plan cache entry."""
    for _ in range(2):
        assert ok(hp(user, store_env, "run", bb, "sh", "-c", "echo warm")).stdout == "warm\n"


def test_warm_run_takes_the_lease_before_its_checks(user, store_env, bb):
    """With a cached plan no Python starts: the launcher itself waits for the lease."""
    import fcntl
    _warm(user, store_env, bb)
    with open(_lease_file(store_env), "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)          # as a delete under way holds it
        run = _popen(user, store_env, "run", bb, "sh", "-c", PROBE)
        try:
            _wait_flock_waiter(run)
            assert os.path.realpath(f"/proc/{run.pid}/exe") == os.path.realpath(util.HPCRUN)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0 and out.split() == ["started", "intact"], err


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_the_command_does_not_inherit_the_lease(user, store_env, bb, warm):
    """The execve closes the lease (O_CLOEXEC): a running command holds no descriptor
    of the store, and an rmi meets the /proc scan, not a lease held for the
    container's life."""
    import fcntl
    if warm:
        _warm(user, store_env, bb)
    run = _popen(user, store_env, "run", bb, "sh", "-c", "echo started; exec sleep 600")
    try:
        assert run.stdout.readline() == "started\n"
        lease = _lease_file(store_env)
        fds = [os.readlink(f"/proc/{run.pid}/fd/{n}") for n in os.listdir(f"/proc/{run.pid}/fd")]
        assert lease not in fds and not any("/store/" in f for f in fds), fds
        with open(lease, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)   # nobody holds it
        cp = hp(user, store_env, "rmi", bb)
        assert cp.returncode == 1 and "being used by a running container" in cp.stderr
    finally:
        run.kill()
        run.communicate(timeout=120)
