"""``python -m heliosdb demo``: an end-to-end tour on a new encrypted, audited database.

Every step prints what it does and what came back; nothing is canned. The database lives
in a fresh temporary folder (or ``--dir``), so the demo can be run any number of times.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from typing import Optional, Sequence

import heliosdb
import heliosdb.audit

MARKER = "Ada Lovelace"  # plaintext that must never appear in any file on disk


def _step(title: str) -> None:
    print(f"\n== {title}")


def _hexdump(data: bytes, offset: int = 0, width: int = 16) -> str:
    lines = []
    for i in range(0, len(data), width):
        chunk = data[i:i + width]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset + i:08x}  {hexpart:<{width * 3}} |{text}|")
    return "\n".join(lines)


def run(directory: str) -> int:
    """Run the demo in ``directory``; return the process exit code."""
    path = os.path.join(directory, "clinic.db")
    passphrase = "correct horse battery staple"

    _step("1. Create an encrypted, audited database (config preset 'hipaa')")
    conn = heliosdb.connect(path, key=passphrase, config="hipaa", audit_user="alice",
                            audit_context={"client_ip": "10.0.0.7",
                                           "application_name": "demo"})
    conn.execute("CREATE TABLE patients(id INTEGER PRIMARY KEY, name TEXT, diagnosis TEXT)")
    with conn:  # commits on success, like sqlite3
        conn.executemany("INSERT INTO patients(name, diagnosis) VALUES (?, ?)", [
            (MARKER, "hypertension"), ("Grace Hopper", "healthy"), ("Alan Turing", "flu")])
        conn.execute("UPDATE patients SET diagnosis = ? WHERE name = ?", ("recovered",
                                                                           "Alan Turing"))
    rows = conn.execute("SELECT id, name, diagnosis FROM patients ORDER BY id").fetchall()
    for row in rows:
        print("  ", row)
    info = conn.storage_info()
    print(f"   storage: encrypted={info['encryption_enabled']} "
          f"algorithm={info['encryption_algorithm']} kdf={info['kdf']} "
          f"page_size={info['page_size']} reserve_bytes={info['reserve_bytes']}")

    _step("2. The audit log cannot be edited through SQL")
    try:
        conn.execute("DELETE FROM __audit_log")
    except heliosdb.DatabaseError as exc:
        print(f"   DELETE FROM __audit_log -> {type(exc).__name__}: {exc}")
    conn.close()

    _step("3. The file on disk holds no plaintext")
    found = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        hit = MARKER.encode() in data or b"SQLite format 3" in data
        found.append(hit)
        print(f"   {name}: {len(data)} bytes, plaintext marker found: {hit}")
    with open(path, "rb") as f:
        head = f.read(64)
    print(_hexdump(head))

    _step("4. Wrong key and missing key are clear errors")
    for label, kwargs in (("wrong key", {"key": "not the passphrase"}), ("no key", {})):
        try:
            heliosdb.connect(path, **kwargs)
        except heliosdb.DatabaseError as exc:
            print(f"   {label}: {type(exc).__name__}: {exc}")

    _step("5. Reopen with the right key: query, read the audit trail, verify the chain")
    conn = heliosdb.connect(path, key=passphrase, config="hipaa", audit_user="bob")
    count = conn.execute("SELECT count(*) FROM patients").fetchone()[0]
    print(f"   patients: {count}")
    for ev in conn.audit.query().order("asc").all():
        print(f"   #{ev.id:<3} {ev.timestamp}  {ev.user:<6} {ev.operation:<13} "
              f"target={ev.target}  rows={ev.affected_rows}  success={bool(ev.success)}")
    denied = conn.audit.query().success(False).count()
    print(f"   failed or denied attempts on record: {denied}")
    report = conn.audit.verify()
    print(f"   verify: ok={report.ok} events_checked={report.events_checked}")
    conn.close()

    _step("6. Someone with the key edits the log behind heliosdb's back")
    import apsw

    from heliosdb.crypto import open_connection

    raw = open_connection(path, flags=apsw.SQLITE_OPEN_READWRITE, uri=False,
                          key=passphrase, encryption=None)
    raw.execute("UPDATE __audit_log SET user = 'mallory' WHERE operation = 'UPDATE'")
    raw.close()
    tampered = heliosdb.audit.verify(path, key=passphrase)
    print(f"   verify: ok={tampered.ok} fault={tampered.fault} "
          f"first_bad_id={tampered.first_bad_id}")
    print(f"   {tampered.message}")
    ok = report.ok and not tampered.ok and tampered.fault == "modified" and not any(found)
    print("\nDemo finished:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``heliosdb demo``."""
    parser = argparse.ArgumentParser(prog="heliosdb demo", description=__doc__)
    parser.add_argument("--dir", help="folder for the demo database (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args(argv)
    directory = args.dir or tempfile.mkdtemp(prefix="heliosdb-demo-")
    os.makedirs(directory, exist_ok=True)
    print(f"heliosdb {heliosdb.version} on SQLite {heliosdb.sqlite_version}; "
          f"native extension: {heliosdb.native_available()}; folder: {directory}")
    try:
        return run(directory)
    finally:
        if not args.dir and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
