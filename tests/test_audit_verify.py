"""Verification: the tamper matrix (each fault named), checkpoints, no false positives.

Runs with both chain implementations (fixture ``impl``). Tampering is done with plain SQL
on the file, as anyone with write access could.
"""
from __future__ import annotations

import os
import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from heliosdb.audit import chain, store
from heliosdb.audit.checkpoint import Checkpoint, create_checkpoint
from heliosdb.audit.events import COLUMNS, EventFields
from heliosdb.audit.verify import (FAULTS, AuditIntegrityError, VerifyReport,
                                   verify_connection)
from heliosdb.errors import DatabaseError, OperationalError, ProgrammingError

from helpers.audit_log import (TABLE, activate, impl, make_log,  # noqa: F401
                                      open_db, rehash, sample_events, shift_ids)

N = 10
HMAC_KEY = b"k" * 32


def verify(conn, **kw) -> VerifyReport:
    r = verify_connection(conn, TABLE, **kw)
    assert r.fault is None or r.fault in FAULTS
    assert r.ok == (r.fault is None)
    return r


def expect(r: VerifyReport, fault: str, first_bad_id) -> None:
    assert not r.ok, r.message
    assert (r.fault, r.first_bad_id) == (fault, first_bad_id), r.message
    if first_bad_id is not None:
        assert str(first_bad_id) in r.message


@pytest.fixture
def log(tmp_path, impl):
    conn = make_log(str(tmp_path / "a.db"), N)
    assert verify(conn).ok
    return conn


# --- no false positives -------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 1000])
def test_untouched_logs_verify(tmp_path, impl, n):
    conn = make_log(str(tmp_path / "a.db"), n)
    r = verify(conn, batch_size=7)  # batches smaller than the log: the links across them
    assert r.ok, r.message
    assert r.events_checked == n and r.head_id == n and r.first_bad_id is None
    assert r.head_checksum == store.head(conn, TABLE).last_checksum


@pytest.fixture(scope="module")
def log_100k(tmp_path_factory):
    """One 100,000-event log for the module (written once, by the C writer if built)."""
    path = str(tmp_path_factory.mktemp("big") / "big.db")
    conn = make_log(path, 0)
    conn.execute("BEGIN")
    for i in range(100):
        store.append(conn, TABLE, sample_events(1000, start=i * 1000))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def test_100k_events_no_false_positive(log_100k, tmp_path, impl):
    conn = open_db(log_100k)
    seen = []
    r = verify(conn, progress=seen.append)
    assert r.ok, r.message
    assert r.events_checked == 100_000 and seen[-1] == 100_000
    conn.close()
    shutil.copy(log_100k, str(tmp_path / "copy.db"))
    conn = open_db(str(tmp_path / "copy.db"))
    conn.execute(f"UPDATE {TABLE} SET user = 'mallory' WHERE id = 99999")
    expect(verify(conn), "modified", 99999)


def test_report_has_no_truth_value(log):
    r = verify(log)
    with pytest.raises(TypeError):
        bool(r)
    with pytest.raises(TypeError):
        if r:  # the trap this prevents
            pass
    assert r.raise_for_fault() is r
    log.execute(f"UPDATE {TABLE} SET query = 'x' WHERE id = 2")
    with pytest.raises(AuditIntegrityError) as ei:
        verify(log).raise_for_fault()
    assert isinstance(ei.value, DatabaseError) and ei.value.report.fault == "modified"


# --- tamper matrix: every column of a first, middle and last event --------------------------

def _changed(conn, col: str, id_: int):
    (v,) = next(conn.execute(f'SELECT "{col}" FROM {TABLE} WHERE id = ?', (id_,)))
    if col == "id":
        return 1000
    if isinstance(v, bytes):
        return bytes([v[0] ^ 1]) + v[1:]
    if isinstance(v, int):
        return v + 1
    if v is None:
        return "x"
    return v + "x"


@pytest.mark.parametrize("id_", [1, 5, N])
@pytest.mark.parametrize("col", COLUMNS)
def test_change_any_field_is_modified(log, col, id_):
    log.execute(f'UPDATE {TABLE} SET "{col}" = ? WHERE id = ?', (_changed(log, col, id_), id_))
    expect(verify(log), "modified", id_)


