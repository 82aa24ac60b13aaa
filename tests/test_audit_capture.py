"""Statement capture (heliosdb/audit/capture.py): what each operation records, and when.

Every test runs twice, with the C chain writer and with the pure-Python fallback (the
fixture ``chain_impl`` of tests/conftest.py, used by every test here); the subprocess
tests (several processes, crashes) pass ``HELIOSDB_IMPL`` to the child for the same
effect. DESIGN.md sections 3 and 3a.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

import apsw
import pytest

import heliosdb
from heliosdb.audit import store

from helpers.apsw_leak import EXIT_LEAK
from helpers.processes import run_python

pytestmark = pytest.mark.usefixtures("chain_impl")


def cfg(base="verbose", **audit):
    return {"extends": base, "audit": audit} if audit else base


def connect(path, base="verbose", *, user="alice", context=None, key=None, **audit):
    return heliosdb.connect(path, config=cfg(base, **audit), audit_user=user,
                            audit_context=context, key=key)


def events(path, table="__audit_log", key=None, where="1"):
    """Stored events as dicts, read with a separate raw connection."""
    if key is None:
        db = apsw.Connection(path)
    else:
        from heliosdb.crypto import open_connection
        db = open_connection(path, flags=apsw.SQLITE_OPEN_READWRITE, uri=False, key=key,
                             encryption=None)
    try:
        cur = db.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY id")
        names = [d[0] for d in cur.get_description()]
        return [dict(zip(names, r)) for r in cur]
    finally:
        db.close()


def ops(path, **kw):
    return [e["operation"] for e in events(path, **kw)]


def sql_events(path, **kw):
    """Events other than LOGIN/LOGOUT."""
    return [e for e in events(path, **kw) if e["operation"] not in ("LOGIN", "LOGOUT")]


def assert_verified(path, key=None):
    rep = heliosdb.audit.verify(path, key=key)
    assert rep.ok, rep
    ids = [e["id"] for e in events(path, key=key)]
    assert ids == list(range(1, len(ids) + 1))
    return rep


@contextlib.contextmanager
def audit_write_fails_for(monkeypatch, *operations):
    """Inside the block, storing a batch that holds a successful event of one of
    ``operations`` fails (as a full disk would); the real store.append is back after it."""
    real = store.append

    def failing(c, table, evs, **kw):
        if any(e.success and e.operation in operations for e in evs):
            raise heliosdb.OperationalError("simulated audit failure")
        return real(c, table, evs, **kw)

    monkeypatch.setattr(store, "append", failing)
    try:
        yield
    finally:
        monkeypatch.setattr(store, "append", real)


@pytest.fixture
def db(db_path):
    conn = connect(db_path)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT UNIQUE, n INTEGER)")
    conn.commit()
    yield conn
    conn.close()


# --- operation classes ----------------------------------------------------------------

def test_ddl_operations(db_path):
    conn = connect(db_path, "minimal")
    conn.execute("CREATE TABLE a(x INTEGER, y TEXT)")
    conn.execute("CREATE INDEX a_x ON a(x)")
    conn.execute("CREATE VIEW av AS SELECT x FROM a")
    conn.execute("CREATE TRIGGER a_tr AFTER INSERT ON a BEGIN SELECT 1; END")
    conn.execute("ALTER TABLE a ADD COLUMN z")
    conn.execute("ALTER TABLE a RENAME TO b")
    conn.execute("DROP TRIGGER a_tr")
    conn.execute("DROP VIEW av")
    conn.execute("DROP INDEX a_x")
    conn.execute("DROP TABLE b")
    conn.close()
    evs = events(db_path)
    assert [(e["operation"], e["target"]) for e in evs] == [
        ("CREATE_TABLE", "a"), ("CREATE_INDEX", "a"), ("CREATE_VIEW", "av"),
        ("CREATE_TRIGGER", "a"), ("ALTER_TABLE", "a"), ("ALTER_TABLE", "a"),
        ("DROP_TRIGGER", "b"), ("DROP_VIEW", "av"), ("DROP_INDEX", "b"), ("DROP_TABLE", "b")]
    assert all(e["success"] == 1 and e["error"] is None for e in evs)
    assert evs[0]["query"] == "CREATE TABLE a(x INTEGER, y TEXT)"
    assert_verified(db_path)


def test_dml_operations_and_row_counts(db, db_path):
    db.execute("INSERT INTO t(v, n) VALUES ('a', 1), ('b', 2), ('c', 3)")
    db.execute("INSERT OR REPLACE INTO t(id, v, n) VALUES (1, 'a2', 10)")
    db.execute("REPLACE INTO t(id, v, n) VALUES (2, 'b2', 20)")
    db.execute("INSERT INTO t(id, v, n) VALUES (3, 'c', 0) "
               "ON CONFLICT(id) DO UPDATE SET n = excluded.n + 30")
    db.execute("UPDATE t SET n = n + 1 WHERE id >= 2")
    db.execute("DELETE FROM t WHERE id = 1")
    db.executemany("INSERT INTO t(v, n) VALUES (?, ?)", [("x", 1), ("y", 2), ("z", 3)])
    db.commit()
    db.executescript("INSERT INTO t(v) VALUES ('s1'); UPDATE t SET n = 7 WHERE v LIKE 's%';"
                     " DELETE FROM t WHERE v IN ('x', 'y');")
    dml = [(e["operation"], e["target"], e["affected_rows"]) for e in sql_events(db_path)
           if e["operation"] in ("INSERT", "UPDATE", "DELETE")]
    assert dml == [("INSERT", "t", 3), ("INSERT", "t", 1), ("INSERT", "t", 1),
                   ("INSERT", "t", 1), ("UPDATE", "t", 2), ("DELETE", "t", 1),
                   ("INSERT", "t", 3), ("INSERT", "t", 1), ("UPDATE", "t", 1),
                   ("DELETE", "t", 2)]
    many = [e for e in events(db_path) if e["metadata"] and '"executemany":true' in e["metadata"]]
    assert len(many) == 1 and many[0]["affected_rows"] == 3
    assert_verified(db_path)


def test_upsert_and_replace_row_values(db, db_path):
    db.execute("INSERT INTO t(id, v, n) VALUES (1, 'a', 1)")
    db.execute("INSERT OR REPLACE INTO t(id, v, n) VALUES (1, 'b', 2)")
    db.execute("INSERT INTO t(id, v, n) VALUES (1, 'c', 3) ON CONFLICT(id) DO UPDATE SET v = 'u'")
    db.execute("UPDATE t SET n = 9 WHERE id = 1")
    db.execute("DELETE FROM t WHERE id = 1")
    db.commit()
    evs = [e for e in sql_events(db_path) if e["operation"] in ("INSERT", "UPDATE", "DELETE")]
    vals = [(e["operation"], json.loads(e["old_values"]) if e["old_values"] else None,
             json.loads(e["new_values"]) if e["new_values"] else None) for e in evs]
    row = lambda *v: [{"rowid": 1, "table": "t", "values": list(v)}]  # noqa: E731
    assert vals == [
        ("INSERT", None, row(1, "a", 1)),
        ("INSERT", row(1, "a", 1), row(1, "b", 2)),     # REPLACE: the old row is deleted
        ("INSERT", row(1, "b", 2), row(1, "u", 2)),     # UPSERT: recorded as what it did
        ("UPDATE", row(1, "u", 2), row(1, "u", 9)),
        ("DELETE", row(1, "u", 9), None)]


def test_row_values_off_by_default(db_path):
    conn = connect(db_path, "default")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    ins = [e for e in events(db_path) if e["operation"] == "INSERT"]
    assert ins[0]["old_values"] is None and ins[0]["new_values"] is None


def test_select_buffered_flushed_at_commit(db, db_path):
    db.execute("INSERT INTO t(v) VALUES ('a')")
    db.execute("SELECT v FROM t").fetchall()
    assert "SELECT" not in ops(db_path)      # buffered, not yet written
    db.commit()
    sel = [e for e in events(db_path) if e["operation"] == "SELECT"]
    assert len(sel) == 1 and sel[0]["target"] == "t" and sel[0]["query"] == "SELECT v FROM t"


def test_select_flushed_at_close(db_path):
    conn = connect(db_path)
    conn.execute("SELECT 1").fetchall()
    assert "SELECT" not in ops(db_path)
    conn.close()
    assert ops(db_path)[-2:] == ["SELECT", "LOGOUT"]


def test_select_flushed_when_buffer_fills(db_path):
    conn = connect(db_path, async_buffer_size=3)
    for i in range(2):
        conn.execute("SELECT ?", (i,)).fetchall()
    assert ops(db_path).count("SELECT") == 0
    conn.execute("SELECT 3").fetchall()
    assert ops(db_path).count("SELECT") == 3
    conn.close()


def test_select_not_logged_when_off(db_path):
    conn = connect(db_path, "default")
    conn.execute("SELECT 1").fetchall()
    conn.close()
    assert "SELECT" not in ops(db_path)


def test_transactions_logged(db, db_path):
    db.execute("INSERT INTO t(v) VALUES ('a')")
    db.commit()
    db.execute("INSERT INTO t(v) VALUES ('b')")
    db.rollback()
    o = [x for x in ops(db_path) if x not in ("LOGIN", "CREATE_TABLE")]
    assert o[:3] == ["BEGIN", "INSERT", "COMMIT"]
    assert o[3:] == ["BEGIN", "INSERT", "ROLLBACK"]
    rolled = [e for e in events(db_path) if e["operation"] == "INSERT"][-1]
    assert rolled["success"] == 0 and rolled["error"] == "rolled back"


def test_explicit_sql_transactions_isolation_none(db_path):
    conn = heliosdb.connect(db_path, config="verbose", isolation_level=None)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.execute("ROLLBACK")
    conn.execute("BEGIN")
    conn.execute("SELECT * FROM t").fetchall()
    conn.execute("END")
    conn.close()
    o = ops(db_path)
    assert o == ["LOGIN", "CREATE_TABLE", "BEGIN", "INSERT", "COMMIT",
                 "BEGIN", "INSERT", "ROLLBACK", "BEGIN", "SELECT", "COMMIT", "LOGOUT"]
    assert [r for (r,) in apsw.Connection(db_path).execute("SELECT x FROM t")] == [1]
    assert_verified(db_path)


def test_transactions_not_logged_by_default(db_path):
    conn = connect(db_path, "default")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    assert ops(db_path) == ["LOGIN", "CREATE_TABLE", "INSERT", "LOGOUT"]


def test_savepoint_rollback_to_records_attempt(db_path):
    conn = heliosdb.connect(db_path, config="verbose", isolation_level=None)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("SAVEPOINT a")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("SAVEPOINT b")
    conn.execute("INSERT INTO t VALUES (2)")
    conn.execute("ROLLBACK TO b")
    conn.execute("RELEASE a")
    conn.close()
    ins = [(e["query"], e["success"], e["error"]) for e in events(db_path)
           if e["operation"] == "INSERT"]
    assert ("INSERT INTO t VALUES (1)", 1, None) in ins
    assert ("INSERT INTO t VALUES (2)", 0, "rolled back to savepoint b") in ins
    assert [r for (r,) in apsw.Connection(db_path).execute("SELECT x FROM t")] == [1]
    assert_verified(db_path)


# --- failures and denials ----------------------------------------------------------------

def test_constraint_violation_recorded(db, db_path):
    db.execute("INSERT INTO t(v) VALUES ('a')")
    db.commit()
    with pytest.raises(heliosdb.IntegrityError, match="UNIQUE"):
        db.execute("INSERT INTO t(v) VALUES ('a')")
    db.commit()
    bad = [e for e in events(db_path) if e["success"] == 0]
    assert len(bad) == 1
    assert bad[0]["operation"] == "INSERT" and "UNIQUE constraint failed" in bad[0]["error"]
    assert bad[0]["affected_rows"] == 0 and bad[0]["query"] == "INSERT INTO t(v) VALUES ('a')"


def test_syntax_error_recorded_and_raised_unchanged(db, db_path):
    with pytest.raises(heliosdb.OperationalError, match="syntax error"):
        db.execute("SELEC 1")
    with pytest.raises(heliosdb.OperationalError, match="unrecognized token"):
        db.execute("@@@ nonsense")
    with pytest.raises(heliosdb.OperationalError, match="no such table"):
        db.execute("INSERT INTO nope VALUES (1)")
    assert not db.in_transaction  # like sqlite3: no BEGIN for a statement that never compiled
    bad = [(e["operation"], e["error"]) for e in events(db_path) if e["success"] == 0]
    assert bad[0] == ("UNKNOWN", 'near "SELEC": syntax error')
    assert bad[1][0] == "UNKNOWN" and "unrecognized token" in bad[1][1]
    assert bad[2] == ("INSERT", "no such table: nope")


def test_failure_inside_transaction_survives_rollback(db, db_path):
    db.execute("INSERT INTO t(v) VALUES ('a')")
    with pytest.raises(heliosdb.IntegrityError):
        db.execute("INSERT INTO t(v) VALUES ('a')")
    db.rollback()
    evs = [e for e in sql_events(db_path) if e["operation"] == "INSERT"]
    assert [(e["success"], e["error"]) for e in evs] == [
        (0, "rolled back"), (0, "UNIQUE constraint failed: t.v")]
    assert list(apsw.Connection(db_path).execute("SELECT count(*) FROM t")) == [(0,)]


@pytest.mark.parametrize("sql", [
    "UPDATE __audit_log SET user = 'mallory'",
    "DELETE FROM __audit_log",
    "DROP TABLE __audit_log",
    "ALTER TABLE __audit_log RENAME TO x",
    "ALTER TABLE __audit_log ADD COLUMN x",
    "INSERT INTO __audit_log(id) VALUES (999)",
    "DROP INDEX __audit_log_by_user",
    "DROP INDEX __audit_log_rare_operation",
    "CREATE INDEX my_idx ON __audit_log(length(query))",
    "CREATE TRIGGER x BEFORE INSERT ON __audit_log BEGIN SELECT RAISE(IGNORE); END",
    "CREATE TEMP TRIGGER x BEFORE INSERT ON main.__audit_log BEGIN SELECT RAISE(IGNORE); END",
    "CREATE TEMP TABLE __audit_log(id, ts_us, session_id, user, operation, target, query, "
    "affected_rows, success, error, metadata, old_values, new_values, reason, prev_hash, "
    "checksum)",
    "CREATE TEMP VIEW __audit_log AS SELECT 1",
    "UPDATE __audit_meta SET value = 7 WHERE key = 'anchor_id'",
    "DELETE FROM __audit_meta",
    "DROP TABLE __audit_meta",
    "PRAGMA writable_schema = ON",
])
def test_log_is_append_only(db, db_path, sql):
    n = len(events(db_path))
    with pytest.raises(heliosdb.DatabaseError, match="not authorized: ") as ei:
        db.execute(sql)
    assert ei.value.sqlite_errorname == "SQLITE_AUTH"
    db.execute("INSERT INTO t(v) VALUES ('after')")  # capture still works afterwards
    db.commit()
    evs = events(db_path)
    denied = [e for e in evs[n:] if e["success"] == 0]
    assert len(denied) == 1 and denied[0]["query"] == sql
    assert denied[0]["error"].startswith("not authorized: ")
    assert json.loads(denied[0]["metadata"])["details"] == {"denied": True}
    assert evs[-1]["operation"] in ("INSERT", "COMMIT")
    assert [e["operation"] for e in evs[n:] if e["success"]].count("INSERT") == 1
    assert_verified(db_path)


def test_internal_insert_text_not_reusable_from_statement_cache(db, db_path):
    """The writer's own INSERT is prepared without authorization; the same text from user
    SQL must not come back from APSW's statement cache unauthorized."""
    from heliosdb.audit.events import COLUMNS
    sql = store._insert_sql("__audit_log")
    with pytest.raises(heliosdb.DatabaseError, match="append-only"):
        db.execute(sql, tuple([10 ** 6] + [1] * (len(COLUMNS) - 1)))
    with pytest.raises(heliosdb.DatabaseError, match="append-only"):
        db.execute("INSERT OR REPLACE INTO __audit_meta(tbl, key, value) VALUES (?, ?, ?)",
                   ("__audit_log", "anchor_id", 7))
    assert_verified(db_path)


