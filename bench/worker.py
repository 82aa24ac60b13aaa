#!/usr/bin/env python3
"""One engine x one workload, measured in a fresh interpreter.

Run by ``bench/run.py``; never imported by heliosdb. It uses the standard library
plus the engine's own module only, because it also runs inside the peers' venvs
(``bench/.venvs/``), where neither heliosdb nor the project's apsw is installed.

    python bench/worker.py --probe ENGINE
    python bench/worker.py ENGINE WORKLOAD --sizes JSON --workdir DIR --fixtures DIR

The last line of stdout is ``@@RESULT {json}`` with one of these shapes:

    {"status": "ok", "seconds": 1.23, "extra": {...}}
    {"status": "na", "reason": "..."}          (the engine cannot run this workload)
    {"status": "unavailable", "reason": "..."} (a feature of the engine is missing)
    {"status": "error", "reason": "..."}       (it should have worked and did not)

Only the workload body is timed (``time.perf_counter``); building data and fixtures,
opening (except in W7) and closing are not.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import sys
import time
import traceback

# Benchmark-only secrets: fixed so every engine encrypts under the same key.
KEY = bytes(range(32))
NEW_KEY = bytes(range(32, 64))
PASSPHRASE = "correct horse battery staple"
MARKER = "heliosbenchplaintextmarker"
AUDIT_USERS = ("alice", "bob", "carol", "dave")

POOL = "".join(random.Random(7).choice("abcdefghijklmnopqrstuvwxyz ,.0123456789")
               for _ in range(4096))


class NotApplicable(Exception):
    """This engine cannot run this workload (reported as n/a with the reason)."""


class Unavailable(Exception):
    """A feature this engine needs is not there (yet): reported with the reason."""


# --------------------------------------------------------------------------- helpers


def scalar(conn, sql, params=()):
    """First column of the first row; the statement is run to completion."""
    rows = conn.execute(sql, params).fetchall()
    return rows[0][0] if rows else None


def rows_t(n, seed=1, start=1):
    """n rows for table t(id, a, b, c): about 100 bytes each, deterministic."""
    rnd = random.Random(seed)
    out = []
    for i in range(start, start + n):
        o = rnd.randrange(0, 3000)
        out.append((i, rnd.randrange(1 << 30), POOL[o:o + rnd.randrange(40, 80)], rnd.random()))
    return out


T_SCHEMA = "CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL)"
T_INSERT = "INSERT INTO t(id, a, b, c) VALUES (?, ?, ?, ?)"


def copy_db(src, dst):
    """Copy a database and any side file that shares its name (journal, WAL, sidecars)."""
    for f in glob.glob(glob.escape(src) + "*"):
        shutil.copyfile(f, dst + f[len(src):])


def file_size(path):
    return sum(os.path.getsize(f) for f in glob.glob(glob.escape(path) + "*"))


# --------------------------------------------------------------------------- engines


class Engine:
    name = ""
    encrypted = False
    audited = False
    has_passphrase = False

    # -- to override
    def _connect(self, path, passphrase=None, profile=None):
        raise NotImplementedError

    def info(self):
        return {}

    # -- common
    def open(self, path, *, wal=False, cache_size=None, passphrase=None, profile=None):
        conn = self._connect(path, passphrase=passphrase, profile=profile)
        if wal:
            mode = scalar(conn, "PRAGMA journal_mode=WAL")
            if str(mode).lower() != "wal":
                raise RuntimeError(f"journal_mode=WAL refused (got {mode!r})")
            conn.execute("PRAGMA synchronous=NORMAL")
        if cache_size is not None:
            conn.execute(f"PRAGMA cache_size={int(cache_size)}")
        return conn

    def after_schema(self, conn, table):
        """Called after each user table is created (the trigger engine adds its triggers)."""

    def close(self, conn):
        conn.close()

    def is_plaintext(self, path):
        """True when the marker string is readable in any file of the database."""
        for f in glob.glob(glob.escape(path) + "*"):
            with open(f, "rb") as fh:
                if MARKER.encode() in fh.read():
                    return True
        return False


class Sqlite3Engine(Engine):
    name = "sqlite3"

    def __init__(self):
        import sqlite3
        self.mod = sqlite3

    def _connect(self, path, passphrase=None, profile=None):
        return self.mod.connect(path, isolation_level=None)

    def info(self):
        return {"module": f"sqlite3 (stdlib, Python {sys.version.split()[0]})",
                "sqlite_version": self.mod.sqlite_version}


class ApswEngine(Engine):
    name = "apsw"

    def __init__(self):
        import apsw
        self.mod = apsw

    def _connect(self, path, passphrase=None, profile=None):
        return self.mod.Connection(path)

    def info(self):
        return {"module": f"apsw {self.mod.apswversion()}",
                "sqlite_version": self.mod.sqlite_lib_version()}


class TriggerAuditEngine(ApswEngine):
    """Plain APSW plus AFTER INSERT/UPDATE/DELETE triggers writing an audit table:
    what users hand-write. Records operation, table, rowid and a UTC time (no row
    values, no actor, no chain: that is what triggers can do on their own)."""
    name = "apsw-trigger"
    audited = True

    def after_schema(self, conn, table):
        conn.execute(
            "CREATE TABLE IF NOT EXISTS audit_log(id INTEGER PRIMARY KEY, "
            "ts TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')), "
            "operation TEXT NOT NULL, target TEXT NOT NULL, row_id INTEGER)")
        for op, ref in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
            conn.execute(
                f"CREATE TRIGGER {table}_audit_{op.lower()} AFTER {op} ON {table} BEGIN "
                f"INSERT INTO audit_log(operation, target, row_id) "
                f"VALUES ('{op}', '{table}', {ref}.rowid); END")


class HeliosEngine(Engine):
    """heliosdb.connect(path[, key=...][, config="default"]), stdlib-sqlite3 style."""
    name = "heliosdb"

    def __init__(self, encrypted=False, audited=False):
        import heliosdb
        self.mod = heliosdb
        self.encrypted = encrypted
        self.audited = audited
        self.has_passphrase = encrypted
        self.name = "heliosdb" + {(False, False): "", (True, False): "-enc",
                                  (False, True): "-audit", (True, True): "-enc-audit"}[
            (encrypted, audited)]
        if not hasattr(heliosdb, "connect"):
            raise Unavailable("heliosdb.connect does not exist yet")
        if encrypted and not heliosdb.native_available():
            why = ""
            try:
                why = heliosdb.native.unavailable_reason() or ""
            except Exception:
                pass
            raise Unavailable("native extension not available" + (f": {why}" if why else ""))

    def kwargs(self, passphrase=None, profile=None, user=None):
        kw = {}
        if self.encrypted:
            kw["key"] = passphrase if passphrase is not None else KEY
            if profile is not None:  # encryption.kdf_profile in the config
                kw["config"] = {"encryption": {"kdf_profile": profile}}
        if self.audited:
            kw["config"] = "default"
            if user is not None:
                kw["audit_user"] = user
        return kw

    def _connect(self, path, passphrase=None, profile=None, user=None):
        kw = self.kwargs(passphrase, profile, user)
        try:
            return self._connect_kw(path, kw)
        except Exception as exc:
            if profile is None or "enabled" not in str(exc):
                raise
        kw["config"]["encryption"]["enabled"] = True  # a config that must say so
        return self._connect_kw(path, kw)

    def _connect_kw(self, path, kw):
        try:
            return self.mod.connect(path, isolation_level=None, **kw)
        except TypeError as exc:
            if "isolation_level" not in str(exc):
                raise
        conn = self.mod.connect(path, **kw)
        conn.isolation_level = None
        return conn

    def info(self):
        d = {"module": f"heliosdb {getattr(self.mod, 'version', '?')}"}
        try:
            import apsw
            d["sqlite_version"] = apsw.sqlite_lib_version()
        except Exception:
            pass
        d["native"] = bool(self.mod.native_available())
        try:
            import heliosdb.audit.chain as chain
            d["chain_impl"] = getattr(chain, "__impl__", "?")
        except Exception:
            pass
        d["module"] += (f" (native extension: {'yes' if d['native'] else 'no'}"
                        + (f", chain: {d['chain_impl']}" if self.audited and "chain_impl" in d
                           else "") + ")")
        return d

    def audit_table(self, conn):
        audit = getattr(conn, "audit", None)
        return getattr(audit, "table_name", None) or "__audit_log"

    def kdf_profiles(self):
        """Names of the KDF profiles heliosdb declares, wherever it keeps them."""
        import importlib
        for modname, attr in (("heliosdb.config", "KDF_PROFILES"), ("heliosdb", "KDF_PROFILES"),
                              ("heliosdb.crypto", "KDF_PROFILES"),
                              ("heliosdb.crypto.kdf", "PROFILES"),
                              ("heliosdb.crypto.kdf", "KDF_PROFILES"),
                              ("heliosdb.crypto.keys", "KDF_PROFILES")):
            try:
                obj = getattr(importlib.import_module(modname), attr)
            except Exception:
                continue
            if hasattr(obj, "keys"):
                return list(obj.keys())
            if isinstance(obj, (list, tuple)):
                return [str(x) for x in obj]
        return []


class SqlCipherEngine(Engine):
    """SQLCipher through sqlcipher3: raw 256-bit key via PRAGMA key = "x'...'" (no KDF)."""
    name = "sqlcipher"
    encrypted = True
    has_passphrase = True

    def __init__(self):
        try:
            import sqlcipher3 as mod
        except ImportError:
            from pysqlcipher3 import dbapi2 as mod  # type: ignore
        self.mod = mod

    def _connect(self, path, passphrase=None, profile=None):
        conn = self.mod.connect(path, isolation_level=None)
        if passphrase is None:
            conn.execute(f"PRAGMA key = \"x'{KEY.hex()}'\"")
        else:
            conn.execute("PRAGMA key = '%s'" % passphrase.replace("'", "''"))
        scalar(conn, "SELECT count(*) FROM sqlite_master")
        return conn

    def info(self):
        conn = self.mod.connect(":memory:")
        ver = scalar(conn, "PRAGMA cipher_version")
        conn.execute(f"PRAGMA key = \"x'{KEY.hex()}'\"")
        prov = scalar(conn, "PRAGMA cipher_provider")
        conn.close()
        return {"module": f"{self.mod.__name__} (SQLCipher {ver}, crypto: {prov})",
                "sqlite_version": self.mod.sqlite_version}

    def rekey(self, conn):
        conn.execute(f"PRAGMA rekey = \"x'{NEW_KEY.hex()}'\"")


class Sqlite3mcEngine(Engine):
    """SQLite3MultipleCiphers through apsw-sqlite3mc (its module is also named apsw)."""
    encrypted = True
    has_passphrase = True

    def __init__(self, cipher=None):
        import apsw
        self.mod = apsw
        self.cipher = cipher
        self.name = "sqlite3mc" + (f"-{cipher}" if cipher else "")
        probe = apsw.Connection(":memory:")
        try:
            scalar(probe, "SELECT sqlite3mc_version()")
        except Exception as exc:
            raise Unavailable(f"this apsw is not apsw-sqlite3mc ({exc})")
        if cipher:
            got = scalar(probe, f"PRAGMA cipher = '{cipher}'")
            if str(got).lower() != cipher:
                raise Unavailable(f"cipher {cipher!r} not available (PRAGMA cipher gave {got!r})")
        probe.close()

    def _connect(self, path, passphrase=None, profile=None):
        conn = self.mod.Connection(path)
        if self.cipher:
            conn.execute(f"PRAGMA cipher = '{self.cipher}'")
        if passphrase is None:
            conn.execute(f"PRAGMA key = \"x'{KEY.hex()}'\"")
        else:
            conn.execute("PRAGMA key = '%s'" % passphrase.replace("'", "''"))
        scalar(conn, "SELECT count(*) FROM sqlite_master")
        return conn

    def info(self):
        conn = self.mod.Connection(":memory:")
        ver = scalar(conn, "SELECT sqlite3mc_version()")
        cipher = self.cipher or scalar(conn, "PRAGMA cipher")
        conn.close()
        return {"module": f"apsw-sqlite3mc {self.mod.apswversion()} ({ver}, cipher {cipher})",
                "sqlite_version": self.mod.sqlite_lib_version()}

    def rekey(self, conn):
        conn.execute(f"PRAGMA rekey = \"x'{NEW_KEY.hex()}'\"")


def make_engine(name):
    if name == "sqlite3":
        return Sqlite3Engine()
    if name == "apsw":
        return ApswEngine()
    if name == "apsw-trigger":
        return TriggerAuditEngine()
    if name.startswith("heliosdb"):
        return HeliosEngine(encrypted="-enc" in name, audited="-audit" in name)
    if name == "sqlcipher":
        return SqlCipherEngine()
    if name == "sqlite3mc":
        return Sqlite3mcEngine()
    if name == "sqlite3mc-aegis":
        return Sqlite3mcEngine("aegis")
    raise SystemExit(f"unknown engine {name}")


# --------------------------------------------------------------------------- probe


def probe(name, workdir):
    """Can this engine do what it claims? Returns a dict for run.py."""
    try:
        eng = make_engine(name)
    except Unavailable as exc:
        return {"available": False, "reason": str(exc)}
    except ImportError as exc:
        return {"available": False, "reason": f"cannot import: {exc}"}
    out = {"available": True}
    try:
        out.update(eng.info())
        path = os.path.join(workdir, f"probe-{name}.db")
        conn = eng.open(path)
        conn.execute("CREATE TABLE p(x TEXT)")
        eng.after_schema(conn, "p")
        conn.execute("INSERT INTO p VALUES (?)", (MARKER * 4,))
        got = scalar(conn, "SELECT x FROM p")
        if got != MARKER * 4:
            raise RuntimeError(f"read back {got!r}")
        if isinstance(eng, HeliosEngine) and eng.audited:
            n = scalar(conn, f"SELECT count(*) FROM {eng.audit_table(conn)}")
            if not n:
                raise Unavailable("config='default' accepted but no audit event was written")
            out["audit"] = {"events_after_probe": n,
                            "verify": hasattr(getattr(conn, "audit", None), "verify")}
        eng.close(conn)
        conn = eng.open(path)
        if scalar(conn, "SELECT count(*) FROM p") != 1:
            raise RuntimeError("row missing after reopen")
        eng.close(conn)
        if eng.encrypted and eng.is_plaintext(path):
            raise Unavailable("a key was accepted but the file holds plaintext")
        if isinstance(eng, HeliosEngine):
            out["kdf_profiles"] = eng.kdf_profiles() if eng.encrypted else []
            out["rotate_key"] = hasattr(eng.mod, "rotate_key")
    except Unavailable as exc:
        return {**out, "available": False, "reason": str(exc)}
    except Exception as exc:  # a feature that is not there yet, or broken
        return {**out, "available": False,
                "reason": f"probe failed: {type(exc).__name__}: {exc}".strip()[:300]}
    return out


# --------------------------------------------------------------------------- workloads


class Ctx:
    def __init__(self, eng, sizes, workdir, fixtures):
        self.eng = eng
        self.sizes = sizes
        self.workdir = workdir
        self.fixtures = fixtures
        self.extra = {}

    def path(self, stem):
        return os.path.join(self.workdir, f"{stem}.db")

    def fixture(self, kind, build):
        """A database built once per harness invocation (untimed), copied for each run."""
        src = os.path.join(self.fixtures, f"{self.eng.name}-{kind}.db")
        if not os.path.exists(src):
            tmp = os.path.join(self.fixtures, f"building-{self.eng.name}-{kind}.db")
            for f in glob.glob(glob.escape(tmp) + "*"):
                os.remove(f)
            build(tmp)
            for f in glob.glob(glob.escape(tmp) + "*"):
                os.replace(f, src + f[len(tmp):])
        dst = self.path(kind)
        copy_db(src, dst)
        return dst


def build_t(ctx, path, n, wal=False):
    eng = ctx.eng
    conn = eng.open(path, wal=wal)
    conn.execute(T_SCHEMA)
    eng.after_schema(conn, "t")
    data = rows_t(n)
    conn.execute("BEGIN")
    conn.executemany(T_INSERT, data)
    conn.execute("COMMIT")
    eng.close(conn)


def w1(ctx):
    """W1: bulk insert of N rows (executemany) in one transaction."""
    n = ctx.sizes["W1"]
    eng = ctx.eng
    conn = eng.open(ctx.path("w1"))
    conn.execute(T_SCHEMA)
    eng.after_schema(conn, "t")
    data = rows_t(n)
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(T_INSERT, data)
    conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    assert scalar(conn, "SELECT count(*) FROM t") == n
    eng.close(conn)
    ctx.extra["rows_per_s"] = n / dt
    return dt


def w2(ctx):
    """W2: N single-row INSERTs in autocommit mode, WAL, synchronous=NORMAL."""
    n = ctx.sizes["W2"]
    eng = ctx.eng
    conn = eng.open(ctx.path("w2"), wal=True)
    conn.execute(T_SCHEMA)
    eng.after_schema(conn, "t")
    data = rows_t(n)
    ex = conn.execute
    t0 = time.perf_counter()
    for row in data:
        ex(T_INSERT, row)
    dt = time.perf_counter() - t0
    assert scalar(conn, "SELECT count(*) FROM t") == n
    eng.close(conn)
    ctx.extra["commits_per_s"] = n / dt
    return dt


def _point_reads(ctx, cache_size, hot=None):
    rows, reads = ctx.sizes["W3"]
    eng = ctx.eng
    path = ctx.fixture(f"t{rows}", lambda p: build_t(ctx, p, rows))
    conn = eng.open(path, cache_size=cache_size)
    rnd = random.Random(3)
    ids = [rnd.randrange(1, min(hot or rows, rows) + 1) for _ in range(reads)]
    ctx.extra["cache_size"] = scalar(conn, "PRAGMA cache_size")
    ex = conn.execute
    t0 = time.perf_counter()
    for i in ids:
        ex("SELECT a, b, c FROM t WHERE id = ?", (i,)).fetchone()
    dt = time.perf_counter() - t0
    eng.close(conn)
    ctx.extra["reads_per_s"] = reads / dt
    return dt


def w3(ctx):
    """W3: random point reads by primary key, the engine's default cache."""
    return _point_reads(ctx, None)


