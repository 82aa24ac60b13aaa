"""Code the test suites share (no tests here, so pytest collects nothing from it).

Importable as ``helpers`` because the pytest config puts ``tests/`` on ``sys.path``
(``pythonpath`` in pyproject.toml) and ``tests/conftest.py`` puts it on ``PYTHONPATH``
for the child interpreters the tests start.
"""
from __future__ import annotations

import os

#: The tests/ directory (the parent of this package).
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
