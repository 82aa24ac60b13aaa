"""Made with HeliosDB at 0eee903 (header format version 1, clear WAL/journal checksums)."""
import os, shutil, sys, apsw
import heliosdb
out = sys.argv[1]
KEY = bytes(range(32))
for name, key in (("raw", KEY), ("pass", heliosdb.Key.passphrase("v1 passphrase", profile="test"))):
    p = os.path.join(out, f"{name}.db")
    for suf in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(p + suf): os.remove(p + suf)
    c = heliosdb.connect(p, key=key, isolation_level=None)
    c.execute("pragma journal_mode=wal")
    c.execute("create table t(id integer primary key, v text)")
    c.execute("pragma wal_autocheckpoint=0")
    c.execute("begin")
    for i in range(50): c.execute("insert into t(v) values (?)", (f"row {i}",))
    c.execute("commit")
    c.execute("pragma wal_checkpoint(TRUNCATE)")
    c.execute("begin")
    for i in range(50, 80): c.execute("insert into t(v) values (?)", (f"row {i} " + "x" * 300,))
    c.execute("commit")
    # Keep the -wal: copy the files while the connection is open (frames not checkpointed).
    for suf in ("", "-wal"):
        shutil.copy(p + suf, os.path.join(out, f"{name}.db{suf}.tmp"))
    c.close()
for f in os.listdir(out):
    if not f.endswith(".tmp"): os.remove(os.path.join(out, f))
for f in os.listdir(out):
    os.rename(os.path.join(out, f), os.path.join(out, f[:-4]))
