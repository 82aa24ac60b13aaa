"""Moved to :mod:`heliosdb.cli.common` (the command line's own package). This name is the
same module object, for code written before the move; import heliosdb.cli.common instead."""
import sys

from heliosdb.cli import common as _moved

sys.modules[__name__] = _moved
