"""A verifier that trusts nothing it reads: each attack found against it is a test here.

1. An export whose header copies of the checkpoint were forged, or that lost its checkpoint.
2. A purge anchor written by hand (an emptied log, an anchor at the checkpoint's id).
3. Values of another storage class than the encoding allows (NULL vs ``x'ff'`` text,
   invalid UTF-8, blobs, reals), in every verification path (property test).
4. A checkpoint re-signed by another key, checked without a key (CLI and API).
5. purge() with a clock far in the future.
6. Triggers, views and indexes HeliosDB did not create on or around the log.

Tampering is done with plain SQL (apsw or the stdlib sqlite3), as anyone who can write the
file could.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import sqlite3
import struct

import apsw
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import heliosdb
import heliosdb.config
from heliosdb.audit import chain, store
from heliosdb.audit.checkpoint import Checkpoint, create_checkpoint, key_id
from heliosdb.audit.events import COLUMNS, TEXT_FIELDS, EventFields, encode_event
from heliosdb.audit.export import export_events, verify_export, verify_export_chain
from heliosdb.audit.neighbourhood import find_audit_tables, find_foreign_schema
from heliosdb.audit.query import to_us
from heliosdb.audit.verify import FAULTS, verify_connection
from heliosdb.errors import ProgrammingError

from helpers.audit_log import (TABLE, activate, impl, make_log,  # noqa: F401
                                      rehash, sample_events, stamp)
from helpers.cli import cli_env, run_cli

N = 10
HMAC_KEY = b"h" * 32


def _raw_pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


@pytest.fixture(params=["wal", "delete"])
def journal(request):
    return request.param


@pytest.fixture
def log(tmp_path, impl, journal):
    conn = make_log(str(tmp_path / "a.db"), N)
    conn.execute(f"PRAGMA journal_mode={journal}")
    r = verify_connection(conn, TABLE)
    assert r.ok, r.message
    return conn


def expect_fault(r, fault, first_bad_id="any"):
    assert r.fault in FAULTS
    assert not r.ok, r.message
    assert r.fault == fault, r.message
    if first_bad_id != "any":
        assert r.first_bad_id == first_bad_id, r.message


# ===========================================================================================
# 1. exports: values compared with a checkpoint come from its signed text
# ===========================================================================================

def _read_lines(p):
    return [json.loads(s) for s in open(p, encoding="utf-8").read().splitlines() if s]


def _write_lines(p, objs):
    with open(p, "w", encoding="utf-8", newline="") as f:
        for o in objs:
            f.write(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n")


def _rehash_export(objs, from_id):
    """Recompute every checksum from event ``from_id`` on and fix the header's head."""
    hdr, evs = objs[0], objs[1:]
    prev = None
    for e in evs:
        if e["id"] < from_id:
            prev = bytes.fromhex(e["checksum"])
            continue
        if prev is None:
            prev = bytes.fromhex(hdr["prev_checksum"])
        e["prev_hash"] = prev.hex()
        ck = hashlib.sha256(prev + encode_event(e["id"], e["ts_us"], e["affected_rows"],
                                                e["success"],
                                                [e[c] for c in TEXT_FIELDS])).digest()
        e["checksum"] = ck.hex()
        prev = ck
    hdr["last_checksum"] = evs[-1]["checksum"]
    return hdr, evs


@pytest.fixture
def signed_export(tmp_path):
    conn = make_log(str(tmp_path / "e.db"), N)
    sk = Ed25519PrivateKey.generate()
    cp = create_checkpoint(conn, TABLE, sk)
    store.append(conn, TABLE, sample_events(3, start=N))
    p = str(tmp_path / "e.jsonl")
    export_events(conn, TABLE, p, checkpoint=cp)
    rep = verify_export(p, public_key=_raw_pub(sk))
    assert rep.ok and rep.checkpoint_verified, rep.message
    return p, sk, cp


@pytest.mark.parametrize("copies", ["forged", "left", "removed"])
def test_export_rehashed_forgery_does_not_pass_as_signed(signed_export, copies):
    """Attack 1: change an event before the checkpoint, re-hash the rest of the file and
    fix the header; the header's copies of the checkpoint's checksum are forged too (or left,
    or removed). Only the signed text counts: the forgery is a checkpoint mismatch."""
    p, sk, cp = signed_export
    objs = _read_lines(p)
    target = cp.event_id - 2
    for e in objs[1:]:
        if e["id"] == target:
            e["user"] = "mallory"
    hdr, evs = _rehash_export(objs, target)
    new_ck = next(e["checksum"] for e in evs if e["id"] == cp.event_id)
    assert new_ck != cp.checksum.hex()
    if copies == "forged":
        hdr["checkpoint"]["checksum"] = new_ck
    elif copies == "removed":
        for k in ("checksum", "event_id", "seq"):
            hdr["checkpoint"].pop(k)
    _write_lines(p, [hdr] + evs)
    for kw in ({"public_key": _raw_pub(sk)}, {}):
        rep = verify_export(p, **kw)
        assert not rep.ok, rep.message
        assert rep.fault == "checkpoint_mismatch", rep.message
        assert not rep.checkpoint_verified


