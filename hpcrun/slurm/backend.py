"""Talking to Slurm: its own commands with --parsable / --json (every Slurm a user may
have), or pyslurm where it fits.

pyslurm builds against exactly one Slurm release, so it is used only when it is
importable AND its version matches the cluster's (major.minor); otherwise the CLI
backend is used, and `describe()` (shown by `hpcrun check`) says which and why. Both
backends have the same methods (version, submit, query, cancel, partitions, nodes)
and give the same JobInfo / Partition / Node records.
Everything here that parses Slurm's JSON accepts both the 22.05 layout (openapi
v0.0.38: plain integers, `job_state` a string, `exit_code` a wait status) and the
23.02+ layout (`job_state` a list, numbers as {"set", "infinite", "number"} objects,
`exit_code` an object).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple
from dataclasses import asdict
import shlex
import subprocess
import tempfile

from .. import log, proc
from ..errors import HpcrunError, NotFound, SlurmError
from .. import config

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
            "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}

# A job in these states has no exit status yet (whatever the record's field says).
_NOT_EXITED = ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED", "REQUEUED")

_NO_SLURM_HINT = ("is Slurm configured here? Set SLURM_CONF, or start the local cluster "
                  "with 'hpcrun cluster up' and 'eval $(hpcrun cluster env)'")


@dataclass(frozen=True)
class JobInfo:
    """One job (or one array task) as the controller reports it."""
    id: str                       # "12", or "12_3" for an array task
    job_id: int                   # Slurm's unique id of this record
    array_job_id: Optional[int]
    array_task: Optional[str]     # "3", or "0-3" while the array is still pending
    name: str
    user: str
    state: str                    # PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, ...
    reason: str
    exit_code: Optional[int]      # the batch script's exit status, when it exited
    signal: Optional[int]         # the signal that killed it, if one did
    nodes: str                    # "n[1-2]" or "" before it starts
    node_count: int
    partition: str
    stdout: str                   # expanded path
    stderr: str
    submit_time: int = 0
    start_time: int = 0
    end_time: int = 0
    time_limit: Optional[int] = None   # minutes
    work_dir: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    state: str
    total_nodes: int
    total_cpus: int
    max_nodes: Optional[int]       # None = unlimited
    max_time: Optional[int]        # minutes, None = unlimited
    nodes: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    real_memory: int               # MB
    gpus: int
    partitions: Tuple[str, ...] = field(default_factory=tuple)
    state: str = ""


# ---------------------------------------------------------------------------
# JSON helpers for both Slurm layouts

def _num(v: Any) -> Optional[int]:
    if isinstance(v, dict):            # 23.02+: {"set": true, "infinite": false, "number": 5}
        if not v.get("set", True) or v.get("infinite"):
            return None
        v = v.get("number")
    if isinstance(v, bool) or v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _state(v: Any) -> str:
    if isinstance(v, list):            # 23.02+: ["FAILED"] or ["RUNNING", "COMPLETING"]
        return v[0] if v else "UNKNOWN"
    return str(v or "UNKNOWN")


def _exit(v: Any) -> Tuple[Optional[int], Optional[int]]:
    """(exit status, signal) from a wait status (22.05) or an exit_code object (23.02+)."""
    if isinstance(v, dict):
        rc = _num(v.get("return_code"))
        sig = v.get("signal") or {}
        sid = _num(sig.get("id")) if isinstance(sig, dict) else _num(sig)
        status = v.get("status")
        if isinstance(status, list):
            status = status[0] if status else ""
        if status == "SIGNALED" and sid:
            return None, sid
        return rc, (sid or None)
    n = _num(v)
    if n is None:
        return None, None
    if n & 0x7F:
        return None, n & 0x7F
    return (n >> 8) & 0xFF, None


def _expand(pattern: str, j: Dict[str, Any], job_id: int, array_job: Optional[int],
            task: Optional[str], name: str, user: str, first_node: str) -> str:
    """Slurm's filename patterns (sbatch(1) 'filename pattern') for the batch step."""
    if not pattern:
        return ""

    def sub(m: "re.Match[str]") -> str:
        pad, c = m.group(1), m.group(2)
        width = int(pad) if pad else 0
        val = {
            "j": str(job_id), "A": str(array_job or job_id),
            "a": task if task is not None and task.isdigit() else "4294967294",
            "x": name, "u": user, "N": first_node, "n": "0", "t": "0", "s": "batch",
            "%": "%",
        }.get(c)
        if val is None:
            return m.group(0)
        return val.zfill(width) if width and val.isdigit() else val

    out = re.sub(r"%(\d*)([jAaxuNnts%])", sub, pattern) if "\\" not in pattern else pattern
    if not os.path.isabs(out):
        out = os.path.join(j.get("current_working_directory") or "", out)
    return out