def test_user_authorizer_chained_after_ours(db, db_path):
    seen = []

    def mine(action, a1, a2, dbname, trig):
        seen.append(action)
        return heliosdb.SQLITE_OK  # allows everything: cannot re-enable writes to the log

    db.set_authorizer(mine)
    with pytest.raises(heliosdb.DatabaseError, match="append-only"):
        db.execute("DELETE FROM __audit_log")
    db.execute("INSERT INTO t(v) VALUES ('a')")
    db.commit()
    assert heliosdb.SQLITE_INSERT in seen

    def deny_t(action, a1, a2, dbname, trig):
        return heliosdb.SQLITE_DENY if a1 == "t" and action == heliosdb.SQLITE_DELETE \
            else heliosdb.SQLITE_OK

    db.set_authorizer(deny_t)
    with pytest.raises(heliosdb.DatabaseError, match="not authorized"):
        db.execute("DELETE FROM t")
    db.commit()
    bad = [e for e in events(db_path) if e["success"] == 0]
    assert [e["query"] for e in bad] == ["DELETE FROM __audit_log", "DELETE FROM t"]
    assert_verified(db_path)


def test_user_authorizer_cannot_block_audit_writes(db, db_path):
    """A user's authorizer governs user SQL only: denying the audit table (or reading it as
    NULL with SQLITE_IGNORE) does not stop or corrupt heliosdb's own audit writes."""
    def deny_log(action, a1, a2, dbname, trig):
        if a1 == "__audit_log":
            return heliosdb.SQLITE_IGNORE if action == heliosdb.SQLITE_READ \
                else heliosdb.SQLITE_DENY
        return heliosdb.SQLITE_OK

    db.set_authorizer(deny_log)
    db.execute("INSERT INTO t(v) VALUES ('a')")
    db.commit()
    db.isolation_level = None
    db.execute("INSERT INTO t(v) VALUES ('b')")
    assert db.execute("SELECT count(*) FROM t").fetchone() == (2,)
    with pytest.raises(heliosdb.DatabaseError):
        db.execute("DELETE FROM __audit_log")
    db.set_authorizer(None)
    ins = [e for e in events(db_path) if e["operation"] == "INSERT"]
    assert [e["success"] for e in ins] == [1, 1]
    assert_verified(db_path)