def test_export_with_checkpoint_moved_to_the_forged_event(signed_export):
    """The header copies name another event than the signed text: refused."""
    p, sk, cp = signed_export
    objs = _read_lines(p)
    objs[0]["checkpoint"]["event_id"] = cp.event_id + 1
    _write_lines(p, objs)
    rep = verify_export(p, public_key=_raw_pub(sk))
    assert not rep.ok and rep.fault == "checkpoint_mismatch", rep.message


@pytest.mark.parametrize("how", ["null", "deleted"])
def test_export_without_its_checkpoint_fails_when_a_key_is_given(signed_export, how):
    """Attack 1b: drop the checkpoint from the header; with a key given that is a fault."""
    p, sk, _cp = signed_export
    objs = _read_lines(p)
    if how == "null":
        objs[0]["checkpoint"] = None
    else:
        del objs[0]["checkpoint"]
    _write_lines(p, objs)
    rep = verify_export(p, public_key=_raw_pub(sk))
    assert not rep.ok and rep.fault == "no_checkpoint", rep.message
    rep = verify_export(p, hmac_key=HMAC_KEY)
    assert not rep.ok and rep.fault == "no_checkpoint", rep.message
    # Without a key nothing was claimed about a signature: the chain itself is intact.
    rep = verify_export(p)
    assert rep.ok and not rep.checkpoint_verified, rep.message


def test_export_that_does_not_reach_the_checkpoint_is_not_vouched_for(tmp_path):
    conn = make_log(str(tmp_path / "e.db"), N)
    sk = Ed25519PrivateKey.generate()
    cp = create_checkpoint(conn, TABLE, sk)
    p = str(tmp_path / "early.jsonl")
    export_events(conn, TABLE, p, last_id=cp.event_id - 3, checkpoint=cp)
    rep = verify_export(p, public_key=_raw_pub(sk))
    assert not rep.ok and rep.fault == "checkpoint_mismatch", rep.message
    assert str(cp.event_id) in rep.message


def test_export_chain_with_a_key_needs_the_last_checkpoint(tmp_path):
    """Archives carry no checkpoint; with a key, the last file of a chain must carry one
    that it reaches (its signed checksum covers the files before it through the links)."""
    conn = make_log(str(tmp_path / "e.db"), N)
    sk = Ed25519PrivateKey.generate()
    a = str(tmp_path / "a.jsonl")
    m = export_events(conn, TABLE, a, last_id=4)
    cp = create_checkpoint(conn, TABLE, sk)
    b = str(tmp_path / "b.jsonl")
    export_events(conn, TABLE, b, after_id=m.last_id, checkpoint=cp)
    pub = _raw_pub(sk)
    assert verify_export_chain([a, b], public_key=pub).ok
    rep = verify_export_chain([b], public_key=_raw_pub(Ed25519PrivateKey.generate()))
    assert rep.fault == "bad_signature", rep.message
    c = str(tmp_path / "c.jsonl")
    export_events(conn, TABLE, c, after_id=m.last_id)  # the same events, unsigned
    rep = verify_export_chain([a, c], public_key=pub)
    assert not rep.ok and rep.fault == "no_checkpoint", rep.message


def test_export_checkpoint_signed_by_another_key(signed_export):
    p, _sk, _cp = signed_export
    other = Ed25519PrivateKey.generate()
    rep = verify_export(p, public_key=_raw_pub(other))
    assert not rep.ok and rep.fault == "bad_signature", rep.message


# ===========================================================================================
# 2. purge anchors must be proven
# ===========================================================================================

def test_emptied_log_with_forged_anchor_is_unproven(log):
    """Attack 2: delete every event and write an anchor by hand."""
    with log:
        log.execute(f"DELETE FROM {TABLE}")
        store.set_meta(log, TABLE, "anchor_id", N)
        store.set_meta(log, TABLE, "anchor_checksum", b"\x42" * 32)
    r = verify_connection(log, TABLE)
    expect_fault(r, "unproven_anchor")
    assert str(N) in r.message


