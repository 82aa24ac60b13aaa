"""Failures raise, they are not returned as sentinels, and no error is swallowed
(issue 22 item 5)."""
from __future__ import annotations

import pytest

from helpers.enc import KEY, OTHER_KEY, open_enc, q
from heliosdb import crypto, native
from heliosdb.crypto import format as fmt
from heliosdb.crypto import vfs
from heliosdb.crypto.keys import Key, derive_kek
from heliosdb.errors import KeySlotError, WrongKeyError

needs_native = pytest.mark.skipif(not native.available(), reason="native extension not built")


def _encrypted_file(tmp_path, key=KEY):
    path = tmp_path / "a.db"
    conn = open_enc(path, key)
    q(conn, "create table t(a)")
    conn.close()
    return str(path)


def _kek(header: fmt.Header, index: int, key: Key) -> bytes:
    s = header.slots[index]
    return bytes(derive_kek(key, s.kdf, s.salt, s.time_cost, s.memory_kib, s.parallelism))


# -- Header.unwrap raises one opaque error instead of returning None --------------------------

@needs_native
def test_unwrap_under_a_wrong_key_raises_an_opaque_wrong_key_error(tmp_path):
    header = crypto.read_header(_encrypted_file(tmp_path))
    with pytest.raises(KeySlotError, match="wrong key or corrupted header") as ei:
        header.unwrap(0, _kek(header, 0, Key(OTHER_KEY)))
    assert isinstance(ei.value, WrongKeyError) and ei.value.slot == 0
    assert OTHER_KEY.hex() not in str(ei.value)
    dek = header.unwrap(0, _kek(header, 0, Key(KEY)))
    assert isinstance(dek, bytearray) and len(dek) == 32


@needs_native
def test_unwrap_of_a_damaged_slot_is_the_same_opaque_error(tmp_path):
    header = crypto.read_header(_encrypted_file(tmp_path))
    slot = header.slots[0]
    slot.wrapped = bytes([slot.wrapped[0] ^ 1]) + slot.wrapped[1:]
    with pytest.raises(KeySlotError, match="wrong key or corrupted header"):
        header.unwrap(0, _kek(header, 0, Key(KEY)))


@needs_native
def test_a_wrong_key_at_open_is_the_same_user_error_as_before(tmp_path):
    path = _encrypted_file(tmp_path)
    with pytest.raises(WrongKeyError) as ei:
        open_enc(path, OTHER_KEY)
    # The per-slot error is an internal step: the user still reads the file-level message.
    assert type(ei.value) is WrongKeyError
    assert str(ei.value) == f"{path}: wrong key: the key does not open this encrypted database"


# -- vfs.addref raises; the unlock cache's miss is an explicit contract -----------------------

@needs_native
def test_addref_without_a_registered_key_raises(tmp_path):
    vfs.ensure_loaded()
    full = vfs.full_pathname(str(tmp_path / "never-opened.db"))
    with pytest.raises(LookupError, match="no key of this file id is registered"):
        vfs.addref(full, bytes(16))


@needs_native
def test_unlock_cache_misses_when_the_key_is_no_longer_registered(tmp_path, monkeypatch):
    path = _encrypted_file(tmp_path, "a passphrase")
    header = crypto.read_header(path)
    full = vfs.full_pathname(path)
    key = Key.passphrase("a passphrase", "test")
    conn = open_enc(path, key)
    try:
        users = crypto._unlock_cache[full][2]
        assert crypto._cached_slot(full, header, key) == 0   # a hit takes a reference
        crypto.release_registration(full, True)
        assert crypto._unlock_cache[full][2] == users

        def gone(full_path, file_id):
            raise LookupError(f"no key of this file id is registered for {full_path}")

        # The shim no longer holds the key: a miss (None), and no reference is counted.
        monkeypatch.setattr(vfs, "addref", gone)
        assert crypto._cached_slot(full, header, key) is None
        assert crypto._unlock_cache[full][2] == users
    finally:
        conn.close()


# -- a key operation's failed attempt is never dropped without a trace ------------------------

