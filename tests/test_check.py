"""hpcrun check: real probes as the unprivileged user."""
from __future__ import annotations

import json
import os

import pytest

import util

pytestmark = [pytest.mark.userns, pytest.mark.root]


def check(user, *args):
    return util.hpcrun(user, "check", *args)


def doc(user):
    cp = check(user, "--format", "json")
    return cp, json.loads(cp.stdout)


def by_name(d):
    return {c["name"]: c for c in d["checks"]}


def test_user_namespaces_work(user, rt_userns):
    cp, d = doc(user)
    assert (cp.returncode, d["can_run"]) == (0, True)
    assert by_name(d)["user namespaces"]["ok"] is True


def test_overlay_in_userns_reported(user, rt_userns):
    _, d = doc(user)
    assert by_name(d)["overlayfs in user namespace"]["ok"] is True


def test_overlay_builds_reported(user, rt_userns, store_env):
    # The probe `hpcrun build` asks at its first RUN, on the build cache's file system;
    # it leaves no work directory behind. HPCRUN_NO_OVERLAY=1 (builds copy) says so.
    cp = util.hpcrun(user, "check", "--format", "json", env=store_env)
    row = by_name(json.loads(cp.stdout))["overlay builds (RUN roots)"]
    assert (row["ok"], row["detail"]) == (True, "overlayfs with userxattr on the build cache")
    work = os.path.join(store_env["HPCRUN_STORE"], "build-cache", "work")
    assert os.listdir(work) == []
    cp = util.hpcrun(user, "check", "--format", "json",
                     env={**store_env, "HPCRUN_NO_OVERLAY": "1"})
    row = by_name(json.loads(cp.stdout))["overlay builds (RUN roots)"]
    assert row["ok"] is False and "HPCRUN_NO_OVERLAY=1" in row["detail"]
    assert row["ask_admin"] is None          # the user's own choice, nothing to ask for
    assert cp.returncode == 0


def test_fuse_closed_says_what_to_ask(user, rt_userns, rt_fuse_closed):
    _, d = doc(user)
    fuse = by_name(d)["FUSE in user namespace"]
    assert fuse["ok"] is False
    assert "/dev/fuse" in fuse["ask_admin"] and "--unpack" in fuse["ask_admin"]


def test_fuse_open_works(user, rt_userns, rt_fuse_open):
    _, d = doc(user)
    assert by_name(d)["FUSE in user namespace"]["ok"] is True


def test_text_output_names_each_check(user, rt_userns):
    cp = check(user)
    assert cp.returncode == 0
    first = [l.split("  ")[0] for l in cp.stdout.splitlines()]
    for name in ("user namespaces", "overlayfs in user namespace", "FUSE in user namespace",
                 "squashfuse", "cgroup delegation"):
        assert name in first


def _slurm_line(cp):
    return [ln for ln in cp.stdout.splitlines() if ln.startswith("slurm backend:")]


def test_slurm_backend_without_cluster_says_so(user, rt_userns):
    import shutil
    util.require(shutil.which("sbatch") is not None, "slurm is not installed")
    cp = util.hpcrun(user, "check", env={"SLURM_CONF": "/nonexistent/slurm.conf"})
    [line] = _slurm_line(cp)
    assert line.startswith("slurm backend: cli, but no cluster is configured")


@pytest.mark.slurm
def test_slurm_backend_names_cli_and_version(user, rt_userns, slurm_cluster):
    cp = util.hpcrun(user, "check", env=slurm_cluster.env)
    [line] = _slurm_line(cp)
    assert line.startswith("slurm backend: cli (sbatch/squeue --json/scancel, Slurm 22.05")
    assert "pyslurm" in line


def test_userns_disabled_says_what_to_ask(user):
    from fixtures_runtime import without_userns
    cp = without_userns(user, [util.HPCRUN, "check", "--format", "json"])
    assert cp.returncode == 1, cp.stderr
    d = json.loads(cp.stdout)
    ns = by_name(d)["user namespaces"]
    assert (d["can_run"], ns["ok"]) == (False, False)
    assert "max_user_namespaces" in ns["ask_admin"]
    assert by_name(d)["overlay builds (RUN roots)"]["detail"] == "needs user namespaces"


def test_bad_format(user):
    cp = check(user, "--format", "xml")
    assert cp.returncode == 2
    assert cp.stderr.splitlines()[0] == "hpcrun: error: unknown --format value 'xml'"


def test_says_how_slurm_tasks_start(user, rt_userns):
    cp = util.hpcrun(user, "check")
    [line] = [ln for ln in cp.stdout.splitlines() if ln.startswith("slurm tasks:")]
    assert line.startswith("slurm tasks: C front end /") and line.endswith("(no Python per task)")
    prog = line.split()[5]
    assert os.access(prog, os.X_OK)
    cp = util.hpcrun(user, "check", "--format", "json")
    assert json.loads(cp.stdout)["slurm_tasks"] == line.split(": ", 1)[1]