def test_prefix_deleted_with_correct_anchor_but_no_purge_record(log):
    """The anchor even holds the genuine checksum of the last deleted event: without a
    RETENTION_PURGE event recording it, the deletion is not a purge."""
    (ck,) = next(log.execute(f"SELECT checksum FROM {TABLE} WHERE id = 4"))
    with log:
        log.execute(f"DELETE FROM {TABLE} WHERE id <= 4")
        store.set_meta(log, TABLE, "anchor_id", 4)
        store.set_meta(log, TABLE, "anchor_checksum", ck)
    expect_fault(verify_connection(log, TABLE), "unproven_anchor", 1)


@pytest.mark.parametrize("checksum", ["any", "copied"])
def test_emptied_log_with_anchor_at_the_checkpoint(log, checksum):
    """Attack 2b: anchor_id = the checkpoint's event id, with any checksum or with the
    checkpoint's own (it is public): neither proves a purge."""
    cp = create_checkpoint(log, TABLE, HMAC_KEY)
    with log:
        log.execute(f"DELETE FROM {TABLE}")
        store.set_meta(log, TABLE, "anchor_id", cp.event_id)
        store.set_meta(log, TABLE, "anchor_checksum",
                       cp.checksum if checksum == "copied" else b"\x07" * 32)
    r = verify_connection(log, TABLE, checkpoint=cp, hmac_key=HMAC_KEY)
    assert not r.ok, r.message
    assert r.fault in ("unproven_anchor", "modified"), r.message
    # and after forging the purge record too (re-hashed, so the chain is consistent), the
    # anchor still has to match what the checkpoint signed
    store.append(log, TABLE, [EventFields("RETENTION_PURGE", target=TABLE, metadata={
        "details": {"last_id": cp.event_id,
                    "anchor_checksum": (cp.checksum if checksum == "copied"
                                        else b"\x07" * 32).hex()}})])
    # The checkpoint's checksum is public: repeating it in the anchor proves nothing; only
    # an archive holding the deleted events (a real purge leaves one) does.
    r = verify_connection(log, TABLE, checkpoint=cp, hmac_key=HMAC_KEY)
    expect_fault(r, "unproven_anchor", cp.event_id)


def test_purge_of_exactly_the_checkpointed_events(tmp_path, purge_clock, impl):
    """The legitimate twin of the attack above: the checkpoint's head is the last event
    purged; its archive proves the anchor, and without the archive nothing does."""
    db = str(tmp_path / "x.db")
    c = _retained(db)
    stamp(c, [EventFields("INSERT", target="t", user="alice", affected_rows=1)] * 3, T0)
    cp = c.audit.checkpoint(HMAC_KEY)
    stamp(c, [EventFields("DELETE", target="t", user="bob", affected_rows=1)], T0 + 40 * DAY)
    res = c.audit.purge(now=T0 + 45 * DAY, archive=tmp_path)
    assert res.anchor_id == cp.event_id
    assert c.audit.verify(checkpoint=cp, hmac_key=HMAC_KEY).ok
    os.unlink(res.archive)
    expect_fault(c.audit.verify(checkpoint=cp, hmac_key=HMAC_KEY), "unproven_anchor",
                 cp.event_id)
    c.close()


# --- a real purge, a checkpoint taken before it, and its archive ---------------------------

DAY = 86_400_000_000
T0 = to_us("2031-01-01T00:00:00Z")


@pytest.fixture
def purge_clock(monkeypatch):
    from heliosdb.audit import retention
    monkeypatch.setattr(retention, "_clock_us", lambda: T0 + 1000 * DAY)


def _retained(db_path, table=None):
    audit = {"retention_days": 30}
    if table:
        audit["table_name"] = table
    cfg = heliosdb.config.load_config({"extends": "verbose", "audit": audit})
    return heliosdb.connect(db_path, config=cfg, audit_user="alice")


