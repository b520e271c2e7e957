"""`hpcrun login` / `logout` and authenticated pulls: htpasswd basic auth and bearer tokens.

The basic-auth registry is docker-registry with an htpasswd file made by `htpasswd -B`;
the token registry is docker-registry with `auth: token` trusting a token endpoint the
test runs (fixtures_registry.TokenServer). Everything hpcrun does runs as hpcuser.
"""
import base64
import json
import os
import stat

import pytest
from fixtures_registry import CANNED_PASSWORD, CANNED_USER, err, hp, skopeo_push

pytestmark = [pytest.mark.registry]
CREDS = f"{CANNED_USER}:{CANNED_PASSWORD}"




def auth_file(env) -> str:
    return os.path.join(env["XDG_CONFIG_HOME"], "hpcrun", "auth.json")


def login(user, env, host, password=CANNED_PASSWORD, name=CANNED_USER):
    return hp(user, env, "login", "-u", name, "--password-stdin", host, input=password + "\n")


def push_image(oci_layout, layer, reg, dest):
    m = oci_layout.image([layer])
    oci_layout.tag(m, "t")
    skopeo_push(oci_layout, "t", reg, dest, creds=CREDS)
    return m


# ----------------------------------------------------------------------------- basic auth

@pytest.fixture
def basic(registry_basic, oci_layout, busybox_layer, user_env_for):
    push_image(oci_layout, busybox_layer, registry_basic, "private/bb:v1")
    return registry_basic, user_env_for(HPCRUN_INSECURE_REGISTRIES=registry_basic.host)


def test_login_succeeds_and_stores_credentials(user, basic):
    reg, env = basic
    cp = login(user, env, reg.host)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "Login Succeeded"
    with open(auth_file(env)) as f:
        entry = json.load(f)["auths"][reg.host]
    assert base64.b64decode(entry["auth"]).decode() == CREDS


def test_credentials_file_is_private(user, basic):
    reg, env = basic
    assert login(user, env, reg.host).returncode == 0
    st = os.stat(auth_file(env))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == user.uid


def test_login_with_wrong_password_stores_nothing(user, basic):
    reg, env = basic
    cp = login(user, env, reg.host, password="wrong")
    assert cp.returncode == 1
    assert "unauthorized: incorrect username or password" in err(cp)
    assert "hint:" in cp.stderr
    assert not os.path.exists(auth_file(env))


def test_wrong_password_keeps_the_previous_login(user, basic):
    reg, env = basic
    assert login(user, env, reg.host).returncode == 0
    assert login(user, env, reg.host, password="wrong").returncode == 1
    assert hp(user, env, "pull", f"{reg.host}/private/bb:v1").returncode == 0


def test_pull_without_login_is_401_with_hint(user, basic):
    reg, env = basic
    cp = hp(user, env, "pull", f"{reg.host}/private/bb:v1")
    assert cp.returncode == 1
    assert "unauthorized" in err(cp)
    assert f"hint: log in with 'hpcrun login {reg.host}'" in cp.stderr


def test_pull_after_login(user, basic):
    reg, env = basic
    assert login(user, env, reg.host).returncode == 0
    cp = hp(user, env, "pull", f"{reg.host}/private/bb:v1")
    assert cp.returncode == 0, cp.stderr


def test_docker_config_json_login_is_used(user, basic):
    reg, env = basic
    os.makedirs(env["DOCKER_CONFIG"])
    with open(os.path.join(env["DOCKER_CONFIG"], "config.json"), "w") as f:
        json.dump({"auths": {reg.host: {"auth": base64.b64encode(CREDS.encode()).decode()}}}, f)
    os.chmod(env["DOCKER_CONFIG"], 0o755)
    cp = hp(user, env, "pull", f"{reg.host}/private/bb:v1")
    assert cp.returncode == 0, cp.stderr


