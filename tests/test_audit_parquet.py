"""The Parquet dataset (issue 21, item 1): layout, schema, proof metadata, DuckDB counts."""
from __future__ import annotations

import builtins
import json
import os
import re
import sys

import pytest

import heliosdb
from heliosdb.audit.export import verify_export
from heliosdb.audit.events import COLUMNS

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
duckdb = pytest.importorskip("duckdb")

PART = re.compile(r"database_id=([0-9a-f]+)/date=(\d{4}-\d\d-\d\d)/part-(\d+)-(\d+)\.parquet$")


def make_db(path, n_rows, deletes=0, **kw):
    c = heliosdb.connect(str(path), config="default", audit_user="alice", **kw)
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(n_rows):
        c.execute("INSERT INTO t(v) VALUES (?)", (f"row {i}",))
        c.commit()
    for i in range(deletes):
        c.execute("DELETE FROM t WHERE id = ?", (i + 1,))
        c.commit()
    return c


def parts_of(root):
    out = []
    for d, _sub, files in os.walk(root):
        for f in files:
            out.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(out)


def test_layout_schema_and_proof(tmp_path):
    c = make_db(tmp_path / "a.db", 4)
    try:
        n = c.audit.query().count()
        m = c.audit.export(tmp_path / "ds", format="parquet")
        dbid = m.database_id
    finally:
        c.close()
    assert m.format == "parquet" and m.first_id == 1 and m.last_id == n and m.count == n
    files = parts_of(tmp_path / "ds")
    assert len(files) == 1, files  # one day, one export: one part
    mt = PART.match(files[0])
    assert mt and mt.group(1) == dbid and (int(mt.group(3)), int(mt.group(4))) == (1, n)
    path = tmp_path / "ds" / files[0]
    table = pq.read_table(path, partitioning=None)
    assert table.schema.names == [*COLUMNS, "database_id", "timestamp"]
    assert table.schema.field("prev_hash").type == pa.binary()
    assert table.schema.field("checksum").type == pa.binary()
    assert table.schema.field("ts_us").type == pa.int64()
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == list(range(1, n + 1))
    assert {r["database_id"] for r in rows} == {dbid}
    assert rows[0]["prev_hash"] == bytes(32)
    assert all(rows[i]["prev_hash"] == rows[i - 1]["checksum"] for i in range(1, n))
    assert rows[0]["timestamp"].strftime("%Y-%m-%d") == mt.group(2)
    kv = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert kv["heliosdb.format"] == "heliosdb-audit-parquet/1"
    assert kv["heliosdb.database_id"] == dbid
    assert (kv["heliosdb.first_id"], kv["heliosdb.last_id"]) == ("1", str(n))
    assert kv["heliosdb.prev_checksum"] == "00" * 32
    assert kv["heliosdb.last_checksum"] == rows[-1]["checksum"].hex()
    assert json.loads(kv["heliosdb.export"])["export_id"] == m.export_id
    assert "heliosdb.checkpoint" not in kv  # none was ever signed
    rep = verify_export(path)
    assert rep.ok and rep.events_checked == n and rep.format == "parquet", rep.message


def test_incremental_parts_continue_and_carry_the_checkpoint(tmp_path):
    from heliosdb.audit.export import verify_export_chain

    c = make_db(tmp_path / "a.db", 2)
    try:
        m1 = c.audit.export(tmp_path / "ds", format="parquet")
        c.execute("INSERT INTO t(v) VALUES ('more')")
        c.commit()
        cp = c.audit.checkpoint(b"k" * 32)
        m2 = c.audit.export(tmp_path / "ds", format="parquet", previous=m1)
    finally:
        c.close()
    assert m2.first_id == m1.last_id + 1
    p1, p2 = m1.header["parts"], m2.header["parts"]
    kv = pq.read_schema(p2[0]).metadata
    assert kv[b"heliosdb.prev_checksum"].decode() == m1.last_checksum
    assert kv[b"heliosdb.checkpoint"].decode() == cp.to_text()  # the latest signed head
    rep = verify_export_chain([*p1, *p2], hmac_key=b"k" * 32)
    assert rep.ok and rep.checkpoint_verified, rep.message
    assert verify_export_chain([*p1, *p2], hmac_key=b"x" * 32).fault == "bad_signature"


def test_duckdb_counts_equal_query_counts(tmp_path):
    """Several databases, one dataset dir, queried by DuckDB with Hive partitioning."""
    root = tmp_path / "lake"
    expected = {}
    for i, (rows, deletes) in enumerate([(3, 0), (5, 2), (8, 4)]):
        c = make_db(tmp_path / f"db{i}.db", rows, deletes)
        try:
            c.audit.export(root, format="parquet", record=False)
            dbid = c.audit.export(tmp_path / f"x{i}.jsonl", record=False).database_id
            for ev in c.audit.query().all():
                key = (dbid, ev.operation)
                expected[key] = expected.get(key, 0) + 1
        finally:
            c.close()
    assert len({k[0] for k in expected}) == 3
    got = duckdb.sql(
        f"SELECT database_id, operation, count(*) FROM read_parquet("
        f"'{root}/**/*.parquet', hive_partitioning = true) GROUP BY ALL").fetchall()
    assert {(d, op): n for d, op, n in got} == expected
    # the date partition is a real column, and binary chain fields stay 32 bytes
    (ndates, lens), = duckdb.sql(
        f"SELECT count(DISTINCT date), list(DISTINCT octet_length(checksum)) FROM "
        f"read_parquet('{root}/**/*.parquet', hive_partitioning = true)").fetchall()
    assert ndates >= 1 and lens == [32]