@pytest.mark.parametrize("table", [None, "x_log"])
def test_checkpoint_before_purge_needs_the_archive(tmp_path, purge_clock, impl, table):
    """Attack 5b / 2: a checkpoint whose signed event was purged verifies only when the
    archive links that event to the anchor."""
    db = str(tmp_path / "r.db")
    c = _retained(db, table)
    tbl = c.audit.table
    stamp(c, [EventFields("INSERT", target="t", user="alice", affected_rows=1)] * 3, T0)
    cp = c.audit.checkpoint(HMAC_KEY)
    stamp(c, [EventFields("UPDATE", target="t", user="bob", affected_rows=1)] * 2,
           T0 + 10 * DAY)
    stamp(c, [EventFields("DELETE", target="t", user="bob", affected_rows=1)], T0 + 40 * DAY)
    res = c.audit.purge(now=T0 + 45 * DAY, archive=tmp_path)
    assert res.anchor_id > cp.event_id, "the checkpointed event must have been purged"
    r = c.audit.verify(checkpoint=cp, hmac_key=HMAC_KEY)
    assert r.ok, r.message
    c.close()
    elsewhere = tmp_path / "moved"
    elsewhere.mkdir()
    moved = shutil.move(res.archive, elsewhere / os.path.basename(res.archive))
    raw = apsw.Connection(db)
    r = verify_connection(raw, tbl, checkpoint=cp, hmac_key=HMAC_KEY)
    expect_fault(r, "unproven_anchor", cp.event_id)
    assert "archive" in r.message
    r = verify_connection(raw, tbl, checkpoint=cp, hmac_key=HMAC_KEY, archives=[moved])
    assert r.ok, r.message
    # an archive that was rewritten (re-hashed) does not hold the signed event
    objs = [json.loads(s) for s in gzip.open(moved, "rt", encoding="utf-8").read().split("\n")
            if s]
    for e in objs[1:]:
        if e["id"] == cp.event_id:
            e["user"] = "mallory"
    hdr, evs = _rehash_export(objs, cp.event_id)
    forged = str(elsewhere / "forged.jsonl")
    _write_lines(forged, [hdr] + evs)
    r = verify_connection(raw, tbl, checkpoint=cp, hmac_key=HMAC_KEY, archives=[forged])
    expect_fault(r, "unproven_anchor", cp.event_id)
    raw.close()


# ===========================================================================================
# 5. purge() takes no caller clock beyond the real time plus 5 minutes
# ===========================================================================================

def test_purge_with_a_far_future_clock_is_refused(db_path, tmp_path):
    c = heliosdb.connect(db_path, config="verbose")
    c.execute("CREATE TABLE t(a)")
    c.execute("INSERT INTO t VALUES (1)")
    c.commit()
    cp = c.audit.checkpoint(HMAC_KEY)
    before = c.audit.head()
    with pytest.raises(ProgrammingError, match="5 minutes"):
        c.audit.purge(now="2999-01-01", archive=tmp_path)
    with pytest.raises(ProgrammingError, match="5 minutes"):
        c.audit.purge(now="2999-01-01", archive=tmp_path, dry_run=True)
    after = c.audit.head()
    assert after.count >= before.count and store.anchor(c.audit._db, c.audit.table).id == 0
    assert c.audit.verify(checkpoint=cp, hmac_key=HMAC_KEY).ok
    # the real clock (and a few seconds ahead of it) is accepted and purges nothing young
    res = c.audit.purge(archive=tmp_path)
    assert res.purged == 0
    c.close()


# ===========================================================================================
# 3. value encoding: one stored value, one meaning, in every path
# ===========================================================================================

def test_null_replaced_by_ff_text_is_modified(log):
    """Attack 3: the batch paths used the byte 0xFF for NULL, so a NULL replaced by
    CAST(x'ff' AS TEXT) verified."""
    nulls = [(c, i) for c in TEXT_FIELDS for (i,) in
             log.execute(f'SELECT id FROM {TABLE} WHERE "{c}" IS NULL ORDER BY id LIMIT 1')]
    assert len(nulls) >= 5
    for col, id_ in nulls:
        log.execute(f"UPDATE {TABLE} SET \"{col}\" = CAST(x'ff' AS TEXT) WHERE id = ?", (id_,))
        expect_fault(verify_connection(log, TABLE), "modified", id_)
        log.execute(f'UPDATE {TABLE} SET "{col}" = NULL WHERE id = ?', (id_,))
        assert verify_connection(log, TABLE).ok


def test_invalid_utf8_rehashed_byte_for_byte_is_modified(log):
    """Text that is not UTF-8, with checksums recomputed over its raw bytes (what the
    batch paths hashed): no event encodes to it, so it is modified in every path."""
    log.execute(f"UPDATE {TABLE} SET \"user\" = CAST(x'c328ff' AS TEXT) WHERE id = 3")
    _raw_rehash(log, TABLE)
    expect_fault(verify_connection(log, TABLE), "modified", 3)


