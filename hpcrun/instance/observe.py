"""What the observing verbs read about a running instance, from /proc and its state
directory: processes (host and container pids), resource use, logs, the writable
layer's changes, files in and out.

Everything is read from the host side as the instance's owner: /proc/PID/root is the
container's root (the supervisor's), /proc/PID/fd/4 its overlay's upper directory
(cext/core.h HPCRUN_INSTANCE_UPPER_FD), both reachable because we own its user
namespace.
"""
from __future__ import annotations

import os
import stat
import time
import shutil
import signal

from hpcrun.errors import NotFound, UsageError
from hpcrun.instance import state
from hpcrun.instance.state import InstanceError

UPPER_FD = 4        # cext/core.h HPCRUN_INSTANCE_UPPER_FD (see also there)
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def members(r: state.Record) -> list:
    """Host pids of every process in the instance's pid namespace, the supervisor first."""
    try:
        ns = os.readlink(f"/proc/{r.pid}/ns/pid")
    except OSError:
        return []
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/ns/pid") == ns:
                    out.append(int(p))
            except OSError:
                pass
    out.sort(key=lambda p: (p != r.pid, p))
    return out


def _stat(pid: int):
    with open(f"/proc/{pid}/stat", "rb") as f:
        s = f.read()
    return s[s.rindex(b")") + 2:].split()


def _status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def processes(r: state.Record) -> list:
    """One dict per process: uid, pid (host), ppid (host), cpid (inside), stime, time,
    state, cmd. Processes that end while being read are left out."""
    boot = _boot_time()
    out = []
    for p in members(r):
        try:
            st = _stat(p)
            s = _status(p)
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
        except (OSError, ValueError):
            continue
        cpu = (int(st[11]) + int(st[12])) // TICKS
        out.append({"uid": int(s["Uid"].split()[0]), "pid": p, "ppid": int(st[1]),
                    "cpid": int(s.get("NSpid", str(p)).split()[-1]),
                    "stime": boot + int(st[19]) / TICKS, "time": cpu, "state": st[0].decode(),
                    "cmd": cmd or f"[{s.get('Name', '?')}]"})
    return out


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime"):
                return float(line.split()[1])
    return 0.0


def _usage(pids) -> tuple:
    """(cpu seconds, resident bytes, live count) summed over pids."""
    cpu = rss = 0
    n = 0
    for p in pids:
        try:
            st = _stat(p)
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
        cpu += int(st[11]) + int(st[12])     # utime, stime (fields 14, 15)
        n += 1
    return cpu / TICKS, rss, n


def mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def stats(r: state.Record, interval: float = 0.5) -> dict:
    """CPU (percent of one core over INTERVAL), memory (the sum of its processes'
    resident sets; no per-instance cgroup here) and the number of processes."""
    c0, _, _ = _usage(members(r))
    t0 = time.monotonic()
    time.sleep(interval)
    pids = members(r)
    c1, rss, n = _usage(pids)
    dt = time.monotonic() - t0
    lim = r.limits()
    total = lim.get("memory") or mem_total()      # its --memory, else the host's
    return {"name": r.name, "cpu_percent": max(0.0, (c1 - c0) / dt * 100), "mem_bytes": rss,
            "mem_limit": total, "mem_percent": rss / total * 100 if total else 0.0, "pids": n,
            "limits": "; ".join([lim["tier"]] + lim.get("notes", [])) if lim else "none"}


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return str(n)


# ------------------------------------------------------------------ logs

def log_lines(r: state.Record, offset: int = 0):
    """(offset after, [(stamp "SECS.NANOS", stream 1|2, text)]) from the supervisor's log file."""
    path = os.path.join(r.dir, "log")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset, []
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].split(b"\n")[:-1]:
        ts, _, rest = line.partition(b" ")
        stream, _, text = rest.partition(b" ")
        if ts.replace(b".", b"").isdigit() and stream in (b"1", b"2"):
            out.append((ts.decode(), int(stream), text))
    return offset + end, out


def rfc3339(t: str) -> str:
    """'SECS.NANOS' (the supervisor's stamp) as Docker prints it, to the nanosecond."""
    secs, _, nanos = t.partition(".")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(secs))) + f".{nanos:0<9}Z"


# ------------------------------------------------------------------ signals

