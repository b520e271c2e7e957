"""The shared local cluster (the `slurm_cluster` fixture): real Slurm, jobs as hpcuser."""
from __future__ import annotations

import os
import shutil

import pytest

import util

pytestmark = [pytest.mark.slurm, pytest.mark.root]


def test_all_nodes_idle(slurm_cluster, user):
    cp = util.as_user(user, ["sinfo", "-h", "-N", "-o", "%N %T"], env=slurm_cluster.env)
    assert cp.returncode == 0, cp.stderr
    states = dict(line.split() for line in cp.stdout.splitlines())
    assert states == {n: "idle" for n in slurm_cluster.nodes}


def test_job_over_four_nodes_reports_distinct_hostnames(slurm_cluster, user):
    cp = util.as_user(user, ["srun", "-N4", "--ntasks-per-node=1", "hostname"],
                      env=slurm_cluster.env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert sorted(cp.stdout.split()) == sorted(slurm_cluster.nodes)


def test_tasks_run_as_the_submitting_user(slurm_cluster, user):
    cp = util.as_user(user, ["srun", "-N2", "-n2", "id", "-u"], env=slurm_cluster.env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == [str(user.uid)] * 2


def test_batch_job_runs_as_user_on_two_nodes(slurm_cluster, user, user_tmp):
    out = os.path.join(user_tmp, "out.txt")
    script = os.path.join(user_tmp, "job.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nsrun hostname\n")
    os.chmod(script, 0o755)
    cp = util.as_user(user, ["sbatch", "--parsable", "-N2", "--ntasks-per-node=1", "-o", out,
                             "--wait", script], env=slurm_cluster.env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    with open(out) as f:
        hosts = f.read().split()
    assert len(set(hosts)) == 2 and set(hosts) <= set(slurm_cluster.nodes)


def _submit_impossible(cluster, user, *opts):
    name = f"impossible{os.getpid()}"
    cp = util.as_user(user, ["sbatch", "--parsable", "-J", name, "-o", "/dev/null", *opts,
                             "--wrap", "true"], env=cluster.env, timeout=60)
    queued = util.as_user(user, ["squeue", "-h", "-n", name, "-o", "%i"], env=cluster.env)
    assert queued.returncode == 0, queued.stderr
    return cp, queued.stdout.split()


def test_more_nodes_than_the_partition_has_is_refused_at_submission(slurm_cluster, user):
    cp, queued = _submit_impossible(slurm_cluster, user, f"-N{len(slurm_cluster.nodes) + 1}")
    assert cp.returncode == 1
    assert "Node count specification invalid" in cp.stderr
    assert queued == []


def test_more_memory_than_any_node_is_refused_at_submission(slurm_cluster, user):
    cp, queued = _submit_impossible(slurm_cluster, user,
                                    f"--mem={slurm_cluster.memory_mb_per_node + 1}M")
    assert cp.returncode == 1
    assert "Memory specification can not be satisfied" in cp.stderr
    assert queued == []


def test_more_cpus_than_any_node_is_refused_at_submission(slurm_cluster, user):
    cp, queued = _submit_impossible(slurm_cluster, user,
                                    f"--cpus-per-task={slurm_cluster.cpus_per_node + 1}")
    assert cp.returncode == 1
    assert "CPU count per node can not be satisfied" in cp.stderr
    assert queued == []


def test_a_request_that_fits_is_accepted(slurm_cluster, user):
    cp = util.as_user(user, ["srun", "-N1",
                             f"--mem={slurm_cluster.memory_mb_per_node}M",
                             f"--cpus-per-task={slurm_cluster.cpus_per_node}", "true"],
                      env=slurm_cluster.env, timeout=60)
    assert cp.returncode == 0, cp.stderr


def test_slurm_environment_reaches_the_tasks(slurm_cluster, user):
    cp = util.as_user(user, ["srun", "-N2", "-n4", "sh", "-c", "echo $SLURM_PROCID $SLURM_NNODES"],
                      env=slurm_cluster.env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert sorted(cp.stdout.splitlines()) == ["0 2", "1 2", "2 2", "3 2"]


@pytest.mark.mpi
def test_mpi_allreduce_across_nodes_with_pmix(slurm_cluster, user):
    util.require(os.path.exists("/usr/lib/python3/dist-packages/mpi4py"), "python3-mpi4py is not installed")
    prog = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
            "print(c.rank, c.size, MPI.Get_processor_name(), c.allreduce(c.rank))")
    cp = util.as_user(user, ["srun", "--mpi=pmix", "-N2", "--ntasks-per-node=2", "/usr/bin/python3", "-c", prog],
                      env=slurm_cluster.env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    rows = sorted(line.split() for line in cp.stdout.splitlines())
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    assert {r[3] for r in rows} == {"6"}           # 0+1+2+3 summed over the network
    assert len({r[2] for r in rows}) == 2          # on two different nodes


def test_a_job_talks_to_the_controller_from_its_node(slurm_cluster, user, user_tmp):
    out = os.path.join(user_tmp, "state.txt")
    cp = util.as_user(user, ["sbatch", "--parsable", "-o", out, "--wait", "--wrap",
                             'squeue -h -j "$SLURM_JOB_ID" -o "%T %N"'],
                      env=slurm_cluster.env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    with open(out) as f:
        state, node = f.read().split()
    assert state == "RUNNING" and node in slurm_cluster.nodes


def test_cluster_authenticates_with_munge(slurm_cluster, user):
    util.require(bool(shutil.which("munged", path="/usr/sbin:/usr/bin")), "munge is not installed")
    cp = util.as_user(user, ["scontrol", "show", "config"], env=slurm_cluster.env)
    assert cp.returncode == 0, cp.stderr
    conf = {k.strip(): v.strip() for k, _, v in
            (line.partition("=") for line in cp.stdout.splitlines()) if v}
    assert conf["AuthType"] == "auth/munge"


def test_each_node_has_its_own_address_hostname_and_hosts_file(slurm_cluster, user):
    """Tasks run in their node's network, uts and mount namespaces."""
    from hpcrun.slurm.cluster import LocalCluster
    addrs = {n: v["addr"] for n, v in LocalCluster(slurm_cluster.name).status()["nodes"].items()}
    prog = ('h=$(hostname); a=$(ip -4 -o addr show dev eth0 | sed "s/.* inet \\([0-9.]*\\).*/\\1/"); '
            'r=$(getent hosts "$h" | cut -d" " -f1); echo "$h $a $r"')
    cp = util.as_user(user, ["srun", f"-N{len(slurm_cluster.nodes)}", "--ntasks-per-node=1",
                             "sh", "-c", prog], env=slurm_cluster.env, timeout=60)
    assert cp.returncode == 0, cp.stderr
    seen = {h: (a, r) for h, a, r in (line.split() for line in cp.stdout.splitlines())}
    assert seen == {n: (addrs[n], addrs[n]) for n in slurm_cluster.nodes}
