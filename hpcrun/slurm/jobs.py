"""Submit job files and follow their jobs: submit, status, cancel, logs, wait, jobs.

Planning is separate from doing: `check_images` and `check_resources` look before
anything is submitted (an impossible request is refused here, with the file and line
of the key that asks for it, rather than left pending forever); `submit` then sends
one sbatch per step, dependencies first, and if Slurm refuses a later step it cancels
the steps already sent, so a job file is submitted whole or not at all.

Without slurmdbd the controller forgets a finished job after MinJobAge, so each
submission leaves a small record under $XDG_STATE_HOME/hpcrun/jobs/ (default
~/.local/state/hpcrun/jobs/): the job's name, step, output files and the last state
seen. `status`, `logs` and `wait` fall back to it.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .. import log
from ..errors import HpcrunError, JobFileError, NotFound, SlurmError
from ..runtime.image import is_path
from . import backend as _backend
from .backend import CliBackend, JobInfo
from .jobfile import JobFile, Step
from .render import hpcrun_exe, render, sbatch_argv  # noqa: F401 (hpcrun_exe re-exported)

# `hpcrun wait` exit status for a job that did not complete (see README, slurm-jobs).
STATE_CODES = {"TIMEOUT": 124, "CANCELLED": 143, "OUT_OF_MEMORY": 137, "PREEMPTED": 143}
WAIT_FAILED = 125   # wait itself could not tell (unknown job, --timeout ran out)


# ---------------------------------------------------------------------------
# Checks before submission

def _field(step: Step, key: str, sub: str = "resources") -> str:
    return (f"steps.{step.name}." if step.name else "") + (f"{sub}.{key}" if sub else key)


def _where(job: JobFile, step: Step, key: str) -> str:
    line = dict(step.resource_lines).get(key, step.line)
    return f"{job.path}:{line}"


def check_images(job: JobFile) -> None:
    """An image given as a path must exist and be readable (names are checked by Slurm
    tasks against the store on each node, or pulled there)."""
    checked: set = set()
    for step in job.steps:
        img = step.image
        where = f"{job.path}:{step.image_line}: {_field(step, 'image', '')}"
        if not is_path(img):
            if img not in checked:
                _check_name(img, where)
                checked.add(img)
            continue
        p = os.path.expanduser(img)
        if not os.path.exists(p):
            raise NotFound(f"{where}: image {img} does not exist",
                           "give a rootfs directory or squashfs file that every node can "
                           "read, or an image name from 'hpcrun images'")
        if not os.access(p, os.R_OK | (os.X_OK if os.path.isdir(p) else 0)):
            raise JobFileError(f"{where}: image {img} is not readable by you",
                               "the job's tasks run as you on the nodes; fix its permissions")


def _check_name(img: str, where: str) -> None:
    """An image name: well-formed, and in the store here or in its registry.

    The store is node-local, so an image missing here is not an error as long as its
    registry has it (the job pulls it on the nodes). A registry that does not answer
    within 15 s, or asks for credentials we lack, leaves the question open (warning)."""
    from ..image import reference
    try:
        ref = reference.parse(img)
    except HpcrunError as e:
        raise JobFileError(f"{where}: {e.what}", e.hint) from None
    from .. import config
    if os.path.isdir(str(config.get("store"))):
        try:
            from ..image.store import Store
            st = Store()
            try:
                if st.get(img) is not None:
                    return
            finally:
                st.close()
        except HpcrunError:
            pass
    found = _registry_has(ref)
    if found is False:
        raise NotFound(f"{where}: image {img} does not exist: it is not in your image "
                       f"store and {ref.domain} has no such manifest",
                       "check the name and tag ('hpcrun images' lists your store)")
    if found is None:
        log.warning(f"cannot check that image {img} exists ({ref.domain} did not say); "
                    "the job will pull it on the nodes")


def _registry_has(ref) -> Optional[bool]:
    """True / False when the registry says whether the manifest exists; None otherwise."""
    import threading
    result: List[Optional[bool]] = [None]

    def probe() -> None:
        try:
            from ..image.registry import Registry
            reg = Registry(ref.registry)
            try:
                result[0] = reg.has_manifest(ref.repository, ref.digest or ref.tag)
            finally:
                reg.close()
        except Exception as e:                  # unreachable, TLS, auth: cannot tell
            log.debug(f"registry check of {ref}: {e}")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(15)
    return result[0]


def _mem_mb(s: str) -> int:
    s = s.strip().upper()
    mult = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


class ResourceRefused(SlurmError):
    """A job file asks for more than the cluster has."""


def check_resources(job: JobFile, be: CliBackend) -> None:
    """Refuse what the cluster can never satisfy (more nodes than the partition has,
    more memory or CPUs than any node, a time above the partition's limit)."""
    parts = {p.name: p for p in be.partitions()}
    nodes = be.nodes()
    default = next((p.name for p in parts.values() if p.default), None)
    for step in job.steps:
        r = step.resources
        pname = r.partition or default
        if pname is None:
            raise JobFileError(f"{_where(job, step, 'partition')}: "
                               f"{_field(step, 'partition')}: the cluster has no default "
                               "partition", "name one: resources: {partition: NAME} "
                               "(list them with 'sinfo')")
        p = parts.get(pname)
        if p is None:
            raise JobFileError(f"{_where(job, step, 'partition')}: "
                               f"{_field(step, 'partition')}: no partition {pname!r} on "
                               "this cluster", "partitions: " + ", ".join(sorted(parts)))
        pn = [n for n in nodes if pname in n.partitions]
        max_cpus = max((n.cpus for n in pn), default=0)
        max_mem = max((n.real_memory for n in pn), default=0)
        total_gpus = sum(n.gpus for n in pn)

        def refuse(key: str, what: str, hint: str) -> None:
            raise ResourceRefused(f"{_where(job, step, key)}: {_field(step, key)}: {what}",
                             hint + "; Slurm would refuse it or leave it pending forever")

        if r.nodes is not None:
            limit = min(x for x in (p.total_nodes, p.max_nodes) if x is not None)
            if r.nodes > limit:
                refuse("nodes", f"{r.nodes} nodes requested, partition {pname!r} has "
                       f"{limit} at most", f"ask for {limit} or fewer (see 'sinfo')")
        cpt = r.cpus_per_task or 1
        if r.cpus_per_task and max_cpus and r.cpus_per_task > max_cpus:
            refuse("cpus_per_task", f"{r.cpus_per_task} CPUs per task, but no node of "
                   f"partition {pname!r} has more than {max_cpus}",
                   f"ask for {max_cpus} or fewer")
        if r.ntasks_per_node and max_cpus and r.ntasks_per_node * cpt > max_cpus:
            refuse("ntasks_per_node", f"{r.ntasks_per_node} tasks x {cpt} CPUs per node, "
                   f"but no node of partition {pname!r} has more than {max_cpus} CPUs",
                   "lower ntasks_per_node or cpus_per_task")
        if r.ntasks and p.total_cpus:
            usable = p.total_cpus
            if r.nodes:
                usable = min(usable, r.nodes * max_cpus)
            if r.ntasks * cpt > usable:
                refuse("ntasks", f"{r.ntasks} tasks x {cpt} CPUs, but "
                       + (f"{r.nodes} nodes of " if r.nodes else "")
                       + f"partition {pname!r} have {usable} CPUs",
                       "lower ntasks, or ask for more nodes")
        if r.mem is not None and max_mem:
            mb = _mem_mb(r.mem)
            if mb > max_mem:
                refuse("mem", f"{r.mem} of memory per node, but no node of partition "
                       f"{pname!r} has more than {max_mem}M", f"ask for {max_mem}M or less")
        if r.time is not None and p.max_time is not None:
            t = _backend.parse_time(r.time)
            if t is None or t > p.max_time:
                refuse("time", f"time limit {r.time} is above partition {pname!r}'s "
                       f"limit of {p.max_time} minutes", "ask for less time")
        if r.gpus is not None:
            n = int(str(r.gpus).rsplit(":", 1)[-1])
            if n > total_gpus:
                refuse("gpus", f"{n} GPUs requested, partition {pname!r} has {total_gpus}",
                       "ask for fewer GPUs, or use a GPU partition")


# ---------------------------------------------------------------------------
# Records of submitted jobs

def state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".local", "state")
    return os.path.join(base, "hpcrun", "jobs")


