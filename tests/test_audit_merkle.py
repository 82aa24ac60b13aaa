"""The RFC 6962 Merkle tree over the audit log: frontier, checkpoints v2, proofs.

The reference in this file is written independently of heliosdb/audit/merkle.py, from the
text of the RFCs: ``ref_mth``, ``ref_path`` and ``ref_proof`` transcribe the recursive
definitions of RFC 6962 section 2.1 (MTH, 2.1.1 PATH, 2.1.2 PROOF), and ``ref_verify_*``
the verification algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2. The known-answer
vectors (``CT_LEAVES``/``CT_ROOTS``/``CT_PATH_0_8``) are those published with Certificate
Transparency's reference implementation (google/certificate-transparency,
cpp/merkletree/merkle_tree_test.cc), which other RFC 6962 implementations reuse.
"""
from __future__ import annotations

import hashlib
import json

import pytest

from heliosdb.audit import chain, merkle, store
from heliosdb.audit.checkpoint import Checkpoint, create_checkpoint
from heliosdb.audit.events import encode_event
from heliosdb.audit.verify import verify_connection
from heliosdb.errors import ProgrammingError

from helpers.audit_log import (TABLE, activate, impl, make_log,  # noqa: F401
                                      open_db, sample_events)

HMAC_KEY = b"m" * 32


# --- the independent reference (RFC 6962 2.1 definitions, RFC 9162 2.1 verifiers) --------

def _h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def ref_leaf(d: bytes) -> bytes:
    return _h(b"\x00" + d)


def ref_mth(hashed_leaves: list) -> bytes:
    """MTH(D[n]) with the leaves already hashed (RFC 6962 2.1)."""
    n = len(hashed_leaves)
    if n == 0:
        return _h(b"")
    if n == 1:
        return hashed_leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return _h(b"\x01" + ref_mth(hashed_leaves[:k]) + ref_mth(hashed_leaves[k:]))


