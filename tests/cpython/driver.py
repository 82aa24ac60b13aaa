"""Run CPython's sqlite3 test package in this process, one line of JSON per test outcome.

Usage: python driver.py MODULE OUT_FILE [COPY_DIR]

MODULE is ``sqlite3`` (the stdlib, the tests as shipped) or ``heliosdb``: then COPY_DIR holds
a copy of the package whose ``import sqlite3`` lines were rewritten by
test_cpython_sqlite3_suite.py, and it is put in place of the stdlib's package (no other line
of the tests changes). The package is ``test.test_sqlite3`` on 3.11+ (modules ``test_*.py``)
and ``sqlite3.test`` on 3.10 (modules named after their subject, each with a ``suite()``
that says which of its TestCase classes run, as 3.10's ``test.test_sqlite`` calls them).
Each test's "start" line is written and flushed before it runs, so a test that kills the
interpreter is seen as a crash rather than lost.
"""
from __future__ import annotations

import json
import sys
import unittest


def main() -> int:
    module, out_file = sys.argv[1], sys.argv[2]
    legacy = sys.version_info < (3, 11)
    import importlib

    parent = importlib.import_module("sqlite3" if legacy else "test")
    package = "sqlite3.test" if legacy else "test.test_sqlite3"
    if module != "sqlite3":
        copy_dir = sys.argv[3]
        # Our rewritten copy answers for the package (it imports its helpers from there).
        parent.__path__.insert(0, copy_dir)
    pkg = importlib.import_module(package)

    if module != "sqlite3":
        assert pkg.__file__.startswith(copy_dir), pkg.__file__
    out = open(out_file, "w", buffering=1)

    def emit(**kw: object) -> None:
        out.write(json.dumps(kw) + "\n")
        out.flush()

    class Result(unittest.TextTestResult):
        def startTest(self, t):  # noqa: N802
            emit(id=t.id(), outcome="start")
            super().startTest(t)

        def addSuccess(self, t):  # noqa: N802
            emit(id=t.id(), outcome="pass")
            super().addSuccess(t)

        def addFailure(self, t, err):  # noqa: N802
            emit(id=t.id(), outcome="fail", detail=self._exc_info_to_string(err, t)[-1500:])
            super().addFailure(t, err)

        def addError(self, t, err):  # noqa: N802
            emit(id=t.id(), outcome="error", detail=self._exc_info_to_string(err, t)[-1500:])
            super().addError(t, err)

        def addSkip(self, t, reason):  # noqa: N802
            emit(id=t.id(), outcome="skip", detail=reason)
            super().addSkip(t, reason)

        def addExpectedFailure(self, t, err):  # noqa: N802
            emit(id=t.id(), outcome="xfail")
            super().addExpectedFailure(t, err)

        def addUnexpectedSuccess(self, t):  # noqa: N802
            emit(id=t.id(), outcome="xpass")
            super().addUnexpectedSuccess(t)

        def addSubTest(self, t, sub, err):  # noqa: N802
            if err is not None:
                kind = "fail" if issubclass(err[0], t.failureException) else "error"
                emit(id=t.id(), outcome=kind, detail=f"{sub}: "
                     + self._exc_info_to_string(err, t)[-1500:])
            super().addSubTest(t, sub, err)

    loader = unittest.TestLoader()
    # What load_tests does (discover the package's test_*.py), by module name so that the
    # rewritten copy is loaded under the same names as the original.
    import os

    pkg_dir = os.path.dirname(pkg.__file__)
    if legacy:
        names = sorted(f[:-3] for f in os.listdir(pkg_dir)
                       if f.endswith(".py") and f != "__init__.py")
        suite = unittest.TestSuite(importlib.import_module(f"{package}.{n}").suite()
                                   for n in names)
    else:
        names = sorted(f[:-3] for f in os.listdir(pkg_dir)
                       if f.startswith("test_") and f.endswith(".py"))
        suite = unittest.TestSuite(loader.loadTestsFromName(f"{package}.{n}") for n in names)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=0, resultclass=Result)
    runner.run(suite)
    emit(id="<end>", outcome="end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
