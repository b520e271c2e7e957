"""PMIx / PMI wiring of ranks in containers, and a PMIx version mismatch refused
before the rank starts (not a hang in MPI_Init). Real launchers, unprivileged user."""
from __future__ import annotations

import os
import shutil

import pytest

import util
from test_mpi_launchers import LAUNCH, _require, images  # noqa: F401  (fixture)

pytestmark = [pytest.mark.userns, pytest.mark.root, pytest.mark.mpi]

PMIX_SH = ('n=$(env | grep -c "^PMIX_SERVER_URI"); '
           'if [ -d "$PMIX_SERVER_TMPDIR" ] && [ -n "$(ls $PMIX_SERVER_TMPDIR)" ]; '
           'then t=visible; else t=missing; fi; echo "uris=$n tmpdir=$t"')
PMI_SH = ('if [ -e /proc/self/fd/$PMI_FD ]; then echo "pmi_fd=open rank=$PMI_RANK"; '
          'else echo "pmi_fd=closed"; fi')


@pytest.mark.parametrize("join", ["--join", "--no-join"])
def test_every_rank_gets_pmix_uris_and_the_servers_tmpdir(user, images, user_tmp, join):
    _require("openmpi")
    cp = util.as_user(user, [*LAUNCH["openmpi"], "2", util.HPCRUN, "run", "--cleanenv", join,
                             images["openmpi"], "--", "/bin/sh", "-c", PMIX_SH],
                      env={"HPCRUN_NODE_CACHE": os.path.join(user_tmp, "nc")}, timeout=120)
    assert cp.returncode == 0, cp.stderr
    lines = cp.stdout.split("\n")[:-1]
    assert len(lines) == 2 and all(line.startswith("uris=") and int(line[5]) >= 1 and
                                   line.endswith("tmpdir=visible") for line in lines), cp.stdout


def test_every_hydra_rank_gets_its_pmi_fd(user, images, user_tmp):
    _require("mpich")
    cp = util.as_user(user, [*LAUNCH["mpich"], "2", util.HPCRUN, "run", "--cleanenv",
                             images["mpich"], "--", "/bin/sh", "-c", PMI_SH],
                      env={"HPCRUN_NODE_CACHE": os.path.join(user_tmp, "nc")}, timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert sorted(cp.stdout.split()) == ["pmi_fd=open", "pmi_fd=open", "rank=0", "rank=1"]


@pytest.fixture
def old_pmix_image(busybox_rootfs):
    """A busybox image whose PMIx client claims version 1.2.5. A fake library (a file
    holding only that version string): no PMIx 1.x is installed here, and the check
    reads nothing but the version."""
    d = util.shared_tmpdir("hpcrun-oldpmix-")
    root = os.path.join(d, "root")
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    libdir = os.path.join(root, "usr/lib/x86_64-linux-gnu")
    os.makedirs(libdir, exist_ok=True)
    with open(os.path.join(libdir, "libpmix.so.2"), "wb") as f:
        f.write(b"\0OpenPMIx 1.2.5\0")
    os.chmod(d, 0o755)
    yield root
    shutil.rmtree(d, ignore_errors=True)


def test_pmix_mismatch_is_a_one_line_error(user, old_pmix_image, user_tmp):
    _require("openmpi")
    cp = util.as_user(user, [*LAUNCH["openmpi"], "1", util.HPCRUN, "run", old_pmix_image,
                             "--", "true"],
                      env={"HPCRUN_NODE_CACHE": os.path.join(user_tmp, "nc")}, timeout=60)
    assert cp.returncode != 0
    err = [line for line in cp.stderr.splitlines() if line.startswith(("hpcrun:", "hint:"))]
    assert err[0].startswith("hpcrun: error: PMIx mismatch: the image's PMIx 1.2 looks for "
                             "PMIX_SERVER_URI, the launcher's PMIx server (4."), err
    assert "offers only PMIX_SERVER_URI41" in err[0]
    assert err[1].startswith("hint: ")
