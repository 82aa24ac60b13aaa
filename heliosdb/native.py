"""The one native artifact, ``heliosdb._native``: loaded once, reported honestly.

It is both a cffi API-mode module (``ffi``, ``lib``: the chain hash and the page
transform called from Python) and a SQLite loadable extension (entry point
``sqlite3_heliosdb_init``) that :mod:`heliosdb.crypto.vfs` loads into APSW's SQLite.

Which audit-chain implementation runs is chosen here, once, at import, as psycopg's
``PSYCOPG_IMPL`` chooses its own (:data:`IMPL`):

* ``HELIOSDB_IMPL=c``: the C chain; when the extension cannot load, importing heliosdb
  raises ImportError naming why (a build that failed must not silently run pure).
* ``HELIOSDB_IMPL=pure``: the pure-Python chain; the extension still loads for the
  encrypting VFS.
* unset: ``c`` when the extension loads, else ``pure``.

``HELIOSDB_PURE=1`` is the older switch and stays an alias of ``HELIOSDB_IMPL=pure`` that
also hides the extension altogether, so every pure-Python fallback runs. Encryption has
no pure fallback: it then refuses with a clear error.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Optional

__all__ = ["available", "ffi", "lib", "extension_path", "unavailable_reason", "ENTRY_POINT",
           "IMPL", "IMPL_VARIABLE", "IMPLS"]

ENTRY_POINT = "sqlite3_heliosdb_init"
#: The environment variable that chooses the chain implementation, read once at import.
IMPL_VARIABLE = "HELIOSDB_IMPL"
#: Every value ``HELIOSDB_IMPL`` accepts.
IMPLS = ("c", "pure")

ffi: Any = None
lib: Any = None
_reason: Optional[str] = None


def _requested_impl() -> Optional[str]:
    """What the environment asks for: "c", "pure" or None (no preference)."""
    raw = os.environ.get(IMPL_VARIABLE, "").strip().lower()
    pure_alias = os.environ.get("HELIOSDB_PURE", "") not in ("", "0")
    if raw and raw not in IMPLS:
        raise ImportError(f"{IMPL_VARIABLE}={raw!r} is not an implementation heliosdb has: "
                          f"set it to one of {', '.join(IMPLS)}, or unset it")
    if pure_alias and raw == "c":
        raise ImportError(f"{IMPL_VARIABLE}=c and HELIOSDB_PURE=1 contradict each other: "
                          "unset one of them")
    return "pure" if pure_alias else (raw or None)


_requested = _requested_impl()

if os.environ.get("HELIOSDB_PURE", "") not in ("", "0"):
    _reason = "disabled by HELIOSDB_PURE=1"
else:
    try:
        # The compiled module, by its full name: it is not Python source, and a relative
        # "from . import" reads as an import of the heliosdb package to import-linter.
        _native = importlib.import_module("heliosdb._native")

        ffi, lib = _native.ffi, _native.lib
    except ImportError as exc:  # not built at install time, or built against other symbols
        _reason = (
            f"the native extension heliosdb._native cannot be loaded ({exc}); reinstall with "
            "a C compiler and Debian's libssl-dev and libsqlite3-dev present"
        )
        if _requested == "c":
            raise ImportError(f"{IMPL_VARIABLE}=c asks for the C implementation, but {_reason}"
                              ) from exc

#: The audit-chain implementation this process runs, "c" or "pure" (decided above, once).
IMPL: str = _requested or ("c" if lib is not None else "pure")


def available() -> bool:
    """True when the native extension is loaded (not missing, not hidden by
    ``HELIOSDB_PURE``); the VFS needs it whichever chain implementation runs."""
    return lib is not None


def unavailable_reason() -> Optional[str]:
    """Why the native extension is not in use, or None when it is."""
    return _reason


def extension_path() -> str:
    """Filesystem path of the compiled module, to hand to ``load_extension``."""
    if lib is None:
        raise RuntimeError(_reason or "native extension unavailable")
    return str(importlib.import_module("heliosdb._native").__file__)
