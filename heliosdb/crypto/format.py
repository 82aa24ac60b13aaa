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

from .pages import FORMAT_VERSION

__all__ = [
    "MAGIC", "HEADER_SIZE", "RESERVE_BYTES", "CIPHER_AES_256_GCM", "Slot", "Header",
    "key_check_value", "new_header", "is_encrypted_file", "read_header",
]

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

SLOT_EMPTY, SLOT_RAW, SLOT_PASSPHRASE = 0, 1, 2
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

    def params_bytes(self) -> bytes:
        """The first 32 bytes of the slot: kind, KDF and its parameters, salt."""
        return struct.pack(">BBHIII", self.kind, self.kdf, 0, self.time_cost,
                           self.memory_kib, self.parallelism) + self.salt

    def to_bytes(self) -> bytes:
        """The 128 bytes of the slot."""
        raw = self.params_bytes() + self.nonce + self.wrapped
        return raw + bytes(SLOT_SIZE - len(raw))

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Slot":
        """Parse 128 slot bytes."""
        kind, kdf, _, t, m, p = struct.unpack(">BBHIII", raw[:16])
        return cls(kind, kdf, t, m, p, bytes(raw[16:32]), bytes(raw[32:44]), bytes(raw[44:92]))

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

    def unwrap(self, index: int, kek: bytes) -> Optional[bytearray]:
        """The DEK from slot ``index`` under ``kek``, or None when the key is wrong."""
        slot = self.slots[index]
        try:
            dek = bytearray(AESGCM(kek).decrypt(slot.nonce, slot.wrapped,
                                                self.slot_aad(index, slot)))
        except InvalidTag:
            return None
        if not hmac.compare_digest(key_check_value(dek, self.file_id), self.kcv):
            return None
        return dek


def key_check_value(dek: bytes | bytearray, file_id: bytes) -> bytes:
    """HMAC-SHA256 of the file id under the DEK: proves an unwrapped DEK is this file's."""
    return hmac.new(bytes(dek), b"HeliosDB key check v1" + file_id, hashlib.sha256).digest()


def new_header(dek: bytes | bytearray, page_size: int = 4096, generation: int = 1) -> Header:
    """A header for a new file (no slots yet; add them with :meth:`Header.wrap`)."""
    fid = os.urandom(16)
    return Header(FORMAT_VERSION, HEADER_SIZE, CIPHER_AES_256_GCM, RESERVE_BYTES, fid,
                  page_size, 0, 0, key_check_value(dek, fid), generation, [],
                  int(time.time()))


def is_encrypted_file(prefix: bytes) -> bool:
    """True when ``prefix`` (the first bytes of a file) starts with the HeliosDB magic."""
    return prefix[:len(MAGIC)] == MAGIC


def read_header(raw: bytes) -> Header:
    """Parse a header; raises ValueError for anything that is not a valid v1 header."""
    if len(raw) < HEADER_SIZE or not is_encrypted_file(raw):
        raise ValueError("not a HeliosDB encrypted file (bad magic or short header)")
    version, hsize, cipher, reserve = struct.unpack(">IIII", raw[16:32])
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported HeliosDB format version {version}")
    if hsize != HEADER_SIZE or cipher != CIPHER_AES_256_GCM:
        raise ValueError(f"unsupported header size {hsize} or cipher {cipher}")
    page_size, flags, counter = struct.unpack(">IIQ", raw[48:64])
    generation, nslots = struct.unpack(">II", raw[96:104])
    if nslots > MAX_SLOTS:
        raise ValueError(f"corrupt header: {nslots} key slots")
    slots = [Slot.from_bytes(raw[SLOTS_OFFSET + i * SLOT_SIZE:SLOTS_OFFSET + (i + 1) * SLOT_SIZE])
             for i in range(nslots)]
    (key_created,) = struct.unpack(">Q", raw[104:112])
    return Header(version, hsize, cipher, reserve, bytes(raw[32:48]), page_size, flags,
                  counter, bytes(raw[64:96]), generation, slots, key_created)