@pytest.mark.parametrize("col", [c for c in COLUMNS if c not in ("id",)])
def test_change_type_of_any_field_is_modified(log, col):
    # Same text, another storage class (an integer where text was, text where a number
    # was): the hash must cover the type, not only the bytes.
    # Column affinity would convert most values back, so use what it leaves alone: the same
    # bytes as a BLOB (or a hash blob re-typed as TEXT), an empty blob for a NULL.
    (v,) = next(log.execute(f'SELECT "{col}" FROM {TABLE} WHERE id = 4'))
    expr = {bytes: f'CAST("{col}" AS TEXT)', type(None): "x''"}.get(type(v),
                                                                  f'CAST("{col}" AS BLOB)')
    log.execute(f'UPDATE {TABLE} SET "{col}" = {expr} WHERE id = 4')
    (t,) = next(log.execute(f'SELECT typeof("{col}") FROM {TABLE} WHERE id = 4'))
    assert t != {int: "integer", str: "text", bytes: "blob", type(None): "null"}[type(v)]
    expect(verify(log), "modified", 4)


@pytest.mark.parametrize("col", ["session_id", "target", "metadata", "reason", "error",
                                 "affected_rows"])
def test_null_to_value_and_back(log, col):
    rows = {r[0]: r[1] for r in log.execute(f'SELECT id, "{col}" FROM {TABLE}')}
    nul = next(i for i, v in rows.items() if v is None) if None in rows.values() else None
    val = next(i for i, v in rows.items() if v is not None)
    log.execute(f'UPDATE {TABLE} SET "{col}" = NULL WHERE id = ?', (val,))
    first = val
    if nul is not None:
        log.execute(f'UPDATE {TABLE} SET "{col}" = \'\' WHERE id = ?', (nul,))
        first = min(val, nul)
    expect(verify(log), "modified", first)


# --- deletions, insertions, reordering --------------------------------------------------------

@pytest.mark.parametrize("id_", [1, 2, 5, N - 1])
def test_delete_an_event(log, id_):
    log.execute(f"DELETE FROM {TABLE} WHERE id = ?", (id_,))
    expect(verify(log), "deleted", id_)


def test_delete_a_range(log):
    log.execute(f"DELETE FROM {TABLE} WHERE id BETWEEN 3 AND 6")
    r = verify(log)
    expect(r, "deleted", 3)
    assert "3..6" in r.message and r.events_checked == 2


def test_delete_and_renumber(log):
    log.execute(f"DELETE FROM {TABLE} WHERE id = 4")
    shift_ids(log, 5, -1)
    r = verify(log)
    expect(r, "deleted", 4)
    assert "renumbered" in r.message


def test_delete_last_event_undetectable_without_checkpoint(log):
    """Documented limit: a shorter chain is a valid chain. A checkpoint closes it."""
    cp = create_checkpoint(log, TABLE, HMAC_KEY)
    log.execute(f"DELETE FROM {TABLE} WHERE id = ?", (N,))
    r = verify(log)
    assert r.ok and r.events_checked == N - 1
    assert "truncated tail cannot be detected" in r.message
    expect(verify(log, checkpoint=cp, hmac_key=HMAC_KEY), "truncated", N)


def test_insert_forged_event_with_valid_hash(log):
    """The attacker shifts the later ids and writes a correctly hashed event at 5."""
    shift_ids(log, 5, 1)
    (prev,) = next(log.execute(f"SELECT checksum FROM {TABLE} WHERE id = 4"))
    import hashlib
    from heliosdb.audit.events import encode_event
    texts = [None, "mallory", "GRANT", "main.t", None, None, None, None, None, None]
    (ts,) = next(log.execute(f"SELECT ts_us FROM {TABLE} WHERE id = 4"))
    ck = hashlib.sha256(prev + encode_event(5, ts + 1, None, 1, texts)).digest()
    log.execute(f"INSERT INTO {TABLE} (id, ts_us, user, operation, target, success, prev_hash,"
                " checksum) VALUES (5, ?, 'mallory', 'GRANT', 'main.t', 1, ?, ?)",
                (ts + 1, prev, ck))
    expect(verify(log), "inserted", 5)


def test_insert_forged_event_with_bad_hash(log):
    shift_ids(log, 5, 1)
    (prev,) = next(log.execute(f"SELECT checksum FROM {TABLE} WHERE id = 4"))
    log.execute(f"INSERT INTO {TABLE} (id, ts_us, operation, success, prev_hash, checksum) "
                "VALUES (5, 1, 'GRANT', 1, ?, ?)", (prev, os.urandom(32)))
    expect(verify(log), "inserted", 5)


def test_insert_before_the_chain(log):
    log.execute(f"INSERT INTO {TABLE} (id, ts_us, operation, success, prev_hash, checksum) "
                "VALUES (0, 1, 'GRANT', 1, ?, ?)", (bytes(32), os.urandom(32)))
    expect(verify(log), "inserted", 0)


