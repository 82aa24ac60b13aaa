"""Issue 16 item 2: bound parameters are part of the event (metadata.params, covered by
the chain), redacted by keyed hash where the config says; GDPR reports find a subject by
them and never claim an erasure nothing proves."""
from __future__ import annotations

import json

import pytest

import heliosdb
from heliosdb.audit.capture import parameter_columns


def _params(conn, op):
    return [json.loads(e.metadata).get("params") for e in conn.audit.query().operation(op).all()]


@pytest.fixture
def cfg():
    return {"extends": "default", "audit": {"capture_parameters": True,
                                            "redact_columns": ["ssn"]}}


def test_parameters_are_recorded_and_chained(tmp_path, cfg):
    p = str(tmp_path / "a.db")
    conn = heliosdb.connect(p, config=cfg)
    conn.execute("CREATE TABLE patients(patient_id TEXT, name TEXT, ssn TEXT, scan BLOB)")
    conn.execute("INSERT INTO patients VALUES (?, ?, ?, ?)", ("P12345", "Ada", "123-45-6789",
                                                              b"\x00\x01"))
    conn.execute("DELETE FROM patients WHERE patient_id = ?", ("P12345",))
    conn.executemany("INSERT INTO patients(patient_id, ssn) VALUES (:id, :ssn)",
                     [{"id": "P1", "ssn": "999-00-0001"}, {"id": "P2", "ssn": None}])
    conn.commit()
    ins = _params(conn, "INSERT")
    h = conn.audit.keyed_hash
    # INSERT without a column list: no column is known, the statement does not name ssn:
    # values in clear (only columns the SQL names can be redacted by column)
    assert ins[0] == ["P12345", "Ada", "123-45-6789", {"$base64": "AAE="}]
    assert ins[1] == [{"id": "P1", "ssn": h("999-00-0001")}, {"id": "P2", "ssn": None}]
    assert _params(conn, "DELETE") == [["P12345"]]
    assert conn.execute("SELECT COUNT(*) FROM __audit_log WHERE operation = 'DELETE' AND "
                        "json_extract(metadata, '$.params[0]') = 'P12345'").fetchone() == (1,)
    assert conn.audit.verify().ok
    conn.close()
    # the parameters are covered by the chain: editing them is detected
    import sqlite3

    raw = sqlite3.connect(p)
    raw.execute("UPDATE __audit_log SET metadata = replace(metadata, 'P12345', 'P99999') "
                "WHERE operation = 'DELETE'")
    raw.commit()
    raw.close()
    assert heliosdb.audit.verify(p).fault == "modified"


def test_unattributed_parameters_of_a_statement_naming_a_redacted_column_are_hashed(
        tmp_path, cfg):
    conn = heliosdb.connect(str(tmp_path / "b.db"), config=cfg)
    conn.execute("CREATE TABLE p(id, ssn)")
    conn.execute("UPDATE p SET ssn = coalesce(?, ssn) WHERE id = ?", ("111-11-1111", 7))
    conn.commit()
    (rec,) = _params(conn, "UPDATE")
    assert rec[0] == conn.audit.keyed_hash("111-11-1111")  # fails closed
    assert rec[1] == 7  # attributed to id
    conn.close()


def test_redact_tables_star_hashes_every_value_and_reports_find_the_subject(tmp_path):
    conn = heliosdb.connect(str(tmp_path / "g.db"), config="gdpr", key=bytes(range(32)))
    conn.execute("CREATE TABLE patients(patient_id TEXT, dx TEXT)")
    conn.execute("INSERT INTO patients VALUES (?, ?)", ("P12345", "flu"))
    conn.commit()
    before = conn.audit.erasure_report(["P12345"], record=False).erasure
    assert before["erased"] is False  # the row is still there
    conn.execute("DELETE FROM patients WHERE patient_id = ?", ("P12345",))
    conn.commit()
    text = json.dumps([e.metadata for e in conn.audit.query().all()])
    assert "P12345" not in text and "flu" not in text  # only keyed hashes
    acc = conn.audit.access_report(["P12345"], record=False)
    assert {e["operation"] for e in acc.events} >= {"INSERT", "DELETE"}
    er = conn.audit.erasure_report(["P12345"], record=False).erasure
    assert er["erased"] is True and er["evidence"] == "removals"
    assert er["removals"][0]["how"] == "deleted (bound parameters)"
    conn.close()


def test_erasure_without_evidence_is_not_reported_as_erased(tmp_path):
    conn = heliosdb.connect(str(tmp_path / "n.db"), config="default")
    conn.execute("CREATE TABLE t(email)")
    conn.execute("INSERT INTO t VALUES (?)", ("zed@example.org",))
    conn.execute("DELETE FROM t WHERE email = ?", ("zed@example.org",))
    conn.commit()
    er = conn.audit.erasure_report("zed@example.org", record=False).erasure
    assert er["erased"] is None and er["evidence"] == "none" and er["evidence_note"]
    conn.close()


@pytest.mark.parametrize("sql,want", [
    ("DELETE FROM patients WHERE patient_id = ?", {0: "patient_id"}),
    ("INSERT INTO p(name, ssn) VALUES (?, ?)", {0: "name", 1: "ssn"}),
    ("UPDATE p SET ssn = :s WHERE id = @id", {":s": "ssn", ":id": "id"}),
    ("SELECT * FROM p WHERE id IN (?, ?) AND ssn LIKE ?", {0: "id", 1: "id", 2: "ssn"}),
    ("SELECT * FROM p WHERE note = '?' AND ssn = ?", {0: "ssn"}),  # '?' in a string
    ("INSERT INTO p VALUES (?, ?)", {}),
    ('UPDATE "p" SET "ssn" = ?2 WHERE [id] = ?1', {1: "ssn", 0: "id"}),
])
def test_parameter_columns(sql, want):
    assert parameter_columns(sql) == want
