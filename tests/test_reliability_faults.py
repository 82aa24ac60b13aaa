"""Disk full and I/O errors (issue 9, part 4), injected beneath the encrypting C shim.

Two injectors, each in a fresh interpreter:

* A fault VFS: an APSW Python VFS over "unix" becomes the default VFS before heliosdb
  loads its extension, so the shim (which wraps the default VFS found at load time) sits
  on top of it. It fails the N-th write, sync, truncate or read after it is armed, once
  (a transient error) or from then on until disarmed (a device that stays broken), with
  SQLITE_FULL or SQLITE_IOERR. The loop runs N = 1.. over a transaction (insert, update,
  commit) on an encrypted, audited database, in WAL and DELETE journal mode.
* RLIMIT_FSIZE with SIGXFSZ ignored: a real short write / EFBIG from the kernel, as on a
  full disk, under a file-size limit slightly above the database's size.

What must hold: the failing call raises ``heliosdb.OperationalError`` (nothing else, no
apsw exception, no crash); once the fault clears, the same connection goes on working;
the table holds either the state before the transaction or the state after it (after
it only if commit() did not fail, or the commit record reached the disk before the
fault); integrity_check and the audit chain are ok, in the process and in a fresh one.
"""
from __future__ import annotations

import json

import pytest

import heliosdb
from heliosdb import native

from helpers.reliability import KEY, died_of_signal, read_state, run_child

pytestmark = pytest.mark.skipif(not native.available(), reason="native extension not built")

