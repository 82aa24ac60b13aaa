"""An RFC 6962 Merkle tree over the audit log: the frontier kept per append, proofs.

The tree (RFC 6962 section 2.1, restated in RFC 9162 section 2.1) has one leaf per event
of the log, in id order, from event 1 (leaf index ``id - 1``; purged events keep their
leaves, so the tree size is the head's id):

* leaf hash ``SHA-256(0x00 || encoding(event))``, the encoding of
  :func:`heliosdb.audit.events.encode_event` (the bytes the chain hashes after ``prev``);
* node hash ``SHA-256(0x01 || left || right)``; the tree over ``n`` leaves splits at the
  largest power of two below ``n``; the empty tree's root is ``SHA-256("")``.

**The frontier.** A tree of size ``n`` is summed up by the roots of the perfect subtrees
that the binary digits of ``n`` cut it into, largest (leftmost) first: ``popcount(n)``
hashes. Appending a leaf merges equal-sized subtrees like a binary counter, and the root
is the frontier folded from the right. :func:`heliosdb.audit.store.append` extends the
frontier inside the transaction of every append and stores it in ``__audit_meta``
(key :data:`TREE_META`: 8-byte big-endian size followed by the frontier hashes), so a
tree is never rebuilt on open. ``csrc/chain.c`` computes the leaves together with the
checksums (one encoding per event) and folds them (:func:`fold`); the pure-Python
functions here give the same bytes (``heliosdb.audit.chain.__impl__`` chooses).

A log created before the tree existed gets its frontier once, lazily, from its stored
events, at its first append (or checkpoint, or proof) after the upgrade. A log that was
purged before the tree existed has no tree (its purged leaves are gone): it keeps version
1 checkpoints until rebuilt by :func:`rebuild` from its retention archives.

A retention purge records the frontier at the purge point (the new anchor) in
``__audit_meta`` (:data:`ANCHOR_TREE_META`) and in its RETENTION_PURGE event
(``details.tree_frontier``), so the tree over the remaining log needs no archive; the
purged events' leaves are read back from the archives when a proof needs them.

**Proofs** (RFC 6962 2.1.1 audit paths and 2.1.2 consistency proofs, checked with the
algorithms of RFC 9162 2.1.3.2 and 2.1.4.2): :func:`prove_inclusion` and
:func:`prove_consistency` return JSON-serialisable dicts (``docs/EXPORT_FORMAT.md``
describes them); :func:`check_inclusion` and :func:`check_consistency` verify them,
taking every value compared from the signed checkpoint text, and raise
:class:`MerkleProofError` on any failure. Making a proof reads the log once (the prover
keeps no interior nodes); checking one costs ``O(log n)`` hashes.
"""
from __future__ import annotations

import hashlib
import json
import struct
from typing import Any, Callable, Iterable, Optional, Sequence

import apsw

from .. import native
from ..errors import AuditIntegrityError, ProgrammingError, translate
from . import chain
from .events import TEXT_FIELDS, encode_event

__all__ = ["LEAF_PREFIX", "NODE_PREFIX", "EMPTY_ROOT", "TREE_META", "ANCHOR_TREE_META",
           "INCLUSION_FORMAT", "CONSISTENCY_FORMAT", "MerkleProofError", "leaf_hash",
           "node_hash", "fold", "root", "split_frontier", "pack_tree", "unpack_tree",
           "inclusion_path", "consistency_path", "root_from_inclusion",
           "roots_from_consistency", "prove_inclusion", "prove_consistency",
           "check_inclusion", "check_consistency", "check_proof", "stored_tree",
           "tree_at_anchor", "fold_stored", "rebuild"]

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: ``__audit_meta`` key of the tree at the head: 8-byte big-endian size || frontier.
TREE_META = "merkle_tree"
#: ``__audit_meta`` key of the tree at the purge anchor (written by a retention purge).
ANCHOR_TREE_META = "merkle_anchor_tree"
INCLUSION_FORMAT = "heliosdb-merkle-inclusion/1"
CONSISTENCY_FORMAT = "heliosdb-merkle-consistency/1"

_lib = native.lib if native.available() else None
_ffi = native.ffi if native.available() else None
_SIZE = struct.Struct(">q")
_MAX_FRONTIER = 64


class MerkleProofError(AuditIntegrityError):
    """A proof does not verify, or the log cannot reproduce the signed tree."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


# --- hashes and the frontier --------------------------------------------------------------

def leaf_hash(encoding: bytes) -> bytes:
    """RFC 6962 leaf hash of an event's canonical encoding: SHA-256(0x00 || encoding)."""
    return hashlib.sha256(LEAF_PREFIX + encoding).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _popcount(n: int) -> int:
    return bin(n).count("1")


def split_frontier(frontier: bytes) -> list[bytes]:
    return [frontier[i:i + 32] for i in range(0, len(frontier), 32)]


