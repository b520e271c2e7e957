"""The click side of the command line: every verb but the hot paths (main.FAST).

main.py parses the global flags and hands a click verb here; it never imports this
module for `run`, `task` or `srun`. This module holds:

- the root group, which imports a verb's module only when that verb is used, listed
  (`hpcrun --help`) or completed; the verbs and their sections come from the registry
  in main.py (main.VERBS);
- the one place click's own usage errors become ``hpcrun: error: ...`` and
  ``hint: ...`` lines with exit status 2 (HpcrunError is printed by main.py);
- what the command modules share: ``Choice`` (one-line errors for a bad choice),
  ``format_option`` (``--format table|json``), image-name completion.

Command modules import their library modules inside the command bodies: `hpcrun
--help` and every TAB press import all command modules, and should not pay for the
store, the registry client and the Slurm backend.
"""
from __future__ import annotations

import io
import re
import sys
from contextlib import redirect_stdout
from importlib import import_module

import click

from hpcrun.cli.main import COMPLETE_VAR, FAST, VERBS

ROOT_HELP = "Rootless containers for HPC batch jobs."
ROOT_EPILOG = ("Run 'hpcrun COMMAND --help' for a command's options. Shell completion "
               "(bash, zsh, fish): see the README, section 'Command line'.")
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ---------------------------------------------------------------- shared by commands


class BadValue(click.BadParameter):
    """A bad option value, printed as one line naming the option and a hint."""

    def __init__(self, message: str, hint: str, **kw):
        super().__init__(message, **kw)
        self.hint = hint


class Choice(click.Choice):
    """click.Choice whose error is ``unknown --format value 'xml'`` + the choices."""

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        opt = _param_name(param)
        raise BadValue(f"unknown {opt} value {value!r}",
                       "use " + " or ".join(f"{opt} {c}" for c in self.choices),
                       ctx=ctx, param=param)


def format_option(*choices: str, help: str | None = None):
    """``--format``: how a command prints its result (the first choice, a table, by
    default; or json). The value reaches the command as ``out``."""
    choices = choices or ("table", "json")
    return click.option("--format", "out", type=Choice(choices),
                        default=choices[0], show_default=True,
                        help=help or "json: machine-readable output")


def complete_image(ctx, param, incomplete: str):
    """Image names in the store (for IMAGE arguments)."""
    try:
        from hpcrun.image.reference import try_parse  # lazy: only this command needs it
        from hpcrun.image.store import Store  # lazy: only this command needs it
        names = []
        for rec in Store().images():
            for t in rec.tags:
                r = try_parse(t)
                names.append(r.familiar if r else t)
    except Exception:  # completion must never print a traceback into the shell
        return []
    return [click.shell_completion.CompletionItem(n)
            for n in sorted(set(names)) if n.startswith(incomplete)]


def complete_image_or_path(ctx, param, incomplete: str):
    """Store names, then files (run/task/srun take a directory or squashfs path too)."""
    items = [] if incomplete.startswith(("/", ".", "~")) else complete_image(ctx, param, incomplete)
    return items + [click.shell_completion.CompletionItem(incomplete, type="file")]


def _param_name(param) -> str:
    if param is None:
        return "value"
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return param.human_readable_name


# ---------------------------------------------------------------- the root group


class Root(click.Group):
    """`hpcrun`: verbs from main.VERBS, loaded lazily, listed by section."""

    def list_commands(self, ctx):
        return list(VERBS)

    def get_command(self, ctx, name):
        if name not in VERBS:
            return None
        module = import_module("hpcrun.cli." + VERBS[name][0])
        if name in FAST:
            return _fast_command(name, module)
        return module.COMMANDS[name]

    def collect_usage_pieces(self, ctx):
        return ["[-v|-vv]", "COMMAND [ARGS]..."]

    def format_commands(self, ctx, formatter):
        sections: dict = {}
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd))
        limit = formatter.width - 6 - max(len(n) for n, _ in rows)
        for name, cmd in rows:
            sections.setdefault(VERBS[name][1], []).append(
                (name, cmd.get_short_help_str(limit)))
        for title, items in sections.items():
            with formatter.section(title):
                formatter.write_dl(items)


def _fast_usage(verb: str, module) -> str:
    """A hot verb's own --help text (it prints it; we capture it)."""
    buf = io.StringIO()
    with redirect_stdout(buf):
        try:
            module.main(verb, ["--help"])
        except SystemExit:  # (run's parser exits after printing its help)
            pass
    return buf.getvalue()


def _fast_command(verb: str, module) -> click.Command:
    """A stand-in for a hot verb, for `hpcrun --help` and completion only: main.py
    runs the verb's own parser, never this command."""
    text = _fast_usage(verb, module)
    paras = [p for p in text.split("\n\n") if p.strip()]
    summary = " ".join(paras[1].split()) if len(paras) > 1 else ""
    short = re.sub(r" \([^)]*\)", "", summary.split(". ")[0]).split(": ")[0].rstrip(".") + "."
    params = _fast_options(verb) + [
        click.Argument(["args"], nargs=-1, type=click.UNPROCESSED,
                       shell_complete=complete_image_or_path)]

    def run(args):
        return module.main(verb, list(args))
    return click.Command(verb, callback=run, params=params, help=summary, short_help=short,
                         add_help_option=False,
                         context_settings={"ignore_unknown_options": True,
                                           "allow_extra_args": True})


