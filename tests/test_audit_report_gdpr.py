"""GDPR data-subject reports: access (Art. 15) and erasure (Art. 17)."""
from __future__ import annotations

import json

import pytest

import heliosdb
import heliosdb.config


@pytest.fixture
def conn(db_path):
    c = heliosdb.connect(db_path, config="verbose", audit_user="clerk")
    c.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY, email TEXT, city TEXT)")
    c.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, cid INTEGER, item TEXT)")
    c.executemany("INSERT INTO customers(email, city) VALUES (?, ?)",
                  [("Ann@Example.org", "Lyon"), ("bob@example.org", "Oslo")])
    c.commit()
    c.execute("INSERT INTO orders(cid, item) VALUES (1, 'book')")
    c.commit()
    c.execute("UPDATE customers SET city = 'Paris' WHERE id = 1")   # no identifier shown
    c.commit()
    c.execute("SELECT * FROM customers").fetchall()
    c.execute("UPDATE customers SET city = 'Rome' WHERE id = 2")
    c.commit()
    yield c
    c.close()


def ids_of(rep, match=None):
    return [e["id"] for e in rep.events if match is None or match in e["match"]]


def test_access_report_follows_the_subjects_rows(conn, tmp_path):
    q = conn.audit.query()
    ins = q.operation("INSERT").table("customers").first().id
    upd_ann, upd_bob = q.operation("UPDATE").ids_only()
    sel = q.operation("SELECT").table("customers").first().id
    rep = conn.audit.access_report("ann@example.org", path=tmp_path / "ann.json")
    assert ids_of(rep, "row_values") == [ins, upd_ann]  # found by value, then by rowid
    assert upd_bob not in ids_of(rep)
    assert ids_of(rep, "possible_read") == [sel]
    assert rep.subject["rows"] == {"customers": [1]}
    assert rep.summary["actors"] == {"clerk": 3}
    on_disk = json.loads((tmp_path / "ann.json").read_text())
    assert on_disk["kind"] == "access" and len(on_disk["events"]) == 3
    # the request is recorded, naming the subject by a hash only
    dsr = q.operation("DATA_SUBJECT_REQUEST").first()
    assert "ann@example.org" not in (dsr.metadata or "").lower()
    assert json.loads(dsr.metadata)["details"]["subject_ref"] == rep.subject["ref"]
    # reads off
    rep = conn.audit.access_report("ann@example.org", include_reads=False, record=False)
    assert "possible_read" not in rep.summary["by_match"]


def test_access_report_by_user_rowid_and_integer_identifiers(conn):
    conn.audit.log("LOGIN", target=None)
    rep = conn.audit.access_report(user="clerk", record=False)
    assert {"actor"} == set(rep.summary["by_match"]) and len(rep.events) == \
        conn.audit.query().user("clerk").count()
    rep = conn.audit.access_report(rowids={"orders": [1]}, record=False)
    assert [e["operation"] for e in rep.events] == ["INSERT"]
    # integer identifiers match integer values (the order's cid)
    rep = conn.audit.access_report(1, tables=["orders"], record=False)
    assert [e["target"] for e in rep.events] == ["orders"]
    with pytest.raises(heliosdb.ProgrammingError):
        conn.audit.access_report()


def test_query_text_matches_without_row_values(db_path):
    cfg = heliosdb.config.load_config({"extends": "verbose",
                                       "audit": {"capture_row_values": False}})
    c = heliosdb.connect(db_path, config=cfg, audit_user="u")
    c.execute("CREATE TABLE c(email TEXT)")
    c.execute("INSERT INTO c VALUES ('zoe@example.org')")
    c.execute("INSERT INTO c VALUES (?)", ("yan@example.org",))  # parameters are not logged
    c.commit()
    rep = c.audit.access_report("zoe@example.org", record=False)
    assert [e["match"] for e in rep.events] == [["query_text"]]
    assert c.audit.access_report("yan@example.org", record=False).events == []
    c.close()


def test_erasure_report(conn, tmp_path):
    rep = conn.audit.erasure_report("ann@example.org", record=False)
    assert rep.erasure["erased"] is False
    assert rep.erasure["remaining_rows"] == [{"table": "customers", "rowid": 1,
                                              "holds_identifier": True}]
    conn.execute("DELETE FROM customers WHERE id = 1")
    conn.commit()
    rep = conn.audit.erasure_report("ann@example.org", path=tmp_path / "e.json")
    e = rep.erasure
    assert e["erased"] is True and e["remaining_rows"] == []
    deleted = conn.audit.query().operation("DELETE").first()
    assert [(r["event_id"], r["how"]) for r in e["removals"]] == [(deleted.id, "deleted")]
    # the audit log still holds her values: which events, and until when
    copies = {c["id"] for c in e["audit_copies"]}
    assert deleted.id in copies and len(copies) == 3
    from heliosdb.audit.events import format_ts

    cfg = conn.audit._cfg
    day = 86_400_000_000
    assert e["audit_copies_leave_database"] == format_ts(
        deleted.ts_us + cfg.active_days_for("DELETE") * day)
    assert e["audit_copies_archive_until"] == format_ts(
        deleted.ts_us + cfg.retention_for("DELETE") * day)
    dsr = conn.audit.query().operation("DATA_SUBJECT_REQUEST").first()
    assert json.loads(dsr.metadata)["details"]["erased"] is True
    assert json.loads((tmp_path / "e.json").read_text())["erasure"]["erased"] is True


def test_erasure_by_anonymisation(conn):
    conn.execute("UPDATE customers SET email = 'erased-1' WHERE id = 1")
    conn.commit()
    rep = conn.audit.erasure_report("ann@example.org", record=False)
    # the row still exists (tracked by rowid) but no longer holds the identifier
    assert rep.erasure["remaining_rows"] == [{"table": "customers", "rowid": 1,
                                              "holds_identifier": False}]
    assert [r["how"] for r in rep.erasure["removals"]] == ["identifiers overwritten"]


def test_erasure_report_mentions_a_legal_hold(conn):
    conn.audit.hold("claim")
    rep = conn.audit.erasure_report("bob@example.org", record=False)
    assert rep.erasure["legal_holds"] and "legal hold" in rep.erasure["note"]