def _check_frontier(size: int, frontier: bytes) -> None:
    if type(size) is not int or size < 0 or len(frontier) % 32 \
            or len(frontier) // 32 != _popcount(size):
        raise ValueError(f"a frontier of {len(frontier)} bytes does not describe a tree of "
                         f"{size} leaves (it needs popcount(size) = "
                         f"{_popcount(size) if isinstance(size, int) and size >= 0 else '?'}"
                         " hashes)")


def _pure_fold(size: int, frontier: bytes, leaves: Iterable[bytes]) -> tuple[int, bytes]:
    # Appending a leaf merges it with the last subtrees while the size's low bits are 1
    # (a binary counter's carry): one node hash per append on average.
    sha = hashlib.sha256
    fr = frontier
    for h in leaves:
        k, end = size, len(fr)
        while k & 1:
            end -= 32
            h = sha(NODE_PREFIX + fr[end:end + 32] + h).digest()
            k >>= 1
        fr = fr[:end] + h
        size += 1
    return size, fr


def fold(size: int, frontier: bytes, leaves: Sequence[bytes]) -> tuple[int, bytes]:
    """Append leaf hashes to the tree ``(size, frontier)``; return the new ``(size,
    frontier)``. C when ``heliosdb.audit.chain.__impl__ == "c"``, else Python (same bytes).
    Raises ValueError when the frontier does not fit the size."""
    _check_frontier(size, frontier)
    return _fold(size, frontier, leaves)


#: Below this many leaves the fold runs in Python even when C is selected: a cffi call
#: (buffers in and out) costs more than the one or two node hashes an append needs
#: (measured: 1.5 us in C against 1.0 us in Python for one leaf). Same bytes either way.
_C_FOLD_MIN = 16