FAULT_CHILD = r"""
import json, sys
import apsw

class Injector:
    op = None; countdown = 0; persistent = False; code = "io"; fired = False; hits = 0
    def arm(self, op, n, persistent, code):
        self.op, self.countdown, self.persistent, self.code = op, n, persistent, code
        self.fired = False
    def disarm(self):
        self.op = None
    def tick(self, op, name):
        if self.op != op or name.endswith("-shm"):
            return
        if self.fired and self.persistent:
            self.fail()
        if self.fired:
            return
        self.countdown -= 1
        if self.countdown <= 0:
            self.fired = True
            self.hits += 1
            self.fail()
    def fail(self):
        # exception_for() carries the result codes, as SQLite's own error would.
        code = apsw.SQLITE_FULL if self.code == "full" else CODES[self.op]
        raise apsw.exception_for(code)

CODES = {"write": apsw.SQLITE_IOERR_WRITE, "sync": apsw.SQLITE_IOERR_FSYNC,
         "truncate": apsw.SQLITE_IOERR_TRUNCATE, "read": apsw.SQLITE_IOERR_READ}

INJ = Injector()

class FaultFile(apsw.VFSFile):
    def __init__(self, name, flags):
        self.fname = (name.filename() if hasattr(name, "filename") else name) or "(temp)"
        super().__init__("unix", name, flags)
    def xWrite(self, data, offset):
        INJ.tick("write", self.fname); return super().xWrite(data, offset)
    def xSync(self, flags):
        INJ.tick("sync", self.fname); return super().xSync(flags)
    def xTruncate(self, size):
        INJ.tick("truncate", self.fname); return super().xTruncate(size)
    def xRead(self, amount, offset):
        INJ.tick("read", self.fname); return super().xRead(amount, offset)

from helpers.shim_vfs import install_default_vfs
vfs = install_default_vfs("faulty", FaultFile)
import heliosdb
from helpers.reliability import KEY, payload, read_state

path, jmode, op, code, persistent, maxn = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1", int(sys.argv[6])
conn = heliosdb.connect(path, key=KEY, config="default", audit_user="faults", timeout=5)
conn.execute("PRAGMA journal_mode=" + jmode)
conn.execute("PRAGMA cache_size=8")
conn.execute("CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, n INTEGER NOT NULL, tag TEXT NOT NULL, v BLOB NOT NULL)")
conn.commit()
if op == "read" and not conn.execute("SELECT count(*) FROM t").fetchone()[0]:
    conn.executemany("INSERT INTO t(k, n, tag, v) VALUES (?, 0, 'tx0', ?)", [(k, payload(k)) for k in range(1, 80)])
    conn.commit()
state = read_state(conn)
out = {"tries": 0, "errors": {}, "committed": 0, "lost": 0, "unclean": 0}

def after_write(state, tx, keys):
    s = dict(state)
    for k in keys:
        s[k] = (0, "tx%d" % tx, payload(k))
    for k in list(s)[:3]:
        if k not in keys:
            n, _t, v = s[k]
            s[k] = (n + 1, "tx%d" % tx, v)
    return s

def check_chain():
    rep = conn.audit.verify()
    assert rep.ok, rep
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

for n in range(1, maxn + 1):
    tx = n
    keys = [tx * 1000 + i for i in range(4 if op != "read" else 0)] if op != "read" else []
    failed = None
    if op == "read":
        # A fresh connection with an empty cache reads pages through the fault.
        r = heliosdb.connect(path, key=KEY, config="default", audit_user="reader", timeout=5)
        INJ.arm(op, n, persistent, code)
        try:
            got = read_state(r)
            assert got == state, "a read under faults returned other data"
        except heliosdb.Error as e:
            failed = e
        finally:
            INJ.disarm()
            r.close()
    else:
        expect = after_write(state, tx, keys)
        INJ.arm(op, n, persistent, code)
        try:
            conn.executemany("INSERT INTO t(k, n, tag, v) VALUES (?, 0, 'tx%d', ?)" % tx,
                             [(k, payload(k)) for k in keys])
            conn.execute("UPDATE t SET n = n + 1, tag = 'tx%d' WHERE k IN (SELECT k FROM t "
                         "WHERE k NOT IN (SELECT value FROM json_each(?)) ORDER BY k LIMIT 3)" % tx,
                         (json.dumps(keys),))
            # Big enough to spill the 8-page cache: writes reach the database/WAL before commit.
            conn.execute("INSERT INTO t(k, n, tag, v) SELECT -value - %d, 0, 'scratch', randomblob(900) FROM json_each(?)" % (tx * 100),
                         (json.dumps(list(range(40))),))
            conn.execute("DELETE FROM t WHERE tag = 'scratch'")
            conn.commit()
            if jmode == "wal" and n % 2:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except heliosdb.Error as e:
            failed = e
        finally:
            INJ.disarm()
        if failed is not None:
            try:
                conn.rollback()
            except heliosdb.Error:
                out["unclean"] += 1
        got = read_state(conn)
        if failed is None:
            assert got == expect, "commit returned but the data is not there"
            out["committed"] += 1
        else:
            assert got in (state, expect), "neither the state before nor after the transaction"
            out["committed" if got == expect else "lost"] += 1
        state = got
    out["tries"] += 1
    if failed is not None:
        name = type(failed).__name__ + ":" + str(getattr(failed, "sqlite_errorname", None))
        out["errors"][name] = out["errors"].get(name, 0) + 1
        if not isinstance(failed, heliosdb.OperationalError):
            print("NOT-OPERATIONAL", repr(failed), file=sys.stderr)
            sys.exit(3)
    check_chain()
    if not INJ.fired:
        break       # N passed the number of operations: every position was tried
out["hits"] = INJ.hits
conn.close()
print(json.dumps(out))
"""


def check_fresh(path, expect_rows=None):
    conn = heliosdb.connect(path, key=KEY, config="default", audit_user="checker")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rep = conn.audit.verify()
        assert rep.ok, rep
        state = read_state(conn)
        ids = [r[0] for r in conn.execute("SELECT id FROM __audit_log ORDER BY id")]
        assert ids == list(range(1, len(ids) + 1))
    finally:
        conn.close()
    assert heliosdb.audit.verify(path, key=KEY).ok
    return state


CASES = [(j if (op != "truncate" or j == "wal") else "truncate", op, code, pers)
         for j in ("wal", "delete")
         for op, code, pers in (("write", "io", False), ("write", "full", True),
                                ("sync", "io", False), ("sync", "io", True),
                                ("truncate", "io", True), ("read", "io", False),
                                ("read", "io", True))]


