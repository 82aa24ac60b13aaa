"""Pure-Python implementation of the page transform of ``csrc/vfs.c``, byte for byte.

Used by the tests (known-answer vectors shared with C), by offline tools and as a second
opinion. It is not a VFS: it transforms one page at a time.

Stored page (``page_size`` bytes; the last 28 are SQLite's reserved bytes)::

    n      = page_size - 28
    aad    = b"HDB1" || file_id (16) || be32(format_version) || u8(domain) || be32(pgno)
    ct,tag = AES-256-GCM(DEK, nonce (12 random bytes), page[0:n], aad)
    stored = ct || nonce || tag

Decrypting returns ``plaintext || 28 zero bytes``, exactly what the C shim hands to
SQLite: SQLite must read back the reserved bytes it wrote (zeros: it never uses them),
because WAL frame checksums cover the whole page.
"""
from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "FORMAT_VERSION", "NONCE_SIZE", "TAG_SIZE", "OVERHEAD", "DOMAIN_MAIN", "DOMAIN_JOURNAL",
    "DOMAIN_WAL", "aad", "encrypt_page", "decrypt_page", "PageAuthError",
]

FORMAT_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
DOMAIN_MAIN = 0      # a page of the main database file
DOMAIN_JOURNAL = 1   # a page image in a rollback journal record
DOMAIN_WAL = 2       # the page of a WAL frame


class PageAuthError(ValueError):
    """The page failed GCM authentication (wrong key, tampered, moved or foreign)."""


def _check_size(page_size: int) -> None:
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise ValueError(f"page size {page_size} is not a power of two in 512..65536")


def aad(file_id: bytes, domain: int, pgno: int) -> bytes:
    """The additional authenticated data binding a page to its file, role and position."""
    if len(file_id) != 16:
        raise ValueError("file_id must be 16 bytes")
    return b"HDB1" + bytes(file_id) + struct.pack(">IBI", FORMAT_VERSION, domain, pgno)


def encrypt_page(dek: bytes | bytearray, file_id: bytes, pgno: int, page: bytes,
                 nonce: bytes, domain: int = DOMAIN_MAIN) -> bytes:
    """Encrypt one page (its last 28 bytes are ignored and replaced by nonce and tag)."""
    _check_size(len(page))
    if len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 12 bytes")
    n = len(page) - OVERHEAD
    sealed = AESGCM(bytes(dek)).encrypt(bytes(nonce), bytes(page[:n]), aad(file_id, domain, pgno))
    return sealed[:n] + bytes(nonce) + sealed[n:]


def decrypt_page(dek: bytes | bytearray, file_id: bytes, pgno: int, stored: bytes,
                 domain: int = DOMAIN_MAIN) -> bytes:
    """Authenticate and decrypt one stored page; raises :class:`PageAuthError`."""
    _check_size(len(stored))
    n = len(stored) - OVERHEAD
    nonce, tag = bytes(stored[n:n + NONCE_SIZE]), bytes(stored[n + NONCE_SIZE:])
    if not any(stored):
        raise PageAuthError(f"page {pgno} is all zeros")
    try:
        plain = AESGCM(bytes(dek)).decrypt(nonce, bytes(stored[:n]) + tag,
                                           aad(file_id, domain, pgno))
    except InvalidTag:
        raise PageAuthError(f"page {pgno} failed authentication") from None
    return plain + bytes(OVERHEAD)
