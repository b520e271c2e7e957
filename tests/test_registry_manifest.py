"""Registry.has_manifest, and the job-file image check that uses it (slurm/jobs.py no
longer builds the manifest request itself): against a real docker-registry, as the
unprivileged user."""
from __future__ import annotations

import pytest

import util

SNIPPET = """
import sys
from hpcrun.image import reference
from hpcrun.image.registry import Registry
from hpcrun.slurm import jobs
host = sys.argv[1]
reg = Registry(host)
print(reg.has_manifest("ns/has", "v1"), reg.has_manifest("ns/has", "nope"),
      reg.has_manifest("ns/none", "v1"))
print(jobs._registry_has(reference.parse(host + "/ns/has:v1")),
      jobs._registry_has(reference.parse(host + "/ns/has:nope")))
"""


@pytest.mark.registry
def test_has_manifest_and_the_job_check(user, user_env_for, registry, oci_layout,
                                        busybox_layer):
    from fixtures_registry import skopeo_push
    m = oci_layout.image([busybox_layer])
    oci_layout.tag(m, "v1")
    skopeo_push(oci_layout, "v1", registry, "ns/has:v1")
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = util.as_user(user, [util.VENV_BIN + "/python", "-c", SNIPPET, registry.host], env=env)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines() == ["True False False", "True False"]
