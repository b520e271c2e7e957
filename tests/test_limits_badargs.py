"""Bad limit values: one `hpcrun: error:` line naming the value and the allowed range, a
hint, exit 125, and nothing left behind (no cgroup directory, no process)."""
from __future__ import annotations

import os

import pytest

from fixtures_runtime import run
from limits_helpers import hpcrun_cgroups, monitors, run_root

pytestmark = [pytest.mark.userns, pytest.mark.root]

NCPU = len(os.sched_getaffinity(0))


def bad(cp, *needles):
    lines = cp.stderr.splitlines()
    assert cp.returncode == 125, cp.stderr
    assert len(lines) == 2 and lines[0].startswith("hpcrun: error: "), cp.stderr
    assert lines[1].startswith("hint: "), cp.stderr
    for n in needles:
        assert n in lines[0], cp.stderr


CASES = [
    (("--cpus", "abc"), ("'abc'" if False else "--cpus abc", "allowed: 0.01 to")),
    (("--cpus", "0"), ("--cpus 0", "allowed: 0.01 to")),
    (("--cpus", "-1"), ("--cpus -1", "allowed: 0.01 to")),
    (("--cpus", str(NCPU + 3)), (f"more than the {NCPU} CPUs allowed", f"0.01 to {NCPU}")),
    (("--cpuset-cpus", str(NCPU + 5)), (f"CPU {NCPU + 5} is not allowed here", "allowed: 0")),
    (("--cpuset-cpus", "1-x"), ("'1-x' is not a CPU list", "allowed: CPUs from")),
    (("--cpuset-cpus", "3-1"), ("'3-1' is not a CPU list",)),
    (("--memory", "lots"), ("--memory 'lots' is not a size", "allowed:")),
    (("--memory", "0"), ("--memory 0 is below", "allowed: 6M or more")),
    (("--memory", "-5m"), ("--memory '-5m' is not a size",)),
    (("--memory", "1k"), ("--memory 1k is below what a container needs", "allowed: 6M or more")),
    (("--memory", "512m", "--memory-swap", "256m"),
     ("--memory-swap 256m is below --memory 512m", "allowed: 512M or more, or -1")),
    (("--memory-swap", "1g"), ("--memory-swap needs --memory",)),
    (("--pids-limit", "0"), ("--pids-limit 0", "allowed: 1 or more, or -1")),
    (("--pids-limit", "-3"), ("--pids-limit -3", "allowed: 1 or more")),
    (("--pids-limit", "many"), ("--pids-limit many",)),
    (("--limits", "sometimes"), ("unknown --limits value 'sometimes'",)),
]


@pytest.mark.parametrize("args,needles", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_value_as_user(user, rt_image, args, needles):
    bad(run(user, *args, rt_image, "true"), *needles)
    assert monitors() == []


@pytest.mark.parametrize("args,needles", CASES[:12], ids=[" ".join(a) for a, _ in CASES[:12]])
def test_bad_value_as_root_leaves_no_cgroup(rt_image, args, needles):
    before = hpcrun_cgroups()
    bad(run_root(*args, rt_image, "true"), *needles)
    assert hpcrun_cgroups() == before


def test_fractional_cpus_without_cgroup_is_an_error(user, rt_image):
    cp = run(user, "--cpus", "1.5", rt_image, "true")
    bad(cp, "--cpus 1.5 needs a CPU quota", "no writable cgroup")
    assert "--limits=best-effort" in cp.stderr


def test_fractional_cpus_best_effort_rounds_up(user, rt_image):
    cp = run(user, "--cpus", "0.5", "--limits", "best-effort", rt_image, "nproc",
             env={"HPCRUN_VERBOSE": "1"})
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "1"
    assert "rounded up to 1 whole CPUs (best effort)" in cp.stderr


def test_failed_start_removes_cgroup(rt_image):
    """The container can't start (no such command): the cgroup made for it is gone."""
    before = hpcrun_cgroups()
    cp = run_root("--memory", "64m", "--cpus", "1", rt_image, "/no/such/command")
    assert cp.returncode == 127, cp.stderr
    assert hpcrun_cgroups() == before
    assert monitors() == []


@pytest.mark.parametrize("value,needle", [
    ("nofile=1x", "'1x' is not a number (allowed: 0 or more, or -1"),
    ("bogus=1", "not NAME=SOFT[:HARD] with NAME one of"),
    ("nofile=200:100", "the soft limit is above the hard one"),
    ("nofile=10000000", "can't set RLIMIT_NOFILE to 10000000"),
])
def test_bad_ulimit(user, rt_image, value, needle):
    bad(run(user, "--ulimit", value, rt_image, "true"), needle)
