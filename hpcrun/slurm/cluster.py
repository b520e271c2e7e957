"""A local multi-node Slurm cluster on one machine (`hpcrun cluster up|down|status|env`).

Layout (for a cluster named NAME with N nodes; all names derive from NAME, so clusters
with different names coexist):

    host ns                 switch ns "hpcrun-NAME-sw"           node ns "hpcrun-NAME-nK"
    hpc-NAME (10.a.b.254) ── host ─┐                             (own uts + mount ns:
                                   br0 ── ctl ── eth0 10.a.b.1    hostname NAME-ctl,
                                   │                               private /etc/hosts)
                                   ├── n1 ── eth0 10.a.b.11  slurmd -N NAME-n1
                                   └── nK ── eth0 10.a.b.(10+K)  slurmd -N NAME-nK

* Every node is a network namespace with a real interface (Slurm cannot resolve
  addresses in a namespace that has only `lo`), its own hostname (uts ns) and a private
  /etc/hosts (bind-mounted in its own mount ns, propagation "slave" so mounts made on the
  host later are still seen inside). No namespace has a default route: nothing leaves
  the machine. The host reaches the bridge over a single veth.
* Daemons are entered with `nsenter --net=/run/netns/X unshare --uts --mount`, not
  `ip netns exec`, which remounts /sys (slurmd then exits).
* auth/none + cred/none (Slurm 22.05): no munge. Each node has its own spool and TmpFS
  (the PMIx plugin needs a per-node TmpFS because the nodes share one filesystem).
* Everything lives under /run/hpcrun/cluster/NAME/ (world-readable slurm.conf so that
  unprivileged users can submit with SLURM_CONF). `down` removes processes, namespaces,
  interfaces and that directory; `up` first cleans a stale cluster of the same name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import zlib
from typing import Any
import fcntl
import subprocess
import sys

from .. import log, proc
from ..errors import CommandError, HpcrunError, NotFound, SlurmError, UsageError
from ..fsutil import atomic_write

BASE_DIR = os.environ.get("HPCRUN_CLUSTER_DIR", "/run/hpcrun/cluster")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,10}$")
MAX_NODES = 200
NODE_CPUS = 4
TOOLS = {"slurmctld": "slurm-wlm", "slurmd": "slurm-wlm", "sinfo": "slurm-client",
         "ip": "iproute2", "nsenter": "util-linux", "unshare": "util-linux"}
SLURM_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _which(tool: str) -> str | None:
    p = proc.which(tool)
    if p:
        return p
    for d in SLURM_SBIN:
        c = os.path.join(d, tool)
        if os.access(c, os.X_OK):
            return c
    return None


def _auth_kind() -> str:
    """munge (a munged of the cluster's own, with its own key) when installed, else none.

    With auth/none, Slurm believes whatever uid a client claims: fine on a machine of
    one's own, but on a shared machine any local user could run jobs as root. Set
    HPCRUN_CLUSTER_AUTH=none to skip munge, =munge to insist on it.
    """
    want = os.environ.get("HPCRUN_CLUSTER_AUTH", "auto").strip().lower()
    if want not in ("auto", "munge", "none"):
        raise UsageError(f"bad HPCRUN_CLUSTER_AUTH {want!r}", "use auto, munge or none")
    have = bool(_which("munged") and _which("mungekey"))
    if want == "munge" and not have:
        raise NotFound("munged: command not found (HPCRUN_CLUSTER_AUTH=munge)",
                       "install the munge package")
    if want == "none" or not have:
        if want == "auto":
            log.warning("munge is not installed: the local cluster uses auth/none, so any "
                        "local user can act as any other to it (install munge to avoid this)")
        return "none"
    return "munge"


def _host_mem_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 4096


class LocalCluster:
    """One named local cluster. Cheap to construct: nothing happens until up()/down()."""

    def __init__(self, name: str = "hpcrun"):
        if not NAME_RE.match(name or ""):
            raise UsageError(f"bad cluster name {name!r}",
                             "use 1 to 11 lowercase letters and digits, starting with a letter")
        self.name = name
        self.dir = os.path.join(BASE_DIR, name)
        self.conf_path = os.path.join(self.dir, "slurm.conf")
        self.state_path = os.path.join(self.dir, "cluster.json")
        self.host_if = f"hpc-{name}"
        self.sw_ns = f"hpcrun-{name}-sw"
        self.ctl_ns = f"hpcrun-{name}-ctl"
        self.ctl_host = f"{name}-ctl"
        self.munge_socket = os.path.join(self.dir, "munge", "munge.socket")
        # Where the daemon logs of a failed `up` are kept (the cluster dir is removed).
        self.failed_logs = f"/tmp/hpcrun-cluster-{name}-failed-logs"

    # ---------- naming ----------
    def node_ns(self, i: int) -> str:
        return f"hpcrun-{self.name}-n{i}"

    def node_name(self, i: int) -> str:
        return f"{self.name}-n{i}"

    @property
    def node_names(self) -> list[str]:
        st = self._state()
        return list(st["nodes"]) if st else []

    def env(self) -> dict[str, str]:
        """What a client needs to talk to this cluster (merge into a subprocess env)."""
        return {"SLURM_CONF": self.conf_path}

    # ---------- state ----------
    def _state(self) -> dict[str, Any] | None:
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _netns_names(self, st: dict | None) -> list[str]:
        names = [self.sw_ns, self.ctl_ns]
        n = len(st["nodes"]) if st else 0
        names += [self.node_ns(i) for i in range(1, n + 1)]
        # Also whatever is left from an earlier cluster of this name (stale, any size).
        try:
            for e in os.listdir("/run/netns"):
                if e.startswith(f"hpcrun-{self.name}-") and e not in names:
                    names.append(e)
        except OSError:
            pass
        return names

    def _alive(self, st: dict | None) -> bool:
        """Controller and every slurmd running, namespaces present."""
        if not st:
            return False
        for ns in [self.ctl_ns] + [self.node_ns(i) for i in range(1, len(st["nodes"]) + 1)]:
            if not os.path.exists(f"/run/netns/{ns}"):
                return False
        # By command line, which any user may read (/proc/PID/ns/* needs privilege).
        ctl, nodes = False, set()
        for pid in _all_pids():
            argv = _cmdline(pid)
            if self.conf_path not in argv or (_stat(pid) or ("Z",))[0] == "Z":
                continue
            prog = os.path.basename(argv[0])
            if prog == "slurmctld":
                ctl = True
            elif prog == "slurmd" and "-N" in argv:
                nodes.add(argv[argv.index("-N") + 1])
        if not ctl or nodes != set(st["nodes"]):
            return False
        if st.get("auth") == "munge":
            try:
                with open(os.path.join(self.dir, "munge", "munged.pid")) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                return False
            s = _stat(pid)
            if _comm(pid) != "munged" or s is None or s[0] == "Z":
                return False
        return True

    # ---------- checks ----------
    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise HpcrunError(
                "hpcrun cluster up needs root (it creates network namespaces and starts Slurm daemons)",
                "run it as root, e.g. 'sudo hpcrun cluster up'; users then submit without root "
                "after 'eval $(hpcrun cluster env)'")
        if not os.path.exists("/proc/self/ns/net"):
            raise HpcrunError("this kernel has no network namespaces (/proc/self/ns/net is missing)",
                              "the local cluster needs CONFIG_NET_NS; use a real Slurm cluster instead")
        for tool, pkg in TOOLS.items():
            if not _which(tool):
                raise NotFound(f"{tool}: command not found (needed by hpcrun cluster)",
                               f"install the {pkg} package")
        self._auth = _auth_kind()

    def _subnet(self) -> str:
        """A /24 in 10.0.0.0/8 derived from the name, avoiding every subnet in use."""
        used = set()
        cp = proc.run(["ip", "-4", "-o", "addr", "show"], check=False)
        for m in re.finditer(r"inet (\d+)\.(\d+)\.(\d+)\.\d+/", cp.stdout or ""):
            used.add(".".join(m.groups()))
        cp = proc.run(["ip", "-4", "route", "show"], check=False)
        for m in re.finditer(r"^(\d+)\.(\d+)\.(\d+)\.\d+/", cp.stdout or "", re.M):
            used.add(".".join(m.groups()))
        # Other hpcrun clusters may be half set up: reserve theirs too.
        try:
            for other in os.listdir(BASE_DIR):
                if other != self.name:
                    try:
                        with open(os.path.join(BASE_DIR, other, "cluster.json")) as f:
                            used.add(json.load(f)["subnet"])
                    except (OSError, ValueError, KeyError):
                        pass
        except OSError:
            pass
        h = zlib.crc32(self.name.encode())
        for k in range(4096):
            v = (h + k * 2654435761) & 0xFFFFFFFF
            net = f"10.{200 + v % 50}.{(v >> 8) % 256}"
            if net not in used:
                return net
        raise HpcrunError("no free 10.x.y.0/24 subnet for the local cluster",
                          "remove unused network interfaces or routes")

    # ---------- up ----------
    def up(self, nodes: int = 2, replace: bool = False, timeout: float = 60.0,
           cgroup: bool = False) -> bool:
        """Start the cluster and wait until every node is idle.

        cgroup: run Slurm with task/cgroup + proctrack/cgroup (cgroup v1), as production
        clusters do: each node's slurmd gets a cgroup of its own (nested in the caller's)
        and a cgroup namespace rooted there, so jobs get real job cgroups carrying --mem
        and --cpus-per-task without touching the host's hierarchy above ours.
        Returns False (and does nothing) if a healthy cluster of this name is already
        running and replace is false; True when it started one.
        """
        self._cgroup = bool(cgroup)
        if not isinstance(nodes, int) or nodes < 1 or nodes > MAX_NODES:
            raise UsageError(f"bad node count {nodes!r}", f"give a number from 1 to {MAX_NODES}")
        self._preflight()
        if self._cgroup:
            from hpcrun import cgroups  # lazy: only this branch needs it
            missing = cgroups.nest_missing(CLUSTER_CONTROLLERS)
            if missing:
                raise HpcrunError(f"cluster up --cgroup needs the cgroup v1 {missing} "
                                  "controller mounted and writable",
                                  "this mode is for cgroup v1 hosts; see 'hpcrun check'")
        with _lock():
            return self._up(nodes, replace, timeout)

    def _up(self, nodes: int, replace: bool, timeout: float) -> bool:
        st = self._state()
        if st and not replace and self._alive(st):
            return False
        if st or os.path.exists(self.dir) or self._leftovers():
            log.info(f"cluster {self.name}: removing {'the running' if replace and st else 'a stale'} cluster first")
            self._down()
        t0 = time.monotonic()
        try:
            try:
                self._create(nodes)
            except OSError as e:
                raise HpcrunError(f"cannot set up cluster {self.name}: {e.strerror}: {e.filename}",
                                  "the local cluster needs real root (CAP_SYS_ADMIN, CAP_NET_ADMIN) "
                                  "on the host, not root inside a user namespace") from e
            self._wait_idle(nodes, timeout)
        except BaseException:
            log.info(f"cluster {self.name}: start failed, cleaning up (logs were in {self.dir}/log)")
            self._keep_logs()
            self._down()
            raise
        shutil.rmtree(self.failed_logs, ignore_errors=True)  # from an earlier failed start
        log.info(f"cluster {self.name}: {nodes} nodes idle in {time.monotonic() - t0:.2f}s")
        return True

    def _leftovers(self) -> bool:
        return bool(self._netns_names(None)[2:]) or any(
            os.path.exists(f"/run/netns/{ns}") for ns in (self.sw_ns, self.ctl_ns)) or \
            os.path.exists(f"/sys/class/net/{self.host_if}")

    def _keep_logs(self) -> None:
        logdir = os.path.join(self.dir, "log")
        try:
            nonempty = any(os.path.getsize(os.path.join(logdir, f)) for f in os.listdir(logdir))
        except OSError:
            nonempty = False
        if nonempty:
            dst = self.failed_logs
            shutil.rmtree(dst, ignore_errors=True)
            try:
                shutil.copytree(logdir, dst)
                log.info(f"cluster {self.name}: daemon logs copied to {dst}")
            except OSError:
                pass

    def _create(self, n: int) -> None:
        net = self._subnet()
        names = [self.node_name(i) for i in range(1, n + 1)]
        addrs = [f"{net}.{10 + i}" for i in range(1, n + 1)]
        ctl_addr = f"{net}.1"
        host_addr = f"{net}.254"
        mem = max(512, min(4096, _host_mem_mb() // (2 * n)))
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        os.chmod(self.dir, 0o755)
        for sub in ("log", "ctld", "spool", "tmp", "run"):
            os.makedirs(os.path.join(self.dir, sub), mode=0o755, exist_ok=True)
        for nm in names:
            os.makedirs(os.path.join(self.dir, "spool", nm), mode=0o755, exist_ok=True)
            # TmpFS: per node, world-writable with sticky bit like /tmp.
            t = os.path.join(self.dir, "tmp", nm)
            os.makedirs(t, exist_ok=True)
            os.chmod(t, 0o1777)
        auth = self._auth
        launch = []
        if auth == "munge":
            mdir = os.path.join(self.dir, "munge")
            os.makedirs(mdir, mode=0o755, exist_ok=True)
            key = os.path.join(mdir, "munge.key")
            proc.run([_which("mungekey"), "--create", "--force", "--keyfile", key],
                     hint="install the munge package, or set HPCRUN_CLUSTER_AUTH=none")
            os.chmod(key, 0o600)
            launch.append({"what": "munged", "log": os.path.join(self.dir, "log", "start-munged.log"),
                           "argv": [_which("munged"), f"--key-file={key}",
                                    f"--socket={self.munge_socket}", f"--pid-file={mdir}/munged.pid",
                                    f"--log-file={self.dir}/log/munged.log",
                                    f"--seed-file={mdir}/munged.seed", "--num-threads=4"]})
        node_cgroups = {}
        if getattr(self, "_cgroup", False):
            from hpcrun import cgroups  # lazy: only this branch needs it
            for nm in names:
                node_cgroups[nm] = cgroups.nest_create(f"hpcrun-cluster-{nm}", CLUSTER_CONTROLLERS)
        st = {"name": self.name, "subnet": net, "nodes": names, "addrs": addrs,
              "cgroup": bool(node_cgroups), "node_cgroups": node_cgroups,
              "controller": self.ctl_host, "controller_addr": ctl_addr, "host_addr": host_addr,
              # --cgroup: cpusets hold real CPUs, so a node claims no more than exist
              "cpus": min(NODE_CPUS, len(os.sched_getaffinity(0))) if node_cgroups else NODE_CPUS,
              "memory_mb": mem, "conf": self.conf_path, "auth": auth,
              "started": time.time()}
        self._write(self.state_path, json.dumps(st, indent=1) + "\n")
        self._write(self.conf_path, self._slurm_conf(st))
        if node_cgroups:
            self._write(os.path.join(self.dir, "cgroup.conf"), CGROUP_CONF)
        self._write(os.path.join(self.dir, "plugstack.conf"), "")
        hosts = "127.0.0.1 localhost\n" + f"{ctl_addr} {self.ctl_host}\n" + \
            "".join(f"{a} {nm}\n" for a, nm in zip(addrs, names))
        self._write(os.path.join(self.dir, "hosts"), hosts)
        self._network(n, net)
        launch.append(self._launcher(self.ctl_ns, self.ctl_host,
                                     [_which("slurmctld"), "-f", self.conf_path, "-i"]))
        for i, nm in enumerate(names, 1):
            launch.append(self._launcher(self.node_ns(i), nm,
                                         [_which("slurmd"), "-f", self.conf_path, "-N", nm],
                                         node_cgroups.get(nm)))
        self._start_all(launch)

    @staticmethod
    def _write(path: str, text: str) -> None:
        atomic_write(path, text, mode=0o644)  # world-readable: users submit with it

    def _network(self, n: int, net: str) -> None:
        all_ns = [self.sw_ns, self.ctl_ns] + [self.node_ns(i) for i in range(1, n + 1)]
        _ip_batch(None, [f"netns add {ns}" for ns in all_ns],
                  "cannot create network namespaces")
        sw = ["link add br0 type bridge", "link set lo up", "link set br0 up",
              f"link add ctl type veth peer name eth0 netns {self.ctl_ns}",
              "link set ctl master br0", "link set ctl up"]
        for i in range(1, n + 1):
            sw += [f"link add n{i} type veth peer name eth0 netns {self.node_ns(i)}",
                   f"link set n{i} master br0", f"link set n{i} up"]
        _ip_batch(self.sw_ns, sw, "cannot build the cluster's bridge")
        _ip_batch(None, [f"link add {self.host_if} type veth peer name host netns {self.sw_ns}",
                         f"addr add {net}.254/24 dev {self.host_if}",
                         f"link set {self.host_if} up"], "cannot connect the host to the cluster")
        _ip_batch(self.sw_ns, ["link set host master br0", "link set host up"],
                  "cannot connect the host to the cluster")
        for ns, addr in [(self.ctl_ns, f"{net}.1")] + \
                [(self.node_ns(i), f"{net}.{10 + i}") for i in range(1, n + 1)]:
            _ip_batch(ns, ["link set lo up", f"addr add {addr}/24 dev eth0", "link set eth0 up"],
                      f"cannot configure {ns}")

    def _launcher(self, ns: str, hostname: str, argv: list[str], cgroups=None) -> dict:
        """How to start a daemon in netns `ns` with its own uts + mount namespaces.

        The daemon forks into the background itself (no -D); its launcher chain
        (nsenter, unshare and sh exec into one another) then exits. With cgroups
        ({controller: dir}), it first moves into those, then takes a cgroup namespace
        rooted there and mounts the v1 controllers from it over /sys/fs/cgroup/CTL:
        Slurm's /slurm/uid_N/job_N tree then lies inside the node's own cgroup.
        """
        hosts = os.path.join(self.dir, "hosts")
        script = 'set -e; hostname "$1"; mount --bind "$2" /etc/hosts; shift 2; exec "$@"'
        pre = []
        cg = []
        if cgroups:
            script = ('set -e; hostname "$1"; mount --bind "$2" /etc/hosts; shift 2; '
                      # the same superblock can't be mounted on itself (EBUSY): this
                      # namespace's copy of the host's mount goes first (slave: only here)
                      + "".join(f"umount -l /sys/fs/cgroup/{m}; "
                                f"mount -t cgroup -o {c} cgroup /sys/fs/cgroup/{m}; "
                                for c, m in sorted(cgroups["mounts"].items()))
                      + 'exec "$@"')
            move = "".join(f'echo $$ > "{d}/cgroup.procs"; ' for d in cgroups["dirs"].values())
            pre = ["/bin/sh", "-c", f"set -e; {move}exec \"$@\"", "hpcrun-cg"]
            cg = ["--cgroup"]
        full = [_which("nsenter"), f"--net=/run/netns/{ns}", "--", *pre,
                _which("unshare"), "--uts", "--mount", *cg, "--propagation", "slave", "--",
                "/bin/sh", "-c", script, "hpcrun-node", hostname, hosts, *argv]
        log.debug("exec (via hpcrun-reaper): " + " ".join(full))
        return {"what": f"{os.path.basename(argv[0])} on {hostname}", "argv": full,
                "log": os.path.join(self.dir, "log", f"start-{hostname}.log")}

    def _start_all(self, launch: list[dict]) -> None:
        """Start the daemons under one reaper process (see _REAPER)."""
        spec = os.path.join(self.dir, "run", "launch.json")
        # A clean environment: the daemons must not inherit a client's SLURM_CONF etc.
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        self._write(spec, json.dumps({"launch": launch, "env": env}))
        script = os.path.join(self.dir, "run", "hpcrun-reaper.py")
        self._write(script, _REAPER)
        argv = [sys.executable, "-I", script, spec]
        log.debug("exec: " + " ".join(argv))
        with open(os.path.join(self.dir, "log", "reaper.log"), "ab") as errf:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=errf, start_new_session=True, close_fds=True, cwd="/")
        self._reaper = p  # kept so that a long-lived caller (pytest) reaps it
        line = p.stdout.readline().decode(errors="replace").strip()
        p.stdout.close()
        st = self._state() or {}
        st["reaper_pid"] = p.pid
        self._write(self.state_path, json.dumps(st, indent=1) + "\n")
        if line != "OK":
            try:
                fail = json.loads(line)
            except ValueError:
                raise SlurmError("cannot start the cluster's daemons: the reaper process died",
                                 f"see {self.failed_logs}/reaper.log") from None
            why = _last_line(fail["log"]) or f"exit status {fail['rc']}"
            raise SlurmError(f"cannot start {fail['what']}: {why}",
                             f"see the daemon logs in {self.failed_logs}")

    def _slurm_conf(self, st: dict) -> str:
        d = self.dir
        mem = st["memory_mb"]
        lines = [
            "# Written by 'hpcrun cluster up'; removed by 'hpcrun cluster down'.",
            f"ClusterName={self.name}",
            f"SlurmctldHost={st['controller']}({st['controller_addr']})",
            *(["AuthType=auth/munge", "CredType=cred/munge",
               f"AuthInfo=socket={self.munge_socket}"] if st["auth"] == "munge" else
              # Without munge any local user could claim any uid to this cluster.
              ["AuthType=auth/none", "CredType=cred/none"]),
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={d}/ctld",
            f"SlurmdSpoolDir={d}/spool/%n",
            f"SlurmctldPidFile={d}/run/slurmctld.pid",
            f"SlurmdPidFile={d}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={d}/log/slurmctld.log",
            f"SlurmdLogFile={d}/log/slurmd-%n.log",
            f"TmpFS={d}/tmp/%n",
            f"PlugStackConfig={d}/plugstack.conf",
            "SlurmctldParameters=enable_configless",
            # Default: no cgroup or systemd here: track processes through /proc. With
            # --cgroup, Slurm's cgroup v1 plugins, as on production clusters.
            *(["ProctrackType=proctrack/cgroup", "TaskPlugin=task/cgroup"]
              if st.get("cgroup") else
              ["ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none"]),
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            f"DefMemPerCPU={max(64, mem // NODE_CPUS // 4)}",
            # Trust the node lines below rather than the host's real hardware.
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            # A request no node/partition can ever satisfy is refused at submission.
            "EnforcePartLimits=ALL",
            "KillWait=2",
            "UnkillableStepTimeout=30",
            "MinJobAge=600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "MessageTimeout=10",
            "MailProg=/bin/true",
            "SchedulerParameters=sched_interval=1,bf_interval=1",
        ]
        for nm, addr in zip(st["nodes"], st["addrs"]):
            lines.append(f"NodeName={nm} NodeAddr={addr} NodeHostname={nm} "
                         f"CPUs={st['cpus']} Boards=1 SocketsPerBoard=1 CoresPerSocket={st['cpus']} "
                         f"ThreadsPerCore=1 RealMemory={mem} State=UNKNOWN")
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def _sinfo(self) -> dict[str, str]:
        cp = proc.run([_which("sinfo") or "sinfo", "-h", "-N", "-o", "%N %T"],
                      env={**os.environ, **self.env()}, check=False, timeout=20)
        out = {}
        if cp.returncode == 0:
            for line in cp.stdout.splitlines():
                p = line.split()
                if len(p) == 2:
                    out[p[0]] = p[1]
        return out

    def _wait_idle(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        names = [self.node_name(i) for i in range(1, n + 1)]
        delay = 0.05
        last: dict[str, str] = {}
        while True:
            last = self._sinfo()
            if len(last) == n and all(last.get(nm, "").rstrip("*") == "idle" for nm in names):
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{k}={v}" for k, v in sorted(last.items())) or "controller not answering"
                raise SlurmError(f"cluster {self.name}: nodes not idle after {timeout:.0f}s ({states})",
                                 f"see the daemon logs in {self.failed_logs}")
            time.sleep(delay)
            delay = min(0.25, delay * 1.5)

    # ---------- down ----------
    def down(self) -> bool:
        """Stop everything of this cluster. Returns whether anything was there."""
        if os.geteuid() != 0:
            raise HpcrunError("hpcrun cluster down needs root", "run it as root, e.g. 'sudo hpcrun cluster down'")
        with _lock():
            return self._down()

    def _down(self) -> bool:
        st = self._state()
        nss = [ns for ns in self._netns_names(st) if os.path.exists(f"/run/netns/{ns}")]
        found = bool(st) or bool(nss) or os.path.exists(self.dir)
        reaper = int(st["reaper_pid"]) if st and st.get("reaper_pid") else None
        if reaper is not None and _comm(reaper) != "hpcrun-reaper":
            reaper = None  # gone (and its pid possibly reused)
        _kill_all(nss, reaper)
        if reaper is not None:
            _stop_reaper(reaper)
        for ns in nss:
            proc.run(["ip", "netns", "del", ns], check=False)
        if st and st.get("node_cgroups"):
            from hpcrun import cgroups  # lazy: only this branch needs it
            for nc in st["node_cgroups"].values():
                cgroups.nest_remove(nc)
        if os.path.exists(f"/sys/class/net/{self.host_if}"):
            found = True
            proc.run(["ip", "link", "del", self.host_if], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.rmdir(BASE_DIR)  # only when no other cluster is left
        except OSError:
            pass
        return found

    # ---------- status ----------
    def status(self) -> dict[str, Any]:
        st = self._state()
        if not st:
            return {"name": self.name, "running": False, "nodes": {}, "conf": None}
        states = self._sinfo()
        return {
            "name": self.name,
            # Daemons checked directly too: Slurm notices a dead slurmd only after SlurmdTimeout.
            "running": self._alive(st) and set(states) == set(st["nodes"])
            and all(_healthy(s) for s in states.values()),
            "conf": self.conf_path,
            "controller": st["controller"],
            "controller_addr": st["controller_addr"],
            "host_addr": st.get("host_addr"),
            "subnet": st["subnet"] + ".0/24",
            "cpus_per_node": st["cpus"],
            "memory_mb_per_node": st["memory_mb"],
            "auth": st.get("auth", "none"),
            "partition": "debug",
            "nodes": {nm: {"addr": a, "state": states.get(nm, "unreachable")}
                      for nm, a in zip(st["nodes"], st["addrs"])},
        }


# ---------- helpers ----------

# The reaper: one small process per cluster that starts the daemons and is their
# "child subreaper" (prctl(2) PR_SET_CHILD_SUBREAPER). Slurm daemons fork into the
# background and slurmd double-forks every slurmstepd; orphans are re-parented to the
# nearest subreaper instead of PID 1, which in containers often does not reap, so
# without it every finished step would leave a zombie. It exits when its last
# descendant is gone, i.e. after `down`. Self-contained (run with python -I).
# `hpcrun cluster up --cgroup`: the controllers Slurm's cgroup v1 plugins use
# (proctrack/cgroup: freezer; task/cgroup: cpuset for cores, memory for RAM).
CLUSTER_CONTROLLERS = ("memory", "cpuset", "freezer")
CGROUP_CONF = """# Written by 'hpcrun cluster up --cgroup'.
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
"""

_REAPER = r"""
import ctypes, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)                  # PR_SET_CHILD_SUBREAPER
libc.prctl(15, b"hpcrun-reaper", 0, 0, 0)   # PR_SET_NAME: visible in ps
with open(sys.argv[1]) as f:
    spec = json.load(f)
