"""``heliosdb fleet-verify DIR`` (issue 21, item 4): a fleet's Parquet dataset verified on
arrival; each fault names the database and the event id."""
from __future__ import annotations

import json
import os

import pytest

import heliosdb
from heliosdb.audit.fleet import verify_fleet
from helpers.cli import run_cli

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def build_fleet(tmp_path, n_dbs=3, n_exports=3):
    """n_dbs databases, each exported n_exports times (incrementally) into one dataset.
    Returns (root, {database_id: [part paths in id order]})."""
    root = tmp_path / "lake"
    parts = {}
    for i in range(n_dbs):
        c = heliosdb.connect(str(tmp_path / f"db{i}.db"), config="default",
                             audit_user=f"user{i}")
        try:
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            c.commit()
            m = None
            for e in range(n_exports):
                for k in range(2 + i):
                    c.execute("INSERT INTO t(v) VALUES (?)", (f"{e}.{k}",))
                    c.commit()
                m = c.audit.export(root, format="parquet", previous=m)
                parts.setdefault(m.database_id, []).extend(m.header["parts"])
        finally:
            c.close()
    return root, parts


def rewrite(path, edit):
    """Rewrite a part's rows with ``edit(list of row dicts)``, keeping its schema and proof
    metadata (what a forger with file access does)."""
    t = pq.ParquetFile(path).read()
    rows = t.to_pylist()
    edit(rows)
    new = pa.Table.from_pylist(rows, schema=t.schema)
    pq.write_table(new, path)


def ids_of(path):
    return pq.ParquetFile(path).read(columns=["id"]).column("id").to_pylist()


@pytest.fixture
def fleet(tmp_path):
    return build_fleet(tmp_path)


def only_fault(rep, dbid):
    bad = [d for d in rep.databases if not d.ok]
    assert [d.database_id for d in bad] == [dbid]
    assert all(d.ok for d in rep.databases if d.database_id != dbid)
    (f,) = bad[0].faults
    assert f.database_id == dbid and dbid in f.message
    return f, bad[0]


def test_clean_fleet_verifies(fleet):
    root, parts = fleet
    rep = verify_fleet(root)
    assert rep.ok and len(rep.databases) == 3
    for d in rep.databases:
        paths = parts[d.database_id]
        assert len(d.parts) == len(paths) == 3
        total = sum(len(ids_of(p)) for p in paths)
        assert d.events == total and (d.first_id, d.last_id) == (1, total)
        assert d.gaps == [] and d.faults == []
    assert verify_fleet(root, jobs=2).ok  # in processes, the same answer
    proc = run_cli(["fleet-verify", str(root)], cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for dbid in parts:
        assert f"database {dbid}: OK" in proc.stdout
    assert proc.stdout.rstrip().endswith("all verified")


def test_deleted_middle_part_is_a_gap(fleet):
    root, parts = fleet
    dbid = sorted(parts)[1]
    middle = parts[dbid][1]
    missing = ids_of(middle)
    os.unlink(middle)
    rep = verify_fleet(root)
    assert not rep.ok
    f, d = only_fault(rep, dbid)
    assert f.kind == "gap" and f.event_id == missing[0]
    assert d.gaps == [(missing[0], missing[-1])]
    proc = run_cli(["fleet-verify", str(root)], cwd=root)
    assert proc.returncode == 1
    assert f"FAULT gap at event {missing[0]}: database {dbid}" in proc.stdout


def test_swapped_records_are_reordered(fleet):
    root, parts = fleet
    dbid = sorted(parts)[2]
    part = parts[dbid][1]
    ids = ids_of(part)
    assert len(ids) >= 3

    def swap(rows):
        rows[1], rows[2] = rows[2], rows[1]

    rewrite(part, swap)
    f, _d = only_fault(verify_fleet(root), dbid)
    assert f.kind == "reordered" and f.event_id == ids[1]
    proc = run_cli(["fleet-verify", str(root), "--json"], cwd=root)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    (bad,) = [d for d in out["databases"] if not d["ok"]]
    assert bad["database_id"] == dbid and bad["faults"][0]["event_id"] == ids[1]


def test_edited_field_is_modified(fleet):
    root, parts = fleet
    dbid = sorted(parts)[0]
    part = parts[dbid][2]
    ids = ids_of(part)

    def edit(rows):
        rows[1]["user"] = "mallory"

    rewrite(part, edit)
    f, _d = only_fault(verify_fleet(root), dbid)
    assert f.kind == "modified" and f.event_id == ids[1]
    proc = run_cli(["fleet-verify", str(root)], cwd=root)
    assert proc.returncode == 1
    assert f"FAULT modified at event {ids[1]}: database {dbid}" in proc.stdout


def test_rehashed_forgery_breaks_the_link_to_the_next_part(fleet):
    """A forger who re-hashes the rest of a part (and its proof) cannot make the next part
    continue it: the fault names the first event of the next part."""
    from heliosdb.audit.chain import chain_checksums
    from heliosdb.audit.events import TEXT_FIELDS

    root, parts = fleet
    dbid = sorted(parts)[1]
    part, nxt = parts[dbid][0], parts[dbid][1]
    t = pq.ParquetFile(part).read()
    rows = t.to_pylist()
    rows[1]["user"] = "mallory"
    texts = [r[f] for r in rows for f in TEXT_FIELDS]
    cks = chain_checksums(rows[0]["prev_hash"], [r["id"] for r in rows],
                          [r["ts_us"] for r in rows], [r["affected_rows"] for r in rows],
                          [r["success"] for r in rows], texts)
    for i, r in enumerate(rows):
        r["prev_hash"] = rows[i - 1]["checksum"] if i else r["prev_hash"]
        r["checksum"] = cks[i]
    md = dict(t.schema.metadata)
    md[b"heliosdb.last_checksum"] = cks[-1].hex().encode()
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema.with_metadata(md)), part)
    f, _d = only_fault(verify_fleet(root), dbid)
    assert f.kind == "broken_link" and f.event_id == ids_of(nxt)[0]


