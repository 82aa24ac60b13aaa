"""Key operations on encrypted databases (issue 12; format in docs/FORMAT.md).

* :func:`change_passphrase`, :func:`add_key_slot`, :func:`remove_key_slot`: rewrap the
  data key (DEK) in one key slot of the 4096-byte header. Instant whatever the size of
  the database; only bytes 100..1151 (slot count and slots) ever change. Crash safety:
  a new slot is written into a free slot and synced before the old one is erased, and
  each write stays inside one 128-byte slot (one disk sector), so a torn or interrupted
  write leaves at least one slot that unwraps the DEK: after a crash during
  :func:`change_passphrase` the old *or* the new passphrase opens the file (both, in the
  window between the two syncs), never neither.
* :func:`rotate_key`: a new DEK (and a new file id), every page re-encrypted. The rotated
  database is built beside the original (``<path>.helios-rotate``) while a connection
  holds the write lock on the original (pages re-sealed in C by ``csrc/rekey.c``, or
  copied with SQLite's backup API), synced, then renamed over the original
  (``os.replace``) and the directory synced. A kill at any moment leaves the original
  (old key) or the rotated file (new key), both complete.
* :func:`encrypt` / :func:`decrypt`: explicit copies between plaintext and encrypted
  files; the target appears whole or not at all.
* :func:`rotation_due`: whether the data key is older than ``rotation_interval_days``
  (the header records when the current DEK was made) or past the nonce warning.

Every operation serialises against the others with an ``flock`` on the database file
(SQLite's own locks are POSIX locks, independent of ``flock`` on Linux and BSD).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import time
import urllib.parse
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apsw

from .. import native
from ..errors import (
    EncryptionError, EncryptionUnavailableError, Error, NotEncryptedError, WrongKeyError,
    translate,
)
from . import _files
from . import format as fmt
from . import vfs as _vfs
from .keys import Key, KeyLike, coerce_key, derive_kek

__all__ = [
    "change_passphrase", "add_key_slot", "remove_key_slot", "list_key_slots",
    "rotate_key", "RotationReport", "rotation_due", "rotation_info", "encrypt", "decrypt",
    "new_recovery_key", "recovery_key",
]

Progress = Optional[Callable[[int, int], Any]]
ROTATE_SUFFIX = ".helios-rotate"
COPY_SUFFIX = ".helios-copy"
_STEP_PAGES = 1024

#: Test hook: called with a phase name at each step of :func:`rotate_key` (the crash
#: tests kill the process at these points). None in production.
_phase_hook: Optional[Callable[[str], Any]] = None


def _phase(name: str) -> None:
    if _phase_hook is not None:
        _phase_hook(name)


# ------------------------------------------------------------------- file locking ---

@contextlib.contextmanager
def _keyop_lock(path: str, write: bool = True) -> Iterator[int]:
    """An exclusive ``flock`` on the database file that ``path`` names *now*.

    A rotation replaces the file: a caller that waited on the old inode's lock finds
    the name pointing at another inode and locks that one instead.
    """
    import fcntl

    for _ in range(100):
        fd = _files.open_fd(path, os.O_RDWR if write else os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st, now = os.fstat(fd), os.stat(path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                break
        except FileNotFoundError:
            pass
        except BaseException:
            _unlock_close(fd)
            raise
        _unlock_close(fd)
    else:  # pragma: no cover
        raise EncryptionError(f"{path}: the file keeps being replaced; try again")
    try:
        yield fd
    finally:
        _unlock_close(fd)


def _unlock_close(fd: int) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
    _files.close_fd(fd)  # parked, not closed, while SQLite has the inode open


def _read_header_fd(path: str, fd: int) -> fmt.Header:
    raw = os.pread(fd, fmt.HEADER_SIZE, 0)
    if not fmt.is_encrypted_file(raw):
        raise NotEncryptedError(f"{path} is not an encrypted HeliosDB database")
    try:
        return fmt.read_header(raw)
    except fmt.HeaderFieldError as exc:
        raise fmt.corrupt(path, exc) from None


def _key(key: KeyLike, what: str = "key", profile: Optional[str] = None) -> Key:
    k = coerce_key(key, profile)
    if k is None:
        raise TypeError(f"{what} is required (a passphrase, 32 raw bytes or heliosdb.Key)")
    return k


@contextlib.contextmanager
def _owned(key: KeyLike, what: str = "key", profile: Optional[str] = None) -> Iterator[Key]:
    """A Key for ``key``, wiped on exit when this module made it."""
    k = _key(key, what, profile)
    try:
        yield k
    finally:
        if k is not key:
            k.close()


def _unlock(path: str, header: fmt.Header, key: Key) -> Tuple[bytearray, int]:
    from . import unlock_slot as unlock

    return unlock(path, header, key)


def _slot_for(header: fmt.Header, index: int, key: Key, dek: bytes,
              like: Optional[fmt.Slot] = None) -> fmt.Slot:
    """A new slot at ``index`` wrapping ``dek`` under ``key`` (fresh salt and nonce).

    A passphrase uses the Argon2id parameters of ``like`` (the slot it replaces) when
    given and ``key`` is the same kind, else those of the key's profile.
    """
    from . import new_slot

    if like is not None and like.kind == fmt.SLOT_PASSPHRASE and key.kind == "passphrase":
        slot = fmt.Slot(fmt.SLOT_PASSPHRASE, fmt.KDF_ARGON2ID, like.time_cost,
                        like.memory_kib, like.parallelism, os.urandom(16))
        kek = derive_kek(key, slot.kdf, slot.salt, slot.time_cost, slot.memory_kib,
                         slot.parallelism)
        try:
            header.wrap(index, slot, bytes(kek), dek)
        finally:
            kek[:] = bytes(len(kek))
        return slot
    return new_slot(header, index, key, bytearray(dek))


def _free_index(header: fmt.Header, avoid: Sequence[int] = ()) -> int:
    for i, s in enumerate(header.slots):
        if s.kind == fmt.SLOT_EMPTY and i not in avoid:
            return i
    if len(header.slots) < fmt.MAX_SLOTS:
        return len(header.slots)
    raise EncryptionError(f"all {fmt.MAX_SLOTS} key slots are in use: remove one first "
                          "(heliosdb.remove_key_slot)")


def _write_slot(fd: int, index: int, raw: bytes) -> None:
    assert len(raw) == fmt.SLOT_SIZE
    os.pwrite(fd, raw, fmt.SLOTS_OFFSET + index * fmt.SLOT_SIZE)
    os.fsync(fd)


def _write_nslots(fd: int, n: int) -> None:
    os.pwrite(fd, struct.pack(">I", n), fmt.OFF_NSLOTS)
    os.fsync(fd)


def _put_slot(fd: int, header: fmt.Header, index: int, slot: fmt.Slot) -> None:
    """Write ``slot`` at ``index`` (slot bytes first, then the count: a crash between
    them leaves the slot invisible, never a count pointing at a half-written slot)."""
    _write_slot(fd, index, slot.to_bytes())
    if index >= len(header.slots):
        while len(header.slots) < index:
            header.slots.append(fmt.Slot(fmt.SLOT_EMPTY, 0, 0, 0, 0, bytes(16),
                                         bytes(12), bytes(48)))
        header.slots.append(slot)
        _write_nslots(fd, len(header.slots))
    else:
        header.slots[index] = slot


def _erase_slot(fd: int, header: fmt.Header, index: int) -> None:
    _write_slot(fd, index, bytes(fmt.SLOT_SIZE))
    header.slots[index] = fmt.Slot.from_bytes(bytes(fmt.SLOT_SIZE))
    n = len(header.slots)
    while n and header.slots[n - 1].kind == fmt.SLOT_EMPTY:
        n -= 1
    if n != len(header.slots):
        del header.slots[n:]
        _write_nslots(fd, n)


# ---------------------------------------------------------------- audit events ---
#
# A database that has an audit log (``__audit_log``, or the tables named in
# ``__audit_meta``) gets an event for every key operation: KEY_CHANGE (passphrase change,
# slot added or removed, encrypt, decrypt) or KEY_ROTATION. Details name slot indexes,
# slot kinds, KDF parameters, generations, file ids and page counts: never key material.
# Slot operations take SQLite's write lock *before* touching the header (a database that
# stays locked makes the operation fail with nothing changed), change the header, then
# append and commit; a rotation appends its event inside the rotated copy before it is
# synced and renamed over the original, so the event exists exactly when the rotation
# does. Failed operations (after the key was checked) record a failed event when the
# database can still be written.

def _actor(actor: Optional[str]) -> str:
    if actor is not None:
        return actor
    try:
        import getpass

        return getpass.getuser()
    except (ImportError, KeyError, OSError):  # no login name in some containers
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


#: Who records key operations in a database's audit log. Crypto knows nothing of audit:
#: the package (``heliosdb/__init__.py``) registers ``heliosdb.audit.keyops``'s recorder
#: with :func:`set_key_event_recorder`. Its interface: ``audit_tables(conn, audit_table)``
#: and ``append(conn, table, operation=, user=, session_id=, reason=, details=, error=)``.
_RECORDER: Any = None


def set_key_event_recorder(recorder: Any) -> None:
    """Register the object that records key operations in audit logs (see above)."""
    global _RECORDER
    _RECORDER = recorder


def _audit_tables(conn: apsw.Connection, audit_table: Optional[str]) -> List[str]:
    """The audit tables of the database ``conn`` opens (none: nothing is recorded)."""
    if _RECORDER is None:
        # Never a silent key operation on an audited database: with no recorder, a file
        # that has audit tables is refused.
        has_meta = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                "AND name = '__audit_meta'").fetchall()[0][0]
        if has_meta:
            raise EncryptionError("this database has an audit log, and no audit recorder is "
                                  "registered to record the key operation (import heliosdb)")
        return []
    return list(_RECORDER.audit_tables(conn, audit_table))


class _KeyAudit:
    """Records the events of one key operation in the database's audit log(s)."""

    def __init__(self, operation: str, actor: Optional[str], reason: Optional[str],
                 audit_table: Optional[str], busy_timeout: float) -> None:
        import uuid

        self.operation = operation
        self.user = _actor(actor)
        self.reason = reason
        self.audit_table = audit_table
        self.busy_ms = int(busy_timeout * 1000)
        self.session_id = uuid.uuid4().hex
        self.conn: Optional[apsw.Connection] = None
        self.tables: List[str] = []

    def append(self, conn: apsw.Connection, details: Dict[str, Any],
               error: Optional[BaseException] = None,
               tables: Optional[List[str]] = None) -> None:
        """Append the event to every audit table (inside ``conn``'s open transaction)."""
        for t in (self.tables if tables is None else tables):
            _RECORDER.append(conn, t, operation=self.operation, user=self.user,
                             session_id=self.session_id, reason=self.reason,
                             details=details, error=error)

    def record_in(self, conn: apsw.Connection, details: Dict[str, Any]) -> int:
        """Append the event in a transaction of its own on ``conn`` (a copy being built,
        no other user). Returns how many audit tables got it."""
        tables = _audit_tables(conn, self.audit_table)
        if tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self.append(conn, details, tables=tables)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return len(tables)

    # -- on the database itself (slot operations, failures) --
    def lock(self, path: str, dek: bytes | bytearray, file_id: bytes) -> None:
        """Open ``path`` and, when it has an audit log, take the write lock (BEGIN
        IMMEDIATE) so that the event can be written once the header changed."""
        conn = _open_with_dek(path, dek, file_id)
        try:
            conn.setbusytimeout(self.busy_ms)
            self.tables = _audit_tables(conn, self.audit_table)
            if not self.tables:
                conn.close()
                return
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            conn.close()
            if isinstance(exc, apsw.BusyError):
                raise EncryptionError(
                    f"{path}: the database stayed locked for {self.busy_ms / 1000} s, so "
                    "the key operation could not be recorded in its audit log; nothing "
                    "was changed") from None
            if isinstance(exc, apsw.Error):
                raise translate(exc) from None
            raise
        self.conn = conn

    def commit(self, details: Dict[str, Any], error: Optional[BaseException] = None) -> None:
        """Append the event in the locked transaction and commit it."""
        conn = self.conn
        if conn is None:
            return
        try:
            self.append(conn, details, error)
            deadline = time.monotonic() + max(1.0, self.busy_ms / 1000)
            while True:
                try:
                    conn.execute("COMMIT")
                    break
                except apsw.BusyError:  # readers still hold SHARED: wait for them
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
        except apsw.Error as exc:
            if error is not None:
                raise translate(exc) from None
            raise EncryptionError(
                f"the key operation was done, but its {self.operation} audit event could "
                f"not be recorded: {translate(exc)}") from None

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except apsw.Error:
                pass
            conn.close()

    def failed(self, path: str, dek: bytes | bytearray, file_id: bytes,
               details: Dict[str, Any], error: BaseException) -> None:
        """Record a failed attempt. The operation's own ``error`` is what the caller
        raises: when the database refuses the event (locked, unreadable, no space...), that
        is added to ``error`` as a note, so an unrecorded failure never goes unnoticed;
        anything else (a bug in the recorder, KeyboardInterrupt) propagates."""
        try:
            if self.conn is None:
                self.lock(path, dek, file_id)
            else:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                self.conn.execute("BEGIN IMMEDIATE")
            self.commit(details, error)
        except (Error, apsw.Error, OSError) as exc:
            _add_note(error, f"this failed {self.operation} attempt could not be recorded "
                             f"in the audit log of {path}: {exc}")
        finally:
            self.close()


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)`` (PEP 678), also on Python 3.10, which lacks the method
    (there ``__notes__`` is kept for the caller to read, but tracebacks do not show it)."""
    add = getattr(error, "add_note", None)
    if add is not None:
        add(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", ()), note]  # type: ignore[attr-defined]


def _slot_desc(slot: fmt.Slot) -> Dict[str, Any]:
    return dict(slot.describe())


# ------------------------------------------------------------------- key slots ---

def list_key_slots(path: str) -> List[Dict[str, Any]]:
    """The key slots of ``path`` (index, kind, KDF parameters; never key material)."""
    from . import read_header

    header = read_header(path)
    return [dict(s.describe(), index=i) for i, s in enumerate(header.slots)]


def add_key_slot(path: str, key: KeyLike, new_key: KeyLike, *,
                 kdf_profile: Optional[str] = None, actor: Optional[str] = None,
                 reason: Optional[str] = None, audit_table: Optional[str] = None,
                 busy_timeout: float = 5.0) -> int:
    """Add a key slot for ``new_key`` (a passphrase, raw key, key file or recovery key),
    authorised by ``key`` (any key that opens the file). Returns the slot index.

    Only the new slot (and the slot count) is written: instant, whatever the size.
    ``kdf_profile`` names the Argon2id profile of a new passphrase given as ``str``.
    A database with an audit log gets a KEY_CHANGE event (``actor``, default the login
    name; ``reason``; ``audit_table``, default every audit table found).
    """
    audit = _KeyAudit("KEY_CHANGE", actor, reason, audit_table, busy_timeout)
    with _owned(key) as k, _owned(new_key, "new_key", kdf_profile) as nk:
        with _keyop_lock(path) as fd:
            header = _read_header_fd(path, fd)
            dek, _i = _unlock(path, header, k)
            details: Dict[str, Any] = {"action": "add_key_slot", "authorised_by_slot": _i}
            try:
                audit.lock(path, dek, header.file_id)
                try:
                    index = _free_index(header)
                    slot = _slot_for(header, index, nk, bytes(dek))
                    _put_slot(fd, header, index, slot)
                except Exception as exc:
                    audit.failed(path, dek, header.file_id, details, exc)
                    raise
                details.update(slot=index, **_slot_desc(slot))
                audit.commit(details)
            finally:
                audit.close()
                dek[:] = bytes(len(dek))
    return index


def remove_key_slot(path: str, key: KeyLike, slot: Any, *, actor: Optional[str] = None,
                    reason: Optional[str] = None, audit_table: Optional[str] = None,
                    busy_timeout: float = 5.0) -> int:
    """Erase a key slot, authorised by ``key``. ``slot`` is a slot index or a key (the
    slot that key opens). The last usable slot cannot be removed. Returns the index.
    A database with an audit log gets a KEY_CHANGE event (see :func:`add_key_slot`)."""
    audit = _KeyAudit("KEY_CHANGE", actor, reason, audit_table, busy_timeout)
    with _owned(key) as k, _keyop_lock(path) as fd:
        header = _read_header_fd(path, fd)
        dek, _i = _unlock(path, header, k)
        details: Dict[str, Any] = {"action": "remove_key_slot", "authorised_by_slot": _i}
        try:
            audit.lock(path, dek, header.file_id)
            try:
                if isinstance(slot, int) and not isinstance(slot, bool):
                    index = slot
                    details["slot"] = index
                    if not 0 <= index < len(header.slots) \
                            or header.slots[index].kind == fmt.SLOT_EMPTY:
                        raise EncryptionError(f"{path}: there is no key slot {index}")
                else:
                    with _owned(slot, "slot") as sk:
                        d2, index = _unlock(path, header, sk)
                        d2[:] = bytes(len(d2))
                details.update(slot=index, **_slot_desc(header.slots[index]))
                used = [i for i, s in enumerate(header.slots) if s.kind != fmt.SLOT_EMPTY]
                if used == [index]:
                    raise EncryptionError(f"{path}: refusing to remove the last key slot (the "
                                          "database could never be opened again)")
                _erase_slot(fd, header, index)
            except Exception as exc:
                audit.failed(path, dek, header.file_id, details, exc)
                raise
            audit.commit(details)
        finally:
            audit.close()
            dek[:] = bytes(len(dek))
    return index


def change_passphrase(path: str, old: KeyLike, new: KeyLike, *,
                      kdf_profile: Optional[str] = None, actor: Optional[str] = None,
                      reason: Optional[str] = None, audit_table: Optional[str] = None,
                      busy_timeout: float = 5.0) -> int:
    """Replace the key slot that ``old`` opens with one for ``new``; ``old`` stops
    working at once (in this process too). Works for raw keys and key files as well.

    The new slot is written into a free slot and synced, then the old slot is erased
    and synced: a crash in between leaves both working, never neither. A passphrase
    keeps the Argon2id parameters of the slot it replaces unless ``kdf_profile`` (or a
    :class:`Key` made with a profile) says otherwise. Returns the new slot's index.
    A database with an audit log gets a KEY_CHANGE event (see :func:`add_key_slot`).
    """
    audit = _KeyAudit("KEY_CHANGE", actor, reason, audit_table, busy_timeout)
    with _owned(old, "old") as ok, _owned(new, "new", kdf_profile) as nk:
        with _keyop_lock(path) as fd:
            header = _read_header_fd(path, fd)
            dek, old_index = _unlock(path, header, ok)
            details: Dict[str, Any] = {"action": "change_passphrase", "old_slot": old_index,
                                       "old": _slot_desc(header.slots[old_index])}
            try:
                audit.lock(path, dek, header.file_id)
                try:
                    like = header.slots[old_index]
                    if kdf_profile is not None or isinstance(new, Key):
                        like = None
                    index = _free_index(header, avoid=(old_index,))
                    slot = _slot_for(header, index, nk, bytes(dek), like)
                    _put_slot(fd, header, index, slot)
                    details.update(new_slot=index, new=_slot_desc(slot))
                    _erase_slot(fd, header, old_index)
                except Exception as exc:
                    audit.failed(path, dek, header.file_id, details, exc)
                    raise
                audit.commit(details)
            finally:
                audit.close()
                dek[:] = bytes(len(dek))
    return index


def new_recovery_key() -> str:
    """A fresh random recovery key as text (64 hex digits in 8 groups): show it once,
    store it offline, add it with ``add_key_slot(path, key, recovery_key(text))``."""
    raw = os.urandom(32).hex()
    return "-".join(raw[i:i + 8] for i in range(0, 64, 8))


def recovery_key(text: str) -> Key:
    """The raw :class:`Key` of a recovery key printed by :func:`new_recovery_key`
    (dashes and spaces are ignored)."""
    return Key.from_hex("".join(c for c in text if c not in "- \t\r\n"))


# -------------------------------------------------------------------- connections ---

def _open_with_dek(path: str, dek: bytes | bytearray, file_id: bytes,
                   flags: int = apsw.SQLITE_OPEN_READWRITE) -> apsw.Connection:
    """An APSW connection to encrypted ``path`` whose DEK the caller already has."""
    from . import (EncryptedConnection, encrypted_connections, shim_error, ConnectionInfo, release_registration,
                   DEFAULT_NONCE_WARNING_FRACTION)

    full = _vfs.full_pathname(path)
    _vfs.register(full, bytearray(dek), file_id)
    try:
        conn = EncryptedConnection(path, flags=flags, vfs=_vfs.VFS_NAME)
    except apsw.Error as exc:
        _vfs.unregister(full)
        raise (shim_error(exc) or translate(exc)) from None
    conn._helios_release = weakref.finalize(conn, release_registration, full, False)  # type: ignore
    encrypted_connections[conn] = ConnectionInfo(path, full, 0, DEFAULT_NONCE_WARNING_FRACTION)
    return conn


def _in_use_here(path: str) -> bool:
    """True when this process has the file open or registered (a connection, an attach
    key): its key registration would outlive the rotated file."""
    return _vfs.key_info(_vfs.full_pathname(path)) is not None


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY if directory else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)  # only for files no SQLite connection of ours has open


def _fsync_dir(path: str) -> None:
    try:
        _fsync_path(os.path.dirname(os.path.abspath(path)) or ".", directory=True)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass


def _remove_quietly(*paths: str) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _side_files(path: str) -> Tuple[str, ...]:
    return (path, path + "-journal", path + "-wal", path + "-shm")


def _q(conn: apsw.Connection, sql: str) -> list:
    from . import explain

    try:
        return conn.execute(sql).fetchall()
    except apsw.Error as exc:
        raise (explain(conn, exc) or translate(exc)) from None


def _backup(dst: apsw.Connection, src: apsw.Connection, progress: Progress) -> int:
    """Copy ``src`` main into ``dst`` main page by page; (done, total) to ``progress``."""
    from . import explain

    last = -1
    try:
        with dst.backup("main", src, "main") as b:
            while not b.done:
                b.step(_STEP_PAGES)
                total = b.page_count
                done = total - b.remaining
                if progress is not None and done > last:
                    last = done
                    progress(done, total)
            total = b.page_count
    except apsw.Error as exc:
        raise (explain(src, exc) or explain(dst, exc) or translate(exc)) from None
    if progress is not None and last != total:
        progress(total, total)
    return total


# -------------------------------------------------------------------- rotation ---

@dataclasses.dataclass
class RotationReport:
    """What :func:`rotate_key` did (no key material)."""

    path: str
    pages: int
    seconds: float
    generation: int
    file_id: str
    journal_mode: str
    kept_slots: List[int]
    dropped_slots: List[int]

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else float("inf")


def rotate_key(path: str, key: KeyLike, new_key: KeyLike = None, progress: Progress = None,
               *, keep_keys: Iterable[KeyLike] = (), drop_other_slots: bool = False,
               busy_timeout: float = 5.0, kdf_profile: Optional[str] = None,
               method: str = "auto", check: bool = True, actor: Optional[str] = None,
               reason: Optional[str] = None,
               audit_table: Optional[str] = None) -> RotationReport:
    """Re-encrypt every page of ``path`` under a new random data key.

    ``key`` opens the file; its slot is rewrapped under the new DEK for ``new_key``
    (default: the same key). Other key slots wrap the *old* DEK and can only be carried
    over if their keys are given in ``keep_keys``; any other slot makes the call fail
    before anything is written, unless ``drop_other_slots=True``.

    Needs exclusive access: it refuses while this process has the file open, and waits
    up to ``busy_timeout`` seconds for other processes' transactions. In WAL mode it
    checkpoints, leaves WAL (which SQLite allows only when no other connection has the
    file open) and restores it on the rotated file. In rollback-journal mode a
    connection of another process that sits idle cannot be detected: afterwards it
    still reads the replaced file and its writes fail (``SQLITE_READONLY_DBMOVED``);
    reopen it. ``progress(done, total)`` counts pages copied.

    ``method``: ``"pages"`` re-encrypts the main file page by page in C
    (``csrc/rekey.c``: read, authenticate, re-seal, write, in runs of 256 pages) under
    the write lock; ``"backup"`` copies through SQLite's backup API and the shim;
    ``"auto"`` (default) is ``"pages"``. ``check``: run ``quick_check`` on the copy
    before it replaces the original.

    Crash safety: the rotated copy is built in ``<path>.helios-rotate`` and renamed over
    ``path`` only once complete and synced, so a crash leaves the original (old key) or
    the rotated file (new key); a leftover copy is removed by the next rotation.

    Audit: a database with an audit log gets one KEY_ROTATION event (``actor``, default
    the login name; ``reason``; old and new generation and file id, pages re-encrypted),
    appended to the rotated copy *before* it is synced and renamed over the original:
    the event is in the file exactly when the rotation is. A rotation that fails after
    the key was checked records a failed KEY_ROTATION event in the original, when it
    can be written.
    """
    if not native.available():
        raise EncryptionUnavailableError(native.unavailable_reason() or "native unavailable")
    _vfs.ensure_loaded()
    t0 = time.perf_counter()
    keep_keys = list(keep_keys)
    with _owned(key) as k, contextlib.ExitStack() as stack:
        nk = stack.enter_context(_owned(new_key, "new_key", kdf_profile)) if new_key is not None else k
        if _in_use_here(path):
            raise EncryptionError(
                f"{path}: rotate_key needs exclusive access: close this process's "
                "connections to the file (and unregister its attach keys) first")
        fd = stack.enter_context(_keyop_lock(path))
        header = _read_header_fd(path, fd)
        dek_old, my_index = _unlock(path, header, k)
        stack.callback(lambda: dek_old.__setitem__(slice(None), bytes(len(dek_old))))
        audit = _KeyAudit("KEY_ROTATION", actor, reason, audit_table, busy_timeout)
        details: Dict[str, Any] = {
            "action": "rotate_key", "old_generation": header.generation,
            "old_file_id": header.file_id.hex(), "key_slot": my_index, "method":
            "backup" if method == "backup" else "pages"}
        state = {"renamed": False}
        try:
            # Which other slots can we carry over?
            carried: Dict[int, Key] = {}
            for kk in keep_keys:
                kk_key = stack.enter_context(_owned(kk, "keep_keys item"))
                try:
                    d, j = _unlock(path, header, kk_key)
                except WrongKeyError:
                    raise WrongKeyError(f"{path}: a key in keep_keys opens no slot") from None
                d[:] = bytes(len(d))
                if j != my_index:
                    carried[j] = kk_key
            others = [i for i, s in enumerate(header.slots)
                      if s.kind != fmt.SLOT_EMPTY and i != my_index and i not in carried]
            if others and not drop_other_slots:
                desc = ", ".join(f"{i} ({header.slots[i].describe()['kind']})" for i in others)
                raise EncryptionError(
                    f"{path}: key slots {desc} wrap the current data key and would be lost: "
                    "pass their keys in keep_keys=, or drop_other_slots=True")
            details.update(kept_slots=sorted([my_index, *carried]), dropped_slots=others)

            tmp = path + ROTATE_SUFFIX
            _remove_quietly(*_side_files(tmp))  # an incomplete copy left by a crash
            _phase("start")
            src = _open_with_dek(path, dek_old, header.file_id)
            mode = ""
            marker = path + ROTATE_SUFFIX + ".mode"
            try:
                src.setbusytimeout(int(busy_timeout * 1000))
                mode = str(_q(src, "PRAGMA journal_mode")[0][0]).lower()
                # A rotation that crashed after leaving WAL left this note: restore WAL.
                target_mode = "wal" if (mode == "wal" or _read_marker(marker) == "wal") else mode
                if mode == "wal":
                    _q(src, "PRAGMA wal_checkpoint(TRUNCATE)")
                    _write_marker(marker, "wal")
                    try:
                        got = str(_q(src, "PRAGMA journal_mode=DELETE")[0][0]).lower()
                    except Error as exc:
                        raise EncryptionError(
                            f"{path}: rotate_key needs exclusive access and another connection "
                            f"has the database open in WAL mode ({exc}); close it and retry") from None
                    if got != "delete":
                        raise EncryptionError(f"{path}: could not leave WAL mode for rotation "
                                              f"(journal_mode stays {got!r})")
                _phase("wal-left" if mode == "wal" else "mode-checked")
                try:
                    # The write lock (RESERVED) keeps every other writer out until the
                    # rename; readers may go on. The backup API cannot read through a
                    # connection in a write transaction, so a second one reads.
                    src.execute("BEGIN IMMEDIATE")
                except apsw.BusyError:
                    raise EncryptionError(
                        f"{path}: rotate_key needs exclusive access: the database stayed "
                        f"locked by another connection for {busy_timeout} s") from None
                _phase("locked")
                try:
                    if method not in ("auto", "pages", "backup"):
                        raise ValueError(f"unknown method {method!r}: auto, pages or backup")
                    if method == "backup":
                        reader = _open_with_dek(path, dek_old, header.file_id)
                        try:
                            reader.setbusytimeout(int(busy_timeout * 1000))
                            report = _rotate_locked(path, tmp, header, reader, None, None, k,
                                                    nk, my_index, carried, target_mode,
                                                    progress, t0, state, check,
                                                    (audit, details))
                        finally:
                            reader.close()
                    else:
                        report = _rotate_locked(path, tmp, header, src, fd, dek_old, k, nk,
                                                my_index, carried, target_mode, progress, t0,
                                                state, check, (audit, details))
                except BaseException:
                    try:
                        src.execute("ROLLBACK")
                    except apsw.Error:
                        pass
                    raise
                try:
                    src.execute("ROLLBACK")  # nothing was written to the old file
                except apsw.Error:
                    pass
            except BaseException:
                _remove_quietly(*_side_files(tmp))
                # Leave the original as it was (WAL mode) when nothing was renamed.
                if mode == "wal" and not state["renamed"]:
                    try:
                        src.execute("PRAGMA journal_mode=WAL").fetchall()
                        _remove_quietly(marker)
                    except apsw.Error:
                        pass
                src.close()
                raise
            src.close()
            _remove_quietly(marker)
        except Exception as exc:
            if not state["renamed"]:
                audit.failed(path, dek_old, header.file_id, details, exc)
            raise
    _files.sweep()
    report.dropped_slots = others
    report.seconds = time.perf_counter() - t0
    _phase("done")
    return report


def _rekey_pages(path: str, src_fd: int, tmp: str, old_dek: bytearray, old_fid: bytes,
                 new_dek: bytearray, new_fid: bytes, page_size: int, n_pages: int,
                 progress: Progress) -> None:
    """Re-encrypt pages 1..n_pages of ``path`` (read through ``src_fd``) into ``tmp``."""
    from ..errors import CorruptPageError

    ffi, lib = native.ffi, native.lib
    ko, kn = ffi.new("unsigned char[32]"), ffi.new("unsigned char[32]")
    ffi.memmove(ko, old_dek, 32)
    ffi.memmove(kn, new_dek, 32)
    dst_fd = os.open(tmp, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        done, step = 0, max(1, _STEP_PAGES)
        while done < n_pages:
            k = min(step, n_pages - done)
            rc = lib.heliosdb_rekey_pages(src_fd, dst_fd, ko, bytes(old_fid), kn,
                                          bytes(new_fid), page_size, done + 1, k)
            if rc > 0:
                raise CorruptPageError(f"{path}: page {rc}: failed authentication; the "
                                       "rotation was abandoned, the file is unchanged",
                                       file=path, page=int(rc))
            if rc < 0:
                what = {-1: "reading the database (is it shorter than its page count?)",
                        -2: f"writing {tmp}"}.get(int(rc), "the cipher")
                raise EncryptionError(f"{path}: rotation failed {what}")
            done += k
            if progress is not None:
                progress(done, n_pages)
        if progress is not None and n_pages == 0:
            progress(0, 0)
    finally:
        os.close(dst_fd)  # the copy: no connection of ours has it open yet
        ffi.memmove(ko, bytes(32), 32)
        ffi.memmove(kn, bytes(32), 32)


def _read_marker(marker: str) -> str:
    try:
        with open(marker, "r", encoding="ascii") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return ""


def _write_marker(marker: str, text: str) -> None:
    with open(marker, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(marker)


def _rotate_locked(path: str, tmp: str, old: fmt.Header, src: apsw.Connection,
                   src_fd: Optional[int], dek_old: Optional[bytearray], k: Key, nk: Key,
                   my_index: int, carried: Dict[int, Key], mode: str, progress: Progress,
                   t0: float, state: Dict[str, bool], check: bool,
                   audit: Optional[Tuple["_KeyAudit", Dict[str, Any]]] = None
                   ) -> RotationReport:
    """Build the rotated copy in ``tmp`` and rename it over ``path``. ``src_fd`` and
    ``dek_old`` given: re-encrypt the main file's pages in C through ``src_fd`` (``src``
    holds the write lock, so the file is stable and complete); otherwise copy with the
    backup API reading through ``src``. ``audit``: (recorder, details) of the
    KEY_ROTATION event, committed into the copy before it is checked, synced and
    renamed (the copy's chain continues the original's)."""
    page_size = int(_q(src, "PRAGMA page_size")[0][0])
    n_pages = int(_q(src, "PRAGMA page_count")[0][0])
    dek = bytearray(os.urandom(32))
    try:
        header = fmt.new_header(dek, page_size=page_size, generation=old.generation + 1)
        n = max([my_index] + list(carried)) + 1
        header.slots = [fmt.Slot(fmt.SLOT_EMPTY, 0, 0, 0, 0, bytes(16), bytes(12), bytes(48))
                        for _ in range(n)]
        like = old.slots[my_index] if nk is k else None
        header.slots[my_index] = _slot_for(header, my_index, nk, bytes(dek), like)
        for j, kk in carried.items():
            header.slots[j] = _slot_for(header, j, kk, bytes(dek), old.slots[j])
        if src_fd is not None:
            header.counter = n_pages  # pages sealed under the new key by the copy
        with open(tmp, "xb") as f:
            f.write(header.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        _phase("header-written")
        if src_fd is not None and dek_old is not None:
            _rekey_pages(path, src_fd, tmp, dek_old, old.file_id, dek, header.file_id,
                         page_size, n_pages, progress)
            pages = n_pages
            _phase("copied")
        dst = _open_with_dek(tmp, dek, header.file_id, apsw.SQLITE_OPEN_READWRITE)
    finally:
        dek[:] = bytes(32)
    try:
        if src_fd is None:
            from . import set_reserve

            set_reserve(dst, "main")
            _q(dst, "PRAGMA journal_mode=OFF")  # a scratch copy: a crash discards it
            _q(dst, "PRAGMA synchronous=OFF")
            pages = _backup(dst, src, progress)
            _phase("copied")
        if audit is not None:
            ka, details = audit
            details.update(new_generation=header.generation,
                           new_file_id=header.file_id.hex(), pages=pages,
                           journal_mode=mode or "delete")
            if ka.record_in(dst, details):
                _phase("audited")
        if mode == "wal":
            _q(dst, "PRAGMA journal_mode=WAL")
        if check:
            res = _q(dst, "PRAGMA quick_check")
            if res != [("ok",)]:
                raise EncryptionError(f"{path}: the rotated copy fails quick_check: {res[:3]}")
    finally:
        dst.close()
    _remove_quietly(tmp + "-wal", tmp + "-shm", tmp + "-journal")
    _fsync_path(tmp)
    _phase("synced")
    os.replace(tmp, path)
    state["renamed"] = True
    _phase("renamed")
    _fsync_dir(path)
    _phase("dir-synced")
    return RotationReport(path, pages, time.perf_counter() - t0, header.generation,
                          header.file_id.hex(), mode, sorted([my_index, *carried]), [])


# -------------------------------------------------------------- rotation schedule ---

def _interval_days(config: Any) -> int:
    if config is None:
        return 90
    if isinstance(config, (int, float)) and not isinstance(config, bool):
        return int(config)
    enc = getattr(config, "encryption", config)
    return int(getattr(enc, "rotation_interval_days", 90) or 0)


def _warn_fraction(config: Any) -> float:
    from . import DEFAULT_NONCE_WARNING_FRACTION

    enc = getattr(config, "encryption", config)
    return float(getattr(enc, "nonce_warning_fraction", DEFAULT_NONCE_WARNING_FRACTION)
                 or DEFAULT_NONCE_WARNING_FRACTION)


def rotation_info(path_or_conn: Any, config: Any = None, *, now: Optional[float] = None
                  ) -> Dict[str, Any]:
    """When the data key of a database was made and whether rotation is due.

    ``path_or_conn``: a path, a heliosdb Connection or an APSW connection opened by
    heliosdb; ``config``: a heliosdb Config, its ``encryption`` section or a number of
    days (default 90; 0 means no schedule). Rotation is due when the key is older than
    the interval, when its age is unknown (a file from before the header recorded it),
    or when the encryptions under it passed the nonce warning fraction of 2^32.
    """
    from . import NONCE_LIMIT, encrypted_connections, encryptions_done, read_header

    conn = getattr(path_or_conn, "_apsw", path_or_conn)
    if isinstance(conn, apsw.Connection):
        info = encrypted_connections.get(conn)
        if info is None:
            raise NotEncryptedError("the connection is not to an encrypted database")
        path, used = info.path, encryptions_done(info)
    else:
        path = os.fspath(path_or_conn)
        header0 = read_header(path)
        path, used = path, header0.counter
    header = read_header(path)
    days = _interval_days(config)
    now = time.time() if now is None else now
    created = header.key_created or None
    age = (now - created) / 86400.0 if created else None
    nonce_due = used > _warn_fraction(config) * NONCE_LIMIT
    age_due = bool(days) and (age is None or age >= days)
    return {
        "path": path, "generation": header.generation, "key_created": created,
        "age_days": age, "interval_days": days, "encryptions": used,
        "due": bool(age_due or nonce_due), "nonce_due": nonce_due,
        "due_at": (created + days * 86400.0) if (created and days) else None,
    }


def rotation_due(path_or_conn: Any, config: Any = None) -> bool:
    """True when the data key should be rotated (see :func:`rotation_info`)."""
    return bool(rotation_info(path_or_conn, config)["due"])


# ------------------------------------------------------------- encrypt / decrypt ---

def _uri(path: str, vfs: str) -> str:
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?vfs=" + vfs


def _publish(tmp: str, dst: str) -> None:
    """Make the finished, synced ``tmp`` appear at ``dst`` (never over an existing file)."""
    _fsync_path(tmp)
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise FileExistsError(f"{dst} appeared while it was being written; the copy is "
                              f"left at {tmp}") from None
    os.unlink(tmp)
    _fsync_dir(dst)


def _check_target(dst: str) -> None:
    if os.path.exists(dst) and os.path.getsize(dst) > 0:
        raise FileExistsError(f"{dst} already exists: choose a new file")


def encrypt(plain_path: str, enc_path: str, key: KeyLike, progress: Progress = None, *,
            kdf_profile: Optional[str] = None, actor: Optional[str] = None,
            reason: Optional[str] = None, audit_table: Optional[str] = None) -> int:
    """Write an encrypted copy of the plaintext database ``plain_path`` to the new file
    ``enc_path`` under ``key`` (a fresh data key and file id). The source is only read.

    Uses ``VACUUM INTO`` (SQLite rebuilds the file with the 32 reserved bytes per page
    the cipher needs, which a page copy cannot add). The target appears whole, only once
    synced. ``progress(done, total)`` counts pages written. Returns the page count.
    A source with an audit log: the copy's log continues it with a KEY_CHANGE event
    (``action`` "encrypt"), committed before the copy appears.
    """
    from . import file_state, read_header, register_attach_key, unregister_attach_key

    if not native.available():
        raise EncryptionUnavailableError(native.unavailable_reason() or "native unavailable")
    state = file_state(plain_path)
    if state == "encrypted":
        raise EncryptionError(f"{plain_path} is already encrypted (use rotate_key or "
                              "change_passphrase)")
    if state == "missing":
        raise FileNotFoundError(plain_path)
    _check_target(enc_path)
    tmp = enc_path + COPY_SUFFIX
    _remove_quietly(*_side_files(tmp))
    # Read-write (never written) so that SQLite cleans up the -wal/-shm it opens.
    ro = not os.access(plain_path, os.W_OK)
    src = apsw.Connection(plain_path, flags=apsw.SQLITE_OPEN_URI | (
        apsw.SQLITE_OPEN_READONLY if ro else apsw.SQLITE_OPEN_READWRITE))
    with _owned(key, "key", kdf_profile) as k:
        full = register_attach_key(tmp, k)
    try:
        from . import set_reserve

        set_reserve(src, "main")  # VACUUM INTO takes the requested reserve
        total = int(src.execute("PRAGMA page_count").fetchall()[0][0])
        page_size = int(src.execute("PRAGMA page_size").fetchall()[0][0])
        wal = str(src.execute("PRAGMA journal_mode").fetchall()[0][0]).lower() == "wal"
        state_ = {"last": 0}

        def tick() -> bool:
            if progress is not None:
                try:
                    done = (os.path.getsize(tmp) - fmt.HEADER_SIZE) // page_size
                except OSError:
                    done = 0
                done = max(state_["last"], min(total, done))
                if done > state_["last"]:
                    state_["last"] = done
                    progress(done, total)
            return False

        if progress is not None:
            src.setprogresshandler(tick, 20000)
        try:
            src.execute("VACUUM INTO ?", (_uri(tmp, _vfs.VFS_NAME),))
        except apsw.Error as exc:
            raise translate(exc) from None
        finally:
            src.setprogresshandler(None)
        conn = _open_registered_again(tmp)
        try:
            h = read_header(tmp)
            _KeyAudit("KEY_CHANGE", actor, reason, audit_table, 5.0).record_in(conn, {
                "action": "encrypt", "source": os.path.basename(plain_path),
                "pages": total, "generation": h.generation, "file_id": h.file_id.hex(),
                "slots": [_slot_desc(x) for x in h.slots]})
            if wal:
                _q(conn, "PRAGMA journal_mode=WAL")
        except apsw.Error as exc:
            raise translate(exc) from None
        finally:
            conn.close()
        _remove_quietly(tmp + "-wal", tmp + "-shm", tmp + "-journal")
        if progress is not None and state_["last"] != total:
            progress(total, total)
    except BaseException:
        src.close()
        unregister_attach_key(tmp)
        _remove_quietly(*_side_files(tmp))
        raise
    src.close()
    unregister_attach_key(tmp)
    _publish(tmp, enc_path)
    return total


def _open_registered_again(path: str) -> apsw.Connection:
    """A connection to ``path``, whose key is registered already (register_attach_key)."""
    return apsw.Connection(path, flags=apsw.SQLITE_OPEN_READWRITE, vfs=_vfs.VFS_NAME)


def decrypt(enc_path: str, plain_path: str, key: KeyLike, progress: Progress = None, *,
            actor: Optional[str] = None, reason: Optional[str] = None,
            audit_table: Optional[str] = None) -> int:
    """Write a plaintext copy of the encrypted database ``enc_path`` to the new file
    ``plain_path`` (an explicit act: nothing else ever writes plaintext).

    Copies with SQLite's backup API (committed WAL content included). The copy keeps
    the 32 reserved bytes per page (zeros; SQLite reads such a file like any other, and
    VACUUM keeps a reserve once set). The target appears whole, only once synced, in
    the source's journal mode. ``progress(done, total)`` counts pages. Returns the
    page count. A source with an audit log: the copy's log continues it with a
    KEY_CHANGE event (``action`` "decrypt"), committed before the copy appears.
    """
    from . import file_state, read_header, open_connection

    if file_state(enc_path) != "encrypted":
        raise NotEncryptedError(f"{enc_path} is not an encrypted HeliosDB database")
    _check_target(plain_path)
    tmp = plain_path + COPY_SUFFIX
    _remove_quietly(*_side_files(tmp))
    src = open_connection(enc_path, flags=apsw.SQLITE_OPEN_READWRITE, uri=False, key=key,
                          encryption=None)
    try:
        wal = str(_q(src, "PRAGMA journal_mode")[0][0]).lower() == "wal"
        dst = apsw.Connection(tmp, flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
        try:
            dst.execute("PRAGMA journal_mode=OFF").fetchall()
            total = _backup(dst, src, progress)
            h = read_header(enc_path)
            try:
                _KeyAudit("KEY_CHANGE", actor, reason, audit_table, 5.0).record_in(dst, {
                    "action": "decrypt", "source": os.path.basename(enc_path),
                    "pages": total, "source_generation": h.generation,
                    "source_file_id": h.file_id.hex()})
            except apsw.Error as exc:
                raise translate(exc) from None
            if wal:
                dst.execute("PRAGMA journal_mode=WAL").fetchall()
        finally:
            dst.close()
    except BaseException:
        src.close()
        _remove_quietly(*_side_files(tmp))
        raise
    src.close()
    _remove_quietly(tmp + "-wal", tmp + "-shm", tmp + "-journal")
    _publish(tmp, plain_path)
    return total


# ------------------------------------------------------------------ attach guard ---

def attach_escape_reason(filename: Optional[str]) -> Optional[str]:
    """Why an ATTACH (or ``VACUUM INTO``, which SQLite authorises as SQLITE_ATTACH) of
    ``filename`` from an encrypted connection would write or read a file around the
    encryption, or None when it is fine.

    A target naming another VFS in a URI (``file:x.db?vfs=unix``) bypasses the shim,
    which otherwise refuses any file without a registered key: with ``uri=True`` that
    is a plaintext copy of an encrypted database. For the DB-API's authorizer of
    encrypted connections: deny SQLITE_ATTACH when this returns a reason.
    """
    if not filename or not filename.startswith("file:"):
        return None
    from .uri import OPEN_CREATE, OPEN_READWRITE, OPEN_URI, UriError, parse_filename

    try:  # ATTACH parses with the main database's open flags
        target = parse_filename(filename, OPEN_URI | OPEN_READWRITE | OPEN_CREATE)
    except UriError:
        return None  # SQLite refuses it too
    vfs = target.vfs if target.vfs is not None else _vfs.VFS_NAME
    if vfs != _vfs.VFS_NAME:
        return (f"refusing to attach {filename!r} from an encrypted database: it names "
                f"vfs={vfs}, which would bypass encryption (use heliosdb.decrypt() for a "
                "plaintext copy, or register_attach_key() for an encrypted one)")
    return None
