"""The HeliosDB encrypted file header: the 4096 bytes in front of SQLite's page 1.

Layout (all integers big-endian; see docs/FORMAT.md for a worked example)::

    0    16  magic  b"HeliosDB\\0enc\\0\\0\\0\\0"
    16   4   format version (1)
    20   4   header size (4096)
    24   4   cipher (1 = AES-256-GCM pages, 12-byte nonce + 16-byte tag in reserved bytes)
    28   4   reserved bytes per page requested at creation (32)
    32   16  file id (random; bound into every page's AAD)
    48   4   page size            (mutable: kept up to date by the VFS)
    52   4   flags (0)
    56   8   encryptions under the current data key (mutable: the VFS adds to it)
    64   32  key-check value: HMAC-SHA256(DEK, b"HeliosDB key check v1" || file id)
    96   4   data-key generation (1; rotation increments it)
    100  4   number of key slots (<= 8)
    104  8   time the current data key was made, Unix seconds (0: unknown, older files)
    112  16  zero
    128  8 x 128  key slots

Key slot (128 bytes)::

    0   1   kind: 0 empty, 1 raw 256-bit key, 2 passphrase
    1   1   KDF: 1 HKDF-SHA256 (raw keys), 2 Argon2id v1.3 (passphrases)
    2   2   zero
    4   4   Argon2 time cost      (0 for HKDF)
    8   4   Argon2 memory, KiB    (0 for HKDF)
    12  4   Argon2 parallelism    (0 for HKDF)
    16  16  salt
    32  12  wrap nonce
    44  48  AES-256-GCM(KEK, nonce, DEK, aad = header[0:48] || u8(slot index) || slot[0:32])
    92  36  zero

The immutable fields (bytes 0..47) and each slot's KDF parameters are authenticated by the
slot's GCM tag, so a wrong key, a changed parameter and a damaged header all fail the
unwrap; the key-check value then confirms the unwrapped DEK belongs to this file.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass, field
from typing import List, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import CorruptHeaderError, KeySlotError
from .keys import check_kdf_params

__all__ = [
    "MAGIC", "HEADER_SIZE", "RESERVE_BYTES", "CIPHER_AES_256_GCM", "Slot", "Header",
    "key_check_value", "new_header", "is_encrypted_file", "read_header", "HeaderFieldError",
    "HEADER_VERSION", "SUPPORTED_VERSIONS", "check_slot", "corrupt",
]

#: Version of the header written for new files. 1: the original format. 2: the
#: key-check value also covers the flags and the data-key generation, each slot
#: carries a digest of its bytes (checked before any key derivation), and the shim
#: seals WAL frame and rollback-journal checksums (docs/FORMAT.md). Both open.
HEADER_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

MAGIC = b"HeliosDB\x00enc\x00\x00\x00\x00"
HEADER_SIZE = 4096
RESERVE_BYTES = 32
CIPHER_AES_256_GCM = 1
MAX_SLOTS = 8
SLOT_SIZE = 128
SLOTS_OFFSET = 128
OFF_PAGE_SIZE = 48
OFF_COUNTER = 56
OFF_NSLOTS = 100
OFF_KEY_CREATED = 104

OFF_FLAGS = 52
OFF_GENERATION = 96
SLOT_OFF_DIGEST = 92

SLOT_EMPTY, SLOT_RAW, SLOT_PASSPHRASE = 0, 1, 2


class HeaderFieldError(ValueError):
    """A header that does not parse; ``field`` names the offending field."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def corrupt(path: str, exc: HeaderFieldError) -> CorruptHeaderError:
    """The HeliosDB error for a header of ``path`` that does not parse."""
    return CorruptHeaderError(f"{path}: damaged HeliosDB header: {exc}", file=path,
                              field=exc.field)
KDF_HKDF_SHA256, KDF_ARGON2ID = 1, 2


@dataclass
class Slot:
    """One key slot: the DEK wrapped under a key-encryption key."""

    kind: int
    kdf: int
    time_cost: int
    memory_kib: int
    parallelism: int
    salt: bytes
    nonce: bytes = b""
    wrapped: bytes = b""
    reserved: int = 0      #: slot bytes 2..3 (must be 0)
    digest: bytes = b""    #: slot bytes 92..107 in version 2 (zero in version 1)
    tail: bytes = b""      #: slot bytes 108..127 (zero)

    def params_bytes(self) -> bytes:
        """The first 32 bytes of the slot: kind, KDF and its parameters, salt."""
        return struct.pack(">BBHIII", self.kind, self.kdf, 0, self.time_cost,
                           self.memory_kib, self.parallelism) + self.salt

    def to_bytes(self) -> bytes:
        """The 128 bytes of the slot."""
        raw = self.params_bytes() + self.nonce + self.wrapped + self.digest
        return raw + bytes(SLOT_SIZE - len(raw))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Slot":
        """Parse 128 slot bytes."""
        kind, kdf, reserved, t, m, p = struct.unpack(">BBHIII", raw[:16])
        return cls(kind, kdf, t, m, p, bytes(raw[16:32]), bytes(raw[32:44]), bytes(raw[44:92]),
                   reserved, bytes(raw[92:108]), bytes(raw[108:128]))

    def describe(self) -> dict:
        """Public description (no secret material)."""
        if self.kind == SLOT_EMPTY:
            return {"kind": "empty"}
        if self.kind == SLOT_PASSPHRASE:
            return {"kind": "passphrase", "kdf": "argon2id", "time_cost": self.time_cost,
                    "memory_kib": self.memory_kib, "parallelism": self.parallelism}
        return {"kind": "raw", "kdf": "hkdf-sha256"}


