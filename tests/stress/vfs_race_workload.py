"""A multi-threaded workload on encrypted databases, for the VFS shim's race check.

Run by tests/test_vfs_race.py under valgrind's helgrind (``python vfs_race_workload.py
DIR``); it is an ordinary program, so it also runs on its own. Several threads, each
with its own connection, write to two encrypted databases (one in WAL mode, one with a
rollback journal; two writers share each file, so two connections in this process share
one key-registry entry), while a watcher thread asks the shim's registry about both files
(``key_info``) and reads its counters (``stats``) the whole time: every piece of state the
shim shares between threads is written by one thread while another reads it.

It is kept small (helgrind runs a program 50 to 100 times slower): a race shows on the
first unsynchronised pair of accesses, not after many. Prints ``ok`` and the shim's
counters and exits 0 when the workload finished; the race verdict is helgrind's.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import List

from heliosdb import crypto
from heliosdb.crypto import vfs as shim

import apsw

KEY = bytes(range(32))  # raw 32-byte key: no Argon2 stretching under valgrind
FLAGS = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
WRITERS_PER_FILE = 2
TRANSACTIONS = 12


def open_db(path: str) -> apsw.Connection:
    """An encrypted connection through the entry point heliosdb.connect() uses."""
    conn = crypto.open_connection(path, flags=FLAGS, uri=False, key=KEY, encryption=None)
    conn.set_busy_timeout(60_000)
    return conn


def create(path: str, journal_mode: str) -> None:
    """Make the encrypted database with its table, in the given journal mode."""
    conn = open_db(path)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, who TEXT, v BLOB)")
    conn.close()


def writer(path: str, who: str, start: threading.Barrier, errors: List[BaseException]) -> None:
    """Write and read back in small transactions: page 1 is written at every commit and
    re-read (decrypted, as the other writer changed it) at every read transaction."""
    try:
        conn = open_db(path)
        start.wait()
        for i in range(TRANSACTIONS):
            # IMMEDIATE: a deferred transaction that read first cannot wait for the lock
            # when it upgrades (SQLITE_BUSY at once, whatever the busy timeout).
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t(who, v) VALUES (?, ?)", (who, os.urandom(200)))
            conn.execute("COMMIT")
            conn.execute("SELECT count(*) FROM t").fetchall()
        conn.close()
    except BaseException as exc:  # reported by main(), which fails the run
        errors.append(exc)


def watcher(paths: List[str], stop: threading.Event, start: threading.Barrier) -> None:
    """Read the shim's shared state (registry entries, counters) while the writers run."""
    fulls = [shim.full_pathname(p) for p in paths]
    start.wait()
    while not stop.is_set():
        for full in fulls:
            shim.key_info(full)
        shim.stats()


def main(directory: str) -> int:
    """Run the workload in ``directory``; 0 when every writer finished without error."""
    paths = [os.path.join(directory, "wal.db"), os.path.join(directory, "journal.db")]
    create(paths[0], "wal")
    create(paths[1], "delete")
    errors: List[BaseException] = []
    start = threading.Barrier(len(paths) * WRITERS_PER_FILE + 1)
    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(p, f"{i}:{k}", start, errors))
               for i, p in enumerate(paths) for k in range(WRITERS_PER_FILE)]
    watch = threading.Thread(target=watcher, args=(paths, stop, start))
    watch.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watch.join()
    if errors:
        print(f"workload failed: {errors[0]!r}", file=sys.stderr)
        return 1
    expected = TRANSACTIONS * WRITERS_PER_FILE
    for p in paths:
        conn = open_db(p)
        (n,), = conn.execute("SELECT count(*) FROM t").fetchall()
        conn.close()
        if n != expected:
            print(f"workload failed: {p} holds {n} rows, not {expected}", file=sys.stderr)
            return 1
    counters = shim.stats()
    # Proof that the shim did the work: pages sealed and page 1 decrypted again.
    print(f"ok page_encryptions={counters['page_encryptions']} "
          f"page_decryptions={counters['page_decryptions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