def _fold(size: int, frontier: bytes, leaves: Sequence[bytes]) -> tuple[int, bytes]:
    n = len(leaves)
    if n == 0:
        return size, frontier
    if n >= _C_FOLD_MIN and chain.__impl__ == "c" and _lib is not None \
            and size + n < (1 << 62):
        buf = _ffi.new("unsigned char[]", 32 * _MAX_FRONTIER)
        _ffi.memmove(buf, frontier, len(frontier))
        data = b"".join(leaves)
        if len(data) != 32 * n:
            raise ValueError("leaf hashes must be 32 bytes")
        flen = _lib.heliosdb_merkle_fold(buf, len(frontier) // 32, size, n, data)
        if flen < 0:
            raise ValueError("heliosdb_merkle_fold refused the frontier")
        return size + n, _ffi.buffer(buf, 32 * flen)[:]
    if any(len(h) != 32 for h in leaves):
        raise ValueError("leaf hashes must be 32 bytes")
    return _pure_fold(size, frontier, leaves)


def root(frontier: bytes) -> bytes:
    """The RFC 6962 root (MTH) of the tree a frontier describes."""
    hs = split_frontier(frontier)
    if not hs:
        return EMPTY_ROOT
    r = hs[-1]
    for h in reversed(hs[:-1]):
        r = node_hash(h, r)
    return r


def pack_tree(size: int, frontier: bytes) -> bytes:
    return _SIZE.pack(size) + frontier


def unpack_tree(blob: Any) -> tuple[int, bytes]:
    """(size, frontier) of a stored tree record; ValueError when malformed."""
    if not isinstance(blob, (bytes, bytearray, memoryview)) or len(blob) < 8:
        raise ValueError("not a tree record")
    blob = bytes(blob)
    (size,) = _SIZE.unpack(blob[:8])
    _check_frontier(size, blob[8:])
    return size, blob[8:]


def _subtrees(size: int) -> list[tuple[int, int]]:
    """Leaf ranges [lo, hi) of the perfect subtrees a frontier of ``size`` holds."""
    out, lo = [], 0
    for bit in range(size.bit_length() - 1, -1, -1):
        if size >> bit & 1:
            out.append((lo, lo + (1 << bit)))
            lo += 1 << bit
    return out


# --- the tree kept by the writer ------------------------------------------------------------

#: (head id, head checksum) -> frontier. The checksum chain commits to the whole history,
#: and the tree is a function of that history, so this cache cannot be stale; it spares
#: the writer a meta read per append.
_cache: dict[tuple[int, bytes], bytes] = {}


def _meta(conn: apsw.Connection, table: str, key: str) -> Any:
    from .store import get_meta
    return get_meta(conn, table, key)


def _set_meta(conn: apsw.Connection, table: str, key: str, value: Any) -> None:
    conn.execute("INSERT OR REPLACE INTO __audit_meta(tbl, key, value) VALUES (?, ?, ?)",
                 (table, key, value))


def stored_tree(conn: apsw.Connection, table: str) -> Optional[tuple[int, bytes]]:
    """The tree recorded in ``__audit_meta`` (size, frontier), or None (none, or
    malformed). Untrusted: the verifier recomputes it from the events."""
    try:
        return unpack_tree(_meta(conn, table, TREE_META))
    except ValueError:
        return None


def tree_at_anchor(conn: apsw.Connection, table: str) -> Optional[tuple[int, bytes]]:
    """The tree at the purge anchor: empty for a log never purged, else the frontier the
    purge recorded (None when the log was purged before trees existed)."""
    from .store import anchor
    a = anchor(conn, table)
    if a.id == 0:
        return 0, b""
    try:
        size, fr = unpack_tree(_meta(conn, table, ANCHOR_TREE_META))
    except ValueError:
        return None
    return (size, fr) if size == a.id else None


def _checksum_of(conn: apsw.Connection, table: str, id_: int) -> Optional[bytes]:
    from .store import anchor, quoted
    a = anchor(conn, table)
    if id_ == a.id:
        return a.checksum
    for (ck,) in conn.execute(f"SELECT checksum FROM {quoted(table)} WHERE id = ?", (id_,)):
        return bytes(ck) if isinstance(ck, (bytes, bytearray)) else None
    return None


def fold_stored(conn: apsw.Connection, table: str, size: int, frontier: bytes,
                last_id: int) -> tuple[int, bytes]:
    """Extend the tree ``(size, frontier)`` (``size`` = the id the tree ends at) with the
    leaves of the stored events ``size + 1 .. last_id``, checking as it goes that they
    form an intact chain from event ``size``; raises AuditIntegrityError where they do
    not (run verify() to name the fault). Uses the C aggregate inside SQLite when it is
    available, else Python."""
    from .store import quoted
    _check_frontier(size, frontier)
    if last_id <= size:
        if last_id < size:
            raise ProgrammingError(f"cannot fold the tree back from {size} to {last_id}")
        return size, frontier
    link = _checksum_of(conn, table, size)
    if link is None:
        raise AuditIntegrityError(f"event {size} is not in the log (or was purged): the "
                                  "tree cannot be extended from it")
    if chain.register_sql_check(conn):
        texts = ", ".join(f'"{c}"' for c in TEXT_FIELDS)
        sql = (f"SELECT heliosdb_chain_check(?, ?, ?, ?, NULL, id, ts_us, affected_rows, "
               f"success, {texts}, prev_hash, checksum) FROM {quoted(table)} "
               "WHERE id > ? AND id <= ?")
        ((blob,),) = conn.execute(sql, (frontier, size, link, size + 1, size, last_id))
        n_good, failed, bad_id, _ts, _link = chain.decode_check_result(blob)
        tree = chain.decode_check_tree(blob)
        if not failed and tree is not None and n_good == last_id - size:
            return tree
        # The fast path only points: the row-by-row check below decides (and names it).
    return _fold_stored_py(conn, table, size, frontier, last_id, link)


def _fold_stored_py(conn: apsw.Connection, table: str, size: int, frontier: bytes,
                    last_id: int, link: bytes) -> tuple[int, bytes]:
    for leaves in _stored_leaves_py(conn, table, size, last_id, link):
        size, frontier = fold(size, frontier, leaves)
    return size, frontier


def _stored_leaves_py(conn: apsw.Connection, table: str, after: int, last_id: int,
                      link: bytes) -> Iterable[list]:
    """Leaf hashes of the stored events after..last_id, in batches, checking that they form
    an intact chain from ``link`` (the checksum of event ``after``); raises
    AuditIntegrityError where they do not."""
    from .store import read_events
    sha = hashlib.sha256
    leaves: list[bytes] = []
    expect = after + 1
    events = read_events(conn, table, first_id=after + 1, last_id=last_id)
    while True:
        try:
            ev = next(events)
        except StopIteration:
            break
        except UnicodeDecodeError:
            ev = None  # a stored text that is not UTF-8: no event encodes to it
        try:
            enc = encode_event(ev.id, ev.ts_us, ev.affected_rows, ev.success, ev.texts())
        except (TypeError, ValueError, OverflowError, AttributeError):
            enc = None
        if enc is None or ev.id != expect or ev.prev_hash != link \
                or sha(bytes(ev.prev_hash) + enc).digest() != ev.checksum:
            raise AuditIntegrityError(f"the audit log is not an intact chain at event "
                                      f"{expect}: run verify() to name the fault")
        leaves.append(sha(LEAF_PREFIX + enc).digest())
        link = ev.checksum
        expect += 1
        if len(leaves) >= 65536:
            yield leaves
            leaves = []
    if expect != last_id + 1:
        raise AuditIntegrityError(f"event {expect} is missing from the audit log: run "
                                  "verify()")
    yield leaves


def current_tree(conn: apsw.Connection, table: str, last_id: int, last_ck: bytes,
                 *, store: bool = True) -> Optional[tuple[int, bytes]]:
    """The tree at the head (``last_id``, ``last_ck``), inside the caller's transaction:
    from the cache, else the stored record when it has the head's size, else built once
    from the tree at the anchor and the stored events (and stored, when ``store``). None
    when the log has no tree (purged before trees existed)."""
    fr = _cache.get((last_id, bytes(last_ck)))
    if fr is not None:
        return last_id, fr
    st = stored_tree(conn, table)
    if st is not None and st[0] == last_id:
        _remember(last_id, last_ck, st[1])
        return st
    start = tree_at_anchor(conn, table)
    if start is None:
        return None
    where = (_db_name(conn), table)
    if where in _unbuildable:
        return None
    try:
        tree = fold_stored(conn, table, start[0], start[1], last_id)
    except AuditIntegrityError:
        # A broken chain (verify() names the fault): the writer keeps appending, without
        # a tree, and does not retry the scan on every append of this process.
        if len(_unbuildable) > 256:
            _unbuildable.clear()
        _unbuildable.add(where)
        return None
    if store:
        _set_meta(conn, table, TREE_META, pack_tree(*tree))
    _remember(last_id, last_ck, tree[1])
    return tree


#: (database file, table) whose tree could not be built in this process (a broken chain).
_unbuildable: set = set()


def _db_name(conn: apsw.Connection) -> str:
    try:
        return conn.db_filename("main") or f"memory:{id(conn)}"
    except Exception:  # noqa: BLE001
        return f"conn:{id(conn)}"


def _remember(last_id: int, last_ck: bytes, frontier: bytes) -> None:
    if len(_cache) > 256:
        _cache.clear()
    _cache[(last_id, bytes(last_ck))] = frontier


def after_append(conn: apsw.Connection, table: str, last_id: int, last_ck: bytes,
                 leaves: Sequence[bytes], new_id: int, new_ck: bytes) -> None:
    """Called by :func:`heliosdb.audit.store.append` inside the append's transaction, after
    the rows are inserted: extend the frontier with the new leaves and store it."""
    fr = _cache.get((last_id, last_ck))
    if fr is not None:
        size, fr = _fold(last_id, fr, leaves)  # our own frontier: no need to re-check it
    else:
        tree = current_tree(conn, table, last_id, last_ck, store=False)
        if tree is None:
            return  # a log purged before trees existed: no tree to extend
        size, fr = fold(tree[0], tree[1], leaves)
    assert size == new_id, (size, new_id)
    _set_meta(conn, table, TREE_META, pack_tree(size, fr))
    _remember(new_id, new_ck, fr)


def rebuild(conn: apsw.Connection, table: str, archives: Optional[Iterable[Any]] = None
            ) -> tuple[int, bytes]:
    """Recompute the tree from the archives (for purged events) and the stored events, and
    store it (with the frontier at the anchor). For a log purged before trees existed."""
    from .store import anchor, read_head
    a = anchor(conn, table)
    src = _LeafSource(conn, table, a.id, archives)
    size, fr = 0, b""
    if a.id:
        size, fr = fold(0, b"", src.archive_leaves(0, a.id))
        _set_meta(conn, table, ANCHOR_TREE_META, pack_tree(size, fr))
    last_id, last_ck, _ = read_head(conn, table)
    tree = fold_stored(conn, table, size, fr, last_id)
    _set_meta(conn, table, TREE_META, pack_tree(*tree))
    _remember(last_id, last_ck, tree[1])
    return tree


# --- RFC 6962 proofs over a leaf oracle -----------------------------------------------------

def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_path(index: int, lo: int, hi: int, mth: Callable[[int, int], bytes]
                   ) -> list[bytes]:
    """RFC 6962 2.1.1 PATH(m, D[lo:hi]) for leaf ``index`` (absolute), bottom-up."""
    n = hi - lo
    if n <= 1:
        return []
    k = _k(n)
    if index - lo < k:
        return inclusion_path(index, lo, lo + k, mth) + [mth(lo + k, hi)]
    return inclusion_path(index, lo + k, hi, mth) + [mth(lo, lo + k)]


def consistency_path(m: int, n: int, mth: Callable[[int, int], bytes]) -> list[bytes]:
    """RFC 6962 2.1.2 PROOF(m, D[0:n])."""
    if not 0 < m <= n:
        raise ProgrammingError("a consistency proof needs 0 < first size <= second size")

    def sub(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if b else [mth(lo, hi)]
        k = _k(n)
        if m <= k:
            return sub(m, lo, lo + k, b) + [mth(lo + k, hi)]
        return sub(m - k, lo + k, hi, False) + [mth(lo, lo + k)]

    return sub(m, 0, n, True)


def _climb_right_edge(fn: int, sn: int) -> tuple[int, int]:
    """Shift the (node, last node) indexes up to the first level where the node is a right
    child or the root: the levels where it is the right edge's lone left child have no
    sibling and so no path entry (RFC 9162 2.1.3.2 and 2.1.4.2 take this same step)."""
    while True:
        fn >>= 1
        sn >>= 1
        if fn & 1 or fn == 0:
            return fn, sn


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2: the root an inclusion path leads to; raises MerkleProofError when
    the path has the wrong length for (index, size)."""
    if not 0 <= index < size:
        raise MerkleProofError(f"leaf index {index} is outside a tree of {size} leaves")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise MerkleProofError("the inclusion path is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                fn, sn = _climb_right_edge(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleProofError("the inclusion path is too short")
    return r


def roots_from_consistency(m: int, n: int, first_root: bytes, path: Sequence[bytes]
                           ) -> tuple[bytes, bytes]:
    """RFC 9162 2.1.4.2: the (first, second) roots a consistency proof leads to; raises
    MerkleProofError when it is malformed."""
    if not 0 < m <= n:
        raise MerkleProofError(f"no consistency proof between sizes {m} and {n}")
    if m == n:
        if path:
            raise MerkleProofError("a proof between equal sizes must be empty")
        return first_root, first_root
    path = list(path)
    if m & (m - 1) == 0:  # m is a power of two: the old root is a node of the new tree
        path = [first_root] + path
    if not path:
        raise MerkleProofError("the consistency proof is empty")
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise MerkleProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                fn, sn = _climb_right_edge(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleProofError("the consistency proof is too short")
    return fr, sr


class _LeafSource:
    """MTH of leaf ranges of one log: stored events (hashed by the C aggregate, or
    Python), purged events from the retention archives, and known perfect subtrees (the
    frontiers of the anchor and of the checkpoints involved)."""

    def __init__(self, conn: apsw.Connection, table: str, anchor_id: int,
                 archives: Optional[Iterable[Any]], known: Iterable[tuple[int, bytes]] = ()
                 ) -> None:
        self.conn, self.table, self.anchor_id = conn, table, anchor_id
        self.archives = None if archives is None else [str(a) for a in archives]
        self._arch: Optional[list[bytes]] = None
        self.known: dict[tuple[int, int], bytes] = {}
        for size, fr in known:
            for rng, h in zip(_subtrees(size), split_frontier(fr)):
                self.known[rng] = h

    def archive_leaves(self, lo: int, hi: int) -> list[bytes]:
        if self._arch is None:
            self._arch = self._load_archives()
        return self._arch[lo:hi]

    def _load_archives(self) -> list[bytes]:
        from .events import GENESIS
        from .export import read_export, verify_export
        from .store import anchor
        from .verify import archive_candidates, purge_records
        from .store import get_meta

        a = anchor(self.conn, self.table)
        recs = purge_records(self.conn, self.table, a.id)
        paths = archive_candidates(self.conn, self.table, self.archives,
                                    [d.get("archive") for d in recs])
        db_id = get_meta(self.conn, self.table, "database_id")
        found = []
        for p in paths:
            try:
                header, _fmt, records = read_export(p)
                if hasattr(records, "close"):
                    records.close()
                if header.get("table") == self.table and header.get("database_id") == db_id:
                    found.append((int(header["first_id"]), int(header["last_id"]), p))
            except Exception:  # noqa: BLE001 - not an archive of this log
                continue
        leaves: list[bytes] = []
        pos, link = 0, GENESIS.hex()
        while pos < a.id:
            step = [f for f in found if f[0] == pos + 1 and f[1] > pos]
            if not step:
                raise ProgrammingError(
                    f"events {pos + 1}..{a.id} were purged and no retention archive of this "
                    f"log starting at event {pos + 1} was found: pass archives=[...]")
            first, last, p = max(step, key=lambda f: f[1])
            rep = verify_export(p)
            if not rep.ok or rep.prev_checksum != link:
                raise AuditIntegrityError(f"archive {p} does not verify or does not continue "
                                          f"the archive before it: {rep.message}")
            _h, _f, records = read_export(p)
            try:
                for _n, rec in records:
                    enc = encode_event(rec["id"], rec["ts_us"], rec.get("affected_rows"),
                                       rec["success"], tuple(rec.get(c) for c in TEXT_FIELDS))
                    leaves.append(leaf_hash(enc))
            finally:
                if hasattr(records, "close"):
                    records.close()
            pos, link = last, rep.last_checksum
        if pos != a.id or link != a.checksum.hex():
            raise AuditIntegrityError(f"the archives end at event {pos}, not at the purge "
                                      f"anchor (event {a.id} and its checksum)")
        return leaves

    def mth(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]), leaf indices (event ids lo+1..hi)."""
        if hi <= lo:
            return EMPTY_ROOT
        h = self.known.get((lo, hi))
        if h is not None:
            return h
        if lo >= self.anchor_id:
            return root(fold_stored_range(self.conn, self.table, lo, hi))
        if hi <= self.anchor_id:
            return root(fold(0, b"", self.archive_leaves(lo, hi))[1])
        k = _k(hi - lo)
        return node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))


