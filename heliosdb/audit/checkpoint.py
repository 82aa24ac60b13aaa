"""Signed checkpoints of the audit chain head, kept outside the database.

A plain hash chain can be recomputed by anyone who can write the file, and a truncated
tail or an older copy of the whole file still verifies. A checkpoint signs the head
(event id, checksum, count, time) with Ed25519 or HMAC-SHA256 under a key that is not in
the database; verifying against it detects:

* a truncated tail (the log ends before the signed event, and the database recorded the
  checkpoint): ``truncated``;
* a re-hashed chain (the signed event has another checksum now): ``modified``;
* a whole file restored from an older copy (the database does not know the checkpoint,
  whose number it records in ``__audit_meta`` when the checkpoint is taken):
  ``rolled_back``.

File format (UTF-8 text, one ``key: value`` per line, ``#`` lines are comments)::

    format: heliosdb-audit-checkpoint/1
    table: __audit_log
    database_id: <32 hex>          random id of the database (in __audit_meta)
    seq: <int>                     checkpoint number in this database, 1, 2, ...
    event_id: <int>                id of the head event (anchor id when empty)
    checksum: <64 hex>             its checksum
    count: <int>                   events from the anchor to the head
    head_ts_us: <int> | -          its ts_us (UTC microseconds)
    created_us: <int>              when the checkpoint was taken (UTC microseconds)
    anchor_id: <int>               id before the first stored event (0 unless purged)
    algorithm: ed25519 | hmac-sha256
    key_id: <16 hex>               first 8 bytes of SHA-256("heliosdb-audit-key-id\\0" || key)
    public_key: <64 hex> | -       Ed25519 public key (informational: verify with your own copy)
    signature: <hex>

The signed message is the UTF-8 bytes of the lines ``format`` .. ``public_key`` exactly as
above (``key: value\\n`` each, in that order); the ``signature`` line signs them.

Version 2 (``format: heliosdb-audit-checkpoint/2``, written when the log has a Merkle tree,
see :mod:`.merkle`) adds ``tree_size``, ``root_hash`` and ``frontier`` (comma-separated hex
hashes, or ``-``) after ``anchor_id``; version 1 files still parse and verify.

The first checkpoint of a database pins its signer in ``__audit_meta``
(``checkpoint_signer``: ``ed25519:<public key hex>`` or ``hmac-sha256:<key id>``).
Verification without a key checks a checkpoint only against the pinned Ed25519 key
(:func:`pinned_public_key`), never against the ``public_key`` the file carries.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Optional, Union

import apsw

from ..errors import ProgrammingError, translate
from .store import DEFAULT_TABLE, anchor, check_table_name, get_meta, read_head

__all__ = ["FORMAT", "FORMAT_V2", "Checkpoint", "create_checkpoint", "key_id", "SIGNER_META",
           "pinned_signer", "pinned_public_key"]

#: ``__audit_meta`` key of the signer pinned by the first checkpoint: ``ed25519:<64 hex>``
#: (the public key) or ``hmac-sha256:<key id>`` (an HMAC key cannot be public: only its id).
SIGNER_META = "checkpoint_signer"

FORMAT = "heliosdb-audit-checkpoint/1"
#: Version 2 also signs the RFC 6962 Merkle tree over the log (see :mod:`.merkle`).
FORMAT_V2 = "heliosdb-audit-checkpoint/2"
_SIGNED = ("format", "table", "database_id", "seq", "event_id", "checksum", "count",
           "head_ts_us", "created_us", "anchor_id", "algorithm", "key_id", "public_key")
_SIGNED_V2 = ("format", "table", "database_id", "seq", "event_id", "checksum", "count",
              "head_ts_us", "created_us", "anchor_id", "tree_size", "root_hash",
              "frontier", "algorithm", "key_id", "public_key")
_FORMATS = {FORMAT: _SIGNED, FORMAT_V2: _SIGNED_V2}
_INTS = {"seq", "event_id", "count", "head_ts_us", "created_us", "anchor_id", "tree_size"}
_HEX = {"checksum", "public_key", "signature", "root_hash"}
_MIN_HMAC_KEY = 16

try:  # cryptography is a dependency; imported lazily-safe so the error names it
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey, Ed25519PublicKey)
except ImportError:  # pragma: no cover - declared in pyproject
    Ed25519PrivateKey = Ed25519PublicKey = None  # type: ignore[assignment,misc]


def key_id(material: bytes) -> str:
    """Short public id of a key: Ed25519 raw public key, or the HMAC key itself (hashed)."""
    return hashlib.sha256(b"heliosdb-audit-key-id\x00" + material).hexdigest()[:16]


def _raw_public(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Checkpoint:
    """A signed head of an audit chain. Create with :func:`create_checkpoint`."""

    table: str
    database_id: str
    seq: int
    event_id: int
    checksum: bytes
    count: int
    head_ts_us: Optional[int]
    created_us: int
    anchor_id: int
    algorithm: str
    key_id: str
    public_key: Optional[bytes]
    signature: bytes = b""
    #: Version 2: the Merkle tree at the head (size = event_id), its root, and its
    #: frontier (the perfect subtrees' roots, concatenated; see :mod:`.merkle`).
    tree_size: Optional[int] = None
    root_hash: Optional[bytes] = None
    frontier: Optional[bytes] = None

    @property
    def version(self) -> int:
        return 1 if self.tree_size is None else 2

    @property
    def format(self) -> str:
        return FORMAT if self.tree_size is None else FORMAT_V2

    def frontier_bytes(self) -> bytes:
        return self.frontier or b""

    def _value(self, name: str) -> str:
        if name == "frontier":
            fr = self.frontier_bytes()
            return ",".join(fr[i:i + 32].hex() for i in range(0, len(fr), 32)) or "-"
        v = self.format if name == "format" else getattr(self, name)
        if v is None:
            return "-"
        if isinstance(v, bytes):
            return v.hex()
        return str(v)

    def payload(self) -> bytes:
        """The exact bytes the signature covers."""
        return "".join(f"{k}: {self._value(k)}\n"
                       for k in _FORMATS[self.format]).encode("utf-8")

    def to_text(self) -> str:
        """The file contents: a comment line, the signed lines, the signature line."""
        return ("# HeliosDB audit checkpoint: see docs/AUDIT_FORMAT.md\n"
                + self.payload().decode("utf-8") + f"signature: {self.signature.hex()}\n")

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the checkpoint file (atomically: a temporary file renamed over ``path``)."""
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(self.to_text())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def from_text(cls, text: str) -> "Checkpoint":
        """Parse checkpoint file contents; raises ProgrammingError naming the bad line."""
        if not isinstance(text, str):
            raise ProgrammingError("a checkpoint is text")
        values: dict[str, str] = {}
        allowed = set(_SIGNED_V2) | {"signature"}
        order: list[str] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            key, sep, value = line.partition(": ")
            if not sep or key in values or key not in allowed:
                raise ProgrammingError(f"checkpoint line {n}: unexpected {line!r}")
            values[key] = value.strip()
            order.append(key)
        fmt = values.get("format")
        if fmt not in _FORMATS:
            raise ProgrammingError(f"not a {FORMAT} or {FORMAT_V2} file")
        signed = _FORMATS[fmt]
        missing = [k for k in signed + ("signature",) if k not in values]
        if missing:
            raise ProgrammingError(f"checkpoint file lacks {', '.join(missing)}")
        extra = [k for k in values if k not in signed + ("signature",)]
        if extra:
            raise ProgrammingError(f"a {fmt} checkpoint has no {', '.join(extra)} line")
        values.pop("format")
        kw: dict[str, Any] = {}
        try:
            for f in fields(cls):
                if f.name not in values:
                    continue
                v = values[f.name]
                if v == "-":
                    kw[f.name] = b"" if f.name == "frontier" else None
                elif f.name == "frontier":
                    parts = [bytes.fromhex(h) for h in v.split(",")]
                    if any(len(h) != 32 for h in parts):
                        raise ValueError("frontier hashes must be 32 bytes")
                    kw[f.name] = b"".join(parts)
                elif f.name in _INTS:
                    kw[f.name] = int(v)
                elif f.name in _HEX:
                    kw[f.name] = bytes.fromhex(v)
                else:
                    kw[f.name] = v
        except ValueError as exc:
            raise ProgrammingError(f"checkpoint field {f.name}: {exc}") from None
        return cls(**kw)  # the tree is checked after the signature: check_tree()

    def check_tree(self) -> None:
        """A version 2 checkpoint's tree must be self-consistent: ``tree_size`` is the head
        ``event_id``, the frontier has ``popcount(tree_size)`` hashes and folds to
        ``root_hash``. Raises ProgrammingError otherwise (a malformed checkpoint)."""
        from . import merkle
        if self.tree_size is None:
            return
        if self.root_hash is None or len(self.root_hash) != 32:
            raise ProgrammingError("checkpoint root_hash must be 32 bytes")
        if self.tree_size != self.event_id:
            raise ProgrammingError(f"checkpoint tree_size {self.tree_size} is not its "
                                   f"event_id {self.event_id}")
        try:
            merkle._check_frontier(self.tree_size, self.frontier_bytes())
        except ValueError as exc:
            raise ProgrammingError(f"checkpoint frontier: {exc}") from None
        if merkle.root(self.frontier_bytes()) != self.root_hash:
            raise ProgrammingError("checkpoint frontier does not fold to its root_hash")

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Checkpoint":
        """Read a checkpoint file written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_text(f.read())

    def verify_signature(self, *, public_key: Any = None,
                         hmac_key: Optional[bytes] = None) -> Optional[str]:
        """None when the signature verifies under the given key, else why not."""
        payload = self.payload()
        if self.algorithm == "ed25519":
            if public_key is None:
                return "it is signed with Ed25519: pass public_key="
            if isinstance(public_key, (bytes, bytearray)):
                try:
                    public_key = Ed25519PublicKey.from_public_bytes(bytes(public_key))
                except ValueError as exc:
                    return f"bad public key: {exc}"
            elif Ed25519PrivateKey is not None and isinstance(public_key, Ed25519PrivateKey):
                public_key = public_key.public_key()
            try:
                public_key.verify(self.signature, payload)
            except InvalidSignature:
                if key_id(_raw_public(public_key)) != self.key_id:
                    return (f"it was signed by key {self.key_id}, not by the given key "
                            f"{key_id(_raw_public(public_key))} (or the file was altered)")
                return "the Ed25519 signature does not match the contents: the file was altered"
            return None
        if self.algorithm == "hmac-sha256":
            if hmac_key is None:
                return "it is signed with HMAC-SHA256: pass hmac_key="
            mac = hmac.new(bytes(hmac_key), payload, hashlib.sha256).digest()
            if not hmac.compare_digest(mac, self.signature):
                if key_id(bytes(hmac_key)) != self.key_id:
                    return (f"it was signed by key {self.key_id}, not by the given key "
                            f"{key_id(bytes(hmac_key))} (or the file was altered)")
                return "the HMAC does not match the contents: the file was altered"
            return None
        return f"unknown algorithm {self.algorithm!r}"


def pinned_signer(conn: apsw.Connection, table: str = DEFAULT_TABLE
                  ) -> Optional[tuple[str, str]]:
    """The signer pinned in the database by its first checkpoint: ``(algorithm, value)``
    with value the Ed25519 public key in hex or the HMAC key id; None if none is pinned
    (or the record is unreadable)."""
    v = get_meta(conn, table, SIGNER_META)
    if not isinstance(v, str) or ":" not in v:
        return None
    alg, _, val = v.partition(":")
    if alg not in ("ed25519", "hmac-sha256"):
        return None
    return alg, val


def pinned_public_key(conn: apsw.Connection, table: str, cp: "Checkpoint") -> Any:
    """The key to check ``cp`` with when the caller gave none: the Ed25519 public key
    pinned in the database (raw bytes). Raises ProgrammingError when no key can check it
    (nothing pinned, an HMAC signer, a malformed pin): a checkpoint whose signature is
    checked only against the key it carries proves nothing."""
    pin = pinned_signer(conn, table)
    if pin is None:
        raise ProgrammingError(
            f"checkpoint #{cp.seq} cannot be checked: no signing key was given and this "
            "database pins none: pass public_key= (Ed25519) or hmac_key=, or on the command "
            "line --verify-key FILE")
    alg, val = pin
    if alg != "ed25519":
        raise ProgrammingError(
            f"checkpoint #{cp.seq} cannot be checked: this database's checkpoints are signed "
            f"with HMAC-SHA256 (key {val}), whose secret is not kept in the database: pass "
            "hmac_key= (or --verify-key FILE)")
    try:
        raw = bytes.fromhex(val)
    except ValueError:
        raise ProgrammingError("the pinned checkpoint signer in __audit_meta is malformed: "
                               "pass public_key= explicitly") from None
    if len(raw) != 32:
        raise ProgrammingError("the pinned checkpoint signer in __audit_meta is malformed: "
                               "pass public_key= explicitly")
    return raw


def _sign(cp: Checkpoint, signing_key: Any) -> Checkpoint:
    if Ed25519PrivateKey is not None and isinstance(signing_key, Ed25519PrivateKey):
        return replace(cp, signature=signing_key.sign(cp.payload()))
    return replace(cp, signature=hmac.new(bytes(signing_key), cp.payload(),
                                          hashlib.sha256).digest())


def create_checkpoint(conn: apsw.Connection, table: str = DEFAULT_TABLE,
                      signing_key: Any = None, *, now_us: Optional[int] = None) -> Checkpoint:
    """Sign the current head of the chain and record the checkpoint number in the database.

    ``signing_key``: an ``Ed25519PrivateKey`` (verify later with its public key) or bytes
    (HMAC-SHA256, at least 16 bytes). Keep it outside the database. Must be called outside
    a transaction: it signs only what is committed, in a ``BEGIN IMMEDIATE`` of its own
    that also stores ``checkpoint_seq`` (what lets a verifier tell a rolled-back copy).
    Save the result with :meth:`Checkpoint.save`.
    """
    check_table_name(table)
    if Ed25519PrivateKey is not None and isinstance(signing_key, Ed25519PrivateKey):
        algorithm, pub = "ed25519", _raw_public(signing_key.public_key())
        kid = key_id(pub)
    elif isinstance(signing_key, (bytes, bytearray)):
        if len(signing_key) < _MIN_HMAC_KEY:
            raise ProgrammingError(f"an HMAC checkpoint key needs at least {_MIN_HMAC_KEY} "
                                   "bytes")
        algorithm, pub, kid = "hmac-sha256", None, key_id(bytes(signing_key))
    else:
        raise ProgrammingError("signing_key must be an Ed25519PrivateKey or bytes (HMAC)")
    if conn.in_transaction:
        raise ProgrammingError("create_checkpoint must run outside a transaction: it signs "
                               "only committed events")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            db_id = get_meta(conn, table, "database_id")
            if db_id is None:
                raise ProgrammingError(f"no audit log {table!r} here: call ensure_schema first")
            last_id, last_ck, last_ts = read_head(conn, table)
            anc = anchor(conn, table)
            from . import merkle  # version 2 when the log has a Merkle tree
            tree = merkle.current_tree(conn, table, last_id, bytes(last_ck))
            seq = int(get_meta(conn, table, "checkpoint_seq", 0) or 0) + 1
            if get_meta(conn, table, SIGNER_META) is None:
                # The first checkpoint pins its signer: later verifications without a key
                # accept only checkpoints this key signed (never the key a file carries).
                conn.execute("INSERT OR REPLACE INTO __audit_meta(tbl, key, value) "
                             "VALUES (?, ?, ?)", (table, SIGNER_META,
                                                  f"ed25519:{pub.hex()}" if pub is not None
                                                  else f"hmac-sha256:{kid}"))
            conn.execute("INSERT OR REPLACE INTO __audit_meta(tbl, key, value) "
                         "VALUES (?, 'checkpoint_seq', ?)", (table, seq))
            cp = Checkpoint(table=table, database_id=str(db_id), seq=seq, event_id=last_id,
                            checksum=bytes(last_ck), count=last_id - anc.id,
                            head_ts_us=last_ts,
                            created_us=time.time_ns() // 1000 if now_us is None else now_us,
                            anchor_id=anc.id, algorithm=algorithm, key_id=kid,
                            public_key=pub)
            if tree is not None:
                cp = replace(cp, tree_size=tree[0], root_hash=merkle.root(tree[1]),
                             frontier=tree[1])
            cp = _sign(cp, signing_key)
            # The latest signed head, kept beside the log so reports can show it; it is
            # public (the signature, never the key) and verification never trusts it.
            conn.execute("INSERT OR REPLACE INTO __audit_meta(tbl, key, value) "
                         "VALUES (?, 'last_checkpoint', ?)", (table, cp.to_text()))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except apsw.Error as exc:
        raise translate(exc) from None
    return cp