# --- session metadata ------------------------------------------------------------------

def test_user_context_and_set_context(db_path):
    conn = connect(db_path, user="alice",
                   context={"client_ip": "10.0.0.7", "application_name": "billing",
                            "ticket": "T-1"})
    conn.execute("CREATE TABLE t(x)")
    conn.audit.set_context(client_ip="10.0.0.8", reason="fix #42")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    evs = events(db_path)
    assert {e["user"] for e in evs} == {"alice"}
    assert len({e["session_id"] for e in evs}) == 1
    md0 = json.loads(evs[1]["metadata"])
    assert md0["client_ip"] == "10.0.0.7" and md0["application_name"] == "billing"
    assert md0["database_name"] == "test.db" and md0["ticket"] == "T-1"
    assert isinstance(md0["execution_time_ms"], float)
    ins = [e for e in evs if e["operation"] == "INSERT"][0]
    assert json.loads(ins["metadata"])["client_ip"] == "10.0.0.8"
    assert ins["reason"] == "fix #42" and evs[1]["reason"] is None
    from heliosdb.audit.events import canonical_json
    for e in evs:   # metadata text is built without json per statement: still canonical
        assert e["metadata"] == canonical_json(json.loads(e["metadata"]))


def test_metadata_toggles(db_path):
    conn = heliosdb.connect(db_path, config={"extends": "default", "audit": {
        "capture_metadata": {"capture_client_ip": False, "capture_execution_time": False,
                             "capture_database_name": False}}},
        audit_context={"client_ip": "1.1.1.1", "application_name": "a", "x": 1})
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    md = json.loads(events(db_path)[1]["metadata"])
    assert md == {"application_name": "a"}   # custom fields are off in "default"