def _first_node(nodes: str) -> str:
    if not nodes:
        return ""
    m = re.match(r"([^\[,]+)(?:\[(\d+))?", nodes)
    if not m:
        return nodes
    return m.group(1) + (m.group(2) or "")


def job_from_json(j: Dict[str, Any]) -> JobInfo:
    job_id = _num(j.get("job_id")) or 0
    array_job = _num(j.get("array_job_id")) or None
    task_n = _num(j.get("array_task_id"))
    task: Optional[str] = str(task_n) if task_n is not None else None
    if array_job and task is None:
        task = j.get("array_task_string") or None
    if array_job is None and j.get("array_task_string"):
        array_job, task = job_id, j.get("array_task_string")
    ident = f"{array_job}_{task}" if array_job and task is not None else str(job_id)
    code, sig = _exit(j.get("exit_code"))
    state = _state(j.get("job_state"))
    if state in _NOT_EXITED:
        code, sig = None, None
    name = j.get("name") or ""
    user = j.get("user_name") or str(j.get("user_id", ""))
    nodes = j.get("nodes") or ""
    first = j.get("batch_host") or _first_node(nodes)
    default_out = ""
    if j.get("batch_flag") and not j.get("standard_output"):
        default_out = "slurm-%A_%a.out" if array_job else "slurm-%j.out"   # sbatch(1)
    out = _expand(j.get("standard_output") or default_out, j, job_id, array_job, task, name, user, first)
    err = _expand(j.get("standard_error") or "", j, job_id, array_job, task, name, user, first)
    return JobInfo(
        id=ident, job_id=job_id, array_job_id=array_job, array_task=task, name=name,
        user=user, state=state, reason=j.get("state_reason") or "", exit_code=code,
        signal=sig, nodes=nodes, node_count=_num(j.get("node_count")) or 0,
        partition=j.get("partition") or "", stdout=out, stderr=err or out,
        submit_time=_num(j.get("submit_time")) or 0, start_time=_num(j.get("start_time")) or 0,
        end_time=_num(j.get("end_time")) or 0, time_limit=_num(j.get("time_limit")),
        work_dir=j.get("current_working_directory") or "")


def _parse_time(s: str) -> Optional[int]:
    """Slurm time spec -> minutes (None for UNLIMITED)."""
    s = s.strip()
    if s.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days = 0
    if "-" in s:
        d, s = s.split("-", 1)
        days = int(d)
        parts = [int(x) for x in s.split(":")]
        while len(parts) < 3:
            parts.append(0)
        h, m, sec = parts
    else:
        parts = [int(x) for x in s.split(":")]
        if len(parts) == 1:
            h, m, sec = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, sec = 0, parts[0], parts[1]
        else:
            h, m, sec = parts
    return days * 1440 + h * 60 + m + (1 if sec else 0)


def parse_time(s: str) -> Optional[int]:
    return _parse_time(s)


