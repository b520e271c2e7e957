"""Instance records: one directory per instance in a directory only the user can reach.

Kept to `os` alone: `hpcrun exec` reads a record on its hot path.

Layout: ROOT/[job<SLURM_JOB_ID>/]NAME/ holds
  pid      "PID STARTTIME\\n": the supervisor's host pid and its start time (field 22 of
           /proc/PID/stat), so a reused pid is never mistaken for the instance
  env      the container's environment, NUL-separated (what `exec` starts with)
  exec     "UID\nWORKDIR\n": the id inside and the default working directory of `exec`
  record.json  image, command, options, created (for ps/inspect)
  log      the command's output, written by the supervisor ("SECS.NANOS 1|2 TEXT")
  exit     the command's exit code, once it has ended
ROOT is $XDG_RUNTIME_DIR/hpcrun where XDG_RUNTIME_DIR is set, else
/var/tmp/hpcrun-UID/instances; under Slurm names are scoped to the job.
"""
from __future__ import annotations

import os

from hpcrun.errors import HpcrunError, NotFound, UsageError

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class InstanceError(HpcrunError):
    """An instance is missing, gone, or its state directory is unsafe."""


def root(create: bool = True) -> str:
    """The user's instance directory, checked by the shared state-directory rule
    (hpcrun.fsutil.private_dir: every level up from / must be root's or yours and not
    writable by others, symlinks only root's; the directory itself yours and 0700),
    and created where missing. CREATE is kept for callers that only read; the check
    is the same."""
    from hpcrun.fsutil import private_dir  # lazy: keeps hpcrun run's start-up small
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        base = os.path.join(xdg, "hpcrun")
        setting = "XDG_RUNTIME_DIR"
    else:
        base = f"/var/tmp/hpcrun-{os.getuid()}/instances"
        setting = "XDG_RUNTIME_DIR (to a directory of your own)"
    job = os.environ.get("SLURM_JOB_ID")
    if job and job.isdigit():
        base = os.path.join(base, "job" + job)
    return private_dir(base, "the instance directory", setting)


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS or name[0] in ".-":
        raise UsageError(f"invalid instance name {name!r}",
                         "use letters, digits, '_', '.' and '-' (at most 64, not starting "
                         "with '.' or '-')")
    return name


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


class Record:
    """An instance as found on disk; `pid` is None when its supervisor is gone."""

    __slots__ = ("name", "dir", "pid")

    def __init__(self, name: str, d: str, pid: int | None):
        self.name, self.dir, self.pid = name, d, pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def exit_code(self) -> int | None:
        try:
            with open(os.path.join(self.dir, "exit")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def env(self) -> list:
        with open(os.path.join(self.dir, "env"), "rb") as f:
            data = f.read()
        return [os.fsdecode(x) for x in data.split(b"\0") if x]

    def exec_info(self):
        """(uid inside, default working directory), from the file "exec"."""
        with open(os.path.join(self.dir, "exec")) as f:
            uid, wd = f.read().split("\n")[:2]
        return int(uid), wd

    def user_name(self) -> str | None:
        """The name of the instance's user in its own /etc/passwd, if any."""
        uid, _ = self.exec_info()
        try:
            with open(f"/proc/{self.pid}/root/etc/passwd") as f:
                for line in f:
                    p = line.split(":")
                    if len(p) > 2 and p[2] == str(uid):
                        return p[0]
        except OSError:
            pass
        return None

    def limits(self) -> dict:
        """The limits it was started with (file "limits", written by lifecycle.start),
        or {}."""
        import json  # lazy: keeps hpcrun run's start-up small
        try:
            with open(os.path.join(self.dir, "limits")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def info(self) -> dict:
        import json  # lazy: keeps hpcrun run's start-up small
        try:
            with open(os.path.join(self.dir, "record.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}


def _live_pid(d: str) -> int | None:
    try:
        with open(os.path.join(d, "pid")) as f:
            pid_s, start = f.read().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_s)
    return pid if start_time(pid) == start else None


def lookup(name: str, base: str | None = None) -> Record | None:
    """The record of NAME (running or exited), or None."""
    base = root(create=False) if base is None else base
    d = os.path.join(base, name)
    if not os.path.isdir(d):
        return None
    return Record(name, d, _live_pid(d))


def get_running(name: str) -> Record:
    """NAME's record if its supervisor runs; else a one-line error naming it."""
    check_name(name)
    r = lookup(name)
    if r is None:
        raise NotFound(f"no such instance: {name}",
                       "see 'hpcrun ps' for your instances (another user's are not visible)")
    if not r.running:
        code = r.exit_code()
        if code is None:
            remove(r.dir)      # stale: its supervisor was killed outright
            raise NotFound(f"instance {name} is gone (its supervisor was killed); "
                           "its record was removed", "start it again with 'hpcrun instance start'")
        raise InstanceError(f"instance {name} is not running (exited with {code})",
                            f"see 'hpcrun logs {name}'; remove it with "
                            f"'hpcrun instance stop {name}'")
    return r


def remove(d: str) -> None:
    for n in os.listdir(d):
        try:
            os.unlink(os.path.join(d, n))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(d)
    except (FileNotFoundError, OSError):
        pass


def all_records(clean: bool = True) -> list:
    """Every record of this scope; stale ones (supervisor gone without an exit code,
    i.e. killed outright) are removed when CLEAN."""
    base = root(create=False)
    out = []
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return out
    for n in names:
        d = os.path.join(base, n)
        if n.startswith(".") or not os.path.isdir(d) or os.path.islink(d):
            continue
        r = Record(n, d, _live_pid(d))
        if not r.running and r.exit_code() is None and os.path.exists(os.path.join(d, "pid")):
            if clean:
                remove(d)
            continue
        if os.path.exists(os.path.join(d, "pid")):
            out.append(r)
    return out
