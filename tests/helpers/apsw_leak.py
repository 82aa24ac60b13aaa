"""APSW 3.54.0, the newest APSW built for Python 3.10, leaks a reference to a cursor that
is running when another cursor is made from one of its callbacks (an exec tracer issuing
BEGIN, a hook or function running SQL); 3.54.1 (3.11+ only) and 3.53.4 do not. A leaked
cursor keeps its connection alive, so a connection dropped without close() is never
collected on 3.10: what it writes when collected is not written. The tests of that are
expected to fail there, not strictly (a fix turns them into XPASS)."""
from __future__ import annotations

import sys

import pytest

_PY310 = sys.version_info < (3, 11)

#: The tests that the execute path's implicit BEGIN leaks (issue 17 item 4 fixes it).
BEGIN_LEAK = pytest.mark.xfail(
    _PY310, strict=False,
    reason="APSW 3.54.0 on Python 3.10: a BEGIN issued from an exec tracer leaks the cursor "
           "(fixed in the execute path by issue 17 item 4)")

#: A connection left open at interpreter exit: leaked also by the audit's own statements
#: at connect, so the execute path's fix alone may not cover it.
EXIT_LEAK = pytest.mark.xfail(
    _PY310, strict=False,
    reason="APSW 3.54.0 on Python 3.10: a cursor made while another runs leaks the running "
           "cursor (the implicit BEGIN, the audit's statements at connect), so a connection "
           "left open is never collected and its LOGOUT at exit is not written")