def test_insert_after_the_end_with_a_gap(log):
    (prev, ts) = next(log.execute(f"SELECT checksum, ts_us FROM {TABLE} WHERE id = ?", (N,)))
    log.execute(f"INSERT INTO {TABLE} (id, ts_us, operation, success, prev_hash, checksum) "
                "VALUES (?, ?, 'GRANT', 1, ?, ?)", (N + 5, ts + 1, prev, os.urandom(32)))
    expect(verify(log), "inserted", N + 5)


@pytest.mark.parametrize("a,b", [(4, 5), (2, 8), (1, 2), (N - 1, N)])
def test_reorder_two_events(log, a, b):
    cols = ", ".join(f'"{c}"' for c in COLUMNS[1:])
    ra = next(log.execute(f"SELECT {cols} FROM {TABLE} WHERE id = ?", (a,)))
    rb = next(log.execute(f"SELECT {cols} FROM {TABLE} WHERE id = ?", (b,)))
    sets = ", ".join(f'"{c}" = ?' for c in COLUMNS[1:])
    with log:
        log.execute(f"UPDATE {TABLE} SET {sets} WHERE id = ?", (*rb, a))
        log.execute(f"UPDATE {TABLE} SET {sets} WHERE id = ?", (*ra, b))
    expect(verify(log), "reordered", a)


# --- time ---------------------------------------------------------------------------------

def test_timestamp_backwards_rehashed(log):
    (ts,) = next(log.execute(f"SELECT ts_us FROM {TABLE} WHERE id = 5"))
    log.execute(f"UPDATE {TABLE} SET ts_us = ? WHERE id = 6", (ts - 10,))
    rehash(log, 6)
    expect(verify(log), "time_went_backwards", 6)


def test_timestamp_backwards_not_rehashed_is_modified(log):
    log.execute(f"UPDATE {TABLE} SET ts_us = 5 WHERE id = 6")
    expect(verify(log), "modified", 6)


# --- checkpoints --------------------------------------------------------------------------

@pytest.fixture(params=["ed25519", "hmac"])
def keys(request):
    if request.param == "ed25519":
        k = Ed25519PrivateKey.generate()
        return k, {"public_key": k.public_key()}
    return HMAC_KEY, {"hmac_key": HMAC_KEY}


def test_checkpoint_round_trip_and_verify(log, tmp_path, keys):
    sk, vk = keys
    cp = create_checkpoint(log, TABLE, sk)
    assert (cp.event_id, cp.count, cp.seq) == (N, N, 1)
    assert cp.checksum == store.head(log, TABLE).last_checksum
    path = tmp_path / "cp.txt"
    cp.save(path)
    text = path.read_text()
    assert text.splitlines()[1] == "format: heliosdb-audit-checkpoint/2"  # version 2: signs the Merkle tree
    cp2 = Checkpoint.load(path)
    assert cp2 == cp
    r = verify(log, checkpoint=cp2, **vk)
    assert r.ok and r.checkpoint_id == N, r.message
    store.append(log, TABLE, sample_events(5))  # the log grows after a checkpoint: fine
    assert verify(log, checkpoint=cp2, **vk).ok
    cp3 = create_checkpoint(log, TABLE, sk)
    assert cp3.seq == 2 and cp3.event_id == N + 5
    assert verify(log, checkpoint=cp2, **vk).ok  # an older checkpoint still holds


def test_truncated_tail_detected(log, keys):
    sk, vk = keys
    cp = create_checkpoint(log, TABLE, sk)
    log.execute(f"DELETE FROM {TABLE} WHERE id > 6")
    assert verify(log).ok  # the plain chain cannot see it
    r = verify(log, checkpoint=cp, **vk)
    expect(r, "truncated", 7)
    assert "7..10" in r.message


def test_truncated_to_empty_and_dropped(log, keys):
    sk, vk = keys
    cp = create_checkpoint(log, TABLE, sk)
    log.execute(f"DELETE FROM {TABLE}")
    expect(verify(log, checkpoint=cp, **vk), "truncated", 1)
    log.execute(f"DROP TABLE {TABLE}")
    expect(verify(log, checkpoint=cp, **vk), "truncated", 1)
    with pytest.raises(OperationalError):
        verify(log)


def test_rewritten_chain_detected(log, keys):
    """Change an event and recompute every later checksum: consistent, but not signed."""
    sk, vk = keys
    cp = create_checkpoint(log, TABLE, sk)
    log.execute(f"UPDATE {TABLE} SET user = 'nobody' WHERE id = 3")
    rehash(log, 3)
    assert verify(log).ok  # without the key, a re-hashed chain is valid
    r = verify(log, checkpoint=cp, **vk)
    expect(r, "modified", N)
    assert "re-hashed" in r.message