def test_max_query_length(db_path):
    conn = connect(db_path, max_query_length=20)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES ('" + "x" * 100 + "')")
    conn.commit()
    conn.close()
    ins = [e for e in events(db_path) if e["operation"] == "INSERT"][0]
    assert ins["query"] == "INSERT INTO t VALUES" and len(ins["query"]) == 20


def test_minimal_logs_only_ddl(db_path):
    conn = connect(db_path, "minimal")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("UPDATE t SET x = 2")
    conn.execute("SELECT * FROM t").fetchall()
    conn.commit()
    conn.close()
    assert ops(db_path) == ["CREATE_TABLE"]


@pytest.mark.parametrize("toggle,present,absent", [
    ({"log_dml": False}, {"CREATE_TABLE", "SELECT"}, {"INSERT", "DELETE"}),
    ({"log_ddl": False}, {"INSERT", "SELECT"}, {"CREATE_TABLE"}),
    ({"log_auth": False}, {"INSERT"}, {"LOGIN", "LOGOUT"}),
    ({"log_transactions": False}, {"INSERT"}, {"BEGIN", "COMMIT"}),
    ({"log_select": False}, {"INSERT"}, {"SELECT"}),
])
def test_config_toggles(db_path, toggle, present, absent):
    conn = connect(db_path, **toggle)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("DELETE FROM t")
    conn.execute("SELECT * FROM t").fetchall()
    conn.commit()
    conn.close()
    o = set(ops(db_path))
    assert present <= o and not (absent & o)