def _kv_line(line: str) -> Dict[str, str]:
    """`scontrol show ... -o` one-liners: Key=Value pairs, values may contain spaces."""
    out: Dict[str, str] = {}
    keys = list(re.finditer(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=", line))
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


# ---------------------------------------------------------------------------
# The backend

class CliBackend:
    """Slurm's own commands. Works against any Slurm with --json (21.08 and newer)."""

    name = "cli"

    def __init__(self, env: Optional[Dict[str, str]] = None):
        self.env = env

    def _run(self, argv: List[str], **kw):
        kw.setdefault("timeout", 120)
        try:
            return proc.run(argv, env=self.env, **kw)
        except subprocess.TimeoutExpired as e:
            raise SlurmError(f"{argv[0]} did not answer within {kw['timeout']:g}s",
                             "is the Slurm controller up? (scontrol ping)") from e
        except NotFound as e:
            raise SlurmError(f"{argv[0]} not found: Slurm's client commands are not "
                             "installed here", "install Slurm's clients (Debian: slurm-client) "
                             "or run on a login node") from e

    def version(self) -> str:
        """The Slurm release of the client commands ("22.05.8"); they read the cluster's
        configuration even for --version, so this fails where no cluster is configured."""
        cp = self._run(["sbatch", "--version"], check=False, timeout=10)
        if cp.returncode != 0 or not cp.stdout.strip():
            msg = (cp.stderr or "").strip().splitlines()
            raise SlurmError("Slurm's commands cannot reach a cluster: "
                             + (msg[-1] if msg else f"exit status {cp.returncode}"),
                             _NO_SLURM_HINT)
        return cp.stdout.strip().split()[-1]

    def _json(self, argv: List[str]) -> Dict[str, Any]:
        cp = self._run(argv, check=False)
        if cp.returncode != 0:
            msg = (cp.stderr or "").strip().splitlines()
            raise SlurmError(f"{argv[0]} failed: {msg[-1] if msg else cp.returncode}",
                             _NO_SLURM_HINT)
        try:
            return json.loads(cp.stdout)
        except ValueError as e:
            raise SlurmError(f"{argv[0]} --json printed something that is not JSON",
                             "this Slurm may be too old for --json (21.08+ needed)") from e

    def submit(self, script: str, argv: Sequence[str], cwd: Optional[str] = None) -> str:
        """Run `sbatch --parsable ...` with the script on stdin; return the job id."""
        cp = self._run(list(argv), input=script, check=False, cwd=cwd)
        if cp.returncode != 0:
            lines = [ln for ln in (cp.stderr or "").strip().splitlines() if ln.strip()]
            msg = lines[-1] if lines else f"exit status {cp.returncode}"
            msg = re.sub(r"^sbatch: error: ", "", msg.strip())
            raise SlurmError(f"sbatch refused the job: {msg}", _sbatch_hint(cp.stderr or ""))
        out = cp.stdout.strip()
        if "--test-only" in argv:
            return (cp.stderr or "").strip()
        return out.split(";")[0].strip()

    def query(self, ids: Sequence[str] = (), user: Optional[str] = None) -> List[JobInfo]:
        """Jobs the controller knows, finished ones included. The filters narrow the
        answer where squeue honours them with --json (22.05 ignores them and lists
        every job), so callers filter the result again."""
        argv = ["squeue", "--json", "--states=all"]
        if ids:
            argv.append("--jobs=" + ",".join(sorted({i.split("_")[0] for i in ids})))
        if user:
            argv.append("--user=" + user)
        d = self._json(argv)
        return [job_from_json(j) for j in d.get("jobs", [])]

    def cancel(self, ids: Sequence[str], signal: Optional[str] = None) -> None:
        argv = ["scancel"]
        if signal:
            argv += ["--signal", signal, "--full"]
        cp = self._run(argv + list(ids), check=False)
        if cp.returncode != 0:
            msg = (cp.stderr or "").strip().splitlines()
            raise SlurmError(f"scancel failed: {msg[-1] if msg else cp.returncode}")

    def partitions(self) -> List[Partition]:
        cp = self._run(["scontrol", "show", "partition", "-o"], check=False)
        if cp.returncode != 0:
            msg = (cp.stderr or "").strip().splitlines()
            raise SlurmError(f"scontrol show partition failed: {msg[-1] if msg else ''}",
                             _NO_SLURM_HINT)
        out = []
        for line in cp.stdout.splitlines():
            if not line.strip():
                continue
            kv = _kv_line(line)
            mx = kv.get("MaxNodes", "UNLIMITED")
            out.append(Partition(
                name=kv.get("PartitionName", ""), default=kv.get("Default") == "YES",
                state=kv.get("State", ""), total_nodes=int(kv.get("TotalNodes", "0") or 0),
                total_cpus=int(kv.get("TotalCPUs", "0") or 0),
                max_nodes=None if mx in ("UNLIMITED", "") else int(mx),
                max_time=_parse_time(kv.get("MaxTime", "UNLIMITED"))))
        return out

    def nodes(self) -> List[Node]:
        d = self._json(["sinfo", "--json"])
        out = []
        for n in d.get("nodes", []):
            gpus = 0
            for g in re.findall(r"gpu(?::[^:(,]+)?:(\d+)", n.get("gres") or ""):
                gpus += int(g)
            st = n.get("state")
            out.append(Node(name=n.get("name", ""), cpus=_num(n.get("cpus")) or 0,
                            real_memory=_num(n.get("real_memory")) or 0, gpus=gpus,
                            partitions=tuple(n.get("partitions") or ()),
                            state=_state(st)))
        return out


def _sbatch_hint(stderr: str) -> str:
    s = stderr.lower()
    if "node count" in s or "node configuration" in s or "memory specification" in s:
        return ("the cluster cannot satisfy these resources: compare with 'sinfo' and "
                "'scontrol show partition'")
    if "time limit" in s:
        return "lower resources.time below the partition's MaxTime ('scontrol show partition')"
    if "invalid partition" in s:
        return "list partitions with 'sinfo'"
    if "unable to contact" in s or "could not establish" in s or "connection refused" in s:
        return _NO_SLURM_HINT
    return "this is Slurm's own message; 'hpcrun render FILE' shows the script sent"


# ---------------------------------------------------------------------------
# pyslurm: detection, mapping its objects onto ours, and the backend
#
# Written against pyslurm 25.11's object API (PySlurm/pyslurm: pyslurm/__init__.py,
# core/job/job.pyx, core/job/submission.pyx/.pxd, core/partition.pyx, core/node.pyx,
# core/error.pyx, utils/{uint,ctime,helpers}.pyx). Its value conventions, which the
# mapping below undoes: u32_parse reads 0 and NO_VAL as None (so 25.11 reports array
# task 0 as None; 26.05 fixed that), _raw_time reads 0 as None and INFINITE as None
# (jobs) or "UNLIMITED" (partitions), _get_exit_code splits a wait status into
# (exit status, signal) and reduces exit statuses >= 128 by 128.

def _major_minor(v: str) -> Optional[Tuple[int, int]]:
    m = re.search(r"(\d+)\.(\d+)", v or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def _import_pyslurm() -> Tuple[Any, str]:
    """(the pyslurm module or None, why not). Importing it runs slurm_init()."""
    try:
        import pyslurm  # type: ignore
    except ImportError:
        return None, "pyslurm is not installed"
    except Exception as e:                              # built against another libslurm
        return None, f"pyslurm does not load ({e.__class__.__name__}: {e})"
    return pyslurm, ""


def _pyslurm_version(pyslurm: Any) -> str:
    pv = getattr(pyslurm, "__version__", None)
    if pv is None and hasattr(pyslurm, "version"):      # the pre-23.02 API
        try:
            pv = pyslurm.version()
        except Exception:
            pv = None
    return str(pv or "")


def pyslurm_status(slurm_version: Optional[str]) -> Tuple[bool, str]:
    """(usable, why): pyslurm is importable AND built for the cluster's Slurm release
    (pyslurm X.Y.Z is built for Slurm X.Y; "24.5.1" is for 24.05)."""
    pyslurm, why = _import_pyslurm()
    if pyslurm is None:
        return False, why
    pv = _pyslurm_version(pyslurm)
    if not slurm_version:
        return False, f"pyslurm {pv} found, but the cluster's Slurm version is unknown"
    if _major_minor(pv) != _major_minor(slurm_version):
        return False, (f"pyslurm {pv} is built for another Slurm release than the "
                       f"cluster's {slurm_version}")
    return True, f"pyslurm {pv} matches Slurm {slurm_version}"


def _count(v: Any) -> Optional[int]:
    """An int, or None for pyslurm's None / "UNLIMITED"."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def job_from_pyslurm(j: Any) -> JobInfo:
    """A pyslurm.Job as JobInfo, with the same ids, states and exit codes that
    job_from_json gives for the same job."""
    job_id = int(j.id)
    array_job = _count(j.array_id)
    task: Optional[str] = None
    if array_job:
        tid = _count(j.array_task_id)
        if tid is not None:
            task = str(tid)
        elif j.array_tasks_waiting:                 # the pending rest: "0-3"
            task = j.array_tasks_waiting
        else:                                       # 25.11's u32_parse turns task 0 into None
            task = "0"
    ident = f"{array_job}_{task}" if array_job else str(job_id)
    state = str(j.state or "UNKNOWN")
    sig = _count(j.exit_code_signal) or None
    code = None if sig else _count(j.exit_code)
    if state in _NOT_EXITED:
        code, sig = None, None
    out = j.standard_output or ""                   # libslurm expands the patterns
    return JobInfo(
        id=ident, job_id=job_id, array_job_id=array_job, array_task=task,
        name=j.name or "", user=j.user_name or str(j.user_id or ""), state=state,
        reason=j.state_reason or "", exit_code=code, signal=sig,
        nodes=j.allocated_nodes or "", node_count=_count(j.num_nodes) or 0,
        partition=j.partition or "", stdout=out, stderr=j.standard_error or out,
        submit_time=_count(j.submit_time) or 0, start_time=_count(j.start_time) or 0,
        end_time=_count(j.end_time) or 0, time_limit=_count(j.time_limit),
        work_dir=j.working_directory or "")


def partition_from_pyslurm(p: Any) -> Partition:
    return Partition(name=p.name or "", default=bool(p.is_default), state=p.state or "",
                     total_nodes=_count(p.total_nodes) or 0,
                     total_cpus=_count(p.total_cpus) or 0,
                     max_nodes=_count(p.max_nodes), max_time=_count(p.max_time))


def node_from_pyslurm(n: Any) -> Node:
    gres = n.configured_gres or {}
    gpus = sum(c for k, c in gres.items()
               if (k == "gpu" or k.startswith("gpu:")) and _count(c) is not None)
    return Node(name=n.name or "", cpus=_count(n.total_cpus) or 0,
                real_memory=_count(n.real_memory) or 0, gpus=gpus,
                partitions=tuple(n.partitions or ()),
                state=str(n.state or "").split("+")[0])


# The sbatch options hpcrun sends (render.sbatch_options, render.sbatch_argv) and the
# JobSubmitDescription attribute each becomes. pyslurm's own load_sbatch_options() is
# not used: it keeps sbatch's double quotes in the values, reads every #SBATCH line
# (sbatch stops at the first command), and sets `partition`, which
# JobSubmitDescription does not have (it is `partitions`).
_SUBMIT_ATTRS = {
    "job-name": "name", "nodes": "nodes", "ntasks": "ntasks",
    "ntasks-per-node": "ntasks_per_node", "cpus-per-task": "cpus_per_task",
    "mem": "memory_per_node", "time": "time_limit", "partition": "partitions",
    "account": "account", "qos": "qos", "gpus": "gpus", "array": "array",
    "output": "standard_output", "error": "standard_error", "dependency": "dependencies",
    "kill-on-invalid-dep": "kill_on_invalid_dependency",
}
_INT_ATTRS = ("ntasks", "ntasks_per_node", "cpus_per_task")


def sbatch_request(script: str, argv: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """The long options of a submission as sbatch reads them: the script's #SBATCH
    lines up to its first command, then the command line (which wins). Returns
    (option -> value, words this backend does not know)."""
    words: List[str] = []
    for line in script.splitlines()[1:]:
        s = line.strip()
        if s and not s.startswith("#"):
            break
        if s.startswith("#SBATCH"):
            words += shlex.split(s[len("#SBATCH"):])
    words += list(argv[1:])
    opts: Dict[str, str] = {}
    unknown: List[str] = []
    i = 0
    while i < len(words):
        key, eq, val = words[i][2:].partition("=")
        if words[i] == "--parsable":
            pass
        elif not words[i].startswith("--") or key not in _SUBMIT_ATTRS:
            unknown.append(words[i])
        elif eq:
            opts[key] = val
        elif i + 1 < len(words):
            i += 1
            opts[key] = words[i]
        else:
            unknown.append(words[i])
        i += 1
    return opts, unknown


def submit_attributes(opts: Dict[str, str]) -> Tuple[Dict[str, Any], str]:
    """JobSubmitDescription attributes for the options, or ({}, why pyslurm cannot
    express them the way sbatch does)."""
    attrs: Dict[str, Any] = {}
    for key, val in opts.items():
        attr = _SUBMIT_ATTRS[key]
        if attr == "kill_on_invalid_dependency":
            attrs[attr] = val.lower() in ("yes", "1", "true")
            continue
        if attr in _INT_ATTRS or (attr == "time_limit" and val.isdigit()):
            if not val.isdigit():           # sbatch would refuse it with its own message
                return {}, f"--{key}={val} is not a number"
            attrs[attr] = int(val)          # pyslurm passes a digit string through as is
            continue
        if attr == "memory_per_node":
            m = re.fullmatch(r"(\d+)([KMGT]?)B?", val.strip().upper())
            if not m:
                return {}, f"--mem={val} is not in a form pyslurm's dehumanize() reads"
            val = m.group(1) + m.group(2)
        attrs[attr] = val
    if "nodes" not in attrs and (attrs.get("ntasks", 1) > 1 or "gpus" in attrs):
        return {}, ("without --nodes pyslurm asks for exactly one node, where sbatch "
                    "lets Slurm choose how many")
    if "ntasks" not in attrs:
        # pyslurm's default is one task in all; sbatch's is one per node (or
        # --ntasks-per-node per node), which srun in the script then starts.
        first = int(str(attrs.get("nodes", "1")).split("-")[0] or 1)
        attrs["ntasks"] = first * attrs.get("ntasks_per_node", 1)
    return attrs, ""


def _rpc_message(e: BaseException) -> str:
    """RPCError carries Slurm's message in .msg (its str() too); one line of it."""
    lines = str(getattr(e, "msg", None) or e).strip().splitlines()
    return lines[-1] if lines else "unknown error"


class PyslurmBackend:
    """pyslurm's object API (25.11): Jobs.load, JobSubmitDescription.submit,
    Job.cancel/send_signal, Partitions.load, Nodes.load, slurmctld.Config.load.

    It talks to the controller of the process's own environment (SLURM_CONF as it was
    when pyslurm was imported). A submission whose options pyslurm cannot express the
    way sbatch does (see submit_attributes) goes through sbatch instead, and says so
    at -v."""

    name = "pyslurm"

    def __init__(self, env: Optional[Dict[str, str]] = None, module: Any = None):
        self.env = env
        self.ps = module if module is not None else _import_pyslurm()[0]
        if self.ps is None:
            raise SlurmError("pyslurm cannot be imported", "set slurm_backend = cli")
        self._cli = CliBackend(env)

    def _errors(self) -> Tuple[type, ...]:
        return (getattr(self.ps, "PyslurmError", None) or self.ps.RPCError,
                self.ps.RPCError)

    def _call(self, what: str, fn, hint: str = _NO_SLURM_HINT):
        try:
            return fn()
        except self._errors() as e:
            raise SlurmError(f"pyslurm: {what} failed: {_rpc_message(e)}", hint) from e

    def version(self) -> str:
        """The controller's Slurm release ("22.05.8")."""
        return str(self._call("reading the controller's configuration",
                              lambda: self.ps.slurmctld.Config.load().version))

    def submit(self, script: str, argv: Sequence[str], cwd: Optional[str] = None) -> str:
        opts, unknown = sbatch_request(script, argv)
        attrs, why = submit_attributes(opts) if not unknown else (
            {}, "pyslurm has no attribute for " + " ".join(unknown))
        if why:
            log.info(f"slurm backend pyslurm: submitting with sbatch instead: {why}")
            return self._cli.submit(script, argv, cwd=cwd)
        # submission.pyx reads a script given as a path; given as text, pathlib first
        # stats it as a path, which fails (ENAMETOOLONG) for most real scripts.
        fd, path = tempfile.mkstemp(prefix="hpcrun-sbatch-", suffix=".sh")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(script)
            desc = self.ps.JobSubmitDescription(
                script=path, working_directory=cwd or os.getcwd(), **attrs)
            try:
                jid = desc.submit()
            except self._errors() as e:
                msg = _rpc_message(e)
                raise SlurmError(f"Slurm refused the job: {msg}", _sbatch_hint(msg)) from e
            except (ValueError, TypeError) as e:    # pyslurm's own checks of the values
                raise SlurmError(f"pyslurm refused the job description: {e}",
                                 "'hpcrun render FILE' shows the options sent; "
                                 "slurm_backend = cli submits with sbatch") from e
        finally:
            os.unlink(path)
        return str(jid)

    def query(self, ids: Sequence[str] = (), user: Optional[str] = None) -> List[JobInfo]:
        """Every job the controller knows (Jobs.load), narrowed to the ids' jobs
        (an array id: all its tasks) and the user."""
        jobs = self._call("loading the jobs", self.ps.Jobs.load)
        infos = [job_from_pyslurm(j) for j in jobs.values()]
        if user:
            infos = [j for j in infos if j.user == user]
        if ids:
            bases = {i.split("_")[0] for i in ids}
            infos = [j for j in infos if str(j.job_id) in bases
                     or str(j.array_job_id or "") in bases]
        return infos

    def cancel(self, ids: Sequence[str], signal: Optional[str] = None) -> None:
        """Job(id).cancel(), or send_signal(signal, steps="all") like scancel --full.
        An array task ("12_3") is cancelled through its own job record; a task still
        pending inside its array's record has none in pyslurm, so scancel does it."""
        numeric: List[Tuple[str, int]] = []
        rest: List[str] = []
        tasks = [i for i in ids if "_" in i]
        infos = {j.id: j for j in self.query(tasks)} if tasks else {}
        for i in ids:
            if "_" not in i:
                numeric.append((i, int(i)))
            elif i in infos:
                numeric.append((i, infos[i].job_id))
            else:
                rest.append(i)
        for i, n in numeric:
            job = self.ps.Job(n)
            self._call(f"cancelling job {i}",
                       (lambda: job.send_signal(signal, steps="all")) if signal
                       else job.cancel,
                       "'hpcrun status " + i + "' shows whether it still runs")
        if rest:
            log.info("slurm backend pyslurm: cancelling pending array tasks with "
                     "scancel: " + " ".join(rest))
            self._cli.cancel(rest, signal)

    def partitions(self) -> List[Partition]:
        parts = self._call("loading the partitions", self.ps.Partitions.load)
        return [partition_from_pyslurm(p) for p in parts.values()]

    def nodes(self) -> List[Node]:
        nodes = self._call("loading the nodes", self.ps.Nodes.load)
        return [node_from_pyslurm(n) for n in nodes.values()]


# ---------------------------------------------------------------------------
# Choosing the backend

def _wanted() -> str:
    want = str(config.get("slurm_backend")).strip().lower()
    if want not in ("auto", "cli", "pyslurm"):
        raise HpcrunError(f"slurm_backend = {want!r} is not a backend",
                          "use auto, cli or pyslurm")
    return want


def get(env: Optional[Dict[str, str]] = None) -> Any:
    """The backend to use, following the `slurm_backend` setting (auto | cli |
    pyslurm): pyslurm when it is importable and built for the cluster's release."""
    want = _wanted()
    cli = CliBackend(env)
    if want == "cli":
        return cli
    pyslurm, why = _import_pyslurm()
    if pyslurm is not None:
        ok, why = pyslurm_status(_safe_version(cli))
        if ok:
            return PyslurmBackend(env, pyslurm)
    if want == "pyslurm":
        raise SlurmError(f"slurm_backend = pyslurm, but it cannot be used: {why}",
                         "set slurm_backend = auto (or cli) to use Slurm's commands")
    return cli


def _safe_version(b: CliBackend) -> Optional[str]:
    try:
        return b.version()
    except HpcrunError:
        return None


def describe(env: Optional[Dict[str, str]] = None) -> str:
    """One line for `hpcrun check`: the backend `get()` picks, and why."""
    want = _wanted()
    if proc.which("sbatch") is None:
        return "slurm backend: none (Slurm's client commands are not installed)"
    v = _safe_version(CliBackend(env))
    ok, why = pyslurm_status(v)
    if v is None:
        return ("slurm backend: cli, but no cluster is configured (set SLURM_CONF, or "
                "'hpcrun cluster up'); " + why)
    cli = f"slurm backend: cli (sbatch/squeue --json/scancel, Slurm {v}); "
    if want == "cli":
        return cli + f"slurm_backend = cli ({why})"
    if ok:
        return f"slurm backend: pyslurm (Slurm {v}); {why}"
    if want == "pyslurm":
        return f"slurm backend: none: slurm_backend = pyslurm, but {why}"
    return cli + why
