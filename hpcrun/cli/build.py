"""`hpcrun build`: build an image from a Dockerfile, rootless (hpcrun/build/).

    hpcrun build [-t NAME:TAG]... [-f Dockerfile] [--build-arg K=V]... [--target STAGE]
                 [--no-cache] [--network host|none] [--format dir|squashfs] [-q] CONTEXT
    hpcrun build prune [--keep-days N]

stdout carries the image id; stderr the steps and each RUN's output. Registered in
hpcrun/cli/main.py (VERBS); usage errors are printed by hpcrun/cli/app.py, HpcrunError
by main.py.
"""
from __future__ import annotations

import os
import sys

import click

from hpcrun.cli.app import CONTEXT, Choice
from hpcrun.errors import HpcrunError, UsageError


def _build_arg(ctx, param, values):
    out = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not k:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE (or KEY to take it from "
                                     "the environment)")
        if not eq:
            if k not in os.environ:
                continue        # Docker: KEY without a value and unset -> not passed
            val = os.environ[k]
        out[k] = val
    return out


def _os_error(e: OSError) -> HpcrunError:
    """A full disk or a vanished file: one line, not a traceback."""
    where = f"{e.filename}: " if e.filename else ""
    return HpcrunError(f"build: {where}{e.strerror or e}",
                       "check free space and permissions (the store is HPCRUN_STORE)")


class _BuildCommand(click.Command):
    """`hpcrun build ... CONTEXT`, whose first word may instead be `prune` (Docker's
    `docker builder prune`, spelled under this verb)."""

    def make_context(self, info_name, args, parent=None, **extra):
        if args and args[0] == "prune":
            return prune_cmd.make_context("build prune", list(args[1:]), parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)


@click.command("build", cls=_BuildCommand, context_settings=CONTEXT,
               short_help="Build an image from a Dockerfile, without privileges.")
@click.option("-t", "--tag", "tags", multiple=True, metavar="NAME[:TAG]",
              help="name the image (repeatable)")
@click.option("-f", "--file", "dockerfile", metavar="PATH",
              help="the Dockerfile (default: CONTEXT/Dockerfile)")
@click.option("--build-arg", "build_args", multiple=True, callback=_build_arg,
              metavar="KEY=VALUE", help="set an ARG (repeatable)")
@click.option("--target", metavar="STAGE", help="build up to this stage")
@click.option("--no-cache", is_flag=True, help="run every step, ignoring the cache")
@click.option("--network", type=Choice(["host", "none"]), default="host",
              show_default=True, help="RUN steps' network")
@click.option("--format", "fmt", type=Choice(["dir", "squashfs", "dir,squashfs"]),
              default="dir", show_default=True, help="how the store keeps the image")
@click.option("-q", "--quiet", is_flag=True, help="print only the image id")
@click.argument("context", metavar="CONTEXT")
def build_cmd(tags, dockerfile, build_args, target, no_cache, network, fmt, quiet, context):
    """Build an image from a Dockerfile, without privileges (RUN as fake root in a user
    namespace), into the image store. `hpcrun build prune` trims the build cache."""
    from hpcrun.build.executor import Builder, Options
    from hpcrun.image.store import Store, normalize
    for t in tags:
        try:
            if normalize(t).digest:
                raise UsageError(f"-t {t}: a digest cannot name a built image",
                                 "give NAME[:TAG]")
        except HpcrunError:
            raise
        except Exception as e:
            raise UsageError(f"-t {t}: invalid image name ({e})", "give NAME[:TAG]") from e
    opts = Options(context, dockerfile=dockerfile, tags=tags, build_args=build_args,
                   target=target, no_cache=no_cache, network=network, fmt=fmt, quiet=quiet)
    try:
        with Store() as store:
            b = Builder(store, opts)
            try:
                rec = b.build()
            finally:
                b.close()
    except OSError as e:
        raise _os_error(e) from e
    if not quiet:
        sys.stderr.write(f"Successfully built {rec.short_id}"
                         + "".join(f"\nSuccessfully tagged {t}" for t in tags) + "\n")
    sys.stdout.write(rec.id + "\n")
    return 0


@click.command("prune", context_settings=CONTEXT)
@click.option("--keep-days", type=float, default=0.0, show_default=True,
              help="keep cache entries used within this many days")
def prune_cmd(keep_days):
    """Trim the build cache."""
    from hpcrun.build.cache import Cache
    from hpcrun.image.store import Store
    try:
        with Store() as store:
            c = Cache(store.root)
            try:
                n, freed = c.prune(keep_days)
            finally:
                c.close()
    except OSError as e:
        raise _os_error(e) from e
    sys.stdout.write(f"Deleted {n} build cache entries\nTotal reclaimed space: {freed} B\n")
    return 0


COMMANDS = {"build": build_cmd}
