"""Descriptors and the working directory: what the caller hands in never reaches the
container but for what MPI needs and --preserve-fds N, and the command never starts in
a directory outside the container's root (the runc CVE-2024-21626 class)."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

import chtest_image
import util
from fixtures_runtime import run

pytestmark = [pytest.mark.userns, pytest.mark.root]


@pytest.fixture(scope="module")
def img(rt_userns) -> str:
    d = util.shared_tmpdir("hpcrun-fdimg-")
    root = chtest_image.build(os.path.join(d, "img"))
    yield root
    shutil.rmtree(d, ignore_errors=True)


def sh(user, line, env=None):
    """A shell line as the user (redirections such as 3</ give the descriptors)."""
    return util.as_user(user, ["sh", "-c", line], env=env)


def hp(*args):
    return " ".join(shlex.quote(a) for a in [util.HPCRUN, *args])


def fds(cp):
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.split()


def test_hpcruns_own_descriptors_do_not_leak(user, img):
    assert fds(run(user, img, "--", "chtest", "fds")) == []


def test_hpcruns_own_descriptors_do_not_leak_on_a_warm_run(user, img):
    # The second run finds its plan in the plan cache: the C launcher, no Python.
    for _ in range(2):
        assert fds(sh(user, hp("run", "--hostname", "warm", img, "--", "chtest", "fds")
                      + " 3</")) == []


def test_hpcruns_own_descriptors_do_not_leak_with_pid_private(user, img):
    assert fds(run(user, "--pid=private", img, "--", "chtest", "fds")) == []


def test_inherited_descriptor_is_closed(user, img):
    # 3</ would reach the host's root through /proc/self/fd/3.
    assert fds(sh(user, hp("run", img, "--", "chtest", "fds") + " 3</ 7</dev/null")) == []


def test_inherited_descriptor_is_closed_without_close_range(user, img):
    cp = sh(user, hp("run", img, "--", "chtest", "fds") + " 3</ 7</dev/null",
            env={"HPCRUN_CORE_FALLBACKS": "1"})
    assert fds(cp) == []


def test_inherited_descriptor_is_closed_with_pid_private(user, img):
    assert fds(sh(user, hp("run", "--pid=private", img, "--", "chtest", "fds") + " 3</")) == []


def test_host_root_is_unreachable_through_an_inherited_descriptor(user, img):
    cp = sh(user, hp("run", img, "--", "ls", "/proc/self/fd/3/") + " 3</")
    assert cp.returncode != 0
    assert "No such file or directory" in cp.stderr


def test_preserve_fds_keeps_the_first_n(user, img):
    line = hp("run", "--preserve-fds", "2", img, "--", "chtest", "fds")
    assert fds(sh(user, line + " 3</dev/null 4</dev/null 5</dev/null 9</")) == ["3", "4"]


def test_preserve_fds_keeps_the_first_n_without_close_range(user, img):
    line = hp("run", "--preserve-fds", "1", img, "--", "chtest", "fds")
    cp = sh(user, line + " 3</dev/null 4</dev/null", env={"HPCRUN_CORE_FALLBACKS": "1"})
    assert fds(cp) == ["3"]


def test_preserved_descriptor_is_usable(user, img):
    line = hp("run", "--preserve-fds", "1", img, "--", "sh", "-c", "cat <&3")
    cp = sh(user, f"echo through-fd-3 | {line} 3<&0 </dev/null")
    assert cp.stdout.strip() == "through-fd-3", cp.stderr


def test_preserve_fds_zero_keeps_none(user, img):
    line = hp("run", "--preserve-fds", "0", img, "--", "chtest", "fds")
    assert fds(sh(user, line + " 3</dev/null")) == []


def test_preserve_fds_refuses_a_bad_value(user, img):
    cp = run(user, "--preserve-fds", "many", img, "--", "true")
    assert cp.returncode == 125
    assert cp.stderr.startswith("hpcrun: error: --preserve-fds 'many'"), cp.stderr
    assert "hint:" in cp.stderr


def test_pmi_fd_is_kept(user, img):
    # Slurm's mpi/pmi2 (and hydra, Flux) hand the rank its PMI connection as PMI_FD.
    line = hp("run", img, "--", "chtest", "fds")
    assert fds(sh(user, line + " 3</dev/null 5</dev/null", env={"PMI_FD": "5"})) == ["5"]


def test_pmi_fd_is_kept_without_close_range(user, img):
    line = hp("run", img, "--", "chtest", "fds")
    cp = sh(user, line + " 3</dev/null 5</dev/null",
            env={"PMI_FD": "5", "HPCRUN_CORE_FALLBACKS": "1"})
    assert fds(cp) == ["5"]


def test_pmi_fd_not_a_number_keeps_nothing(user, img):
    line = hp("run", img, "--", "chtest", "fds")
    assert fds(sh(user, line + " 3</dev/null", env={"PMI_FD": "3x"})) == []


# ---------------------------------------------------------------- working directory

def test_workdir_through_an_inherited_descriptor_is_refused(user, img):
    cp = sh(user, hp("run", "-w", "/proc/self/fd/3", img, "--", "pwd") + " 3</")
    assert cp.returncode == 125
    assert ("hpcrun: error: can't use working directory /proc/self/fd/3: it lies outside "
            "the container's root") in cp.stderr
    assert "hint:" in cp.stderr


def test_workdir_through_a_preserved_descriptor_is_refused(user, img):
    cp = sh(user, hp("run", "--preserve-fds", "1", "-w", "/proc/self/fd/3", img, "--", "pwd")
            + " 3</")
    assert cp.returncode == 125
    assert "lies outside the container's root" in cp.stderr


def test_workdir_through_a_host_process_cwd_is_refused(user, img):
    p = subprocess.Popen(["sleep", "60"], user=user.uid, group=user.gid, extra_groups=[],
                         cwd="/")
    try:
        cp = run(user, "-w", f"/proc/{p.pid}/cwd", img, "--", "pwd")
    finally:
        p.kill()
        p.wait()
    # The kernel refuses the magic link itself here (a process of the parent user
    # namespace is not ours to inspect); the root check would catch it otherwise.
    assert cp.returncode == 125
    assert cp.stdout == ""
    assert cp.stderr.startswith(f"hpcrun: error: can't chdir to /proc/{p.pid}/cwd: "
                                "Permission denied") or "lies outside" in cp.stderr


def test_workdir_through_proc_is_refused_with_pid_private(user, img):
    cp = sh(user, hp("run", "--pid=private", "-w", "/proc/self/fd/3", img, "--", "pwd")
            + " 3</")
    assert cp.returncode == 125
    assert "lies outside the container's root" in cp.stderr


def test_workdir_inside_is_kept(user, img):
    cp = run(user, "-w", "/tmp/made", img, "--", "chtest", "cwd")
    assert cp.stdout.strip() == "/tmp/made", cp.stderr


# ---------------------------------------------------------------- -vv after a failure

@pytest.mark.parametrize("verbose", ["-vv", "-v"])
def test_failure_after_the_root_changed_reports_cleanly(user, img, user_tmp, verbose):
    # The working directory can't be made on a read-only bind: the core fails after
    # pivot_root, where the host's standard library is gone. The C executor reports it
    # itself (one line and a hint, exit 125); no Python runs after the root changed,
    # so -vv has no traceback to fail on (it used to end in ModuleNotFoundError).
    cp = util.hpcrun(user, verbose, "run", "-v", f"{user_tmp}:/ro:ro", "-w", "/ro/x", img,
                     "--", "pwd")
    assert cp.returncode == 125
    lines = [ln for ln in cp.stderr.splitlines() if not ln.startswith("hpcrun: debug:")]
    assert lines[0] == "hpcrun: error: can't create working directory /ro/x: " \
        "Read-only file system", cp.stderr
    assert lines[1].startswith("hint: ")
    assert len(lines) == 2, cp.stderr
    assert "Traceback" not in cp.stderr and "ModuleNotFoundError" not in cp.stderr


# ---------------------------------------------------------------- joining a container

JOIN = """
import os, sys
from hpcrun import _core
from hpcrun.errors import ContainerError
pid, wd = int(sys.argv[1]), sys.argv[2]
try:
    _core.join(pid, ["chtest", sys.argv[3]], ["PATH=/usr/local/bin:/bin"], wd)
