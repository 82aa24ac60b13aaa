"""The audit log's indexes (issue 18 item 3): what each layout holds, and that
``conn.audit.query()`` gives the brute-force answer on each through an index or an id range.

The current layout (``store.index_sql``) has no time index: ``ts_us`` grows with ``id``, so
the query translates a time range into an id range; its operation index is partial (the
bulk operations are left out). Files created before it keep their indexes: the three
covering ones (``store.covering3_index_sql``) or the six legacy ones
(``store.legacy_index_sql``), and the ``strftime`` form of ``timestamp``; nothing is added
to or dropped from them. Plans are checked with ``EXPLAIN QUERY PLAN`` (no timings).
"""
from __future__ import annotations

import random

import apsw
import pytest

import heliosdb
from heliosdb.audit import store
from heliosdb.audit.events import COLUMNS, EventFields
from heliosdb.audit.neighbourhood import find_foreign_schema

TABLE = "__audit_log"
T0 = 1_900_000_000_000_000  # 2030: later than the connection's own LOGIN stamps
USERS = ("alice", "bob", "carol", "dave")
OPS = ("INSERT", "INSERT", "INSERT", "UPDATE", "DELETE", "SELECT", "GRANT")
TARGETS = ("orders", "customers", "orders,customers", "audit_notes", None)

#: What the previous version stored in sqlite_schema for its indexes, byte for byte: a file
#: created by it must be recognised (not reported as foreign) and served.
OLD_STORED_SQL = {
    "__audit_log_ts": 'CREATE INDEX "__audit_log_ts" ON "__audit_log"(ts_us)',
    "__audit_log_user": 'CREATE INDEX "__audit_log_user" ON "__audit_log"("user", ts_us)',
    "__audit_log_operation":
        'CREATE INDEX "__audit_log_operation" ON "__audit_log"(operation, ts_us)',
    "__audit_log_target": 'CREATE INDEX "__audit_log_target" ON "__audit_log"(target, ts_us)',
    "__audit_log_session":
        'CREATE INDEX "__audit_log_session" ON "__audit_log"(session_id, ts_us)',
    "__audit_log_timestamp":
        'CREATE INDEX "__audit_log_timestamp" ON "__audit_log"("timestamp")',
}


#: What the version before this one stored (three covering indexes), byte for byte.
COVERING3_STORED_SQL = {
    "__audit_log_by_user":
        'CREATE INDEX "__audit_log_by_user" ON "__audit_log"("user", id, operation, target, '
        'success)',
    "__audit_log_by_operation":
        'CREATE INDEX "__audit_log_by_operation" ON "__audit_log"(operation, id, "user", '
        'target, success)',
    "__audit_log_by_target":
        'CREATE INDEX "__audit_log_by_target" ON "__audit_log"(target, id, operation, "user", '
        'success)',
}


def _events(rnd: random.Random, n: int) -> list[EventFields]:
    out = []
    for i in range(n):
        user = USERS[rnd.randrange(len(USERS))]
        out.append(EventFields(OPS[rnd.randrange(len(OPS))],
                               target=TARGETS[rnd.randrange(len(TARGETS))], user=user,
                               session_id=f"s-{user}-{i // 50}", query=f"stmt {i}",
                               affected_rows=1, success=0 if rnd.random() < 0.1 else 1))
    return out


def _make_old(path: str, indexes: list[str]) -> None:
    """A log file as a previous version created it: its table with the ``strftime`` form of
    ``timestamp``, and ``indexes`` only."""
    raw = apsw.Connection(path)
    schema = store._schema_sql(TABLE)
    raw.execute(schema[0].replace(store.GENERATED_COLUMNS["timestamp"],
                                  store.STRFTIME_TIMESTAMP))
    store.ensure_schema(raw, TABLE)  # the meta table and rows; no index on an existing log
    assert _indexes_of(raw) == {}
    for sql in indexes:
        raw.execute(sql)
    raw.close()