def _roll_back_to(log, path: str, old_copy: str) -> None:
    """Close the log and put the older copy of its file in its place (no WAL left over),
    as an attacker who kept the copy would."""
    log.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    shutil.copy(old_copy, path)


def test_rolled_back_file_detected(log, tmp_path, keys):
    sk, vk = keys
    path = str(tmp_path / "a.db")
    log.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(path, str(tmp_path / "old.db"))  # the copy an attacker keeps
    store.append(log, TABLE, sample_events(5))
    cp = create_checkpoint(log, TABLE, sk)
    _roll_back_to(log, path, str(tmp_path / "old.db"))
    conn = open_db(path)
    assert verify(conn).ok  # the old copy is a valid chain
    r = verify(conn, checkpoint=cp, **vk)
    expect(r, "rolled_back", N + 1)
    assert "older copy" in r.message


def test_rolled_back_to_copy_taken_at_the_checkpoint_head(log, tmp_path, keys):
    """The copy has every event the checkpoint signs, but predates the checkpoint."""
    sk, vk = keys
    path = str(tmp_path / "a.db")
    log.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(path, str(tmp_path / "old.db"))
    cp = create_checkpoint(log, TABLE, sk)
    _roll_back_to(log, path, str(tmp_path / "old.db"))
    expect(verify(open_db(path), checkpoint=cp, **vk), "rolled_back", None)


def test_bad_signature(log, tmp_path, keys):
    sk, vk = keys
    cp = create_checkpoint(log, TABLE, sk)
    path = tmp_path / "cp.txt"
    cp.save(path)
    text = path.read_text().replace(f"event_id: {N}", f"event_id: {N - 3}")
    path.write_text(text)
    forged = Checkpoint.load(path)
    assert forged.event_id == N - 3
    expect(verify(log, checkpoint=forged, **vk), "bad_signature", None)
    # Signed by another key.
    other = Ed25519PrivateKey.generate() if "public_key" in vk else b"z" * 32
    cp_other = create_checkpoint(log, TABLE, other)
    r = verify(log, checkpoint=cp_other, **vk)
    expect(r, "bad_signature", None)
    assert cp_other.key_id in r.message


def test_checkpoint_of_another_database(tmp_path, impl):
    a = make_log(str(tmp_path / "a.db"), 3)
    b = make_log(str(tmp_path / "b.db"), 3)
    cp = create_checkpoint(a, TABLE, HMAC_KEY)
    r = verify(b, checkpoint=cp, hmac_key=HMAC_KEY)
    expect(r, "modified", None)
    assert "another" in r.message or "wrong checkpoint" in r.message


def test_checkpoint_misuse(log, tmp_path):
    cp = create_checkpoint(log, TABLE, HMAC_KEY)
    with pytest.raises(ProgrammingError):
        verify(log, checkpoint=cp)  # no key
    with pytest.raises(ProgrammingError):
        verify(log, since_checkpoint=True)
    with pytest.raises(ProgrammingError):
        create_checkpoint(log, TABLE, b"short")
    with pytest.raises(ProgrammingError):
        create_checkpoint(log, TABLE, "not a key")
    log.execute("BEGIN")
    with pytest.raises(ProgrammingError):
        create_checkpoint(log, TABLE, HMAC_KEY)
    log.execute("ROLLBACK")
    bad = tmp_path / "bad.txt"
    bad.write_text(cp.to_text().replace("seq: 1", "seq: one"))
    with pytest.raises(ProgrammingError):
        Checkpoint.load(bad)
    bad.write_text(cp.to_text() + "extra: 1\n")
    with pytest.raises(ProgrammingError):
        Checkpoint.load(bad)


def test_empty_log_checkpoint(tmp_path, impl):
    conn = make_log(str(tmp_path / "a.db"), 0)
    cp = create_checkpoint(conn, TABLE, HMAC_KEY)
    assert cp.event_id == 0 and cp.checksum == bytes(32) and cp.count == 0
    assert verify(conn, checkpoint=cp, hmac_key=HMAC_KEY).ok
    store.append(conn, TABLE, sample_events(2))
    assert verify(conn, checkpoint=cp, hmac_key=HMAC_KEY).ok


