"""cffi (API mode) builder for ``heliosdb._native``.

Every ``csrc/*.c`` file is compiled into the one module; every ``csrc/*.cdef`` file
declares what Python calls through cffi, and a header's block between ``/* cdef-begin */``
and ``/* cdef-end */`` (constants such as the VFS counter indices) is declared to cffi
as it is written there, so that C and Python share one definition. Each component (VFS
shim, chain hash) owns its own ``.c`` and ``.cdef`` pair, so adding one touches no
shared file.

``HELIOSDB_NATIVE_ASSERTS=1`` keeps the C ``assert()`` preconditions in the build
(Python's own CFLAGS carry ``-DNDEBUG``), to run the suites against them.

The module doubles as a SQLite loadable extension: it is compiled against
``sqlite3ext.h`` and is never linked with ``-lsqlite3`` (that would bind a second,
different SQLite); the SQLite API is reached through the pointer SQLite hands to the
extension entry point when APSW loads it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()

CDEF_BLOCK = re.compile(r"/\* cdef-begin \*/(.*?)/\* cdef-end \*/", re.S)


def header_cdefs(header: Path) -> str:
    """The declarations a header marks for cffi (between ``/* cdef-begin */`` and
    ``/* cdef-end */``): constants Python reads, declared once, in the C header."""
    return "\n".join(CDEF_BLOCK.findall(header.read_text()))


cdefs = sorted(HERE.glob("*.cdef"))
headers = sorted(HERE.glob("*.h"))
ffibuilder.cdef("\n".join([p.read_text() for p in cdefs] + [header_cdefs(h) for h in headers]))

sources = sorted(HERE.glob("*.c"))
# The paths must be relative to the project root for setuptools.
root = HERE.parent
rel = lambda p: os.path.relpath(p, root)  # noqa: E731

ffibuilder.set_source(
    "heliosdb._native",
    "\n".join(f'#include "{h.name}"' for h in headers),
    sources=[rel(p) for p in sources],
    include_dirs=[rel(HERE)],
    libraries=["crypto"],
    extra_compile_args=["-O2", "-fvisibility=default", "-Wall", "-Wno-unused-function"]
    + (["-UNDEBUG"] if os.environ.get("HELIOSDB_NATIVE_ASSERTS") == "1" else []),
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(root / "build"), verbose=True)
