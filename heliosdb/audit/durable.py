"""Making a written file survive a crash: what the exports and the shipper share.

A file is written under a temporary name, fsynced, renamed over its final name, and then
the directory is fsynced so that the rename itself is on disk (POSIX; a directory cannot
be opened for fsync on Windows, where the rename is what there is).
"""
from __future__ import annotations

import os

__all__ = ["fsync_directory", "fsync_file"]


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