def test_incremental_since_checkpoint(log, keys):
    sk, vk = keys
    cp = create_checkpoint(log, TABLE, sk)
    store.append(log, TABLE, sample_events(7))
    r = verify(log, checkpoint=cp, since_checkpoint=True, **vk)
    assert r.ok and r.events_checked == 7 and r.head_id == N + 7, r.message
    # A change before the checkpoint is not re-read incrementally...
    log.execute(f"UPDATE {TABLE} SET query = 'x' WHERE id = 2")
    assert verify(log, checkpoint=cp, since_checkpoint=True, **vk).ok
    # ...but a full verify sees it.
    expect(verify(log, checkpoint=cp, **vk), "modified", 2)
    log.execute(f"UPDATE {TABLE} SET query = 'x' WHERE id = {N + 3}")
    expect(verify(log, checkpoint=cp, since_checkpoint=True, **vk), "modified", N + 3)


def test_incremental_detects_rewrite_at_checkpoint(log, keys):
    sk, vk = keys
    cp = create_checkpoint(log, TABLE, sk)
    log.execute(f"UPDATE {TABLE} SET user = 'x' WHERE id = 2")
    rehash(log, 2)
    expect(verify(log, checkpoint=cp, since_checkpoint=True, **vk), "modified", N)
    log.execute(f"DELETE FROM {TABLE} WHERE id >= {N}")
    expect(verify(log, checkpoint=cp, since_checkpoint=True, **vk), "truncated", N)


def test_verify_inside_callers_transaction_and_snapshot(log):
    log.execute("BEGIN")
    store.append(log, TABLE, sample_events(2))
    r = verify(log)
    assert r.ok and r.events_checked == N + 2
    log.execute("ROLLBACK")
    assert verify(log).events_checked == N


def test_purge_anchor_is_honoured(log, impl):
    """Retention purge (another issue) deletes a prefix and records the last purged event
    as the anchor; the rest must still verify, and a wrong anchor must not."""
    (ck, ts) = next(log.execute(f"SELECT checksum, ts_us FROM {TABLE} WHERE id = 4"))
    with log:
        log.execute(f"DELETE FROM {TABLE} WHERE id <= 4")
        store.set_meta(log, TABLE, "anchor_id", 4)
        store.set_meta(log, TABLE, "anchor_checksum", ck)
        store.set_meta(log, TABLE, "anchor_ts_us", ts)
        # A purge records itself (the anchor is trusted only when the chain records it).
        store.append(log, TABLE, [EventFields("RETENTION_PURGE", target=TABLE, metadata={
            "details": {"last_id": 4, "anchor_checksum": ck.hex()}})])
    r = verify(log)
    assert r.ok and r.events_checked == N - 4 + 1, r.message
    assert store.head(log, TABLE).count == N - 4 + 1
    store.set_meta(log, TABLE, "anchor_checksum", bytes(32))
    expect(verify(log), "modified", 5)
    # An anchor that claims less was purged than is missing: event 4 was deleted too.
    (ck3, ts3) = (b"\x33" * 32, ts - 1)
    store.set_meta(log, TABLE, "anchor_id", 3)
    store.set_meta(log, TABLE, "anchor_checksum", ck3)
    store.set_meta(log, TABLE, "anchor_ts_us", ts3)
    expect(verify(log), "deleted", 4)


def test_sql_aggregate_is_used_with_c(tmp_path):
    restore = activate("c")
    try:
        log = make_log(str(tmp_path / "a.db"), N)
        assert chain.register_sql_check(log)
    finally:
        restore()
    ((blob,),) = log.execute(
        "SELECT heliosdb_chain_check(?, 1, NULL, id, ts_us, affected_rows, success, "
        'session_id, "user", operation, target, query, error, metadata, old_values, '
        f"new_values, reason, prev_hash, checksum) FROM {TABLE}", (bytes(32),))
    n_good, failed, _, last_ts, link = chain.decode_check_result(blob)
    assert (n_good, failed, link) == (N, False, store.head(log, TABLE).last_checksum)


def test_utf16_database_no_false_positive(tmp_path, impl):
    """Texts are hashed as UTF-8 whatever the database's text encoding."""
    conn = open_db(str(tmp_path / "u16.db"))
    conn.execute("PRAGMA encoding = 'UTF-16le'")
    store.ensure_schema(conn, TABLE)
    store.append(conn, TABLE, sample_events(30))
    r = verify(conn)
    assert r.ok and r.events_checked == 30, r.message
    conn.execute(f"UPDATE {TABLE} SET user = 'zoe' WHERE id = 11")
    expect(verify(conn), "modified", 11)


def test_invalid_utf8_text_is_modified_not_a_crash(log):
    log.execute(f"UPDATE {TABLE} SET query = CAST(x'c328' AS TEXT) WHERE id = 6")
    r = verify(log)
    expect(r, "modified", 6)
    assert "UTF-8" in r.message
