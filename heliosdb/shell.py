"""Moved to :mod:`heliosdb.cli.shell` (the command line's own package). This name is the
same module object, for code written before the move; import heliosdb.cli.shell instead."""
import sys

from heliosdb.cli import shell as _moved

sys.modules[__name__] = _moved