def _raw_value_bytes(col, t, v):
    """A lax encoding of one stored value: what a verifier that looks only at bytes would
    hash. Equal to the canonical encoding for every canonical value."""
    if t == "null":
        return b"\x00"
    if col in ("id", "ts_us", "affected_rows", "success"):
        if t in ("integer", "real"):
            return b"\x01" + struct.pack(">q", max(-(1 << 63), min((1 << 63) - 1, int(v))))
        return b"\x02" + struct.pack(">I", len(v)) + v
    if t in ("integer", "real"):
        v = repr(v).encode()
    return b"\x02" + struct.pack(">I", len(v)) + v


_CHAIN_COLS = ["id", "ts_us", "affected_rows", "success", *TEXT_FIELDS]


def _raw_cols_sql():
    return ", ".join(f"typeof(\"{c}\"), CASE WHEN typeof(\"{c}\") = 'text' THEN "
                     f"CAST(\"{c}\" AS BLOB) ELSE \"{c}\" END" for c in COLUMNS)


def _snapshot(conn, table):
    return [tuple(r) for r in conn.execute(f"SELECT {_raw_cols_sql()} FROM {table} "
                                           "ORDER BY rowid")]


def _raw_rehash(conn, table):
    """An attacker's re-hash over the stored bytes (not the canonical encoding)."""
    rows = list(conn.execute(f"SELECT rowid, " + ", ".join(
        f"typeof(\"{c}\"), CASE WHEN typeof(\"{c}\") = 'text' THEN CAST(\"{c}\" AS BLOB) "
        f"ELSE \"{c}\" END" for c in _CHAIN_COLS) + f" FROM {table} ORDER BY id"))
    prev = bytes(32)
    with conn:
        for r in rows:
            enc = b"\x01" + b"".join(_raw_value_bytes(c, r[1 + 2 * k], r[2 + 2 * k])
                                     for k, c in enumerate(_CHAIN_COLS))
            ck = hashlib.sha256(prev + enc).digest()
            conn.execute(f"UPDATE {table} SET prev_hash = ?, checksum = ? WHERE rowid = ?",
                         (prev, ck, r[0]))
            prev = ck


def _canonical(snap_row):
    vals = dict(zip(COLUMNS, zip(snap_row[0::2], snap_row[1::2])))
    for c in ("id", "ts_us", "success"):
        if vals[c][0] != "integer":
            return False
    if vals["affected_rows"][0] not in ("integer", "null"):
        return False
    for c in TEXT_FIELDS:
        t, v = vals[c]
        if t == "null":
            continue
        if t != "text":
            return False
        try:
            v.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(vals[c][0] == "blob" and len(vals[c][1]) == 32
               for c in ("prev_hash", "checksum"))


class _TextBytes(bytes):
    """Bytes stored as TEXT (CAST(? AS TEXT)): any bytes, valid UTF-8 or not."""


_values = st.one_of(
    st.none(), st.just(""), st.just(b""), st.just(_TextBytes(b"\xff")),
    st.binary(max_size=6).map(_TextBytes),
    st.text(max_size=6),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.sampled_from([0, 1, 2]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.binary(max_size=6), st.binary(min_size=32, max_size=32),
)
_TAMPER_COLS = [c for c in COLUMNS if c != "id"]
_MODES = [m for m in ("c", "c-batch", "pure")
          if m == "pure" or "c" in chain.available_impls()]


def _verdicts(conn, table):
    out = {}
    for mode in _MODES:
        restore = activate(mode)
        try:
            r = verify_connection(conn, table, batch_size=2)
        finally:
            restore()
        assert r.fault is None or r.fault in FAULTS
        out[mode] = (r.ok, r.fault, r.first_bad_id)
    return out


_opt_text = st.one_of(st.none(), st.just(""), st.text(max_size=8),
                     st.text(alphabet="\x00\xff\u00e9\U0001f600a", max_size=4))
_events = st.builds(
    EventFields,
    operation=st.sampled_from(["INSERT", "UPDATE", "LOGIN", "X_CUSTOM"]),
    target=_opt_text, user=_opt_text, session_id=_opt_text, query=_opt_text,
    affected_rows=st.one_of(st.none(), st.integers(-(1 << 63), (1 << 63) - 1)),
    success=st.booleans(), error=_opt_text, metadata=_opt_text, old_values=_opt_text,
    new_values=_opt_text, reason=_opt_text)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tampers=st.lists(st.tuples(st.integers(1, 4), st.sampled_from(_TAMPER_COLS), _values),
                        min_size=1, max_size=3),
       rehashed=st.booleans(),
       events=st.one_of(st.none(), st.lists(_events, min_size=4, max_size=4)))
