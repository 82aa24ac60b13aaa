"""Defects found by the reliability suites (issue 9), each pinned by a minimal test.

Fixed ones stay as regression tests. An open one is ``xfail(strict=True)`` until the fix
described in its reason lands; then strict xfail turns the pass into a failure and the
marker must be removed. Everything runs in a subprocess (the C shim is involved).
"""
from __future__ import annotations

import json

import pytest

from heliosdb import native

from helpers.reliability import died_of_signal, run_child

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")

# A database whose pages past page 1 are all damaged: connect() opens the file (page 1 is
# fine) and then fails inside the audit set-up, which reads the audit table.
DAMAGE = r"""
import gc, json, os, shutil, sys
import heliosdb
from heliosdb.crypto import vfs as _vfs
from helpers.reliability import KEY, payload
d = sys.argv[1]
path = os.path.join(d, "x.db")
c = heliosdb.connect(path, key=KEY, config="default", audit_user="u")
c.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
c.executemany("INSERT INTO t VALUES (?, ?)", [(k, payload(k)) for k in range(300)])
c.commit()
c.close()
shutil.copy(path, path + ".good")
ps = int.from_bytes(open(path, "rb").read()[48:52], "big")
data = bytearray(open(path, "rb").read())
npages = (len(data) - 4096) // ps
out = {"pages": npages}
what = sys.argv[2]
if what == "select":
    # Damage only the last page (table data): connect works, the SELECT hits it.
    data[4096 + (npages - 1) * ps + 7] ^= 1
else:
    for p in range(1, npages):
        data[4096 + p * ps + 7] ^= 1
open(path, "wb").write(data)
gc.disable()      # what a long-lived process sees between two collections
c = None
try:
    c = heliosdb.connect(path, key=KEY, config="default", audit_user="u")
    out["opened"] = True
    c.execute("SELECT count(*), sum(length(v)) FROM t").fetchall()
except heliosdb.Error as e:
    out["exc"] = type(e).__name__
    out["page"] = getattr(e, "page", None)
    out["code"] = getattr(e, "sqlite_errorname", None)
if c is not None:
    c.close()
out["registered_after_failure"] = _vfs.key_info(_vfs.full_pathname(path)) is not None
# The operator restores another copy (a new database, new file id) at the same path.
os.remove(path)
try:
    n = heliosdb.connect(path, key=KEY, config="default", audit_user="u")
    n.execute("CREATE TABLE IF NOT EXISTS z(a)")
    n.close()
    out["reopen"] = "ok"
except heliosdb.Error as e:
    out["reopen"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"""


def _run(tmp_path, what):
    p = run_child(DAMAGE, str(tmp_path), what, timeout=120)
    assert not died_of_signal(p), p.stderr
    return p


def test_tampered_page_during_select_is_corrupt_page_error(tmp_path):
    """Found: a page failing authentication inside a DB-API statement surfaced as
    OperationalError 'disk I/O error' instead of CorruptPageError naming file and page."""
    p = _run(tmp_path, "select")
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out.get("exc") == "CorruptPageError" and out.get("page") == out["pages"], out


def test_failed_connect_releases_the_key(tmp_path):
    """Found: a connect() failing after the open (the audit set-up read a damaged page)
    left the key registered until a garbage collection; reopening the path with another
    database then failed with 'is open in this process with another key'."""
    p = _run(tmp_path, "open")
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out.get("exc"), out
    assert out["registered_after_failure"] is False and out["reopen"] == "ok", out


MAGIC = r"""
import json, os, sys
import heliosdb
from helpers.reliability import KEY
p = os.path.join(sys.argv[1], "m.db")
c = heliosdb.connect(p, key=KEY)
c.execute("CREATE TABLE t(x)")
c.commit()
c.close()
data = bytearray(open(p, "rb").read())
data[3] ^= 0x01                    # one bit of the 16-byte magic
open(p, "wb").write(data)
out = {}
try:
    heliosdb.connect(p, key=KEY)
except heliosdb.Error as e:
    out = {"exc": type(e).__name__, "msg": str(e),
           "not_encrypted": isinstance(e, heliosdb.NotEncryptedError)}
print(json.dumps(out))
"""


def test_damaged_magic_is_not_reported_as_plaintext(tmp_path):
    p = run_child(MAGIC, str(tmp_path), timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out.get("exc") and not out["not_encrypted"], out


def test_tampered_page_during_connect_is_corrupt_page_error(tmp_path):
    p = _run(tmp_path, "open")
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out.get("exc") == "CorruptPageError" and out.get("page"), out
