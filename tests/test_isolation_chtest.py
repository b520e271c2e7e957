"""Isolation checks inside a container, as the unprivileged user, modelled on
Charliecloud's chtest: each test runs one check of tests/chtest.c (compiled static into
a busybox image) and the kernel must refuse it. chtest prints DENIED/ESCAPED/ERROR and
exits 0/1/2; a check that finds nothing to try here is an error, not a pass."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import termios

import pytest

import chtest_image
import util
from fixtures_runtime import run

pytestmark = [pytest.mark.userns, pytest.mark.root]


@pytest.fixture(scope="module")
def img(rt_userns) -> str:
    d = util.shared_tmpdir("hpcrun-chtest-")
    root = chtest_image.build(os.path.join(d, "img"))
    yield root
    shutil.rmtree(d, ignore_errors=True)


def check(user, img, *args, opts=(), **kw):
    """Run `chtest ARGS` in img; return the completed process (stdout: its report)."""
    return run(user, *opts, img, "--", "chtest", *args, **kw)


def assert_denied(cp):
    assert cp.returncode == 0 and cp.stdout.startswith(("DENIED", "refused")), \
        (cp.returncode, cp.stdout, cp.stderr)
    assert "ESCAPED" not in cp.stdout


def test_chroot_escape_is_denied(user, img):
    st = os.stat("/")
    assert_denied(check(user, img, "chroot-escape", str(st.st_dev), str(st.st_ino)))


def test_chroot_escape_with_fakeroot_reaches_only_the_container_root(user, img):
    # With --fakeroot chroot(2) itself works (CAP_SYS_CHROOT in the user namespace), but
    # the host's tree was detached: climbing out ends at the container's root.
    st = os.stat("/")
    cp = check(user, img, "chroot-escape", str(st.st_dev), str(st.st_ino), opts=["--fakeroot"])
    assert_denied(cp)
    assert "reaches only the container's root" in cp.stdout


def test_dev_access_is_refused(user, img):
    assert_denied(check(user, img, "dev"))


def test_proc_access_is_refused(user, img):
    assert_denied(check(user, img, "proc"))


def test_sys_access_is_refused(user, img):
    assert_denied(check(user, img, "sys"))


def test_root_only_file_in_image_is_unreadable(user, img):
    cp = check(user, img, "read", chtest_image.SECRET)
    assert_denied(cp)
    assert "Permission denied" in cp.stdout


def test_root_only_directory_in_image_is_unreadable(user, img):
    assert_denied(check(user, img, "read", "/secret-dir"))


def test_mknod_is_denied(user, img):
    assert_denied(check(user, img, "mknod"))


def test_mknod_is_denied_with_fakeroot(user, img):
    assert_denied(check(user, img, "mknod", opts=["--fakeroot"]))


def _privileged_port() -> int:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        start = int(f.read())
    util.require(start > 1, f"every port is unprivileged here (ip_unprivileged_port_start={start})")
    return start - 1


def test_privileged_port_in_host_network_is_denied(user, img):
    assert_denied(check(user, img, "bind-port", str(_privileged_port())))


def test_privileged_port_with_fakeroot_is_denied(user, img):
    # uid 0 of our user namespace holds CAP_NET_BIND_SERVICE only over namespaces that
    # user namespace owns; the host's network namespace is not one of them.
    assert_denied(check(user, img, "bind-port", str(_privileged_port()), opts=["--fakeroot"]))


def test_remount_of_the_container_root_is_denied(user, img):
    assert_denied(check(user, img, "remount", "/"))


def test_remount_of_the_host_root_is_denied(user, img):
    assert_denied(check(user, img, "remount", "/host", opts=["-v", "/:/host:ro"]))


def test_unmounting_the_root_is_denied(user, img):
    # The root and the mounts on it are locked together: none can be taken away to show
    # what lies below.
    assert_denied(check(user, img, "umount", "/", "/proc", "/tmp", "/etc/passwd"))


def test_setuid_program_of_the_image_gains_nothing(user, img):
    # nosuid: the setuid-root copy runs with the caller's ids.
    cp = run(user, img, "--", chtest_image.SETUID, "ids")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.split() == [str(user.uid), str(user.uid)]


def test_setgroups_is_denied(user, img):
    assert_denied(check(user, img, "setgroups"))


def test_seteuid_to_another_uid_is_denied(user, img):
    assert_denied(check(user, img, "seteuid", "0", str(user.uid + 1)))


@pytest.fixture
def host_sleeper(user):
    """A process of the same user on the host, outside any container."""
    p = subprocess.Popen(["sleep", "60"], user=user.uid, group=user.gid, extra_groups=[])
    yield p
    p.kill()
    p.wait()


def test_signal_outside_pid_private_container_is_denied(user, img, host_sleeper):
    cp = check(user, img, "kill", str(host_sleeper.pid), opts=["--pid=private"])
    assert_denied(cp)
    assert host_sleeper.poll() is None      # still alive


def test_signal_outside_reaches_without_pid_private(user, img, host_sleeper):
    # The control: without --pid=private the host's pid namespace is shared (as with
    # ch-run), so the same check does reach the process; the test above is not vacuous.
    cp = check(user, img, "kill", str(host_sleeper.pid))
    assert cp.returncode == 1 and cp.stdout.startswith("ESCAPED"), cp.stdout
    assert host_sleeper.wait(timeout=10) == -9


# ---------------------------------------------------------------- terminal injection

@contextlib.contextmanager
def pseudo_terminal():
    """A new pseudo-terminal: its slave descriptor, both ends closed afterwards."""
    master, slave = os.openpty()
    try:
        yield slave
    finally:
        os.close(slave)
        os.close(master)


def on_terminal(user, argv, env=None):
    """Run argv as the user with a new pseudo-terminal as its controlling terminal and
    standard input (as an interactive shell's command would be)."""
    with pseudo_terminal() as slave:
        def ctty():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        return util.as_user(user, argv, env=env, stdin=slave, start_new_session=True,
                            preexec_fn=ctty, timeout=60)


def test_tiocsti_works_on_the_host(user, img):
    # The control: outside a container the same helper does push a byte.
    try:
        with open("/proc/sys/dev/tty/legacy_tiocsti") as f:
            util.require(f.read().strip() == "1", "TIOCSTI is disabled on this kernel")
    except FileNotFoundError:
        pass
    cp = on_terminal(user, [os.path.join(img, chtest_image.IN_IMAGE.lstrip("/")), "tiocsti"])
    assert cp.returncode == 1 and cp.stdout.startswith("ESCAPED"), cp.stdout


def test_tiocsti_is_denied(user, img):
    cp = on_terminal(user, [util.HPCRUN, "run", img, "--", "chtest", "tiocsti"])
    assert_denied(cp)
    assert "Operation not permitted" in cp.stdout


def test_tiocsti_with_high_bits_is_denied(user, img):
    # CVE-2019-10063: the kernel reads 32 bits of the request; a filter comparing 64
    # would let TIOCSTI | 1 << 32 through.
    cp = on_terminal(user, [util.HPCRUN, "run", img, "--", "chtest", "tiocsti", "high"])
    assert_denied(cp)


def test_tiocsti_is_denied_with_pid_private(user, img):
    assert_denied(on_terminal(user, [util.HPCRUN, "run", "--pid=private", img, "--",
                                     "chtest", "tiocsti"]))


def test_tiocsti_is_denied_with_fakeroot(user, img):
    # Capabilities in the user namespace do not lift a seccomp filter.
    assert_denied(on_terminal(user, [util.HPCRUN, "run", "--fakeroot", img, "--",
                                     "chtest", "tiocsti"]))


def test_tioclinux_is_denied(user, img):
    # On a pseudo-terminal TIOCLINUX fails anyway (ENOTTY); EPERM says the filter did it.
    cp = on_terminal(user, [util.HPCRUN, "run", img, "--", "chtest", "tioclinux"])
    assert cp.returncode == 0 and cp.stdout.startswith("DENIED"), cp.stdout


def status(user, img, **kw) -> str:
    """The Seccomp: field of /proc/self/status in `hpcrun run IMG`, started as the user
    in a session of its own (no controlling terminal unless kw's preexec_fn gives one),
    standard input /dev/null."""
    cp = util.as_user(user, [util.HPCRUN, "run", img, "--", "cat", "/proc/self/status"],
                      stdin=subprocess.DEVNULL, start_new_session=True, **kw)
    assert cp.returncode == 0, cp.stderr
    return [ln.split()[1] for ln in cp.stdout.splitlines() if ln.startswith("Seccomp:")][0]


def test_no_filter_where_no_terminal_is_reachable(user, img):
    """Batch work (no controlling terminal, no terminal among its descriptors) gets no
    filter: it could type into no terminal, and a filter costs every system call."""
    assert status(user, img) == "0"


def test_filter_where_only_an_output_is_a_terminal(user, img):
    with pseudo_terminal() as slave:
        assert status(user, img, stderr=slave) == "2"


def test_filter_where_only_the_controlling_terminal_is_reachable(user, img):
    """No terminal among the descriptors, but a controlling one (/dev/tty opens)."""
    with pseudo_terminal() as slave:
        name = os.ttyname(slave)
        os.chown(name, user.uid, -1)

        def ctty():
            fd = os.open(name, os.O_RDWR)
            fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
            os.close(fd)
        assert status(user, img, preexec_fn=ctty) == "2"


def test_terminal_stays_the_controlling_terminal(user, img):
    # No setsid: the command keeps the caller's terminal (job control, ^C).
    cp = on_terminal(user, [util.HPCRUN, "run", img, "--", "sh", "-c",
                            "test -t 0 && cat /proc/self/stat"])
    assert cp.returncode == 0, cp.stderr
    fields = cp.stdout.rsplit(")", 1)[1].split()
    assert int(fields[4]) != 0          # tty_nr: a controlling terminal
