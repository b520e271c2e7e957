"""Resource limits for a container: what this host and user allow, and applying them.

Tiers, tried in order (the one used is always reported: `-v`, `hpcrun check`):
  1. a real cgroup: a cgroup v2 subtree this user may write (delegated by systemd or
     the admin, or a job's own cgroup where Slurm delegates it), else cgroup v1 when
     the v1 directories are writable (root). Always a child of the caller's own cgroup:
     a job's cgroup is never left. The C monitor moves the container in, watches OOM
     kills and removes the cgroup at the end (a reaper does if the monitor is killed).
  2. no writable cgroup: CPUs by sched_setaffinity (unprivileged, what nproc reads);
     memory by the watchdog in the C monitor (sums the container's resident memory from
     /proc at an interval, confirms with PSS, kills at the limit); processes by
     RLIMIT_NPROC set inside the container's user namespace, where the kernel counts
     them per namespace (>= 5.14).
A limit the tier cannot enforce (a fractional --cpus without a cgroup) is an error with
a hint, unless --limits=best-effort.

plan() reads the host and changes nothing; create() makes the cgroup. Sizes and CPU
counts use Docker's spellings (512m, 1.5, 0-3,5).
"""
from __future__ import annotations

import os

from hpcrun.errors import HpcrunError, UsageError
from hpcrun.runtime.spec import M_CONTENT, M_NOSKEL, M_OPTIONAL, M_RDONLY, Mount, _Frozen

# cext/core.h HPCRUN_TIER_* (see also there)
TIER_CGROUP1 = 1
TIER_CGROUP2 = 2
TIER_WATCHDOG = 3
TIER_NAMES = {TIER_CGROUP1: "cgroup v1", TIER_CGROUP2: "cgroup v2",
              TIER_WATCHDOG: "no cgroup (affinity, watchdog, RLIMIT_NPROC)"}

MIN_MEMORY = 6 << 20           # Docker's minimum; below it a container cannot start
WATCH_INTERVAL_MS = 100
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_CONTROLLER = {"memory": "memory", "cpus": "cpu", "cpuset": "cpuset", "pids": "pids"}


class LimitsError(HpcrunError):
    """A limit this host cannot enforce (exit 125 on run)."""

    code = 125


class Limits(_Frozen):
    """What was asked for, parsed and checked; and how it will be applied."""

    __slots__ = ("tier", "cpus", "cpuset", "memory", "memory_swap", "pids", "affinity",
                 "affinity_count",
                 "cgroups", "writes", "memory_cgroup", "view", "mounts", "notes",
                 "interval_ms", "memory_shown", "makers")
    _defaults = {"cpus": None, "cpuset": None, "memory": 0, "memory_swap": 0, "pids": 0,
                 "interval_ms": WATCH_INTERVAL_MS, "memory_shown": None,
                 "affinity": None, "affinity_count": 0, "cgroups": (), "writes": (), "memory_cgroup": None,
                 "view": (), "mounts": (), "notes": (), "makers": ()}

    def summary(self) -> str:
        """One line for -v: the tier and how each limit is applied."""
        return f"limits: {TIER_NAMES[self.tier]}: " + "; ".join(self.notes)


# ---------------------------------------------------------------- parsing

def parse_size(value: str, option: str) -> int:
    """Docker's RAMInBytes: 512m, 1g, 1.5G, 2GiB, 1024 (bytes); binary units.
    Parsed by hand: `import re` costs milliseconds on the start-up path."""
    text = str(value).strip().lower()
    text = text[:-2] if text.endswith("ib") else text[:-1] if text.endswith("b") else text
    unit = text[-1:] if text[-1:] in _UNITS and text[-1:].isalpha() else ""
    num = (text[:-1] if unit else text).rstrip()
    whole, dot, frac = num.partition(".")
    if not whole.isdigit() or (dot and not frac.isdigit()):
        raise UsageError(f"{option} {value!r} is not a size (allowed: a number with an "
                         "optional unit b, k, m, g, t, e.g. 512m or 4g)",
                         f"e.g. {option} 512m", 125)
    return int(float(num) * _UNITS[unit])


def format_size(n: int) -> str:
    """Bytes -> Docker-style: 512M, 1G, 1536K; exact when it divides, else MiB rounded."""
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    if n >= 1 << 20:
        return f"{round(n / (1 << 20))}M"
    return f"{n}B"