def _make_legacy(path: str) -> None:
    """A log file as the version before the covering indexes created it: the six legacy
    indexes only."""
    _make_old(path, store.legacy_index_sql(TABLE))


def _make_covering3(path: str) -> None:
    """A log file as the previous version created it: the three covering indexes."""
    _make_old(path, store.covering3_index_sql(TABLE))


@pytest.fixture(params=["current", "covering3", "legacy"])
def log(request, tmp_path):
    """An audited connection whose log holds about 600 events at irregular times."""
    path = str(tmp_path / f"{request.param}.db")
    if request.param == "legacy":
        _make_legacy(path)
    elif request.param == "covering3":
        _make_covering3(path)
    conn = heliosdb.connect(path, config="verbose", audit_user="alice")
    rnd = random.Random(18)
    at = T0
    s = conn.audit
    for _ in range(40):
        at += rnd.choice((1, 7, 1_000, 3_600_000_000))  # bursts and quiet hours
        with s._internal():
            store.append(s._db, s.table, _events(rnd, rnd.randrange(1, 30)), now_us=at)
        at = store.head(s._db, s.table).last_ts_us
    conn.layout = request.param
    yield conn
    conn.close()


def _rows(conn) -> list[dict]:
    cols = ", ".join(f'"{c}"' for c in COLUMNS)
    return [dict(zip(COLUMNS, r)) for r in conn.audit._db.execute(
        f"SELECT {cols} FROM {TABLE} ORDER BY id")]


def _brute(rows, *, user=None, operation=None, table=None, success=None, ts_lo=None,
           ts_hi=None, session=None, id_lo=None, id_hi=None):
    """The events a filter means, found by reading every row."""
    out = []
    for r in rows:
        if user is not None and r["user"] not in user:
            continue
        if operation is not None and r["operation"] not in operation:
            continue
        if table is not None and not (r["target"] and set(r["target"].split(",")) & set(table)):
            continue
        if success is not None and r["success"] != success:
            continue
        if ts_lo is not None and r["ts_us"] < ts_lo:
            continue
        if ts_hi is not None and r["ts_us"] >= ts_hi:
            continue
        if session is not None and r["session_id"] not in session:
            continue
        if id_lo is not None and r["id"] < id_lo:
            continue
        if id_hi is not None and r["id"] > id_hi:
            continue
        out.append(r["id"])
    return out