def fold_stored_range(conn: apsw.Connection, table: str, lo: int, hi: int) -> bytes:
    """Frontier of a tree over the stored events lo+1..hi alone (for MTH(D[lo:hi]))."""
    # fold_stored extends a tree that ends at `size`; a standalone tree over a range is
    # the same walk with an empty frontier, linked to event lo's checksum.
    from .store import quoted
    link = _checksum_of(conn, table, lo)
    if link is None:
        raise AuditIntegrityError(f"event {lo} is missing from the audit log")
    if chain.register_sql_check(conn):
        texts = ", ".join(f'"{c}"' for c in TEXT_FIELDS)
        sql = (f"SELECT heliosdb_chain_check(x'', 0, ?, ?, NULL, id, ts_us, affected_rows, "
               f"success, {texts}, prev_hash, checksum) FROM {quoted(table)} "
               "WHERE id > ? AND id <= ?")
        ((blob,),) = conn.execute(sql, (link, lo + 1, lo, hi))
        n_good, failed, _b, _t, _l = chain.decode_check_result(blob)
        tree = chain.decode_check_tree(blob)
        if not failed and tree is not None and n_good == hi - lo:
            return tree[1]
    # Python decides (the same checks; ids lo+1..hi, a tree that starts empty): the walk
    # is _fold_stored_py's, with the leaves folded into a tree of their own.
    return _fold_range_py(conn, table, lo, hi, link)