def _record_path(jid: str) -> str:
    return os.path.join(state_dir(), f"{jid}.json")


def write_record(jid: str, rec: Dict) -> None:
    d = state_dir()
    try:
        os.makedirs(d, exist_ok=True)
        from ..fsutil import atomic_write
        atomic_write(_record_path(jid), json.dumps(rec, indent=1, sort_keys=True))
    except OSError as e:
        log.warning(f"cannot record job {jid} in {d}: {e.strerror} "
                    "(status and logs work only while Slurm remembers the job)")


def read_record(jid: str) -> Optional[Dict]:
    """The record of a job submitted through this cluster configuration (ids restart
    when a local cluster is recreated, so a record from another SLURM_CONF is not it)."""
    base = jid.split("_")[0]
    try:
        with open(_record_path(base)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    if rec.get("slurm_conf", "") != os.environ.get("SLURM_CONF", ""):
        return None
    return rec


def _remember(infos: Sequence[JobInfo]) -> None:
    """Keep the last state of finished jobs hpcrun submitted (Slurm will forget)."""
    by_base: Dict[str, List[JobInfo]] = {}
    for j in infos:
        by_base.setdefault(str(j.array_job_id or j.job_id), []).append(j)
    for base, js in by_base.items():
        rec = read_record(base)
        if rec is None:
            continue
        seen = rec.get("seen") or {}
        changed = False
        for j in js:
            if j.finished and seen.get(j.id, {}).get("state") != j.state:
                seen[j.id] = j.as_dict()
                changed = True
        if changed:
            rec["seen"] = seen
            write_record(base, rec)


# ---------------------------------------------------------------------------
# Submit

@dataclass(frozen=True)
class Submitted:
    step: str
    job_id: str
    argv: Tuple[str, ...]


def submit(job: JobFile, *, dry_run: bool = False, be: Optional[CliBackend] = None,
           exe: Optional[str] = None, check_cluster: bool = True
           ) -> Tuple[List[Submitted], Dict[str, str]]:
    """Check, render and submit every step; returns (submitted, scripts by step).

    With dry_run nothing is sent; ids in the result are placeholders "<step>"."""
    exe = exe or hpcrun_exe()
    check_images(job)
    be = be or _backend.get()
    if check_cluster:
        try:
            check_resources(job, be)
        except (ResourceRefused, JobFileError):
            raise
        except HpcrunError as e:        # no cluster reachable: fatal unless --dry-run
            if not dry_run:
                raise
            log.warning(f"cannot check resources against the cluster: {e.what}")
    scripts = {s.name: render(s, exe, job.path) for s in job.steps}
    ids: Dict[str, str] = {}
    done: List[Submitted] = []
    cwd = os.getcwd()
    for step in job.steps:
        deps = [ids[d] for d in step.depends_on]
        argv = sbatch_argv(deps)
        if dry_run:
            ids[step.name] = f"<{step.name or job.name}>"
            done.append(Submitted(step.name, ids[step.name], tuple(argv)))
            continue
        try:
            jid = be.submit(scripts[step.name], argv, cwd=cwd)
        except HpcrunError as e:
            if done:
                try:
                    be.cancel([d.job_id for d in done])
                except HpcrunError:
                    pass
                e = SlurmError(
                    (f"step {step.name!r}: " if step.name else "") + e.what
                    + " (cancelled the steps already submitted: "
                    + ", ".join(f"{d.step}={d.job_id}" for d in done) + ")", e.hint)
            elif step.name:
                e = SlurmError(f"step {step.name!r}: {e.what}", e.hint)
            raise e from None
        ids[step.name] = jid
        done.append(Submitted(step.name, jid, tuple(argv)))
        out = step.output or ("%x-%A_%a.out" if step.array else "%x-%j.out")
        write_record(jid, {
            "id": jid, "name": step.job_name, "step": step.name,
            "file": os.path.abspath(job.path), "cwd": cwd, "output": out,
            "error": step.error, "array": step.array, "submitted": int(time.time()),
            "slurm_conf": os.environ.get("SLURM_CONF", ""),
            "depends_on": {d: ids[d] for d in step.depends_on},
        })
        log.progress(f"submitted {'step ' + step.name + ' as ' if step.name else ''}job {jid}")
    return done, scripts


# ---------------------------------------------------------------------------
# Status

def _matches(j: JobInfo, want: str) -> bool:
    if "_" in want:
        return j.id == want
    return str(j.job_id) == want or str(j.array_job_id or "") == want


def _check_id(jid: str) -> str:
    import re
    if not re.fullmatch(r"\d+(_\d+)?", jid):
        raise HpcrunError(f"{jid!r} is not a job id", "job ids look like 123 or 123_4 "
                          "(array task); 'hpcrun jobs' lists yours")
    return jid


def _from_record(jid: str) -> List[JobInfo]:
    rec = read_record(jid)
    if not rec:
        return []
    out = []
    for k, v in sorted((rec.get("seen") or {}).items()):
        j = JobInfo(**v)
        if _matches(j, jid):
            out.append(j)
    return out


def lookup(ids: Sequence[str], be: Optional[CliBackend] = None,
           infos: Optional[List[JobInfo]] = None) -> List[JobInfo]:
    """The records of the given ids (an array id gives all its tasks)."""
    for i in ids:
        _check_id(i)
    be = be or _backend.get()
    infos = be.query(ids) if infos is None else infos
    out: List[JobInfo] = []
    for want in ids:
        found = [j for j in infos if _matches(j, want)]
        if not found:
            found = _from_record(want)
        if not found:
            rec = read_record(want)
            if rec is not None:
                out_file = _backend._expand(
                    rec.get("output") or "", {"current_working_directory": rec.get("cwd")},
                    int(want.split("_")[0]), int(want.split("_")[0]),
                    want.split("_")[1] if "_" in want else None, rec.get("name", ""),
                    "", "")
                raise NotFound(f"job {want} is no longer known to Slurm and its end "
                               "was not seen", "Slurm forgets finished jobs after "
                               f"MinJobAge; its output is {out_file}")
            raise NotFound(f"job {want} is not known to Slurm",
                           "list your jobs with 'hpcrun jobs'")
        out += found
    _remember(out)
    return out


def exit_status(j: JobInfo) -> int:
    """What `hpcrun wait` exits with for a finished job."""
    if j.state == "COMPLETED":
        return 0
    if j.state in STATE_CODES:
        return STATE_CODES[j.state]
    if j.signal:
        return 128 + j.signal
    if j.exit_code:
        return j.exit_code
    return 1


def fmt_exit(j: JobInfo) -> str:
    if not j.finished:
        return "-"
    if j.signal:
        return f"signal {j.signal}"
    return str(j.exit_code if j.exit_code is not None else "-")


def table(infos: Sequence[JobInfo]) -> str:
    rows = [("JOBID", "NAME", "STATE", "EXIT", "NODES", "REASON")]
    for j in infos:
        reason = j.reason if j.reason not in ("None", "") else ""
        rows.append((j.id, j.name, j.state, fmt_exit(j), j.nodes or "-", reason))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() + "\n"
                   for r in rows)