def w3s(ctx):
    """W3s: the same point reads with a tiny cache (cache_size=-256: every read decrypts)."""
    return _point_reads(ctx, -256)


def w3c(ctx):
    """W3c: the same number of point reads within the first 2,000 rows (a working set
    that the default cache holds: pages are decrypted once, then served from the cache)."""
    return _point_reads(ctx, None, hot=2000)


def w4(ctx):
    """W4: full scans (SQL aggregate over every row), repeated, default cache."""
    rows, scans = ctx.sizes["W4"]
    eng = ctx.eng
    path = ctx.fixture(f"t{rows}", lambda p: build_t(ctx, p, rows))
    conn = eng.open(path)
    sql = "SELECT count(*), sum(a), sum(length(b)), sum(c) FROM t"
    t0 = time.perf_counter()
    for _ in range(scans):
        r = conn.execute(sql).fetchall()[0]
    dt = time.perf_counter() - t0
    assert r[0] == rows
    pages = scalar(conn, "PRAGMA page_count")
    eng.close(conn)
    ctx.extra["pages_per_s"] = pages * scans / dt
    return dt


def w5(ctx):
    """W5: N single-row INSERT statements in transactions of 1,000 (WAL, NORMAL)."""
    n = ctx.sizes["W5"]
    eng = ctx.eng
    conn = eng.open(ctx.path("w5"), wal=True)
    conn.execute(T_SCHEMA)
    eng.after_schema(conn, "t")
    data = rows_t(n)
    ex = conn.execute
    t0 = time.perf_counter()
    for s in range(0, n, 1000):
        ex("BEGIN")
        for row in data[s:s + 1000]:
            ex(T_INSERT, row)
        ex("COMMIT")
    dt = time.perf_counter() - t0
    assert scalar(conn, "SELECT count(*) FROM t") == n
    eng.close(conn)
    ctx.extra["statements_per_s"] = n / dt
    return dt