def ref_path(m: int, d: list) -> list:
    """PATH(m, D[n]) (RFC 6962 2.1.1)."""
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list) -> list:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) (RFC 6962 2.1.2)."""
    def subproof(m, d, b):
        n = len(d)
        if m == n:
            return [] if b else [ref_mth(d)]
        k = 1
        while k * 2 < n:
            k *= 2
        if m <= k:
            return subproof(m, d[:k], b) + [ref_mth(d[k:])]
        return subproof(m - k, d[k:], False) + [ref_mth(d[:k])]
    return subproof(m, d, True)


def ref_verify_inclusion(leaf_index, tree_size, leaf, path, root) -> bool:
    """RFC 9162 2.1.3.2, step by step."""
    if leaf_index >= tree_size:
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = _h(b"\x01" + p + r)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn //= 2
                    sn //= 2
        else:
            r = _h(b"\x01" + r + p)
        fn //= 2
        sn //= 2
    return sn == 0 and r == root


def ref_verify_consistency(first, second, first_hash, second_hash, path) -> bool:
    """RFC 9162 2.1.4.2, step by step (first > 0)."""
    if first == second:
        return not path and first_hash == second_hash
    path = list(path)
    if first & (first - 1) == 0:
        path = [first_hash] + path
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn //= 2
        sn //= 2
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr = _h(b"\x01" + c + fr)
            sr = _h(b"\x01" + c + sr)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn //= 2
                    sn //= 2
        else:
            sr = _h(b"\x01" + sr + c)
        fn //= 2
        sn //= 2
    return sn == 0 and fr == first_hash and sr == second_hash


CT_LEAVES = [bytes.fromhex(x) for x in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_PATH_0_8 = ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
               "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
               "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]


@pytest.fixture(params=["c", "pure"])
def tree_impl(request):
    restore = activate(request.param)
    yield request.param
    restore()


# --- the reference itself against the published vectors (so it can be trusted) -----------

def test_reference_matches_published_vectors():
    hs = [ref_leaf(x) for x in CT_LEAVES]
    for n in range(0, 9):
        assert ref_mth(hs[:n]).hex() == CT_ROOTS[n]
    assert [h.hex() for h in ref_path(0, hs)] == CT_PATH_0_8
    assert ref_verify_inclusion(0, 8, hs[0], ref_path(0, hs), ref_mth(hs))
    assert not ref_verify_inclusion(0, 8, hs[1], ref_path(0, hs), ref_mth(hs))


# --- the module's tree: same roots, same proofs, C and Python the same bytes -------------

def test_fold_and_root_match_the_vectors(tree_impl):
    hs = [merkle.leaf_hash(x) for x in CT_LEAVES]
    size, fr = 0, b""
    for n in range(1, 9):
        size, fr = merkle.fold(size, fr, [hs[n - 1]])
        assert merkle.root(fr).hex() == CT_ROOTS[n]
        assert len(fr) == 32 * bin(n).count("1")
    assert merkle.root(b"").hex() == CT_ROOTS[0]
    path = merkle.inclusion_path(0, 0, 8, lambda lo, hi: ref_mth(hs[lo:hi]))
    assert [h.hex() for h in path] == CT_PATH_0_8


def test_c_and_pure_fold_give_the_same_bytes():
    if "c" not in chain.available_impls():
        pytest.skip("native chain not built")
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1500)]
    out = {}
    for name in ("c", "pure"):
        restore = activate(name)
        try:
            size, fr, roots = 0, b"", []
            for chunk in (leaves[:1], leaves[1:7], leaves[7:1000], leaves[1000:]):
                size, fr = merkle.fold(size, fr, chunk)
                roots.append(merkle.root(fr))
            out[name] = (size, fr, roots)
        finally:
            restore()
    assert out["c"] == out["pure"]
    assert out["c"][2][-1] == ref_mth(leaves)


def test_fold_refuses_a_frontier_that_does_not_fit(tree_impl):
    with pytest.raises(ValueError):
        merkle.fold(3, b"\x00" * 32, [b"\x01" * 32])


@pytest.mark.parametrize("n", list(range(1, 34)) + [64, 100, 257])
def test_proofs_match_the_reference(n):
    d = [ref_leaf(i.to_bytes(2, "big")) for i in range(n)]

    def mth(lo, hi):
        return ref_mth(d[lo:hi])
    root = ref_mth(d)
    for i in range(n):
        path = merkle.inclusion_path(i, 0, n, mth)
        assert path == ref_path(i, d)
        assert merkle.root_from_inclusion(i, n, d[i], path) == root
        assert ref_verify_inclusion(i, n, d[i], path, root)
    for m in range(1, n + 1):
        proof = merkle.consistency_path(m, n, mth) if m < n else []
        assert proof == (ref_proof(m, d) if m < n else [])
        assert merkle.roots_from_consistency(m, n, ref_mth(d[:m]), proof) == \
            (ref_mth(d[:m]), root)
        assert ref_verify_consistency(m, n, ref_mth(d[:m]), root, proof)


# --- the frontier kept by append ---------------------------------------------------------

def _leaves_of(conn) -> list:
    return [merkle.leaf_hash(encode_event(e.id, e.ts_us, e.affected_rows, e.success,
                                          e.texts()))
            for e in store.read_events(conn, TABLE)]


def test_append_keeps_the_frontier_in_the_same_transaction(tmp_path, tree_impl):
    conn = make_log(str(tmp_path / "a.db"), 0)
    total = 0
    for k in (1, 1, 5, 1, 30, 2):
        store.append(conn, TABLE, sample_events(k, total))
        total += k
        size, fr = merkle.stored_tree(conn, TABLE)
        assert size == total == store.head(conn, TABLE).last_id
        assert merkle.root(fr) == ref_mth(_leaves_of(conn))
    # A rolled-back append leaves the stored tree as it was.
    conn.execute("BEGIN IMMEDIATE")
    store.append(conn, TABLE, sample_events(3, total))
    conn.execute("ROLLBACK")
    assert merkle.stored_tree(conn, TABLE)[0] == total
    store.append(conn, TABLE, sample_events(1, total))
    assert merkle.root(merkle.stored_tree(conn, TABLE)[1]) == ref_mth(_leaves_of(conn))


def test_a_log_from_before_the_tree_gets_it_lazily(tmp_path, tree_impl):
    conn = make_log(str(tmp_path / "a.db"), 40)
    # What a log written by an older heliosdb looks like: no tree record.
    conn.execute("DELETE FROM __audit_meta WHERE key = 'merkle_tree'")
    merkle._cache.clear()
    assert merkle.stored_tree(conn, TABLE) is None
    store.append(conn, TABLE, sample_events(2, 40))
    size, fr = merkle.stored_tree(conn, TABLE)
    assert size == 42 and merkle.root(fr) == ref_mth(_leaves_of(conn))


# --- checkpoints version 2 and proofs from a log -----------------------------------------

def test_checkpoint_v2_signs_the_tree_and_v1_still_verifies(tmp_path, tree_impl):
    conn = make_log(str(tmp_path / "a.db"), 25)
    cp = create_checkpoint(conn, TABLE, HMAC_KEY)
    assert cp.version == 2 and cp.tree_size == 25
    assert cp.root_hash == ref_mth(_leaves_of(conn))
    text = cp.to_text()
    assert "format: heliosdb-audit-checkpoint/2" in text and "root_hash: " in text
    assert Checkpoint.from_text(text) == cp
    assert verify_connection(conn, TABLE, checkpoint=cp, hmac_key=HMAC_KEY).ok
    # A version 1 checkpoint (what older releases wrote) still verifies.
    from dataclasses import replace
    from heliosdb.audit.checkpoint import _sign
    v1 = _sign(replace(cp, tree_size=None, root_hash=None, frontier=None, seq=1), HMAC_KEY)
    assert "checkpoint/1" in v1.to_text() and "root_hash" not in v1.to_text()
    assert verify_connection(conn, TABLE, checkpoint=Checkpoint.from_text(v1.to_text()),
                             hmac_key=HMAC_KEY).ok


def test_prove_inclusion_and_consistency_from_a_log(tmp_path, tree_impl):
    conn = make_log(str(tmp_path / "a.db"), 13)
    old = create_checkpoint(conn, TABLE, HMAC_KEY)
    store.append(conn, TABLE, sample_events(20, 13))
    new = create_checkpoint(conn, TABLE, HMAC_KEY)
    d = _leaves_of(conn)
    for eid in (1, 7, 13, 14, 33):
        p = merkle.prove_inclusion(conn, TABLE, eid, new)
        json.dumps(p)
        assert p["audit_path"] == [h.hex() for h in ref_path(eid - 1, d)]
        assert merkle.check_inclusion(p, hmac_key=HMAC_KEY)["ok"]
        assert ref_verify_inclusion(eid - 1, 33, bytes.fromhex(p["leaf_hash"]),
                                    [bytes.fromhex(h) for h in p["audit_path"]],
                                    ref_mth(d))
    c = merkle.prove_consistency(conn, TABLE, old, new)
    json.dumps(c)
    assert c["proof"] == [h.hex() for h in ref_proof(13, d)]
    assert merkle.check_consistency(c, hmac_key=HMAC_KEY)["ok"]
    with pytest.raises(ProgrammingError):
        merkle.prove_consistency(conn, TABLE, new, old)
    with pytest.raises(ProgrammingError):
        merkle.prove_inclusion(conn, TABLE, 34, new)


# --- verification: incremental, and the tree checked against the signed root ------------

def test_incremental_verify_checks_the_new_events_and_the_tree(tmp_path, impl):
    conn = make_log(str(tmp_path / "a.db"), 30)
    cp = create_checkpoint(conn, TABLE, HMAC_KEY)
    store.append(conn, TABLE, sample_events(12, 30))
    r = verify_connection(conn, TABLE, since=cp, hmac_key=HMAC_KEY)
    assert r.ok and r.events_checked == 12, r.message
    assert "Merkle tree of 42 events consistent" in r.message
    full = verify_connection(conn, TABLE, checkpoint=cp, hmac_key=HMAC_KEY)
    assert full.ok and full.events_checked == 42, full.message
    # The recorded tree altered (one frontier hash flipped): both are a fault.
    size, fr = merkle.stored_tree(conn, TABLE)
    bad = bytes([fr[0] ^ 1]) + fr[1:]
    conn.execute("UPDATE __audit_meta SET value = ? WHERE tbl = ? AND key = 'merkle_tree'",
                 (merkle.pack_tree(size, bad), TABLE))
    for kw in ({"since": cp}, {"checkpoint": cp}):
        r = verify_connection(conn, TABLE, hmac_key=HMAC_KEY, **kw)
        assert not r.ok and r.fault == "modified" and "Merkle tree" in r.message, r.message
    # Without a checkpoint nothing is signed: reported in the message, not a fault.
    r = verify_connection(conn, TABLE)
    assert r.ok and "WARNING" in r.message
    # The record removed while a signed tree exists: a fault.
    conn.execute("DELETE FROM __audit_meta WHERE key = 'merkle_tree'")
    r = verify_connection(conn, TABLE, since=cp, hmac_key=HMAC_KEY)
    assert not r.ok and r.fault == "modified" and "missing" in r.message


def test_a_signed_root_the_events_do_not_reproduce_is_caught(tmp_path, impl):
    """The chain and the record agree but the checkpoint's tree is another: the events up
    to the checkpoint are recomputed (full verify) and compared with the signed root."""
    from dataclasses import replace
    from heliosdb.audit.checkpoint import _sign
    conn = make_log(str(tmp_path / "a.db"), 9)
    cp = create_checkpoint(conn, TABLE, HMAC_KEY)
    store.append(conn, TABLE, sample_events(4, 9))
    other = [hashlib.sha256(bytes([i])).digest() for i in range(9)]
    size, fr = merkle.fold(0, b"", other)
    forged = _sign(replace(cp, root_hash=merkle.root(fr), frontier=fr), HMAC_KEY)
    r = verify_connection(conn, TABLE, checkpoint=forged, hmac_key=HMAC_KEY)
    assert not r.ok and r.fault == "modified" and r.first_bad_id == 9, r.message
    # Incremental: the signed frontier extended by the new events is not the recorded tree.
    r = verify_connection(conn, TABLE, since=forged, hmac_key=HMAC_KEY)
    assert not r.ok and r.fault == "modified", r.message


def test_the_writer_keeps_appending_to_a_broken_log(tmp_path, tree_impl):
    """A tree cannot be built over a broken chain: appends go on without one (verify names
    the fault), and the writer does not rescan the log on every append."""
    conn = make_log(str(tmp_path / "a.db"), 12)
    conn.execute(f"UPDATE {TABLE} SET user = 'mallory' WHERE id = 4")
    conn.execute("DELETE FROM __audit_meta WHERE key = 'merkle_tree'")
    merkle._cache.clear()
    store.append(conn, TABLE, sample_events(2, 12))
    store.append(conn, TABLE, sample_events(1, 14))
    assert merkle.stored_tree(conn, TABLE) is None
    assert create_checkpoint(conn, TABLE, HMAC_KEY).version == 1
    r = verify_connection(conn, TABLE)
    assert not r.ok and r.fault == "modified" and r.first_bad_id == 4
