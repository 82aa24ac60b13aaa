"""The shim's counters have one definition, ``enum heliosdb_stat`` in csrc/vfs_api.h:
Python names them from the built module, and the built module must match the header."""
from __future__ import annotations

import re
from pathlib import Path

import apsw
import pytest

from heliosdb import crypto, native
from heliosdb.crypto import vfs as shim

HEADER = Path(__file__).resolve().parent.parent / "csrc" / "vfs_api.h"

pytestmark = pytest.mark.skipif(not native.available(), reason="the native extension is not built")


def header_stat_names():
    """The counter names as the header spells them, in order, HELIOSDB_STAT_COUNT left out."""
    body = re.search(r"enum heliosdb_stat \{(.*?)\};", HEADER.read_text(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = re.findall(r"HELIOSDB_STAT_(\w+)\s*=", body)
    assert names[-1] == "COUNT"
    return tuple(n.lower() for n in names[:-1])


def test_python_names_the_counters_of_the_built_header():
    """A stale build, or a cdef out of step with the header, fails here."""
    assert shim.stat_names() == header_stat_names()
    assert len(shim.stat_names()) == native.lib.HELIOSDB_STAT_COUNT


def test_stats_counts_the_work_of_an_encrypted_database(tmp_path):
    """Each name reads its own counter: writing pages moves page_encryptions."""
    shim.ensure_loaded()
    before = shim.stats()
    conn = crypto.open_connection(str(tmp_path / "e.db"),
                                  flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
                                  uri=False, key=bytes(range(32)), encryption=None)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    after = shim.stats()
    assert set(after) == set(shim.stat_names())
    assert after["page_encryptions"] > before["page_encryptions"]