def _fold_range_py(conn: apsw.Connection, table: str, lo: int, hi: int, link: bytes) -> bytes:
    size, fr = 0, b""
    for leaves in _stored_leaves_py(conn, table, lo, hi, link):
        size, fr = fold(size, fr, leaves)
    return fr


# --- making proofs --------------------------------------------------------------------------

def _as_checkpoint(cp: Any) -> Any:
    from .checkpoint import Checkpoint
    if isinstance(cp, Checkpoint):
        return cp
    if isinstance(cp, dict) and "text" in cp:
        return Checkpoint.from_text(cp["text"])
    if isinstance(cp, str) and "\n" in cp:
        return Checkpoint.from_text(cp)
    return Checkpoint.load(cp)


def _need_tree(cp: Any, what: str) -> None:
    if cp.tree_size is None:
        raise ProgrammingError(f"{what} is a version 1 checkpoint: it signs no Merkle tree. "
                               "Take a new checkpoint (version 2) to prove against")
    cp.check_tree()


def _read(conn: apsw.Connection, fn: Callable[[], Any]) -> Any:
    try:
        if conn.in_transaction:
            return fn()
        conn.execute("BEGIN")
        try:
            return fn()
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")
    except apsw.Error as exc:
        raise translate(exc) from None


def _event_record(conn: apsw.Connection, table: str, event_id: int,
                  src: _LeafSource) -> dict:
    from .export import event_record, read_export
    from .store import read_events
    for ev in read_events(conn, table, first_id=event_id, last_id=event_id):
        return event_record(ev)
    # purged: from the archive that holds it
    src.archive_leaves(0, 0)  # verifies the archives
    from .verify import archive_candidates, purge_records
    from .store import anchor
    a = anchor(conn, table)
    paths = archive_candidates(conn, table, src.archives,
                                [d.get("archive") for d in purge_records(conn, table, a.id)])
    for p in paths:
        try:
            header, _f, records = read_export(p)
        except Exception:  # noqa: BLE001
            continue
        try:
            if not int(header["first_id"]) <= event_id <= int(header["last_id"]):
                continue
            for _n, rec in records:
                if rec.get("id") == event_id:
                    return {k: v for k, v in rec.items() if k != "record"}
        finally:
            if hasattr(records, "close"):
                records.close()
    raise ProgrammingError(f"event {event_id} is not in the log nor in any archive found")


