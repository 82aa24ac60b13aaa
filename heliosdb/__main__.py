"""``heliosdb`` / ``python -m heliosdb``: the SQL shell, or a subcommand.

* ``heliosdb [OPTIONS] FILE [SQL|CMD]...``: the sqlite3-style shell
  (:mod:`heliosdb.cli.shell`);
* ``heliosdb [OPTIONS] COMMAND ...`` when the first word that is not an option is one of
  ``info``, ``verify``, ``audit``, ``export``, ``encrypt``, ``decrypt``, ``rekey``,
  ``passwd``, ``purge``, ``report``, ``demo`` (:mod:`heliosdb.cli.commands`). Options may
  stand before or after the command name. Such a word is never a database name: a
  database file named like a subcommand is written as a path, e.g. ``heliosdb ./info``.

Exit status: the table :data:`heliosdb.cli.common.EXIT_STATUSES` (docs/CLI.md).
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

__all__ = ["main", "split_command"]

#: Options of the command line that take a value (as the next word or after ``=``), so
#: that the value is never mistaken for the subcommand or the database name.
VALUED_OPTIONS = {"key-file", "key-env", "config", "user", "actor", "reason", "cmd", "init",
                  "separator", "nullvalue", "encoding"}


def split_command(args: Sequence[str]) -> Optional[int]:
    """The index of the subcommand name in ``args``, or None for the shell.

    The subcommand is the first word that is not an option or an option's value; ``--``
    ends the options (what follows is the shell's FILE and SQL).
    """
    from .cli.commands import SUBCOMMANDS

    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            return None
        if a == "-" or not a.startswith("-"):
            return i if a in SUBCOMMANDS else None
        name, eq, _ = a.lstrip("-").partition("=")
        i += 2 if (name in VALUED_OPTIONS and not eq) else 1
    return None


def _quiet_stdout() -> None:
    """Standard output's reader went away: drop what is still buffered, silently."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - no stdout at all
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the status.

    As a console script (``heliosdb``) the return value becomes the exit status. When
    standard output is closed by its reader (``heliosdb audit db | head -1``) the run ends
    quietly with status 141, as the sqlite3 shell ends on SIGPIPE.
    """
    from .cli.common import EXIT_BROKEN_PIPE

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        at = split_command(args)
        if at is not None:
            from .cli.commands import run_subcommand

            code = run_subcommand([args[at], *args[:at], *args[at + 1:]])
        else:
            from .cli.shell import run_shell

            code = run_shell(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
