"""`hpcrun cluster up [N] | down | status | env`: the local multi-node Slurm cluster."""
from __future__ import annotations

import argparse
import json
import sys

from hpcrun.errors import UsageError

USAGE = """usage: hpcrun cluster up [N] [--name NAME] [--replace] [--cgroup]
       hpcrun cluster down [--name NAME]
       hpcrun cluster status [--name NAME] [--format text|json]
       hpcrun cluster env [--name NAME]

A real Slurm cluster on this machine: N nodes (default 2), each a network namespace
with its own address and hostname running slurmd, plus a controller. 'up' and 'down'
need root; users then submit as themselves:

  sudo hpcrun cluster up 4
  eval "$(hpcrun cluster env)"
  srun -N4 hostname
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one-line error + hint, exit 2, through the dispatcher
        raise UsageError(f"cluster: {message}", "see 'hpcrun cluster --help'")


def _parser(sub: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"hpcrun cluster {sub}", add_help=True)
    p.add_argument("--name", default="hpcrun", help="cluster name (default hpcrun)")
    if sub == "up":
        p.add_argument("nodes", nargs="?", default="2", help="number of nodes (default 2)")
        p.add_argument("--replace", action="store_true", help="tear down a running cluster first")
        p.add_argument("--cgroup", action="store_true",
                       help="Slurm with task/cgroup + proctrack/cgroup (cgroup v1): real job cgroups")
    if sub == "status":
        p.add_argument("--format", choices=("text", "json"), default="text")
    return p


def main(verb: str, argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(USAGE)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    sub, rest = argv[0], argv[1:]
    if sub not in ("up", "down", "status", "env"):
        import difflib
        m = difflib.get_close_matches(sub, ["up", "down", "status", "env"], n=1)
        raise UsageError(f"unknown cluster command {sub!r}",
                         f"did you mean 'hpcrun cluster {m[0]}'?" if m else "use up, down, status or env")
    args = _parser(sub).parse_args(rest)
    from hpcrun.slurm.cluster import LocalCluster
    c = LocalCluster(args.name)
    if sub == "up":
        try:
            n = int(args.nodes)
        except ValueError:
            raise UsageError(f"bad node count {args.nodes!r}", "give a number, e.g. 'hpcrun cluster up 4'")
        started = c.up(n, replace=args.replace, cgroup=args.cgroup)
        st = c.status()
        nodes = list(st["nodes"])
        if started:
            sys.stderr.write(f"hpcrun: cluster {c.name} is up: {len(nodes)} nodes idle "
                             f"({_span(nodes)}), controller {st['controller']}\n")
        else:
            sys.stderr.write(f"hpcrun: cluster {c.name} is already running with {len(nodes)} nodes "
                             f"({_span(nodes)}); left as it is\n"
                             f"hint: 'hpcrun cluster up {n} --replace"
                             f"{'' if c.name == 'hpcrun' else ' --name ' + c.name}' starts a fresh one\n")
        sys.stdout.write(f"export SLURM_CONF={c.conf_path}\n")
        return 0
    if sub == "down":
        found = c.down()
        sys.stderr.write(f"hpcrun: cluster {c.name} {'removed' if found else 'was not running'}\n")
        return 0
    if sub == "env":
        if c.status()["conf"] is None:
            from hpcrun.errors import NotFound
            raise NotFound(f"no local cluster named {c.name!r}",
                           f"start one with 'sudo hpcrun cluster up{'' if c.name == 'hpcrun' else ' --name ' + c.name}'")
        for k, v in sorted(c.env().items()):
            sys.stdout.write(f"export {k}={v}\n")
        return 0
    st = c.status()
    if args.format == "json":
        sys.stdout.write(json.dumps(st, indent=2, sort_keys=True) + "\n")
        return 0 if st["running"] else 1
    if st["conf"] is None:
        sys.stdout.write(f"cluster {c.name}: not running\n")
        return 1
    sys.stdout.write(f"cluster {c.name}: {'running' if st['running'] else 'NOT healthy'}\n"
                     f"conf:       {st['conf']}\n"
                     f"controller: {st['controller']} ({st['controller_addr']})\n"
                     f"partition:  {st['partition']} ({st['cpus_per_node']} CPUs, "
                     f"{st['memory_mb_per_node']} MB per node)\n")
    for nm, info in st["nodes"].items():
        sys.stdout.write(f"  {nm:<16} {info['addr']:<16} {info['state']}\n")
    return 0 if st["running"] else 1


def _span(nodes: list[str]) -> str:
    if len(nodes) <= 2:
        return ", ".join(nodes)
    return f"{nodes[0]} .. {nodes[-1]}"
