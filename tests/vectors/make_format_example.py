"""Print the worked example of docs/FORMAT.md: a real encrypted database, made by the code.

    .venv/bin/python tests/vectors/make_format_example.py > /tmp/example.md

tests/test_encryption_format.py parses the hex blocks of docs/FORMAT.md and checks that
they decode with the documented key, so the document cannot drift from the code.
"""
import os
import sys
import tempfile

import apsw

from heliosdb import crypto
from heliosdb.crypto import format as fmt


def hexdump(data: bytes, base: int = 0) -> str:
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i:i + 16]
        lines.append(f"{base + i:08x}  {chunk.hex(' ')}")
    return "\n".join(lines)


def main() -> None:
    key = bytes(range(32))
    d = tempfile.mkdtemp()
    path = os.path.join(d, "example.db")
    c = crypto.open_connection(path, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE,
                               uri=False, key=key, encryption=None)
    c.execute("pragma page_size=512")
    c.execute("create table t(secret text)")
    c.execute("insert into t values('attack at dawn')")
    c.close()
    raw = open(path, "rb").read()
    h = fmt.read_header(raw[:fmt.HEADER_SIZE])
    out = sys.stdout
    out.write(f"key (raw, hex): {key.hex()}\n\n")
    out.write(f"file size: {len(raw)} bytes = 4096-byte header + {(len(raw) - 4096) // 512} pages of 512\n\n")
    out.write("header, bytes 0..255 (the rest of the 4096 bytes are zero):\n\n```\n")
    out.write(hexdump(raw[:256]) + "\n```\n\n")
    out.write(f"file id {h.file_id.hex()}, page size {h.page_size}, "
              f"encryptions {h.counter}, slots {len(h.slots)}\n\n")
    out.write("page 1 as stored (file offset 4096):\n\n```\n")
    out.write(hexdump(raw[4096:4096 + 512], 4096) + "\n```\n")


if __name__ == "__main__":
    main()
