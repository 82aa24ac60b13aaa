"""``heliosdb.dbapi2`` mirrors ``sqlite3.dbapi2``: code doing ``from sqlite3 import dbapi2``
works with ``from heliosdb import dbapi2``."""
from heliosdb import *  # noqa: F401,F403
from heliosdb import __all__  # noqa: F401
from heliosdb.dbapi import module_getattr as __getattr__  # noqa: F401 - deprecated names
