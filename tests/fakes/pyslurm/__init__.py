"""A FAKE `pyslurm`, for hpcrun's tests only.

Why a fake: pyslurm builds against exactly one Slurm release (25.11 for the pyslurm on
PyPI today), and this machine has Debian 12's Slurm 22.05; no Debian suite ships 25.11
(trixie has 24.11, sid 26.05), so the real pyslurm can neither be built nor run here.

What it is: just the subset of pyslurm 25.11's object API that
hpcrun.slurm.backend.PyslurmBackend uses, with the same names, signatures and
attribute names as the real one (read from PySlurm/pyslurm: pyslurm/__init__.py,
pyslurm/core/job/job.pyx, submission.pyx/.pxd, pyslurm/core/partition.pyx,
pyslurm/core/node.pyx, pyslurm/core/error.pyx, pyslurm/utils/{uint,ctime,helpers}.pyx,
pyslurm/core/slurmctld/config.pyx), backed by the REAL local Slurm cluster through
Slurm's own commands instead of libslurm:

  Jobs.load()                 squeue --json --states=all (the raw job_info_t fields),
                              plus scontrol show job -o for the expanded StdOut/StdErr
                              (what libslurm's slurm_get_job_stdout/stderr return)
  Job(id).cancel()            scancel ID            (pyslurm: slurm_kill_job(id, SIGKILL, 0))
  Job(id).send_signal(s, st)  scancel --signal=S [--full | --batch]
  JobSubmitDescription.submit sbatch --parsable, the script on stdin, one option per
                              attribute set (pyslurm: slurm_submit_batch_job)
  Partitions.load()           scontrol show partition -o
  Nodes.load()                sinfo --json
  slurmctld.Config.load()     scontrol show config (SLURM_VERSION)

Known difference: sbatch checks a request on the client side before sending it (it
lowers --nodes to --ntasks, for one), where libslurm sends a description as it is;
the backend always sets ntasks, so this does not arise for what it submits.

It reproduces pyslurm's value conventions where they matter to a caller: u32_parse
(0 and NO_VAL read as None, so array task 0 comes back as None in 25.11), _raw_time
(0 -> None, INFINITE -> None for jobs, "UNLIMITED" for partitions), _get_exit_code
(signal separate, exit statuses >= 128 reduced by 128), RPCError(errno, msg).
Attributes the backend does not use are not faked; a JobSubmitDescription attribute
the fake cannot pass on raises NotImplementedError, so a test notices.

Test hooks (environment): HPCRUN_FAKE_PYSLURM_VERSION sets __version__ (default
"25.11.2", which does not match the test cluster's 22.05); HPCRUN_FAKE_PYSLURM_LOG
names a file that every call appends one line to, so tests can show the fake was used.
"""
from __future__ import annotations

import json
import os
import re

from . import slurmctld  # noqa: F401  (pyslurm.slurmctld, as in the real package)
from ._common import NO_VAL, INFINITE, UNLIMITED, PyslurmError, RPCError, log, run  # noqa: F401

__version__ = os.environ.get("HPCRUN_FAKE_PYSLURM_VERSION", "25.11.2")

LOCAL_CLUSTER = "UNKNOWN"          # pyslurm.settings.LOCAL_CLUSTER before slurm_init


def _u32(val, on_noval=None, zero_is_noval=True, on_inf=UNLIMITED):
    """pyslurm.utils.uint.u32_parse."""
    if val is None or val == NO_VAL or (val == 0 and zero_is_noval):
        return on_noval
    if val == INFINITE:
        return on_inf
    return int(val)


def _raw_time(val, on_noval=None, on_inf=None):
    """pyslurm.utils.ctime._raw_time."""
    if val is None or val == NO_VAL or val == 0:
        return on_noval
    if val == INFINITE:
        return on_inf
    return int(val)


class _MultiClusterMap:
    """The part of pyslurm.xcollections.MultiClusterMap callers use: data, values(), get()."""

    def __init__(self):
        self.data = {}

    def _add(self, cluster, key, item):
        self.data.setdefault(cluster, {})[key] = item

    def values(self):
        return [v for d in self.data.values() for v in d.values()]

    def get(self, key, default=None):
        for d in self.data.values():
            if key in d:
                return d[key]
        return default

    def __len__(self):
        return sum(len(d) for d in self.data.values())


# ---------------------------------------------------------------------------
# Jobs

