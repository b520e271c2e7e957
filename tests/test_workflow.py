"""Workflow tools with hpcrun, as the unprivileged user, on a small DAG: Makeflow with a
container per task (--wrapper hpcrun run), a container per worker (work_queue_worker
inside hpcrun run), shared mode (an instance, tasks entered with hpcrun exec) and
through the Singularity shim (--singularity); Snakemake through `hpcrun snakemake`.
Every configuration's .txt outputs must equal those of the bare run."""
from __future__ import annotations

import os
import shutil
import time

import pytest

import util
from hpcrun.workflow import dag

pytestmark = [pytest.mark.userns, pytest.mark.root]


def sh(user, d, script, timeout=300, env=None):
    return util.as_user(user, ["sh", "-c", script], cwd=d, timeout=timeout, env=env)


def outputs(d):
    out = dag.text_outputs(d)
    assert "all.txt" in out and len(out) == 3 * 2 + 1 + 1
    return out


@pytest.fixture
def bare(user, wf_dir):
    """The outputs of a bare Makeflow run (host tools), then a clean directory."""
    cp = sh(user, wf_dir, "makeflow -j 2 wf.mf")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    ref = outputs(wf_dir)
    assert sh(user, wf_dir, "makeflow -c wf.mf").returncode == 0
    assert not dag.text_outputs(wf_dir)
    return ref


def _no_hpcrun_left(user, mark):
    """No process of the user's is left whose command line names MARK (the image or
    the workflow directory: other tests run as the same user at the same time)."""
    left = []
    for p, c in util.live_processes():
        try:
            if os.stat(f"/proc/{p}").st_uid != user.uid:
                continue
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if mark.encode() in f.read():
                    left.append((p, c))
        except OSError:
            pass
    assert left == []


def test_makeflow_container_per_task(user, wf_dir, wf_image, bare):
    cp = sh(user, wf_dir, f"makeflow -j 2 --wrapper 'hpcrun run -v {wf_dir}:/mnt -w /mnt "
                          f"{wf_image}' wf.mf")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert outputs(wf_dir) == bare
    _no_hpcrun_left(user, wf_image)


def test_makeflow_tasks_are_not_taken_for_mpi_ranks(user, wf_dir, wf_image):
    """Debian's makeflow calls MPI_Init (an Open MPI singleton, ess "singleton"): every
    task it runs inherits PMIX_NAMESPACE and PMIX_RANK. `hpcrun run` per task must not
    take them for ranks of a launch: each task gets a container of its own, as outside
    Makeflow (no node container with a keeper, under the node's lock), and the task's
    environment is not given the MPI transport variables of separate ranks."""
    cache = util.shared_tmpdir("hpcrun-wfcache-", owner=user)
    try:
        with open(os.path.join(wf_dir, "env.mf"), "w") as f:
            f.write("a.env:\n\tenv > a.env\n\nb.env:\n\tenv > b.env\n")
        os.chown(os.path.join(wf_dir, "env.mf"), user.uid, user.gid)
        cp = sh(user, wf_dir, "makeflow -j 2 env.mf && cat a.env && makeflow -c env.mf")
        assert cp.returncode == 0, cp.stdout + cp.stderr
        host = dict(line.split("=", 1) for line in cp.stdout.splitlines() if "=" in line)
        util.require(host.get("OMPI_MCA_ess") == "singleton" and "PMIX_RANK" in host,
                     "this makeflow is not an Open MPI singleton (no PMIX_RANK in its tasks)")
        cp = sh(user, wf_dir, f"makeflow -j 2 --wrapper 'hpcrun run -v {wf_dir}:/mnt -w /mnt "
                              f"{wf_image}' env.mf",
                env={"HPCRUN_NODE_CACHE": cache, "HPCRUN_TASK_LOG": "1"})
        assert cp.returncode == 0, cp.stdout + cp.stderr
        for name in ("a.env", "b.env"):
            with open(os.path.join(wf_dir, name)) as f:
                env = dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line)
            assert env.get("PMIX_RANK") == host["PMIX_RANK"]       # the task's own, passed on
            assert "OMPI_MCA_btl_vader_single_copy_mechanism" not in env
            assert "UCX_TLS" not in env
        # A node container (keeper or join) logs itself in the node cache's tasks.log.
        assert [os.path.join(d, n) for d, _, files in os.walk(cache) for n in files] == []
        _no_hpcrun_left(user, wf_image)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_makeflow_container_per_worker(user, wf_dir, wf_image, bare, user_tmp):
    script = f"""
makeflow -T wq -p 0 -Z port.txt wf.mf > mf.log 2>&1 &
mf=$!
while [ ! -s port.txt ]; do sleep 0.1; done
for w in 1 2; do
  hpcrun run -v {user_tmp}:/work {wf_image} \\
    work_queue_worker -s /work --cores 1 -t 5 localhost $(cat port.txt) > w$w.log 2>&1 &
done
wait $mf; rc=$?
wait
cat mf.log
exit $rc
"""
    cp = sh(user, wf_dir, script)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert outputs(wf_dir) == bare
    _no_hpcrun_left(user, wf_image)


