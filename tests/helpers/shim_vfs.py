"""A Python VFS over "unix", made SQLite's default, for the child interpreters that watch
or break what reaches the disk (a write spy, torn reads, injected I/O faults). Made
before the heliosdb extension loads, the encrypting shim stacks on top of it."""
from __future__ import annotations

from typing import Any, Callable

import apsw


def install_default_vfs(name: str, open_file: Callable[[Any, Any], apsw.VFSFile]) -> apsw.VFS:
    """Register a VFS named ``name`` over "unix" as the default; it opens each file as
    ``open_file(name, flags)`` (an ``apsw.VFSFile`` over "unix"). Keep the returned VFS
    referenced for as long as SQLite may use it."""

    class DefaultVFS(apsw.VFS):
        def __init__(self) -> None:
            super().__init__(name, "unix", makedefault=True)

        def xOpen(self, fname: Any, flags: Any) -> apsw.VFSFile:
            return open_file(fname, flags)

    return DefaultVFS()
