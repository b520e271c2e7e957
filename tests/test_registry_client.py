"""The registry client's pure parts (challenges, platforms, progress, credential files),
and the behaviours the reference registry cannot show (redirects to another host)."""
import base64
import http.server
import io
import json
import os
import shutil
import threading

import pytest

import util
from hpcrun.errors import HpcrunError, RegistryError, UsageError
from hpcrun.image import auth
from hpcrun.image.progress import Progress
from hpcrun.image.registry import (Registry, parse_challenge, parse_platform, select_platform)


# ----------------------------------------------------------------------------- challenges

def test_bearer_challenge_with_quoted_commas():
    scheme, p = parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                                'scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert p == {"realm": "https://auth.example/token", "service": "reg",
                 "scope": "repository:a/b:pull,push"}


def test_basic_challenge():
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


def test_challenge_with_escaped_quote_and_bare_token():
    scheme, p = parse_challenge('Bearer realm="a\\"b", error=insufficient_scope')
    assert p == {"realm": 'a"b', "error": "insufficient_scope"}


# ----------------------------------------------------------------------------- platforms

INDEX = {"manifests": [
    {"digest": "sha256:" + "1" * 64, "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:" + "2" * 64, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
    {"digest": "sha256:" + "3" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
    {"digest": "sha256:" + "4" * 64, "platform": {"os": "unknown", "architecture": "unknown"}},
]}


def test_platform_exact_match():
    assert select_platform(INDEX, parse_platform("linux/amd64"))["digest"][7] == "1"


def test_platform_with_variant():
    assert select_platform(INDEX, parse_platform("linux/arm/v7"))["digest"][7] == "2"


def test_arm64_without_variant_matches_v8():
    assert select_platform(INDEX, parse_platform("linux/arm64"))["digest"][7] == "3"


def test_platform_missing_lists_what_exists():
    with pytest.raises(RegistryError) as ei:
        select_platform(INDEX, parse_platform("linux/s390x"))
    assert ei.value.what == "no matching manifest for linux/s390x in the manifest list entries"
    assert "linux/amd64" in ei.value.hint and "unknown" not in ei.value.hint


def test_platform_arch_alias():
    assert parse_platform("linux/x86_64") == {"os": "linux", "architecture": "amd64"}


@pytest.mark.parametrize("bad", ["linux//", "a/b/c/d", "/amd64"])
def test_bad_platform(bad):
    with pytest.raises(UsageError):
        parse_platform(bad)


# ----------------------------------------------------------------------------- progress

def test_progress_in_a_log_prints_each_status_once():
    out = io.StringIO()
    p = Progress(stream=out, tty=False)
    d = "sha256:" + "ab" * 32
    p.status(d, "Downloading")
    p.advance(d, 100, 1000)
    p.status(d, "Downloading")
    p.status(d, "Download complete")
    assert out.getvalue() == "abababababab: Downloading\nabababababab: Download complete\n"


def test_progress_on_a_terminal_redraws_in_place():
    out = io.StringIO()
    p = Progress(stream=out, tty=True)
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    p.status(a, "Downloading")
    p.status(b, "Downloading")
    p.status(a, "Download complete")
    s = out.getvalue()
    assert s.startswith("aaaaaaaaaaaa: Downloading\nbbbbbbbbbbbb: Downloading\n")
    assert "\x1b[2A\r\x1b[2Kaaaaaaaaaaaa: Download complete\r\x1b[2B" in s


def test_quiet_progress_prints_nothing():
    out = io.StringIO()
    p = Progress(quiet=True, stream=out, tty=True)
    p.status("sha256:" + "a" * 64, "Downloading")
    p.line("Digest: x")
    assert out.getvalue() == ""


# ----------------------------------------------------------------------------- credentials

@pytest.fixture
def cred_env(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("HPCRUN_AUTH_FILE", raising=False)
    return tmp_path


def _write(path, auths):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"auths": {k: {"auth": base64.b64encode(v.encode()).decode()} for k, v in auths.items()}}, f)


def test_docker_hub_url_key_is_found(cred_env):
    _write(str(cred_env / "docker" / "config.json"), {"https://index.docker.io/v1/": "u:p"})
    assert auth.lookup("docker.io") == ("u", "p")


def test_hpcrun_login_wins_over_docker(cred_env):
    _write(str(cred_env / "docker" / "config.json"), {"localhost:5000": "docker:x"})
    _write(auth.auth_file(), {"localhost:5000": "hpcrun:y"})
    assert auth.lookup("localhost:5000") == ("hpcrun", "y")


def test_password_with_colon(cred_env):
    _write(auth.auth_file(), {"h:1": "u:pa:ss"})
    assert auth.lookup("h:1") == ("u", "pa:ss")


def test_malformed_credentials_file_is_one_line_with_hint(cred_env):
    os.makedirs(os.path.dirname(auth.auth_file()))
    with open(auth.auth_file(), "w") as f:
        f.write("{not json")
    with pytest.raises(HpcrunError) as ei:
        auth.lookup("h:1")
    assert "cannot read credentials file" in ei.value.what and ei.value.hint


# ----------------------------------------------------------------------------- redirects

class _Recorder(http.server.BaseHTTPRequestHandler):
    """A fake registry that redirects blob GETs to a second server, as registries with
    object storage do (docker-registry's filesystem driver never redirects)."""

    seen: list = []
    target = ""
    body = b"blob-bytes"

    def log_message(self, *a):
        pass

    def do_GET(self):
        type(self).seen.append((self.server.server_address[1], self.path, self.headers.get("Authorization")))
        if self.path == "/v2/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path.startswith("/v2/"):
            self.send_response(307)
            self.send_header("Location", type(self).target + "/storage/blob")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
            self.end_headers()
            self.wfile.write(self.body)


def test_redirect_to_another_host_drops_credentials():
    import hashlib
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    _Recorder.seen = []
    _Recorder.target = f"http://127.0.0.1:{servers[1].server_address[1]}"
    try:
        host = f"127.0.0.1:{servers[0].server_address[1]}"
        reg = Registry(host, insecure=True, credentials=("u", "p"), use_stored_credentials=False)
        reg._challenge = ("basic", {})
        dg = "sha256:" + hashlib.sha256(_Recorder.body).hexdigest()
        assert reg.get_blob_bytes("a/b", dg) == _Recorder.body
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
    storage = [h for port, path, h in _Recorder.seen if path == "/storage/blob"]
    sent = [h for port, path, h in _Recorder.seen if path.startswith("/v2/a/b/")]
    assert storage == [None] and sent and sent[0].startswith("Basic ")


# ----------------------------------------------------------------------------- terminal

@pytest.mark.registry
def test_pull_on_a_terminal_draws_progress(user, user_env_for, registry, oci_layout, busybox_layer):
    from fixtures_registry import skopeo_push
    util.require(shutil.which("script") is not None, "util-linux script(1) is not installed")
    m = oci_layout.image([busybox_layer])
    oci_layout.tag(m, "v1")
    skopeo_push(oci_layout, "v1", registry, "ns/tty:v1")
    env = user_env_for(HPCRUN_INSECURE_REGISTRIES=registry.host, TERM="xterm")
    cp = util.as_user(user, ["script", "-qfec", f"{util.HPCRUN} pull {registry.host}/ns/tty:v1", "/dev/null"],
                      env=env)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "\x1b[" in cp.stdout and "Pull complete" in cp.stdout
