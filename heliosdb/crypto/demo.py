"""A short demonstration of encryption at rest: ``python -m heliosdb.crypto.demo``.

Creates an encrypted database, queries it, reopens it with a wrong key (the clear error)
and with the right one, and shows a hexdump proving the file holds no plaintext.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import apsw

from . import open_connection, storage_info
from .keys import Key
from ..errors import Error

FLAGS = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE


def main(out=sys.stdout) -> int:
    """Run the demonstration; returns 0 on success."""
    d = tempfile.mkdtemp(prefix="heliosdb-demo-")
    path = os.path.join(d, "secrets.db")
    key = Key.from_bytes(os.urandom(32))
    secret = "the launch code is 0000"
    conn = open_connection(path, flags=FLAGS, uri=False, key=key, encryption=None)
    conn.execute("create table notes(body text)")
    conn.execute("insert into notes values(?)", (secret,))
    out.write(f"created {path} (encrypted) and stored: {secret!r}\n")
    out.write(f"query: {conn.execute('select body from notes').fetchall()}\n")
    info = storage_info(conn)
    out.write("storage_info: " + ", ".join(f"{k}={info[k]}" for k in (
        "encryption_algorithm", "kdf", "page_size", "reserve_bytes", "format_version",
        "encryptions_under_current_key")) + "\n")
    conn.close()
    try:
        open_connection(path, flags=FLAGS, uri=False, key=Key.from_bytes(os.urandom(32)),
                        encryption=None)
    except Error as exc:
        out.write(f"wrong key -> {type(exc).__name__}: {exc}\n")
    try:
        open_connection(path, flags=FLAGS, uri=False, key=None, encryption=None)
    except Error as exc:
        out.write(f"no key    -> {type(exc).__name__}: {exc}\n")
    conn = open_connection(path, flags=FLAGS, uri=False, key=key, encryption=None)
    out.write(f"right key -> {conn.execute('select body from notes').fetchall()}\n")
    conn.close()
    raw = open(path, "rb").read()
    line = raw[4096:4096 + 16]
    out.write(f"page 1 on disk: 00001000  {line.hex(' ')}  (not 'SQLite format 3')\n")
    found = secret.encode() in raw
    out.write(f"plaintext {secret!r} in the file: {found}\n")
    key.close()
    shutil.rmtree(d, ignore_errors=True)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