def parse_cpuset(value: str, option: str = "--cpuset-cpus") -> frozenset:
    """0-3,5 -> {0, 1, 2, 3, 5}."""
    cpus = set()
    text = str(value).strip()
    try:
        if not text:
            raise ValueError
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            a, b = int(lo), int(hi) if dash else int(lo)
            if a < 0 or b < a or not lo.strip().isdigit():
                raise ValueError
            cpus.update(range(a, b + 1))
    except ValueError:
        raise UsageError(f"{option} {value!r} is not a CPU list (allowed: CPUs from "
                         f"{format_cpuset(allowed_cpus())}, e.g. 0-3,5)",
                         f"e.g. {option} 0-1", 125) from None
    return frozenset(cpus)


def format_cpuset(cpus) -> str:
    """{0, 1, 2, 5} -> 0-2,5 (the kernel's list format)."""
    out = []
    run = []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def allowed_cpus() -> frozenset:
    """The CPUs this process may use: the machine's, or the allocation's under Slurm."""
    return frozenset(os.sched_getaffinity(0))


# ---------------------------------------------------------------- the host

def _read(path: str):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _own_cgroups(text=None) -> dict:
    """/proc/self/cgroup -> {controller or "" (v2): path}."""
    out = {}
    for line in (text if text is not None else _read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            out[""] = parts[2]
            continue
        for ctl in parts[1].split(","):
            out[ctl] = parts[2]
    return out


def _cgroup_mounts(text=None) -> dict:
    """/proc/self/mountinfo -> {controller: v1 mount point, "": the cgroup2 mount}, and the
    root each mount shows (a mount of a sub-cgroup, as in a container, is not its root)."""
    out = {}
    for line in (text if text is not None else _read("/proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f = left.split()
        r = right.split()
        if len(f) < 5 or len(r) < 3:
            continue
        root, point = f[3], f[4].replace("\\040", " ")
        if r[0] == "cgroup2":
            out.setdefault("", (point, root))
        elif r[0] == "cgroup":
            for opt in r[2].split(","):
                if opt in _CONTROLLER.values():
                    out.setdefault(opt, (point, root))
    return out


def _dir(mount, own) -> str | None:
    if not mount or own is None:
        return None
    point, root = mount
    rel = own
    if root != "/" and (own == root or own.startswith(root.rstrip("/") + "/")):
        rel = own[len(root.rstrip("/")):] or "/"
    return os.path.normpath(point + "/" + rel.lstrip("/"))


class Host(_Frozen):
    """What the kernel offers this user: the cgroup v2 directory and the v1 ones."""

    __slots__ = ("v2_dir", "v2_controllers", "v2_enabled", "v2_writable", "v1_dirs",
                 "v1_writable", "v1_names", "slurm_job", "mounts")
    _defaults = {"mounts": {}}     # _cgroup_mounts(): {controller or "": (point, root)}


def detect() -> Host:
    own = _own_cgroups()
    mounts = _cgroup_mounts()
    v2 = _dir(mounts.get(""), own.get(""))
    ctl = enabled = frozenset()
    writable = False
    if v2:
        ctl = frozenset((_read(v2 + "/cgroup.controllers") or "").split())
        enabled = frozenset((_read(v2 + "/cgroup.subtree_control") or "").split())
        writable = all(os.access(os.path.join(v2, f), os.W_OK)
                       for f in ("", "cgroup.procs", "cgroup.subtree_control"))
    v1 = {}
    v1w = {}
    names = {}
    for c in set(_CONTROLLER.values()):
        d = _dir(mounts.get(c), own.get(c))
        if d and os.path.isdir(d):
            v1[c] = d
            names[c] = os.path.basename(mounts[c][0])     # cpu, or cpu,cpuacct
            v1w[c] = os.access(d, os.W_OK) and os.access(os.path.join(d, "cgroup.procs"),
                                                         os.W_OK)
    return Host(v2_dir=v2, v2_controllers=ctl, v2_enabled=enabled, v2_writable=writable,
                v1_dirs=v1, v1_writable=v1w, v1_names=names, slurm_job=os.environ.get("SLURM_JOB_ID"),
                mounts=mounts)


def _tier(host: Host, needed: set):
    """The cgroup tier that can apply every needed controller, or TIER_WATCHDOG."""
    if needed and host.v2_dir and host.v2_writable and needed <= host.v2_controllers:
        return TIER_CGROUP2
    if needed and all(host.v1_writable.get(c) for c in needed):
        return TIER_CGROUP1
    return TIER_WATCHDOG


# ---------------------------------------------------------------- planning

def wanted(opts) -> bool:
    """Does this RunOptions ask for any limit? (Cheap: decides whether to import us.)"""
    return bool(opts.cpus or opts.cpuset_cpus or opts.memory or opts.memory_swap
                or opts.pids_limit)


def _values(opts, allowed):
    """The limits asked for, parsed and checked: (cpus, cpuset, memory, memory_swap,
    pids). allowed: the CPUs this process may use, or None where they are not known
    yet (a step plan: each task checks its own CPUs)."""
    shown = format_cpuset(allowed) if allowed is not None else ""
    cpus = cpuset = None
    if opts.cpuset_cpus:
        cpuset = parse_cpuset(opts.cpuset_cpus)
        outside = cpuset - allowed if allowed is not None else ()
        if outside:
            raise UsageError(f"--cpuset-cpus {opts.cpuset_cpus}: CPU {format_cpuset(outside)} "
                             f"is not allowed here (allowed: {shown})",
                             "pick CPUs from the allowed list (nproc, taskset -p $$)", 125)
    limit = len(cpuset) if cpuset else len(allowed) if allowed is not None else 1 << 20
    if opts.cpus:
        try:
            cpus = float(opts.cpus)
        except ValueError:
            cpus = float("nan")
        if not (0.01 <= cpus <= limit):      # also false for nan
            what = (f"more than the {limit} CPUs allowed" if cpus == cpus and cpus > limit
                    else "not a CPU count")
            raise UsageError(f"--cpus {opts.cpus} is {what} (allowed: 0.01 to {limit})",
                             "e.g. --cpus 1 or --cpus 0.5", 125)
    memory = memory_swap = 0
    if opts.memory:
        memory = parse_size(opts.memory, "--memory")
        if memory < MIN_MEMORY:
            raise UsageError(f"--memory {opts.memory} is below what a container needs to "
                             f"start (allowed: {format_size(MIN_MEMORY)} or more)",
                             "e.g. --memory 512m", 125)
    if opts.memory_swap:
        if not memory:
            raise UsageError("--memory-swap needs --memory (it is memory plus swap)",
                             "e.g. --memory 1g --memory-swap 2g", 125)
        if str(opts.memory_swap).strip() == "-1":
            memory_swap = -1
        else:
            memory_swap = parse_size(opts.memory_swap, "--memory-swap")
            if memory_swap < memory:
                raise UsageError(f"--memory-swap {opts.memory_swap} is below --memory "
                                 f"{opts.memory} (allowed: {format_size(memory)} or more, "
                                 "or -1 for unlimited swap)",
                                 "--memory-swap is memory plus swap, as in Docker", 125)
    pids = 0
    if opts.pids_limit:
        v = str(opts.pids_limit).strip()
        if v == "-1":
            pids = 0                 # Docker's spelling of unlimited
        elif v.isdigit() and int(v) > 0:
            pids = int(v)
        else:
            raise UsageError(f"--pids-limit {opts.pids_limit} is not a process count "
                             "(allowed: 1 or more, or -1 for unlimited)",
                             "e.g. --pids-limit 512", 125)

    return cpus, cpuset, memory, memory_swap, pids


def check(opts) -> None:
    """The values of the limits asked for, checked where they are planned for tasks
    elsewhere (a step plan): exit 125 at once for a bad one. The CPUs allowed and the
    tier are each task's own and are checked there."""
    if wanted(opts):
        _values(opts, None)


def whole_cpus_only(opts) -> int:
    """N for a bare --cpus N (a whole number, no other limit, no --limits-view): what a
    step plan applies itself, as N of each task's own CPUs by affinity (plan word affn=);
    0 otherwise (the limits are planned by each task on its node)."""
    if opts.cpuset_cpus or opts.memory or opts.memory_swap or opts.pids_limit or \
            opts.limits_view or not opts.cpus:
        return 0
    cpus = _values(opts, None)[0]
    return int(cpus) if cpus == int(cpus) else 0


def step_watchdog(opts):
    """A step plan's limits as the no-cgroup tier applies them, where the C executor
    can do that itself on each node (--memory, --memory-swap, --pids-limit, with or
    without a whole --cpus N, which it takes as N of the task's CPUs): (Limits, N,
    probes), probes being (controller or "" for v2, mount point, root) of the cgroups
    whose being writable on a node gives its tasks a cgroup tier instead (plan word
    limnode=: those tasks plan it in Python). None where each task must plan the
    limits (--cpuset-cpus, a fractional --cpus, --limits-view)."""
    if opts.cpuset_cpus or opts.limits_view:
        return None
    cpus, _, memory, memory_swap, pids = _values(opts, None)
    if (cpus and cpus != int(cpus)) or not (memory or pids):
        return None
    mounts = _cgroup_mounts()
    needed = {"memory" if memory else None, "cpu" if cpus else None,
              "pids" if pids else None} - {None}
    probes = [("",) + mounts[""]] if "" in mounts else []
    probes += [(c,) + mounts[c] for c in sorted(needed) if c in mounts]
    notes = []
    if cpus:
        notes.append(f"cpus: {int(cpus)} of the task's CPUs by affinity")
    if memory:
        notes.append(f"memory {format_size(memory)} by the watchdog (every {WATCH_INTERVAL_MS} ms)")
    if memory_swap and memory_swap > 0:
        notes.append(f"memory+swap {format_size(memory_swap)} by the watchdog")
    if pids:
        notes.append(f"pids {pids} by RLIMIT_NPROC in the user namespace")
    lim = Limits(tier=TIER_WATCHDOG, cpus=None, cpuset=None, memory=memory,
                 memory_swap=max(memory_swap, 0), pids=pids,
                 memory_shown=format_size(memory) if memory else None, notes=tuple(notes))
    return lim, int(cpus or 0), tuple(probes)


def plan(opts, environ=None, host: Host | None = None) -> Limits | None:
    """RunOptions -> Limits (validated, tier chosen), or None if no limit was asked for.
    Raises UsageError (bad value, exit 125) or LimitsError (cannot be enforced here)."""
    if not wanted(opts):
        return None
    mode = opts.limits or "strict"
    allowed = allowed_cpus()
    cpus, cpuset, memory, memory_swap, pids = _values(opts, allowed)
    needed = set()
    if memory:
        needed.add("memory")
    if cpus:
        needed.add("cpu")
    if cpuset:
        needed.add("cpuset")
    if pids:
        needed.add("pids")
    host = host or detect()
    tier = _tier(host, needed)
    kw = dict(cpus=cpus, cpuset=cpuset, memory=memory, memory_swap=memory_swap, pids=pids,
              memory_shown=format_size(memory) if memory else None)
    if tier == TIER_WATCHDOG:
        return _plan_watchdog(kw, mode, allowed, host, bool(opts.limits_view))
    return _plan_cgroup(kw, tier, host, allowed, bool(opts.limits_view), environ)


def _plan_watchdog(kw, mode, allowed, host, view=False) -> Limits:
    notes = []
    affinity = None
    cpus, cpuset = kw["cpus"], kw["cpuset"]
    if cpus and cpus != int(cpus):
        if mode != "best-effort":
            raise LimitsError(
                f"--cpus {cpus:g} needs a CPU quota, and there is no writable cgroup here "
                "(without one hpcrun binds whole CPUs)",
                f"use --cpus {int(cpus) + 1} or --cpuset-cpus, add --limits=best-effort to "
                f"bind {int(cpus) + 1} CPUs, or see 'hpcrun check' for what to ask the admin")
        notes.append(f"--cpus {cpus:g} rounded up to {int(cpus) + 1} whole CPUs (best effort)")
    count = 0
    if cpuset or cpus:
        pool = sorted(cpuset or allowed)
        n = min(len(pool), -int(-(cpus or len(pool)) // 1))
        if n < len(pool) and not view:
            # N of the pool, chosen by the executor when it starts: from the CPU it runs
            # on, so containers started side by side spread as the scheduler placed them
            # (and a cached plan is no fixed choice).
            affinity, count = frozenset(pool), n
            notes.append(f"cpus: {n} of {format_cpuset(pool)} by affinity, from the CPU "
                         "it starts on")
        else:
            affinity = frozenset(pool[:n])
            notes.append(f"cpus {format_cpuset(affinity)} by affinity")
    if kw["memory"]:
        notes.append(f"memory {format_size(kw['memory'])} by the watchdog "
                     f"(every {WATCH_INTERVAL_MS} ms)")
    if kw["memory_swap"] and kw["memory_swap"] > 0:
        notes.append(f"memory+swap {format_size(kw['memory_swap'])} by the watchdog")
    if kw["pids"]:
        notes.append(f"pids {kw['pids']} by RLIMIT_NPROC in the user namespace")
    if kw["memory_swap"] == -1:
        kw["memory_swap"] = 0
    return Limits(tier=TIER_WATCHDOG, affinity=affinity, affinity_count=count,
                  notes=tuple(notes), view=_view(kw, affinity or allowed), **kw)


def affinity_of(lim: Limits):
    """The CPUs to bind to for the no-cgroup tier's CPU limits, chosen now (the C
    executor chooses N of a pool itself, from the CPU it starts on: plan word affn=;
    a caller without it takes the first N), or None."""
    if not lim.affinity:
        return None
    pool = sorted(lim.affinity)
    return frozenset(pool[:lim.affinity_count] if lim.affinity_count else pool)


def join(limits: dict) -> None:
    """`hpcrun exec` into an instance with limits (its record's "limits"): this process
    takes them before it joins, so what it starts there is held to them too: the
    instance's cgroups, its CPUs, its process limit (RLIMIT_NPROC counts the instance's
    user namespace, which it joins)."""
    for d in limits.get("cgroups") or ():
        try:
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as e:
            raise LimitsError(f"can't join the instance's cgroup {d}: {e.strerror}",
                              "the instance may have ended; see 'hpcrun instance list'") from None
    if limits.get("cpus"):
        os.sched_setaffinity(0, limits["cpus"])
    if limits.get("nproc"):
        import resource  # lazy: only exec into an instance with --pids-limit
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))


def _plan_cgroup(kw, tier, host, allowed, view, environ) -> Limits:
    name = f"hpcrun-{os.getpid()}"
    writes = []          # (dir, file, value), in order
    dirs = []
    notes = []
    mounts = []
    mem, swap = kw["memory"], kw["memory_swap"]
    makers = []          # (controller or "" for v2, mount point, mount root), as dirs
    if tier == TIER_CGROUP2:
        d = os.path.join(host.v2_dir, name)
        dirs.append(d)
        makers.append(("",) + tuple(host.mounts.get("") or ("", "")))
        if mem:
            writes += [(d, "memory.max", str(mem)), (d, "memory.oom.group", "1")]
            if swap:
                writes.append((d, "memory.swap.max", "max" if swap < 0 else str(swap - mem)))
        if kw["cpus"]:
            writes.append((d, "cpu.max", f"{int(kw['cpus'] * 100000)} 100000"))
        if kw["cpuset"]:
            writes.append((d, "cpuset.cpus", format_cpuset(kw["cpuset"])))
        if kw["pids"]:
            writes.append((d, "pids.max", str(kw["pids"])))
        memdir = d if mem else None
        mounts.append(Mount(src=d, dst="/sys/fs/cgroup", flags=M_RDONLY | M_NOSKEL))
        where = d
    else:
        memdir = None
        for ctl in sorted({"memory" if mem else None, "cpu" if kw["cpus"] else None,
                           "cpuset" if kw["cpuset"] else None,
                           "pids" if kw["pids"] else None} - {None}):
            d = os.path.join(host.v1_dirs[ctl], name)
            dirs.append(d)
            makers.append((ctl,) + tuple(host.mounts.get(ctl) or ("", "")))
            if ctl == "memory":
                memdir = d
                writes.append((d, "memory.limit_in_bytes", str(mem)))
                if os.path.exists(os.path.join(host.v1_dirs[ctl], "memory.memsw.limit_in_bytes")):
                    # Docker: unset -> as much swap as memory; -1 -> unlimited
                    total = -1 if swap < 0 else (swap or 2 * mem)
                    writes.append((d, "memory.memsw.limit_in_bytes", str(total)))
            elif ctl == "cpu":
                writes += [(d, "cpu.cfs_period_us", "100000"),
                           (d, "cpu.cfs_quota_us", str(int(kw["cpus"] * 100000)))]
            elif ctl == "cpuset":
                writes += [(d, "cpuset.cpus", format_cpuset(kw["cpuset"])),
                           (d, "cpuset.mems", "@parent"), ]
            elif ctl == "pids":
                writes.append((d, "pids.max", str(kw["pids"])))
            mounts.append(Mount(src=d, dst="/sys/fs/cgroup/" + host.v1_names[ctl],
                                flags=M_RDONLY | M_NOSKEL))
        where = ", ".join(dirs)
    if mem:
        notes.append(f"memory {format_size(mem)}")
    if swap:
        notes.append("memory+swap " + ("unlimited" if swap < 0 else format_size(swap)))
    if kw["cpus"]:
        notes.append(f"cpus {kw['cpus']:g} (quota)")
    if kw["cpuset"]:
        notes.append(f"cpuset {format_cpuset(kw['cpuset'])}")
    if kw["pids"]:
        notes.append(f"pids {kw['pids']}")
    notes.append(f"in {where}")
    if swap < 0:
        kw["memory_swap"] = 0
    # The C executor can make them itself (plan words cgmk=, cgw=: runtime/plan.py) where
    # every mount is known: the caller's own cgroup under each is found when it runs.
    makers = tuple(makers) if all(m[1] for m in makers) else ()
    return Limits(tier=tier, cgroups=tuple(dirs), writes=tuple(writes), memory_cgroup=memdir,
                  mounts=tuple(mounts), notes=tuple(notes), makers=makers,
                  view=_view(kw, kw["cpuset"] or allowed), **kw)


def _view(kw, cpus):
    """Generated files for --limits-view: (dst, content) as lxcfs would show them:
    /sys/devices/system/cpu/online and /proc/cpuinfo with the allowed CPUs only,
    /proc/meminfo with MemTotal/MemFree/MemAvailable at the limit (a snapshot)."""
    out = [("/sys/devices/system/cpu/online", format_cpuset(cpus) + "\n")]
    blocks = [b for b in (_read("/proc/cpuinfo") or "").split("\n\n") if b.strip()]
    kept = []
    for b in blocks:
        first, _, rest = b.partition("\n")
        n = first.partition(":")[2].strip()
        if first.startswith("processor") and n.isdigit() and int(n) in cpus:
            kept.append(f"processor\t: {len(kept)}\n{rest}")   # renumbered, as lxcfs does
    text = "\n\n".join(kept) + "\n\n"
    if kept and len(text) < 32768:    # the plan is one exec argument (128 KiB at most)
        out.append(("/proc/cpuinfo", text))
    mem = kw["memory"]
    if mem:
        text = _read("/proc/meminfo") or ""
        kb = mem // 1024
        lines = []
        for line in text.splitlines():
            key = line.split(":", 1)[0]
            if key in ("MemTotal", "MemFree", "MemAvailable"):
                line = f"{key + ':':<16}{kb:>8} kB"
            elif key in ("SwapTotal", "SwapFree"):
                sw = max(0, (kw["memory_swap"] or mem) - mem) // 1024
                line = f"{key + ':':<16}{sw:>8} kB"
            lines.append(line)
        out.append(("/proc/meminfo", "\n".join(lines) + "\n"))
    return tuple(out)


def view_mounts(lim: Limits):
    """The cgroup view (tier 1: the limiting cgroup read-only at /sys/fs/cgroup[/CTL])."""
    return list(lim.mounts)


def content_mounts(lim: Limits):
    """--limits-view: generated /proc/meminfo and /sys/devices/system/cpu/online."""
    return [Mount(src=content, dst=dst, flags=M_CONTENT | M_NOSKEL) for dst, content in lim.view]


# ---------------------------------------------------------------- doing

def create(lim: Limits) -> None:
    """Make the cgroups and write the limits; on any failure nothing is left."""
    if lim.tier == TIER_WATCHDOG:
        return
    made = []
    try:
        if lim.tier == TIER_CGROUP2:
            _v2_enable(os.path.dirname(lim.cgroups[0]), lim)
        for d in lim.cgroups:
            _sweep(os.path.dirname(d))
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                os.rmdir(d)              # a stale one of an earlier launcher with our pid
                os.mkdir(d, 0o755)
            made.append(d)
        for d, f, v in lim.writes:
            if v == "@parent":
                v = (_read(os.path.join(os.path.dirname(d), f)) or "").strip()
            try:
                with open(os.path.join(d, f), "w") as fh:
                    fh.write(v)
            except OSError as e:
                raise LimitsError(f"can't set {f} to {v} in {d}: {e.strerror}",
                                  "see 'hpcrun check' for what this host allows; "
                                  "--limits=best-effort is no help for a cgroup that "
                                  "refuses a value") from None
    except LimitsError:
        remove(lim, made)
        raise
    except OSError as e:
        remove(lim, made)
        raise LimitsError(f"can't create cgroup {e.filename}: {e.strerror}",
                          "see 'hpcrun check'") from None


def prepare(lim: Limits) -> None:
    """Before an executor that makes the cgroups itself (lim.makers: plan words cgmk=,
    cext/task.c make_cgroups): cgroup v2's controllers enabled for our child."""
    if lim.tier == TIER_CGROUP2:
        try:
            _v2_enable(os.path.dirname(lim.cgroups[0]), lim)
        except OSError as e:
            raise LimitsError(f"can't enable the controllers in {os.path.dirname(lim.cgroups[0])}: "
                              f"{e.strerror}", "see 'hpcrun check'") from None


def _sweep(parent: str) -> None:
    """Remove hpcrun-<pid> cgroups whose launcher is gone: one killed before its
    container (and the reaper) started leaves an empty one. rmdir fails on any cgroup
    that still holds processes, so a live container's is never touched."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        if n.startswith("hpcrun-") and n[7:].isdigit() and not os.path.exists(f"/proc/{n[7:]}"):
            try:
                os.rmdir(os.path.join(parent, n))
            except OSError:
                pass


def _v2_enable(parent: str, lim: Limits) -> None:
    """Enable the controllers for our child. The no-internal-processes rule: a cgroup
    with controllers enabled for its children holds no processes, so those in it (we
    and our siblings in a delegated scope) move into a leaf first."""
    want = {"memory" if lim.memory else None, "cpu" if lim.cpus else None,
            "cpuset" if lim.cpuset else None, "pids" if lim.pids else None} - {None}
    have = set((_read(os.path.join(parent, "cgroup.subtree_control")) or "").split())
    if want <= have:
        return
    procs = (_read(os.path.join(parent, "cgroup.procs")) or "").split()
    if procs:
        leaf = os.path.join(parent, "hpcrun-leaf")
        os.makedirs(leaf, exist_ok=True)
        for p in procs:
            try:
                with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
                    f.write(p)
            except ProcessLookupError:
                pass
    with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
        f.write(" ".join("+" + c for c in sorted(want - have)))


def remove(lim: Limits, dirs=None) -> None:
    for d in reversed(list(lim.cgroups if dirs is None else dirs)):
        try:
            os.rmdir(d)
        except OSError:
            pass


# ---------------------------------------------------------------- --ulimit

_RLIMITS = {"nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "core": "RLIMIT_CORE",
            "stack": "RLIMIT_STACK", "memlock": "RLIMIT_MEMLOCK", "as": "RLIMIT_AS",
            "cpu": "RLIMIT_CPU", "fsize": "RLIMIT_FSIZE"}
_SIZED = ("core", "stack", "memlock", "as", "fsize")


def parse_ulimits(values) -> tuple:
    """Docker's --ulimit NAME=SOFT[:HARD] -> ((name, soft, hard), ...), -1 for unlimited
    ('unlimited' too); sizes take units for the byte-sized ones. The C executor sets
    them (plan word rl=)."""
    out = []
    for v in values:
        name, eq, rest = str(v).partition("=")
        if name not in _RLIMITS or not eq or not rest:
            raise UsageError(f"--ulimit {v!r}: not NAME=SOFT[:HARD] with NAME one of "
                             f"{', '.join(sorted(_RLIMITS))}", "e.g. --ulimit nofile=4096", 125)
        nums = []
        for part in rest.split(":", 1):
            if part in ("-1", "unlimited"):
                nums.append(-1)
            elif name in _SIZED:
                nums.append(parse_size(part, f"--ulimit {name}"))
            elif part.isdigit():
                nums.append(int(part))
            else:
                raise UsageError(f"--ulimit {v!r}: {part!r} is not a number (allowed: 0 or "
                                 "more, or -1 for unlimited)", "e.g. --ulimit nofile=4096", 125)
        soft, hard = nums[0], nums[-1]
        if hard != -1 and (soft == -1 or soft > hard):
            raise UsageError(f"--ulimit {v!r}: the soft limit is above the hard one",
                             f"e.g. --ulimit {name}={rest.split(':')[-1]}", 125)
        out.append((name, soft, hard))
    return tuple(out)


# ---------------------------------------------------------------- the job's limits, seen inside

def _limit_of(d: str, files) -> str | None:
    for f in files:
        v = _read(os.path.join(d, f))
        if v is not None:
            return v.strip()
    return None


def _carrier(d: str, top: str, files, unlimited) -> str | None:
    """The highest cgroup from d up to top whose limit is the effective one (the
    smallest): the job's cgroup, not the step or task leaf below it."""
    chain = []
    while True:
        v = _limit_of(d, files)
        if v is not None:
            chain.append((d, v))
        if d == top or len(d) <= len(top):
            break
        d = os.path.dirname(d)
    limited = [(dd, v) for dd, v in chain if v not in unlimited]
    if not limited:
        return None
    key = (lambda v: int(v)) if limited[0][1].lstrip("-").isdigit() else (lambda v: v)
    best = min(key(v) for _, v in limited)
    return [dd for dd, v in limited if key(v) == best][-1]


def job_view_mounts(environ) -> list:
    """In a Slurm job: the job's cgroup (the one carrying its memory limit; for cpuset
    the one with its CPUs) read-only at /sys/fs/cgroup[/CTL], so the container reads
    the job's limits rather than an unlimited leaf (enroot#169). Optional mounts: a
    node where the path is missing simply shows the host's."""
    if not environ.get("SLURM_JOB_ID"):
        return []
    own = _own_cgroups()
    mounts = _cgroup_mounts()
    flags = M_RDONLY | M_NOSKEL | M_OPTIONAL
    out = []
    v2 = _dir(mounts.get(""), own.get(""))
    if "memory" not in mounts and v2:
        top = mounts[""][0]
        d = _carrier(v2, top, ("memory.max",), ("max",))
        if d and d != top:
            out.append(Mount(src=d, dst="/sys/fs/cgroup", flags=flags))
        return out
    for ctl, files, unlimited in (("memory", ("memory.limit_in_bytes",), ()),
                                  ("cpuset", ("cpuset.cpus",), ())):
        d = _dir(mounts.get(ctl), own.get(ctl))
        if not d:
            continue
        top = mounts[ctl][0]
        if ctl == "memory":
            d = _carrier(d, top, files, {str(x) for x in (9223372036854771712, -1)})
        else:
            mine = _limit_of(d, files)
            while d != top and _limit_of(os.path.dirname(d), files) == mine and \
                    "/job_" in os.path.dirname(d):
                d = os.path.dirname(d)
        if d and d != top:
            out.append(Mount(src=d, dst="/sys/fs/cgroup/" + os.path.basename(top), flags=flags))
    return out


# ---------------------------------------------------------------- nested cgroups (cluster --cgroup)

def _nest_parents(controllers) -> dict:
    own = _own_cgroups()
    mounts = _cgroup_mounts_any()
    out = {}
    for c in controllers:
        d = _dir(mounts.get(c), own.get(c))
        if d:
            out[c] = (d, os.path.basename(mounts[c][0]))
    return out


def _cgroup_mounts_any(text=None) -> dict:
    """Like _cgroup_mounts, for any v1 controller (freezer too)."""
    out = {}
    for line in (text if text is not None else _read("/proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if sep and len(f) >= 5 and len(r) >= 3 and r[0] == "cgroup":
            for opt in r[2].split(","):
                out.setdefault(opt, (f[4], f[3]))
    return out


def nest_missing(controllers):
    """The first of these v1 controllers that is not mounted or not writable, or None."""
    parents = _nest_parents(controllers)
    for c in controllers:
        if c not in parents or not os.access(parents[c][0], os.W_OK):
            return c
    return None


def nest_create(name: str, controllers) -> dict:
    """A cgroup `name` below the caller's own in each v1 controller (cpuset gets its
    parent's CPUs and memory nodes): {"dirs": {ctl: dir}, "mounts": {ctl: mount name}}."""
    parents = _nest_parents(controllers)
    dirs, names = {}, {}
    for c in controllers:
        parent, mname = parents[c]
        d = os.path.join(parent, name)
        os.makedirs(d, exist_ok=True)
        if c == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                with open(os.path.join(d, f), "w") as fh:
                    fh.write((_read(os.path.join(parent, f)) or "").strip())
        dirs[c], names[c] = d, mname
    return {"dirs": dirs, "mounts": names}


def nest_remove(nc: dict) -> None:
    """Remove a nest_create tree, deepest first (Slurm may leave its own dirs in it)."""
    import signal  # lazy: keeps hpcrun run's start-up small
    for d in nc.get("dirs", {}).values():
        for root, subdirs, _ in sorted(os.walk(d), key=lambda t: -len(t[0])):
            for pid in (_read(os.path.join(root, "cgroup.procs")) or "").split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        for root, subdirs, _ in sorted(os.walk(d), key=lambda t: -len(t[0])):
            for _ in range(100):
                try:
                    os.rmdir(root)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    import time  # lazy: keeps hpcrun run's start-up small
                    time.sleep(0.05)


# ---------------------------------------------------------------- hpcrun check

def describe() -> dict:
    """What `hpcrun check` shows: which tiers this host and user allow, and what to ask
    the admin for."""
    host = detect()
    ctls = ("memory", "cpu", "cpuset", "pids")
    v2_ok = bool(host.v2_dir and host.v2_writable and host.v2_controllers & set(ctls))
    v1_ok = {c: bool(host.v1_writable.get(c)) for c in ctls}
    tiers = []
    if v2_ok:
        tiers.append({"tier": "cgroup v2", "where": host.v2_dir,
                      "controllers": sorted(host.v2_controllers & set(ctls))})
    if any(v1_ok.values()):
        tiers.append({"tier": "cgroup v1", "where": ", ".join(host.v1_dirs[c] for c in ctls
                                                             if v1_ok[c]),
                      "controllers": [c for c in ctls if v1_ok[c]]})
    tiers.append({"tier": "no cgroup", "where": "the C monitor",
                  "controllers": ["cpus by affinity", "memory by watchdog",
                                  "pids by RLIMIT_NPROC"]})
    best = tiers[0]["tier"]
    ask = None
    if best == "no cgroup":
        slurm = ("Slurm: a cgroup.conf with ConstrainRAMSpace=yes and ConstrainCores=yes "
                 "(TaskPlugin=task/cgroup, ProctrackType=proctrack/cgroup), so jobs' "
                 "cgroups carry --mem and --cpus-per-task")
        systemd = ("a delegated cgroup v2 subtree with the memory, cpu, cpuset and pids "
                   "controllers (systemd: 'systemd-run --user --scope -p Delegate=yes', or "
                   "Delegate=yes in user@.service)")
        ask = f"{slurm}; outside Slurm, {systemd}" if host.slurm_job else f"{systemd}; in jobs, {slurm}"
    return {"best": best, "tiers": tiers, "ask": ask,
            "cgroup_v2": host.v2_dir, "cgroup_v2_controllers": sorted(host.v2_controllers),
            "cgroup_v1": dict(host.v1_dirs), "allowed_cpus": format_cpuset(allowed_cpus())}
