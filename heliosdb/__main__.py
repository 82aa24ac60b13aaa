"""``heliosdb`` / ``python -m heliosdb``: the SQL shell, or a subcommand.

* ``heliosdb [OPTIONS] FILE [SQL|CMD]...``: the sqlite3-style shell
  (:mod:`heliosdb.shell`);
* ``heliosdb COMMAND ...`` when the first argument is one of ``info``, ``verify``,
  ``audit``, ``export``, ``encrypt``, ``decrypt``, ``rekey``, ``passwd``, ``report``,
  ``demo`` (:mod:`heliosdb.cli_commands`). A database file with one of those names is
  opened by the shell when written with a path, e.g. ``heliosdb ./info``.

Exit status: 0 ok, 1 verification failed, findings, or an SQL error in a script,
2 usage or input error (bad arguments, missing file, wrong key). See ``docs/CLI.md``.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the status.

    As a console script (``heliosdb``) the return value becomes the exit status.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    from .cli_commands import SUBCOMMANDS

    if args and args[0] in SUBCOMMANDS:
        from .cli_commands import run_subcommand

        return run_subcommand(args)
    from .shell import run_shell

    return run_shell(args)


if __name__ == "__main__":
    sys.exit(main())
