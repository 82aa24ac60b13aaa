"""Regenerate tests/vectors/page_kat.json (run only when the format version changes).

The vectors freeze format version 1 of the page transform. tests/test_encryption_kat.py
checks that the C shim and heliosdb/crypto/pages.py both reproduce them byte for byte.
"""
import json
import pathlib

from heliosdb.crypto import pages

KEY = bytes(range(32))
FILE_ID = bytes(range(0xA0, 0xB0))
CASES = [  # (page_size, pgno, domain, nonce)
    (512, 1, pages.DOMAIN_MAIN, bytes.fromhex("000102030405060708090a0b")),
    (4096, 7, pages.DOMAIN_MAIN, bytes.fromhex("cafebabefacedbaddecaf888")),
    (1024, 3, pages.DOMAIN_JOURNAL, bytes.fromhex("ffffffffffffffffffffffff")),
    (512, 2, pages.DOMAIN_WAL, bytes.fromhex("0123456789abcdef01234567")),
    (8192, 65536, pages.DOMAIN_MAIN, bytes.fromhex("a5a5a5a5a5a5a5a5a5a5a5a5")),
]


def page_bytes(size: int, pgno: int) -> bytes:
    return bytes((i * 7 + pgno) % 256 for i in range(size))


def main() -> None:
    out = {"format_version": pages.FORMAT_VERSION, "key": KEY.hex(), "file_id": FILE_ID.hex(),
           "vectors": []}
    for size, pgno, domain, nonce in CASES:
        plain = page_bytes(size, pgno)
        out["vectors"].append({
            "page_size": size, "pgno": pgno, "domain": domain, "nonce": nonce.hex(),
            "page": plain.hex(),
            "expected": pages.encrypt_page(KEY, FILE_ID, pgno, plain, nonce, domain).hex(),
        })
    path = pathlib.Path(__file__).with_name("page_kat.json")
    path.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
