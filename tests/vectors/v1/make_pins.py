"""The victim of the PIN experiment (issue 23): made with HeliosDB at 0eee903 for the
version-1 fixture, and by tests/test_encryption_checksum_leak.py for version 2."""
import os, shutil, sys
import heliosdb

def open_pins(path, key, pin):
    """The victim's statements; its connection left open, the PIN in the one frame of
    the WAL."""
    c = heliosdb.connect(path, key=key, isolation_level=None)
    c.execute("pragma journal_mode=wal")
    c.execute("pragma wal_autocheckpoint=0")
    c.execute("create table pins(id integer primary key, pin integer)")
    c.execute("pragma wal_checkpoint(TRUNCATE)")
    c.execute("insert into pins values (1, ?)", (pin,))
    return c

def make_pins(path, key, pin):
    """A fresh victim at ``path`` whose -wal, kept as it was while open, survives the
    close."""
    for suf in ("", "-wal", "-shm"):
        if os.path.exists(path + suf):
            os.remove(path + suf)
    c = open_pins(path, key, pin)
    shutil.copy(path + "-wal", path + "-wal.saved")
    c.close()
    os.replace(path + "-wal.saved", path + "-wal")

if __name__ == "__main__":
    make_pins(sys.argv[1], bytes(range(32)), 7351)