def user_jobs(be: Optional[CliBackend] = None, all_users: bool = False) -> List[JobInfo]:
    import getpass
    be = be or _backend.get()
    me = getpass.getuser()
    infos = [j for j in be.query(user=None if all_users else me)
             if all_users or j.user == me]
    _remember(infos)
    return sorted(infos, key=lambda j: (j.array_job_id or j.job_id, j.id))


# ---------------------------------------------------------------------------
# Wait, cancel, logs

def wait(ids: Sequence[str], timeout: Optional[float] = None,
         be: Optional[CliBackend] = None) -> List[JobInfo]:
    """Poll until every job (every array task) has finished; returns their records."""
    be = be or _backend.get()
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    delay = 0.25
    while True:
        infos = lookup(ids, be)
        if all(j.finished for j in infos):
            return infos
        if deadline is not None and time.monotonic() > deadline:
            raise HpcrunError(f"timed out after {timeout:g}s waiting for job "
                              + ", ".join(ids), "the job is still "
                              + ", ".join(sorted({j.state for j in infos if not j.finished})),
                              code=WAIT_FAILED)
        time.sleep(delay)
        # Quick at first (short jobs), then gentle on the controller: squeue --json
        # lists every job on 22.05, whatever the filters.
        delay = min(delay * 1.5, 2.0 if time.monotonic() - started < 60 else 10.0)


