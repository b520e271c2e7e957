"""`hpcrun exec [-e K=V] [-w DIR] [-u UID] NAME CMD [ARG...]`: run a command in a
running instance (hpcrun instance start), Docker's spelling.

On the hot path of a workflow's shared mode, so: a hand-written parser, only os/sys and
the instance record reader imported, then the C core's hpcrun_join (setns into the
instance's user namespace first, then ipc, uts, net, pid, mount) in this
single-threaded process. Exit status as `hpcrun run`: the command's, 125/126/127.
"""
from __future__ import annotations

import os
import sys

from hpcrun.errors import UsageError

USAGE = """usage: hpcrun exec [OPTIONS] NAME CMD [ARG...]

Run CMD inside the running instance NAME (see 'hpcrun ps').

  -e, --env NAME[=VALUE]   set a variable (NAME alone copies the host's value)
  -w, --workdir DIR        working directory inside (default: the instance's)
  -u, --user UID           must be the instance's own id: a rootless instance maps one
  -i, -t, -it              accepted for Docker's sake (stdin and the terminal are yours)
      --batch              no CMD: answer command requests on stdin, one at a time, each
                           in its own process in the instance (hpcrun.api's transport;
                           the protocol is in cext/core.h, hpcrun_serve)
  -h, --help               this help
"""


def parse(argv: list):
    env, workdir, user, batch = [], None, None, False
    i, n = 0, len(argv)
    while i < n:
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        if a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        if a in ("-i", "-t", "-it", "-ti", "--interactive", "--tty"):
            i += 1
            continue
        if a == "--batch":
            batch = True
            i += 1
            continue
        name, eq, value = a.partition("=")
        if not eq and len(a) > 2 and a[1] != "-":
            name, value, eq = a[:2], a[2:], "="
        if name not in ("-e", "--env", "-w", "--workdir", "-u", "--user"):
            raise UsageError(f"unknown option {a!r} for exec", "see 'hpcrun exec --help'")
        if not eq:
            if i + 1 >= n:
                raise UsageError(f"option {name} needs a value", "see 'hpcrun exec --help'")
            value = argv[i + 1]
            i += 2
        else:
            i += 1
        if name in ("-e", "--env"):
            env.append(value)
        elif name in ("-w", "--workdir"):
            workdir = value
        else:
            user = value
    if i >= n:
        raise UsageError("exec: no instance name given",
                         "usage: hpcrun exec [OPTIONS] NAME CMD [ARG...]")
    name = argv[i]
    cmd = argv[i + 1:]
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if batch:
        if cmd or env or workdir or user:
            raise UsageError("exec --batch takes only the instance name",
                             "each request carries its own command, environment and workdir")
        return name, None, env, workdir, user
    if not cmd:
        raise UsageError("exec: no command given", f"e.g. hpcrun exec {name} sh")
    return name, cmd, env, workdir, user


def environment(base: list, extra: list) -> list:
    """The instance's environment with -e NAME=VALUE (or NAME: the host's) on top."""
    env = dict(e.partition("=")[::2] for e in base)
    for e in extra:
        k, eq, v = e.partition("=")
        if not k:
            raise UsageError(f"-e {e!r}: no variable name", "use -e NAME=VALUE")
        if eq:
            env[k] = v
        elif k in os.environ:
            env[k] = os.environ[k]
    return [f"{k}={v}" for k, v in env.items()]


def main(verb: str, argv: list) -> int:
    name, cmd, extra, workdir, user = parse(argv)
    from hpcrun.instance import state  # lazy: keeps hpcrun run's start-up small
    r = state.get_running(name)
    if cmd is None:
        from hpcrun import _core  # lazy: keeps hpcrun run's start-up small
        return _core.serve(r.pid, 0, 1)
    uid, default_wd = r.exec_info()
    if user is not None and user not in (str(uid), r.user_name()):
        raise UsageError(f"exec -u {user}: instance {name} maps only uid {uid}",
                         "a rootless instance has one id; start it with --fakeroot for root")
    if workdir is not None:
        if not workdir.startswith("/"):
            raise UsageError(f"-w {workdir!r} is not an absolute path",
                             "give the working directory inside the container as /path")
        if not os.path.isdir(f"/proc/{r.pid}/root{workdir}"):
            raise state.InstanceError(f"can't chdir to {workdir} in instance {name}: "
                                      "no such directory", "create it first, or pick another -w")
    limits = r.limits()
    if limits:
        from hpcrun import cgroups  # lazy: only an instance with limits
        cgroups.join(limits)
    from hpcrun import _core  # lazy: keeps hpcrun run's start-up small
    return _core.join(r.pid, cmd, environment(r.env(), extra), workdir or default_wd)