def _fast_options(verb: str) -> list:
    """The hot verbs' options as click options, so that the shell completes them: from
    the option table (hpcrun.runtime.options) for run and task, from the pyxis table
    (hpcrun.slurm.srun.OPTIONS) for srun."""
    if verb == "srun":
        srun = import_module("hpcrun.slurm.srun")
        return [click.Option(["--" + n], is_flag=not o.value, multiple=bool(o.value),
                             shell_complete=complete_image_or_path
                             if n == "container-image" else None)
                for n, o in srun.OPTIONS.items()]
    if verb not in ("run", "task"):
        return []       # exec, singularity, snakemake: their own parsers, no table
    options = import_module("hpcrun.runtime.options")
    entry = options.RUN if verb == "run" else options.TASK
    out = []
    for o in options.TABLE:
        if entry not in o.where:
            continue
        if o.takes_value:
            out.append(click.Option(list(o.spellings), multiple=True, metavar=o.metavar,
                                    type=click.Choice(o.choices)
                                    if o.choices and not o.prefixes else None))
        else:
            out.append(click.Option(list(o.spellings), is_flag=True))
    if verb == "task":
        out.append(click.Option(["--plan"], is_flag=True))
    return out


@click.group("hpcrun", cls=Root, help=ROOT_HELP, epilog=ROOT_EPILOG,
             context_settings=CONTEXT)
@click.option("-v", "--verbose", count=True,
              help="more log output on stderr; -vv: debug output and tracebacks")
@click.option("--version", is_flag=True, help="print the version")
def root(verbose, version):
    """(Global flags are parsed by main.py before a verb reaches click.)"""


# ---------------------------------------------------------------- entry points


def main(verb: str, argv: list) -> int:
    """Run one click verb; usage errors are printed here (exit 2), HpcrunError is
    left to main.py."""
    try:
        rv = root.main([verb, *argv], prog_name="hpcrun", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except _NO_ARGS_IS_HELP as e:  # `hpcrun cluster` alone (click >= 8.2)
        sys.stderr.write(e.ctx.get_help() + "\n")
        return 2
    except click.UsageError as e:
        what, hint = usage_message(e, verb)
        sys.stderr.write(f"hpcrun: error: {what}\nhint: {hint}\n")
        return 2
    except click.Abort:  # (click turned a Ctrl-C into this, and ended the line)
        return 130
    return rv if isinstance(rv, int) else 0


def root_help(out, code: int) -> int:
    """`hpcrun --help` (stdout, 0) or `hpcrun` alone (stderr, 2)."""
    with click.Context(root, info_name="hpcrun", **root.context_settings) as ctx:
        out.write(root.get_help(ctx) + "\n")
    return code


def complete() -> int:
    """click's shell completion (`_HPCRUN_COMPLETE=bash_source hpcrun`, ...)."""
    root.main(sys.argv[1:], prog_name="hpcrun", complete_var=COMPLETE_VAR)
    return 0  # not reached: click exits


def usage_message(e: click.UsageError, verb: str) -> tuple[str, str]:
    """One line for what was wrong, one hint: never click's multi-line usage block."""
    ctx = e.ctx
    # (click's parser raises some errors, e.g. a missing option value, without a context)
    path = ctx.command_path if ctx is not None else f"hpcrun {verb}"
    hint = f"see '{path} --help'"
    if isinstance(e, BadValue):
        return e.message, e.hint
    if isinstance(e, click.NoSuchOption):
        what = f"no such option {e.option_name!r}"
        if e.possibilities:
            hint = "did you mean " + " or ".join(sorted(e.possibilities)) + "?"
    elif isinstance(e, click.MissingParameter):
        p = e.param
        kind = e.param_type or (p.param_type_name if p is not None else "parameter")
        name = _param_name(p) if p is not None else ""
        what = f"missing {kind} {name}".rstrip()
    elif isinstance(e, click.BadParameter):
        what = f"invalid value for {_param_name(e.param)}: {_sentence(e.message)}"
    else:
        what = _sentence(e.message)
        if what.startswith("no such command"):
            # `hpcrun cluster sideways` (main.py answers unknown top-level verbs)
            import difflib  # (here: ~5 ms that a listing would otherwise pay)
            cmd = what.split(None, 3)[-1].strip("'\"")
            group = ctx.command if ctx is not None else None
            subs = [n for n in (group.list_commands(ctx) if isinstance(group, click.Group)
                                else []) if not group.get_command(ctx, n).hidden]
            m = difflib.get_close_matches(cmd, subs, n=1)
            if m:
                hint = f"did you mean '{path} {m[0]}'?"
            elif subs:
                hint = "use " + ", ".join(subs[:-1]) + " or " + subs[-1]
            return f"unknown {ctx.info_name} command {cmd!r}", hint
    return f"{path}: {what}", hint


def _sentence(msg: str) -> str:
    """click's "Got unexpected extra argument (x)." as one lower-case clause."""
    msg = " ".join(msg.split()).rstrip(".")
    return msg[:1].lower() + msg[1:] if msg[:2] != msg[:2].upper() else msg