result = "OK"
for item in spec["launch"]:
    with open(item["log"], "ab") as lf:
        try:
            cp = subprocess.run(item["argv"], env=spec["env"], stdin=subprocess.DEVNULL,
                                stdout=lf, stderr=lf, timeout=60)
            rc = cp.returncode
        except Exception as e:
            rc = repr(e)
    if rc != 0:
        result = json.dumps({"what": item["what"], "rc": str(rc), "log": item["log"]})
        break
sys.stdout.write(result + "\n")
sys.stdout.flush()
fd = os.open(os.devnull, os.O_RDWR)
os.dup2(fd, 1)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        pass
"""


def _stop_reaper(pid: int, timeout: float = 5.0) -> None:
    """The reaper exits by itself once the daemons are gone; make sure it did."""
    deadline = time.monotonic() + timeout
    while _comm(pid) == "hpcrun-reaper":
        s = _stat(pid)
        if s is None or s[0] == "Z":
            break
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
        time.sleep(0.02)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _ip_batch(ns: str | None, cmds: list[str], what: str) -> None:
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    try:
        proc.run(argv, input="\n".join(cmds) + "\n", timeout=60)
    except CommandError as e:
        lines = [ln for ln in (e.stderr or "").splitlines()
                 if ln.strip() and not ln.startswith("Command failed")]
        raise HpcrunError(f"{what}: " + (lines[0].strip() if lines else e.what),
                          "the local cluster needs root with CAP_NET_ADMIN and network namespaces "
                          "(not available inside an unprivileged container)") from e


class _lock:
    """Serialize `up`/`down` of all local clusters on this machine (flock on the
    parent of the clusters' directory, which is never removed)."""

    def __enter__(self):
        parent = os.path.dirname(BASE_DIR.rstrip("/")) or "/"
        os.makedirs(parent, mode=0o755, exist_ok=True)
        self.fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock


def _healthy(state: str) -> bool:
    """A sinfo node state (%T) of a node that answers and can run jobs.

    A trailing "*" means "not responding"; "~" powered off, "#" powering up."""
    if state.endswith(("*", "~", "#", "!", "%")):
        return False
    return state.split("+")[0] in ("idle", "mixed", "allocated", "completing", "planned")


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").rstrip("\0").split("\0")
    except OSError:
        return [""]


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return rest[0], int(rest[1])


def _pids_in_netns(names: list[str]) -> list[tuple[int, str]]:
    inodes = {}
    for ns in names:
        ino = _ns_inode(f"/run/netns/{ns}")
        if ino is not None:
            inodes[ino] = ns
    out = []
    if not inodes:
        return out
    for pid in _all_pids():
        ino = _ns_inode(f"/proc/{pid}/ns/net")
        if ino in inodes:
            out.append((pid, inodes[ino]))
    return out


def _targets(names: list[str], reaper: int | None = None) -> set[int]:
    """Live processes in these netns plus all their descendants (containers of a job
    may sit in network namespaces of their own), plus whatever was re-parented to the
    cluster's reaper (processes of a job that daemonized), but not the reaper itself."""
    roots = {pid for pid, _ in _pids_in_netns(names)}
    children: dict[int, list[int]] = {}
    live = set()
    for pid in _all_pids():
        s = _stat(pid)
        if s and s[0] != "Z":
            children.setdefault(s[1], []).append(pid)
            live.add(pid)
    todo = [p for p in roots if p in live]
    if reaper is not None:
        todo += children.get(reaper, [])
    out = set()
    while todo:
        p = todo.pop()
        if p in out or p == os.getpid():
            continue
        out.add(p)
        todo.extend(children.get(p, ()))
    return out


def _kill_all(names: list[str], reaper: int | None = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        pids = _targets(names, reaper)
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Reap any that happen to be our children (e.g. in tests).
        for p in pids:
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        if time.monotonic() > deadline:
            left = ", ".join(f"{p}({_comm(p)})" for p in sorted(pids))
            raise HpcrunError(f"processes of the cluster did not die: {left}",
                              "check for processes stuck in the D state (ps -o pid,stat,comm)")
        time.sleep(0.05)


def clusters() -> list[str]:
    """Names of the clusters that have state on this machine."""
    try:
        return sorted(d for d in os.listdir(BASE_DIR) if os.path.isfile(os.path.join(BASE_DIR, d, "cluster.json")))
    except OSError:
        return []
