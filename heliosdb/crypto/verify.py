"""``verify_encryption``: authenticate every page of an encrypted database, offline.

Uses only the pure-Python transform (:mod:`heliosdb.crypto.pages`) and the header code,
never the C shim, so it is a second opinion on what the shim wrote. It checks:

* every page of the main file (page 1 at offset 4096; a trailing partial page is bad);
* every frame of the current WAL generation (``<path>-wal``, frames whose salts match
  the WAL header), in domain 2 bound to the frame's page number, and the WAL checksum
  chain over the decrypted pages as SQLite does at recovery. A run of frames at the end
  of the log that fails (a torn or uncommitted tail, which SQLite ignores too) is
  reported in ``wal_tail_ignored``; a frame that fails while a later frame still
  continues the log is a bad page (SQLite would silently lose the frames after it).

It reads the files without taking SQLite's locks: verify a quiescent database (or
expect pages written meanwhile to show up as bad). Safe to call while this process has
connections open (descriptors are parked, never closed under SQLite's locks).
"""
from __future__ import annotations

import dataclasses
import os
import struct
import sys
from typing import Any, Callable, List, Optional, Tuple

from . import _files, seal
from . import format as fmt
from . import pages
from .keys import KeyLike

__all__ = ["VerifyReport", "verify_encryption", "verify_pages", "main"]

WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
FRAME_HEADER = 24


@dataclasses.dataclass
class VerifyReport:
    """Result of :func:`verify_encryption`. ``bad_pages``: (file, page, reason)."""

    path: str
    ok: bool = True
    pages_checked: int = 0
    page_size: int = 0
    bad_pages: List[Tuple[str, int, str]] = dataclasses.field(default_factory=list)
    wal_frames_checked: int = 0
    wal_tail_ignored: int = 0
    wal_stale_frames: int = 0
    slack_pages: int = 0

    def summary(self) -> str:
        head = "OK" if self.ok else f"FAILED: {len(self.bad_pages)} bad page(s)"
        text = (f"{self.path}: {head}; {self.pages_checked} pages checked "
                f"({self.wal_frames_checked} WAL frames), page size {self.page_size}")
        for f, pg, why in self.bad_pages[:50]:
            text += f"\n  {f}: page {pg}: {why}"
        if len(self.bad_pages) > 50:
            text += f"\n  ... and {len(self.bad_pages) - 50} more"
        return text


def verify_encryption(path: str, key: KeyLike,
                      progress: Optional[Callable[[int, int], Any]] = None) -> VerifyReport:
    """Authenticate every page of ``path`` (and of its WAL) under ``key``.

    Raises WrongKeyError when ``key`` opens no key slot (nothing can be checked);
    otherwise returns a :class:`VerifyReport` naming every bad page.
    """
    from . import unlock_file

    header, dek = unlock_file(path, key, "verify_encryption")
    try:
        return verify_pages(path, dek, header.file_id, header.page_size, progress)
    finally:
        dek[:] = bytes(len(dek))


def _page1_size(fd: int, dek: bytes, fid: bytes, hinted: int) -> Tuple[int, Optional[bytes]]:
    sizes = [hinted] + [512 << i for i in range(8) if 512 << i != hinted]
    for size in sizes:
        try:
            pages._check_size(size)
        except ValueError:
            continue
        raw = os.pread(fd, size, fmt.HEADER_SIZE)
        if len(raw) < size:
            continue
        try:
            return size, pages.decrypt_page(dek, fid, 1, raw)
        except pages.PageAuthError:
            continue
    return (hinted if hinted >= 512 else 4096), None


def verify_pages(path: str, dek: bytes | bytearray, file_id: bytes, page_size: int = 0,
                 progress: Optional[Callable[[int, int], Any]] = None) -> VerifyReport:
    """:func:`verify_encryption` with the data key given (tests, and rotation checks)."""
    dek = bytes(dek)
    rep = VerifyReport(path)
    wal_path = path + "-wal"
    with _files.reading(path) as fd:
        size = os.fstat(fd).st_size - fmt.HEADER_SIZE
        ps, page1 = _page1_size(fd, dek, file_id, page_size)
        rep.page_size = ps
        n_pages, partial = divmod(max(size, 0), ps)
        db_size = 0
        if page1 is not None:
            (db_size,) = struct.unpack(">I", page1[28:32])
        wal_frames = _wal_frame_count(wal_path, ps)
        # Header version 2 seals the WAL frame checksums (seal.py); 1 keeps them in clear.
        (version,) = struct.unpack(">I", os.pread(fd, 4, 16))
        total = n_pages + (1 if partial else 0) + wal_frames
        done = 0
        for pgno in range(1, n_pages + 1):
            raw = os.pread(fd, ps, fmt.HEADER_SIZE + (pgno - 1) * ps)
            if pgno == 1:
                ok, why = page1 is not None, "failed authentication"
            elif not any(raw) and db_size and pgno > db_size:
                rep.slack_pages += 1  # zero-filled space past the database's end
                ok, why = True, ""
            else:
                try:
                    pages.decrypt_page(dek, file_id, pgno, raw)
                    ok, why = True, ""
                except pages.PageAuthError as exc:
                    ok = False
                    why = "all zeros" if not any(raw) else "failed authentication"
                    del exc
            rep.pages_checked += 1
            if not ok:
                rep.bad_pages.append((path, pgno, why))
            done += 1
            if progress is not None:
                progress(done, total)
        if partial:
            rep.bad_pages.append((path, n_pages + 1, f"partial page: {partial} of {ps} bytes"))
            done += 1
            if progress is not None:
                progress(done, total)
    if wal_frames:
        done = _verify_wal(wal_path, dek, file_id, ps, rep, done, total, progress,
                           sealed=version >= 2)
    if progress is not None and done != total:
        progress(total, total)
    rep.ok = not rep.bad_pages
    return rep