except ContainerError as e:
    print("error:", e, file=sys.stderr)
    sys.exit(e.code)
"""


@pytest.fixture
def container(user, img):
    """A running container (in place: the process is the command) to join."""
    p = subprocess.Popen([util.HPCRUN, "run", img, "--", "sleep", "60"], user=user.uid,
                         group=user.gid, extra_groups=[], env=util.user_env(user),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            if os.readlink(f"/proc/{p.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt") and \
                    open(f"/proc/{p.pid}/comm").read().strip() == "sleep":
                break
        except OSError:
            pass
        time.sleep(0.05)
    yield p.pid
    p.kill()
    p.wait()


def join(user, pid, wd, what):
    line = " ".join(shlex.quote(a) for a in [sys.executable, "-c", JOIN, str(pid), wd, what])
    return sh(user, line + " 3</")


def test_join_closes_inherited_descriptors(user, container):
    cp = join(user, container, "/", "fds")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == []


def test_join_refuses_a_workdir_outside(user, container):
    cp = join(user, container, "/proc/self/fd/3", "cwd")
    assert cp.returncode == 125
    assert "lies outside the container's root" in cp.stderr


# ---------------------------------------------------------------- squashfuse

FIND_SERVER = """
for p in /proc/[0-9]*; do
  if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q "$IMG"; then
    echo "server ${p#/proc/}"
    cat $p/root$MARKER && echo "LEAK root"
    ls $p/fd/ >/dev/null 2>&1 && for f in $p/fd/*; do cat $f/$MARKER 2>/dev/null && echo "LEAK fd"; done
    cat $p/cwd$MARKER 2>/dev/null && echo "LEAK cwd"
  fi
done
true
"""


@pytest.mark.parametrize("opts", [[], ["--pid=private"]], ids=["in-place", "pid-private"])
def test_squashfuse_gives_no_way_to_the_host(user, img, rt_fuse_open, opts):
    # squashfuse runs in the host's mount namespace: were it a process of the
    # container's user namespace, its /proc/PID/root would be the host's tree.
    d = util.shared_tmpdir("hpcrun-sqfsleak-")
    try:
        sq = os.path.join(d, "img.sqfs")
        subprocess.run(["mksquashfs", img, sq, "-noappend", "-quiet", "-no-progress"],
                       check=True, capture_output=True)
        os.chmod(sq, 0o644)
        marker = os.path.join(d, "marker")
        with open(marker, "w") as f:
            f.write("host-side\n")
        os.chmod(marker, 0o644)
        cp = run(user, *opts, sq, "--", "sh", "-c", FIND_SERVER,
                 env={"IMG": sq, "MARKER": marker})
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert cp.returncode == 0, cp.stderr
    if "--pid=private" not in opts:
        assert "server " in cp.stdout, cp.stdout     # found it: the check is not vacuous
    assert "host-side" not in cp.stdout and "LEAK" not in cp.stdout, cp.stdout