def command_pid(r: state.Record) -> int | None:
    """The host pid of the instance's command (the supervisor's first child), if any."""
    try:
        with open(f"/proc/{r.pid}/task/{r.pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return None
    for k in kids:
        try:
            if int(_status(k).get("NSpid", "0").split()[-1]) == 2:
                return k
        except (OSError, ValueError):
            continue
    return None


def kill(r: state.Record, sig: int) -> None:
    """Docker's kill: the signal reaches the command. SIGKILL and SIGSTOP cannot be
    forwarded, so they go to the command itself (an idle instance: every process, then
    SIGTERM to the supervisor so it records the end)."""
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        cmd = command_pid(r)
        if cmd is not None:
            os.kill(cmd, sig)
            return
        for p in members(r)[1:]:
            _try_kill(p, sig)
        if sig == signal.SIGKILL:
            _try_kill(r.pid, signal.SIGTERM)
        return
    os.kill(r.pid, sig)


def _try_kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def pause(r: state.Record, on: bool) -> None:
    """No freezer cgroup of the user's here: SIGSTOP (SIGCONT) every process of the
    instance but the supervisor, which must stay able to take a stop."""
    flag = os.path.join(r.dir, "paused")
    if on:
        open(flag, "w").close()
    for p in members(r)[1:]:
        _try_kill(p, signal.SIGSTOP if on else signal.SIGCONT)
    if not on:
        try:
            os.unlink(flag)
        except FileNotFoundError:
            pass


def paused(r: state.Record) -> bool:
    return os.path.exists(os.path.join(r.dir, "paused"))


# ------------------------------------------------------------------ diff

def upper_dir(r: state.Record) -> str:
    p = f"/proc/{r.pid}/fd/{UPPER_FD}"
    if not r.info().get("writable") or not os.path.isdir(p):
        raise InstanceError(f"instance {r.name} has no writable layer",
                            "diff and commit need an instance started with --writable-tmpfs")
    return p


def diff(r: state.Record) -> list:
    """Docker's diff: (kind, path) with kind A (added), C (changed) or D (deleted), from
    the overlay's upper directory against the image."""
    upper = upper_dir(r)
    lower = r.info().get("image_path")
    out = []
    for top, dirs, files in os.walk(upper):
        rel_top = top[len(upper):] or "/"
        for n in sorted(dirs + files):
            full = os.path.join(top, n)
            rel = os.path.join(rel_top, n)
            st = os.lstat(full)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out.append(("D", rel))          # an overlayfs whiteout
                continue
            out.append(("C" if lower and os.path.lexists(lower + rel) else "A", rel))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    # Mount points hpcrun made in the writable layer (/etc/hosts, $HOME, -v targets) are
    # not changes, nor are directories copied up only to hold them.
    mounts = mount_points(r)
    hidden = {p for _, p in out if p in mounts}
    out = [(k, p) for k, p in out if p not in hidden]
    keep = []
    for k, p in out:
        pre = p.rstrip("/") + "/"
        if k == "C" and any(h.startswith(pre) for h in hidden) and \
                not any(q.startswith(pre) for _, q in out):
            continue
        keep.append((k, p))
    return sorted(keep, key=lambda x: x[1])


def mount_points(r: state.Record) -> set:
    """Mount points inside the instance (field 5 of its mountinfo, octal escapes read)."""
    out = set()
    try:
        with open(f"/proc/{r.pid}/mountinfo") as f:
            for line in f:
                mp = line.split()[4]
                out.add(mp.encode().decode("unicode_escape"))
    except OSError:
        pass
    return out


# ------------------------------------------------------------------ cp

def container_path(r: state.Record, path: str) -> str:
    """PATH inside the instance as a host path under /proc/PID/root, its symlinks
    resolved inside the container (an absolute link target is the container's, never
    the host's)."""
    if not path.startswith("/"):
        path = "/" + path
    root = f"/proc/{r.pid}/root"
    parts = [p for p in path.split("/") if p]
    done: list = []
    hops = 0
    while parts:
        p = parts.pop(0)
        if p == ".":
            continue
        if p == "..":
            if done:
                done.pop()
            continue
        cand = root + "/" + "/".join(done + [p])
        if os.path.islink(cand):
            hops += 1
            if hops > 40:
                raise InstanceError(f"too many symlinks in {path}", "give a real path")
            target = os.readlink(cand)
            if target.startswith("/"):
                done = []
            parts = [x for x in target.split("/") if x] + parts
            continue
        done.append(p)
    return root + "/" + "/".join(done)


def split_spec(s: str):
    """'NAME:PATH' -> (NAME, PATH); a host path -> (None, path)."""
    name, colon, path = s.partition(":")
    if colon and name and "/" not in name:
        return name, path or "/"
    return None, s


def cp(src: str, dst: str) -> None:
    sname, spath = split_spec(src)
    dname, dpath = split_spec(dst)
    if (sname is None) == (dname is None):
        raise UsageError("cp: exactly one of SRC and DST is NAME:PATH",
                         "hpcrun cp NAME:/path/in/container hostpath (or the other way)")
    if sname:
        r = state.get_running(sname)
        src_host, dst_host = container_path(r, spath), dpath
        where = f"{sname}:{spath}"
    else:
        r = state.get_running(dname)
        src_host = spath
        dst_host = container_path(r, dpath)
        where = spath
    if not os.path.lexists(src_host):
        raise NotFound(f"cp: no such file or directory: {where}", "check the path")
    if os.path.isdir(dst_host):
        dst_host = os.path.join(dst_host, os.path.basename(src_host.rstrip("/")))
    try:
        if os.path.isdir(src_host) and not os.path.islink(src_host):
            shutil.copytree(src_host, dst_host, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src_host, dst_host, follow_symlinks=False)
    except OSError as e:
        raise InstanceError(f"cp: can't copy {src} to {dst}: {e.strerror}",
                            "a read-only image takes files only on its writable mounts "
                            "(start the instance with --writable-tmpfs)") from e
