"""Job verbs: submit, render, jobs, status, cancel, logs, wait, schema.

Thin: parse flags, call hpcrun.slurm.jobs / render / jobfile, print results on stdout
(ids, scripts, tables, JSON) and nothing else there.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List

from hpcrun.errors import UsageError

HELP = {
    "submit": "Submit a job file: one Slurm job per step, dependencies first; prints the "
              "job ids, one per line.",
    "render": "Print the sbatch script(s) a job file would submit.",
    "jobs": "List your jobs that Slurm knows (pending, running and recently finished).",
    "status": "State, exit code and nodes of jobs.",
    "cancel": "Cancel jobs (every task of an array id).",
    "logs": "Print a job's output file (its separate error file goes to stderr).",
    "wait": "Wait until jobs finish; exit with the job's status (0 when every job "
            "COMPLETED, its exit code when it failed, 124 TIMEOUT, 143 CANCELLED, "
            "128+N killed by signal N, 125 when hpcrun cannot tell).",
    "schema": "Print the job file's JSON Schema (for editors and validators).",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line + hint, through the dispatcher
        raise UsageError(f"{self.prog}: {message}", f"see '{self.prog} --help'")


def _parser(verb: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"hpcrun {verb}", description=HELP[verb])
    if verb in ("submit", "render"):
        p.add_argument("file", metavar="FILE", help="YAML job file")
    if verb == "submit":
        p.add_argument("--dry-run", action="store_true",
                       help="check and render, print the sbatch commands and scripts, "
                            "submit nothing")
        p.add_argument("--format", choices=("text", "json"), default="text")
    if verb == "render":
        p.add_argument("--step", metavar="NAME", help="only this step's script")
    if verb in ("status", "cancel", "logs", "wait"):
        p.add_argument("ids", metavar="ID", nargs="+", help="job id (123, or 123_4 for "
                       "one array task)")
    if verb in ("status", "jobs"):
        p.add_argument("--format", choices=("table", "json"), default="table")
    if verb == "jobs":
        p.add_argument("-a", "--all-users", action="store_true",
                       help="every user's jobs, not only yours")
    if verb == "logs":
        p.add_argument("-f", "--follow", action="store_true",
                       help="keep printing new output until the job ends")
    if verb == "wait":
        p.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="give up after this long (exit 125)")
    return p


def main(verb: str, argv: List[str]) -> int:
    a = _parser(verb).parse_args(argv)
    out = sys.stdout
    if verb == "schema":
        from hpcrun.slurm.jobfile import schema_text
        out.write(schema_text())
        return 0
    if verb == "render":
        from hpcrun.slurm import jobfile, render
        job = jobfile.load(a.file)
        steps = [job.step(a.step)] if a.step else list(job.steps)
        exe = render.hpcrun_exe()
        for i, s in enumerate(steps):
            if len(steps) > 1:
                out.write(("\n" if i else "") + f"# ==> step {s.name} <==\n")
            out.write(render.render(s, exe, job.path))
        return 0
    if verb == "submit":
        from hpcrun.slurm import jobfile, jobs
        job = jobfile.load(a.file)
        done, scripts = jobs.submit(job, dry_run=a.dry_run)
        if a.dry_run:
            for i, d in enumerate(done):
                head = f"step {d.step}" if d.step else f"job {job.name}"
                out.write(("\n" if i else "") + f"# ==> {head}: {' '.join(d.argv)} <==\n")
                out.write(scripts[d.step])
            return 0
        if a.format == "json":
            out.write(json.dumps([{"step": d.step, "job_id": d.job_id} for d in done])
                      + "\n")
        else:
            for d in done:
                out.write(d.job_id + "\n")
        return 0
    from hpcrun.slurm import jobs
    if verb == "jobs":
        infos = jobs.user_jobs(all_users=a.all_users)
        _show(infos, a.format)
        return 0
    if verb == "status":
        _show(jobs.lookup(a.ids), a.format)
        return 0
    if verb == "cancel":
        jobs.cancel(a.ids)
        return 0
    if verb == "logs":
        return jobs.logs(a.ids, follow=a.follow)
    if verb == "wait":
        from hpcrun.errors import HpcrunError
        try:
            infos = jobs.wait(a.ids, timeout=a.timeout)
        except HpcrunError as e:
            e.code = jobs.WAIT_FAILED
            raise
        for j in infos:
            out.write(f"{j.id} {j.state} {jobs.fmt_exit(j)}\n")
        for j in infos:
            if j.state != "COMPLETED":
                return jobs.exit_status(j)
        return 0
    raise UsageError(f"unknown job verb {verb!r}")


def _show(infos, fmt: str) -> None:
    from hpcrun.slurm import jobs
    if fmt == "json":
        sys.stdout.write(json.dumps([j.as_dict() for j in infos], indent=1) + "\n")
    else:
        sys.stdout.write(jobs.table(infos))
