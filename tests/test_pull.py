"""`hpcrun pull` as the unprivileged user against Debian's docker-registry on loopback.

Images are built here (busybox root filesystems) and pushed with skopeo, the
independent client; hpcrun pulls them into a per-test store.
"""
import json
import os
import shutil

import pytest
import util
from fixtures_registry import OciLayout, err, hp, layer_from_files, skopeo_push

pytestmark = [pytest.mark.registry]




def image_dir(env, config_digest):
    return os.path.join(env["HPCRUN_STORE"], "images", config_digest.split(":")[1], "rootfs")


def records(env):
    d = os.path.join(env["HPCRUN_STORE"], "records")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def config_digest(layout: OciLayout, mdesc: dict) -> str:
    with open(os.path.join(layout.dir, "blobs", "sha256", mdesc["digest"][7:])) as f:
        return json.load(f)["config"]["digest"]


@pytest.fixture
def bb(registry, oci_layout, busybox_layer):
    """A two-layer busybox image pushed by skopeo as ns/bb:v1; returns its manifest descriptor."""
    m = oci_layout.image([busybox_layer, layer_from_files({"etc/": None, "etc/hello": b"hello from layer 2\n"})])
    oci_layout.tag(m, "v1")
    skopeo_push(oci_layout, "v1", registry, "ns/bb:v1")
    m["config"] = config_digest(oci_layout, m)
    return m


