"""`hpcrun build`: build an image from a Dockerfile, rootless (hpcrun/build/).

    hpcrun build [-t NAME:TAG]... [-f Dockerfile] [--build-arg K=V]... [--target STAGE]
                 [--no-cache] [--network host|none] [--format dir|squashfs] [-q] CONTEXT
    hpcrun build prune [--keep-days N]

stdout carries the image id; stderr the steps and each RUN's output.
"""
from __future__ import annotations

import sys
from typing import List

import click

from hpcrun.errors import HpcrunError, UsageError


def _build_arg(ctx, param, values):
    out = {}
    import os
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


@click.command("build", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-t", "--tag", "tags", multiple=True, metavar="NAME[:TAG]",
              help="name the image (repeatable)")
@click.option("-f", "--file", "dockerfile", metavar="PATH",
              help="the Dockerfile (default: CONTEXT/Dockerfile)")
@click.option("--build-arg", "build_args", multiple=True, callback=_build_arg,
              metavar="KEY=VALUE", help="set an ARG (repeatable)")
@click.option("--target", metavar="STAGE", help="build up to this stage")
@click.option("--no-cache", is_flag=True, help="run every step, ignoring the cache")
@click.option("--network", type=click.Choice(["host", "none"]), default="host",
              show_default=True, help="RUN steps' network")
@click.option("--format", "fmt", type=click.Choice(["dir", "squashfs", "dir,squashfs"]),
              default="dir", show_default=True, help="how the store keeps the image")
@click.option("-q", "--quiet", is_flag=True, help="print only the image id")
@click.argument("context", metavar="CONTEXT")
def build_cmd(tags, dockerfile, build_args, target, no_cache, network, fmt, quiet, context):
    """Build an image from a Dockerfile, without privileges."""
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
    with Store() as store:
        b = Builder(store, opts)
        try:
            rec = b.build()
        finally:
            b.close()
    if not quiet:
        sys.stderr.write(f"Successfully built {rec.short_id}"
                         + "".join(f"\nSuccessfully tagged {t}" for t in tags) + "\n")
    sys.stdout.write(rec.id + "\n")
    return 0


@click.command("prune", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--keep-days", type=float, default=0.0, show_default=True,
              help="keep cache entries used within this many days")
def prune_cmd(keep_days):
    """Trim the build cache."""
    from hpcrun.build.cache import Cache
    from hpcrun.image.store import Store
    with Store() as store:
        c = Cache(store.root)
        try:
            n, freed = c.prune(keep_days)
        finally:
            c.close()
    sys.stdout.write(f"Deleted {n} build cache entries\nTotal reclaimed space: {freed} B\n")
    return 0


def main(verb: str, argv: List[str]) -> int:
    cmd = build_cmd
    if argv and argv[0] == "prune":
        cmd, argv = prune_cmd, argv[1:]
    try:
        r = cmd.main(args=list(argv), prog_name=f"hpcrun {verb}", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        raise UsageError(e.format_message(), f"see 'hpcrun {verb} --help'") from e
    except click.Abort:
        return 130
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise HpcrunError(f"build: {where}{e.strerror or e}",
                          "check free space and permissions (the store is HPCRUN_STORE)") from e
    return r if isinstance(r, int) else 0