class _FailingRecorder:
    """The registered recorder, except that appending an event raises ``error``."""

    def __init__(self, real, error: BaseException) -> None:
        self.real, self.error = real, error

    def audit_tables(self, conn, audit_table):
        return self.real.audit_tables(conn, audit_table)

    def append(self, conn, table, **event):
        raise self.error


def _audited_file(tmp_path):
    import heliosdb

    path = str(tmp_path / "audited.db")
    conn = heliosdb.connect(path, key=KEY, config="default", audit_user="alice")
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    return path


@needs_native
def test_a_failed_attempt_the_log_refuses_is_noted_on_the_error(tmp_path, monkeypatch):
    import apsw

    from heliosdb.crypto import rekey
    from heliosdb.errors import EncryptionError

    path = _audited_file(tmp_path)
    monkeypatch.setattr(rekey, "_RECORDER",
                        _FailingRecorder(rekey._RECORDER, apsw.FullError("database or disk is full")))
    with pytest.raises(EncryptionError, match="last key slot") as ei:
        rekey.remove_key_slot(path, KEY, 0, actor="eve")
    notes = getattr(ei.value, "__notes__", [])
    assert len(notes) == 1
    assert "failed KEY_CHANGE attempt could not be recorded in the audit log" in notes[0]
    assert "full" in notes[0]


@needs_native
def test_a_failing_key_event_recorder_is_not_silently_dropped(tmp_path, monkeypatch):
    from heliosdb.crypto import rekey
    from heliosdb.errors import EncryptionError

    path = _audited_file(tmp_path)
    bug = RuntimeError("recorder bug")
    monkeypatch.setattr(rekey, "_RECORDER", _FailingRecorder(rekey._RECORDER, bug))
    with pytest.raises(RuntimeError, match="recorder bug") as ei:
        rekey.remove_key_slot(path, KEY, 0, actor="eve")
    # The operation's own error is kept as the context of the recorder's.
    assert isinstance(ei.value.__context__, EncryptionError)
    assert "last key slot" in str(ei.value.__context__)


# -- @needs: only a missing optional dependency is "not available" ----------------------------

def test_an_import_error_inside_heliosdb_propagates_through_needs():
    from heliosdb.cli.common import needs

    @needs("audit exports")
    def broken():
        from heliosdb.audit import no_such_name  # noqa: F401 - a bug in our own code

    with pytest.raises(ImportError, match="no_such_name") as ei:
        broken()
    assert type(ei.value) is ImportError  # not turned into Unavailable

    @needs("audit exports")
    def missing_module():
        import heliosdb.no_such_module  # noqa: F401

    with pytest.raises(ModuleNotFoundError, match="heliosdb.no_such_module"):
        missing_module()


def test_a_missing_optional_dependency_is_not_available_through_needs():
    from heliosdb.cli.common import EXIT_USAGE, Unavailable, needs

    @needs("parquet exports")
    def direct():
        import heliosdb_test_absent_dependency  # noqa: F401

    with pytest.raises(Unavailable, match="parquet exports is not available: No module named "
                                          "'heliosdb_test_absent_dependency'") as ei:
        direct()
    assert ei.value.code == EXIT_USAGE

    @needs("parquet exports")
    def hinted():
        # As heliosdb.audit.parquet.require_pyarrow says how to install what is missing.
        try:
            import heliosdb_test_absent_dependency  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"Parquet audit datasets need it: pip install it ({exc})") from exc

    with pytest.raises(Unavailable, match="parquet exports is not available: Parquet audit "
                                          "datasets need it"):
        hinted()


# -- a bug behind a broad handler is no longer hidden -----------------------------------------

def test_translate_explains_a_corrupt_error_without_a_connection():
    # explain(None, exc) looked None up in a WeakKeyDictionary: a TypeError that a broad
    # handler in errors.translate hid. Now it answers (no connection: no explanation).
    import apsw

    exc = apsw.CorruptError("database disk image is malformed")
    exc.extendedresult = exc.result = apsw.SQLITE_CORRUPT
    assert crypto.explain(None, exc) is None