def w5m(ctx):
    """W5m: N rows through executemany, 1,000 rows per call, one transaction per call."""
    n = ctx.sizes["W5"]
    eng = ctx.eng
    conn = eng.open(ctx.path("w5m"), wal=True)
    conn.execute(T_SCHEMA)
    eng.after_schema(conn, "t")
    data = rows_t(n)
    ex = conn.execute
    t0 = time.perf_counter()
    for s in range(0, n, 1000):
        ex("BEGIN")
        conn.executemany(T_INSERT, data[s:s + 1000])
        ex("COMMIT")
    dt = time.perf_counter() - t0
    assert scalar(conn, "SELECT count(*) FROM t") == n
    eng.close(conn)
    ctx.extra["rows_per_s"] = n / dt
    return dt


def w5u(ctx):
    """W5u: N single-row UPDATEs by id, transactions of 1,000, on a prefilled table."""
    n, table_rows = ctx.sizes["W5u"]
    eng = ctx.eng
    conn = eng.open(ctx.path("w5u"), wal=True)
    conn.execute(T_SCHEMA)
    eng.after_schema(conn, "t")
    conn.execute("BEGIN")
    conn.executemany(T_INSERT, rows_t(table_rows))
    conn.execute("COMMIT")
    ids = [random.Random(5).randrange(1, table_rows + 1) for _ in range(n)]
    ex = conn.execute
    t0 = time.perf_counter()
    for s in range(0, n, 1000):
        ex("BEGIN")
        for i in ids[s:s + 1000]:
            ex("UPDATE t SET a = a + 1 WHERE id = ?", (i,))
        ex("COMMIT")
    dt = time.perf_counter() - t0
    eng.close(conn)
    ctx.extra["statements_per_s"] = n / dt
    return dt


