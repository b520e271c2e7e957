"""Fixtures for the workflow tests: the workflow image (busybox + bash +
work_queue_worker) and a small sample DAG in a directory of the test user's."""
from __future__ import annotations

import os
import shutil

import pytest

import util


@pytest.fixture(scope="session")
def wf_image(rt_userns) -> str:
    from hpcrun.workflow.images import make_workflow_rootfs
    d = util.shared_tmpdir("hpcrun-wfimg-")
    make_workflow_rootfs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def wf_dir(user):
    """A 3-chain DAG (11 tasks) in a fresh directory owned by the test user."""
    from hpcrun.workflow import dag
    d = util.shared_tmpdir("hpcrun-wf-", owner=user)
    dag.write(d, chains=3, lines=200)
    for n in os.listdir(d):
        os.chown(os.path.join(d, n), user.uid, user.gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)
