"""Loads the C VFS shim into APSW's SQLite (once per process) and talks to its registry.

The shim is the SQLite loadable extension compiled into ``heliosdb._native``; loading it
needs one connection (``:memory:``), after which every APSW connection can open with
``vfs="heliosdb"``. Keys reach it only through :func:`register` (a C call with the data
key and file id), never through a URI, a filename or SQL text.
"""
from __future__ import annotations

import threading
from typing import Optional, Tuple

import apsw

from .. import native
from ..errors import EncryptionUnavailableError

__all__ = ["VFS_NAME", "ensure_loaded", "full_pathname", "register", "unregister",
           "last_error", "key_info", "stats", "stat_names", "addref"]

VFS_NAME = "heliosdb"
_lock = threading.Lock()
_loaded = False


def ensure_loaded() -> None:
    """Load the extension into APSW's SQLite unless this process already did."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        if not native.available():
            raise EncryptionUnavailableError(
                "encrypted databases need the native extension, which is not available: "
                f"{native.unavailable_reason()}")
        if not native.lib.heliosdb_vfs_registered():
            conn = apsw.Connection(":memory:")
            try:
                conn.enable_load_extension(True)
                conn.load_extension(native.extension_path(), native.ENTRY_POINT)
            except apsw.Error as exc:
                raise EncryptionUnavailableError(
                    f"could not load the encryption extension into SQLite: {exc}") from None
            finally:
                conn.close()
        if VFS_NAME not in apsw.vfs_names():
            raise EncryptionUnavailableError("the heliosdb VFS did not register")
        _loaded = True


def full_pathname(path: str) -> str:
    """The full pathname SQLite's default VFS gives ``path`` (the registry's key)."""
    ensure_loaded()
    ffi, lib = native.ffi, native.lib
    out = ffi.new("char[]", 4098)
    rc = lib.heliosdb_full_pathname(path.encode("utf-8"), out, 4097)
    if rc not in (0, apsw.SQLITE_OK_SYMLINK):
        raise OSError(f"cannot resolve the full path of {path!r} (SQLite code {rc})")
    return ffi.string(out).decode("utf-8")


def register(full_path: str, dek: bytearray, file_id: bytes) -> None:
    """Hand the data key of the file at ``full_path`` to the shim (reference counted)."""
    ensure_loaded()
    ffi, lib = native.ffi, native.lib
    buf = ffi.new("unsigned char[32]")
    try:
        ffi.memmove(buf, dek, 32)
        rc = lib.heliosdb_key_register(full_path.encode("utf-8"), buf, bytes(file_id))
    finally:
        ffi.memmove(buf, bytes(32), 32)
    if rc == 1:
        from ..errors import EncryptionError

        raise EncryptionError(f"{full_path} is open in this process with another key")
    if rc:
        raise MemoryError("cannot register the key")


def addref(full_path: str, file_id: bytes) -> None:
    """Add a registration to the key already registered for ``full_path``.

    Raises LookupError when no key of that file id is registered for it (the last
    connection closed, or the file was replaced): the caller unlocks from the header.
    """
    if native.lib.heliosdb_key_addref(full_path.encode("utf-8"), bytes(file_id)) != 0:
        raise LookupError(f"no key of this file id is registered for {full_path}")


def unregister(full_path: str) -> None:
    """Drop one registration; the shim wipes the key when nothing uses it any more."""
    if native.lib is not None:
        native.lib.heliosdb_key_unregister(full_path.encode("utf-8"))


def last_error(clear: bool = True) -> Optional[Tuple[str, int, str]]:
    """(file, page, message) of the shim's last failure on this thread, or None."""
    if native.lib is None:
        return None
    ffi, lib = native.ffi, native.lib
    f, m, pg = ffi.new("char[]", 512), ffi.new("char[]", 256), ffi.new("long long *")
    if not lib.heliosdb_last_error(f, 512, m, 256, pg):
        return None
    if clear:
        lib.heliosdb_clear_last_error()
    return (ffi.string(f).decode("utf-8", "replace"), int(pg[0]),
            ffi.string(m).decode("utf-8", "replace"))


def clear_last_error() -> None:
    """Forget the last failure recorded on this thread."""
    if native.lib is not None:
        native.lib.heliosdb_clear_last_error()


def key_info(full_path: str) -> Optional[Tuple[int, int, int]]:
    """(unflushed encryptions, page size, database pages) the shim knows, or None."""
    if native.lib is None:
        return None
    ffi, lib = native.ffi, native.lib
    pend, ps, pages = ffi.new("long long *"), ffi.new("int *"), ffi.new("long long *")
    if not lib.heliosdb_key_info(full_path.encode("utf-8"), pend, ps, pages):
        return None
    return int(pend[0]), int(ps[0]), int(pages[0])


_STAT_PREFIX = "HELIOSDB_STAT_"


def stat_names() -> Tuple[str, ...]:
    """Names of the shim's counters in index order, from ``enum heliosdb_stat`` in
    csrc/vfs_api.h (their one definition): HELIOSDB_STAT_PAGE1_RETRIES is "page1_retries".
    Empty when the native extension is not available."""
    if native.ffi is None:
        return ()
    by_index = native.ffi.typeof("enum heliosdb_stat").elements  # value -> enumerator
    count = native.lib.HELIOSDB_STAT_COUNT
    return tuple(by_index[i][len(_STAT_PREFIX):].lower() for i in range(count))


def stats() -> dict:
    """Process-wide counters of the shim, by name (see :func:`stat_names`)."""
    names = stat_names()
    if not names:
        return {}
    out = native.ffi.new("long long[]", len(names))
    native.lib.heliosdb_stats(out, len(names))
    return dict(zip(names, (int(x) for x in out)))
