"""Running a click command under the dispatcher's conventions: click's usage errors
become UsageError (one line and a hint, exit 2), and the command's return value is the
exit status. For the non-hot verbs only (`import click` costs ~25 ms)."""
from __future__ import annotations

import click

from hpcrun.errors import UsageError


def run(cmd: click.Command, prog: str, argv: list) -> int:
    try:
        r = cmd.main(args=list(argv), prog_name=prog, standalone_mode=False)
    except click.exceptions.NoSuchOption as e:
        raise UsageError(f"{prog}: {e.format_message()}", f"see '{prog} --help'") from e
    except click.UsageError as e:
        raise UsageError(f"{prog}: {e.format_message()}", f"see '{prog} --help'") from e
    except click.exceptions.Abort:
        return 130
    if isinstance(r, int):
        return r
    return 0
