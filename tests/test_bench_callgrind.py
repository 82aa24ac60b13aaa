"""bench/callgrind.py reads callgrind_annotate's caller tree into call edges (issue 18:
where an audited statement's instructions go). The parser runs on a fixed excerpt of
real ``callgrind_annotate --tree=caller --inclusive=yes`` output; valgrind is not needed.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import callgrind  # noqa: E402

# Shortened from a run of bench/audit_callgrind.py (heliosdb-audit, single): a function's
# callers ("<", the inclusive cost of their calls), then the function ("*", its inclusive
# cost); the same function listed again under another spelling of its file, without
# callers; a recursion mark and a compiler clone suffix.
EXCERPT = """\
  326,394,632 (17.88%)  < /tmp/x/Objects/methodobject.c:cfunction_call (8x) [/usr/lib/libpython3.11.so.1.0]
  326,394,632 (17.88%)  *  /tmp/b/heliosdb._native.c:_cffi_f_heliosdb_log_append [/w/heliosdb/_native.abi3.so]

  322,054,816 (17.65%)  < /tmp/b/heliosdb._native.c:_cffi_f_heliosdb_log_append (8x) [/w/heliosdb/_native.abi3.so]
  322,054,816 (17.65%)  *  /work/main/csrc/chain.c:heliosdb_log_append

  322,054,816 (17.65%)  *  csrc/chain.c:heliosdb_log_append [/w/heliosdb/_native.abi3.so]

  156,122,843 ( 8.55%)  < /work/main/csrc/chain.c:heliosdb_log_append (8,000x) [/w/heliosdb/_native.abi3.so]
   20,405,203 ( 1.12%)  < ???:APSWCursor_step (8,131x) [/w/apsw/__init__.so]
        1,430 ( 0.00%)  < ???:sqlite3_exec (1x) [/w/apsw/__init__.so]
  176,529,476 ( 9.67%)  *  ???:sqlite3_step [/w/apsw/__init__.so]

   16,883,328 ( 0.93%)  < /work/main/csrc/chain.c:merkle_fold.part.0 (7,994x) [/w/heliosdb/_native.abi3.so]
   90,936,800 ( 4.98%)  < /work/main/csrc/chain.c:heliosdb_log_append (16,000x) [/w/heliosdb/_native.abi3.so]
  107,820,128 ( 5.91%)  *  ???:SHA256_Update [/usr/lib/libcrypto.so.3]

    1,000,000 ( 0.05%)  < /x/Python/ceval.c:_PyEval_EvalFrameDefault'2 (3x) [/usr/lib/libpython3.11.so.1.0]
    1,000,000 ( 0.05%)  *  /x/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/usr/lib/libpython3.11.so.1.0]
"""


def test_call_edges_by_caller():
    e = callgrind.call_edges(EXCERPT)
    assert e[("sqlite3_step", "heliosdb_log_append")] == 156_122_843
    assert e[("sqlite3_step", "APSWCursor_step")] == 20_405_203
    assert e[("sqlite3_step", "sqlite3_exec")] == 1_430
    assert e[("sqlite3_step", "")] == 176_529_476
    # the clone suffix and the recursion mark are not part of a name
    assert e[("SHA256_Update", "merkle_fold")] == 16_883_328
    assert e[("_PyEval_EvalFrameDefault", "_PyEval_EvalFrameDefault")] == 1_000_000


def test_a_function_listed_twice_is_counted_once():
    e = callgrind.call_edges(EXCERPT)
    assert e[("heliosdb_log_append", "")] == 322_054_816
    assert e[("heliosdb_log_append", "_cffi_f_heliosdb_log_append")] == 322_054_816


def test_bare_names():
    assert callgrind._bare("/work/main/csrc/chain.c:merkle_fold.part.0") == "merkle_fold"
    assert callgrind._bare("???:sqlite3_step") == "sqlite3_step"
    assert callgrind._bare("/x/ceval.c:_PyEval_EvalFrameDefault'2") == \
        "_PyEval_EvalFrameDefault"
