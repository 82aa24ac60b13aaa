"""cffi (API mode) builder for ``heliosdb._native``.

Every ``csrc/*.c`` file is compiled into the one module; every ``csrc/*.cdef`` file
declares what Python calls through cffi. Each component (VFS shim, chain hash) owns its
own ``.c`` and ``.cdef`` pair, so adding one touches no shared file.

The module doubles as a SQLite loadable extension: it is compiled against
``sqlite3ext.h`` and is never linked with ``-lsqlite3`` (that would bind a second,
different SQLite); the SQLite API is reached through the pointer SQLite hands to the
extension entry point when APSW loads it.
"""
from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()

cdefs = sorted(HERE.glob("*.cdef"))
ffibuilder.cdef("\n".join(p.read_text() for p in cdefs))

sources = sorted(HERE.glob("*.c"))
headers = sorted(HERE.glob("*.h"))
# The paths must be relative to the project root for setuptools.
root = HERE.parent
rel = lambda p: os.path.relpath(p, root)  # noqa: E731

ffibuilder.set_source(
    "heliosdb._native",
    "\n".join(f'#include "{h.name}"' for h in headers),
    sources=[rel(p) for p in sources],
    include_dirs=[rel(HERE)],
    libraries=["crypto"],
    extra_compile_args=["-O2", "-fvisibility=default", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(root / "build"), verbose=True)
