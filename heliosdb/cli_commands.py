"""Moved to :mod:`heliosdb.cli.commands` (the command line's own package). This name is the
same module object, for code written before the move; import heliosdb.cli.commands instead."""
import sys

from heliosdb.cli import commands as _moved

sys.modules[__name__] = _moved