@dataclass
class Header:
    """A parsed HeliosDB header."""

    version: int
    header_size: int
    cipher: int
    reserve: int
    file_id: bytes
    page_size: int
    flags: int
    counter: int
    kcv: bytes
    generation: int
    slots: List[Slot] = field(default_factory=list)
    key_created: int = 0

    def fixed_bytes(self) -> bytes:
        """Bytes 0..47: the immutable identity bound into every slot's AAD."""
        return MAGIC + struct.pack(">IIII", self.version, self.header_size, self.cipher,
                                   self.reserve) + self.file_id

    def kcv_input(self) -> bytes:
        """What the key-check value authenticates (besides the DEK itself)."""
        if self.version == 1:
            return b"HeliosDB key check v1" + self.file_id
        return (b"HeliosDB key check v2" + self.fixed_bytes()
                + struct.pack(">II", self.flags, self.generation))

    def key_check(self, dek: bytes | bytearray) -> bytes:
        """The key-check value of ``dek`` for this header (version 1: :func:`key_check_value`)."""
        return hmac.new(bytes(dek), self.kcv_input(), hashlib.sha256).digest()

    def slot_digest(self, index: int, slot: Slot) -> bytes:
        """Version 2: SHA-256 (16 bytes) over the identity and the slot's bytes 0..91.
        Not a MAC (anyone can recompute it): it catches a damaged slot before a key
        derivation runs with damaged parameters; the bounds of crypto.keys cap what a
        deliberately edited one can cost, and the slot's GCM tag rejects it."""
        return hashlib.sha256(b"HeliosDB slot digest v2" + self.fixed_bytes()
                              + bytes([index]) + slot.params_bytes() + slot.nonce
                              + slot.wrapped).digest()[:16]

    def slot_aad(self, index: int, slot: Slot) -> bytes:
        """Additional data authenticated with the wrapped DEK of slot ``index``."""
        return self.fixed_bytes() + bytes([index]) + slot.params_bytes()

    def to_bytes(self) -> bytes:
        """The 4096 header bytes."""
        head = self.fixed_bytes() + struct.pack(">IIQ", self.page_size, self.flags, self.counter)
        head += self.kcv + struct.pack(">IIQ", self.generation, len(self.slots),
                                       self.key_created)
        head += bytes(SLOTS_OFFSET - len(head))
        for s in self.slots:
            head += s.to_bytes()
        return head + bytes(HEADER_SIZE - len(head))

    def wrap(self, index: int, slot: Slot, kek: bytes, dek: bytes) -> None:
        """Fill ``slot`` (at ``index``) with the DEK wrapped under ``kek``."""
        slot.nonce = os.urandom(12)
        slot.wrapped = AESGCM(kek).encrypt(slot.nonce, bytes(dek), self.slot_aad(index, slot))
        slot.digest = self.slot_digest(index, slot) if self.version >= 2 else b""

    def unwrap(self, index: int, kek: bytes) -> bytearray:
        """The DEK from slot ``index`` under ``kek``.

        Raises :class:`heliosdb.errors.KeySlotError` when the slot does not open under
        ``kek`` (wrong key or a corrupted slot: AES-GCM cannot tell which), and
        HeaderFieldError when the key is right but the key-check value does not match.
        """
        slot = self.slots[index]
        try:
            dek = bytearray(AESGCM(kek).decrypt(slot.nonce, slot.wrapped,
                                                self.slot_aad(index, slot)))
        except InvalidTag:
            raise KeySlotError(f"wrong key or corrupted header: key slot {index} does not "
                               f"open under this key", slot=index) from None
        if not hmac.compare_digest(self.key_check(dek), self.kcv):
            # The slot's tag passed, so the key is right: the header is damaged (the
            # key-check value, or in version 2 the flags or generation it covers).
            dek[:] = bytes(len(dek))
            raise HeaderFieldError("the key-check value does not match the unwrapped data "
                                   "key (offsets 52, 64..99 damaged)", "key_check")
        return dek


def key_check_value(dek: bytes | bytearray, file_id: bytes) -> bytes:
    """Version 1: HMAC-SHA256 of the file id under the DEK: proves an unwrapped DEK is
    this file's. Version 2 also covers the header identity, flags and generation
    (:meth:`Header.key_check`)."""
    return hmac.new(bytes(dek), b"HeliosDB key check v1" + file_id, hashlib.sha256).digest()