def _event_leaf(rec: dict) -> bytes:
    return leaf_hash(encode_event(rec["id"], rec["ts_us"], rec.get("affected_rows"),
                                  rec["success"], tuple(rec.get(c) for c in TEXT_FIELDS)))


def prove_inclusion(conn: apsw.Connection, table: str, event_id: int, checkpoint: Any, *,
                    archives: Optional[Iterable[Any]] = None) -> dict:
    """Inclusion proof of event ``event_id`` in the tree signed by ``checkpoint`` (a
    version 2 :class:`Checkpoint`, its text or its path), as a JSON-serialisable dict
    (format in ``docs/EXPORT_FORMAT.md``). Purged events are read from the retention
    archives (``archives=``, default: next to the database). The proof is checked
    against the signed root before it is returned: raises MerkleProofError when the log
    does not reproduce that root (it was rewritten), ProgrammingError for misuse."""
    cp = _as_checkpoint(checkpoint)
    _need_tree(cp, "the checkpoint")
    if cp.table != table:
        raise ProgrammingError(f"the checkpoint is for table {cp.table!r}, not {table!r}")
    if type(event_id) is not int or not 1 <= event_id <= cp.tree_size:
        raise ProgrammingError(f"event {event_id!r} is not in the tree of checkpoint "
                               f"#{cp.seq} (events 1..{cp.tree_size})")

    def work() -> dict:
        from .store import anchor, get_meta
        if get_meta(conn, table, "database_id") != cp.database_id:
            raise ProgrammingError(f"checkpoint #{cp.seq} is of database {cp.database_id}, "
                                   "not of this one")
        a = anchor(conn, table)
        known = [(cp.tree_size, cp.frontier_bytes())]
        at = tree_at_anchor(conn, table)
        if at is not None:
            known.append(at)
        src = _LeafSource(conn, table, a.id, archives, known)
        rec = _event_record(conn, table, event_id, src)
        leaf = _event_leaf(rec)
        path = inclusion_path(event_id - 1, 0, cp.tree_size, src.mth)
        if root_from_inclusion(event_id - 1, cp.tree_size, leaf, path) != cp.root_hash:
            raise MerkleProofError(f"the log does not reproduce the Merkle root signed in "
                                   f"checkpoint #{cp.seq}: event {event_id} or the events "
                                   "around it were changed (run verify() with the checkpoint)")
        return {"format": INCLUSION_FORMAT, "table": table, "database_id": cp.database_id,
                "event_id": event_id, "leaf_index": event_id - 1,
                "tree_size": cp.tree_size, "leaf_hash": leaf.hex(),
                "audit_path": [h.hex() for h in path], "root_hash": cp.root_hash.hex(),
                "event": rec, "checkpoint": cp.to_text()}

    return _read(conn, work)


