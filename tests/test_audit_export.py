"""Exports (JSONL, CSV, gzip, OCSF, syslog), incremental exports and verify_export."""
from __future__ import annotations

import csv
import gzip
import json
import re

import pytest

import heliosdb
from heliosdb.audit.export import (ExportReport, read_export, verify_export,
                                   verify_export_chain)


@pytest.fixture
def conn(db_path):
    c = heliosdb.connect(db_path, config="verbose", audit_user="alice",
                         audit_context={"client_ip": "192.0.2.7", "application_name": "app"})
    c.execute("CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT, note TEXT)")
    c.executemany("INSERT INTO p(name, note) VALUES (?, ?)",
                  [("bob", "line1\nline2"), ("carol", 'quote " comma , ]'), ("dan", "")])
    c.commit()
    c.execute("SELECT * FROM p").fetchall()
    c.execute("UPDATE p SET note = NULL WHERE name = 'dan'")
    c.commit()
    with pytest.raises(heliosdb.DatabaseError):
        c.execute("DELETE FROM __audit_log")
    c.rollback()
    yield c
    c.close()


def lines(path):
    op = gzip.open if str(path).endswith(".gz") else open
    with op(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    # split on \n only: JSON text may hold U+2028, which str.splitlines() splits on
    return [s.rstrip("\r") for s in text.split("\n")][:-1] if text.endswith("\n") else \
        [s.rstrip("\r") for s in text.split("\n")]


def write_lines(path, ls):
    op = gzip.open if str(path).endswith(".gz") else open
    with op(path, "wt", encoding="utf-8", newline="") as f:
        f.write("\n".join(ls) + "\n")


@pytest.mark.parametrize("name,fmt", [("a.jsonl", "jsonl"), ("a.jsonl.gz", "jsonl"),
                                      ("a.csv", "csv"), ("a.csv.gz", "csv"),
                                      ("a.ocsf.json", "ocsf"), ("a.log", "syslog")])
def test_round_trip_every_format(conn, tmp_path, name, fmt):
    n = conn.audit.query().count()
    m = conn.audit.export(tmp_path / name, fmt)
    assert m.count == n and m.first_id == 1 and m.last_id == n
    assert m.gzip == name.endswith(".gz")
    rep = verify_export(tmp_path / name)
    assert isinstance(rep, ExportReport)
    assert rep.ok, rep.message
    assert rep.events_checked == n and rep.last_id == n
    assert rep.last_checksum == m.last_checksum
    with pytest.raises(TypeError):
        bool(rep)
    # the records carry every stored field verbatim (NULL kept apart from "")
    header, got_fmt, recs = read_export(tmp_path / name)
    assert got_fmt == fmt
    stored = {e.id: e for e in conn.audit.query().ids(1, n)}
    for _line, rec in recs:
        ev = stored[rec["id"]]
        for col in ("user", "operation", "target", "query", "error", "metadata",
                    "old_values", "new_values", "reason", "affected_rows", "success"):
            assert rec[col] == getattr(ev, col), (col, rec)
        assert rec["checksum"] == ev.checksum.hex()
    # the export itself is audited
    exp = conn.audit.query().operation("EXPORT").order("desc").first()
    assert json.loads(exp.metadata)["details"]["export_id"] == m.export_id


def test_jsonl_header_carries_the_chain_head(conn, tmp_path):
    m = conn.audit.export(tmp_path / "e.jsonl")
    first = json.loads(lines(tmp_path / "e.jsonl")[0])
    assert first["record"] == "header" and first["format"] == "heliosdb-audit-export/1"
    assert first["prev_checksum"] == "00" * 32
    assert first["last_checksum"] == m.last_checksum
    assert (first["first_id"], first["last_id"], first["count"]) == (1, m.last_id, m.count)
    assert first["export_id"] == m.export_id


def test_incremental_exports_continue_and_a_gap_is_detected(conn, tmp_path):
    a = conn.audit
    m1 = a.export(tmp_path / "1.jsonl")
    conn.execute("INSERT INTO p(name) VALUES ('eve')")
    conn.commit()
    m2 = a.export(tmp_path / "2.jsonl", previous=m1)
    assert m2.first_id == m1.last_id + 1
    assert m2.prev_checksum == m1.last_checksum
    conn.execute("INSERT INTO p(name) VALUES ('fay')")
    conn.commit()
    m3 = a.export(tmp_path / "3.csv.gz", "csv", after_id=m2.last_id)
    assert verify_export(tmp_path / "2.jsonl", previous=tmp_path / "1.jsonl").ok
    assert verify_export(tmp_path / "3.csv.gz", previous=m2).ok
    assert verify_export_chain([tmp_path / "1.jsonl", tmp_path / "2.jsonl",
                                tmp_path / "3.csv.gz"]).ok
    # skipping export 2: a gap between 1 and 3
    rep = verify_export(tmp_path / "3.csv.gz", previous=tmp_path / "1.jsonl")
    assert not rep.ok and rep.fault == "gap" and rep.first_bad_id == m1.last_id + 1
    rep = verify_export_chain([tmp_path / "1.jsonl", tmp_path / "3.csv.gz"])
    assert rep.fault == "gap"
    # the wrong order: an overlap
    rep = verify_export(tmp_path / "2.jsonl", previous=m3)
    assert rep.fault == "overlap"
    # a previous export whose head this log does not have
    fake = {"last_id": m1.last_id, "last_checksum": "11" * 32}
    with pytest.raises(heliosdb.ProgrammingError):
        a.export(tmp_path / "x.jsonl", previous=fake)
    assert verify_export(tmp_path / "2.jsonl", previous=fake).fault == "gap"


def test_empty_incremental_export_keeps_the_head(conn, tmp_path):
    m1 = conn.audit.export(tmp_path / "1.jsonl", record=False)
    m2 = conn.audit.export(tmp_path / "2.jsonl", previous=m1, record=False)
    assert m2.count == 0 and m2.prev_checksum == m2.last_checksum == m1.last_checksum
    assert verify_export(tmp_path / "2.jsonl", previous=m1).ok


def _forge(path, idx, fn):
    ls = lines(path)
    ls[idx] = fn(ls[idx])
    write_lines(path, ls)


def test_forged_line_is_detected(conn, tmp_path):
    p = tmp_path / "f.jsonl"
    conn.audit.export(p)
    # change who did it, keep the checksum: the line no longer matches it
    _forge(p, 3, lambda s: s.replace('"user":"alice"', '"user":"mallory"'))
    rep = verify_export(p)
    assert not rep.ok and rep.fault == "modified" and rep.first_bad_id == 3


def test_forged_and_rehashed_line_is_detected(conn, tmp_path):
    """A forger who recomputes the checksum of the line breaks the next link."""
    import hashlib

    from heliosdb.audit.events import encode_event, TEXT_FIELDS

    p = tmp_path / "f.jsonl"
    conn.audit.export(p)
    ls = lines(p)
    rec = json.loads(ls[2])
    rec["affected_rows"] = 0
    enc = encode_event(rec["id"], rec["ts_us"], rec["affected_rows"], rec["success"],
                       [rec[c] for c in TEXT_FIELDS])
    rec["checksum"] = hashlib.sha256(bytes.fromhex(rec["prev_hash"]) + enc).hexdigest()
    ls[2] = json.dumps(rec)
    write_lines(p, ls)
    rep = verify_export(p)
    assert rep.fault == "modified" and rep.first_bad_id == rec["id"]
    assert "re-hashed" in rep.message


def test_deleted_reordered_truncated_lines(conn, tmp_path):
    p = tmp_path / "d.jsonl"
    m = conn.audit.export(p)
    ls = lines(p)
    write_lines(p, ls[:3] + ls[4:])
    rep = verify_export(p)
    assert rep.fault == "deleted" and rep.first_bad_id == 3
    write_lines(p, ls[:3] + [ls[4], ls[3]] + ls[5:])
    assert verify_export(p).fault in ("deleted", "reordered")
    write_lines(p, ls[:-2])
    rep = verify_export(p)
    assert rep.fault == "truncated" and rep.first_bad_id == m.last_id - 1
    write_lines(p, ls[:4] + [ls[3]] + ls[4:])
    assert verify_export(p).fault == "inserted"
    hdr = json.loads(ls[0])
    hdr["last_checksum"] = "00" * 32
    write_lines(p, [json.dumps(hdr)] + ls[1:])
    assert verify_export(p).fault == "header_mismatch"
    write_lines(p, [ls[0], "not json"] + ls[2:])
    assert verify_export(p).fault == "malformed"
    (tmp_path / "empty").write_text("")
    assert verify_export(tmp_path / "empty").fault == "malformed"


def test_forged_csv_cell_is_detected(conn, tmp_path):
    p = tmp_path / "f.csv"
    conn.audit.export(p, "csv")
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "record" and rows[1][0] == "header"
    col = rows[0].index("affected_rows")
    target = next(r for r in rows[2:] if r[col] not in ("",))
    target[col] = str(int(target[col]) + 100)
    with open(p, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\r\n").writerows(rows)
    rep = verify_export(p)
    assert rep.fault == "modified" and rep.first_bad_id == int(target[1])


def test_csv_keeps_null_apart_from_empty_text(conn, tmp_path):
    conn.audit.log("NOTE", target="", details=None)
    p = tmp_path / "n.csv"
    conn.audit.export(p, "csv")
    _h, _f, recs = read_export(p)
    recs = [r for _n, r in recs]
    note = next(r for r in recs if r["operation"] == "NOTE")
    assert note["target"] == "" and note["query"] is None
    assert verify_export(p).ok


def test_ocsf_event_shape(conn, tmp_path):
    p = tmp_path / "o.json"
    conn.audit.export(p, "ocsf")
    evs = [json.loads(s) for s in lines(p)]
    for e in evs:
        assert e["class_uid"] == 6005 and e["category_uid"] == 6
        assert e["type_uid"] == 600500 + e["activity_id"]
        assert isinstance(e["time"], int) and e["metadata"]["version"]
        assert e["metadata"]["product"]["name"] == "HeliosDB"
        assert e["actor"]["user"]["name"] == "alice"
        assert e["status_id"] in (1, 2)
    by_act = {e["unmapped"]["heliosdb"]["operation"]: e for e in evs}
    assert by_act["INSERT"]["activity_id"] == 6 and by_act["INSERT"]["table"]["name"] == "p"
    assert by_act["SELECT"]["activity_id"] == 4
    assert by_act["UPDATE"]["activity_id"] == 2
    assert by_act["LOGIN"]["activity_id"] == 3
    assert by_act["INSERT"]["src_endpoint"]["ip"] == "192.0.2.7"
    assert by_act["INSERT"]["query_info"]["query_string"].startswith("INSERT INTO p")
    denied = by_act["DELETE"]
    assert denied["status_id"] == 2 and denied["disposition"] == "Blocked"
    assert "append-only" in denied["status_detail"]


_RFC5424 = re.compile(r'^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (\S+) '
                      r'(\S+) (\S+) (\[heliosdb@32473(?: [a-z_]+="(?:[^"\\\]]|\\.)*")+\]) (.*)$')


def test_syslog_lines_are_rfc5424(conn, tmp_path):
    p = tmp_path / "s.log"
    conn.audit.export(p, "syslog", hostname="db1.example")
    ls = lines(p)
    assert len(ls) == conn.audit.query().count() - 1  # the EXPORT event follows the export
    for s in ls:
        m = _RFC5424.match(s)
        assert m, s
        pri = int(m.group(1))
        assert pri // 8 == 13 and pri % 8 in (4, 6)
        assert m.group(3) == "db1.example" and m.group(4) == "heliosdb"
        assert len(m.group(6)) <= 32
        json.loads(m.group(8))
    failed = [s for s in ls if "DELETE" in s.split(" ")[5]]
    assert failed and failed[0].startswith("<108>")
    assert verify_export(p).ok


def test_checkpoint_in_the_header(conn, tmp_path):
    key = b"k" * 32
    cp = conn.audit.checkpoint(key, tmp_path / "head.cp")
    p = tmp_path / "c.jsonl"
    conn.audit.export(p, checkpoint=tmp_path / "head.cp")
    rep = verify_export(p, hmac_key=key)
    assert rep.ok and rep.checkpoint_verified, rep.message
    assert verify_export(p, hmac_key=b"x" * 32).fault == "bad_signature"
    hdr = json.loads(lines(p)[0])
    assert hdr["checkpoint"]["event_id"] == cp.event_id
    # a header claiming another checksum for the checkpointed event
    ls = lines(p)
    hdr["checkpoint"]["checksum"] = "22" * 32
    write_lines(p, [json.dumps(hdr)] + ls[1:])
    assert verify_export(p).fault == "checkpoint_mismatch"


def test_export_refuses_inside_a_transaction_and_bad_format(conn, tmp_path):
    conn.execute("INSERT INTO p(name) VALUES ('x')")
    with pytest.raises(heliosdb.ProgrammingError):
        conn.audit.export(tmp_path / "t.jsonl")
    conn.commit()
    with pytest.raises(heliosdb.ProgrammingError):
        conn.audit.export(tmp_path / "t.xml", "xml")
    assert not list(tmp_path.glob("t.*"))


def test_verify_export_of_a_tampered_database_export(conn, tmp_path):
    """An export taken from a log changed in the file carries the fault along."""
    db = conn.audit._db
    with conn.audit._internal():
        db.execute("UPDATE __audit_log SET user = 'mallory' WHERE id = 2")
    conn.audit.export(tmp_path / "t.jsonl", record=False)
    rep = verify_export(tmp_path / "t.jsonl")
    assert rep.fault == "modified" and rep.first_bad_id == 2


def _doc_verifier():
    """The 50-line verifier of docs/EXPORT_FORMAT.md, as a module namespace."""
    import pathlib

    doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "EXPORT_FORMAT.md"
    text = doc.read_text(encoding="utf-8")
    part = text.split("## A verifier in 50 lines", 1)[1]
    code = part.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 60
    ns = {"__name__": "doc_verifier"}
    exec(compile(code, str(doc), "exec"), ns)
    return ns["verify"]


def test_the_documented_verifier_agrees(conn, tmp_path):
    verify = _doc_verifier()
    conn.execute("INSERT INTO p(name, note) VALUES (?, ?)",
                 ("multi\nline \u2028 sep \r\n crlf", "x"))
    conn.execute("UPDATE p SET note = 'é€😀' WHERE name LIKE 'multi%'\n  AND 1 = 1")
    conn.commit()
    m1 = conn.audit.export(tmp_path / "1.jsonl")
    conn.execute("INSERT INTO p(name) VALUES ('next')")
    conn.commit()
    conn.audit.export(tmp_path / "2.csv.gz", "csv", previous=m1)
    conn.execute("INSERT INTO p(name) VALUES ('again')")
    conn.commit()
    conn.audit.export(tmp_path / "3.csv", "csv", after_id=m1.last_id)
    assert verify(str(tmp_path / "1.jsonl")) == m1.count
    assert verify(str(tmp_path / "2.csv.gz"), str(tmp_path / "1.jsonl")) >= 2
    assert verify(str(tmp_path / "3.csv"), str(tmp_path / "1.jsonl")) >= 2
    with pytest.raises(AssertionError):
        verify(str(tmp_path / "3.csv"), str(tmp_path / "2.csv.gz"))  # overlap
    _forge(tmp_path / "1.jsonl", 2, lambda s: s.replace('"success":1', '"success":0'))
    with pytest.raises(AssertionError):
        verify(str(tmp_path / "1.jsonl"))
    assert verify_export(tmp_path / "1.jsonl").fault == "modified"


def test_command_line_verifier(conn, tmp_path, capsys):
    from heliosdb.audit.export import main

    m1 = conn.audit.export(tmp_path / "1.jsonl")
    conn.audit.export(tmp_path / "2.jsonl", previous=m1)
    assert main([str(tmp_path / "1.jsonl"), str(tmp_path / "2.jsonl")]) == 0
    assert "OK" in capsys.readouterr().out
    assert main([str(tmp_path / "2.jsonl"), str(tmp_path / "1.jsonl")]) == 1
    assert "FAULT" in capsys.readouterr().out