def run_fault_case(tmp_path, jmode, op, code, persistent, maxn):
    path = str(tmp_path / f"f-{jmode}-{op}-{code}.db")
    p = run_child(FAULT_CHILD, path, jmode, op, code, "1" if persistent else "0", maxn,
                  timeout=300)
    assert not died_of_signal(p), p.stderr
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["hits"] > 0, out
    assert out["errors"], out
    assert all(k.startswith("OperationalError") for k in out["errors"]), out
    check_fresh(path)
    return out


@pytest.mark.parametrize("jmode,op,code,persistent", CASES,
                         ids=[f"{j}-{o}-{c}-{'stuck' if p else 'once'}" for j, o, c, p in CASES])
def test_injected_io_faults(tmp_path, jmode, op, code, persistent):
    out = run_fault_case(tmp_path, jmode, op, code, persistent, maxn=12)
    print(f"\n[faults {jmode} {op} {code}] {out}")


# The open finding of 2026-11-25 (DELETE journal mode: after a write fault SQLite re-read a
# page whose write never reached the file, and the shim refused it as all zeros instead of
# an OperationalError) no longer reproduces since the log has three indexes instead of six
# (2026-12-06: 66 write positions, every one an OperationalError, integrity and chain
# intact after). Fewer pages per transaction may only hide it: these cases now assert the
# right behaviour, so a change that brings it back fails here.
def _every_position_cases():
    for j, o, c, p in CASES:
        yield pytest.param(j, o, c, p, id=f"{j}-{o}-{c}-{'stuck' if p else 'once'}")


@pytest.mark.slow
@pytest.mark.parametrize("jmode,op,code,persistent", list(_every_position_cases()))
def test_injected_io_faults_every_position(tmp_path, jmode, op, code, persistent):
    out = run_fault_case(tmp_path, jmode, op, code, persistent, maxn=400)
    print(f"\n[faults-all {jmode} {op} {code}] {out}")


FSIZE_CHILD = r"""
import json, os, resource, signal, sys
import heliosdb
from helpers.reliability import KEY, payload, read_state
path, jmode = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
conn = heliosdb.connect(path, key=KEY, config="default", audit_user="fsize", timeout=5)
conn.execute("PRAGMA journal_mode=" + jmode)
conn.execute("CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY, n INTEGER NOT NULL, tag TEXT NOT NULL, v BLOB NOT NULL)")
conn.executemany("INSERT INTO t VALUES (?, 0, 'tx1', ?)", [(k, payload(k)) for k in range(1, 50)])
conn.commit()
if jmode == "wal":
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
before = read_state(conn)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path) + 64 * 1024, hard))
err = None
k = 1000
try:
    for i in range(200):          # grow until the "disk" is full
        conn.executemany("INSERT INTO t VALUES (?, 0, 'tx%d', ?)" % (i + 2),
                         [(k + j, payload(k + j)) for j in range(20)])
        k += 20
        conn.commit()
        before = read_state(conn)
except heliosdb.Error as e:
    err = e
finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
assert err is not None, "the size limit was never hit"
conn.rollback()
after_fault = read_state(conn)
assert after_fault == before, "the failed transaction left changes behind"
rep = conn.audit.verify()
assert rep.ok, rep
assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
# The fault cleared: the same connection writes again.
conn.executemany("INSERT INTO t VALUES (?, 0, 'txlast', ?)", [(k, payload(k)) for k in range(5_000_000, 5_000_010)])
conn.commit()
n = conn.execute("SELECT count(*) FROM t").fetchone()[0]
conn.close()
print(json.dumps({"type": type(err).__name__, "name": err.sqlite_errorname, "msg": str(err),
                  "rows": n, "is_operational": isinstance(err, heliosdb.OperationalError)}))
"""


@pytest.mark.parametrize("jmode", ["wal", "delete"])
def test_disk_full_rlimit_fsize(tmp_path, jmode):
    path = str(tmp_path / f"full-{jmode}.db")
    p = run_child(FSIZE_CHILD, path, jmode, timeout=120)
    assert not died_of_signal(p), p.stderr
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["is_operational"], out
    assert out["name"] in ("SQLITE_FULL", "SQLITE_IOERR_WRITE"), out
    assert "full" in out["msg"] or "I/O" in out["msg"], out
    state = check_fresh(path)
    assert len(state) == out["rows"]
    print(f"\n[disk full {jmode}] {out}")
