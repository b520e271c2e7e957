"""Observing and steering instances with Docker's spellings: top, stats, logs, kill,
pause, unpause, wait, diff, cp, commit (click commands, COMMANDS for the registry).

`logs` and `wait` are also Slurm job verbs (hpcrun.cli.job): an argument that names one
of your instances means the instance, anything else goes on to the job verb.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import click

from hpcrun.cli.app import CONTEXT as CTX
from hpcrun.cli.app import Choice
from hpcrun.errors import UsageError


def _get(name):
    from hpcrun.instance import state  # lazy: only this command needs it
    return state.get_running(name)


def _table(rows) -> None:
    w = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("   ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip() + "\n")


@click.command(context_settings=CTX)
@click.argument("name")
def top(name):
    """The processes of instance NAME: host PID and PPID, and CPID, the pid inside."""
    from hpcrun.instance import observe  # lazy: only this command needs it
    r = _get(name)
    rows = [("UID", "PID", "PPID", "CPID", "STIME", "TIME", "CMD")]
    for p in observe.processes(r):
        t = p["time"]
        rows.append((p["uid"], p["pid"], p["ppid"], p["cpid"],
                     time.strftime("%H:%M", time.localtime(p["stime"])),
                     f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}", p["cmd"]))
    _table(rows)


@click.command(context_settings=CTX)
@click.option("--no-stream", is_flag=True, help="print one sample and exit")
@click.option("--format", "fmt", type=Choice(["table", "json"]), default="table",
              show_default=True, help="json: one object per line, Docker's keys")
@click.argument("names", nargs=-1, required=True)
def stats(no_stream, fmt, names):
    """CPU, memory and process count of instances, from /proc (CPU % of one core)."""
    from hpcrun.instance import observe  # lazy: only this command needs it
    recs = [_get(n) for n in names]
    first = True
    while True:
        samples = [observe.stats(r) for r in recs]
        if fmt == "json":
            for s in samples:
                sys.stdout.write(json.dumps({
                    "Name": s["name"], "CPUPerc": f"{s['cpu_percent']:.2f}%",
                    "MemUsage": f"{observe.human(s['mem_bytes'])} / {observe.human(s['mem_limit'])}",
                    "MemPerc": f"{s['mem_percent']:.2f}%", "PIDs": str(s["pids"]),
                    "MemBytes": s["mem_bytes"], "CPU": s["cpu_percent"],
                    "Limits": s["limits"]}) + "\n")
        else:
            if not first and sys.stdout.isatty():
                sys.stdout.write("\033[2J\033[H")
            rows = [("NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS")]
            for s in samples:
                rows.append((s["name"], f"{s['cpu_percent']:.2f}%",
                             f"{observe.human(s['mem_bytes'])} / {observe.human(s['mem_limit'])}",
                             f"{s['mem_percent']:.2f}%", s["pids"]))
            _table(rows)
        sys.stdout.flush()
        first = False
        if no_stream:
            return 0


@click.command("logs", context_settings=CTX)
@click.option("-f", "--follow", is_flag=True, help="keep printing until the instance ends")
@click.option("-t", "--timestamps", is_flag=True, help="prefix each line with its time")
@click.option("-n", "--tail", default="all", help="only the last N lines")
@click.argument("name")
def logs(follow, timestamps, tail, name):
    """The output of instance NAME's command (stdout to stdout, stderr to stderr)."""
    from hpcrun.instance import observe, state  # lazy: only this command needs it
    state.check_name(name)
    r = state.lookup(name)
    if r is None:
        raise state.NotFound(f"no such instance: {name}", "see 'hpcrun ps -a'")
    if tail != "all" and not tail.isdigit():
        raise UsageError(f"--tail {tail!r} is not a number", "e.g. --tail 20")
    off, lines = observe.log_lines(r)
    if tail != "all":
        lines = lines[-int(tail):] if int(tail) else []

    def emit(lines):
        for t, stream, text in lines:
            f = sys.stdout.buffer if stream == 1 else sys.stderr.buffer
            if timestamps:
                f.write(observe.rfc3339(t).encode() + b" ")
            f.write(text + b"\n")
            f.flush()
    emit(lines)
    while follow:
        alive = state.lookup(name)
        time.sleep(0.1)
        off, lines = observe.log_lines(r, off)
        emit(lines)
        if alive is None or not alive.running:
            break


SIGNAMES = {s.name[3:]: s.value for s in signal.Signals if not s.name.startswith("SIG_")}


@click.command(context_settings=CTX)
@click.option("-s", "--signal", "sig", default="KILL", show_default=True,
              help="signal name or number")
