"""The one native artifact, ``heliosdb._native``: loaded once, reported honestly.

It is both a cffi API-mode module (``ffi``, ``lib``: the chain hash and the page
transform called from Python) and a SQLite loadable extension (entry point
``sqlite3_heliosdb_init``) that :mod:`heliosdb.crypto.vfs` loads into APSW's SQLite.

``HELIOSDB_PURE=1`` hides it, which forces every pure-Python fallback (the tests run
both ways). Encryption has no pure fallback: it then refuses with a clear error.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Optional

__all__ = ["available", "ffi", "lib", "extension_path", "unavailable_reason", "ENTRY_POINT"]

ENTRY_POINT = "sqlite3_heliosdb_init"

ffi: Any = None
lib: Any = None
_reason: Optional[str] = None

if os.environ.get("HELIOSDB_PURE", "") not in ("", "0"):
    _reason = "disabled by HELIOSDB_PURE=1"
else:
    try:
        # The compiled module, by its full name: it is not Python source, and a relative
        # "from . import" reads as an import of the heliosdb package to import-linter.
        _native = importlib.import_module("heliosdb._native")

        ffi, lib = _native.ffi, _native.lib
    except ImportError as exc:  # not built at install time
        _reason = (
            f"the native extension heliosdb._native is not built ({exc}); reinstall with a "
            "C compiler and Debian's libssl-dev and libsqlite3-dev present"
        )


def available() -> bool:
    """True when the native extension is built and not disabled by ``HELIOSDB_PURE``."""
    return lib is not None


def unavailable_reason() -> Optional[str]:
    """Why the native extension is not in use, or None when it is."""
    return _reason


def extension_path() -> str:
    """Filesystem path of the compiled module, to hand to ``load_extension``."""
    if lib is None:
        raise RuntimeError(_reason or "native extension unavailable")
    return str(importlib.import_module("heliosdb._native").__file__)
