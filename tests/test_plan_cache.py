"""The plan cache behind the C launcher (cext/launcher.c, hpcrun/runtime/plancache.py).

A warm `hpcrun run` starts no Python; an image that changes, is retagged or removed is
never run from a stale plan; a corrupt or foreign entry is ignored and replaced; two
users never share an entry. All as the unprivileged user.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import util
from fixtures_image import hp, ok

pytestmark = pytest.mark.userns


def plans_dir(user) -> str:
    return f"/var/tmp/hpcrun-{user.uid}/plans"


def execs(user, *args, env=None) -> tuple:
    """Run hpcrun as the user under strace: (completed process, programs exec'd)."""
    util.require(shutil.which("strace") is not None, "strace is not installed")
    log = os.path.join(util.shared_tmpdir("hpcrun-strace-"), "log")
    os.chmod(os.path.dirname(log), 0o777)
    cp = util.as_user(user, ["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none",
                             "-o", log, util.HPCRUN, *args], env=env)
    with open(log) as f:
        progs = [ln.split('"')[1] for ln in f if "execve(" in ln and "= 0" in ln]
    shutil.rmtree(os.path.dirname(log), ignore_errors=True)
    return cp, progs


@pytest.fixture
def own_image(user, rt_userns):
    """A busybox image the test can change (with a config)."""
    d = util.shared_tmpdir("hpcrun-pcimg-")
    util.make_busybox_rootfs(d)
    os.makedirs(os.path.join(d, ".hpcrun"))
    write_config(d, {"Env": ["WHICH=first"], "Cmd": ["sh", "-c", "echo $WHICH"]})
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_config(d, conf):
    with open(os.path.join(d, ".hpcrun", "config.json.tmp"), "w") as f:
        json.dump({"config": conf}, f)
    os.replace(os.path.join(d, ".hpcrun", "config.json.tmp"), os.path.join(d, ".hpcrun", "config.json"))


def test_warm_run_starts_no_python(user, own_image):
    ok(util.hpcrun(user, "run", own_image))                    # plans it, fills the cache
    cp, progs = execs(user, "run", own_image, "--", "echo", "warm")
    assert cp.returncode == 0 and cp.stdout == "warm\n", cp.stderr
    assert not any("python" in p for p in progs), progs
    assert progs[-1].endswith("/echo") or progs[-1] == "/bin/echo", progs


def test_cold_run_goes_through_python(user, own_image):
    cp, progs = execs(user, "run", own_image, "--", "true", env={"HPCRUN_NO_PLAN_CACHE": "1"})
    assert cp.returncode == 0, cp.stderr
    assert any("python" in p for p in progs), progs


def test_per_invocation_parts_apply_on_a_hit(user, own_image, user_tmp):
    """Arguments, environment and cwd are the invocation's, not the cached plan's."""
    ok(util.hpcrun(user, "run", "-e", "KEEP", own_image, "true"))
    cp, progs = execs(user, "run", "-e", "KEEP", own_image, "sh", "-c", 'echo "$KEEP $PWD $1"', "-", "arg")
    assert not any("python" in p for p in progs)
    assert cp.stdout == " / arg\n"
    for _ in range(2):                       # cold, then warm: the same
        cp = util.as_user(user, [util.HPCRUN, "run", "-e", "KEEP", own_image, "sh", "-c",
                                 'echo "$KEEP $PWD"'], env={"KEEP": "mine"}, cwd=user.home)
        assert cp.stdout == f"mine {user.home}\n", cp.stderr


def test_changed_image_config_is_never_run_stale(user, own_image):
    assert ok(util.hpcrun(user, "run", own_image)).stdout == "first\n"
    assert ok(util.hpcrun(user, "run", own_image)).stdout == "first\n"   # warm
    write_config(own_image, {"Env": ["WHICH=second"], "Cmd": ["sh", "-c", "echo $WHICH"]})
    assert ok(util.hpcrun(user, "run", own_image)).stdout == "second\n"


def test_replaced_image_directory_is_never_run_stale(user, own_image):
    link = own_image + ".link"
    os.symlink(own_image, link)
    other = util.shared_tmpdir("hpcrun-pcimg2-")
    try:
        util.make_busybox_rootfs(other)
        os.makedirs(os.path.join(other, ".hpcrun"))
        write_config(other, {"Env": ["WHICH=other"], "Cmd": ["sh", "-c", "echo $WHICH"]})
        assert ok(util.hpcrun(user, "run", link)).stdout == "first\n"
        assert ok(util.hpcrun(user, "run", link)).stdout == "first\n"
        os.unlink(link)
        os.symlink(other, link)
        assert ok(util.hpcrun(user, "run", link)).stdout == "other\n"
    finally:
        os.unlink(link)
        shutil.rmtree(other, ignore_errors=True)


def test_retagged_and_removed_store_image(user, store_env, user_tmp, busybox_rootfs):
    tars = {}
    for which in ("one", "two"):
        t = os.path.join(user_tmp, f"{which}.tar")
        subprocess.run(["tar", "-C", busybox_rootfs, "-cf", t, "."], check=True)
        os.chmod(t, 0o644)
        tars[which] = t
        ok(hp(user, store_env, "import", t, f"pc/{which}:1", "--change",
              f"CMD [\"echo\", \"{which}\"]"))
    ok(hp(user, store_env, "tag", "pc/one:1", "pc/it:1"))
    assert ok(hp(user, store_env, "run", "pc/it:1")).stdout == "one\n"
    assert ok(hp(user, store_env, "run", "pc/it:1")).stdout == "one\n"     # warm
    ok(hp(user, store_env, "tag", "pc/two:1", "pc/it:1"))                  # retag
    assert ok(hp(user, store_env, "run", "pc/it:1")).stdout == "two\n"
    ok(hp(user, store_env, "rmi", "pc/it:1"))
    ok(hp(user, store_env, "rmi", "pc/two:1"))
    cp = hp(user, store_env, "run", "pc/two:1")
    assert cp.returncode == 125 and "two" not in cp.stdout, cp.stdout + cp.stderr


def entry_for(user, own_image) -> str:
    before = set(os.listdir(plans_dir(user))) if os.path.isdir(plans_dir(user)) else set()
    ok(util.hpcrun(user, "run", "--hostname", f"h{len(before)}", own_image, "true"))
    new = set(os.listdir(plans_dir(user))) - before
    assert len(new) == 1, new
    return os.path.join(plans_dir(user), new.pop())


def test_corrupt_entry_is_ignored_and_rebuilt(user, own_image):
    e = entry_for(user, own_image)
    with open(e, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(data.replace(b"flags=", b"flags=9"))     # a tampered plan: the sum fails
    host = e and open(e, "rb").read()
    hn = host.split(b"host=")[1].split(b",")[0].decode()
    cp, progs = execs(user, "run", "--hostname", hn, own_image, "hostname")
    assert cp.returncode == 0 and cp.stdout == hn + "\n", cp.stderr
    assert any("python" in p for p in progs)                # a miss: Python planned it again
    assert b"flags=9" not in open(e, "rb").read()           # and replaced the entry


def test_entry_not_private_is_ignored(user, own_image):
    e = entry_for(user, own_image)
    os.chmod(e, 0o666)                                      # writable by others: never trusted
    hn = open(e, "rb").read().split(b"host=")[1].split(b",")[0].decode()
    cp, progs = execs(user, "run", "--hostname", hn, own_image, "true")
    assert cp.returncode == 0 and any("python" in p for p in progs)
    assert os.stat(e).st_mode & 0o777 == 0o600


def test_two_users_never_share_an_entry(user, own_image):
    """Each user's entries live in a 0700 directory of their own, keyed by uid."""
    other = util.ensure_other_user() if hasattr(util, "ensure_other_user") else None
    if other is None:
        import pwd
        try:
            pw = pwd.getpwnam("hpcevil")
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", "hpcevil"], check=True)
            pw = pwd.getpwnam("hpcevil")
        other = util.User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    ok(util.hpcrun(user, "run", own_image, "true"))
    ok(util.hpcrun(other, "run", own_image, "true"))
    st = os.stat(plans_dir(user))
    assert st.st_uid == user.uid and st.st_mode & 0o777 == 0o700
    assert os.stat(plans_dir(other)).st_uid == other.uid
    cp = util.as_user(other, ["ls", plans_dir(user)])
    assert cp.returncode != 0                               # can't even list them


@pytest.mark.parametrize("executor", ["program", "cffi"])
def test_executor_parity(user, rt_config_image, user_tmp, executor):
    """The per-task program and the cffi module run the same executor: the same
    container from inside (environment, mounts, working directory, exit status)."""
    env = {"HPCRUN_EXECUTOR": executor, "HPCRUN_NO_PLAN_CACHE": "1", "HOST_ONLY": "h"}
    script = ('echo "env:$IMAGE_VAR:$SHARED:$HOST_ONLY:$PATH"; echo "cwd:$PWD"; '
              'grep -c " /tmp tmpfs" /proc/mounts; ls -d /data; exit 7')
    cp = util.as_user(user, [util.HPCRUN, "run", "-v", f"{user_tmp}:/data:ro", "-e", "SHARED=e",
                             "--entrypoint", "", rt_config_image, "sh", "-c", script], env=env)
    assert cp.returncode == 7, cp.stderr
    assert cp.stdout.splitlines() == ["env:from-image:e:h:/opt/app:/usr/bin:/bin", "cwd:/opt/app",
                                      "1", "/data"]


def test_planted_plan_cache_is_refused(user, own_image):
    """Another user's directory at the plan cache's place: refused, nothing run."""
    import pwd
    d = plans_dir(user)
    shutil.rmtree(d, ignore_errors=True)
    ok(util.hpcrun(user, "run", own_image, "true"))          # makes the parent
    shutil.rmtree(d)
    os.mkdir(d, 0o777)
    os.chmod(d, 0o777)                                       # (root's, world-writable)
    try:
        cp = util.hpcrun(user, "run", own_image, "sh", "-c", "echo ran")
        assert cp.returncode == 125 and "ran" not in cp.stdout, cp.stdout + cp.stderr
        assert cp.stderr.startswith(f"hpcrun: error: refusing to use the plan cache {d}"), cp.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)
    ok(util.hpcrun(user, "run", own_image, "true"))          # made afresh, private
    assert os.stat(d).st_uid == user.uid


def plant_hpcrun_package(d: str) -> None:
    """An `hpcrun` package in d whose main() prints PLANTED (readable by the user)."""
    pkg = os.path.join(d, "hpcrun", "cli")
    os.makedirs(pkg)
    for p in (os.path.dirname(pkg), pkg):
        open(os.path.join(p, "__init__.py"), "w").close()
    with open(os.path.join(pkg, "main.py"), "w") as f:
        f.write("def main():\n    print('PLANTED')\n    return 3\n")
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            os.chmod(os.path.join(root, n), 0o755)


def test_a_planted_hpcrun_package_in_the_cwd_is_not_imported(user, user_tmp):
    """The launcher's Python fallback must not import from the current directory."""
    plant_hpcrun_package(user_tmp)
    cp = util.as_user(user, [util.HPCRUN, "--version"], cwd=user_tmp)
    assert cp.returncode == 0 and "PLANTED" not in cp.stdout and cp.stdout.startswith("hpcrun ")


def installed_in_site_packages() -> bool:
    """Whether this venv's hpcrun is a real install (the launcher's -S start applies)."""
    cp = subprocess.run([sys.executable, "-c",
                         "import hpcrun, cffi, os, sysconfig; p = sysconfig.get_paths()['purelib'];"
                         "print(all(os.path.realpath(m.__file__).startswith(os.path.realpath(p))"
                         " for m in (hpcrun, cffi)))"],
                        capture_output=True, text=True, check=True)
    return cp.stdout.strip() == "True"


@pytest.mark.parametrize("with_site", [False, True])
def test_planned_run_starts_python_without_site_where_installed(user, own_image, user_tmp,
                                                                with_site):
    """A planned run skips `site` (its .pth files, sitecustomize) where hpcrun is a real
    install; HPCRUN_WITH_SITE=1, an editable install and every other command keep it."""
    marker = os.path.join(user_tmp, "site-ran")
    with open(os.path.join(user_tmp, "sitecustomize.py"), "w") as f:
        f.write(f"open({marker!r}, 'w').close()\n")
    os.chmod(os.path.join(user_tmp, "sitecustomize.py"), 0o644)
    env = {"PYTHONPATH": user_tmp, "HPCRUN_NO_PLAN_CACHE": "1"}
    if with_site:
        env["HPCRUN_WITH_SITE"] = "1"
    cp = util.as_user(user, [util.HPCRUN, "run", own_image, "--", "echo", "ran"], env=env)
    assert cp.returncode == 0 and cp.stdout == "ran\n", cp.stderr
    assert os.path.exists(marker) == (with_site or not installed_in_site_packages())
    if os.path.exists(marker):
        os.unlink(marker)
    ok(util.as_user(user, [util.HPCRUN, "images"], env=env))   # other commands: with site
    assert os.path.exists(marker)


def test_a_planted_hpcrun_package_in_the_cwd_is_not_imported_by_run(user, user_tmp, own_image):
    """The same for a planned run, whose Python starts without site."""
    plant_hpcrun_package(user_tmp)
    cp = util.as_user(user, [util.HPCRUN, "run", own_image, "--", "echo", "real"], cwd=user_tmp,
                      env={"HPCRUN_NO_PLAN_CACHE": "1"})
    assert cp.returncode == 0 and cp.stdout == "real\n", (cp.stdout, cp.stderr)