@example(tampers=[(4, "reason", _TextBytes(b"\xff"))], rehashed=False, events=None)
@example(tampers=[(2, "user", _TextBytes(b"\xc3("))], rehashed=True, events=None)
@example(tampers=[(3, "query", b"UPDATE")], rehashed=True, events=None)
@example(tampers=[(1, "affected_rows", 1.5)], rehashed=True, events=None)
def test_every_path_same_verdict_and_never_ok_for_a_changed_row(tampers, rehashed, events):
    """Property (attack 3): every verification path (C aggregate, C batch, pure Python)
    gives the same verdict on the same rows, and never ok for a row that differs from
    what was written; after an attacker's byte-level re-hash, ok only if every stored
    value has the type the encoding allows (and time still increases)."""
    conn = apsw.Connection(":memory:")
    store.ensure_schema(conn, TABLE)
    store.append(conn, TABLE, events or sample_events(4), now_us=1_700_000_000_000_000,
                 max_query_length=None)
    if "c" in _MODES:
        restore = activate("c")
        try:
            assert chain.register_sql_check(conn)  # mode "c" really runs the aggregate
        finally:
            restore()
    before = _snapshot(conn, TABLE)
    assert all(v[0] for v in _verdicts(conn, TABLE).values())
    for id_, col, v in tampers:
        expr = "CAST(? AS TEXT)" if isinstance(v, _TextBytes) else "?"
        arg = bytes(v) if isinstance(v, _TextBytes) else v
        try:
            conn.execute(f'UPDATE {TABLE} SET "{col}" = {expr} WHERE id = ?', (arg, id_))
        except apsw.ConstraintError:
            pass  # NOT NULL: the column cannot hold it
    if rehashed:
        _raw_rehash(conn, TABLE)
    after = _snapshot(conn, TABLE)
    v = _verdicts(conn, TABLE)
    assert len(set(v.values())) == 1, v
    ok = next(iter(v.values()))[0]
    if not rehashed:
        changed = before != after
        assert ok == (not changed), (v, before, after)
    else:
        ts = [r[3] for r in after]
        fine = all(_canonical(r) for r in after) and \
            all(type(a) is int and type(b) is int and a < b for a, b in zip(ts, ts[1:]))
        assert ok == fine, (v, after)
    conn.close()


# ===========================================================================================
# 4. a checkpoint is proof only under a given or pinned key
# ===========================================================================================

def _resigned(cp, other):
    forged = dataclasses.replace(cp, key_id=key_id(_raw_pub(other)),
                                 public_key=_raw_pub(other))
    return dataclasses.replace(forged, signature=other.sign(forged.payload()))


@pytest.fixture
def pinned_db(tmp_path):
    db = str(tmp_path / "p.db")
    c = heliosdb.connect(db, config="verbose", audit_user="alice")
    c.execute("CREATE TABLE t(a)")
    c.execute("INSERT INTO t VALUES (1)")
    c.commit()
    sk = Ed25519PrivateKey.generate()
    cp = c.audit.checkpoint(sk, tmp_path / "good.cp")
    c.close()
    return db, sk, cp


def test_first_checkpoint_pins_its_signer(pinned_db):
    db, sk, _cp = pinned_db
    with sqlite3.connect(db) as s:
        (v,) = s.execute("SELECT value FROM __audit_meta WHERE tbl = ? AND key = "
                         "'checkpoint_signer'", (TABLE,)).fetchone()
    assert v == "ed25519:" + _raw_pub(sk).hex()


