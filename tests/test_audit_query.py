"""conn.audit.query(): the builder, its filters and its use of the indexes."""
from __future__ import annotations

import datetime as dt

import pytest

import heliosdb
from heliosdb.audit import AuditEvent
from heliosdb.audit.events import EventFields
from heliosdb.audit.query import to_us
from helpers.audit_log import stamp

T0 = to_us("2031-03-03T09:00:00Z")  # a Monday, in the future: stamps stay increasing


@pytest.fixture
def conn(db_path):
    c = heliosdb.connect(db_path, config="verbose", audit_user="alice",
                         audit_context={"client_ip": "10.0.0.1"})
    yield c
    c.close()


@pytest.fixture
def populated(conn):
    conn.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)")
    conn.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO orders(item) VALUES (?)", [("a",), ("b",), ("c",)])
    conn.commit()
    conn.execute("SELECT * FROM orders JOIN customers").fetchall()
    conn.execute("UPDATE orders SET item = 'z' WHERE id = 1")
    conn.commit()
    with pytest.raises(heliosdb.OperationalError):
        conn.execute("INSERT INTO nosuch VALUES (1)")
    stamp(conn, [EventFields("LOGIN", user="bob", session_id="s-bob"),
                 EventFields("DELETE", target="orders", user="bob", session_id="s-bob",
                             query="DELETE FROM orders WHERE id = 2", affected_rows=1),
                 EventFields("SELECT", target="customers", user="bob", session_id="s-bob",
                             success=0, error="denied")], T0)
    stamp(conn, [EventFields("LOGOUT", user="bob", session_id="s-bob")], T0 + 3_600_000_000)
    return conn


def test_operation_user_table_success(populated):
    q = populated.audit.query()
    evs = q.operation("DELETE").all()
    assert [e.user for e in evs] == ["bob"]
    assert all(isinstance(e, AuditEvent) for e in evs)
    assert q.operation("INSERT", "UPDATE").count() >= 2
    assert q.user("bob").count() == 4
    assert q.user("bob").success(False).operation("SELECT").count() == 1
    failed = q.success(False).all()
    assert {e.user for e in failed} == {"alice", "bob"}
    assert all(e.success == 0 for e in failed)
    # a join's target is "orders,customers": both tables find it
    joins = [e for e in q.table("customers").operation("SELECT").all() if e.user == "alice"]
    assert joins and joins[0].target in ("orders,customers", "customers,orders")
    assert joins[0].id in q.table("orders").ids_only()
    assert q.table("orders", "customers").count() == len(
        set(q.table("orders").ids_only()) | set(q.table("customers").ids_only()))
    assert q.table("order").count() == 0  # no prefix match


def test_between_session_order_limit_offset(populated):
    q = populated.audit.query()
    bob = q.session("s-bob")
    assert bob.count() == 4
    assert [e.operation for e in bob.between(T0, T0 + 1000)] == ["LOGIN", "DELETE", "SELECT"]
    assert [e.operation for e in bob.between(dt.datetime(2031, 3, 3, 9, 30))] == ["LOGOUT"]
    assert bob.between(None, "2031-03-03T09:00:00Z").count() == 0
    assert bob.between(dt.date(2031, 3, 3), dt.date(2031, 3, 4)).count() == 4
    all_ids = q.ids_only()
    assert all_ids == sorted(all_ids)
    assert q.order("desc").ids_only() == sorted(all_ids, reverse=True)
    assert q.limit(2).ids_only() == all_ids[:2]
    assert q.offset(3).limit(2).ids_only() == all_ids[3:5]
    assert q.offset(3).ids_only() == all_ids[3:]
    assert q.limit(2).count() == 2
    assert q.after_id(all_ids[-2]).ids_only() == all_ids[-1:]
    assert q.ids(all_ids[1], all_ids[2]).count() == 2
    assert q.order("desc").first().id == all_ids[-1]


def test_builder_is_immutable_and_validates(conn):
    q = conn.audit.query()
    q2 = q.user("x")
    assert q.count() >= 1 and q2.count() == 0
    with pytest.raises(heliosdb.ProgrammingError):
        q.limit(-1)
    with pytest.raises(heliosdb.ProgrammingError):
        q.order("sideways")
    with pytest.raises(heliosdb.ProgrammingError):
        q.between("not a date")
    with pytest.raises(heliosdb.ProgrammingError):
        q.user()
    assert "user" in repr(q2)


def test_select_buffer_is_flushed_before_a_query(conn):
    conn.execute("CREATE TABLE t(x)")
    conn.execute("SELECT * FROM t").fetchall()  # buffered under async_buffer_size
    assert conn.audit.query().operation("SELECT").table("t").count() == 1


def test_queries_use_the_indexes(populated):
    db = populated.audit._db
    for q in (populated.audit.query().user("bob"),
              populated.audit.query().operation("DELETE").between(T0, T0 + 10),
              populated.audit.query().table("orders"),
              populated.audit.query().between(T0, T0 + 10)):
        sql, args = q.sql()
        plan = " ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))
        # a time range alone is an id range on the primary key (ts_us grows with id)
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan \
            or "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan, plan
        assert "SCAN" not in plan.replace("SCAN CONSTANT", ""), plan


def test_special_characters_in_table_names(conn):
    conn.execute('CREATE TABLE "we*ird[1]"(x)')
    conn.execute('INSERT INTO "we*ird[1]" VALUES (1)')
    conn.commit()
    assert conn.audit.query().table("we*ird[1]").operation("INSERT").count() == 1
    assert conn.audit.query().table("weXird1").count() == 0


def test_events_shortcut(populated):
    evs = populated.audit.events(user="bob", operation="DELETE", limit=5)
    assert [e.operation for e in evs] == ["DELETE"]
    assert len(populated.audit.events(between=(T0, T0 + 10))) == 3
    with pytest.raises(heliosdb.ProgrammingError):
        populated.audit.events(nonsense=1)
