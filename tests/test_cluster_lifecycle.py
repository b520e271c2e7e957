"""`hpcrun cluster up|down|status|env` on clusters of their own (not the shared fixture).

Each test brings up a small cluster under a name unique to this test session, so that
parallel sessions and the shared `slurm_cluster` never collide.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

import util
from fixtures_slurm import live_pids, slurm_prereqs

pytestmark = [pytest.mark.slurm, pytest.mark.root]

BASE = "/run/hpcrun/cluster"


def _root(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([util.HPCRUN, *args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 120), **kw)


def _name(tag: str) -> str:
    return f"{tag}{os.getpid() % 100000}"


def _leftovers(name: str) -> list[str]:
    """Everything a cluster called `name` could leave behind on the host."""
    left = []
    try:
        left += [f"netns {e}" for e in os.listdir("/run/netns") if e.startswith(f"hpcrun-{name}-")]
    except FileNotFoundError:
        pass
    if os.path.exists(f"/sys/class/net/hpc-{name}"):
        left.append(f"interface hpc-{name}")
    if os.path.exists(f"{BASE}/{name}"):
        left.append(f"dir {BASE}/{name}")
    mark = f"{BASE}/{name}/"
    for pid, comm in live_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mark in cmd or comm == "hpcrun-reaper" and _reaper_of(pid, name):
            left.append(f"process {pid} {comm}")
    return left


def _reaper_of(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"/{name}/run/launch.json".encode() in f.read()
    except OSError:
        return False


def _sinfo(user, conf: str) -> dict[str, str]:
    cp = util.as_user(user, ["sinfo", "-h", "-N", "-o", "%N %T"], env={"SLURM_CONF": conf})
    assert cp.returncode == 0, cp.stderr
    return dict(line.split() for line in cp.stdout.splitlines())


def _daemon_pids(name: str) -> set[int]:
    mark = f"{BASE}/{name}/slurm.conf"
    out = set()
    for pid, comm in live_pids(lambda c: c in ("slurmctld", "slurmd")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if mark.encode() in f.read():
                    out.add(pid)
        except OSError:
            pass
    return out


@pytest.fixture
def cluster2(user):
    """A 2-node cluster started with the CLI, removed afterwards whatever happened."""
    slurm_prereqs()
    name = _name("lc")
    cp = _root("cluster", "up", "2", "--name", name)
    assert cp.returncode == 0, cp.stderr
    yield name
    _root("cluster", "down", "--name", name)


def test_up_two_nodes_all_idle(cluster2, user):
    assert _sinfo(user, f"{BASE}/{cluster2}/slurm.conf") == {
        f"{cluster2}-n1": "idle", f"{cluster2}-n2": "idle"}


def test_up_prints_an_export_line(user):
    slurm_prereqs()
    name = _name("lp")
    try:
        cp = _root("cluster", "up", "1", "--name", name)
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout == f"export SLURM_CONF={BASE}/{name}/slurm.conf\n"
    finally:
        _root("cluster", "down", "--name", name)


def test_job_on_two_nodes_has_distinct_hostnames(cluster2, user):
    cp = util.as_user(user, ["srun", "-N2", "--ntasks-per-node=1", "hostname"],
                      env={"SLURM_CONF": f"{BASE}/{cluster2}/slurm.conf"}, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert sorted(cp.stdout.split()) == [f"{cluster2}-n1", f"{cluster2}-n2"]


def test_up_on_running_cluster_leaves_it_alone(cluster2):
    before = _daemon_pids(cluster2)
    cp = _root("cluster", "up", "2", "--name", cluster2)
    assert cp.returncode == 0
    assert "is already running with 2 nodes" in cp.stderr and "--replace" in cp.stderr
    assert _daemon_pids(cluster2) == before


def test_up_replace_starts_a_fresh_cluster(cluster2, user):
    before = _daemon_pids(cluster2)
    cp = _root("cluster", "up", "3", "--name", cluster2, "--replace")
    assert cp.returncode == 0, cp.stderr
    after = _daemon_pids(cluster2)
    assert len(after) == 4 and not (after & before)
    assert set(_sinfo(user, f"{BASE}/{cluster2}/slurm.conf")) == {
        f"{cluster2}-n{i}" for i in (1, 2, 3)}


def test_status_json(cluster2, user):
    cp = util.hpcrun(user, "cluster", "status", "--name", cluster2, "--format", "json")
    assert cp.returncode == 0, cp.stderr
    st = json.loads(cp.stdout)
    assert st["running"] is True
    assert st["conf"] == f"{BASE}/{cluster2}/slurm.conf"
    assert {n: v["state"] for n, v in st["nodes"].items()} == {
        f"{cluster2}-n1": "idle", f"{cluster2}-n2": "idle"}


def test_status_text_lists_nodes(cluster2, user):
    cp = util.hpcrun(user, "cluster", "status", "--name", cluster2)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines()[0] == f"cluster {cluster2}: running"
    assert f"{cluster2}-n2" in cp.stdout


def test_status_of_absent_cluster_fails(user):
    cp = util.hpcrun(user, "cluster", "status", "--name", "absent0")
    assert cp.returncode == 1
    assert cp.stdout == "cluster absent0: not running\n"


def test_env_output_is_usable_with_eval(cluster2, user):
    sh = f'eval "$({util.HPCRUN} cluster env --name {cluster2})" && sinfo -h -o %D'
    cp = util.as_user(user, ["/bin/sh", "-c", sh])
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "2"


def test_env_of_absent_cluster_is_an_error(user):
    cp = util.hpcrun(user, "cluster", "env", "--name", "absent0")
    assert cp.returncode == 1
    assert cp.stderr.splitlines()[0] == "hpcrun: error: no local cluster named 'absent0'"
    assert cp.stderr.splitlines()[1].startswith("hint: start one with")


def test_down_leaves_nothing(user):
    slurm_prereqs()
    name = _name("ld")
    try:
        cp = _root("cluster", "up", "2", "--name", name)
        assert cp.returncode == 0, cp.stderr
        # A job still running at `down` must go too, and a process it left behind.
        token = str(600000 + os.getpid())
        job = util.as_user(user, ["sbatch", "--parsable", "-N2", "-o", "/dev/null", "--wrap",
                                  f"setsid sleep {token} </dev/null >/dev/null 2>&1 & "
                                  f"srun sleep {token}"],
                           env={"SLURM_CONF": f"{BASE}/{name}/slurm.conf"})
        assert job.returncode == 0, job.stderr
        deadline = time.time() + 30
        while len(_sleepers(token)) < 3 and time.time() < deadline:
            time.sleep(0.1)
        assert len(_sleepers(token)) == 3, "the job's processes should be running before down"
        cp = _root("cluster", "down", "--name", name)
        assert cp.returncode == 0, cp.stderr
        assert _leftovers(name) == []
        assert _sleepers(token) == []
    finally:
        _root("cluster", "down", "--name", name)


def _sleepers(token: str) -> list[int]:
    out = []
    for pid, _ in live_pids(lambda c: c == "sleep"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[1:2] == [token.encode()]:
                    out.append(pid)
        except OSError:
            pass
    return out


def test_down_of_absent_cluster_says_so():
    slurm_prereqs()
    cp = _root("cluster", "down", "--name", "absent0")
    assert cp.returncode == 0
    assert "was not running" in cp.stderr


def test_stale_cluster_is_cleaned_by_next_up(user):
    slurm_prereqs()
    name = _name("ls")
    try:
        cp = _root("cluster", "up", "2", "--name", name)
        assert cp.returncode == 0, cp.stderr
        for pid in _daemon_pids(name):
            os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while _daemon_pids(name) and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(f"/run/netns/hpcrun-{name}-n1")  # namespaces left behind
        cp = _root("cluster", "up", "2", "--name", name)
        assert cp.returncode == 0, cp.stderr
        assert "already running" not in cp.stderr
        assert _sinfo(user, f"{BASE}/{name}/slurm.conf") == {f"{name}-n1": "idle", f"{name}-n2": "idle"}
    finally:
        _root("cluster", "down", "--name", name)


def test_status_notices_a_dead_slurmd(user):
    slurm_prereqs()
    name = _name("lk")
    try:
        cp = _root("cluster", "up", "2", "--name", name)
        assert cp.returncode == 0, cp.stderr
        victim = [p for p in _daemon_pids(name) if _cmdline(p).endswith(f"-N {name}-n2")]
        assert len(victim) == 1
        os.kill(victim[0], signal.SIGKILL)
        deadline = time.time() + 10
        while victim[0] in _daemon_pids(name) and time.time() < deadline:
            time.sleep(0.05)
        cp = util.hpcrun(user, "cluster", "status", "--name", name, "--format", "json")
        assert cp.returncode == 1
        assert json.loads(cp.stdout)["running"] is False
    finally:
        _root("cluster", "down", "--name", name)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_up_without_root_says_what_is_missing(user):
    cp = util.hpcrun(user, "cluster", "up", "--name", "nr0")
    assert cp.returncode == 1
    lines = cp.stderr.splitlines()
    assert lines[0].startswith("hpcrun: error: hpcrun cluster up needs root")
    assert lines[1].startswith("hint: run it as root")
    assert not os.path.exists(f"{BASE}/nr0")


def test_down_without_root_is_refused(cluster2, user):
    cp = util.hpcrun(user, "cluster", "down", "--name", cluster2)
    assert cp.returncode == 1
    assert cp.stderr.splitlines()[0] == "hpcrun: error: hpcrun cluster down needs root"
    assert _sinfo(user, f"{BASE}/{cluster2}/slurm.conf") == {
        f"{cluster2}-n1": "idle", f"{cluster2}-n2": "idle"}


def test_up_where_network_namespaces_cannot_be_made_says_so():
    """Root inside a user namespace: euid 0, but no right to create named netns on the
    host. This is the situation of an unprivileged container."""
    slurm_prereqs()
    cp = subprocess.run(["unshare", "--user", "--map-root-user", util.HPCRUN, "cluster", "up",
                         "1", "--name", "nn0"], capture_output=True, text=True, timeout=60)
    util.require(not (cp.returncode == 1 and "unshare failed" in cp.stderr),
                 "cannot make a user namespace here")
    assert cp.returncode == 1
    lines = cp.stderr.splitlines()
    assert lines[0].startswith("hpcrun: error: cannot create network namespaces:")
    assert lines[1].startswith("hint: the local cluster needs root with CAP_NET_ADMIN")
    assert _leftovers("nn0") == []
    assert not os.path.exists("/tmp/hpcrun-cluster-nn0-failed-logs")


def test_auth_none_when_asked(user):
    slurm_prereqs()
    name = _name("la")
    try:
        cp = _root("cluster", "up", "1", "--name", name, env={**os.environ, "HPCRUN_CLUSTER_AUTH": "none"})
        assert cp.returncode == 0, cp.stderr
        st = json.loads(util.hpcrun(user, "cluster", "status", "--name", name, "--format", "json").stdout)
        assert st["auth"] == "none"
        cp = util.as_user(user, ["srun", "id", "-u"], env={"SLURM_CONF": f"{BASE}/{name}/slurm.conf"})
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.strip() == str(user.uid)
    finally:
        _root("cluster", "down", "--name", name)


def test_bad_auth_setting_is_refused():
    slurm_prereqs()
    cp = _root("cluster", "up", "1", "--name", "ba0", env={**os.environ, "HPCRUN_CLUSTER_AUTH": "kerberos"})
    assert cp.returncode == 2
    assert cp.stderr.splitlines()[0] == "hpcrun: error: bad HPCRUN_CLUSTER_AUTH 'kerberos'"
    assert _leftovers("ba0") == []
    assert not os.path.exists("/tmp/hpcrun-cluster-ba0-failed-logs")


@pytest.mark.parametrize("args,msg", [
    (["up", "zero"], "bad node count 'zero'"),
    (["up", "0"], "bad node count 0"),
    (["up", "--name", "Bad_Name"], "bad cluster name 'Bad_Name'"),
    (["sideways"], "unknown cluster command 'sideways'"),
])
def test_bad_arguments(args, msg):
    cp = _root("cluster", *args)
    assert cp.returncode == 2
    assert cp.stderr.splitlines()[0] == f"hpcrun: error: {msg}"
    assert cp.stderr.splitlines()[1].startswith("hint: ")