# -- the audit log workloads (W6, W8) share one fixture of N events per engine

AUDIT_COLS = "id, timestamp, user, operation, target"


def build_diy_audit(ctx, path, n):
    """Plain APSW: a hand-made chained audit table of n events, about 200 bytes each,
    with the same column names heliosdb uses, indexed by time, user, operation, target."""
    conn = ctx.eng.open(path)
    conn.execute(
        "CREATE TABLE audit(id INTEGER PRIMARY KEY, timestamp INTEGER, session_id TEXT, "
        "user TEXT, operation TEXT, target TEXT, query TEXT, affected_rows INTEGER, "
        "success INTEGER, prev_hash BLOB, checksum BLOB)")
    rnd = random.Random(11)
    prev = bytes(32)
    ts = 1_700_000_000_000_000
    ops = ("INSERT",) * 8 + ("UPDATE", "DELETE")
    conn.execute("BEGIN")
    batch = []
    for i in range(1, n + 1):
        ts += rnd.randrange(1, 2000)
        op = ops[i % 10]
        user = AUDIT_USERS[(i * 4) // (n + 1)]
        target = f"t{i % 4}"
        o = rnd.randrange(3000)
        query = f"{op} t{i % 4} " + POOL[o:o + 90]
        row = (i, ts, "s1", user, op, target, query, 1, 1)
        enc = diy_encode(row)
        chk = hashlib.sha256(prev + enc).digest()
        batch.append(row + (prev, chk))
        prev = chk
        if len(batch) == 10000:
            conn.executemany("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?)", batch)
            batch = []
    if batch:
        conn.executemany("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?)", batch)
    conn.execute("COMMIT")
    for col in ("timestamp", "user", "operation", "target"):
        conn.execute(f"CREATE INDEX audit_{col} ON audit({col})")
    ctx.eng.close(conn)


def diy_encode(fields):
    """The hand-made chain's encoding of an event: a compact JSON array (unambiguous,
    and C-speed in CPython), as a user would write it."""
    return json.dumps(fields, separators=(",", ":")).encode()


def canonical(row):
    """Length-prefixed encoding of the fields of a row (the DIY chain's, and the bytes
    that the raw sha256 baseline hashes)."""
    parts = []
    for v in row:
        if isinstance(v, bytes):
            b = v
        elif v is None:
            b = b""
        else:
            b = str(v).encode()
        parts.append(len(b).to_bytes(4, "big"))
        parts.append(b)
    return b"".join(parts)


def build_helios_audit(ctx, path, n):
    """heliosdb audited: n audited DML statements (80% INSERT, 10% UPDATE, 10% DELETE)
    over 4 tables, by 4 session users, in transactions of 1,000."""
    eng = ctx.eng
    per_user = n // len(AUDIT_USERS)
    rnd = random.Random(11)
    next_id = [1, 1, 1, 1]
    for u, user in enumerate(AUDIT_USERS):
        try:
            conn = eng._connect(path, user=user)
        except TypeError:  # no audit_user= yet: one anonymous session
            conn = eng._connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if u == 0:
            for k in range(4):
                conn.execute(f"CREATE TABLE t{k}(id INTEGER PRIMARY KEY, a INTEGER, b TEXT)")
        ex = conn.execute
        for s in range(0, per_user, 1000):
            ex("BEGIN")
            for i in range(s, min(s + 1000, per_user)):
                k = i % 4
                r = i % 10
                if r == 8 and next_id[k] > 2:
                    ex(f"UPDATE t{k} SET a = a + 1 WHERE id = ?", (rnd.randrange(1, next_id[k]),))
                elif r == 9 and next_id[k] > 2:
                    ex(f"DELETE FROM t{k} WHERE id = ?", (rnd.randrange(1, next_id[k]),))
                else:
                    o = rnd.randrange(3000)
                    ex(f"INSERT INTO t{k}(id, a, b) VALUES (?, ?, ?)",
                       (next_id[k], i, POOL[o:o + 60]))
                    next_id[k] += 1
            ex("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        eng.close(conn)
    conn = eng._connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")
    eng.close(conn)


def audit_fixture(ctx):
    n = ctx.sizes["W6"]
    eng = ctx.eng
    if isinstance(eng, HeliosEngine) and eng.audited:
        path = ctx.fixture(f"audit{n}", lambda p: build_helios_audit(ctx, p, n))
        conn = eng._connect(path)
        return path, conn, eng.audit_table(conn)
    if type(eng) is ApswEngine:
        path = ctx.fixture(f"audit{n}", lambda p: build_diy_audit(ctx, p, n))
        return path, eng.open(path), "audit"
    if isinstance(eng, TriggerAuditEngine):
        raise NotApplicable("triggers write no hash chain and no actor; the plain APSW row "
                            "is the hand-made baseline")
    raise NotApplicable("no audit log")


def w6(ctx):
    """W6: full verification of N chained audit events. Extras: a plain scan of the
    same table (every row fetched) and raw hashlib.sha256 chained over the same bytes."""
    eng = ctx.eng
    path, conn, table = audit_fixture(ctx)
    n = scalar(conn, f"SELECT count(*) FROM {table}")
    # the same bytes, collected untimed, for the raw sha256 baseline
    enc = canonical if isinstance(eng, HeliosEngine) else (lambda r: diy_encode(r[:-2]))
    encs = [enc(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
    ctx.extra["events"] = n
    ctx.extra["bytes"] = sum(len(e) for e in encs)
    # the plain scan: every row fetched through APSW itself where heliosdb exposes its
    # APSW connection (same file, same VFS and key), else through the DB-API cursor
    raw = getattr(conn, "_apsw", None) if isinstance(eng, HeliosEngine) else conn
    ctx.extra["scan_via"] = "apsw" if raw is not None else "dbapi"
    raw = raw if raw is not None else conn
    t0 = time.perf_counter()
    for _ in raw.execute(f"SELECT * FROM {table} ORDER BY id"):
        pass
    ctx.extra["scan_s"] = time.perf_counter() - t0
    sha = hashlib.sha256
    t0 = time.perf_counter()
    prev = bytes(32)
    for e in encs:
        prev = sha(prev + e).digest()
    ctx.extra["sha256_s"] = time.perf_counter() - t0
    del encs
    if isinstance(eng, HeliosEngine):
        audit = getattr(conn, "audit", None)
        if audit is None or not hasattr(audit, "verify"):
            raise Unavailable("conn.audit.verify() does not exist yet")
        t0 = time.perf_counter()
        report = audit.verify()
        dt = time.perf_counter() - t0
        ok = getattr(report, "ok", report)
        if not ok:
            raise RuntimeError(f"verify reported a fault on an untouched log: {report!r}"[:300])
        checked = getattr(report, "events_checked", None)
        if checked is not None:
            ctx.extra["events_checked"] = checked
    else:  # the hand-made verification a user would write over plain APSW
        t0 = time.perf_counter()
        prev = bytes(32)
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY id"):
            if row[-2] != prev or sha(prev + diy_encode(row[:-2])).digest() != row[-1]:
                raise RuntimeError(f"DIY chain broken at id {row[0]}")
            prev = row[-1]
        dt = time.perf_counter() - t0
    eng.close(conn)
    ctx.extra["events_per_s"] = n / dt
    ctx.extra["verify_over_scan"] = dt / ctx.extra["scan_s"]
    ctx.extra["verify_over_sha256"] = dt / ctx.extra["sha256_s"]
    return dt


def w8_api_queries(conn, table, lo_id, hi_id):
    """W8's four queries through heliosdb's query API (``conn.audit.query()``), the way
    the product answers them (a time range is an id range there): (label, callable)."""
    a = lo_id + (hi_id - lo_id) * 60 // 100
    b = lo_id + (hi_id - lo_id) * 61 // 100
    t_lo = scalar(conn, f"SELECT ts_us FROM {table} WHERE id >= ? ORDER BY id LIMIT 1", (a,))
    t_hi = scalar(conn, f"SELECT ts_us FROM {table} WHERE id >= ? ORDER BY id LIMIT 1", (b,))
    q = conn.audit.query
    return [
        ("time", lambda: [q().between(t_lo, t_hi + 1).count()]),
        ("user+time", lambda: q().user("carol").between(t_lo, t_hi + 1).all()),
        ("target+op", lambda: q().table("t1").operation("DELETE").order("desc").limit(100)
         .all()),
        ("op+user", lambda: q().operation("UPDATE").user("bob").limit(1000).all()),
    ]


def w8(ctx):
    """W8: filtered audit queries on N events: by user + time range, by time range, by
    target + operation (latest 100), by operation + user (first 1000). Seconds per set.
    heliosdb answers them through its query API where it has one; the plain APSW log is
    asked in SQL over its own indexes."""
    path, conn, table = audit_fixture(ctx)
    reps = ctx.sizes["W8"]
    cols = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    lo_id, hi_id = scalar(conn, f"SELECT min(id) FROM {table}"), scalar(
        conn, f"SELECT max(id) FROM {table}")
    n = scalar(conn, f"SELECT count(*) FROM {table}")
    queries = []
    tcol = next((c for c in ("timestamp", "ts_us", "ts", "time") if c in cols), None)
    api = isinstance(ctx.eng, HeliosEngine) and hasattr(getattr(conn, "audit", None), "query")
    if api:
        tcol = "ts_us"
        queries = [(label, fn, None) for label, fn in w8_api_queries(conn, table, lo_id, hi_id)]
    elif tcol:
        a = lo_id + (hi_id - lo_id) * 60 // 100
        b = lo_id + (hi_id - lo_id) * 61 // 100
        t_lo = scalar(conn, f"SELECT {tcol} FROM {table} WHERE id >= ? ORDER BY id LIMIT 1", (a,))
        t_hi = scalar(conn, f"SELECT {tcol} FROM {table} WHERE id >= ? ORDER BY id LIMIT 1", (b,))
        queries.append(("time", f"SELECT count(*) FROM {table} WHERE {tcol} BETWEEN ? AND ?",
                        (t_lo, t_hi)))
        if "user" in cols:
            queries.append(("user+time",
                            f"SELECT * FROM {table} WHERE user = ? AND {tcol} BETWEEN ? AND ?",
                            ("carol", t_lo, t_hi)))
    if not api and {"target", "operation"} <= cols:
        queries.append(("target+op", f"SELECT * FROM {table} WHERE target = ? AND "
                        f"operation = ? ORDER BY id DESC LIMIT 100", ("t1", "DELETE")))
    if not api and {"user", "operation"} <= cols:
        queries.append(("op+user", f"SELECT * FROM {table} WHERE operation = ? AND user = ? "
                        f"LIMIT 1000", ("UPDATE", "bob")))
    if not queries:
        raise Unavailable(f"{table} lacks the columns time/user/operation/target")
    ctx.extra["events"] = n
    ctx.extra["queries"] = len(queries)
    ctx.extra["time_column"] = tcol
    ctx.extra["via"] = "conn.audit.query()" if api else "SQL"
    ex = conn.execute
    per = [0.0] * len(queries)
    rows = [0] * len(queries)
    pc = time.perf_counter
    t0 = pc()
    for _ in range(reps):
        for k, (_, sql, params) in enumerate(queries):
            t1 = pc()
            rows[k] = len(sql() if api else ex(sql, params).fetchall())
            per[k] += pc() - t1
    dt = (pc() - t0) / reps
    ctx.extra["per_query_ms"] = {q[0]: round(per[k] / reps * 1000, 2)
                                 for k, q in enumerate(queries)}
    ctx.extra["rows_returned"] = {q[0]: rows[k] for k, q in enumerate(queries)}
    ctx.eng.close(conn)
    return dt


def _open_loop(ctx, path, count, **kw):
    eng = ctx.eng
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        conn = eng.open(path, **kw)
        scalar(conn, "SELECT count(*) FROM sqlite_master")
        times.append(time.perf_counter() - t0)
        eng.close(conn)
    times.sort()
    ctx.extra["opens"] = count
    ctx.extra["min_s"] = times[0]
    return times[len(times) // 2]


def w7(ctx):
    """W7: open + first read with a raw 32-byte key (no KDF); plain engines: no key.
    Seconds per open (median of the opens in this process)."""
    count = ctx.sizes["W7"][0]
    path = ctx.fixture("w7", lambda p: build_t(ctx, p, 1000))
    return _open_loop(ctx, path, count)


def w7p(ctx, profile=None):
    """W7p: open + first read with a passphrase: each engine's default KDF (SQLCipher
    PBKDF2-SHA512 256k, sqlite3mc chacha20 PBKDF2-SHA256 64k, AEGIS Argon2id, heliosdb
    Argon2id default profile); W7p.<profile>: heliosdb's named KDF profiles."""
    eng = ctx.eng
    count = ctx.sizes["W7"][1]
    if not eng.has_passphrase:
        if type(eng) is ApswEngine:  # the baseline: a plain open
            path = ctx.fixture("w7", lambda p: build_t(ctx, p, 1000))
            ctx.extra["note"] = "plain open, no key (baseline)"
            return _open_loop(ctx, path, ctx.sizes["W7"][0])
        raise NotApplicable("no passphrase")

    def build(p):
        conn = eng.open(p, passphrase=PASSPHRASE, profile=profile)
        conn.execute("CREATE TABLE t(x)")
        eng.close(conn)

    path = ctx.fixture(f"w7p-{profile or 'default'}", build)
    return _open_loop(ctx, path, count, passphrase=PASSPHRASE, profile=profile)


def w9(ctx):
    """W9: key rotation of an M MB database: every page re-encrypted under a new key
    (heliosdb.rotate_key, SQLCipher and sqlite3mc PRAGMA rekey). Plain APSW: VACUUM, the
    cost of rewriting every page once, as the baseline."""
    eng = ctx.eng
    mb = ctx.sizes["W9"]
    rows = mb * 1024 * 1024 // 1100

    def build(p):
        conn = eng.open(p)
        conn.execute("CREATE TABLE big(id INTEGER PRIMARY KEY, body TEXT)")
        rnd = random.Random(9)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO big VALUES (?, ?)",
                         ((i, (POOL[rnd.randrange(2000):] * 2)[:1000]) for i in range(rows)))
        conn.execute("COMMIT")
        eng.close(conn)

    rotate = None
    if isinstance(eng, HeliosEngine):
        if not eng.encrypted:
            raise NotApplicable("not encrypted")
        rotate = getattr(eng.mod, "rotate_key", None)
        ctx.extra["api"] = "heliosdb.rotate_key"
        if rotate is None:  # written but not exported yet: measure it, and say so
            try:
                from heliosdb.crypto.rekey import rotate_key as rotate
                ctx.extra["api"] = "heliosdb.crypto.rekey.rotate_key (not exported yet)"
            except ImportError:
                raise Unavailable("heliosdb.rotate_key does not exist yet")
    elif not (eng.encrypted or type(eng) is ApswEngine):
        raise NotApplicable("not encrypted")
    path = ctx.fixture(f"big{mb}", build)
    ctx.extra["file_mb"] = file_size(path) / 1e6
    if isinstance(eng, HeliosEngine):
        t0 = time.perf_counter()
        rotate(path, KEY, new_key=NEW_KEY)
        dt = time.perf_counter() - t0
        conn = eng.mod.connect(path, key=NEW_KEY)
        pages = scalar(conn, "PRAGMA page_count")
        conn.close()
    else:
        conn = eng.open(path)
        pages = scalar(conn, "PRAGMA page_count")
        t0 = time.perf_counter()
        if eng.encrypted:
            eng.rekey(conn)
        else:
            conn.execute("VACUUM")
        dt = time.perf_counter() - t0
        eng.close(conn)
    ctx.extra["pages"] = pages
    ctx.extra["pages_per_s"] = pages / dt
    return dt


WORKLOADS = {
    "W1": w1, "W2": w2, "W3": w3, "W3s": w3s, "W3c": w3c, "W4": w4, "W5": w5, "W5m": w5m,
    "W5u": w5u, "W6": w6, "W7": w7, "W7p": w7p, "W8": w8, "W9": w9,
}


def run_one(engine, workload, sizes, workdir, fixtures):
    try:
        eng = make_engine(engine)
    except (Unavailable, ImportError) as exc:
        return {"status": "unavailable", "reason": str(exc)}
    ctx = Ctx(eng, sizes, workdir, fixtures)
    base, _, profile = workload.partition(".")
    fn = WORKLOADS[base]
    try:
        seconds = fn(ctx, profile) if profile else fn(ctx)
    except NotApplicable as exc:
        return {"status": "na", "reason": str(exc)}
    except Unavailable as exc:
        return {"status": "unavailable", "reason": str(exc)}
    except Exception as exc:
        tb = traceback.format_exc(limit=3)
        sys.stderr.write(tb)
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": "ok", "seconds": seconds, "extra": ctx.extra}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("workload", nargs="?")
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--sizes", default="{}")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--fixtures")
    a = ap.parse_args(argv)
    os.makedirs(a.workdir, exist_ok=True)
    if a.probe:
        res = probe(a.engine, a.workdir)
    else:
        res = run_one(a.engine, a.workload, json.loads(a.sizes), a.workdir,
                      a.fixtures or a.workdir)
    sys.stdout.write("\n@@RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