def _expanded_paths():
    """JobId -> (StdOut, StdErr) as Slurm expands them (scontrol uses libslurm's
    slurm_get_job_stdout/stderr, the same calls pyslurm's properties make)."""
    out = {}
    cp = run(["scontrol", "show", "job", "-o"])
    for line in cp.stdout.splitlines():
        m = re.match(r"JobId=(\d+) ", line)
        if not m:
            continue
        # a value runs up to the next " Key=" (paths may contain spaces)
        err = re.search(r" StdErr=(.*?)(?= [A-Z][A-Za-z/:]*=|$)", line)
        std = re.search(r" StdOut=(.*?)(?= [A-Z][A-Za-z/:]*=|$)", line)
        out[int(m.group(1))] = (std.group(1) if std else "", err.group(1) if err else "")
    return out


class Job:
    """pyslurm.Job: one job_info_t record (here: one squeue --json record)."""

    def __init__(self, job_id):
        self._raw = {"job_id": int(job_id)}
        self._paths = ("", "")
        self.cluster = LOCAL_CLUSTER

    def __repr__(self):
        return f"pyslurm.Job({self.id})"

    @staticmethod
    def _from_raw(raw, paths):
        j = Job.__new__(Job)
        j._raw, j._paths, j.cluster = raw, paths, raw.get("cluster") or LOCAL_CLUSTER
        return j

    def send_signal(self, signal, steps="children", hurry=False):
        log(f"Job.send_signal {self.id} {signal} {steps}")
        sig = str(signal)
        if sig in ("9", "SIGKILL", "KILL") and steps.casefold() == "children":
            argv = ["scancel", str(self.id)]
        else:
            argv = ["scancel", f"--signal={sig}"]
            if steps.casefold() == "all":
                argv.append("--full")
            elif steps.casefold() == "batch":
                argv.append("--batch")
            argv.append(str(self.id))
        run(argv, check=True)

    def cancel(self):
        log(f"Job.cancel {self.id}")
        run(["scancel", str(self.id)], check=True)

    # -- properties, named and parsed as pyslurm 25.11's Job does --------------------
    def _g(self, key, default=None):
        v = self._raw.get(key, default)
        return default if v is None else v

    @property
    def id(self):
        return int(self._raw["job_id"])

    # squeue --json field -> property, parsed as pyslurm parses the job_info_t field
    name = property(lambda self: self._g("name") or None)
    state = property(lambda self: self._g("job_state") or None)
    allocated_nodes = property(lambda self: self._g("nodes") or None)
    partition = property(lambda self: self._g("partition") or None)
    batch_host = property(lambda self: self._g("batch_host") or None)
    working_directory = property(lambda self: self._g("current_working_directory") or None)
    array_id = property(lambda self: _u32(self._g("array_job_id")))
    array_task_id = property(lambda self: _u32(self._g("array_task_id")))
    num_nodes = property(lambda self: _u32(self._g("node_count")))
    submit_time = property(lambda self: _raw_time(self._g("submit_time")))
    start_time = property(lambda self: _raw_time(self._g("start_time")))
    end_time = property(lambda self: _raw_time(self._g("end_time")))
    time_limit = property(lambda self: _raw_time(self._g("time_limit")))

    @property
    def user_id(self):
        return _u32(self._g("user_id"), zero_is_noval=False)

    @property
    def user_name(self):
        return self._g("user_name") or (str(self.user_id) if self.user_id is not None
                                          else None)

    @property
    def state_reason(self):
        return self._g("state_description") or self._g("state_reason") or None

    @property
    def array_tasks_waiting(self):
        s = self._g("array_task_string") or ""
        if not s:
            return None
        return s[:s.rindex("%")] if "%" in s else s

    @property
    def exit_code(self):
        return _exit_code(self._g("exit_code", NO_VAL))[0]

    @property
    def exit_code_signal(self):
        return _exit_code(self._g("exit_code", NO_VAL))[1]

    @property
    def is_batch_job(self):
        return bool(self._g("batch_flag"))

    @property
    def standard_output(self):
        return self._paths[0] or None

    @property
    def standard_error(self):
        return self._paths[1] or None


def _exit_code(status):
    """pyslurm.utils.helpers._get_exit_code: (exit status, signal) of a wait status."""
    code = sig = 0
    if status != NO_VAL and status is not None:
        status = int(status)
        if os.WIFSIGNALED(status):
            code, sig = 0, os.WTERMSIG(status)
        elif os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            if code >= 128:
                code -= 128
    return code, sig


