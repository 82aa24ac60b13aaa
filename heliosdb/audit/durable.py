"""Making a written file survive a crash: what the exports and the shipper share.

A file is written under a temporary name, fsynced, renamed over its final name, and then
the directory is fsynced so that the rename itself is on disk (POSIX; a directory cannot
be opened for fsync on Windows, where the rename is what there is).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

__all__ = ["fsync_directory", "fsync_file", "replacing"]


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield a temporary name beside ``path`` to write; when the block ends without an
    error the file is renamed over ``path``, otherwise it is removed (``path`` keeps what
    it had). Durability of the content (fsync) and of the name (:func:`fsync_directory`)
    are the caller's choice."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_directory(path: str) -> None:
    """fsync the directory ``path`` (makes renames and new names in it durable); a
    platform that cannot open a directory is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # (some file systems refuse fsync on a directory: nothing more to do)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """fsync the file at ``path`` (written by a library that does not, e.g. pyarrow)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
