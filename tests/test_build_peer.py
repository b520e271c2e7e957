"""Dockerfiles nobody here wrote, built unchanged: Charliecloud's test/Dockerfile.argenv
and test/Dockerfile.metadata (tests/data/build/charliecloud/SOURCE.md), on the busybox
test image tagged alpine:3.17 (their FROM). Expected values are Docker's, as Charliecloud's
test/build/50_dockerfile.bats lists them."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from fixtures_image import hp, ok

pytestmark = [pytest.mark.userns, pytest.mark.root]

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "build", "charliecloud")


@pytest.fixture
def chctx(user, user_tmp, store_env, image_files):
    ok(hp(user, store_env, "load", "-i", image_files["bb_docker"]))
    ok(hp(user, store_env, "tag", "test/busybox:1", "alpine:3.17"))
    d = os.path.join(user_tmp, "ch")
    shutil.copytree(HERE, d)
    for root, dirs, files in os.walk(d):
        for n in dirs + files + ["."]:
            os.chown(os.path.join(root, n), user.uid, user.gid)
    return d


def _chse(stderr: str) -> list:
    return [ln for ln in stderr.splitlines() if ln.startswith("chse_")]


@pytest.mark.parametrize("args,env,want", [
    ((), {}, ["chse_arg2_df=arg2", "chse_arg3_df=arg3 arg2", "chse_env1_df=env1",
              "chse_env2_df=env2 env1"]),
    (("--build-arg", "chse_arg1_df=foo1"), {},
     ["chse_arg1_df=foo1", "chse_arg2_df=arg2", "chse_arg3_df=arg3 arg2",
      "chse_env1_df=env1", "chse_env2_df=env2 env1"]),
    (("--build-arg", "chse_arg2_df=foo2"), {},
     ["chse_arg2_df=foo2", "chse_arg3_df=arg3 foo2", "chse_env1_df=env1",
      "chse_env2_df=env2 env1"]),
    (("--build-arg", "chse_arg1_df="), {"chse_arg1_df": "foo1"},
     ["chse_arg1_df=", "chse_arg2_df=arg2", "chse_arg3_df=arg3 arg2", "chse_env1_df=env1",
      "chse_env2_df=env2 env1"]),
])
def test_charliecloud_argenv_unchanged(user, store_env, chctx, args, env, want):
    cp = ok(hp(user, dict(store_env, **env), "build", "--no-cache", "-t", "tmpimg", *args,
               "-f", os.path.join(chctx, "Dockerfile.argenv"), chctx, timeout=120))
    assert _chse(cp.stderr) == want


def test_charliecloud_metadata_unchanged(user, store_env, chctx):
    ok(hp(user, store_env, "build", "-t", "meta", "-f",
          os.path.join(chctx, "Dockerfile.metadata"), chctx, timeout=120))
    doc = json.loads(ok(hp(user, store_env, "inspect", "meta")).stdout)[0]
    c = doc["Config"]
    assert c["Cmd"] == ["bar", "baz"]               # CMD came first: ENTRYPOINT keeps it
    assert c["Entrypoint"] == ["/bin/echo", "foo"]
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["ch_foo"] == "foo-ev" and env["ch_bar"] == "bar-ev"
    assert c["ExposedPorts"] == {"867/tcp": {}, "5309/udp": {}}
    assert c["Healthcheck"] == {"Test": ["CMD", "/bin/true"], "Interval": 60_000_000_000,
                                "Timeout": 5_000_000_000}
    assert c["Labels"] == {"ch-foo": "foo-label", "ch-bar": "bar-label"}
    assert doc["Author"] == "charlie@example.com"
    assert c["OnBuild"] == ["RUN echo hello"]
    assert c["Shell"] == ["/bin/ash", "-c"]
    assert c["StopSignal"] == "SIGWINCH"
    assert c["User"] == "charlie:chargrp"
    assert c["WorkingDir"] == "/mnt"
    assert c["Volumes"] == {"/mnt/foo": {}, "/mnt/bar": {}}
    out = ok(hp(user, store_env, "run", "meta")).stdout
    assert out == "foo bar baz\n"
