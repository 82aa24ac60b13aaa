"""Properties of the Merkle proofs over random trees (1 to 10,000 leaves): any tampering
with an event, a leaf, a node or a checkpoint is caught; retention purges keep proofs
working (purged events stay provable from their archives)."""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import heliosdb
import heliosdb.config
from heliosdb.audit import merkle, store
from heliosdb.audit.checkpoint import Checkpoint, _sign, create_checkpoint
from heliosdb.audit.events import EventFields
from heliosdb.audit.query import to_us
from heliosdb.audit.verify import verify_connection
from heliosdb.errors import AuditIntegrityError

from helpers.audit_log import TABLE, make_log, rehash, sample_events, stamp
from test_audit_merkle import ref_mth, ref_verify_consistency, ref_verify_inclusion

KEY = b"p" * 32
def _SET(n: int):
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def _leaves(n: int, seed: int) -> list:
    return [hashlib.sha256(seed.to_bytes(8, "big") + i.to_bytes(4, "big")).digest()
            for i in range(n)]


def _mth_of(leaves):
    def mth(lo, hi):
        return merkle.root(merkle.fold(0, b"", leaves[lo:hi])[1])
    return mth


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8 % 32] ^= 1 << (bit % 8)
    return bytes(b)


@_SET(60)
@given(data=st.data(), n=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_any_tampered_inclusion_proof_fails(data, n, seed):
    d = _leaves(n, seed)
    mth = _mth_of(d)
    root = merkle.root(merkle.fold(0, b"", d)[1])
    i = data.draw(st.integers(0, n - 1), label="leaf index")
    path = merkle.inclusion_path(i, 0, n, mth)
    assert merkle.root_from_inclusion(i, n, d[i], path) == root
    assert ref_verify_inclusion(i, n, d[i], path, root)
    # (The tree size is not a tamper target here: RFC 6962 roots do not bind the size, a
    # checkpoint signs it with the root; changing it is changing the checkpoint, below.)
    kind = data.draw(st.sampled_from(["leaf", "node", "root", "index", "drop", "extra"]),
                     label="tamper")
    bit = data.draw(st.integers(0, 255), label="bit")
    leaf, p, r, idx, size = d[i], list(path), root, i, n
    if kind == "leaf":
        leaf = _flip(leaf, bit)
    elif kind == "node":
        if not p:
            leaf = _flip(leaf, bit)  # a one-leaf tree has no node but its leaf
        else:
            k = data.draw(st.integers(0, len(p) - 1), label="node")
            p[k] = _flip(p[k], bit)
    elif kind == "root":
        r = _flip(r, bit)
    elif kind == "index":
        if n == 1:
            r = _flip(r, bit)
        else:
            idx = data.draw(st.integers(0, n - 1).filter(lambda j: j != i), label="other")
    elif kind == "drop":
        if p:
            p.pop(data.draw(st.integers(0, len(p) - 1)))
        else:
            p.append(leaf)  # nothing to drop: an extra hash
    else:
        p.insert(data.draw(st.integers(0, len(p))), _flip(root, bit))
    assert not ref_verify_inclusion(idx, size, leaf, p, r)
    try:
        got = merkle.root_from_inclusion(idx, size, leaf, p)
    except merkle.MerkleProofError:
        return
    assert got != r


@_SET(60)
@given(data=st.data(), n=st.integers(2, 10_000), seed=st.integers(0, 2**32))
def test_any_tampered_consistency_proof_fails(data, n, seed):
    d = _leaves(n, seed)
    mth = _mth_of(d)
    m = data.draw(st.integers(1, n - 1), label="old size")
    r1, r2 = mth(0, m), mth(0, n)
    proof = merkle.consistency_path(m, n, mth)
    assert merkle.roots_from_consistency(m, n, r1, proof) == (r1, r2)
    assert ref_verify_consistency(m, n, r1, r2, proof)
    kind = data.draw(st.sampled_from(["node", "old_root", "new_root", "old_size", "drop"]))
    bit = data.draw(st.integers(0, 255))
    p, a, b, mm = list(proof), r1, r2, m
    if kind == "node" and p:
        k = data.draw(st.integers(0, len(p) - 1))
        p[k] = _flip(p[k], bit)
    elif kind == "old_root" or (kind == "node" and not p):
        a = _flip(a, bit)
    elif kind == "new_root":
        b = _flip(b, bit)
    elif kind == "old_size":
        mm = data.draw(st.integers(1, n - 1).filter(lambda x: x != m))
    else:
        if p:
            p.pop(data.draw(st.integers(0, len(p) - 1)))
        else:
            a = _flip(a, bit)
    assert not ref_verify_consistency(mm, n, a, b, p)
    try:
        got = merkle.roots_from_consistency(mm, n, a, p)
    except merkle.MerkleProofError:
        return
    assert got != (a, b)


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    conn = make_log(str(d / "a.db"), 10_000)
    cp = create_checkpoint(conn, TABLE, KEY)
    conn.close()
    return d / "a.db", cp


@_SET(12)
@given(data=st.data())
def test_tampering_an_event_of_a_log_is_caught_by_the_proofs(big_log, tmp_path_factory,
                                                             data):
    """A log of up to 10,000 events with a version 2 checkpoint: change any event (and
    re-hash the chain after it, as someone without the key can): that event cannot be
    proven in the signed tree, verify against the checkpoint names the fault, and a proof
    made before is refused once its checkpoint or event is altered."""
    src, cp = big_log
    n = data.draw(st.integers(1, 10_000), label="log size")
    d = tmp_path_factory.mktemp("t")
    shutil.copy(src, d / "a.db")
    from helpers.audit_log import open_db
    conn = open_db(str(d / "a.db"))
    if n < 10_000:  # a shorter log: cut it and checkpoint that
        conn.execute(f"DELETE FROM {TABLE} WHERE id > ?", (n,))
        conn.execute("DELETE FROM __audit_meta WHERE key = 'merkle_tree'")
        merkle._cache.clear()
        cp_n = create_checkpoint(conn, TABLE, KEY)
    else:
        cp_n = cp
    assert cp_n.tree_size == n
    e = data.draw(st.integers(1, n), label="event proven")
    proof = merkle.prove_inclusion(conn, TABLE, e, cp_n)
    assert merkle.check_inclusion(proof, hmac_key=KEY)["ok"]
    k = data.draw(st.integers(1, n), label="event changed")
    col = data.draw(st.sampled_from(["user", "query", "target", "ts_us"]))
    conn.execute(f"UPDATE {TABLE} SET {col} = coalesce({col}, '') || 'x' WHERE id = ?"
                 if col != "ts_us" else f"UPDATE {TABLE} SET ts_us = ts_us - 1 WHERE id = ?",
                 (k,))
    rehash(conn, k)
    # The changed event cannot be proven in the signed tree ...
    with pytest.raises(AuditIntegrityError):
        merkle.prove_inclusion(conn, TABLE, k, cp_n)
    # ... and a proof of another event either cannot be made or proves that event's
    # unchanged content (the prover may use the signed frontier's nodes, not the rows).
    try:
        again = merkle.prove_inclusion(conn, TABLE, e, cp_n)
    except AuditIntegrityError:
        assert True
    else:
        assert e != k and again["leaf_hash"] == proof["leaf_hash"]
        assert merkle.check_inclusion(again, hmac_key=KEY)["ok"]
    r = verify_connection(conn, TABLE, checkpoint=cp_n, hmac_key=KEY)
    assert not r.ok and r.fault in ("modified", "time_went_backwards"), r.message
    # The proof made before: its event or its checkpoint altered -> refused.
    bad = dict(proof, event=dict(proof["event"], user="mallory"))
    with pytest.raises(merkle.MerkleProofError):
        merkle.check_inclusion(bad, hmac_key=KEY)
    forged = _sign(replace(cp_n, root_hash=_flip(cp_n.root_hash, 3)), b"q" * 32)
    with pytest.raises(merkle.MerkleProofError):
        merkle.check_inclusion(dict(proof, checkpoint=forged.to_text()), hmac_key=KEY)
    conn.close()


# --- retention ---------------------------------------------------------------------------

DAY = 86_400_000_000
T0 = to_us("2031-01-01T00:00:00Z")


@pytest.fixture
def purged(tmp_path, monkeypatch):
    from heliosdb.audit import retention
    monkeypatch.setattr(retention, "_clock_us", lambda: T0 + 20_000 * DAY)
    cfg = heliosdb.config.load_config({"extends": "verbose", "audit": {"retention_days": 30}})
    conn = heliosdb.connect(str(tmp_path / "r.db"), config=cfg, audit_user="alice")
    a = conn.audit
    stamp(conn, [EventFields("INSERT", target="t", user="alice", affected_rows=1)
                 for _ in range(9)], T0)
    cp1 = a.checkpoint(KEY)
    stamp(conn, [EventFields("UPDATE", target="t", user="bob", affected_rows=1)
                 for _ in range(6)], T0 + 10 * DAY)
    cp2 = a.checkpoint(KEY)
    stamp(conn, [EventFields("DELETE", target="t", user="bob", affected_rows=1)
                 for _ in range(5)], T0 + 40 * DAY)
    before = {e.id: e for e in a.query().all()}
    res = a.purge(now=T0 + 45 * DAY, archive=tmp_path / "arch")
    assert res.purged > 0 and res.last_id >= cp2.event_id  # both checkpoints purged
    cp3 = a.checkpoint(KEY)
    yield conn, a, cp1, cp2, cp3, res, before, tmp_path / "arch"
    conn.close()


def test_purge_keeps_the_tree_and_the_proofs(purged):
    conn, a, cp1, cp2, cp3, res, before, arch = purged
    archives = sorted(str(p) for p in arch.iterdir())
    # The tree over the remaining log verifies, from the anchor's recorded frontier.
    for kw in ({}, {"checkpoint": cp3}, {"since": cp3}):
        r = a.verify(hmac_key=KEY, **kw) if "since" not in kw else a.verify_since(cp3,
                                                                                hmac_key=KEY)
        assert r.ok, r.message
    assert a.verify(checkpoint=cp2, hmac_key=KEY, archives=archives).ok
    # A remaining event: provable without any archive.
    last = cp3.event_id
    p = a.prove_inclusion(last - 1, cp3, archives=[])
    assert merkle.check_inclusion(p, hmac_key=KEY)["ok"]
    # A purged event: provable from the archive, and the proof says what it was.
    purged_id = res.first_id + 1
    p = a.prove_inclusion(purged_id, cp3, archives=archives)
    assert merkle.check_inclusion(p, hmac_key=KEY)["ok"]
    assert p["event"]["checksum"] == before[purged_id].checksum.hex()
    # ... also against the older checkpoints, and their consistency with the new one.
    for old in (cp1, cp2):
        p = a.prove_inclusion(min(purged_id, old.tree_size), old, archives=archives)
        assert merkle.check_inclusion(p, hmac_key=KEY)["ok"]
        c = a.prove_consistency(old, cp3, archives=archives)
        assert merkle.check_consistency(c, hmac_key=KEY)["ok"]
    # Without the archive, a purged event cannot be proven: an error, not a bad proof.
    with pytest.raises(heliosdb.ProgrammingError):
        a.prove_inclusion(purged_id, cp3, archives=[])
    # An archive event altered: the archive no longer verifies, no proof is made.
    import gzip
    path = archives[0]
    lines = gzip.decompress(open(path, "rb").read()).decode().splitlines()
    lines[2] = lines[2].replace('"bob"', '"eve"').replace('"alice"', '"eve"')
    bad = str(arch / "bad-copy.jsonl.gz")
    with open(bad, "wb") as f:
        f.write(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(AuditIntegrityError):
        a.prove_inclusion(purged_id, cp3, archives=[bad])


def test_a_forged_anchor_frontier_is_caught(purged):
    """The purge recorded the tree at the anchor in its RETENTION_PURGE event (proven by the
    chain); the meta copy is not what verify uses, and the recorded tree must still lead to
    the signed root."""
    conn, a, cp1, cp2, cp3, res, before, arch = purged
    raw = a._db
    size, fr = merkle.unpack_tree(store.get_meta(raw, a.table, merkle.ANCHOR_TREE_META))
    with a._internal():
        raw.execute("UPDATE __audit_meta SET value = ? WHERE tbl = ? AND key = ?",
                    (merkle.pack_tree(size, _flip(fr, 9)), a.table, merkle.ANCHOR_TREE_META))
    r = a.verify(checkpoint=cp3, hmac_key=KEY)
    assert r.ok, r.message  # verify reads the frontier from the proven purge event
    # A prover that used the forged meta copy would produce proofs that fail: it checks
    # its own proof against the signed root before returning it.
    with pytest.raises(AuditIntegrityError):
        a.prove_inclusion(cp3.event_id, cp3, archives=[])


def test_a_log_without_its_anchor_tree_is_rebuilt_from_the_archives(purged):
    """A log purged before trees existed has none (version 1 checkpoints) until
    merkle.rebuild() recomputes it from the archives: the same root as before."""
    conn, a, cp1, cp2, cp3, res, before, arch = purged
    raw = a._db
    with a._internal():
        raw.execute("DELETE FROM __audit_meta WHERE key IN ('merkle_tree', "
                    "'merkle_anchor_tree')")
    merkle._cache.clear()
    assert merkle.tree_at_anchor(raw, a.table) is None
    assert a.checkpoint(KEY).version == 1
    with a._internal():
        size, fr = merkle.rebuild(raw, a.table, archives=sorted(arch.iterdir()))
    assert (size, merkle.root(merkle.fold_stored(raw, a.table, size, fr, size)[1])) == \
        (store.head(raw, a.table).last_id, merkle.root(fr))
    cp5 = a.checkpoint(KEY)
    assert cp5.version == 2
    c = a.prove_consistency(cp3, cp5, archives=[])
    assert merkle.check_consistency(c, hmac_key=KEY)["ok"]