def test_pull_from_registry_marked_insecure(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", f"{registry.host}/ns/bb:v1")
    assert cp.returncode == 0, cp.stderr
    with open(os.path.join(image_dir(env, bb["config"]), "etc", "hello")) as f:
        assert f.read() == "hello from layer 2\n"


def test_pulled_files_belong_to_the_user(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    assert hp(user, env, "pull", f"{registry.host}/ns/bb:v1").returncode == 0
    st = os.stat(os.path.join(image_dir(env, bb["config"]), "bin", "busybox"))
    assert st.st_uid == user.uid


def test_pull_prints_the_registry_digest(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", f"{registry.host}/ns/bb:v1")
    assert f"Digest: {bb['digest']}" in cp.stderr.splitlines()


def test_batch_log_has_one_line_per_layer_event(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", f"{registry.host}/ns/bb:v1")
    lines = cp.stderr.splitlines()
    assert sum(1 for ln in lines if ln.endswith(": Pull complete")) == 2
    assert not any("\x1b[" in ln for ln in lines)   # no terminal escapes in a log


def test_second_pull_says_already_exists(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    assert hp(user, env, "pull", f"{registry.host}/ns/bb:v1").returncode == 0
    cp = hp(user, env, "pull", f"{registry.host}/ns/bb:v1")
    assert cp.returncode == 0, cp.stderr
    assert sum(1 for ln in cp.stderr.splitlines() if ln.endswith(": Already exists")) == 2
    assert f"Status: Image is up to date for {registry.host}/ns/bb:v1" in cp.stderr


def test_second_pull_downloads_no_layer(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    assert hp(user, env, "pull", f"{registry.host}/ns/bb:v1").returncode == 0
    before = registry.count("GET", "/blobs/sha256:")
    assert hp(user, env, "pull", f"{registry.host}/ns/bb:v1").returncode == 0
    assert registry.count("GET", "/blobs/sha256:") == before


def test_pull_by_digest(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", f"{registry.host}/ns/bb@{bb['digest']}")
    assert cp.returncode == 0, cp.stderr
    assert os.path.isfile(os.path.join(image_dir(env, bb["config"]), "etc", "hello"))


def test_pull_with_docker_transport_prefix(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", f"docker://{registry.host}/ns/bb:v1")
    assert cp.returncode == 0, cp.stderr


def test_insecure_flag_allows_plain_http(user, user_env_for, registry, bb):
    env = user_env_for()
    cp = hp(user, env, "pull", "--insecure", f"{registry.host}/ns/bb:v1")
    assert cp.returncode == 0, cp.stderr


def test_plain_http_registry_not_marked_insecure_is_refused(user, user_env_for, registry, bb):
    env = user_env_for()
    cp = hp(user, env, "pull", f"{registry.host}/ns/bb:v1")
    assert cp.returncode == 1
    assert err(cp).startswith(f"hpcrun: error: cannot talk HTTPS to {registry.host}")
    assert "insecure_registries" in cp.stderr and "--insecure" in cp.stderr
    assert records(env) == []


# ----------------------------------------------------------------------------- TLS

@pytest.fixture
def tls_bb(registry_tls, oci_layout, busybox_layer):
    m = oci_layout.image([busybox_layer])
    oci_layout.tag(m, "v1")
    skopeo_push(oci_layout, "v1", registry_tls, "ns/tls:v1")
    m["config"] = config_digest(oci_layout, m)
    return m


def test_tls_trusted_through_per_registry_ca_dir(user, user_env_for, registry_tls, pki, tls_bb):
    env = user_env_for()
    d = os.path.join(env["XDG_CONFIG_HOME"], "hpcrun", "certs.d", registry_tls.host)
    os.makedirs(d)
    shutil.copy(pki.ca, os.path.join(d, "ca.crt"))
    cp = hp(user, env, "pull", f"{registry_tls.host}/ns/tls:v1")
    assert cp.returncode == 0, cp.stderr


def test_tls_trusted_through_system_certs_dir_setting(user, user_env_for, registry_tls, pki, tls_bb):
    env = user_env_for()
    d = os.path.join(env["HPCRUN_SYSCONFDIR"], "certs.d", registry_tls.host)
    os.makedirs(d)
    shutil.copy(pki.ca, os.path.join(d, "ca.crt"))
    env["HPCRUN_CERTS_DIR"] = os.path.dirname(d)
    cp = hp(user, env, "pull", f"{registry_tls.host}/ns/tls:v1")
    assert cp.returncode == 0, cp.stderr


def test_tls_trusted_through_ssl_cert_file(user, user_env_for, registry_tls, pki, tls_bb):
    env = user_env_for(SSL_CERT_FILE=pki.ca)
    cp = hp(user, env, "pull", f"{registry_tls.host}/ns/tls:v1")
    assert cp.returncode == 0, cp.stderr


def test_tls_trusted_through_requests_ca_bundle(user, user_env_for, registry_tls, pki, tls_bb):
    env = user_env_for(REQUESTS_CA_BUNDLE=pki.ca)
    cp = hp(user, env, "pull", f"{registry_tls.host}/ns/tls:v1")
    assert cp.returncode == 0, cp.stderr


def test_tls_untrusted_certificate_is_refused(user, user_env_for, registry_tls, tls_bb):
    env = user_env_for()
    cp = hp(user, env, "pull", f"{registry_tls.host}/ns/tls:v1")
    assert cp.returncode == 1
    assert err(cp).startswith(f"hpcrun: error: cannot verify the TLS certificate of {registry_tls.host}")
    assert "hint:" in cp.stderr and "ca.crt" in cp.stderr
    assert records(env) == []


def test_tls_insecure_skips_verification(user, user_env_for, registry_tls, tls_bb):
    env = user_env_for()
    cp = hp(user, env, "pull", "--insecure", f"{registry_tls.host}/ns/tls:v1")
    assert cp.returncode == 0, cp.stderr


@pytest.fixture
def mtls_bb(registry_mtls, oci_layout, busybox_layer):
    m = oci_layout.image([busybox_layer])
    oci_layout.tag(m, "v1")
    skopeo_push(oci_layout, "v1", registry_mtls, "ns/mtls:v1")
    return m


def _certs_d(env, host, pki, client: bool):
    d = os.path.join(env["XDG_CONFIG_HOME"], "hpcrun", "certs.d", host)
    os.makedirs(d)
    shutil.copy(pki.ca, os.path.join(d, "ca.crt"))
    if client:
        shutil.copy(pki.client_cert, os.path.join(d, "client.cert"))
        shutil.copy(pki.client_key, os.path.join(d, "client.key"))
    for n in os.listdir(d):
        os.chmod(os.path.join(d, n), 0o644)
    return d


def test_client_certificate_from_certs_dir(user, user_env_for, registry_mtls, pki, mtls_bb):
    env = user_env_for()
    _certs_d(env, registry_mtls.host, pki, client=True)
    cp = hp(user, env, "pull", f"{registry_mtls.host}/ns/mtls:v1")
    assert cp.returncode == 0, cp.stderr


def test_registry_requiring_a_client_certificate_refuses_without(user, user_env_for, registry_mtls, pki,
                                                                   mtls_bb):
    env = user_env_for()
    _certs_d(env, registry_mtls.host, pki, client=False)
    cp = hp(user, env, "pull", f"{registry_mtls.host}/ns/mtls:v1")
    assert cp.returncode == 1
    assert registry_mtls.host in err(cp)
    assert "client.cert and client.key" in cp.stderr
    assert records(env) == []


# ----------------------------------------------------------------------------- platforms

@pytest.fixture
def multiarch(registry, oci_layout, busybox_layer):
    """ns/multi:v1 = an OCI index with linux/amd64 and linux/arm64/v8 (busybox + /etc/arch)."""
    descs = {}
    for arch, variant in (("amd64", None), ("arm64", "v8")):
        m = oci_layout.image([busybox_layer, layer_from_files({"etc/": None, "etc/arch": arch.encode()})],
                             arch=arch, variant=variant)
        descs[arch] = dict(m, config=config_digest(oci_layout, m))
    idx = oci_layout.index([{k: v for k, v in d.items() if k != "config"} for d in descs.values()])
    oci_layout.tag(idx, "v1")
    skopeo_push(oci_layout, "v1", registry, "ns/multi:v1", all_=True)
    # s390x only
    m = oci_layout.image([busybox_layer], arch="s390x")
    only = oci_layout.index([m])
    oci_layout.tag(only, "s390x")
    skopeo_push(oci_layout, "s390x", registry, "ns/other:v1", all_=True)
    return descs


def _arch_of(env, desc):
    with open(os.path.join(image_dir(env, desc["config"]), "etc", "arch")) as f:
        return f.read()


def test_platform_flag_picks_from_manifest_list(user, user_env_for, registry, multiarch):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", "--platform", "linux/arm64", f"{registry.host}/ns/multi:v1")
    assert cp.returncode == 0, cp.stderr
    assert _arch_of(env, multiarch["arm64"]) == "arm64"


def test_default_platform_is_the_host(user, user_env_for, registry, multiarch):
    import platform
    util.require(platform.machine() in ("x86_64", "aarch64"), "test images exist for amd64 and arm64 only")
    arch = "amd64" if platform.machine() == "x86_64" else "arm64"
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", f"{registry.host}/ns/multi:v1")
    assert cp.returncode == 0, cp.stderr
    assert _arch_of(env, multiarch[arch]) == arch


def test_manifest_list_for_another_platform_only_is_refused(user, user_env_for, registry, multiarch):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", "--platform", "linux/amd64", f"{registry.host}/ns/other:v1")
    assert cp.returncode == 1
    assert "no matching manifest for linux/amd64 in the manifest list entries" in err(cp)
    assert "linux/s390x" in cp.stderr and "--platform" in cp.stderr
    assert records(env) == []


def test_bad_platform_syntax_is_a_usage_error(user, user_env_for, registry, multiarch):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", "--platform", "linux//", f"{registry.host}/ns/multi:v1")
    assert cp.returncode == 2
    assert "invalid platform" in cp.stderr


def test_docker_schema2_manifest_list(user, user_env_for, registry, oci_layout, busybox_layer):
    """skopeo converts to Docker's media types (schema 2 manifests in a manifest list)."""
    from fixtures_registry import skopeo_inspect_raw
    descs = [oci_layout.image([busybox_layer, layer_from_files({"etc/": None, "etc/arch": a.encode()})],
                              arch=a) for a in ("amd64", "arm64")]
    idx = oci_layout.index(descs)
    oci_layout.tag(idx, "v1")
    skopeo_push(oci_layout, "v1", registry, "ns/docker:v1", all_=True, docker_v2s2=True)
    lst = json.loads(skopeo_inspect_raw(registry, "ns/docker:v1"))
    assert lst["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", "--platform", "linux/arm64", f"{registry.host}/ns/docker:v1")
    assert cp.returncode == 0, cp.stderr
    arm = [d for d in lst["manifests"] if d["platform"]["architecture"] == "arm64"][0]
    man = json.loads(skopeo_inspect_raw(registry, f"ns/docker@{arm['digest']}"))
    assert man["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    with open(os.path.join(image_dir(env, man["config"]["digest"]), "etc", "arch")) as f:
        assert f.read() == "arm64"


# ----------------------------------------------------------------------------- refusals

def test_unknown_tag_is_404(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", f"{registry.host}/ns/bb:nope")
    assert cp.returncode == 1
    first = err(cp)
    assert first == f"hpcrun: error: {registry.host}/ns/bb:nope: not found: manifest unknown"
    assert "hint:" in cp.stderr


def test_unknown_repository_is_404(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", f"{registry.host}/no/such:v1")
    assert cp.returncode == 1
    assert "not found" in err(cp)
    assert records(env) == []


def test_unknown_reference_syntax(user, user_env_for):
    cp = hp(user, user_env_for(), "pull", "UPPER/Case::bad")
    assert cp.returncode == 1
    assert err(cp).startswith("hpcrun: error: invalid reference format")
    assert "hint:" in cp.stderr


def test_unreachable_registry(user, user_env_for):
    from fixtures_registry import free_port
    host = f"127.0.0.1:{free_port()}"
    cp = hp(user, user_env_for(HPCRUN_INSECURE_REGISTRIES=host), "pull", f"{host}/a/b:c")
    assert cp.returncode == 1
    assert err(cp).startswith(f"hpcrun: error: cannot reach registry {host}")


def test_registry_500_is_reported(user, user_env_for, registry, bb, fault_proxy):
    px = fault_proxy(lambda m, p, n: "500" if "/manifests/" in p else None)
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=px.host)
    cp = hp(user, env, "pull", f"{px.host}/ns/bb:v1")
    assert cp.returncode == 1
    first = err(cp)
    assert f"registry {px.host} failed: 500 Internal Server Error" in first
    assert "injected failure" in first
    assert records(env) == []


def test_layer_digest_mismatch_is_refused(user, user_env_for, registry, bb, fault_proxy):
    # The wrong bytes come from the proxy: the real registry verifies what it stores.
    px = fault_proxy(lambda m, p, n: "wrong" if m == "GET" and "/blobs/" in p
                     and not p.endswith(bb["config"]) else None)
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=px.host)
    cp = hp(user, env, "pull", f"{px.host}/ns/bb:v1")
    assert cp.returncode == 1
    assert "digest mismatch" in err(cp)
    assert records(env) == []
    layers = [d["digest"] for d in _manifest(registry, bb)["layers"]]
    blobs = os.listdir(os.path.join(env["HPCRUN_STORE"], "blobs", "sha256"))
    assert not any(d[7:] in blobs for d in layers)


def test_manifest_digest_mismatch_is_refused(user, user_env_for, registry, bb, fault_proxy):
    px = fault_proxy(lambda m, p, n: "wrong" if "/manifests/" in p else None)
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=px.host)
    cp = hp(user, env, "pull", f"{px.host}/ns/bb@{bb['digest']}")
    assert cp.returncode == 1
    assert f"manifest {px.host}/ns/bb@{bb['digest']} digest mismatch" in err(cp)
    assert records(env) == []


def _manifest(registry, bb):
    from fixtures_registry import skopeo_inspect_raw
    return json.loads(skopeo_inspect_raw(registry, "ns/bb:v1"))


def test_dropped_connection_resumes_with_range(user, user_env_for, registry, bb, fault_proxy):
    big = max(_manifest(registry, bb)["layers"], key=lambda d: d["size"])["digest"]
    px = fault_proxy(lambda m, p, n: "truncate" if m == "GET" and p.endswith(big) and n == 1 else None)
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=px.host)
    cp = hp(user, env, "pull", f"{px.host}/ns/bb:v1")
    assert cp.returncode == 0, cp.stderr
    assert any(ln.startswith(f"GET /v2/ns/bb/blobs/{big} bytes=") for ln in px.lines), px.lines
    assert os.path.isfile(os.path.join(image_dir(env, bb["config"]), "bin", "busybox"))


def test_persistent_drops_fail_and_record_nothing(user, user_env_for, registry, bb, fault_proxy):
    big = max(_manifest(registry, bb)["layers"], key=lambda d: d["size"])["digest"]
    px = fault_proxy(lambda m, p, n: "truncate" if m == "GET" and p.endswith(big) else None)
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=px.host, HPCRUN_REGISTRY_TIMEOUT="10")
    cp = hp(user, env, "pull", f"{px.host}/ns/bb:v1")
    assert cp.returncode == 1
    assert f"download of layer {big} from {px.host} failed after" in err(cp)
    assert records(env) == []
    assert big[7:] not in os.listdir(os.path.join(env["HPCRUN_STORE"], "blobs", "sha256"))


# ----------------------------------------------------------------------------- runs

def _require_run():
    util.require(os.path.exists(os.path.join(os.path.dirname(util.__file__), "..", "hpcrun", "cli", "run.py")),
                 "the runtime's `hpcrun run` has not landed")


def test_skopeo_pushed_image_runs_by_id(user, user_env_for, registry, bb):
    _require_run()
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    assert hp(user, env, "pull", f"{registry.host}/ns/bb:v1").returncode == 0
    cp = hp(user, env, "run", bb["config"][7:19], "--", "cat", "/etc/os-release")
    assert cp.returncode == 0, cp.stderr
    assert "NAME=busybox-test" in cp.stdout


def test_skopeo_pushed_image_runs_by_name(user, user_env_for, registry, bb):
    _require_run()
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    assert hp(user, env, "pull", f"{registry.host}/ns/bb:v1").returncode == 0
    cp = hp(user, env, "run", f"{registry.host}/ns/bb:v1", "--", "cat", "/etc/os-release")
    assert cp.returncode == 0, cp.stderr
    assert "NAME=busybox-test" in cp.stdout


def test_run_pulls_a_missing_image(user, user_env_for, registry, bb):
    _require_run()
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "run", f"{registry.host}/ns/bb:v1", "--", "cat", "/etc/hello")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "hello from layer 2\n"


def test_pulled_squashfs_image_runs_by_id(user, user_env_for, registry, bb):
    _require_run()
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    assert hp(user, env, "pull", "--format", "squashfs", f"{registry.host}/ns/bb:v1").returncode == 0
    # --unpack: no FUSE needed (it extracts the squashfs file once into a node-local cache).
    cp = hp(user, env, "run", "--unpack", bb["config"][7:19], "--", "cat", "/etc/hello")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == "hello from layer 2\n"


def test_pull_squashfs_format(user, user_env_for, registry, bb):
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", "--format", "squashfs", f"{registry.host}/ns/bb:v1")
    assert cp.returncode == 0, cp.stderr
    sq = os.path.join(env["HPCRUN_STORE"], "images", bb["config"][7:], "image.sqfs")
    with open(sq, "rb") as f:
        assert f.read(4) == b"hsqs"


def test_zstd_layer(user, user_env_for, registry, oci_layout, busybox_layer):
    """A zstd layer pulls when the zstandard module is installed, else a clear refusal."""
    import subprocess
    util.require(shutil.which("zstd") is not None, "the zstd command is not installed")
    z = subprocess.run(["zstd", "-q", "-c", "-3"], input=busybox_layer, capture_output=True, check=True).stdout
    m = oci_layout.image([busybox_layer])
    man_path = os.path.join(oci_layout.dir, "blobs", "sha256", m["digest"][7:])
    with open(man_path) as f:
        man = json.load(f)
    man["layers"] = [oci_layout.blob(z, "application/vnd.oci.image.layer.v1.tar+zstd")]
    zm = oci_layout.blob(json.dumps(man).encode(), man["mediaType"])
    oci_layout.tag(zm, "zstd")
    skopeo_push(oci_layout, "zstd", registry, "ns/zstd:v1")
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host)
    cp = hp(user, env, "pull", f"{registry.host}/ns/zstd:v1")
    try:
        import zstandard  # noqa: F401
    except ImportError:
        assert cp.returncode == 1
        assert "zstd-compressed, but the zstandard module is missing" in err(cp)
        assert "hpcrun[zstd]" in cp.stderr
        assert records(env) == []
    else:
        assert cp.returncode == 0, cp.stderr
        assert os.path.isfile(os.path.join(image_dir(env, man["config"]["digest"]), "bin", "busybox"))