def prove_consistency(conn: apsw.Connection, table: str, old_checkpoint: Any,
                      new_checkpoint: Any, *, archives: Optional[Iterable[Any]] = None
                      ) -> dict:
    """Consistency proof (RFC 6962 2.1.2) that the tree signed by ``new_checkpoint``
    extends the one signed by ``old_checkpoint`` (both version 2, same log), as a
    JSON-serialisable dict. Checked before it is returned (MerkleProofError when the log
    does not reproduce both signed roots)."""
    old, new = _as_checkpoint(old_checkpoint), _as_checkpoint(new_checkpoint)
    _need_tree(old, "the old checkpoint")
    _need_tree(new, "the new checkpoint")
    for c in (old, new):
        if c.table != table:
            raise ProgrammingError(f"checkpoint #{c.seq} is for table {c.table!r}, not "
                                   f"{table!r}")
    if old.database_id != new.database_id:
        raise ProgrammingError("the checkpoints are of two different databases")
    m, n = old.tree_size, new.tree_size
    if not 0 < m <= n:
        raise ProgrammingError(f"a consistency proof goes from a smaller non-empty tree to a "
                               f"larger one: sizes {m} and {n}")

    def work() -> dict:
        from .store import anchor, get_meta
        if get_meta(conn, table, "database_id") != new.database_id:
            raise ProgrammingError("the checkpoints are not of this database")
        a = anchor(conn, table)
        known = [(n, new.frontier_bytes()), (m, old.frontier_bytes())]
        at = tree_at_anchor(conn, table)
        if at is not None:
            known.append(at)
        src = _LeafSource(conn, table, a.id, archives, known)
        path = consistency_path(m, n, src.mth) if m < n else []
        r1, r2 = roots_from_consistency(m, n, old.root_hash, path)
        if r1 != old.root_hash or r2 != new.root_hash:
            raise MerkleProofError(f"the log does not reproduce the roots signed in "
                                   f"checkpoints #{old.seq} and #{new.seq}: it was rewritten "
                                   "between them, or they are not of one history")
        return {"format": CONSISTENCY_FORMAT, "table": table,
                "database_id": new.database_id, "first_size": m, "second_size": n,
                "first_root": old.root_hash.hex(), "second_root": new.root_hash.hex(),
                "proof": [h.hex() for h in path], "old_checkpoint": old.to_text(),
                "new_checkpoint": new.to_text()}

    return _read(conn, work)


# --- checking proofs ------------------------------------------------------------------------

def _hexes(v: Any, what: str) -> list[bytes]:
    if not isinstance(v, list):
        raise MerkleProofError(f"{what} must be a list of hex hashes")
    out = []
    for h in v:
        try:
            b = bytes.fromhex(h)
        except (TypeError, ValueError):
            raise MerkleProofError(f"{what} holds {h!r}, not a hex hash") from None
        if len(b) != 32:
            raise MerkleProofError(f"{what} holds a hash of {len(b)} bytes")
        out.append(b)
    return out


def _signed(text: Any, public_key: Any, hmac_key: Optional[bytes], what: str) -> Any:
    from .checkpoint import Checkpoint
    try:
        cp = Checkpoint.from_text(text)
    except (ProgrammingError, TypeError, AttributeError) as exc:
        raise MerkleProofError(f"{what} cannot be read: {exc}") from None
    if cp.tree_size is None:
        raise MerkleProofError(f"{what} is a version 1 checkpoint: it signs no tree")
    if public_key is not None or hmac_key is not None:
        problem = cp.verify_signature(public_key=public_key, hmac_key=hmac_key)
        if problem is not None:
            raise MerkleProofError(f"{what} (#{cp.seq}): {problem}")
    try:
        cp.check_tree()
    except ProgrammingError as exc:
        raise MerkleProofError(f"{what} (#{cp.seq}) signs an inconsistent tree: {exc}") from None
    return cp