def _cases(rows):
    """(query builder, brute-force filter) pairs over the log's own times and values."""
    ts = [r["ts_us"] for r in rows if r["ts_us"] >= T0]
    a, b = ts[len(ts) // 4], ts[3 * len(ts) // 4]
    sid = rows[len(rows) // 2]["session_id"]
    return [
        (lambda q: q.user("bob"), dict(user={"bob"})),
        (lambda q: q.user("bob", "carol"), dict(user={"bob", "carol"})),
        (lambda q: q.operation("UPDATE"), dict(operation={"UPDATE"})),
        (lambda q: q.operation("grant", "DELETE"), dict(operation={"GRANT", "DELETE"})),
        (lambda q: q.operation("GRANT"), dict(operation={"GRANT"})),
        (lambda q: q.operation("GRANT", "LOGIN").since(a), dict(operation={"GRANT", "LOGIN"},
                                                                ts_lo=a)),
        (lambda q: q.table("orders"), dict(table={"orders"})),
        (lambda q: q.table("audit_notes"), dict(table={"audit_notes"})),
        (lambda q: q.success(False), dict(success=0)),
        (lambda q: q.success(True), dict(success=1)),
        (lambda q: q.between(a, b), dict(ts_lo=a, ts_hi=b)),
        (lambda q: q.between(a + 1, b - 1), dict(ts_lo=a + 1, ts_hi=b - 1)),
        (lambda q: q.since(b), dict(ts_lo=b)),
        (lambda q: q.until(a), dict(ts_hi=a)),
        (lambda q: q.between(0, T0 - 10), dict(ts_lo=0, ts_hi=T0 - 10)),
        (lambda q: q.since(ts[-1] + 1), dict(ts_lo=ts[-1] + 1)),
        (lambda q: q.session(sid), dict(session={sid})),
        (lambda q: q.user("carol").between(a, b), dict(user={"carol"}, ts_lo=a, ts_hi=b)),
        (lambda q: q.operation("INSERT").user("dave"), dict(operation={"INSERT"},
                                                            user={"dave"})),
        (lambda q: q.table("customers").operation("INSERT", "DELETE").since(a),
         dict(table={"customers"}, operation={"INSERT", "DELETE"}, ts_lo=a)),
        (lambda q: q.success(False).operation("SELECT"), dict(success=0,
                                                              operation={"SELECT"})),
        (lambda q: q.success(False).user("alice").until(b), dict(success=0, user={"alice"},
                                                                 ts_hi=b)),
        (lambda q: q.user("bob").ids(20, 300), dict(user={"bob"}, id_lo=20, id_hi=300)),
        (lambda q: q.after_id(100).operation("UPDATE"), dict(id_lo=101,
                                                             operation={"UPDATE"})),
    ]


def test_query_results_equal_a_scan_of_every_row(log):
    rows = _rows(log)
    assert len(rows) > 300
    for build, want in _cases(rows):
        q = build(log.audit.query())
        expect = _brute(rows, **want)
        assert q.ids_only() == expect, (log.layout, q)
        assert q.count() == len(expect), (log.layout, q)
        assert q.order("desc").limit(5).ids_only() == expect[::-1][:5], (log.layout, q)
        assert [e.id for e in q.offset(2).limit(3)] == expect[2:5], (log.layout, q)


#: Filters whose plan is a scan by design (docs/AUDIT_FORMAT.md, "Indexes"): success alone
#: (nearly every event succeeds; failures are checked inside the other indexes) and
#: sessions are not indexed; on the current layout, neither are the bulk operations (a
#: large share of the log each: read in id order).
_NEVER = ({"success": 1}, {"session": None}, {"success": 0})
UNINDEXED = {"current": _NEVER + ({"operation": {"UPDATE"}},
                                  {"operation": {"GRANT", "DELETE"}},
                                  {"success": 0, "operation": {"SELECT"}}),
             "covering3": _NEVER, "legacy": _NEVER}
#: The index each layout reads for a user, a target and an operation.
USER_IDX = {"current": "__audit_log_by_user", "covering3": "__audit_log_by_user",
            "legacy": "__audit_log_user"}
TARGET_IDX = {"current": "__audit_log_by_target", "covering3": "__audit_log_by_target",
              "legacy": "__audit_log_target"}


def _unindexed(layout: str, want: dict) -> bool:
    return any(set(want) == set(u) and all(v is None or want[k] == v for k, v in u.items())
               for u in UNINDEXED[layout])


def _plan(conn, sql, args) -> str:
    return " | ".join(str(r[3]) for r in conn.audit._db.execute("EXPLAIN QUERY PLAN " + sql,
                                                               args))


def test_every_filter_reads_an_index_or_an_id_range(log):
    rows = _rows(log)
    for build, want in _cases(rows):
        if _unindexed(log.layout, want):
            continue
        q = build(log.audit.query())
        for query in (q, q.order("desc").limit(10)):
            plan = _plan(log, *query.sql())
            assert "SCAN" not in plan.replace("SCAN CONSTANT", ""), (log.layout, query, plan)
            assert "USING INDEX" in plan or "USING COVERING INDEX" in plan \
                or "USING INTEGER PRIMARY KEY" in plan, (log.layout, query, plan)


def test_single_values_come_in_time_order_without_a_sort(log):
    """One value per filter: the index delivers its entries in time order, so "the latest
    100 events of alice" reads 100 entries, not all of hers."""
    q = log.audit.query()
    for query in (q.user("bob"), q.operation("UPDATE").order("desc"), q.table("audit_notes"),
                  q.user("carol").since(T0 + 5).limit(10), q.success(False).order("desc"),
                  q.between(T0, T0 + 3_600_000_000)):
        plan = _plan(log, *query.sql())
        assert "TEMP B-TREE" not in plan, (log.layout, query, plan)


def test_a_time_range_is_one_seek(log):
    """Current layout: the id range on the primary key, or within the user's entries;
    legacy layout: its (column, ts_us) indexes, or the id range."""
    plan = _plan(log, *log.audit.query().between(T0, T0 + 10).sql())
    assert "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan \
        or log.layout == "legacy" and "USING INDEX __audit_log_ts (ts_us>? AND ts_us<?)" in plan, \
        plan
    plan = _plan(log, *log.audit.query().user("bob").between(T0, T0 + 10).sql())
    want = (USER_IDX[log.layout] + (" (user=? AND id>? AND id<?)" if log.layout != "legacy"
                                    else " (user=? AND ts_us>? AND ts_us<?)"))
    assert want in plan, plan


def _indexes_of(raw) -> dict[str, str]:
    return {name: sql for name, sql in raw.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
        (TABLE,))}


def _indexes(conn) -> dict[str, str]:
    return _indexes_of(conn.audit._db)


def test_each_layout_keeps_its_own_indexes_and_verifies(log):
    """Opening a legacy file runs no DDL on its log (and a new file gets the current
    layout only); both are clean to the verifier and to the neighbourhood check."""
    have = _indexes(log)
    if log.layout == "legacy":
        assert have == OLD_STORED_SQL
    elif log.layout == "covering3":
        assert have == {sql.split('"')[1]: sql for sql in store.covering3_index_sql(TABLE)}
    else:
        assert have == {sql.split('"')[1]: sql for sql in store.index_sql(TABLE)}
    assert store.has_legacy_indexes(log.audit._db, TABLE) == (log.layout == "legacy")
    assert store.index_layout(log.audit._db, TABLE) == log.layout
    assert find_foreign_schema(log.audit._db) == []
    report = log.audit.verify()
    assert report.ok, report


def test_legacy_sql_is_what_the_previous_version_stored():
    assert {sql.split('"')[1]: sql for sql in store.legacy_index_sql(TABLE)} == OLD_STORED_SQL
    assert {sql.split('"')[1]: sql for sql in store.covering3_index_sql(TABLE)} \
        == COVERING3_STORED_SQL
    known = store.known_indexes(TABLE)
    for name, sql in {**OLD_STORED_SQL, **COVERING3_STORED_SQL}.items():
        assert known[name.lower()] == sql
    # a name has one SQL in every layout that has it
    for layout in (store.legacy_index_sql, store.covering3_index_sql, store.index_sql):
        for sql in layout(TABLE):
            assert known[sql.split('"')[1].lower()] == sql


@pytest.mark.parametrize("make", [_make_legacy, _make_covering3])
def test_reopening_an_old_file_adds_nothing(tmp_path, make):
    path = str(tmp_path / "old.db")
    make(path)
    raw = apsw.Connection(path)
    before = _indexes_of(raw), raw.execute(
        "SELECT sql FROM sqlite_master WHERE name = ?", (TABLE,)).fetchall()
    raw.close()
    for _ in range(2):
        c = heliosdb.connect(path, config="default")
        c.execute("CREATE TABLE IF NOT EXISTS t(x)")
        c.execute("INSERT INTO t VALUES (1)")
        c.commit()
        assert (_indexes(c), c.audit._db.execute(
            "SELECT sql FROM sqlite_master WHERE name = ?", (TABLE,)).fetchall()) == before
        assert store.STRFTIME_TIMESTAMP in before[1][0][0]
        assert c.audit.query().operation("INSERT").count() >= 1
        assert c.audit.query().operation("LOGIN").count() >= 1
        assert c.audit.verify().ok
        c.close()


def test_timestamp_is_the_strftime_text_for_every_time():
    """The cheaper ``timestamp`` expression of new logs gives the text of the ``strftime``
    one (which older logs keep), digit for digit: the millisecond is rounded as SQLite's
    'unixepoch' rounds it, half-milliseconds, negative times and the end of year 9999
    included."""
    rnd = random.Random(3)
    values = [0, 1, -1, 499, 500, 501, 999, 1000, -499, -500, -501, -1000, -1500,
              253402300799999999, 253402300799999500, 253402300799999499, 253402300800000000,
              -62135596800000000, -62135596800000001, -210866760000000000, 1 << 62]
    values += [rnd.randrange(-62_000_000_000_000_000, 253_402_300_800_000_000)
               for _ in range(20_000)]
    values += [rnd.randrange(1_700_000_000_000_000, 2_000_000_000_000_000)
               for _ in range(20_000)]
    values += [k * 1000 + d for k in range(1_760_000_000_000, 1_760_000_002_000)
               for d in (0, 499, 500, 501, 999)]
    db = apsw.Connection(":memory:")
    db.execute("CREATE TABLE s(ts_us INTEGER)")
    db.executemany("INSERT INTO s VALUES (?)", [(v,) for v in values])
    new = store.GENERATED_COLUMNS["timestamp"]
    rows = db.execute(f"SELECT ts_us, {new}, {store.STRFTIME_TIMESTAMP} FROM s").fetchall()
    assert [r for r in rows if r[1] != r[2]] == []
    assert sum(r[1] is not None for r in rows) > 40_000
    assert rows[0][1] == "1970-01-01 00:00:00.000" and rows[7][1] == "1970-01-01 00:00:00.001"
    # the expression asks for nothing newer than SQLite 3.31 (generated columns)
    assert "subsec" not in new and "unixepoch(" not in new


def test_bulk_operations_do_not_touch_the_operation_index(log):
    """The current layout's operation index holds every event but the bulk ones (each a
    large share of the log), and a query by any other operation reads it."""
    if log.layout != "current":
        pytest.skip("the partial operation index is the current layout's")
    rows = _rows(log)
    rare = [r["id"] for r in rows if r["operation"] not in store.BULK_OPERATIONS]
    assert rare and len(rare) < len(rows)
    db = log.audit._db
    held = [i for (i,) in db.execute(
        f"SELECT id FROM {TABLE} INDEXED BY __audit_log_rare_operation "
        f"WHERE {store.RARE_OPERATION_TERM} ORDER BY operation, id")]
    assert sorted(held) == rare
    for ops in (("GRANT",), ("LOGIN", "LOGOUT"), ("DATA_SUBJECT_REQUEST",)):
        q = log.audit.query().operation(*ops)
        assert "__audit_log_rare_operation" in _plan(log, *q.sql())
        assert q.ids_only() == _brute(rows, operation=set(ops))


def test_a_user_or_target_is_read_before_an_operation(log):
    """An operation is a large share of the log: with a user or a target also given, the
    query reads that index (and checks the operation there, on the current layout)."""
    user_idx, target_idx = USER_IDX[log.layout], TARGET_IDX[log.layout]
    for ops in (("UPDATE",), ("INSERT", "UPDATE")):
        q = log.audit.query().operation(*ops)
        assert f"USING INDEX {user_idx} (user=?)" in _plan(log, *q.user("bob").sql())
        assert f"USING INDEX {target_idx} (target=?)" in _plan(log,
                                                               *q.table("audit_notes").sql())
    assert "(operation=?)" in _plan(log, *log.audit.query().operation("GRANT").sql())
    if log.layout == "current":
        assert "USING INDEX __audit_log_rare_operation (operation=?)" in _plan(
            log, *log.audit.query().operation("GRANT").sql())

