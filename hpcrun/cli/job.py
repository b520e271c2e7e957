"""Job verbs: submit, render, jobs, status, cancel, logs, wait, schema.

Thin click commands: parse flags, call hpcrun.slurm.jobs / render / jobfile, print
results on stdout (ids, scripts, tables, JSON) and nothing else there. Library modules
are imported inside the commands (see hpcrun.cli.app).
"""
from __future__ import annotations

import json
import sys

import click

from hpcrun.cli.app import format_option
from hpcrun.errors import HpcrunError

_IDS_HELP = "ID: a job id (123, or 123_4 for one array task)"


def _complete_job(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Your jobs' ids, with their names and states (for ID arguments)."""
    try:
        from hpcrun.slurm import jobs
        infos = jobs.user_jobs(all_users=False)
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [click.shell_completion.CompletionItem(j.id, help=f"{j.name} {j.state}")
            for j in infos if j.id.startswith(incomplete)]


def _ids():
    return click.argument("ids", metavar="ID...", nargs=-1, required=True,
                          shell_complete=_complete_job)


def _job_file():
    return click.argument("file", metavar="FILE", type=click.Path(dir_okay=False))


@click.command("submit", help="Submit a job file. One Slurm job per step, dependencies "
               "first; prints the job ids, one per line.")
@_job_file()
@click.option("--dry-run", is_flag=True, help="check and render, print the sbatch "
              "commands and scripts, submit nothing")
@format_option("text", "json", help="json: [{step, job_id}, ...]")
def submit(file: str, dry_run: bool, out: str) -> int:
    from hpcrun.slurm import jobfile, jobs
    job = jobfile.load(file)
    done, scripts = jobs.submit(job, dry_run=dry_run)
    w = sys.stdout.write
    if dry_run:
        for i, d in enumerate(done):
            head = f"step {d.step}" if d.step else f"job {job.name}"
            w(("\n" if i else "") + f"# ==> {head}: {' '.join(d.argv)} <==\n")
            w(scripts[d.step])
        return 0
    if out == "json":
        w(json.dumps([{"step": d.step, "job_id": d.job_id} for d in done]) + "\n")
    else:
        for d in done:
            w(d.job_id + "\n")
    return 0


@click.command("render", help="Print the sbatch script(s) a job file would submit.")
@_job_file()
@click.option("--step", metavar="NAME", help="only this step's script")
def render(file: str, step: str | None) -> int:
    from hpcrun.slurm import jobfile, render as rnd
    job = jobfile.load(file)
    steps = [job.step(step)] if step else list(job.steps)
    exe = rnd.hpcrun_exe()
    for i, s in enumerate(steps):
        if len(steps) > 1:
            sys.stdout.write(("\n" if i else "") + f"# ==> step {s.name} <==\n")
        sys.stdout.write(rnd.render(s, exe, job.path))
    return 0


@click.command("jobs", help="List your Slurm jobs. Pending, running and recently "
               "finished ones, as Slurm knows them.")
@click.option("-a", "--all-users", is_flag=True, help="every user's jobs, not only yours")
@format_option("table", "json")
def jobs_(all_users: bool, out: str) -> int:
    from hpcrun.slurm import jobs
    _show(jobs.user_jobs(all_users=all_users), out)
    return 0


@click.command("status", help="State, exit code and nodes of jobs. " + _IDS_HELP)
@_ids()
@format_option("table", "json")
def status(ids: tuple[str, ...], out: str) -> int:
    from hpcrun.slurm import jobs
    _show(jobs.lookup(list(ids)), out)
    return 0


@click.command("cancel", help="Cancel jobs (every task of an array id). " + _IDS_HELP)
@_ids()
def cancel(ids: tuple[str, ...]) -> int:
    from hpcrun.slurm import jobs
    jobs.cancel(list(ids))
    return 0


@click.command("logs", help="Print a job's output file. A separate error file goes "
               "to stderr. " + _IDS_HELP)
@_ids()
@click.option("-f", "--follow", is_flag=True,
              help="keep printing new output until the job ends")
def logs(ids: tuple[str, ...], follow: bool) -> int:
    from hpcrun.slurm import jobs
    return jobs.logs(list(ids), follow=follow)


@click.command("wait", help="Wait until jobs finish. Exits with the job's status (0 when "
               "every job COMPLETED, its exit code when it failed, 124 TIMEOUT, 143 "
               "CANCELLED, 128+N killed by signal N, 125 when hpcrun cannot tell). "
               + _IDS_HELP)
@_ids()
@click.option("--timeout", type=float, metavar="SECONDS",
              help="give up after this long (exit 125)")
@format_option("text", "json", help="json: the finished jobs, as 'status --format json'")
def wait(ids: tuple[str, ...], timeout: float | None, out: str) -> int:
    from hpcrun.slurm import jobs
    try:
        infos = jobs.wait(list(ids), timeout=timeout)
    except HpcrunError as e:
        e.code = jobs.WAIT_FAILED
        raise
    if out == "json":
        _show(infos, "json")
    else:
        for j in infos:
            sys.stdout.write(f"{j.id} {j.state} {jobs.fmt_exit(j)}\n")
    for j in infos:
        if j.state != "COMPLETED":
            return jobs.exit_status(j)
    return 0


@click.command("schema", help="Print the job file's JSON Schema (for editors and "
               "validators).")
def schema() -> int:
    from hpcrun.slurm.jobfile import schema_text
    sys.stdout.write(schema_text())
    return 0


def _show(infos, fmt: str) -> None:
    from hpcrun.slurm import jobs
    if fmt == "json":
        sys.stdout.write(json.dumps([j.as_dict() for j in infos], indent=1) + "\n")
    else:
        sys.stdout.write(jobs.table(infos))


COMMANDS = {c.name: c for c in (submit, render, jobs_, status, cancel, logs, wait, schema)}