def test_cli_verify_refuses_a_resigned_checkpoint_without_key(pinned_db, tmp_path):
    """Attack 4: the checkpoint re-signed by any key (its file carries that key)."""
    db, _sk, cp = pinned_db
    good = run_cli(["verify", db, "--checkpoint", str(tmp_path / "good.cp")], cwd=tmp_path,
                   env=cli_env(tmp_path))
    assert good.returncode == 0, good.stdout + good.stderr
    forged = tmp_path / "forged.cp"
    _resigned(cp, Ed25519PrivateKey.generate()).save(forged)
    proc = run_cli(["verify", db, "--checkpoint", str(forged)], cwd=tmp_path,
                   env=cli_env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pins" in proc.stderr and "--verify-key" in proc.stderr


def test_cli_verify_without_pin_or_with_hmac_needs_a_key(pinned_db, tmp_path):
    db, _sk, _cp = pinned_db
    with sqlite3.connect(db) as s:
        s.execute("DELETE FROM __audit_meta WHERE key = 'checkpoint_signer'")
    proc = run_cli(["verify", db, "--checkpoint", str(tmp_path / "good.cp")], cwd=tmp_path,
                   env=cli_env(tmp_path))
    assert proc.returncode == 1 and "--verify-key" in proc.stderr, proc.stderr
    db2 = str(tmp_path / "h.db")
    c = heliosdb.connect(db2, config="verbose")
    c.audit.checkpoint(HMAC_KEY, tmp_path / "h.cp")
    c.close()
    proc = run_cli(["verify", db2, "--checkpoint", str(tmp_path / "h.cp")], cwd=tmp_path,
                   env=cli_env(tmp_path))
    assert proc.returncode == 1 and "HMAC" in proc.stderr, proc.stderr


def test_api_verify_without_key_uses_only_the_pinned_signer(pinned_db, tmp_path):
    db, sk, cp = pinned_db
    c = heliosdb.connect(db, config="verbose")
    assert c.audit.verify(checkpoint=cp).ok
    r = c.audit.verify(checkpoint=_resigned(cp, Ed25519PrivateKey.generate()))
    assert not r.ok and r.fault == "bad_signature", r.message
    c.close()
    with sqlite3.connect(db) as s:
        s.execute("DELETE FROM __audit_meta WHERE key = 'checkpoint_signer'")
    raw = apsw.Connection(db)
    with pytest.raises(ProgrammingError, match="pins none"):
        verify_connection(raw, TABLE, checkpoint=cp)
    assert verify_connection(raw, TABLE, checkpoint=cp, public_key=_raw_pub(sk)).ok
    raw.close()


def test_api_verify_hmac_checkpoint_without_key_raises(tmp_path):
    conn = make_log(str(tmp_path / "h.db"), N)
    cp = create_checkpoint(conn, TABLE, HMAC_KEY)
    with pytest.raises(ProgrammingError, match="HMAC"):
        verify_connection(conn, TABLE, checkpoint=cp)
    assert verify_connection(conn, TABLE, checkpoint=cp, hmac_key=HMAC_KEY).ok


# ===========================================================================================
# 6. the neighbourhood: objects HeliosDB did not create
# ===========================================================================================

@pytest.mark.parametrize("table", [None, "x_log"])
@pytest.mark.parametrize("tool", ["apsw", "sqlite3"])
def test_raise_ignore_trigger_on_the_log_is_foreign_schema(tmp_path, table, tool):
    """Attack 6: a BEFORE INSERT trigger that silently drops every event, planted with a
    plain SQLite library on an audited database; the chain itself stays intact."""
    db = str(tmp_path / "f.db")
    audit = {"table_name": table} if table else {}
    cfg = heliosdb.config.load_config({"extends": "verbose", "audit": audit})
    c = heliosdb.connect(db, config=cfg)
    tbl = c.audit.table
    assert tbl == (table or TABLE)
    c.execute("CREATE TABLE t(a)")
    c.commit()
    c.close()
    assert heliosdb.audit.verify(db, table=tbl).ok
    sql = f"CREATE TRIGGER t_drop BEFORE INSERT ON {tbl} BEGIN SELECT RAISE(IGNORE); END"
    if tool == "apsw":
        p = apsw.Connection(db)
        p.execute(sql)
        p.close()
    else:
        with sqlite3.connect(db) as s:
            s.execute(sql)
    r = heliosdb.audit.verify(db, table=tbl)
    expect_fault(r, "foreign_schema")
    assert "t_drop" in r.message
    found = find_foreign_schema(apsw.Connection(db), [tbl])
    assert [(f.type, f.name, f.audit_table) for f in found] == [("trigger", "t_drop", tbl)]


def test_cli_verify_reports_a_foreign_trigger(tmp_path):
    db = str(tmp_path / "cli.db")
    c = heliosdb.connect(db, config="verbose")
    c.close()
    with sqlite3.connect(db) as s:
        s.execute("CREATE TRIGGER t_drop BEFORE INSERT ON __audit_log BEGIN "
                  "SELECT RAISE(IGNORE); END")
    proc = run_cli(["verify", db], cwd=tmp_path, env=cli_env(tmp_path))
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "t_drop" in proc.stdout + proc.stderr


def test_foreign_objects_around_the_log(log):
    log.execute("CREATE TABLE t(a)")
    cases = [
        ("CREATE TRIGGER w AFTER INSERT ON t BEGIN INSERT INTO __audit_log(id) "
         "VALUES (NULL); END", "w"),
        ('CREATE TRIGGER d AFTER DELETE ON t BEGIN DELETE FROM "__AUDIT_LOG"; END', "d"),
        ("CREATE TRIGGER m AFTER UPDATE OF a ON t BEGIN UPDATE OR IGNORE [__audit_meta] "
         "SET value = 0; END", "m"),
        ("CREATE TEMP VIEW __audit_log AS SELECT * FROM main.__audit_log WHERE 0",
         "__audit_log"),
        ("CREATE INDEX i_extra ON __audit_log(query)", "i_extra"),
        ("CREATE TEMP TRIGGER tt BEFORE DELETE ON main.__audit_log BEGIN SELECT "
         "RAISE(IGNORE); END", "tt"),
    ]
    for sql, name in cases:
        log.execute(sql)
        r = verify_connection(log, TABLE)
        expect_fault(r, "foreign_schema")
        assert name in r.message
        kind = sql.split()[1] if sql.split()[1] != "TEMP" else sql.split()[2]
        log.execute(f"DROP {kind} {name}")
        assert verify_connection(log, TABLE).ok
    # a trigger elsewhere that only reads the log, or writes elsewhere, is not foreign;
    # nor is a view that only reads it (a report)
    log.execute("CREATE VIEW report AS SELECT operation, count(*) FROM __audit_log GROUP BY 1")
    log.execute("CREATE TABLE u(a)")
    log.execute("CREATE TRIGGER fine AFTER INSERT ON t BEGIN INSERT INTO u SELECT count(*) "
                "FROM __audit_log; END")
    assert find_foreign_schema(log, [TABLE]) == []


def test_a_look_alike_index_is_foreign(log):
    log.execute("DROP INDEX __audit_log_by_user")
    log.execute('CREATE INDEX "__audit_log_by_user" ON __audit_log("user") WHERE success = 1')
    expect_fault(verify_connection(log, TABLE), "foreign_schema")


@pytest.mark.parametrize("sql", [
    # the partial operation index with another WHERE: it would hide the events it leaves out
    'CREATE INDEX "__audit_log_rare_operation" ON "__audit_log"(operation, id) '
    "WHERE operation <> 'INSERT' AND operation <> 'UPDATE' AND operation <> 'DELETE' AND "
    "operation <> 'SELECT' AND operation <> 'BEGIN' AND operation <> 'COMMIT' AND "
    "operation <> 'SAVEPOINT'",
    # an index of a previous layout's name with other SQL
    'CREATE INDEX "__audit_log_by_operation" ON "__audit_log"(operation)',
    # a name HeliosDB never used
    'CREATE INDEX "__audit_log_by_success" ON "__audit_log"(success, id)',
])
def test_a_planted_index_next_to_the_current_layout_is_foreign(log, sql):
    name = sql.split('"')[1]
    if name == "__audit_log_rare_operation":
        log.execute(f"DROP INDEX {name}")
    log.execute(sql)
    found = find_foreign_schema(log, [TABLE])
    assert [(f.type, f.name) for f in found] == [("index", name)]
    r = verify_connection(log, TABLE)
    expect_fault(r, "foreign_schema")
    assert name in r.message


def test_audit_tables_found_and_clean_files_have_no_findings(tmp_path):
    db = str(tmp_path / "two.db")
    conn = make_log(db, 3)
    store.ensure_schema(conn, "x_log")
    conn.execute("CREATE TABLE copy_of_log AS SELECT * FROM __audit_log WHERE 0")
    assert find_audit_tables(conn) == ["__audit_log", "copy_of_log", "x_log"]
    assert find_foreign_schema(conn) == []
    conn.execute("CREATE TRIGGER on_copy BEFORE INSERT ON copy_of_log BEGIN SELECT "
                 "RAISE(IGNORE); END")
    assert [f.name for f in find_foreign_schema(conn)] == ["on_copy"]
    # a HeliosDB connection opens a clean audited file without findings
    c = heliosdb.connect(str(tmp_path / "clean.db"), config="verbose")
    c.close()
    raw = apsw.Connection(str(tmp_path / "clean.db"))
    assert find_foreign_schema(raw) == []
    assert verify_connection(raw, TABLE).ok


def test_shell_verify_refuses_a_resigned_checkpoint_without_key(pinned_db, tmp_path):
    """Attack 4 through the shell's .verify: the same rule as heliosdb verify."""
    db, _sk, cp = pinned_db
    forged = tmp_path / "forged.cp"
    _resigned(cp, Ed25519PrivateKey.generate()).save(forged)
    good = run_cli([db, f".verify --checkpoint {tmp_path / 'good.cp'}"], cwd=tmp_path,
                   env=cli_env(tmp_path))
    assert good.returncode == 0, good.stdout + good.stderr
    proc = run_cli([db, f".verify --checkpoint {forged}"], cwd=tmp_path, env=cli_env(tmp_path))
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "pins" in proc.stderr and "--verify-key" in proc.stderr
