"""Offline access to an encrypted database with the pure-Python transform (no VFS).

A second opinion on what the C shim wrote, and the basis of offline tools: every page is
authenticated and decrypted by :mod:`heliosdb.crypto.pages`, independently of ``csrc/``.
"""
from __future__ import annotations

import os
from typing import Iterator, Tuple

from ..errors import CorruptPageError
from . import _files
from . import format as fmt
from . import pages
from .keys import KeyLike

__all__ = ["iter_pages", "decrypt_copy"]


def iter_pages(path: str, key: KeyLike) -> Iterator[Tuple[int, bytes]]:
    """Yield ``(pgno, plaintext)`` for every page of the encrypted database at ``path``.

    Reads the main file only (checkpoint a WAL first). Raises WrongKeyError for a wrong
    key and CorruptPageError naming the first page that fails authentication.
    """
    from . import unlock_file  # the same header logic as open_connection

    header, dek = unlock_file(path, key, "reading pages offline")
    try:
        with _files.reading(path) as fd:
            first = os.pread(fd, header.page_size, fmt.HEADER_SIZE)
            if not first:
                return
            size = header.page_size
            try:
                page1 = pages.decrypt_page(dek, header.file_id, 1, first)
            except (pages.PageAuthError, ValueError):
                page1 = None
                for size in (512 * 2 ** i for i in range(8)):  # a stale size field: probe
                    try:
                        page1 = pages.decrypt_page(dek, header.file_id, 1,
                                                   os.pread(fd, size, fmt.HEADER_SIZE))
                        break
                    except (pages.PageAuthError, ValueError):
                        continue
                if page1 is None:
                    raise CorruptPageError(f"{path}: page 1 failed authentication",
                                           file=path, page=1) from None
            yield 1, page1
            total = (os.fstat(fd).st_size - fmt.HEADER_SIZE) // size
            for pgno in range(2, total + 1):
                stored = os.pread(fd, size, fmt.HEADER_SIZE + (pgno - 1) * size)
                try:
                    yield pgno, pages.decrypt_page(dek, header.file_id, pgno, stored)
                except pages.PageAuthError as exc:
                    raise CorruptPageError(f"{path}: page {pgno}: {exc}", file=path,
                                           page=pgno) from None
    finally:
        dek[:] = bytes(len(dek))


def decrypt_copy(src: str, dst: str, key: KeyLike) -> int:
    """Write a plaintext SQLite copy of the encrypted database ``src`` to ``dst``.

    An explicit, offline operation (the source must not be open for writing). The copy
    keeps 32 reserved bytes per page (zeros), which SQLite reads like any database.
    Returns the number of pages written.
    """
    n = 0
    with open(dst, "xb") as out:
        for _pgno, page in iter_pages(src, key):
            out.write(page)
            n += 1
    return n
