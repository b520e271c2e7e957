"""hpcrun._core.join: another process enters a running container (for ranks of a node
sharing one container); run as the unprivileged user."""
from __future__ import annotations

import subprocess
import sys

import pytest

import util

pytestmark = [pytest.mark.userns, pytest.mark.root]

JOIN = """
import sys
from hpcrun import _core
from hpcrun.errors import HpcrunError
try:
    sys.exit(_core.join(int(sys.argv[1]), sys.argv[2:], ["PATH=/usr/bin:/bin"], "/"))
except HpcrunError as e:
    sys.stderr.write(e.what + "\\n")
    sys.exit(e.code)
"""


@pytest.fixture
def container(user, rt_image):
    """A running --pid=private container with its own hostname: yields its init's pid."""
    p = subprocess.Popen([util.HPCRUN, "run", "--pid=private", "--hostname", "joined",
                          rt_image, "sh", "-c", "echo ready; sleep 60"],
                         user=user.uid, group=user.gid, extra_groups=[], env=util.user_env(user),
                         cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
        init = int(f.read().split()[0])
    yield init
    p.kill()
    p.communicate()


def join(user, pid, *argv):
    return util.as_user(user, [sys.executable, "-c", JOIN, str(pid), *argv])


def test_join_sees_the_containers_hostname(user, container):
    assert join(user, container, "hostname").stdout.strip() == "joined"


def test_join_is_in_the_containers_pid_namespace(user, container):
    # init is 1, the first command 2: the joined process sees them, not the host's.
    cp = join(user, container, "cat", "/proc/1/comm")
    assert cp.stdout.strip() == "hpcrun:init"


def test_join_shares_the_user_namespace(user, container):
    import os
    cp = join(user, container, "readlink", "/proc/self/ns/user")
    assert cp.stdout.strip() == os.readlink(f"/proc/{container}/ns/user")


def test_join_status_passes_through(user, container):
    assert join(user, container, "sh", "-c", "exit 9").returncode == 9


def test_join_missing_command_is_127(user, container):
    cp = join(user, container, "no-such-command")
    assert cp.returncode == 127
    assert cp.stderr.strip() == "command not found in the container: no-such-command"