def crafted_log(ts_list):
    """A raw APSW database holding a valid chain whose events have the given ts_us."""
    import apsw
    from heliosdb.audit.chain import chain_checksums
    from heliosdb.audit.events import TEXT_FIELDS

    db = apsw.Connection(":memory:")
    db.execute("CREATE TABLE log(" + ", ".join(f'"{c}"' for c in COLUMNS) + ")")
    n = len(ts_list)
    ids = list(range(1, n + 1))
    texts = []
    for i in ids:
        texts += [f"s{i}" if f == "session_id" else "INSERT" if f == "operation" else None
                  for f in TEXT_FIELDS]
    cks = chain_checksums(bytes(32), ids, ts_list, [1] * n, [1] * n, texts)
    prev = bytes(32)
    for i in range(n):
        t = dict(zip(TEXT_FIELDS, texts[10 * i:10 * i + 10]))
        row = {"id": ids[i], "ts_us": ts_list[i], "affected_rows": 1, "success": 1, **t,
               "prev_hash": prev, "checksum": cks[i]}
        db.execute("INSERT INTO log VALUES (" + ",".join("?" * len(COLUMNS)) + ")",
                   [row[c] for c in COLUMNS])
        prev = cks[i]
    return db


def test_a_day_boundary_splits_parts(tmp_path):
    from heliosdb.audit import parquet as hp
    from heliosdb.audit.export import verify_export_chain

    day = 86_400_000_000
    base = 20_000 * day  # 2024-10-04
    ts = [base + day - 2, base + day - 1, base + day, base + day + 5, base + 3 * day]
    db = crafted_log(ts)
    header = {"database_id": "ab" * 16, "table": "log", "export_id": "e1",
              "prev_checksum": "00" * 32, "checkpoint": None}
    paths = hp.write_dataset(db, '"log"', str(tmp_path), header, 0, 5)
    rel = [os.path.relpath(p, tmp_path).replace(os.sep, "/") for p in paths]
    assert rel == [f"database_id={'ab' * 16}/date=2024-10-04/part-1-2.parquet",
                   f"database_id={'ab' * 16}/date=2024-10-05/part-3-4.parquet",
                   f"database_id={'ab' * 16}/date=2024-10-07/part-5-5.parquet"]
    rep = verify_export_chain(paths)
    assert rep.ok and rep.last_id == 5, rep.message
    # each part's proof: the checksum before its first event, the checksum of its last
    cks = [r[0] for r in db.execute("SELECT checksum FROM log ORDER BY id")]
    kv = pq.read_schema(paths[1]).metadata
    assert kv[b"heliosdb.prev_checksum"].decode() == cks[1].hex()
    assert kv[b"heliosdb.last_checksum"].decode() == cks[3].hex()
    # a gap in the stored log is refused, not exported
    db.execute("DELETE FROM log WHERE id = 3")
    with pytest.raises(heliosdb.OperationalError, match="event 3 is missing"):
        hp.write_dataset(db, '"log"', str(tmp_path / "g"), header, 0, 5)


def test_rows_per_part_splits_and_parts_chain(tmp_path):
    import apsw  # noqa: F401 - the raw connection the writer runs on
    from heliosdb.audit import parquet as hp

    c = make_db(tmp_path / "a.db", 6)
    try:
        n = c.audit.query().count()
        m = c.audit.export(tmp_path / "one", format="parquet", record=False)
        old = hp.ROWS_PER_PART
        hp.ROWS_PER_PART = 3
        try:
            m3 = c.audit.export(tmp_path / "three", format="parquet", record=False)
        finally:
            hp.ROWS_PER_PART = old
    finally:
        c.close()
    assert len(m.header["parts"]) == 1
    ranges = [tuple(map(int, PART.search(p.replace(os.sep, "/")).group(3, 4)))
              for p in m3.header["parts"]]
    assert ranges == [(i, min(i + 2, n)) for i in range(1, n + 1, 3)]
    from heliosdb.audit.export import verify_export_chain
    assert verify_export_chain(m3.header["parts"]).ok


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    c = make_db(tmp_path / "a.db", 1)
    real = builtins.__import__

    def no_arrow(name, *a, **kw):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real(name, *a, **kw)

    for mod in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_arrow)
    try:
        with pytest.raises(ImportError, match=r"pip install heliosdb\[lake\]"):
            c.audit.export(tmp_path / "ds", format="parquet")
    finally:
        monkeypatch.undo()
        c.close()
    assert not (tmp_path / "ds").exists()
