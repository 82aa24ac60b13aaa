"""Opening database files from Python without dropping SQLite's locks.

SQLite's unix VFS locks with POSIX advisory locks (``fcntl(F_SETLK)``), which belong to
the (process, inode) pair: closing *any* descriptor of the file in this process releases
*every* lock the process holds on it, including those of an open SQLite connection in
the middle of a write transaction. SQLite itself never closes such a descriptor while a
lock is held (``unixInodeInfo.pUnused``); Python code that reads a database header with
``open(path).read()`` and closes it does, and another process may then write under a
connection that believes it holds the lock.

:func:`open_fd` / :func:`close_fd` follow SQLite's rule: a descriptor whose inode is also
open by an APSW connection of this process (main or attached database) is not closed
but parked, and parked descriptors are closed by a later call once no connection has
the inode open. (A file replaced since a connection opened it is not seen: that
connection's file is gone, its writes fail with SQLITE_READONLY_DBMOVED.)
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Dict, Iterator, List, Set, Tuple

__all__ = ["open_fd", "close_fd", "reading", "read_at"]

_lock = threading.Lock()
_parked: Dict[Tuple[int, int], List[int]] = {}


def _busy_inodes() -> Set[Tuple[int, int]]:
    """(device, inode) of every database file an open APSW connection has attached."""
    out: Set[Tuple[int, int]] = set()
    try:
        import apsw

        conns = apsw.connections()
    except Exception:  # pragma: no cover - very old APSW: keep everything parked
        return set(_parked)
    for c in conns:
        try:
            names = c.db_names()
            files = [c.db_filename(name) for name in names]
        except Exception:
            # Busy in another thread (APSW refuses concurrent use) or closing: its files
            # are unknown, so keep every descriptor parked this time.
            return set(_parked)
        for fn in files:
            if not fn:
                continue
            try:
                st = os.stat(fn)
            except OSError:
                continue
            out.add((st.st_dev, st.st_ino))
    return out


def _sweep_locked() -> None:
    busy = _busy_inodes()
    for key in list(_parked):
        if key not in busy:
            for fd in _parked.pop(key):
                try:
                    os.close(fd)
                except OSError:
                    pass


def open_fd(path: str, flags: int = os.O_RDONLY) -> int:
    """``os.open`` (close it with :func:`close_fd`, never ``os.close``)."""
    return os.open(path, flags | getattr(os, "O_CLOEXEC", 0))


def close_fd(fd: int) -> None:
    """Close ``fd`` unless another descriptor of this process has its inode open, in
    which case it is parked until a later call finds the inode free."""
    with _lock:
        try:
            st = os.fstat(fd)
        except OSError:
            return
        _parked.setdefault((st.st_dev, st.st_ino), []).append(fd)
        _sweep_locked()


def sweep() -> None:
    """Close parked descriptors whose inode nothing else in this process has open."""
    with _lock:
        if _parked:
            _sweep_locked()


@contextlib.contextmanager
def reading(path: str) -> Iterator[int]:
    """A read-only descriptor of ``path`` for the ``with`` block."""
    fd = open_fd(path)
    try:
        yield fd
    finally:
        close_fd(fd)


def read_at(path: str, n: int, offset: int = 0) -> bytes:
    """Up to ``n`` bytes of ``path`` at ``offset`` (FileNotFoundError if it is missing)."""
    with reading(path) as fd:
        return os.pread(fd, n, offset)