def test_containers_auth_json_login_is_used(user, basic):
    reg, env = basic
    path = os.path.join(env["XDG_RUNTIME_DIR"], "containers", "auth.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"auths": {reg.host: {"auth": base64.b64encode(CREDS.encode()).decode()}}}, f)
    os.chmod(path, 0o644)
    for d in (os.path.dirname(path), env["XDG_RUNTIME_DIR"]):
        os.chmod(d, 0o755)
    cp = hp(user, env, "pull", f"{reg.host}/private/bb:v1")
    assert cp.returncode == 0, cp.stderr


def test_logout_forgets_credentials(user, basic):
    reg, env = basic
    assert login(user, env, reg.host).returncode == 0
    cp = hp(user, env, "logout", reg.host)
    assert cp.returncode == 0
    assert cp.stdout.strip() == f"Removing login credentials for {reg.host}"
    cp = hp(user, env, "pull", f"{reg.host}/private/bb:v1")
    assert cp.returncode == 1 and "unauthorized" in err(cp)


def test_logout_when_not_logged_in(user, basic):
    reg, env = basic
    cp = hp(user, env, "logout", reg.host)
    assert cp.returncode == 0
    assert cp.stdout.strip() == f"Not logged in to {reg.host}"


def test_push_without_login_is_401_with_hint(user, basic, user_tmp):
    reg, env = basic
    assert login(user, env, reg.host).returncode == 0
    assert hp(user, env, "pull", f"{reg.host}/private/bb:v1").returncode == 0
    assert hp(user, env, "logout", reg.host).returncode == 0
    cp = hp(user, env, "push", f"{reg.host}/private/bb:v1", f"{reg.host}/private/copy:v1")
    assert cp.returncode == 1
    assert "unauthorized" in err(cp) and f"hpcrun login {reg.host}" in cp.stderr


def test_push_after_login(user, basic):
    reg, env = basic
    assert login(user, env, reg.host).returncode == 0
    assert hp(user, env, "pull", f"{reg.host}/private/bb:v1").returncode == 0
    cp = hp(user, env, "push", f"{reg.host}/private/bb:v1", f"{reg.host}/private/copy:v1")
    assert cp.returncode == 0, cp.stderr


# ----------------------------------------------------------------------------- bearer tokens

@pytest.fixture
def token(registry_token, oci_layout, busybox_layer, user_env_for):
    push_image(oci_layout, busybox_layer, registry_token, "private/bb:v1")
    push_image(oci_layout, busybox_layer, registry_token, "public/bb:v1")
    return registry_token, user_env_for(HPCRUN_INSECURE_REGISTRIES=registry_token.host)


def test_token_login_succeeds(user, token):
    reg, env = token
    cp = login(user, env, reg.host)
    assert cp.returncode == 0, cp.stderr
    assert os.path.exists(auth_file(env))


def test_token_login_with_wrong_password_fails(user, token):
    reg, env = token
    cp = login(user, env, reg.host, password="nope")
    assert cp.returncode == 1
    assert "incorrect username or password" in err(cp)
    assert not os.path.exists(auth_file(env))


def test_token_anonymous_pull_of_public_repository(user, token):
    reg, env = token
    cp = hp(user, env, "pull", f"{reg.host}/public/bb:v1")
    assert cp.returncode == 0, cp.stderr


def test_token_anonymous_pull_of_private_repository_is_refused(user, token):
    reg, env = token
    cp = hp(user, env, "pull", f"{reg.host}/private/bb:v1")
    assert cp.returncode == 1
    assert "unauthorized" in err(cp)
    assert f"hpcrun login {reg.host}" in cp.stderr


def test_token_pull_after_login_sends_credentials_to_the_realm(user, token):
    reg, env = token
    assert login(user, env, reg.host).returncode == 0
    cp = hp(user, env, "pull", f"{reg.host}/private/bb:v1")
    assert cp.returncode == 0, cp.stderr
    granted = [r for r in reg.token.requests if r.get("user") == CANNED_USER and r.get("scope")]
    assert any("repository:private/bb:pull" in r["scope"] for r in granted)


def test_token_push_after_login(user, token):
    reg, env = token
    assert login(user, env, reg.host).returncode == 0
    assert hp(user, env, "pull", f"{reg.host}/private/bb:v1").returncode == 0
    cp = hp(user, env, "push", f"{reg.host}/private/bb:v1", f"{reg.host}/private/pushed:v2")
    assert cp.returncode == 0, cp.stderr
    assert "Mounted from private/bb" in cp.stderr
