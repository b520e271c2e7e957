"""`hpcrun instance start|list|ls|stop` and `hpcrun ps`: long-lived containers.

  hpcrun instance start [--name N] [RUN OPTIONS] IMAGE [CMD...]
  hpcrun instance list | ls [-a] [--format text|json]     (also: hpcrun ps)
  hpcrun instance stop [-t SECS] N... | --all
"""
from __future__ import annotations

import json
import sys
import time

import click

from hpcrun.cli.app import CONTEXT, format_option
from hpcrun.errors import UsageError


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    for unit, n in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= n:
            return f"{s // n} {unit} ago"
    return f"{s} seconds ago"


@click.group(context_settings=CONTEXT)
def instance():
    """Long-lived containers: start one, enter it with 'hpcrun exec', stop it."""


@instance.command(context_settings={"ignore_unknown_options": True,
                                    "allow_interspersed_args": False})
@click.option("--name", help="the instance's name (default: a generated one)")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def start(name, args):
    """Start IMAGE as an instance: [RUN OPTIONS] IMAGE [CMD...] (the options of
    'hpcrun run'). Without CMD (and no ENTRYPOINT) it runs nothing and waits."""
    from hpcrun.cli import run as runcli  # lazy: only this command needs it
    from hpcrun.instance import lifecycle  # lazy: only this command needs it
    args = list(args)
    if not args:
        raise UsageError("instance start: no image given",
                         "usage: hpcrun instance start [--name N] [RUN OPTIONS] IMAGE [CMD...]")
    opts = runcli.parse(args)
    r = lifecycle.start(opts, name)
    sys.stdout.write(r.name + "\n")
    return 0


def _rows(all_: bool) -> list:
    from hpcrun.instance import state  # lazy: only this command needs it
    rows = []
    for r in state.all_records():
        code = r.exit_code()
        if not r.running and not all_:
            continue
        info = r.info()
        rows.append({"name": r.name, "pid": r.pid, "image": info.get("image"),
                     "command": info.get("command") or [], "created": info.get("created", 0),
                     "status": "running" if r.running else "exited", "exit_code": code})
    return rows


def _list(all_, fmt):
    rows = _rows(all_)
    if fmt == "json":
        sys.stdout.write(json.dumps(rows) + "\n")
        return 0
    out = [("NAME", "PID", "IMAGE", "COMMAND", "CREATED", "STATUS")]
    for x in rows:
        cmd = " ".join(x["command"]) or "(none)"
        cmd = '"' + (cmd if len(cmd) <= 20 else cmd[:19] + "…") + '"'
        status = "Up" if x["status"] == "running" else f"Exited ({x['exit_code']})"
        out.append((x["name"], str(x["pid"] or "-"), str(x["image"]), cmd,
                    _ago(x["created"]), status))
    w = [max(len(r[i]) for r in out) for i in range(6)]
    for r in out:
        sys.stdout.write("   ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() + "\n")
    return 0


@instance.command("list")
@click.option("-a", "--all", "all_", is_flag=True, help="also exited instances")
@format_option()
def list_(all_, out):
    """List your instances (of this Slurm job, inside one)."""
    return _list(all_, out)


instance.add_command(list_, "ls")


@instance.command()
@click.option("-t", "--time", "timeout", type=float, default=10.0, show_default=True,
              help="seconds to wait after the stop signal before SIGKILL")
@click.option("--all", "all_", is_flag=True, help="stop every instance")
@click.argument("names", nargs=-1)
def stop(timeout, all_, names):
    """Stop instances: the stop signal, SIGKILL after -t seconds; the record goes."""
    from hpcrun.instance import lifecycle, state  # lazy: only this command needs it
    if all_ == bool(names):
        raise UsageError("instance stop: give instance names or --all, not both or neither",
                         "hpcrun instance stop NAME  or  hpcrun instance stop --all")
    if all_:
        names = [r.name for r in state.all_records()]
    for n in names:
        lifecycle.stop(n, timeout)
        sys.stdout.write(n + "\n")
    return 0


@click.command("ps", context_settings=CONTEXT)
@click.option("-a", "--all", "all_", is_flag=True, help="also exited instances")
@format_option()
def ps(all_, out):
    """List your running instances (Docker's 'ps')."""
    return _list(all_, out)


COMMANDS = {"instance": instance, "ps": ps}