def test_table_name_configurable(db_path):
    conn = connect(db_path, table_name="my_log")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    with pytest.raises(heliosdb.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM my_log")
    rep = conn.audit.verify()
    conn.close()
    assert rep.ok
    assert "INSERT" in ops(db_path, table="my_log")
    names = [r for (r,) in apsw.Connection(db_path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")]
    assert "my_log" in names and "__audit_log" not in names
    assert heliosdb.audit.verify(db_path, table="my_log").ok


def test_log_api_login_logout_verify_head(db_path):
    conn = connect(db_path)
    conn.audit.log("grant", target="t", details={"to": "bob"}, reason="onboarding")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.audit.log("DATA_SUBJECT_REQUEST", target="t")   # inside the open transaction
    conn.rollback()
    h = conn.audit.head()
    assert h.last_id == len(events(db_path)) and h.count == h.last_id
    assert conn.audit.verify().ok
    conn.close()
    evs = events(db_path)
    assert evs[0]["operation"] == "LOGIN" and evs[-1]["operation"] == "LOGOUT"
    g = evs[1]
    assert g["operation"] == "GRANT" and g["reason"] == "onboarding"
    assert json.loads(g["metadata"])["details"] == {"to": "bob"}
    dsr = [e for e in evs if e["operation"] == "DATA_SUBJECT_REQUEST"]
    assert len(dsr) == 1 and dsr[0]["success"] == 0 and dsr[0]["error"] == "rolled back"


# --- semantics -------------------------------------------------------------------------

def test_rollback_removes_change_and_event(db, db_path):
    db.execute("INSERT INTO t(v) VALUES ('gone')")
    db.rollback()
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    ins = [e for e in events(db_path) if e["operation"] == "INSERT"]
    assert len(ins) == 1 and ins[0]["success"] == 0  # only as a rolled-back attempt


def test_autocommit_statement_atomic_with_event(db_path, monkeypatch):
    conn = heliosdb.connect(db_path, config="default", isolation_level=None)
    conn.execute("CREATE TABLE t(x)")
    with audit_write_fails_for(monkeypatch, "INSERT"):
        with pytest.raises(heliosdb.OperationalError, match="simulated"):
            conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(heliosdb.OperationalError, match="simulated"):
            conn.executemany("INSERT INTO t VALUES (?)", [(2,), (3,)])
        assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.close()
    bad = [e for e in events(db_path) if e["success"] == 0]
    assert len(bad) == 2 and all("audit write failed" in e["error"] for e in bad)


def test_failed_audit_write_in_transaction_undoes_it(db, db_path, monkeypatch):
    db.execute("INSERT INTO t(v) VALUES ('kept?')")
    with audit_write_fails_for(monkeypatch, "UPDATE"):
        with pytest.raises(heliosdb.OperationalError, match="simulated"):
            db.execute("UPDATE t SET n = 1")
            db.commit()   # events of a transaction are stored in batches: at the latest here
        assert not db.in_transaction
    db.commit()   # nothing left to commit: no change without its event
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert_verified(db_path)


def test_on_conflict_rollback_records_rolled_back_work(db, db_path):
    db.execute("INSERT INTO t(id, v) VALUES (1, 'a')")
    db.execute("INSERT INTO t(id, v) VALUES (2, 'b')")
    with pytest.raises(heliosdb.IntegrityError):
        db.execute("INSERT OR ROLLBACK INTO t(id, v) VALUES (1, 'c')")
    assert not db.in_transaction
    db.commit()
    ins = [(e["success"], e["error"]) for e in events(db_path) if e["operation"] == "INSERT"]
    assert len(ins) == 3 and all(s == 0 for s, _ in ins)
    assert "UNIQUE constraint failed" in ins[-1][1]
    assert db.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert_verified(db_path)


def test_insert_or_fail_keeps_partial_rows_with_event(db_path):
    conn = heliosdb.connect(db_path, config="default", isolation_level=None)
    conn.execute("CREATE TABLE t(x UNIQUE)")
    conn.execute("INSERT INTO t VALUES (3)")
    with pytest.raises(heliosdb.IntegrityError):
        conn.execute("INSERT OR FAIL INTO t VALUES (1), (2), (3), (4)")
    with pytest.raises(heliosdb.IntegrityError):
        conn.executemany("INSERT INTO t VALUES (?)", [(5,), (6,), (5,)])
    rows = sorted(r for (r,) in conn.execute("SELECT x FROM t"))
    assert rows == [1, 2, 3, 5, 6]   # as sqlite3 in autocommit mode
    conn.close()
    bad = [(e["affected_rows"], e["success"]) for e in events(db_path) if e["success"] == 0]
    assert bad == [(2, 0), (2, 0)]   # the rows that stayed are accounted for


def test_several_connections_one_chain(db_path):
    conns = [connect(db_path, "default", user=f"u{i}") for i in range(3)]
    conns[0].execute("CREATE TABLE t(x)")
    conns[0].commit()
    for i in range(30):
        c = conns[i % 3]
        c.execute("INSERT INTO t VALUES (?)", (i,))
        if i % 2:
            c.commit()
        else:
            c.rollback() if i % 4 == 0 else c.commit()
    for c in conns:
        c.close()
    evs = events(db_path)
    ok = [e for e in evs if e["operation"] == "INSERT" and e["success"] == 1]
    assert len(ok) == apsw.Connection(db_path).execute("SELECT count(*) FROM t").fetchone()[0]
    assert len([e for e in evs if e["operation"] == "INSERT"]) == 30
    assert_verified(db_path)


_WRITER = r"""
import sys, heliosdb
path, me, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = heliosdb.connect(path, config="default", audit_user=me, timeout=30)
for i in range(n):
    conn.execute("INSERT INTO t(who, i) VALUES (?, ?)", (me, i))
    if i % 3 == 2:
        conn.rollback()
    else:
        conn.commit()
conn.close()
"""


def test_two_processes_one_linear_chain(db_path, chain_impl):
    conn = heliosdb.connect(db_path, config="default")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(who, i)")
    conn.close()
    import subprocess
    env = dict(os.environ, HELIOSDB_IMPL=chain_impl)
    env.pop("HELIOSDB_PURE", None)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, db_path, f"p{k}", "60"],
                              env=env, stderr=subprocess.PIPE, text=True) for k in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    evs = events(db_path)
    for k in range(3):
        mine = [e for e in evs if e["user"] == f"p{k}" and e["operation"] == "INSERT"]
        assert len(mine) == 60
        assert sum(e["success"] for e in mine) == 40
    assert apsw.Connection(db_path).execute("SELECT count(*) FROM t").fetchone() == (120,)
    assert_verified(db_path)


def test_capture_across_alter_and_rebuild(db, db_path):
    db.execute("INSERT INTO t(v) VALUES ('a')")
    db.commit()
    db.executescript("""
        ALTER TABLE t ADD COLUMN extra;
        CREATE TABLE t_new(id INTEGER PRIMARY KEY, v TEXT, n INTEGER, extra);
        INSERT INTO t_new SELECT * FROM t;
        DROP TABLE t;
        ALTER TABLE t_new RENAME TO t;
    """)
    db.execute("INSERT INTO t(v, extra) VALUES ('b', 1)")
    db.execute("UPDATE t SET extra = 2")
    db.commit()
    evs = [(e["operation"], e["target"], e["affected_rows"]) for e in sql_events(db_path)
           if e["operation"] not in ("BEGIN", "COMMIT")]
    assert evs[-7:] == [("ALTER_TABLE", "t", None), ("CREATE_TABLE", "t_new", None),
                        ("INSERT", "t_new", 1), ("DROP_TABLE", "t", None),
                        ("ALTER_TABLE", "t_new", None), ("INSERT", "t", 1),
                        ("UPDATE", "t", 2)]
    upd = [e for e in events(db_path) if e["operation"] == "UPDATE"][-1]
    assert json.loads(upd["new_values"])[0]["values"][-1] == 2
    assert_verified(db_path)


def test_attach_plain_second_database(db, db_path, tmp_path):
    other = str(tmp_path / "other.db")
    raw = apsw.Connection(other)
    raw.execute("CREATE TABLE o(x)")
    raw.close()
    db.commit()
    db.execute("ATTACH DATABASE ? AS aux", (other,))
    db.execute("INSERT INTO aux.o VALUES (1)")
    db.execute("INSERT INTO t(v) VALUES ('main')")
    db.commit()
    db.execute("DETACH DATABASE aux")
    evs = sql_events(db_path)
    o = [(e["operation"], e["target"]) for e in evs if e["operation"] != "BEGIN"
         and e["operation"] != "COMMIT"]
    assert "ATTACH" in [x for x, _ in o] and ("INSERT", "aux.o") in o and ("DETACH", "aux") in o
    # the attached file is left alone: no audit table there
    names = [r for (r,) in apsw.Connection(other).execute("SELECT name FROM sqlite_master")]
    assert names == ["o"]
    assert_verified(db_path)


# --- sqlite3 behaviour kept ------------------------------------------------------------

def test_results_like_sqlite3(db_path):
    import sqlite3
    out = []
    for mod, kw in ((sqlite3, {}), (heliosdb, {"config": "verbose"})):
        conn = mod.connect(db_path + mod.__name__, **kw)
        cur = conn.cursor()
        cur.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        r = [cur.rowcount]
        cur.execute("INSERT INTO t(v) VALUES ('a'), ('b')")
        r += [cur.rowcount, cur.lastrowid, conn.in_transaction]
        cur.execute("SELECT last_insert_rowid()")
        r += [cur.fetchone()]
        cur.execute("UPDATE t SET v = v || '!'")
        r += [cur.rowcount]
        cur.execute("SELECT id, v FROM t ORDER BY id")
        r += [cur.description, cur.rowcount, cur.fetchone(), cur.fetchall()]
        cur.execute("INSERT INTO t(v) VALUES ('c') RETURNING id, v")
        r += [cur.description, cur.fetchall(), cur.rowcount]
        cur.execute("DELETE FROM t WHERE id > 1")
        r += [cur.rowcount]
        conn.commit()
        r += [conn.in_transaction]
        conn.isolation_level = None
        cur.execute("INSERT INTO t(v) VALUES ('z') RETURNING id")
        r += [cur.fetchone(), cur.lastrowid]
        r += [list(conn.execute("SELECT * FROM t ORDER BY id"))]
        conn.close()
        out.append(r)
    assert out[0] == out[1]


def test_executemany_rowcount_like_sqlite3(db):
    db.isolation_level = None   # autocommit: the batch's events are written in its wrapper
    cur = db.executemany("INSERT INTO t(v) VALUES (?)", [("a",), ("b",)])
    assert cur.rowcount == 2


def test_audit_rows_do_not_change_last_insert_rowid(db):
    db.execute("INSERT INTO t(id, v) VALUES (41, 'x')")
    db.commit()
    assert db.execute("SELECT last_insert_rowid()").fetchone() == (41,)


# --- encrypted database ----------------------------------------------------------------

def test_capture_on_encrypted_database(db_path, raw_key):
    from heliosdb import native
    if not native.available():
        pytest.skip("encryption needs the native module")
    conn = heliosdb.connect(db_path, config="default", key=raw_key)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES ('secret-value')")
    conn.commit()
    conn.close()
    assert b"secret-value" not in open(db_path, "rb").read()
    assert ops(db_path, key=raw_key) == ["LOGIN", "CREATE_TABLE", "INSERT", "LOGOUT"]
    assert_verified(db_path, key=raw_key)


# --- more transaction paths --------------------------------------------------------------

def test_select_buffer_flush_with_unfetched_cursor(db_path):
    conn = connect(db_path, async_buffer_size=2)
    conn.execute("CREATE TABLE t(x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5)])
    conn.commit()
    conn.isolation_level = None
    c1 = conn.execute("SELECT x FROM t ORDER BY x")
    assert c1.fetchone() == (0,)
    c2 = conn.execute("SELECT x FROM t ORDER BY x DESC")   # fills the buffer: flush
    assert c1.fetchall() == [(1,), (2,), (3,), (4,)] and c2.fetchone() == (4,)
    assert ops(db_path).count("SELECT") == 2
    conn.close()


def test_pragma_with_result_in_autocommit(db_path):
    conn = connect(db_path, "default")
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    assert conn.execute("PRAGMA user_version").fetchone() == (0,)
    conn.execute("VACUUM")
    conn.close()
    evs = [(e["operation"], e["target"], e["query"]) for e in sql_events(db_path)]
    assert evs == [("PRAGMA", "journal_mode", "PRAGMA journal_mode=WAL"),
                   ("PRAGMA", "user_version", "PRAGMA user_version"),
                   ("VACUUM", None, "VACUUM")]
    assert_verified(db_path)


def test_executescript_with_its_own_transaction(db_path):
    conn = connect(db_path)
    conn.executescript("""
        CREATE TABLE t(x);
        BEGIN;
        INSERT INTO t VALUES (1);
        INSERT INTO t VALUES (2);
        COMMIT;
        BEGIN;
        INSERT INTO t VALUES (3);
        ROLLBACK;
    """)
    conn.close()
    evs = [(e["operation"], e["success"]) for e in sql_events(db_path)]
    assert evs == [("CREATE_TABLE", 1), ("BEGIN", 1), ("INSERT", 1), ("INSERT", 1),
                   ("COMMIT", 1), ("BEGIN", 1), ("INSERT", 0), ("ROLLBACK", 1)]


def test_commit_failure_deferred_fk_then_rollback(db_path):
    conn = connect(db_path)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE p(id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE c(pid REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    conn.commit()
    conn.execute("INSERT INTO c VALUES (42)")
    with pytest.raises(heliosdb.IntegrityError):
        conn.execute("INSERT INTO p VALUES (NULL), (NULL), (1)")  # failure, deferred
    with pytest.raises(heliosdb.IntegrityError, match="FOREIGN KEY"):
        conn.commit()
    assert conn.in_transaction
    conn.rollback()
    conn.close()
    evs = [(e["operation"], e["success"], e["error"]) for e in sql_events(db_path)][-5:]
    assert evs[0] == ("BEGIN", 1, None)
    assert evs[1] == ("INSERT", 0, "rolled back")
    assert evs[2][:2] == ("INSERT", 0) and "UNIQUE" in evs[2][2]
    assert evs[3][:2] == ("COMMIT", 0) and "FOREIGN KEY" in evs[3][2]
    assert evs[4][0] == "ROLLBACK"
    assert_verified(db_path)


def test_user_sql_commit_writes_deferred_failures(db_path):
    conn = heliosdb.connect(db_path, config="default", isolation_level=None)
    conn.execute("CREATE TABLE t(x UNIQUE)")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(heliosdb.IntegrityError):
        conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("COMMIT")
    # written now, not at close
    bad = [e for e in events(db_path) if e["success"] == 0]
    assert len(bad) == 1 and "UNIQUE" in bad[0]["error"]
    conn.close()


def test_close_with_open_transaction_records_rollback(db_path):
    conn = connect(db_path)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    evs = [(e["operation"], e["success"], e["error"]) for e in events(db_path)]
    assert evs[-4:] == [("BEGIN", 1, None), ("INSERT", 0, "rolled back at close"),
                        ("ROLLBACK", 1, None), ("LOGOUT", 1, None)]
    assert list(apsw.Connection(db_path).execute("SELECT count(*) FROM t")) == [(0,)]


def test_context_manager_commits_and_rolls_back(db, db_path):
    with db:
        db.execute("INSERT INTO t(v) VALUES ('in')")
    with pytest.raises(ZeroDivisionError):
        with db:
            db.execute("INSERT INTO t(v) VALUES ('out')")
            1 / 0
    ins = [(e["query"], e["success"]) for e in events(db_path) if e["operation"] == "INSERT"]
    assert ins == [("INSERT INTO t(v) VALUES ('in')", 1), ("INSERT INTO t(v) VALUES ('out')", 0)]


def test_returning_counts_and_atomicity(db_path, monkeypatch):
    conn = heliosdb.connect(db_path, config="default", isolation_level=None)
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    cur = conn.execute("INSERT INTO t(v) VALUES ('a'), ('b'), ('c') RETURNING id")
    assert cur.fetchall() == [(1,), (2,), (3,)] and cur.rowcount == 3
    conn.execute("BEGIN")
    cur = conn.execute("DELETE FROM t WHERE id < 3 RETURNING v")
    assert cur.fetchone() == ("a",)
    conn.execute("COMMIT")
    cur = conn.execute("UPDATE t SET v = 'none' WHERE id = 99 RETURNING id")
    assert cur.fetchall() == [] and cur.rowcount == 0
    with audit_write_fails_for(monkeypatch, "UPDATE"):
        with pytest.raises(heliosdb.OperationalError, match="simulated"):
            conn.execute("UPDATE t SET v = 'z' RETURNING id")
    assert conn.execute("SELECT v FROM t").fetchall() == [("c",)]
    conn.close()
    dml = [(e["operation"], e["affected_rows"], e["success"]) for e in sql_events(db_path)]
    assert dml[1:] == [("INSERT", 3, 1), ("DELETE", 2, 1), ("UPDATE", 0, 1), ("UPDATE", 0, 0)]


@pytest.mark.parametrize("sql", [
    "-- a comment first\nINSERT INTO t VALUES (1)",
    "/* block */ INSERT INTO t VALUES (1)",
    "WITH v(x) AS (SELECT 1) INSERT INTO t SELECT x FROM v",
    "  CREATE TABLE u(x)",
])
def test_autocommit_detection_not_fooled(db_path, monkeypatch, sql):
    conn = heliosdb.connect(db_path, config="default", isolation_level=None)
    conn.execute("CREATE TABLE t(x)")
    with audit_write_fails_for(monkeypatch, "INSERT", "CREATE_TABLE"):
        with pytest.raises(heliosdb.OperationalError, match="simulated"):
            conn.execute(sql)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'u'").fetchone() == (0,)
    conn.close()


def test_failure_write_blocked_does_not_mask_error(db_path):
    conn = heliosdb.connect(db_path, config="default", isolation_level=None, timeout=0)
    conn.execute("CREATE TABLE t(x)")
    other = apsw.Connection(db_path)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(heliosdb.OperationalError, match="locked"):
        conn.execute("INSERT INTO t VALUES (1)")
    other.execute("COMMIT")
    other.close()
    conn.execute("INSERT INTO t VALUES (2)")   # the kept failure goes with the next write
    evs = [(e["operation"], e["success"]) for e in sql_events(db_path)]
    assert evs == [("CREATE_TABLE", 1), ("INSERT", 0), ("INSERT", 1)]
    bad = [e for e in events(db_path) if e["success"] == 0][0]
    assert "locked" in bad["error"] and bad["query"] == "INSERT INTO t VALUES (1)"
    conn.close()
    assert_verified(db_path)


def test_executemany_failure_in_transaction_keeps_partial_rows(db, db_path):
    with pytest.raises(heliosdb.IntegrityError):
        db.executemany("INSERT INTO t(v) VALUES (?)", [("a",), ("b",), ("a",)])
    assert db.in_transaction      # sqlite3: the rows before the failure stay in it
    db.commit()
    assert db.execute("SELECT v FROM t ORDER BY v").fetchall() == [("a",), ("b",)]
    ins = [e for e in events(db_path) if e["operation"] == "INSERT"]
    assert len(ins) == 1 and ins[0]["affected_rows"] == 2 and ins[0]["success"] == 0
    assert len(json.loads(ins[0]["new_values"])) == 2
    assert_verified(db_path)


def test_step_failure_keeps_transaction_like_sqlite3(db, db_path):
    db.execute("INSERT INTO t(v) VALUES ('a')")
    db.commit()
    with pytest.raises(heliosdb.IntegrityError):
        db.execute("INSERT INTO t(v) VALUES ('a')")
    assert db.in_transaction          # compiled and stepped: BEGIN was issued, as sqlite3
    with pytest.raises(heliosdb.DatabaseError, match="append-only"):
        db.execute("DELETE FROM __audit_log")
    db.rollback()
    bad = [e["query"] for e in events(db_path) if e["success"] == 0]
    assert bad == ["INSERT INTO t(v) VALUES ('a')", "DELETE FROM __audit_log"]


def test_row_values_name_tables_and_blobs(db_path):
    conn = connect(db_path)
    conn.execute("CREATE TABLE t(x BLOB)")
    conn.execute("CREATE TABLE hist(x BLOB)")
    conn.execute("CREATE TRIGGER th AFTER INSERT ON t BEGIN INSERT INTO hist VALUES (new.x); END")
    conn.execute("INSERT INTO t VALUES (?)", (b"\x00\xff",))
    conn.commit()
    conn.close()
    ins = [e for e in events(db_path) if e["operation"] == "INSERT"][0]
    assert ins["target"] == "t,hist" and ins["affected_rows"] == 1
    new = json.loads(ins["new_values"])
    assert [r["table"] for r in new] == ["t", "hist"]
    assert new[0]["values"] == [{"$base64": "AP8="}]


def test_own_changes_counted(db):
    n = db.audit.own_changes
    db.execute("INSERT INTO t(v) VALUES ('a')")
    db.commit()
    # BEGIN, INSERT, COMMIT events (verbose), and the Merkle frontier's __audit_meta row
    # that their append updates (issue 20): heliosdb's own changes, hidden from the user's
    # total_changes() like the events.
    assert db.audit.own_changes == n + 3 + 1


def test_audited_connection_reopen_keeps_chain(db_path):
    for i in range(3):
        conn = connect(db_path, "default")
        conn.execute("CREATE TABLE IF NOT EXISTS t(x)")
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.commit()
        conn.close()
    assert ops(db_path).count("INSERT") == 3 and ops(db_path).count("LOGIN") == 3
    assert_verified(db_path)


_PURE_CHILD = r"""
import sys, heliosdb
from heliosdb.audit import chain
assert chain.__impl__ == "pure", chain.__impl__
conn = heliosdb.connect(sys.argv[1], config="verbose", audit_user="child")
conn.execute("CREATE TABLE IF NOT EXISTS t(x)")
conn.executemany("INSERT INTO t VALUES (?)", [(1,), ("zoë",), (b"\x00",)])
conn.execute("SELECT * FROM t").fetchall()
conn.commit()
try:
    conn.execute("DELETE FROM __audit_log")
except heliosdb.DatabaseError:
    pass
conn.close()
"""


def test_chain_written_under_heliosdb_pure_verifies_here(db_path, chain_impl):
    """HELIOSDB_PURE=1 in a child (the real switch, native module hidden) and this
    process's implementation write and verify one chain."""
    conn = connect(db_path)
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (0)")
    conn.commit()
    conn.close()
    r = run_python(_PURE_CHILD, db_path, env={"HELIOSDB_PURE": "1", "HELIOSDB_IMPL": None})
    assert r.returncode == 0, r.stderr
    conn = connect(db_path)
    conn.execute("INSERT INTO t VALUES (9)")
    conn.commit()
    assert conn.audit.verify().ok
    conn.close()
    evs = events(db_path)
    assert {e["user"] for e in evs} == {"alice", "child"}
    assert_verified(db_path)


# --- events of a transaction are stored in batches ----------------------------------------

def test_queued_events_visible_to_sql_and_api_inside_transaction(db, db_path):
    db.execute("INSERT INTO t(v) VALUES ('a')")
    n = db.execute("SELECT count(*) FROM __audit_log WHERE operation = 'INSERT'").fetchone()
    assert n == (1,)
    db.execute("INSERT INTO t(v) VALUES ('b')")
    h = db.audit.head()
    assert db.execute("SELECT max(id) FROM __audit_log").fetchone() == (h.last_id,)
    assert db.audit.verify().ok
    db.commit()
    assert ops(db_path).count("INSERT") == 2


def test_large_transaction_stored_in_batches(db, db_path):
    start = db.audit.own_changes
    for i in range(1500):
        db.execute("INSERT INTO t(n) VALUES (?)", (i,))
    stored = db.audit.own_changes - start
    assert 1000 <= stored < 1501           # a batch went before the commit
    db.commit()
    assert ops(db_path).count("INSERT") == 1500
    assert_verified(db_path)


def test_savepoints_inside_implicit_transaction(db, db_path):
    db.execute("INSERT INTO t(v) VALUES ('1')")
    db.execute("SAVEPOINT s")
    db.execute("INSERT INTO t(v) VALUES ('2')")
    db.execute("SAVEPOINT s2")
    db.execute("INSERT INTO t(v) VALUES ('3')")
    db.execute("RELEASE s2")
    db.execute("ROLLBACK TO s")
    db.execute("INSERT INTO t(v) VALUES ('4')")
    db.commit()
    assert [v for (v,) in db.execute("SELECT v FROM t ORDER BY id")] == ["1", "4"]
    ins = {e["query"][-4:-1]: (e["success"], e["error"]) for e in events(db_path)
           if e["operation"] == "INSERT"}
    assert ins == {"'1'": (1, None), "'4'": (1, None),
                   "'2'": (0, "rolled back to savepoint s"),
                   "'3'": (0, "rolled back to savepoint s")}
    assert_verified(db_path)


def test_commit_order_is_chain_order_across_connections(db_path):
    a = connect(db_path, "default", user="a")
    b = connect(db_path, "default", user="b")
    a.execute("CREATE TABLE t(x)")
    a.commit()
    a.execute("INSERT INTO t VALUES (1)")
    a.commit()
    b.execute("INSERT INTO t VALUES (2)")
    b.commit()
    a.close()
    b.close()
    ins = [e["user"] for e in events(db_path) if e["operation"] == "INSERT"]
    assert ins == ["a", "b"]
    assert_verified(db_path)


def _total_changes_run(mod, path, **kw):
    conn = mod.connect(path, isolation_level=None, **kw)
    out = []
    adjust = (lambda: conn.audit.own_changes) if kw else (lambda: 0)
    for sql in ["CREATE TABLE t(x)", "INSERT INTO t VALUES (1), (2)", "UPDATE t SET x = 3",
                "BEGIN", "DELETE FROM t WHERE x = 3", "ROLLBACK", "INSERT INTO t VALUES (4)"]:
        conn.execute(sql)
        raw = conn._apsw.total_changes() if kw else conn.total_changes
        out.append((conn.total_changes, raw - adjust()))
    conn.close()
    return out


def test_own_changes_explain_total_changes(db_path):
    import sqlite3
    plain = [t for t, _ in _total_changes_run(sqlite3, db_path + ".plain")]
    audited = [adj for _, adj in _total_changes_run(heliosdb, db_path, config="verbose")]
    assert audited == plain


def test_total_changes_like_sqlite3(db_path):
    import sqlite3
    plain = [t for t, _ in _total_changes_run(sqlite3, db_path + ".plain")]
    audited = [t for t, _ in _total_changes_run(heliosdb, db_path, config="verbose")]
    assert audited == plain


# --- property: the committed events replay to the table ------------------------------------

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_OPS = ["insert", "replace", "upsert", "update", "delete", "many", "commit", "rollback",
        "savepoint", "rollback_to", "release", "select", "autocommit", "deferred"]
_STEP = st.tuples(st.sampled_from(_OPS), st.integers(1, 8))


def _replay(path):
    """Apply the old/new row values of every successful event, in chain order."""
    rows: dict[int, list] = {}
    for e in events(path):
        if not e["success"] or e["operation"] not in ("INSERT", "UPDATE", "DELETE"):
            continue
        for r in json.loads(e["old_values"] or "[]"):
            rows.pop(r["rowid"], None)
        for r in json.loads(e["new_values"] or "[]"):
            rows[r["rowid"]] = r["values"]
    return rows


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=4, max_size=30))
def test_committed_events_replay_to_table(tmp_path_factory, steps):
    path = str(tmp_path_factory.mktemp("replay") / "r.db")
    conn = connect(path, "verbose")
    conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    conn.commit()
    sp = 0
    for i, (op, k) in enumerate(steps):
        try:
            if op == "insert":
                conn.execute("INSERT INTO t(k, v) VALUES (?, ?)", (k, i))
            elif op == "replace":
                conn.execute("INSERT OR REPLACE INTO t(k, v) VALUES (?, ?)", (k, i))
            elif op == "upsert":
                conn.execute("INSERT INTO t(k, v) VALUES (?, ?) "
                             "ON CONFLICT(k) DO UPDATE SET v = v + 100", (k, i))
            elif op == "update":
                conn.execute("UPDATE t SET v = ? WHERE k >= ?", (i, k))
            elif op == "delete":
                conn.execute("DELETE FROM t WHERE k = ?", (k,))
            elif op == "many":
                conn.executemany("INSERT OR REPLACE INTO t(k, v) VALUES (?, ?)",
                                 [(k, i), (k + 10, i)])
            elif op == "commit":
                conn.commit()
            elif op == "rollback":
                conn.rollback()
                sp = 0
            elif op == "savepoint":
                conn.execute(f"SAVEPOINT s{sp}")
                sp += 1
            elif op == "rollback_to" and sp:
                conn.execute(f"ROLLBACK TO s{sp - 1}")
            elif op == "release" and sp:
                sp -= 1
                conn.execute(f"RELEASE s{sp}")
            elif op == "select":
                conn.execute("SELECT * FROM t").fetchall()
            elif op == "autocommit":
                conn.isolation_level = None
            elif op == "deferred":
                conn.isolation_level = ""
            if not conn.in_transaction:
                sp = 0
        except heliosdb.IntegrityError:
            pass
    conn.commit()
    table = {k: [k, v] for k, v in conn.execute("SELECT k, v FROM t")}
    conn.close()
    assert _replay(path) == table
    assert_verified(path)


@EXIT_LEAK
def test_a_connection_left_open_at_interpreter_exit_still_logs_out(tmp_path) -> None:
    """Never closed, dropped while Python shuts down: its session still ends with LOGOUT,
    and nothing is reported as ignored (the store imports nothing lazily on that path)."""
    from helpers.processes import run_python

    db = tmp_path / "left_open.db"
    r = run_python(
        "import sys, heliosdb\n"
        "conn = heliosdb.connect(sys.argv[1], config='default')\n"
        "conn.execute('CREATE TABLE t(a)')\n"
        "conn.execute('INSERT INTO t VALUES (1)')\n"
        "conn.commit()\n",  # no close(): the interpreter exits with it open
        str(db))
    assert r.returncode == 0, r.stderr
    assert "Exception ignored" not in r.stderr, r.stderr
    assert ops(str(db))[-3:] == ["CREATE_TABLE", "INSERT", "LOGOUT"]
