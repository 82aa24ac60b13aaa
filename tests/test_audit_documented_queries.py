"""The audit SQL of the product documents runs unchanged (issue 16 item 1).

Each query is copied verbatim (whitespace joined) from ../shared/product-docs, named by
document and line; queries in PostgreSQL's dialect (NOW(), INTERVAL, DATE_TRUNC) or with
template holes (``{where_sql}``) are not SQLite and are not listed. ``?`` parameters are
bound by the test. The queries run through an audited heliosdb connection, on a database
built here, and their results are checked where the document says what they mean.
"""
from __future__ import annotations

import datetime as dt
import re

import pytest

import heliosdb

# (document, line, query) -- 000 = audit business case, 002 = audit tutorial.
DOCUMENTED = [
    ("000", 317, "SELECT id, timestamp, session_id, user, operation, target, query, "
                 "affected_rows, success, error, checksum FROM __audit_log WHERE timestamp >= "
                 "datetime('now', '-30 days') AND operation IN ('INSERT', 'UPDATE', 'DELETE') "
                 "ORDER BY timestamp DESC"),
    ("000", 351, "SELECT id, timestamp, checksum FROM __audit_log ORDER BY id ASC"),
    ("000", 1038, "SELECT timestamp, operation, target, query, success FROM __audit_log WHERE "
                  "query LIKE ? AND operation IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE') "
                  "ORDER BY timestamp DESC"),
    ("000", 1093, "SELECT timestamp, affected_rows FROM __audit_log WHERE query LIKE ? AND "
                  "operation = 'DELETE' ORDER BY timestamp DESC LIMIT 1"),
    ("000", 1196, "SELECT COUNT(*) FROM __audit_log WHERE query LIKE ? AND operation = 'DELETE'"),
    ("000", 1393, "SELECT id, timestamp, session_id, user, operation, target, query, "
                  "affected_rows, success, error, checksum FROM __audit_log WHERE timestamp >= ? "
                  "AND timestamp <= ?"),
    ("000", 1914, "SELECT id, timestamp, user, operation, target, query, affected_rows, success, "
                  "checksum FROM __audit_log WHERE id > ? ORDER BY id ASC"),
    ("000", 1965, "SELECT COUNT(*) FROM __audit_log"),
    ("000", 1970, "SELECT COUNT(*) FROM __audit_log WHERE target = 'equipment_parameters' AND "
                  "operation = 'INSERT'"),
    ("000", 1977, "SELECT COUNT(*) FROM __audit_log WHERE success = false"),
    ("002", 58, "SELECT * FROM __audit_log LIMIT 1"),
]


@pytest.fixture
def conn(tmp_path):
    c = heliosdb.connect(str(tmp_path / "docs.db"), config="verbose", audit_user="alice")
    c.execute("CREATE TABLE equipment_parameters(id INTEGER PRIMARY KEY, v)")
    c.execute("INSERT INTO equipment_parameters(v) VALUES (1)")
    c.execute("DELETE FROM equipment_parameters WHERE id = 1")
    c.commit()
    with pytest.raises(heliosdb.DatabaseError):
        c.execute("DELETE FROM __audit_log")
    yield c
    c.close()


def _params(sql):
    n = sql.count("?")
    if "timestamp >= ?" in sql:
        return ("2000-01-01 00:00:00", "2999-12-31 23:59:59")
    if "id > ?" in sql:
        return (0,)
    return ("%equipment%",) * n


@pytest.mark.parametrize("doc,line,sql", DOCUMENTED, ids=[f"{d}:{n}" for d, n, _ in DOCUMENTED])
def test_documented_query_runs_unchanged(conn, doc, line, sql):
    rows = conn.execute(sql, _params(sql)).fetchall()
    assert rows, "every documented query finds events in this log"


def test_timestamp_is_utc_and_compares_with_sqlite_dates(conn):
    rows = conn.execute("SELECT ts_us, timestamp FROM __audit_log ORDER BY id").fetchall()
    for ts_us, text in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", text)
        want = dt.datetime.fromtimestamp(ts_us / 1e6, dt.timezone.utc)
        got = dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
        assert abs((got - want).total_seconds()) <= 0.001
    recent = conn.execute("SELECT count(*) FROM __audit_log WHERE timestamp >= "
                          "datetime('now', '-30 days')").fetchone()[0]
    assert recent == len(rows)
    assert conn.execute("SELECT count(*) FROM __audit_log WHERE timestamp < "
                        "datetime('now', '-1 day')").fetchone()[0] == 0


def test_time_range_uses_an_index(conn):
    """A time window is read as an id range on the primary key (ts_us grows with id), not
    through an index every event pays for: docs/AUDIT_FORMAT.md, "Indexes" (the SQL on
    ``timestamp`` above runs unchanged, unindexed on logs created with this layout)."""
    sql, args = conn.audit.query().between("2026-01-01", "2026-02-01").sql()
    plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall())
    assert "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan, plan


def test_checksum_hex_is_the_documented_64_hex_digits(conn):
    bad = conn.execute("SELECT id FROM __audit_log WHERE LENGTH(checksum_hex) != 64 OR "
                       "checksum_hex NOT GLOB '[0-9a-f]*'").fetchall()
    assert bad == []
    for ck, hx in conn.execute("SELECT checksum, checksum_hex FROM __audit_log"):
        assert hx == ck.hex()


def test_old_logs_gain_the_generated_columns(tmp_path):
    """A log written before the generated columns existed gets them at the next connect,
    and still verifies (nothing stored or hashed changes)."""
    import sqlite3

    p = str(tmp_path / "old.db")
    c = heliosdb.connect(p, config="default")
    c.execute("CREATE TABLE t(x)")
    c.commit()
    c.close()
    raw = sqlite3.connect(p)  # rebuild the table as the previous release created it
    cols = [r[1] for r in raw.execute("PRAGMA table_info(__audit_log)")]
    raw.executescript(f"""
        CREATE TABLE old AS SELECT {', '.join(cols)} FROM __audit_log;
        DROP TABLE __audit_log;
        ALTER TABLE old RENAME TO __audit_log;""")
    raw.commit()
    raw.close()
    c = heliosdb.connect(p)
    assert c.execute("SELECT count(*) FROM __audit_log WHERE timestamp IS NOT NULL").fetchone()[0]
    assert c.audit.verify().ok
    c.close()