def _wal_frame_count(wal_path: str, ps: int) -> int:
    try:
        size = os.path.getsize(wal_path)
    except OSError:
        return 0
    if size < WAL_HEADER:
        return 0
    return (size - WAL_HEADER) // (FRAME_HEADER + ps)


def _verify_wal(wal_path: str, dek: bytes, fid: bytes, ps: int, rep: VerifyReport,
                done: int, total: int, progress: Optional[Callable[[int, int], Any]],
                sealed: bool = False) -> int:
    with _files.reading(wal_path) as fd:
        hdr = os.pread(fd, WAL_HEADER, 0)
        magic, _ver, wps, _ckpt, salt1, salt2, c1, c2 = struct.unpack(">8I", hdr)
        n = (os.fstat(fd).st_size - WAL_HEADER) // (FRAME_HEADER + ps)
        if magic not in WAL_MAGIC or wps != ps:
            rep.bad_pages.append((wal_path, 0, "WAL header unreadable or page size "
                                  f"{wps} differs from the database's {ps}"))
            return done + n
        big = bool(magic & 1)
        # (index, pgno, auth ok, checksum ok given the previous stored checksum)
        frames = []
        prev = (c1, c2)
        for i in range(n):
            off = WAL_HEADER + i * (FRAME_HEADER + ps)
            fh = os.pread(fd, FRAME_HEADER, off)
            if sealed and len(fh) == FRAME_HEADER:
                ks = seal.wal_keystream(dek, fid, off, fh[8:16])
                fh = fh[:16] + bytes(a ^ b for a, b in zip(fh[16:24], ks))
            pgno, _commit, fs1, fs2, fc1, fc2 = struct.unpack(">6I", fh)
            if (fs1, fs2) != (salt1, salt2):
                rep.wal_stale_frames += 1  # an earlier WAL generation: not in the log
                prev = (fc1, fc2)
                continue
            raw = os.pread(fd, ps, off + FRAME_HEADER)
            try:
                plain = pages.decrypt_page(dek, fid, pgno, raw, pages.DOMAIN_WAL)
                auth = True
            except (pages.PageAuthError, ValueError):
                plain, auth = None, False
            ck = False
            if auth:
                s = seal.wal_checksum(fh[:8], big, *prev)
                ck = seal.wal_checksum(plain, big, *s) == (fc1, fc2)
            frames.append((i, pgno, auth, ck))
            prev = (fc1, fc2)
            rep.wal_frames_checked += 1
            rep.pages_checked += 1
            done += 1
            if progress is not None:
                progress(done, total)
    # A failing frame matters when a later frame still continues the log.
    last_good = max((j for j, f in enumerate(frames) if f[2] and f[3]), default=-1)
    for j, (i, pgno, auth, _ck) in enumerate(frames):
        if auth:
            continue
        if j < last_good:
            rep.bad_pages.append((wal_path, pgno, f"WAL frame {i + 1} failed authentication"))
        else:
            rep.wal_tail_ignored += 1
    return done


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m heliosdb.crypto.verify DB (--key-file F | --key-env VAR |
    --passphrase-env VAR)``: exit 0 when every page authenticates, 1 otherwise, 2 on
    usage or key errors."""
    import argparse

    from ..errors import Error
    from .keys import Key

    ap = argparse.ArgumentParser(prog="python -m heliosdb.crypto.verify")
    ap.add_argument("database")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--key-file")
    g.add_argument("--key-env")
    g.add_argument("--passphrase-env")
    a = ap.parse_args(argv)
    try:
        if a.key_file:
            key = Key.from_file(a.key_file)
        elif a.key_env:
            key = Key.from_env(a.key_env)
        else:
            key = Key.from_passphrase_env(a.passphrase_env)
        with key:
            rep = verify_encryption(a.database, key)
    except (Error, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(rep.summary())
    return 0 if rep.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