def test_makeflow_shared_mode(inst, user, wf_dir, wf_image, bare):
    inst.ok("instance", "start", "--name", "wf", "-v", f"{wf_dir}:/mnt", wf_image)
    cp = sh(user, wf_dir, "makeflow -j 2 --wrapper 'hpcrun exec -w /mnt wf' wf.mf",
            env=inst.env())
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert outputs(wf_dir) == bare
    inst.ok("instance", "stop", "wf")


def test_makeflow_through_the_singularity_shim(user, wf_dir, wf_image, bare):
    shim = os.path.join(wf_dir, "shim")
    cp = sh(user, wf_dir, f"hpcrun shim {shim} && PATH={shim}:$PATH "
                          f"makeflow -j 2 --singularity={wf_image} wf.mf")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert outputs(wf_dir) == bare


def test_snakemake_bare_and_in_containers(user, wf_dir, wf_image, bare):
    util.require(shutil.which("snakemake") is not None, "snakemake is not installed")
    cp = sh(user, wf_dir, "snakemake -j 2 -q")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert outputs(wf_dir) == bare
    sh(user, wf_dir, "rm -f *.txt *.gz")
    cp = sh(user, wf_dir, f"hpcrun snakemake {wf_image} -j 2")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "Activating singularity image" in cp.stderr      # each job went through the shim
    assert outputs(wf_dir) == bare
    with open(os.path.join(wf_dir, "Snakefile")) as f:
        assert "container" not in f.read()                   # the workflow is unchanged


def test_snakemake_with_a_missing_image(user, wf_dir):
    cp = sh(user, wf_dir, "hpcrun snakemake /no/such/image -j 1")
    assert cp.returncode != 0
    errs = [l for l in cp.stderr.splitlines() if l.startswith("hpcrun: error:")]
    assert len(errs) == 1 and "/no/such/image" in errs[0]
    assert not os.path.exists(os.path.join(wf_dir, ".snakemake", "log"))
    assert not dag.text_outputs(wf_dir)


def test_makeflow_with_a_missing_image(user, wf_dir):
    # Makeflow 9.9 exits 0 when its jobs fail; it says so, and each task's error is
    # hpcrun's one line.
    cp = sh(user, wf_dir, "makeflow -j 1 --wrapper 'hpcrun run /no/such/image' wf.mf")
    out = cp.stdout + cp.stderr
    assert "hpcrun: error: no such image: /no/such/image" in out
    assert "failed too many times" in out
    assert not dag.text_outputs(wf_dir)
    _no_hpcrun_left(user, "/no/such/image")


def test_worker_that_cannot_reach_its_manager(user, wf_image):
    # Port 1 on localhost: refused. The worker gives up after its -t timeout and the
    # container ends with it.
    t = time.monotonic()
    cp = util.hpcrun(user, "run", wf_image, "work_queue_worker", "-t", "2", "localhost", "1",
                     timeout=60)
    assert "could not connect" in cp.stderr
    assert time.monotonic() - t < 30
    _no_hpcrun_left(user, "work_queue_worker")


def test_singularity_shim_refuses_what_it_does_not_know(user, wf_image):
    cp = util.hpcrun(user, "singularity", "exec", "--overlay", "x.img", wf_image, "true")
    assert cp.returncode == 125
    errs = [l for l in cp.stderr.splitlines() if l.startswith("hpcrun: error:")]
    assert len(errs) == 1 and "unsupported option '--overlay'" in errs[0]
    cp = util.hpcrun(user, "singularity", "build", "x.sif", "docker://alpine")
    assert cp.returncode == 125 and "unsupported command" in cp.stderr
    assert util.hpcrun(user, "singularity", "--version").stdout.startswith("apptainer version")