class Jobs(_MultiClusterMap):
    """pyslurm.Jobs: every job the controller knows (SHOW_ALL | SHOW_DETAIL)."""

    @staticmethod
    def _load_all():
        cp = run(["squeue", "--json", "--states=all"])
        try:
            raw = json.loads(cp.stdout).get("jobs", [])
        except ValueError:
            raise RPCError(errno=1, msg="Unexpected message received") from None
        paths = _expanded_paths()
        return [Job._from_raw(r, paths.get(int(r["job_id"]), ("", ""))) for r in raw]

    @staticmethod
    def load(preload_passwd_info=False, frozen=False):
        log("Jobs.load")
        jobs = Jobs()
        for j in Jobs._load_all():
            jobs._add(j.cluster, j.id, j)
        return jobs


# ---------------------------------------------------------------------------
# Submission

_PUBLIC = set("""name account user_id group_id priority site_factor wckey array
batch_constraints begin_time clusters cluster_constraints comment admin_comment
requires_contiguous_nodes cores_reserved_for_system threads_reserved_for_system
working_directory cpu_frequency nodes deadline delay_boot_time dependencies excluded_nodes
required_nodes constraints kill_on_node_fail licenses mail_user mail_types mcs_label
memory_per_cpu memory_per_node memory_per_gpu network nice log_files_open_mode overcommit
partitions power_options profile_types accounting_gather_frequency qos requires_node_reboot
is_requeueable reservations script script_args environment resource_sharing distribution
time_limit time_limit_min container cpus_per_task cpus_per_gpu sockets_per_node
cores_per_socket threads_per_core gpus gpus_per_socket gpus_per_task gres_per_node
gpu_binding ntasks ntasks_per_node ntasks_per_socket ntasks_per_core ntasks_per_gpu
switches signal standard_in standard_output standard_error kill_on_invalid_dependency
spreads_over_nodes use_min_nodes gres_binding temporary_disk_per_node get_user_environment
min_cpus_per_node wait_all_nodes""".split())      # submission.pxd's `cdef public` list

# attribute -> sbatch option the fake passes it on as
_SBATCH = {"name": "job-name", "account": "account", "array": "array",
           "working_directory": "chdir", "dependencies": "dependency",
           "standard_output": "output", "standard_error": "error", "partitions": "partition",
           "ntasks": "ntasks", "ntasks_per_node": "ntasks-per-node",
           "cpus_per_task": "cpus-per-task", "memory_per_node": "mem",
           "time_limit": "time", "qos": "qos", "gpus": "gpus"}


class JobSubmitDescription:
    """pyslurm.JobSubmitDescription (a cdef class: only its public attributes exist)."""

    def __init__(self, **kwargs):
        for k in _PUBLIC:
            object.__setattr__(self, k, None)
        for k, v in kwargs.items():
            setattr(self, k, v)

    def __setattr__(self, k, v):
        if k not in _PUBLIC:
            raise AttributeError(f"'pyslurm.core.job.submission.JobSubmitDescription' "
                                 f"object has no attribute '{k}'")
        object.__setattr__(self, k, v)

    def __repr__(self):
        return "pyslurm.JobSubmitDescription"

    def _script_text(self):
        """submission.pyx _validate_batch_script: a path is read, else the text itself."""
        script = self.script
        if script and os.path.isfile(script):
            with open(script) as f:
                script = f.read()
        if not script or script.isspace():
            raise ValueError("Batch script is empty or none was provided.")
        if not script.startswith("#!"):
            raise ValueError("Not a valid Batch script. First line must start with '#!',"
                             "followed by the path to an interpreter")
        return script

    def submit(self):
        log("JobSubmitDescription.submit")
        script = self._script_text()
        # pyslurm's _set_defaults and _parse_nodes: one task, one CPU per task, the
        # current directory, the whole environment, and exactly one node unless given.
        vals = {k: getattr(self, k) for k in _PUBLIC if getattr(self, k) is not None}
        vals.pop("script")
        vals.setdefault("ntasks", 1)
        vals.setdefault("cpus_per_task", 1)
        vals.setdefault("working_directory", os.getcwd())
        env = vals.pop("environment", "ALL")
        nodes = str(vals.pop("nodes", 1))
        if "-" not in nodes:
            nodes = f"{nodes}-{nodes}"
        argv = ["sbatch", "--parsable", f"--export={env}", f"--nodes={nodes}"]
        if vals.pop("kill_on_invalid_dependency", None):
            argv.append("--kill-on-invalid-dep=yes")
        for k, v in sorted(vals.items()):
            if k not in _SBATCH:
                raise NotImplementedError(f"the fake pyslurm does not pass on {k}")
            if isinstance(v, (list, tuple)):
                v = ",".join(map(str, v))
            argv.append(f"--{_SBATCH[k]}={v}")
        cp = run(argv, input=script)
        if cp.returncode != 0:
            lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
            msg = re.sub(r"^sbatch: error: (Batch job submission failed: )?", "",
                         lines[-1] if lines else "Unspecified error")
            raise RPCError(errno=1, msg=msg)
        return int(cp.stdout.strip().split(";")[0])


