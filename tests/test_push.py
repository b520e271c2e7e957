"""`hpcrun push` as hpcuser, cross-checked with skopeo (the independent client)."""
import json
import os
import tarfile

import pytest
from fixtures_registry import (
    RegistryServer,
    err,
    hp,
    layer_from_files,
    sha256,
    skopeo_copy_out,
    skopeo_inspect_raw,
    skopeo_push,
)

pytestmark = [pytest.mark.registry]




def pushed_digest(cp) -> str:
    lines = [ln for ln in cp.stderr.splitlines() if ": digest: sha256:" in ln]
    assert len(lines) == 1, cp.stderr
    return lines[0].split(": digest: ")[1].split()[0]


@pytest.fixture
def second_registry():
    r = RegistryServer("plain")
    yield r
    r.stop()


@pytest.fixture
def pulled(user, user_env_for, registry, second_registry, oci_layout, busybox_layer):
    """ns/bb:v1 pushed by skopeo to `registry` and pulled by hpcrun; env trusts both registries."""
    m = oci_layout.image([busybox_layer, layer_from_files({"etc/": None, "etc/hello": b"hi\n"})])
    oci_layout.tag(m, "v1")
    skopeo_push(oci_layout, "v1", registry, "ns/bb:v1")
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=f"{registry.host},{second_registry.host}")
    cp = hp(user, env, "pull", f"{registry.host}/ns/bb:v1")
    assert cp.returncode == 0, cp.stderr
    return m, env


def test_push_keeps_the_manifest_digest(user, registry, second_registry, pulled):
    m, env = pulled
    cp = hp(user, env, "push", f"{registry.host}/ns/bb:v1", f"{second_registry.host}/copy/bb:v1")
    assert cp.returncode == 0, cp.stderr
    assert pushed_digest(cp) == m["digest"]
    assert sha256(skopeo_inspect_raw(second_registry, "copy/bb:v1")) == m["digest"]


def test_skopeo_copies_what_hpcrun_pushed(user, registry, second_registry, pulled, user_tmp):
    m, env = pulled
    assert hp(user, env, "push", f"{registry.host}/ns/bb:v1",
              f"{second_registry.host}/copy/bb:v1").returncode == 0
    out = os.path.join(user_tmp, "skopeo-out")
    skopeo_copy_out(second_registry, "copy/bb:v1", out)   # skopeo verifies every blob digest
    with open(os.path.join(out, "index.json")) as f:
        assert json.load(f)["manifests"][0]["digest"] == m["digest"]


def test_push_uploads_each_layer(user, registry, second_registry, pulled):
    m, env = pulled
    cp = hp(user, env, "push", f"{registry.host}/ns/bb:v1", f"{second_registry.host}/copy/bb:v1")
    assert sum(1 for ln in cp.stderr.splitlines() if ln.endswith(": Pushed")) == 2
    assert second_registry.count("PUT", "/blobs/uploads/") == 3   # two layers and the config


def test_push_again_says_layer_already_exists(user, registry, second_registry, pulled):
    m, env = pulled
    dest = f"{second_registry.host}/copy/bb:v1"
    assert hp(user, env, "push", f"{registry.host}/ns/bb:v1", dest).returncode == 0
    cp = hp(user, env, "push", f"{registry.host}/ns/bb:v1", dest)
    assert cp.returncode == 0, cp.stderr
    assert sum(1 for ln in cp.stderr.splitlines() if ln.endswith(": Layer already exists")) == 2


def test_push_mounts_across_repositories(user, registry, pulled):
    m, env = pulled
    cp = hp(user, env, "push", f"{registry.host}/ns/bb:v1", f"{registry.host}/other/bb:v2")
    assert cp.returncode == 0, cp.stderr
    assert sum(1 for ln in cp.stderr.splitlines() if ln.endswith(": Mounted from ns/bb")) == 2
    assert registry.count("PATCH", "/v2/other/bb/blobs/uploads/") == 0
    assert sha256(skopeo_inspect_raw(registry, "other/bb:v2")) == m["digest"]


def test_push_an_imported_image(user, user_env_for, registry, busybox_rootfs, user_tmp):
    """An image hpcrun made itself (import) reads back in skopeo with the digests hpcrun printed."""
    tar = os.path.join(user_tmp, "rootfs.tar")
    with tarfile.open(tar, "w") as tf:
        tf.add(busybox_rootfs, arcname=".")
    os.chmod(tar, 0o644)
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "import", tar, f"{registry.host}/made/here:v1")
    assert cp.returncode == 0, cp.stderr
    image_id = cp.stdout.strip().splitlines()[-1]
    cp = hp(user, env, "push", f"{registry.host}/made/here:v1")
    assert cp.returncode == 0, cp.stderr
    raw = skopeo_inspect_raw(registry, "made/here:v1")
    assert sha256(raw) == pushed_digest(cp)
    assert json.loads(raw)["config"]["digest"] == image_id


def test_pull_what_hpcrun_pushed(user, user_env_for, registry, second_registry, pulled):
    m, env = pulled
    assert hp(user, env, "push", f"{registry.host}/ns/bb:v1",
              f"{second_registry.host}/copy/bb:v1").returncode == 0
    env2 = dict(env, HPCRUN_STORE=env["HPCRUN_STORE"] + "-2")
    cp = hp(user, env2, "pull", f"{second_registry.host}/copy/bb:v1")
    assert cp.returncode == 0, cp.stderr
    assert f"Digest: {m['digest']}" in cp.stderr


def test_push_of_an_unknown_image(user, user_env_for, registry):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "push", f"{registry.host}/not/here:v1")
    assert cp.returncode == 1
    assert "no such image" in err(cp)


def test_push_to_a_digest_is_refused(user, registry, pulled):
    m, env = pulled
    cp = hp(user, env, "push", f"{registry.host}/ns/bb:v1", f"{registry.host}/x/y@{m['digest']}")
    assert cp.returncode == 2
    assert "cannot push to a digest reference" in err(cp)


def test_push_to_plain_http_not_marked_insecure_is_refused(user, registry, second_registry, pulled):
    m, env = pulled
    env = dict(env, HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "push", f"{registry.host}/ns/bb:v1", f"{second_registry.host}/copy/bb:v1")
    assert cp.returncode == 1
    assert "cannot talk HTTPS" in err(cp) and "--insecure" in cp.stderr


def test_chunked_upload_through_the_api(registry, oci_layout, user_tmp):
    """Several PATCH chunks (the Python API's chunk_size) make the same blob."""
    from hpcrun.image.registry import Registry
    data = os.urandom(300_000)
    p = os.path.join(user_tmp, "blob")
    with open(p, "wb") as f:
        f.write(data)
    reg = Registry(registry.host, insecure=True, use_stored_credentials=False)
    reg.upload_blob("chunk/test", sha256(data), p, chunk_size=100_000)
    assert registry.count("PATCH", "/v2/chunk/test/blobs/uploads/") == 3
    assert reg.get_blob_bytes("chunk/test", sha256(data)) == data