def cancel(ids: Sequence[str], be: Optional[CliBackend] = None) -> List[JobInfo]:
    be = be or _backend.get()
    infos = lookup(ids, be)          # unknown ids are an error before anything is sent
    live = [i for i in ids if any(_matches(j, i) and not j.finished for j in infos)]
    if live:
        be.cancel(live)
    return infos


def _output_files(j: JobInfo) -> Tuple[str, str]:
    return j.stdout, (j.stderr if j.stderr and j.stderr != j.stdout else "")


def logs(ids: Sequence[str], follow: bool = False, be: Optional[CliBackend] = None,
         out=None, err=None) -> int:
    """Print the jobs' output files (stdout) and separate error files (stderr).

    With follow, keep printing what is appended until every job has finished."""
    out = out or sys.stdout.buffer
    err = err or sys.stderr.buffer
    be = be or _backend.get()
    offsets: Dict[str, int] = {}
    delay = 0.2
    started = time.monotonic()
    asked = 0.0
    infos: List[JobInfo] = []
    while True:
        # Files are read every round (at most 1 s apart); Slurm is asked for the
        # state every 2 s at most in the first minute, every 10 s after.
        now = time.monotonic()
        if not infos or now - asked >= (2.0 if now - started < 60 else 10.0):
            infos = lookup(ids, be)
            asked = now
        finished = all(j.finished for j in infos)
        multi = len(infos) > 1
        for j in infos:
            o, e = _output_files(j)
            for path, stream in ((o, out), (e, err)):
                if not path:
                    continue
                try:
                    with open(path, "rb") as f:
                        f.seek(offsets.get(path, 0))
                        data = f.read()
                except FileNotFoundError:
                    if not follow and j.state not in ("PENDING", "CONFIGURING") \
                            and path not in offsets and stream is out:
                        raise NotFound(f"job {j.id}: output file {path} does not exist",
                                       "it is written by the job on its first node; "
                                       "was it removed, or is that directory not shared?")
                    continue
                except PermissionError:
                    raise HpcrunError(f"job {j.id}: cannot read {path}: permission denied",
                                      "logs are readable by the job's owner") from None
                if data:
                    if multi and path not in offsets:
                        stream.write(f"==> {j.id} ({os.path.basename(path)}) <==\n".encode())
                    stream.write(data)
                    stream.flush()
                offsets[path] = offsets.get(path, 0) + len(data)
        if not follow:
            if all(j.state in ("PENDING", "CONFIGURING") for j in infos):
                raise NotFound(f"job {', '.join(ids)} has not started yet (PENDING)",
                               "use 'hpcrun logs --follow' to wait for its output")
            return 0
        if finished:
            return 0
        time.sleep(delay)
        delay = min(delay * 1.3, 1.0)
