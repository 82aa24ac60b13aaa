"""An encrypted connection cannot copy its data around the encryption through SQL."""
import pytest

import heliosdb

pytestmark = pytest.mark.skipif(not heliosdb.native_available(), reason="needs the C VFS")

KEY = bytes(range(32))


@pytest.mark.parametrize("sql", [
    "VACUUM INTO 'file:{d}/copy.db?vfs=unix'",
    "ATTACH 'file:{d}/side.db?vfs=unix' AS side",
    "ATTACH 'file:{d}/side.db?vfs=unix-none' AS side",
])
def test_uri_naming_another_vfs_is_refused(tmp_path, sql):
    c = heliosdb.connect(f"file:{tmp_path}/enc.db", uri=True, key=KEY)
    c.execute("CREATE TABLE t(x)")
    c.execute("INSERT INTO t VALUES ('top-secret-marker')")
    c.commit()
    with pytest.raises(heliosdb.DatabaseError):
        c.execute(sql.format(d=tmp_path))
    c.close()
    for name in ("copy.db", "side.db"):
        p = tmp_path / name
        assert not p.exists() or b"top-secret-marker" not in p.read_bytes()


def test_plain_connection_may_attach_with_uri(tmp_path):
    """The guard is for encrypted connections; a plain one keeps sqlite3's behaviour."""
    c = heliosdb.connect(f"file:{tmp_path}/plain.db", uri=True)
    c.execute(f"ATTACH 'file:{tmp_path}/side.db?vfs=unix' AS side")
    c.execute("CREATE TABLE side.t(x)")
    c.close()
    assert (tmp_path / "side.db").exists()
