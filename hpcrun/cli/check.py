"""`hpcrun check [--format text|json]`: what this host lets an unprivileged user do,
and what to ask the admin for when something is missing.

Each kernel probe runs in a forked child through the C core (hpcrun_probe), so the
answers are the same steps `hpcrun run` takes, not guesses from config files.
Exit status: 0 when containers can run here (user namespaces work), 1 otherwise.
"""
from __future__ import annotations

import json
import os
import sys

import click

from hpcrun.cli.app import format_option


def _read(path: str):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _which(name: str):
    from shutil import which  # lazy: only this command needs it
    return which(name)


def _userns(results):
    from hpcrun import _core  # lazy: only this command needs it
    maxns = _read("/proc/sys/user/max_user_namespaces")
    ok, why = _core.probe("userns")
    detail = f"max_user_namespaces={maxns}" if maxns is not None else ""
    ask = None
    if not ok:
        ask = ("enable unprivileged user namespaces: sysctl user.max_user_namespaces=15000"
               + (" (it is 0 now)" if maxns == "0" else "")
               + "; on Debian/Ubuntu also kernel.unprivileged_userns_clone=1"
               + " or an AppArmor profile allowing userns")
        detail = why
    results.append(("user namespaces", ok, detail, ask, True))
    return ok


def _kernel(results, userns_ok):
    from hpcrun import _core  # lazy: only this command needs it
    rows = (
        ("mount namespace + tmpfs", "mount", True,
         "allow mounts in user namespaces (a kernel >= 3.8 with user namespaces)"),
        ("overlayfs in user namespace", "overlay", True,
         "a kernel >= 5.11 (overlayfs in user namespaces); needed for missing mount points "
         "and --writable-tmpfs"),
        ("pid namespace + /proc", "pid", False, "needed for --pid=private"),
        ("network namespace", "net", False, "needed for --network none"),
    )
    for label, what, essential, ask in rows:
        if not userns_ok:
            results.append((label, False, "needs user namespaces", None, essential))
            continue
        ok, why = _core.probe(what)
        results.append((label, ok, "" if ok else why, None if ok else ask, essential))


def _fuse(results, userns_ok):
    from hpcrun import _core  # lazy: only this command needs it
    sqf = _which("squashfuse_ll") or _which("squashfuse")
    access = os.access("/dev/fuse", os.R_OK | os.W_OK)
    if not os.path.exists("/dev/fuse"):
        ok, detail = False, "/dev/fuse does not exist"
    elif not access:
        ok, detail = False, "/dev/fuse is not readable and writable by you"
    elif not userns_ok:
        ok, detail = False, "needs user namespaces"
    else:
        ok, detail = _core.probe("fuse")
    results.append(("FUSE in user namespace", ok, detail if not ok else "/dev/fuse",
                    None if ok else "let users open /dev/fuse (mode 0666, the default of the "
                    "fuse package); until then use 'hpcrun run --unpack' for squashfs images",
                    False))
    results.append(("squashfuse", bool(sqf), sqf or "not found",
                    None if sqf else "install squashfuse (with libfuse3 >= 3.3)", False))
    uns = _which("unsquashfs")
    results.append(("unsquashfs (--unpack)", bool(uns), uns or "not found",
                    None if uns else "install squashfs-tools", False))


def _builds(results, userns_ok):
    """Whether `hpcrun build` can make RUN roots overlays (userxattr overlayfs on the
    build cache's file system), the same probe a build asks at its first RUN."""
    label = "overlay builds (RUN roots)"
    if not userns_ok:
        results.append((label, False, "needs user namespaces", None, False))
        return
    from hpcrun.build.cache import NO_OVERLAY, Cache  # lazy: only this command needs it
    from hpcrun.errors import HpcrunError  # lazy: only this command needs it
    from hpcrun.image.store import Store  # lazy: only this command needs it
    try:
        with Store() as store:
            c = Cache(store.root)
            try:
                ok, why = c.overlay_roots()
            finally:
                c.close()
    except (HpcrunError, OSError) as e:
        ok, why = False, str(e)
    results.append((label, ok, "overlayfs with userxattr on the build cache" if ok else
                    f"{why}; RUN roots will be copies (slower builds)",
                    None if ok or why == NO_OVERLAY else "a kernel >= 5.11 and a local "
                    "file system with user extended attributes (ext4, xfs, tmpfs >= 6.6) "
                    "for the image store",
                    False))


def _cgroups(results):
    # The logic lives in hpcrun/cgroups.py (describe): which limit tiers work here.
    from hpcrun import cgroups
    d = cgroups.describe()
    best = d["tiers"][0]
    real = best["tier"] != "no cgroup"
    results.append(("cgroup delegation", real, f"{best['tier']}: {best['where']}" if real else
                    "no cgroup you may write", d["ask"], False))
    results.append(("resource limits", True, "; ".join(
        f"{t['tier']} ({', '.join(t['controllers'])})" for t in d["tiers"]), None, False))


def _slurm_line() -> str:
    # One source of truth for which Slurm backend is used: the Slurm package's own.
    from hpcrun.slurm.backend import describe
    return describe()


def _task_line() -> str:
    """How Slurm tasks start: the C front end (no Python per task) or Python."""
    from hpcrun.slurm.stepplan import task_program  # lazy: only this command needs it
    prog = task_program()
    if prog:
        return f"slurm tasks: C front end {prog} (no Python per task)"
    return ("slurm tasks: hpcrun task (Python in every task): the C front end is not "
            "built for this platform")


def collect() -> list:
    results: list = []
    ok = _userns(results)
    _kernel(results, ok)
    _fuse(results, ok)
    _builds(results, ok)
    _cgroups(results)
    return results


@click.command("check", help="Check what this host lets you do without root. User, mount, "
               "pid and network namespaces, FUSE, cgroups, Slurm, and what to ask the "
               "admin for. Exit status 0 when containers can run here, 1 otherwise.")
@format_option("text", "json")
@click.option("--mpi", "mpi_image", metavar="IMAGE",
              help="what --mpi=host would bind for IMAGE, and why (exit 1: refused)")
def check(out, mpi_image) -> int:
    if mpi_image:
        from hpcrun import mpi  # lazy: only this command needs it
        text, code = mpi.check_report(mpi_image, out)
        sys.stdout.write(text)
        return code
    results = collect()
    slurm = _slurm_line()
    tasks = _task_line()
    can_run = all(ok for _, ok, _, _, essential in results if essential)
    from hpcrun.runtime import gpu  # lazy: only this command needs it
    gpus = gpu.report()
    if out == "json":
        doc = {"can_run": can_run, "slurm_backend": slurm.split(": ", 1)[1],
               "slurm_tasks": tasks.split(": ", 1)[1], "gpus": gpus,
               "checks": [{"name": n, "ok": ok, "detail": d, "ask_admin": a,
                           "essential": e} for n, ok, d, a, e in results]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        w = max(len(n) for n, *_ in results)
        for n, ok, d, a, _ in results:
            sys.stdout.write(f"{n:<{w}}  {'works' if ok else 'no':<5}  {d}\n")
            if a:
                sys.stdout.write(f"{'':<{w}}  {'':<5}  ask the admin: {a}\n")
        sys.stdout.write(slurm + "\n" + tasks + "\n")
        sys.stdout.write("".join(line + "\n" for line in gpu.report_lines(gpus)))
        sys.stdout.write("containers can run here\n" if can_run else
                         "containers cannot run here: see 'ask the admin' above\n")
    return 0 if can_run else 1


COMMANDS = {"check": check}
