"""Bad input to instances: one-line errors with a hint, nothing left running; another
user can neither see, enter nor stop an instance."""
from __future__ import annotations

import os
import sys

import pytest

import util

pytestmark = [pytest.mark.userns, pytest.mark.root]


def _one_error(cp, *words):
    err = [l for l in cp.stderr.splitlines() if l.startswith("hpcrun: error:")]
    assert len(err) == 1, cp.stderr
    for w in words:
        assert w in err[0]
    assert "hint:" in cp.stderr


def test_exec_into_a_missing_name(inst):
    cp = inst("exec", "nosuch", "true")
    assert cp.returncode == 125
    _one_error(cp, "no such instance: nosuch")


def test_start_with_a_name_in_use(inst, rt_image):
    inst.ok("instance", "start", "--name", "dup", rt_image)
    before = _supervisors(inst.user.uid)
    cp = inst("instance", "start", "--name", "dup", rt_image)
    assert cp.returncode != 0
    _one_error(cp, "'dup' is already in use")
    assert inst.ok("ps").stdout.count("dup") == 1
    assert _supervisors(inst.user.uid) == before


def _supervisors(uid):
    return sorted(p for p, c in util.live_processes() if c == "hpcrun:instance"
                  and _owner(p) == uid)


def _owner(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def test_stop_of_a_gone_instance(inst):
    cp = inst("instance", "stop", "gone")
    assert cp.returncode != 0
    _one_error(cp, "no such instance: gone")


def test_start_with_a_missing_image_leaves_no_record(inst):
    cp = inst("instance", "start", "--name", "noimg", "/no/such/image")
    assert cp.returncode != 0
    assert "hpcrun: error:" in cp.stderr
    assert not os.path.exists(inst.state("noimg"))


def test_start_with_a_command_not_found_leaves_nothing(inst, rt_image):
    cp = inst("instance", "start", "--name", "nocmd", rt_image, "no-such-command")
    assert cp.returncode != 0
    _one_error(cp, "command not found")
    assert not os.path.exists(inst.state("nocmd"))


def test_bad_name(inst, rt_image):
    cp = inst("instance", "start", "--name", "../x", rt_image)
    assert cp.returncode == 2
    _one_error(cp, "invalid instance name")


def test_another_user_cannot_list_enter_or_stop(inst, evil_inst, rt_image, evil):
    inst.ok("instance", "start", "--name", "mine", rt_image)
    pid = inst.pid("mine")
    # In their own state directory: nothing to see.
    assert "mine" not in evil_inst.ok("ps", "-a").stdout
    _one_error(evil_inst("exec", "mine", "true"), "no such instance: mine")
    _one_error(evil_inst("instance", "stop", "mine"), "no such instance: mine")
    # Pointed at the owner's directory: refused, not followed.
    # (the kernel already refuses the 0700 directory; a readable one would be refused
    # as not theirs, see test_state_directory_of_another_user_is_refused)
    cp = util.hpcrun(evil, "ps", env={"XDG_RUNTIME_DIR": inst.xdg})
    assert cp.returncode != 0
    _one_error(cp, "the instance directory")
    cp = util.hpcrun(evil, "exec", "mine", "true", env={"XDG_RUNTIME_DIR": inst.xdg})
    assert cp.returncode == 125
    _one_error(cp, "the instance directory")
    # Straight at the supervisor's namespaces: the kernel refuses.
    join = ("import sys\nfrom hpcrun import _core\ntry:\n    _core.join(int(sys.argv[1]), "
            "['true'], [], '/')\nexcept Exception as e:\n    print(e); sys.exit(9)\n")
    cp = util.as_user(evil, [sys.executable, "-c", join, str(pid)])
    assert cp.returncode == 9 and "Permission denied" in cp.stdout
    # Nor can they signal it.
    cp = util.as_user(evil, ["kill", "-TERM", str(pid)])
    assert cp.returncode != 0
    assert inst.ok("exec", "mine", "true").returncode == 0


def test_state_directory_of_another_user_is_refused(inst, evil, rt_image):
    inst.ok("instance", "start", "--name", "theirs", rt_image)
    os.chmod(inst.xdg, 0o755)
    os.chmod(os.path.join(inst.xdg, "hpcrun"), 0o755)
    cp = util.hpcrun(evil, "ps", env={"XDG_RUNTIME_DIR": inst.xdg})
    assert cp.returncode != 0
    _one_error(cp, "not by you")
    assert "theirs" not in cp.stdout


def test_group_writable_state_directory_is_refused(inst, rt_image):
    inst.ok("instance", "start", "--name", "gw", rt_image)
    os.chmod(os.path.join(inst.xdg, "hpcrun"), 0o770)
    cp = inst("ps")
    assert cp.returncode != 0
    _one_error(cp, "writable by group or others")
    os.chmod(os.path.join(inst.xdg, "hpcrun"), 0o700)


def test_symlinked_state_directory_is_refused(inst, user_tmp):
    link = os.path.join(inst.xdg, "hpcrun")
    os.symlink(user_tmp, link)
    os.lchown(link, inst.user.uid, inst.user.gid)     # the user's own (root's are followed)
    cp = inst("instance", "start", "--name", "sl", "/")
    assert cp.returncode != 0
    _one_error(cp, "symbolic link")


def test_exec_without_command(inst, rt_image):
    inst.ok("instance", "start", "--name", "nc", rt_image)
    cp = inst("exec", "nc")
    assert cp.returncode == 125
    _one_error(cp, "no command given")


@pytest.mark.parametrize("opts, what", [(["--memory", "1k"], "--memory 1k is below"),
                                        (["--cpuset-cpus", "99"], "is not allowed here"),
                                        (["--cpus", "0.5"], "needs a CPU quota")])
def test_start_with_bad_limits_leaves_nothing(inst, rt_image, opts, what):
    cp = inst("instance", "start", "--name", "lim", *opts, rt_image)
    assert cp.returncode == 125, cp.stderr
    _one_error(cp, what)
    assert not os.path.exists(inst.state("lim"))