def test_a_part_filed_under_another_database(fleet):
    root, parts = fleet
    a, b = sorted(parts)[:2]
    src = parts[a][2]
    dst = src.replace(f"database_id={a}", f"database_id={b}")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst.replace("part-", "part-x"))
    rep = verify_fleet(root)
    kinds = {d.database_id: sorted(f.kind for f in d.faults) for d in rep.databases}
    assert "misfiled" in kinds[b]
    assert kinds[a] == []  # a's last part went missing: only a later checkpoint could say


def test_deleted_last_part_found_by_the_checkpoint_it_carries(tmp_path, monkeypatch):
    from heliosdb.audit import parquet as hp

    monkeypatch.setattr(hp, "ROWS_PER_PART", 3)
    c = heliosdb.connect(str(tmp_path / "a.db"), config="default", audit_user="a")
    try:
        c.execute("CREATE TABLE t(x)")
        for i in range(6):
            c.execute("INSERT INTO t VALUES (?)", (i,))
            c.commit()
        cp = c.audit.checkpoint(b"k" * 32)
        m = c.audit.export(tmp_path / "lake", format="parquet")
    finally:
        c.close()
    assert len(m.header["parts"]) >= 3 and cp.event_id == m.last_id
    (rep,) = verify_fleet(tmp_path / "lake").databases
    assert rep.ok and rep.checkpoint == f"#{cp.seq} (event {cp.event_id})"
    last = m.header["parts"][-1]
    lost = ids_of(last)
    os.unlink(last)
    (rep,) = verify_fleet(tmp_path / "lake").databases
    (f,) = rep.faults
    assert f.kind == "gap" and f.event_id == lost[0] and rep.gaps == [(lost[0], lost[-1])]


def test_not_a_dataset_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli(["fleet-verify", str(tmp_path / "empty")], cwd=tmp_path)
    assert proc.returncode == 2 and "not a HeliosDB Parquet audit dataset" in proc.stderr
    proc = run_cli(["fleet-verify", str(tmp_path / "nope")], cwd=tmp_path)
    assert proc.returncode == 2 and "no such directory" in proc.stderr
