"""HeliosDB: SQLite, made compliant. (Being assembled: see dbapi.py.)"""
from .errors import *  # noqa: F401,F403
from . import native as _native_mod

version = "0.1.0"


def native_available() -> bool:
    """True when the C extension (VFS shim, chain hash) is built and in use."""
    return _native_mod.available()
