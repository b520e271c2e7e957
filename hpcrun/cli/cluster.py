"""`hpcrun cluster up [N] | down | status | env`: the local multi-node Slurm cluster.

Thin click commands over hpcrun.slurm.cluster (imported inside them, see hpcrun.cli.app).
"""
from __future__ import annotations

import json
import sys

import click

from hpcrun.cli.app import format_option
from hpcrun.errors import NotFound, UsageError

HELP = """Run a local multi-node Slurm cluster.

A real Slurm cluster on this machine: N nodes (default 2), each a network
namespace with its own address and hostname running slurmd, plus a controller. 'up' and
'down' need root; users then submit as themselves:

\b
  sudo hpcrun cluster up 4
  eval "$(hpcrun cluster env)"
  srun -N4 hostname
"""

_name = click.option("--name", default="hpcrun", show_default=True, help="cluster name")


def _cluster(name: str):
    from hpcrun.slurm.cluster import LocalCluster
    return LocalCluster(name)


def _named(c) -> str:
    return "" if c.name == "hpcrun" else " --name " + c.name


@click.group("cluster", help=HELP, no_args_is_help=True)
def cluster():
    pass


@cluster.command("help", hidden=True)
@click.pass_context
def help_(ctx: click.Context) -> int:
    """(`hpcrun cluster help`, as before click: the group's help.)"""
    sys.stdout.write(ctx.parent.get_help() + "\n")
    return 0


@cluster.command("up", help="Start the cluster (as root). N nodes, default 2; prints "
                 "'export SLURM_CONF=...'.")
@click.argument("nodes", metavar="[N]", default="2")
@_name
@click.option("--replace", is_flag=True, help="tear down a running cluster first")
@click.option("--cgroup", is_flag=True,
              help="Slurm with task/cgroup + proctrack/cgroup (cgroup v1): real job cgroups")
def up(nodes: str, name: str, replace: bool, cgroup: bool) -> int:
    try:
        n = int(nodes)
    except ValueError:
        raise UsageError(f"bad node count {nodes!r}",
                         "give a number, e.g. 'hpcrun cluster up 4'") from None
    c = _cluster(name)
    started = c.up(n, replace=replace, cgroup=cgroup)
    st = c.status()
    names = list(st["nodes"])
    if started:
        sys.stderr.write(f"hpcrun: cluster {c.name} is up: {len(names)} nodes idle "
                         f"({_span(names)}), controller {st['controller']}\n")
    else:
        sys.stderr.write(f"hpcrun: cluster {c.name} is already running with {len(names)} "
                         f"nodes ({_span(names)}); left as it is\n"
                         f"hint: 'hpcrun cluster up {n} --replace{_named(c)}' starts a "
                         "fresh one\n")
    sys.stdout.write(f"export SLURM_CONF={c.conf_path}\n")
    return 0


@cluster.command("down", help="Stop the cluster and remove its state (as root).")
@_name
def down(name: str) -> int:
    c = _cluster(name)
    found = c.down()
    sys.stderr.write(f"hpcrun: cluster {c.name} {'removed' if found else 'was not running'}\n")
    return 0


@cluster.command("env", help="Print the environment for Slurm commands. Use it as "
                 "eval \"$(hpcrun cluster env)\".")
@_name
def env(name: str) -> int:
    c = _cluster(name)
    if c.status()["conf"] is None:
        raise NotFound(f"no local cluster named {c.name!r}",
                       f"start one with 'sudo hpcrun cluster up{_named(c)}'")
    for k, v in sorted(c.env().items()):
        sys.stdout.write(f"export {k}={v}\n")
    return 0


@cluster.command("status", help="Show the controller and the nodes. Exit status 1 when "
                 "the cluster is not running or not healthy.")
@_name
@format_option("text", "json")
def status(name: str, out: str) -> int:
    c = _cluster(name)
    st = c.status()
    if out == "json":
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


def _span(nodes: list) -> str:
    if len(nodes) <= 2:
        return ", ".join(nodes)
    return f"{nodes[0]} .. {nodes[-1]}"


COMMANDS = {"cluster": cluster}
