"""Audit events: the fields, the operation names, and the canonical encoding.

The encoding is what the chain hashes (``checksum = SHA-256(prev_checksum || encoding)``),
so it is defined once, here, in plain Python, and mirrored byte for byte by ``csrc/chain.c``
(the test suite checks both against ``tests/vectors/audit_chain.json``).
``docs/AUDIT_FORMAT.md`` is the prose version of :func:`encode_event`.

Encoding, format version 1::

    0x01                                   format version
    id, ts_us, affected_rows, success      each 0x00 (NULL) or 0x01 + 8-byte signed big-endian
    session_id, user, operation, target,
    query, error, metadata, old_values,
    new_values, reason                     each 0x00 (NULL) or 0x02 + u32 big-endian byte
                                           length + UTF-8 bytes

Every field is present, in this order, type-tagged and length-prefixed, so two different
events can never encode to the same bytes (the encoding is injective and can be parsed back:
:func:`decode_event`).
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import re
import struct
import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence, Union

from ..errors import ProgrammingError

__all__ = [
    "FORMAT_VERSION", "GENESIS", "OPERATIONS", "SQL_OPERATIONS", "PRODUCT_OPERATIONS",
    "APPLICATION_OPERATIONS", "INT_FIELDS", "TEXT_FIELDS", "COLUMNS", "EventFields",
    "AuditEvent", "canonical_json", "check_operation", "encode_event", "encode_ints", "decode_event",
    "format_ts", "NTEXT",
]

FORMAT_VERSION = 1
#: ``prev_hash`` of the first event of a chain that was never purged.
GENESIS = bytes(32)

#: Operations SQLite statements map to (DESIGN.md section 3).
SQL_OPERATIONS: tuple[str, ...] = (
    "CREATE_TABLE", "DROP_TABLE", "ALTER_TABLE", "CREATE_INDEX", "DROP_INDEX",
    "CREATE_VIEW", "DROP_VIEW", "CREATE_TRIGGER", "DROP_TRIGGER",
    "INSERT", "UPDATE", "DELETE", "SELECT", "BEGIN", "COMMIT", "ROLLBACK",
    "PRAGMA", "ATTACH", "DETACH",
)
#: Operations about sessions and rights (SQLite has none: the product and the
#: application report them).
APPLICATION_OPERATIONS: tuple[str, ...] = ("LOGIN", "LOGOUT", "GRANT", "REVOKE")
#: The product's own operations.
PRODUCT_OPERATIONS: tuple[str, ...] = (
    "KEY_CHANGE", "KEY_ROTATION", "AUDIT_CONFIG_CHANGE", "RETENTION_PURGE", "EXPORT",
    "VERIFY", "RESTORE", "ACTOR_CHANGE", "LEGAL_HOLD", "LEGAL_HOLD_RELEASE",
)
#: Every operation name the product itself emits. Applications may log others
#: (``DATA_SUBJECT_REQUEST``, ``MODEL_TRAINING``...): any name matching
#: ``[A-Z][A-Z0-9_]{0,63}`` is accepted by :func:`check_operation`.
OPERATIONS: frozenset[str] = frozenset(SQL_OPERATIONS + APPLICATION_OPERATIONS
                                       + PRODUCT_OPERATIONS)

#: Integer fields, in encoding order.
INT_FIELDS: tuple[str, ...] = ("id", "ts_us", "affected_rows", "success")
#: Text fields, in encoding order.
TEXT_FIELDS: tuple[str, ...] = (
    "session_id", "user", "operation", "target", "query", "error", "metadata",
    "old_values", "new_values", "reason",
)
NTEXT = len(TEXT_FIELDS)
#: Columns of the audit table, in table order.
COLUMNS: tuple[str, ...] = (
    "id", "ts_us", "session_id", "user", "operation", "target", "query", "affected_rows",
    "success", "error", "metadata", "old_values", "new_values", "reason", "prev_hash",
    "checksum",
)

_OP_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}\Z")
#: Operation names :func:`check_operation` has accepted (the vocabulary, then names an
#: application logged): a set to test membership in on the hot path. Read it; only
#: check_operation adds to it.
ACCEPTED_OPERATIONS: set[str] = set(OPERATIONS)


def check_operation(name: object) -> str:
    """Return ``name`` if it is a valid operation name, else raise ProgrammingError.

    Known names are accepted from a set; custom ones must look like ``GRANT`` or
    ``DATA_SUBJECT_REQUEST`` (upper case, digits, underscores, at most 64 characters) so
    that queries by operation stay meaningful.
    """
    if name in ACCEPTED_OPERATIONS:
        return name  # type: ignore[return-value]
    if not isinstance(name, str) or not _OP_RE.match(name):
        raise ProgrammingError(
            f"invalid audit operation {name!r}: use an upper-case name such as 'INSERT' or "
            "'DATA_SUBJECT_REQUEST' ([A-Z][A-Z0-9_]{0,63})")
    if len(ACCEPTED_OPERATIONS) < 4096:  # bounded: applications may invent many names
        ACCEPTED_OPERATIONS.add(name)
    return name


def _json_default(obj: Any) -> Any:
    # Row values from the preupdate hook may be BLOBs; JSON has no bytes type, so they are
    # written as a one-key object that cannot be confused with a string.
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(obj)).decode("ascii")}
    raise TypeError(f"audit values must be JSON-serialisable, not {type(obj).__name__}")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """Canonical JSON text: sorted keys, compact separators, UTF-8 kept, no NaN.

    ``bytes`` become ``{"$base64": "..."}``. Used for ``metadata``, ``old_values`` and
    ``new_values`` so that the same content always gives the same text (and checksum).
    """
    try:
        try:
            return json.dumps(value, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False, allow_nan=False, default=_json_default)
        except ValueError:
            # Non-finite floats (a REAL column may hold inf; NaN is stored as NULL) have no
            # JSON form: write them as a one-key object, like bytes.
            return json.dumps(_finite(value), sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False, allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ProgrammingError(f"cannot encode audit value as canonical JSON: {exc}") from exc


JsonValue = Union[str, dict, list, None]


class EventFields(NamedTuple):
    """What a caller supplies for one event; the store adds id, time and the chain.

    ``metadata``, ``old_values`` and ``new_values`` may be given as canonical JSON text
    (fastest: serialise constant metadata once per session with :func:`canonical_json`)
    or as dicts/lists, which :func:`heliosdb.audit.store.append` serialises canonically.
    ``success`` is stored as 1 or 0. ``query`` is cut at the store's ``max_query_length``.
    """

    operation: str
    target: Optional[str] = None
    user: Optional[str] = None
    session_id: Optional[str] = None
    query: Optional[str] = None
    affected_rows: Optional[int] = None
    success: Union[bool, int] = True
    error: Optional[str] = None
    metadata: JsonValue = None
    old_values: JsonValue = None
    new_values: JsonValue = None
    reason: Optional[str] = None


def format_ts(ts_us: int) -> str:
    """ISO 8601 UTC text for a stored ``ts_us`` (formatting is done on read, never on write)."""
    dt = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=ts_us)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditEvent:
    """One stored audit event: a row of the audit table."""

    id: int
    ts_us: int
    session_id: Optional[str]
    user: Optional[str]
    operation: str
    target: Optional[str]
    query: Optional[str]
    affected_rows: Optional[int]
    success: int
    error: Optional[str]
    metadata: Optional[str]
    old_values: Optional[str]
    new_values: Optional[str]
    reason: Optional[str]
    prev_hash: bytes
    checksum: bytes

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "AuditEvent":
        """Build from a row in :data:`COLUMNS` order."""
        if len(row) != len(_EVENT_FIELDS):
            return cls(*row)  # raises TypeError naming what is missing or extra
        # The frozen dataclass's __init__ sets each field through object.__setattr__
        # (1.9 us a row); a query reading 10,000 events builds them this way instead.
        ev = _new_object(cls)
        ev.__dict__.update(zip(_EVENT_FIELDS, row))
        return ev

    @property
    def timestamp(self) -> str:
        """``ts_us`` as ISO 8601 UTC text."""
        return format_ts(self.ts_us)

    def texts(self) -> tuple[Optional[str], ...]:
        """The text fields in encoding order."""
        return (self.session_id, self.user, self.operation, self.target, self.query,
                self.error, self.metadata, self.old_values, self.new_values, self.reason)

    def encoding(self) -> bytes:
        """The canonical encoding of this event (what the checksum covers after prev)."""
        return encode_event(self.id, self.ts_us, self.affected_rows, self.success,
                            self.texts())


_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(AuditEvent))
_new_object = object.__new__

_INT = struct.Struct(">Bq")
_TXT = struct.Struct(">BI")
_NULL = b"\x00"
_VERSION = bytes([FORMAT_VERSION])


def encode_event(id: int, ts_us: int, affected_rows: Optional[int], success: int,
                 texts: Sequence[Optional[str]]) -> bytes:
    """The canonical encoding (format version 1) of one event.

    ``texts`` are the ten text fields in :data:`TEXT_FIELDS` order. Raises TypeError for a
    value of the wrong type and OverflowError for an integer outside int64: a value the
    table could hold but the encoding could not represent must never be written.
    """
    if len(texts) != NTEXT:
        raise TypeError(f"expected {NTEXT} text fields, got {len(texts)}")
    parts = [encode_ints(id, ts_us, affected_rows, success)]
    for t in texts:
        if t is None:
            parts.append(_NULL)
        elif type(t) is str:
            b = t.encode("utf-8")
            parts.append(_TXT.pack(2, len(b)))
            parts.append(b)
        else:
            raise TypeError(f"text field holds {type(t).__name__}")
    return b"".join(parts)


def encode_ints(id: int, ts_us: int, affected_rows: Optional[int], success: int) -> bytes:
    """The first part of the encoding: the version byte and the four integer fields."""
    parts = [_VERSION]
    for v in (id, ts_us, affected_rows, success):
        if v is None:
            parts.append(_NULL)
        elif type(v) is int:  # bool, float or text in an integer column is a type change
            try:
                parts.append(_INT.pack(1, v))
            except struct.error:
                raise OverflowError(f"integer {v} does not fit in int64") from None
        else:
            raise TypeError(f"integer field holds {type(v).__name__}")
    return b"".join(parts)


def decode_event(data: bytes) -> tuple[list[Optional[int]], list[Optional[str]]]:
    """Parse an encoding back into (ints, texts); raises ValueError if malformed.

    Exists to prove (and test) that the encoding is unambiguous.
    """
    if not data or data[0] != FORMAT_VERSION:
        raise ValueError("unknown audit encoding version")
    pos = 1
    ints: list[Optional[int]] = []
    texts: list[Optional[str]] = []
    for i in range(len(INT_FIELDS) + NTEXT):
        if pos >= len(data):
            raise ValueError("truncated encoding")
        tag = data[pos]
        if tag == 0:
            pos += 1
            (ints if i < len(INT_FIELDS) else texts).append(None)
        elif tag == 1 and i < len(INT_FIELDS):
            if pos + 9 > len(data):
                raise ValueError("truncated integer")
            ints.append(_INT.unpack_from(data, pos)[1])
            pos += 9
        elif tag == 2 and i >= len(INT_FIELDS):
            if pos + 5 > len(data):
                raise ValueError("truncated text length")
            n = _TXT.unpack_from(data, pos)[1]
            if pos + 5 + n > len(data):
                raise ValueError("truncated text")
            texts.append(data[pos + 5:pos + 5 + n].decode("utf-8"))
            pos += 5 + n
        else:
            raise ValueError(f"bad tag {tag} at offset {pos}")
    if pos != len(data):
        raise ValueError("trailing bytes after the last field")
    return ints, texts
