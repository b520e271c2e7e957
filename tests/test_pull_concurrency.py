"""Eight pulls at once download each layer once; a pull killed at any moment leaves no
image that looks complete, and the next pull finishes the job.

A counting proxy in front of docker-registry slows every blob down so the pulls really
overlap and the kills land mid-download (the registry alone answers too fast).
"""
import json
import os
import random
import signal
import subprocess
import time

import pytest

import util
from fixtures_registry import layer_from_files, skopeo_push

pytestmark = [pytest.mark.registry]
LAYER_FILES = 3


@pytest.fixture
def big(registry, oci_layout, busybox_layer):
    """ns/big:v1: busybox plus three layers of 4 MB of incompressible data each."""
    rnd = random.Random(1234)
    tars = [busybox_layer] + [
        layer_from_files({"data/": None, f"data/{i}.bin": rnd.randbytes(4 << 20)}) for i in range(LAYER_FILES)]
    m = oci_layout.image(tars)
    oci_layout.tag(m, "v1")
    skopeo_push(oci_layout, "v1", registry, "ns/big:v1")
    with open(os.path.join(oci_layout.dir, "blobs", "sha256", m["digest"][7:])) as f:
        man = json.load(f)
    return man


def _popen(user, env, *args):
    return subprocess.Popen([util.HPCRUN, *args], user=user.uid, group=user.gid, extra_groups=[],
                            env=util.user_env(user, **env), cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_eight_pulls_download_each_layer_once(user, user_env_for, registry, big, fault_proxy):
    px = fault_proxy(lambda m, p, n: 0.5 if m == "GET" and "/blobs/" in p else None)
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=px.host)
    procs = [_popen(user, env, "pull", f"{px.host}/ns/big:v1") for _ in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o[1] for o in outs]
    for d in [big["config"]] + big["layers"]:
        assert px.count("GET", f"/blobs/{d['digest']}") == 1, d["digest"]
        assert registry.count("GET", f"/blobs/{d['digest']}") == 1, d["digest"]


def test_eight_pulls_make_one_good_image(user, user_env_for, registry, big, fault_proxy):
    px = fault_proxy(lambda m, p, n: 0.5 if m == "GET" and "/blobs/" in p else None)
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=px.host)
    procs = [_popen(user, env, "pull", f"{px.host}/ns/big:v1") for _ in range(8)]
    for p in procs:
        p.communicate(timeout=300)
    store = env["HPCRUN_STORE"]
    assert os.listdir(os.path.join(store, "records")) == [big["config"]["digest"][7:] + ".json"]
    root = os.path.join(store, "images", big["config"]["digest"][7:], "rootfs")
    for i in range(LAYER_FILES):
        assert os.path.getsize(os.path.join(root, "data", f"{i}.bin")) == 4 << 20


def _complete(store: str, hexd: str) -> bool:
    root = os.path.join(store, "images", hexd, "rootfs")
    return all(os.path.isfile(os.path.join(root, "data", f"{i}.bin"))
               and os.path.getsize(os.path.join(root, "data", f"{i}.bin")) == 4 << 20
               for i in range(LAYER_FILES)) and os.path.isfile(os.path.join(root, "bin", "busybox"))


def test_sigkill_at_random_moments_leaves_nothing_that_looks_complete(user, user_env_for, registry,
                                                                      big, fault_proxy):
    px = fault_proxy(lambda m, p, n: 0.3 if m == "GET" and "/blobs/" in p else None)
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=px.host)
    # How long one whole pull takes here, in a store of its own.
    t0 = time.monotonic()
    p = _popen(user, dict(env, HPCRUN_STORE=env["HPCRUN_STORE"] + "-timing"), "pull", f"{px.host}/ns/big:v1")
    assert p.wait(300) == 0
    whole = time.monotonic() - t0
    seed = random.randrange(1 << 30)
    rnd = random.Random(seed)
    store = env["HPCRUN_STORE"]
    hexd = big["config"]["digest"][7:]
    for i in range(6):
        p = _popen(user, env, "pull", f"{px.host}/ns/big:v1")
        time.sleep(rnd.uniform(0, whole))
        p.send_signal(signal.SIGKILL)
        p.communicate()
        recs = os.listdir(os.path.join(store, "records")) if os.path.isdir(os.path.join(store, "records")) else []
        for r in recs:
            assert _complete(store, r[:-5]), f"seed {seed}, kill {i}: a record without a complete image"
        if p.returncode == 0:
            break            # finished before the kill: nothing left to test on this store
    # The next command cleans what the kills left: no image directory without a record,
    # nothing in tmp/ but partial downloads kept for resuming.
    assert util.hpcrun(user, "images", env=env).returncode == 0
    recs = {r[:-5] for r in os.listdir(os.path.join(store, "records"))}
    assert set(os.listdir(os.path.join(store, "images"))) <= recs, f"seed {seed}"
    assert all(n.endswith(".partial") for n in os.listdir(os.path.join(store, "tmp"))), f"seed {seed}"
    cp = util.hpcrun(user, "pull", f"{px.host}/ns/big:v1", env=env, timeout=300)
    assert cp.returncode == 0, f"seed {seed}: {cp.stderr}"
    assert _complete(store, hexd)


def test_next_pull_resumes_a_failed_download(user, user_env_for, registry, big, fault_proxy):
    """A pull that gives up mid-layer keeps the part it has; the next pull asks for the rest."""
    biggest = big["layers"][-1]["digest"]
    cut = fault_proxy(lambda m, p, n: "truncate" if m == "GET" and p.endswith(biggest) else None)
    good = fault_proxy()
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=f"{cut.host},{good.host}")
    cp = util.hpcrun(user, "pull", f"{cut.host}/ns/big:v1", env=env, timeout=300)
    assert cp.returncode == 1
    partial = os.path.join(env["HPCRUN_STORE"], "tmp", biggest[7:] + ".partial")
    kept = os.path.getsize(partial)
    assert kept > 0
    cp = util.hpcrun(user, "pull", f"{good.host}/ns/big:v1", env=env, timeout=300)
    assert cp.returncode == 0, cp.stderr
    assert good.lines_for(biggest) == [f"GET /v2/ns/big/blobs/{biggest} bytes={kept}-"]