def check_inclusion(proof: Any, *, public_key: Any = None,
                    hmac_key: Optional[bytes] = None) -> dict:
    """Verify an inclusion proof (a dict, its JSON text or path). Every value compared
    comes from the signed checkpoint text in the proof (the proof's own ``tree_size`` and
    ``root_hash`` must merely agree with it). The signature is checked when a key is
    given; without one only the hashing is (the result says ``signature_checked``).
    Raises MerkleProofError on any failure; returns a summary."""
    p = _load(proof)
    if p.get("format") != INCLUSION_FORMAT:
        raise MerkleProofError(f"not a {INCLUSION_FORMAT} proof")
    cp = _signed(p.get("checkpoint"), public_key, hmac_key, "the proof's checkpoint")
    rec = p.get("event")
    if not isinstance(rec, dict):
        raise MerkleProofError("the proof carries no event")
    try:
        leaf = _event_leaf(rec)
        eid = rec["id"]
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
        raise MerkleProofError(f"the proof's event cannot be encoded: {exc}") from None
    if type(eid) is not int:
        raise MerkleProofError("the event id is not an integer")
    for k, v in (("tree_size", cp.tree_size), ("root_hash", cp.root_hash.hex()),
                 ("leaf_index", eid - 1), ("event_id", eid), ("leaf_hash", leaf.hex()),
                 ("table", cp.table), ("database_id", cp.database_id)):
        if k in p and p[k] != v:
            raise MerkleProofError(f"the proof's {k} ({p[k]!r}) disagrees with the event and "
                                   f"the signed checkpoint ({v!r})")
    path = _hexes(p.get("audit_path"), "audit_path")
    r = root_from_inclusion(eid - 1, cp.tree_size, leaf, path)
    if r != cp.root_hash:
        raise MerkleProofError(f"event {eid} is not in the tree signed by checkpoint "
                               f"#{cp.seq}: the path leads to {r.hex()[:16]}..., not to the "
                               "signed root")
    return {"ok": True, "event_id": eid, "tree_size": cp.tree_size, "seq": cp.seq,
            "signature_checked": public_key is not None or hmac_key is not None}


def check_consistency(proof: Any, *, public_key: Any = None,
                      hmac_key: Optional[bytes] = None) -> dict:
    """Verify a consistency proof (dict, JSON text or path); raises MerkleProofError."""
    p = _load(proof)
    if p.get("format") != CONSISTENCY_FORMAT:
        raise MerkleProofError(f"not a {CONSISTENCY_FORMAT} proof")
    old = _signed(p.get("old_checkpoint"), public_key, hmac_key, "the old checkpoint")
    new = _signed(p.get("new_checkpoint"), public_key, hmac_key, "the new checkpoint")
    if (old.table, old.database_id) != (new.table, new.database_id):
        raise MerkleProofError("the two checkpoints are of different logs")
    for k, v in (("first_size", old.tree_size), ("second_size", new.tree_size),
                 ("first_root", old.root_hash.hex()), ("second_root", new.root_hash.hex())):
        if k in p and p[k] != v:
            raise MerkleProofError(f"the proof's {k} disagrees with the signed checkpoints")
    m, n = old.tree_size, new.tree_size
    r1, r2 = roots_from_consistency(m, n, old.root_hash, _hexes(p.get("proof"), "proof"))
    if r1 != old.root_hash or r2 != new.root_hash:
        raise MerkleProofError(f"the tree of checkpoint #{new.seq} ({n} events) does not "
                               f"extend the tree of checkpoint #{old.seq} ({m} events)")
    return {"ok": True, "first_size": m, "second_size": n, "seqs": [old.seq, new.seq],
            "signature_checked": public_key is not None or hmac_key is not None}


def check_proof(proof: Any, **keys: Any) -> dict:
    """Verify an inclusion or a consistency proof, whichever ``proof`` is."""
    p = _load(proof)
    if p.get("format") == CONSISTENCY_FORMAT:
        return check_consistency(p, **keys)
    return check_inclusion(p, **keys)


def _load(proof: Any) -> dict:
    if isinstance(proof, dict):
        return proof
    if isinstance(proof, str) and proof.lstrip().startswith("{"):
        text = proof
    else:
        try:
            with open(proof, encoding="utf-8") as f:
                text = f.read()
        except (OSError, TypeError) as exc:
            raise MerkleProofError(f"cannot read the proof: {exc}") from None
    try:
        p = json.loads(text)
    except ValueError as exc:
        raise MerkleProofError(f"the proof is not JSON: {exc}") from None
    if not isinstance(p, dict):
        raise MerkleProofError("the proof is not a JSON object")
    return p
