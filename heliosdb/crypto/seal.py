"""Sealed WAL frame and rollback-journal checksums (header version 2), in pure Python.

SQLite computes each WAL frame's checksum and each rollback-journal record's checksum
over the plaintext page. Stored as they are, they let anyone with the file test guesses
of a page without the key. The C shim (``csrc/vfs.c``, "Checksum sealing") stores them
XORed with a keystream and opens them on read; this module computes the same keystream
for the offline verifier (``verify.py``) and the tests::

    Kw = HMAC-SHA256(DEK, "HeliosDB WAL checksum seal v2" || file id)
    Kj = HMAC-SHA256(DEK, "HeliosDB journal checksum seal v2" || file id)
    WAL frame header at offset h:   ks = AES-256(Kw, be64(h) || salt1 || salt2)[0:8]
    journal checksum at offset c:   ks = AES-256(Kj, be32(c mod 2^32) || nonce)[0:4]
                                    (nonce: the GCM nonce of that record's page image)
"""
from __future__ import annotations

import hashlib
import hmac
import struct
import sys
from array import array
from typing import Tuple

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["wal_keystream", "journal_keystream", "WAL_LABEL", "JOURNAL_LABEL",
           "wal_checksum", "journal_checksum"]

WAL_LABEL = b"HeliosDB WAL checksum seal v2"
JOURNAL_LABEL = b"HeliosDB journal checksum seal v2"


def _block(dek: bytes, file_id: bytes, label: bytes, block: bytes) -> bytes:
    k = hmac.new(bytes(dek), label + bytes(file_id), hashlib.sha256).digest()
    enc = Cipher(algorithms.AES(k), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def wal_keystream(dek: bytes, file_id: bytes, frame_offset: int, salts: bytes) -> bytes:
    """The 8 bytes XORed into the checksum of the WAL frame whose header is at
    ``frame_offset``; ``salts`` = the frame header's bytes 8..15."""
    return _block(dek, file_id, WAL_LABEL, struct.pack(">Q", frame_offset) + bytes(salts))[:8]


def journal_keystream(dek: bytes, file_id: bytes, cksum_offset: int, nonce: bytes) -> bytes:
    """The 4 bytes XORed into the journal record checksum at ``cksum_offset``; ``nonce``
    is the 12-byte GCM nonce of the record's page image."""
    return _block(dek, file_id, JOURNAL_LABEL,
                  struct.pack(">I", cksum_offset & 0xFFFFFFFF) + bytes(nonce))[:4]


# SQLite's own checksums, for the offline verifier and for tests and bench/leaks.py that
# recompute them over candidate plaintext pages (one copy of each).
def wal_checksum(data: bytes, big: bool, s1: int, s2: int) -> Tuple[int, int]:
    """SQLite's WAL checksum (``walChecksumBytes``) over ``data``, continued from
    ``(s1, s2)``; ``big``: the WAL header's big-endian flag."""
    words = array("I")
    words.frombytes(data)
    if big != (sys.byteorder == "big"):
        words.byteswap()
    m = 0xFFFFFFFF
    it = iter(words)
    for a in it:
        b = next(it)
        s1 = (s1 + a + s2) & m
        s2 = (s2 + b + s1) & m
    return s1, s2


def journal_checksum(init: int, page: bytes) -> int:
    """SQLite's rollback-journal record checksum (``pager_cksum``): the header's nonce plus
    every 200th byte of the page, counted from its end."""
    c, i = init, len(page) - 200
    while i > 0:
        c += page[i]
        i -= 200
    return c & 0xFFFFFFFF