@click.argument("names", nargs=-1, required=True)
def kill(sig, names):
    """Send a signal to instances' commands (SIGKILL by default, as Docker)."""
    from hpcrun.instance import observe  # lazy: only this command needs it
    s = sig.upper()
    s = s[3:] if s.startswith("SIG") else s
    num = int(s) if s.isdigit() else SIGNAMES.get(s)
    if num is None:
        raise UsageError(f"unknown signal {sig!r}", "e.g. -s TERM, -s HUP, -s 9")
    for n in names:
        observe.kill(_get(n), num)
        sys.stdout.write(n + "\n")


def _pause(on):
    @click.command("pause" if on else "unpause", context_settings=CTX)
    @click.argument("names", nargs=-1, required=True)
    def cmd(names):
        from hpcrun.instance import observe  # lazy: only this command needs it
        for n in names:
            observe.pause(_get(n), on)
            sys.stdout.write(n + "\n")
    cmd.help = ("Stop (SIGSTOP) every process of instances; no freezer cgroup is used."
                if on else "Continue (SIGCONT) the processes of paused instances.")
    return cmd


@click.command("wait", context_settings=CTX)
@click.argument("names", nargs=-1, required=True)
def wait(names):
    """Wait for instances to end; print each one's exit code."""
    from hpcrun.instance import lifecycle, state  # lazy: only this command needs it
    for n in names:
        state.check_name(n)
        r = state.lookup(n)
        if r is None:
            raise state.NotFound(f"no such instance: {n}", "see 'hpcrun ps -a'")
        if r.running:
            lifecycle.wait_gone(r, None)
        code = r.exit_code()
        if code is None:
            raise state.InstanceError(f"instance {n} ended without an exit code "
                                      "(its supervisor was killed)", "see 'hpcrun logs " + n + "'")
        sys.stdout.write(f"{code}\n")


@click.command(context_settings=CTX)
@click.argument("name")
def diff(name):
    """Changes in a --writable-tmpfs instance against its image: A added, C changed,
    D deleted."""
    from hpcrun.instance import observe  # lazy: only this command needs it
    for kind, path in observe.diff(_get(name)):
        sys.stdout.write(f"{kind} {path}\n")


@click.command(context_settings=CTX)
@click.argument("src")
@click.argument("dst")
def cp(src, dst):
    """Copy files between an instance and the host: NAME:PATH HOSTPATH, or back."""
    from hpcrun.instance import observe  # lazy: only this command needs it
    observe.cp(src, dst)


@click.command(context_settings=CTX)
@click.argument("name")
@click.argument("image")
def commit(name, image):
    """Make a --writable-tmpfs instance's changes a new image NAME[:TAG] in the store."""
    from hpcrun.instance import commit as c  # lazy: only this command needs it
    sys.stdout.write(c.commit(_get(name), image) + "\n")


def _names_an_instance(argv) -> bool:
    """Do the arguments (less options and --tail's value) all name your instances?"""
    from hpcrun.instance import state  # lazy: only this command needs it
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("-n", "--tail"):
            skip = True
        elif not a.startswith("-"):
            args.append(a)
    if not args or not all(set(a) <= state.NAME_CHARS for a in args):
        return False
    try:
        return all(state.lookup(a) is not None for a in args)
    except Exception:   # an unusable state directory: not an instance, the job verb says
        return False


class _Either(click.Command):
    """`logs`/`wait`: the instance command when the arguments name your instances, else
    the Slurm job command (hpcrun.cli.job), whose options and help it shows."""

    def __init__(self, verb: str, inst_cmd: click.Command):
        from hpcrun.cli import job  # lazy: only this command needs it
        self.inst_cmd, self.job_cmd = inst_cmd, job.COMMANDS[verb]
        super().__init__(verb, params=list(self.job_cmd.params),
                         help=f"{self.job_cmd.help} For an instance NAME: "
                              f"{(inst_cmd.help or '').strip()} (see 'hpcrun {verb} NAME "
                              "--help').",
                         short_help=self.job_cmd.short_help,
                         context_settings=self.job_cmd.context_settings)

    def make_context(self, info_name, args, parent=None, **extra):
        cmd = self.inst_cmd if _names_an_instance(args) else self.job_cmd
        return cmd.make_context(info_name, args, parent=parent, **extra)


COMMANDS = {"top": top, "stats": stats, "logs": _Either("logs", logs), "kill": kill,
            "pause": _pause(True), "unpause": _pause(False), "wait": _Either("wait", wait),
            "diff": diff, "cp": cp, "commit": commit}