# ---------------------------------------------------------------------------
# Partitions and nodes

def _kv(line):
    return dict(re.findall(r"(\S+?)=(\S*)", line))


class Partition:
    """pyslurm.Partition (read side)."""

    def __init__(self, name=None, **kwargs):
        self._kv = {"PartitionName": name or ""}
        self.cluster = LOCAL_CLUSTER

    def __repr__(self):
        return f"pyslurm.Partition({self.name})"

    @property
    def name(self):
        return self._kv.get("PartitionName") or None

    @property
    def is_default(self):
        return self._kv.get("Default") == "YES"

    @property
    def state(self):
        return self._kv.get("State") or "UNKNOWN"

    @property
    def total_nodes(self):
        return int(self._kv.get("TotalNodes") or 0)

    @property
    def total_cpus(self):
        return int(self._kv.get("TotalCPUs") or 0)

    @property
    def max_nodes(self):
        v = self._kv.get("MaxNodes", "UNLIMITED")
        return UNLIMITED if v == "UNLIMITED" else _u32(int(v))

    @property
    def max_time(self):
        v = self._kv.get("MaxTime", "UNLIMITED")
        if v == "UNLIMITED":
            return UNLIMITED
        d, _, hms = v.rpartition("-")
        parts = [int(x) for x in hms.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        h, m, s = parts
        return _raw_time((int(d) if d else 0) * 1440 + h * 60 + m + (1 if s else 0),
                         on_inf=UNLIMITED)

    @property
    def nodes(self):
        return self._kv.get("Nodes") or None


class Partitions(_MultiClusterMap):
    @staticmethod
    def load():
        log("Partitions.load")
        parts = Partitions()
        cp = run(["scontrol", "show", "partition", "-o"], check=True)
        for line in cp.stdout.splitlines():
            if line.strip():
                p = Partition()
                p._kv = _kv(line)
                parts._add(p.cluster, p.name, p)
        return parts


class Node:
    """pyslurm.Node (read side)."""

    def __init__(self, name=None, **kwargs):
        self._raw = {"name": name}
        self.cluster = LOCAL_CLUSTER

    def __repr__(self):
        return f"pyslurm.Node({self.name})"

    @property
    def name(self):
        return self._raw.get("name") or None

    @property
    def total_cpus(self):
        return int(self._raw.get("cpus") or 0)

    @property
    def real_memory(self):
        return _u32(self._raw.get("real_memory"))

    @property
    def configured_gres(self):
        """cstr.to_gres_dict: "gpu:tesla:2,gpu:1" -> {"gpu:tesla": 2, "gpu": 1}."""
        out = {}
        for item in filter(None, (self._raw.get("gres") or "").split(",")):
            item = re.sub(r"\(.*\)$", "", item.replace("gres:", ""))
            parts = item.split(":")
            if len(parts) >= 2 and parts[-1].isdigit():
                out[":".join(parts[:-1])] = int(parts[-1])
        return out

    @property
    def partitions(self):
        return list(self._raw.get("partitions") or [])

    @property
    def state(self):
        """slurm_node_state_string_complete: "IDLE", "IDLE+DRAIN", ..."""
        flags = [f.upper() for f in self._raw.get("state_flags") or []]
        return "+".join([str(self._raw.get("state") or "UNKNOWN").upper()] + flags)


class Nodes(_MultiClusterMap):
    @staticmethod
    def load(preload_passwd_info=False):
        log("Nodes.load")
        nodes = Nodes()
        cp = run(["sinfo", "--json"], check=True)
        for raw in json.loads(cp.stdout).get("nodes", []):
            n = Node()
            n._raw = raw
            nodes._add(n.cluster, n.name, n)
        return nodes
