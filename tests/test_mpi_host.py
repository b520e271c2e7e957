"""--mpi=host: the host's MPI (and its fabric libraries) bound over an image's
ABI-compatible MPI; incompatible images refused before launch. As the unprivileged
user, real launchers (Open MPI's mpirun, MPICH's hydra)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import util
from test_mpi_launchers import LAUNCH, NS_C, _require, namespaces

pytestmark = [pytest.mark.userns, pytest.mark.root, pytest.mark.mpi]
HOST_DIR = "/.hpcrun-host-mpi"
LIBS = {"openmpi": "libmpi.so.40", "mpich": "libmpich.so.12"}


@pytest.fixture(scope="module")
def images():
    from hpcrun.testing import make_mpi_rootfs
    d = util.shared_tmpdir("hpcrun-mpihost-")
    out = {}
    for mpi in ("openmpi", "mpich"):
        if shutil.which({"openmpi": "mpicc.openmpi", "mpich": "mpicc.mpich"}[mpi]):
            out[mpi] = make_mpi_rootfs(os.path.join(d, mpi), {"ns": NS_C}, mpi=mpi)
    yield out
    shutil.rmtree(d, ignore_errors=True)


def _host(mpi):
    return {"HPCRUN_HOST_MPI": f"/usr/lib/x86_64-linux-gnu/{LIBS[mpi]}"}


@pytest.mark.parametrize("mpi", ["openmpi", "mpich"])
def test_compatible_image_runs_the_hosts_mpi(user, images, user_tmp, mpi):
    _require(mpi)
    env = dict(_host(mpi), HPCRUN_NODE_CACHE=os.path.join(user_tmp, "nc"))
    cp = util.as_user(user, [*LAUNCH[mpi], "2", util.HPCRUN, "run", "--mpi=host", images[mpi],
                             "--", "/opt/mpi/ns"], env=env, timeout=120)
    assert cp.returncode == 0, cp.stderr
    ns = namespaces(cp.stdout)
    assert len(ns) == 2 and len(set(ns.values())) == 1
    # the loader takes the host's copy, bound in the container
    cp = util.hpcrun(user, "run", "--mpi=host", images[mpi], "--", "/bin/sh", "-c",
                     "LD_TRACE_LOADED_OBJECTS=1 /opt/mpi/ns", env=env, timeout=60)
    assert f"{LIBS[mpi]} => {HOST_DIR}/{LIBS[mpi]}" in cp.stdout, cp.stdout + cp.stderr


def test_incompatible_image_is_refused(user, images, user_tmp):
    _require("openmpi")
    util.require("mpich" in images, "mpich is not installed")
    cp = util.hpcrun(user, "run", "--mpi=host", images["openmpi"], "--", "/opt/mpi/ns",
                     env=_host("mpich"), timeout=60)
    assert cp.returncode == 125
    lines = cp.stderr.splitlines()
    assert len(lines) == 2, cp.stderr
    assert lines[0].startswith("hpcrun: error: --mpi=host: the image's MPI is Open MPI 4.")
    assert "the host's is MPICH ABI" in lines[0] and "not the same ABI" in lines[0]
    assert lines[1].startswith("hint: ")


def test_image_without_mpi_is_refused(user, busybox_rootfs):
    cp = util.hpcrun(user, "run", "--mpi=host", busybox_rootfs, "--", "true", timeout=60)
    assert cp.returncode == 125
    assert cp.stderr.startswith(f"hpcrun: error: --mpi=host: the image {busybox_rootfs} has "
                                "no MPI library"), cp.stderr


def test_check_reports_what_it_would_bind(user, images):
    _require("openmpi")
    cp = util.hpcrun(user, "check", "--mpi", images["openmpi"], "--format", "json",
                     env=_host("openmpi"), timeout=60)
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["compatible"] and doc["host"]["family"] == doc["image"]["family"] == "Open MPI"
    assert doc["host"]["version"].startswith("4.")
    dsts = {d for _, d in doc["binds"]}
    assert f"{HOST_DIR}/libmpi.so.40" in dsts
    assert any("openmpi" in d for d in dsts)            # the plugins, at the host's path
    text = util.hpcrun(user, "check", "--mpi", images["openmpi"], env=_host("openmpi"),
                       timeout=60).stdout
    assert text.startswith("--mpi=host: compatible (same ABI: Open MPI 4.x")
    if "mpich" in images:
        cp = util.hpcrun(user, "check", "--mpi", images["openmpi"], env=_host("mpich"),
                         timeout=60)
        assert cp.returncode == 1 and cp.stdout.startswith("--mpi=host: refused")