def new_header(dek: bytes | bytearray, page_size: int = 4096, generation: int = 1) -> Header:
    """A header for a new file (no slots yet; add them with :meth:`Header.wrap`)."""
    fid = os.urandom(16)
    h = Header(HEADER_VERSION, HEADER_SIZE, CIPHER_AES_256_GCM, RESERVE_BYTES, fid,
               page_size, 0, 0, b"", generation, [], int(time.time()))
    h.kcv = h.key_check(dek)
    return h


def is_encrypted_file(prefix: bytes) -> bool:
    """True when ``prefix`` (the first bytes of a file) starts with the HeliosDB magic."""
    return prefix[:len(MAGIC)] == MAGIC


def read_header(raw: bytes) -> Header:
    """Parse a header; raises :class:`HeaderFieldError` (a ValueError naming the field)
    for anything that is not a valid version 1 or 2 header. Slots are checked one by one
    by :func:`check_slot`, before their key is derived."""
    if len(raw) < HEADER_SIZE or not is_encrypted_file(raw):
        raise HeaderFieldError("not a HeliosDB encrypted file (bad magic or short header)",
                               "magic")
    version, hsize, cipher, reserve = struct.unpack(">IIII", raw[16:32])
    if version not in SUPPORTED_VERSIONS:
        raise HeaderFieldError(f"unsupported HeliosDB format version {version}", "version")
    if hsize != HEADER_SIZE:
        raise HeaderFieldError(f"unsupported header size {hsize}", "header_size")
    if cipher != CIPHER_AES_256_GCM:
        raise HeaderFieldError(f"unsupported cipher {cipher}", "cipher")
    if reserve != RESERVE_BYTES:
        raise HeaderFieldError(f"reserved bytes per page {reserve}, expected "
                               f"{RESERVE_BYTES}", "reserve")
    page_size, flags, counter = struct.unpack(">IIQ", raw[48:64])
    if flags != 0:
        raise HeaderFieldError(f"flags {flags:#x}: no flag is defined", "flags")
    generation, nslots = struct.unpack(">II", raw[96:104])
    if generation == 0:
        raise HeaderFieldError("data-key generation 0 (the first key is 1)", "generation")
    if nslots > MAX_SLOTS:
        raise HeaderFieldError(f"{nslots} key slots (at most {MAX_SLOTS})", "slot_count")
    slots = [Slot.from_bytes(raw[SLOTS_OFFSET + i * SLOT_SIZE:SLOTS_OFFSET + (i + 1) * SLOT_SIZE])
             for i in range(nslots)]
    (key_created,) = struct.unpack(">Q", raw[104:112])
    return Header(version, hsize, cipher, reserve, bytes(raw[32:48]), page_size, flags,
                  counter, bytes(raw[64:96]), generation, slots, key_created)


def check_slot(header: Header, index: int, path: str) -> None:
    """Raise CorruptHeaderError (naming ``path``, the slot and the field) unless slot
    ``index`` is well formed: an erased slot is all zero; a used one has a known kind
    with its KDF, zero bytes 2..3 and 108..127, KDF parameters within the bounds of
    :mod:`heliosdb.crypto.keys` and, in version 2, a matching digest. Runs before any
    key derivation."""
    slot = header.slots[index]

    def bad(field: str, why: str) -> CorruptHeaderError:
        return CorruptHeaderError(f"{path}: key slot {index}: damaged HeliosDB header: "
                                  f"{field} {why}", file=path, field=field)

    if slot.kind == SLOT_EMPTY:
        if any(slot.to_bytes()) or slot.reserved or any(slot.tail):
            raise bad("kind", "is 0 (erased) but the slot is not all zero")
        return
    if slot.kind not in (SLOT_RAW, SLOT_PASSPHRASE):
        raise bad("kind", f"is {slot.kind} (0 erased, 1 raw key, 2 passphrase)")
    want = KDF_HKDF_SHA256 if slot.kind == SLOT_RAW else KDF_ARGON2ID
    if slot.kdf != want:
        raise bad("kdf", f"is {slot.kdf}, a slot of kind {slot.kind} uses {want}")
    if slot.reserved:
        raise bad("reserved", f"(bytes 2..3) is {slot.reserved}, must be 0")
    if any(slot.tail):
        raise bad("reserved", "(bytes 108..127) is not zero")
    if header.version >= 2:
        if not hmac.compare_digest(slot.digest, header.slot_digest(index, slot)):
            raise bad("digest", "does not match the slot's bytes")
    elif any(slot.digest):
        raise bad("reserved", "(bytes 92..107) is not zero in a version 1 header")
    check_kdf_params(slot.kdf, slot.time_cost, slot.memory_kib, slot.parallelism,
                     file=path, slot=index)
