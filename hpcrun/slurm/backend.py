"""Talking to Slurm: its own commands with --parsable / --json (every Slurm a user may
have), and pyslurm detection.

pyslurm builds against exactly one Slurm release, so it is usable only when it is
importable AND its version matches the cluster's (major.minor). When it does not,
the CLI backend is used and `describe()` (shown by `hpcrun check`) says why.
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

from .. import proc
from ..errors import HpcrunError, NotFound, SlurmError

FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
            "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}

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
        from dataclasses import asdict
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
    if state in ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED", "REQUEUED"):
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
        import subprocess
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
# pyslurm detection

def _major_minor(v: str) -> Optional[Tuple[int, int]]:
    m = re.search(r"(\d+)\.(\d+)", v or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def pyslurm_status(slurm_version: Optional[str]) -> Tuple[bool, str]:
    """(usable, why): pyslurm is importable AND built for the cluster's Slurm release."""
    try:
        import pyslurm  # type: ignore
    except ImportError:
        return False, "pyslurm is not installed"
    except Exception as e:                              # built against another libslurm
        return False, f"pyslurm does not load ({e.__class__.__name__}: {e})"
    pv = getattr(pyslurm, "__version__", None)
    if pv is None and hasattr(pyslurm, "version"):
        try:
            pv = pyslurm.version()
        except Exception:
            pv = None
    pv = str(pv or "")
    if not slurm_version:
        return False, f"pyslurm {pv} found, but the cluster's Slurm version is unknown"
    if _major_minor(pv) != _major_minor(slurm_version):
        return False, (f"pyslurm {pv} is built for another Slurm release than the "
                       f"cluster's {slurm_version}")
    return True, f"pyslurm {pv} matches Slurm {slurm_version}"


def get(env: Optional[Dict[str, str]] = None) -> CliBackend:
    """The backend to use, following the `slurm_backend` setting (auto | cli | pyslurm)."""
    from .. import config
    want = str(config.get("slurm_backend")).strip().lower()
    if want not in ("auto", "cli", "pyslurm"):
        raise HpcrunError(f"slurm_backend = {want!r} is not a backend",
                          "use auto, cli or pyslurm")
    if want == "pyslurm":
        b = CliBackend(env)
        ok, why = pyslurm_status(_safe_version(b))
        raise SlurmError(f"slurm_backend = pyslurm, but it cannot be used: {why}"
                         if not ok else
                         f"slurm_backend = pyslurm: {why}, but hpcrun does not drive "
                         "pyslurm yet",
                         "set slurm_backend = auto (or cli) to use Slurm's commands")
    return CliBackend(env)


def _safe_version(b: CliBackend) -> Optional[str]:
    try:
        return b.version()
    except HpcrunError:
        return None


def describe(env: Optional[Dict[str, str]] = None) -> str:
    """One line for `hpcrun check`: which backend and why."""
    b = CliBackend(env)
    if proc.which("sbatch") is None:
        return "slurm backend: none (Slurm's client commands are not installed)"
    v = _safe_version(b)
    ok, why = pyslurm_status(v)
    if v is None:
        return ("slurm backend: cli, but no cluster is configured (set SLURM_CONF, or "
                "'hpcrun cluster up'); " + why)
    pys = (f"{why}, but hpcrun does not drive pyslurm yet" if ok else why)
    return f"slurm backend: cli (sbatch/squeue --json/scancel, Slurm {v}); {pys}"
