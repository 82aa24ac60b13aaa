"""The hash chain: ``checksum = SHA-256(prev_checksum || encoding(event))``, in C or Python.

Two implementations give the same bytes:

* ``"c"``: ``csrc/chain.c`` through the cffi module :mod:`heliosdb._native`; one call per
  batch encodes and hashes every event of the batch (writer) or re-checks every row of a
  batch (verifier).
* ``"pure"``: :func:`heliosdb.audit.events.encode_event` and :mod:`hashlib`.

``__impl__`` says which one runs. It is chosen once, at import, by ``HELIOSDB_IMPL=c|pure``
(``HELIOSDB_PURE=1`` is an alias of ``pure``; unset: ``c`` when the native module loads);
see :mod:`heliosdb.native`. There is no switch at run time. The encoding itself is
specified in :mod:`heliosdb.audit.events` and ``docs/AUDIT_FORMAT.md``.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from itertools import repeat
from operator import is_
from typing import Optional, Sequence

import apsw

from .. import native
from .events import GENESIS, NTEXT, encode_event, encode_ints

__all__ = ["__impl__", "GENESIS", "checksum", "event_checksum", "chain_checksums",
           "verify_rows", "MalformedBatch", "available_impls", "insert_events",
           "INSERT_IN_C_FROM"]

_lib = native.lib if native.available() else None
_ffi = native.ffi if native.available() else None
#: ``"c"`` when the native writer is in use, ``"pure"`` otherwise (see :data:`native.IMPL`).
__impl__ = native.IMPL

_MASK_ROWS_NULL = 1 << NTEXT
_INT64_MIN = -(1 << 63)
_E_MALFORMED = -2


class MalformedBatch(Exception):
    """A batch the C fast path cannot take as is (a text holding U+0000, a value of the
    wrong type): the caller falls back to the row-by-row path, which decides."""


def available_impls() -> tuple[str, ...]:
    """The implementations whose code is loaded in this process (``"pure"`` always):
    ``"c"`` too when the native module is, whichever :data:`__impl__` selected."""
    return ("c", "pure") if native.available() else ("pure",)


def checksum(prev: bytes, encoding: bytes) -> bytes:
    """SHA-256(prev || encoding): the link of the chain."""
    return hashlib.sha256(prev + encoding).digest()


def event_checksum(prev: bytes, id: int, ts_us: int, affected_rows: Optional[int],
                   success: int, texts: Sequence[Optional[str]]) -> bytes:
    """Checksum of one event (pure Python; the reference the C code is tested against)."""
    return hashlib.sha256(prev + encode_event(id, ts_us, affected_rows, success, texts)).digest()


def chain_checksums(prev: bytes, ids: Sequence[int], ts: Sequence[int],
                    rows: Sequence[Optional[int]], success: Sequence[int],
                    texts: Sequence[Optional[str]],
                    leaves: Optional[list] = None) -> list[bytes]:
    """Checksums of consecutive events, the first linked to ``prev``.

    ``texts`` holds the ten text fields of each event, event after event (``10 * n``
    items). Raises TypeError, OverflowError or UnicodeEncodeError for values the encoding
    cannot represent, whichever implementation runs. With ``leaves`` (a list), each
    event's RFC 6962 Merkle leaf hash, ``SHA-256(0x00 || encoding)``, is appended to it
    (the same encoding, computed once; see :mod:`heliosdb.audit.merkle`).
    """
    n = len(ids)
    if not (len(ts) == len(rows) == len(success) == n and len(texts) == NTEXT * n):
        raise ValueError("chain_checksums: column lengths disagree")
    if n == 0:
        return []
    if prev.__class__ is not bytes or len(prev) != 32:
        raise ValueError("prev must be 32 bytes")
    if __impl__ == "c":
        lv: Optional[list] = [] if leaves is not None else None
        out = _c_chain(prev, n, ids, ts, rows, success, texts, lv)
        if out is not None:
            if leaves is not None:
                leaves.extend(lv)  # type: ignore[arg-type]
            return out
    return _pure_chain(prev, n, ids, ts, rows, success, texts, leaves)


#: The smallest batch :func:`insert_events` takes. The C writer prepares its INSERT in
#: every call (no statement may outlive a call: see csrc/chain.c), about 10 us, while
#: APSW's executemany reuses its cached statement: below this size that is cheaper.
INSERT_IN_C_FROM = 16


def insert_events(conn: object, insert_sql: str, prev: bytes, first_id: int, first_ts: int,
                  rows: Sequence[Optional[int]], success: Sequence[int],
                  texts: Sequence[Optional[str]]) -> Optional[tuple[bytes, tuple, int]]:
    """Hash and insert consecutive events in one call into C (store.append's fast path).

    Event ``i`` gets id ``first_id + i`` and ``ts_us`` ``first_ts + i``; ``texts`` holds
    its ten text fields as :func:`chain_checksums` takes them, and ``insert_sql`` is the
    log's INSERT of :data:`~heliosdb.audit.events.COLUMNS` in order. Returns (the last
    checksum, the RFC 6962 leaf hashes (a tuple), the rows the inserts changed) or None
    when the C writer does not apply (the pure implementation runs, the extension is not
    loaded into APSW's SQLite, a batch smaller than :data:`INSERT_IN_C_FROM`, a text
    holding U+0000): nothing is written then, and the caller takes its own path, which
    gives the same rows. A SQLite error is raised as the ``apsw`` exception of its code.
    """
    n = len(rows)
    if __impl__ != "c" or n < INSERT_IN_C_FROM or not _loaded_into_sqlite():
        return None
    if first_id.__class__ is not int or first_ts.__class__ is not int:
        raise TypeError("id and ts_us must be integers")
    joined = _slotted(texts, n)
    if joined is None:  # (the general case, per text, as it always was)
        if _NULL_SLOT in texts:
            return None  # a text that reads as the NULL slot: the other path takes the batch
        _check_int_types(rows, success)
        # join raises TypeError for a non-str field, as the pure encoder does.
        joined = "\x00".join([_NULL_SLOT if t is None else t for t in texts])
    else:
        _check_int_types(rows, success)
    rows_v = rows
    try:
        sum(rows)  # (ints only now: it fails on a None)
    except TypeError:
        rows_nulls = bytes(map(is_, rows, repeat(None)))
        rows_v = [0 if r is None else r for r in rows]
    else:
        rows_nulls = bytes(n)
    blob = joined.encode("utf-8")
    link = _ffi.new("unsigned char[32]", prev)
    leaves = _ffi.new("unsigned char[]", 32 * n)
    changes = _ffi.new("int64_t *")
    errmsg = _ffi.new("char[512]")
    rc = _lib.heliosdb_log_append(_ffi.cast("void *", conn.sqlite3pointer()),  # type: ignore[attr-defined]
                                  insert_sql.encode("utf-8"), link, first_id, first_ts, n,
                                  rows_v, success, rows_nulls, blob, len(blob),
                                  leaves, changes, errmsg, 512)
    if rc == _E_MALFORMED or rc == -1:
        return None
    if rc < 0:
        raise MemoryError(f"heliosdb_log_append failed ({rc})")
    if rc > 0:
        exc = apsw.exception_for(rc)
        exc.args = (_ffi.string(errmsg).decode("utf-8", "replace"),)
        raise exc
    return (bytes(_ffi.buffer(link)), _leaf_split(n).unpack(_ffi.buffer(leaves)),
            changes[0])


#: How the C writer's text buffer spells NULL (csrc/chain.c NULL_SLOT): a slot of that one
#: character. A batch where some text is exactly it goes the other way.
_NULL_SLOT = "\x01"


@functools.lru_cache(maxsize=64)
def _leaf_split(n: int) -> struct.Struct:
    """A Struct whose unpack() cuts ``32 * n`` bytes into ``n`` leaf hashes of 32 bytes
    (a tuple, in one call into C); kept per ``n``."""
    return struct.Struct("32s" * n)


_sqlite_loaded: Optional[bool] = None


def _slotted(texts: Sequence[Optional[str]], n: int) -> Optional[str]:
    """The C writer's text buffer for ``n`` events (``texts``, ten per event), built a
    column at a time: a text field that is None in every event (an error, row values, a
    reason) becomes the NULL slot by one slice assignment, and the rest is joined as it
    is. None (the caller then goes text by text, which decides) when that does not apply:
    a column mixing None and texts, a value that is no str, a text that is the slot."""
    if len(texts) != NTEXT * n:
        return None
    out = None
    try:
        for c in range(NTEXT):
            if texts[c] is None:
                # (by identity: a value that is no str but says it equals None is refused
                # text by text, as the pure encoder refuses it)
                if not all(map(is_, texts[c::NTEXT], repeat(None))):
                    return None
                if out is None:
                    out = list(texts)
                out[c::NTEXT] = _slot_column(n)
            elif _NULL_SLOT in set(texts[c::NTEXT]):  # (a column repeats its texts)
                return None
        return "\x00".join(texts if out is None else out)
    except TypeError:  # a value that is no str (unhashable, or refused by the join)
        return None


@functools.lru_cache(maxsize=64)
def _slot_column(n: int) -> list:
    """``[_NULL_SLOT] * n``, kept per ``n``: read, never changed."""
    return [_NULL_SLOT] * n


def _loaded_into_sqlite() -> bool:
    """The native module is loaded into APSW's SQLite as an extension (its SQLite API
    table is set): what the C writer calls SQLite through."""
    global _sqlite_loaded
    if _sqlite_loaded is None:
        try:
            from ..crypto import vfs as _vfs
            _vfs.ensure_loaded()
            _sqlite_loaded = True
        except Exception:  # noqa: BLE001 - the writer then takes the executemany path
            _sqlite_loaded = False
    return _sqlite_loaded


def _pure_chain(prev: bytes, n: int, ids: Sequence[int], ts: Sequence[int],
                rows: Sequence[Optional[int]], success: Sequence[int],
                texts: Sequence[Optional[str]],
                leaves: Optional[list] = None) -> list[bytes]:
    out = []
    sha = hashlib.sha256
    for i in range(n):
        enc = encode_event(ids[i], ts[i], rows[i], success[i],
                           texts[NTEXT * i:NTEXT * i + NTEXT])
        prev = sha(prev + enc).digest()
        out.append(prev)
        if leaves is not None:
            leaves.append(sha(b"\x00" + enc).digest())
    return out


def _check_int_types(*cols: Sequence[Optional[int]]) -> None:
    # cffi would silently accept bools (and the pure path refuses them); keep both equal.
    for col in cols:
        for v in col:
            if v.__class__ is not int and v is not None:
                raise TypeError(f"integer field holds {type(v).__name__}")


def _c_one(prev: bytes, id: int, ts: int, rows: Optional[int], success: int,
           texts: Sequence[Optional[str]],
           leaves: Optional[list] = None) -> Optional[list[bytes]]:
    # Scalar arguments: building four arrays costs more than hashing one event.
    mask = 0
    bit = 1
    for t in texts:
        if t is None:
            mask |= bit
        bit <<= 1
    if rows is None:
        mask |= _MASK_ROWS_NULL
        rows = 0
    _check_int_types((id, ts, rows, success))
    blob = "\x00".join(["" if t is None else t for t in texts]).encode("utf-8")
    out = _ffi.new("unsigned char[32]")
    if leaves is None:
        rc = _lib.heliosdb_chain_one(prev, id, ts, rows, success, mask, blob, len(blob), out)
    else:
        leaf = _ffi.new("unsigned char[32]")
        rc = _lib.heliosdb_chain_one_leaf(prev, id, ts, rows, success, mask, blob, len(blob),
                                          out, leaf)
    if rc == _E_MALFORMED:
        return None
    if rc != 0:
        raise MemoryError(f"heliosdb_chain_one failed ({rc})")
    if leaves is not None:
        leaves.append(_ffi.buffer(leaf)[:])
    return [_ffi.buffer(out)[:]]


def _c_chain(prev: bytes, n: int, ids: Sequence[int], ts: Sequence[int],
             rows: Sequence[Optional[int]], success: Sequence[int],
             texts: Sequence[Optional[str]],
             leaves: Optional[list] = None) -> Optional[list[bytes]]:
    if n == 1:
        return _c_one(prev, ids[0], ts[0], rows[0], success[0], texts, leaves)
    text_nulls = bytes(map(is_, texts, repeat(None)))
    rows_nulls = bytes(map(is_, rows, repeat(None)))
    rows_v = [0 if r is None else r for r in rows] if any(rows_nulls) else rows
    _check_int_types(ids, ts, rows, success)
    # join raises TypeError for a non-str field, as the pure encoder does.
    blob = "\x00".join(["" if t is None else t for t in texts]).encode("utf-8")
    link = _ffi.new("unsigned char[32]", prev)
    out = _ffi.new("unsigned char[]", 32 * n)
    if leaves is None:
        rc = _lib.heliosdb_chain_append(link, n, ids, ts, rows_v, success, text_nulls,
                                        rows_nulls, blob, len(blob), out)
    else:
        lv = _ffi.new("unsigned char[]", 32 * n)
        rc = _lib.heliosdb_chain_append_leaves(link, n, ids, ts, rows_v, success, text_nulls,
                                               rows_nulls, blob, len(blob), out, lv)
    if rc == _E_MALFORMED:
        return None  # a text holds U+0000: the pure encoder takes this batch
    if rc != 0:
        raise MemoryError(f"heliosdb_chain_append failed ({rc})")
    if leaves is not None:
        lb = _ffi.buffer(lv)[:]
        leaves.extend(lb[i:i + 32] for i in range(0, 32 * n, 32))
    buf = _ffi.buffer(out)[:]
    return [buf[i:i + 32] for i in range(0, 32 * n, 32)]


def verify_rows(expect_prev: bytes, first_id: int, last_ts: Optional[int],
                ids: list, ts: list, rows: list, success: list, texts: list,
                prevs: list, cks: list, masks: list) -> tuple[int, bytes]:
    """Check a batch of stored rows against the chain (the verifier's fast path).

    Row ``i`` is good when its id is ``first_id + i``, its ``ts_us`` is greater than the
    previous row's (``last_ts`` for row 0; None = no bound), its ``prev_hash`` equals the
    previous row's checksum (``expect_prev`` for row 0) and SHA-256(prev_hash || encoding)
    equals its stored checksum. ``texts[i]`` holds row i's ten text fields as stored
    (UTF-8 bytes) joined by NUL, a NULL field being an empty slot; ``masks[i]`` says which
    fields are NULL (bit f: text field f, bit 10: ``affected_rows``), so that no stored
    value stands for NULL. A text that is not valid UTF-8 makes its row bad: no event
    encodes to it. ``rows`` may hold None (then its mask bit is set).

    Returns ``(-1, last checksum)`` when every row is good, else ``(index of the first bad
    row, checksum of the row before it)``. Raises :class:`MalformedBatch` when a value does
    not fit the fast path (a wrong type, a text holding U+0000): the caller re-checks those
    rows slowly, and the slow check decides.
    """
    n = len(ids)
    if n == 0:
        return -1, expect_prev
    try:
        if len(masks) != n or any(m.__class__ is not int for m in masks):
            raise TypeError("masks must be integers, one per row")
        for i, r in enumerate(rows):
            if (r is None) != bool(masks[i] & _MASK_ROWS_NULL):
                raise TypeError("affected_rows disagrees with its NULL flag")
        rows = [0 if r is None else r for r in rows]
        pblob = b"".join(prevs)
        cblob = b"".join(cks)
    except TypeError as exc:
        raise MalformedBatch(str(exc)) from None
    if len(pblob) != 32 * n or len(cblob) != 32 * n or set(map(len, cks)) != {32} \
            or set(map(len, prevs)) != {32}:
        raise MalformedBatch("a prev_hash or checksum is not 32 bytes")
    if __impl__ == "c":
        return _c_verify(expect_prev, first_id, last_ts, n, ids, ts, rows, success,
                         masks, texts, pblob, cblob, cks)
    return _pure_verify(expect_prev, first_id, last_ts, n, ids, ts, rows, success,
                        masks, texts, prevs, cks)


def _c_verify(expect_prev: bytes, first_id: int, last_ts: Optional[int], n: int,
              ids: list, ts: list, rows: list, success: list, masks: list,
              texts: list, pblob: bytes, cblob: bytes, cks: list) -> tuple[int, bytes]:
    try:
        blob = b"\x00".join(texts)
    except TypeError as exc:
        raise MalformedBatch(str(exc)) from None
    last = _ffi.new("unsigned char[32]")
    try:
        # cffi refuses a non-integer (text, blob, real, NULL) in an integer column here.
        _check_int_types(ids, ts, rows, success)
        rc = _lib.heliosdb_chain_verify(expect_prev, first_id,
                                        _INT64_MIN if last_ts is None else last_ts, n, ids,
                                        ts, rows, success, masks, blob, len(blob), pblob,
                                        cblob, last)
    except (TypeError, OverflowError) as exc:
        raise MalformedBatch(str(exc)) from None
    if rc == -1:
        return -1, bytes(_ffi.buffer(last))
    if rc < -1:
        if rc == _E_MALFORMED:
            raise MalformedBatch("a text field holds U+0000")
        raise MemoryError(f"heliosdb_chain_verify failed ({rc})")
    return rc, (expect_prev if rc == 0 else cks[rc - 1])


_TXT = struct.Struct(">BI")
_HDR4 = struct.Struct(">BBqBqBqBq")  # version + four non-NULL integers, the common case


def _pure_verify(expect_prev: bytes, first_id: int, last_ts: Optional[int], n: int,
                 ids: list, ts: list, rows: list, success: list, masks: list,
                 texts: list, prevs: list, cks: list) -> tuple[int, bytes]:
    try:
        _check_int_types(ids, ts, rows, success)
    except TypeError as exc:
        raise MalformedBatch(str(exc)) from None
    sha = hashlib.sha256
    link = expect_prev
    lt = _INT64_MIN if last_ts is None else last_ts
    for i in range(n):
        if ids[i] != first_id + i or ts[i] <= lt or prevs[i] != link:
            return i, link
        t = texts[i]
        if t.__class__ is not bytes:
            raise MalformedBatch("texts must be bytes")
        parts = t.split(b"\x00")
        if len(parts) != NTEXT:
            raise MalformedBatch("a text field holds U+0000")
        m = masks[i]
        try:
            if m & _MASK_ROWS_NULL:
                head = encode_ints(ids[i], ts[i], None, success[i])
            else:
                head = _HDR4.pack(1, 1, ids[i], 1, ts[i], 1, rows[i], 1, success[i])
        except (TypeError, OverflowError, struct.error) as exc:
            raise MalformedBatch(str(exc)) from None
        enc = [prevs[i], head]
        for f, p in enumerate(parts):
            if m >> f & 1:
                if p:
                    raise MalformedBatch("a NULL field has a value")
                enc.append(b"\x00")
                continue
            try:
                p.decode("utf-8")
            except UnicodeDecodeError:
                return i, link  # no event encodes to bytes that are not UTF-8
            enc.append(_TXT.pack(2, len(p)) + p)
        if sha(b"".join(enc)).digest() != cks[i]:
            return i, link
        link = cks[i]
        lt = ts[i]
    return -1, link


#: The result of ``heliosdb_chain_check`` as this module decodes it, field by field
#: (little-endian); tree mode appends tree_size (int64) and the frontier. The layout is
#: defined in csrc/chain_api.h (HELIOSDB_CHECK_*) and checked against this at import.
_CHECK_FIELDS = (("N_GOOD", "q"), ("FAILED", "q"), ("BAD_ID", "q"), ("LAST_TS", "q"),
                 ("HAS_LAST_TS", "B"), ("LINK", "32s"))
_CHECK = struct.Struct("<" + "".join(code for _, code in _CHECK_FIELDS))
_CHECK_OFFSETS = {name: struct.calcsize("<" + "".join(c for _, c in _CHECK_FIELDS[:i]))
                  for i, (name, _) in enumerate(_CHECK_FIELDS)}
_CHECK_OFFSETS.update(SIZE=_CHECK.size, TREE_SIZE=_CHECK.size, FRONTIER=_CHECK.size + 8)


def _check_layout_agrees(lib: object) -> None:
    """Raise ImportError when the loaded native module lays out heliosdb_chain_check's
    result otherwise than :data:`_CHECK` decodes it (a module built from another
    csrc/chain_api.h, or a header changed without this decoder)."""
    for name, offset in _CHECK_OFFSETS.items():
        got = getattr(lib, f"HELIOSDB_CHECK_{name}", None)
        if got != offset:
            raise ImportError(
                f"heliosdb._native lays out heliosdb_chain_check's result otherwise than "
                f"heliosdb.audit.chain reads it: HELIOSDB_CHECK_{name} is {got} in the "
                f"extension, {offset} here; rebuild the extension (make native) or update "
                "_CHECK_FIELDS with csrc/chain_api.h")


if _lib is not None:
    _check_layout_agrees(_lib)


def register_sql_check(conn: object) -> bool:
    """Register the C aggregate ``heliosdb_chain_check`` on an APSW connection.

    True when the verifier may use it: the C implementation is selected, and the native
    module has been loaded into APSW's SQLite as an extension (it reaches SQLite through
    the API table the extension entry point receives). False otherwise: the verifier
    then feeds rows to C (or Python) itself, which is slower but checks the same rules.
    """
    if __impl__ != "c":
        return False
    try:
        from ..crypto import vfs as _vfs
        _vfs.ensure_loaded()
    except Exception:  # noqa: BLE001 - any failure just means: no SQL fast path
        return False
    rc = _lib.heliosdb_chain_register(_ffi.cast("void *", conn.sqlite3pointer()))
    return rc == 0


def decode_check_result(blob: Optional[bytes]) -> tuple[int, bool, int, Optional[int], bytes]:
    """Unpack ``heliosdb_chain_check``'s result: (n_good, failed, bad_id, last_ts, link)."""
    if blob is None:
        return 0, False, 0, None, b""
    n_good, failed, bad_id, last_ts, has_ts, link = _CHECK.unpack(blob[:_CHECK.size])
    return n_good, bool(failed), bad_id, (last_ts if has_ts else None), link


def decode_check_tree(blob: Optional[bytes]) -> Optional[tuple[int, bytes]]:
    """The Merkle part of a tree-mode ``heliosdb_chain_check`` result: (tree_size,
    frontier bytes) after the last good row; None for a result without one."""
    tree_at, frontier_at = _CHECK_OFFSETS["TREE_SIZE"], _CHECK_OFFSETS["FRONTIER"]
    if blob is None or len(blob) < frontier_at:
        return None
    size = struct.unpack("<q", blob[tree_at:frontier_at])[0]
    return size, bytes(blob[frontier_at:])
