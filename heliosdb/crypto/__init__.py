"""Transparent encryption: every page of every file SQLite writes, AES-256-GCM.

:func:`open_connection` is what ``heliosdb.connect()`` calls for every connection. With a
key it reads the HeliosDB header in front of the database (see ``docs/FORMAT.md``),
unwraps the data key with the given key (a wrong key fails here, before SQLite reads a
page), hands the data key to the C VFS shim (``csrc/vfs.c``) and opens the database with
``vfs="heliosdb"``. Without a key it opens plaintext files as usual and refuses encrypted
ones with :class:`~heliosdb.errors.KeyRequiredError`.

ATTACH is SQL and cannot carry a key: register the attached file's key first with
:func:`register_attach_key` (or use :func:`attach`, which also creates a new encrypted
file correctly). A database attached to an encrypted connection without a registered key
cannot be opened: nothing falls back to plaintext, and the main key is never reused.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
import threading
import warnings
import weakref
from typing import Any, Dict, Optional, Tuple

import apsw

from .. import native
from ..errors import (
    ConfigError, CorruptHeaderError, CorruptPageError, EncryptionError, EncryptionUnavailableError,
    KeyRequiredError, KeySlotError, NotEncryptedError, OperationalError, WrongKeyError, translate,
)
from . import _files
from . import format as fmt
from . import vfs as _vfs
from .keys import KDF_PROFILES, Key, KeyLike, coerce_key, derive_kek, get_profile
from .uri import SqliteTarget, UriError, parse_filename, target_path

__all__ = [
    "Key", "KDF_PROFILES", "open_connection", "explain", "storage_info",
    "register_attach_key", "unregister_attach_key", "attach", "is_encrypted", "NONCE_LIMIT",
    "resolve_target", "parse_filename", "SqliteTarget",
]

#: NIST SP 800-38D: at most 2^32 GCM encryptions with random 96-bit nonces per key.
NONCE_LIMIT = 2 ** 32
DEFAULT_NONCE_WARNING_FRACTION = 0.5
#: The header's encryption counter (offset 56) is rewritten at every sync and so is not
#: authenticated. No database makes 2^48 page encryptions (nine years at a million per
#: second): a larger value is a damaged or edited counter, reported as such.
COUNTER_PLAUSIBLE_MAX = 2 ** 48
ALGORITHM = "aes-256-gcm"
#: How storage_info() names the cipher: the spelling of NIST SP 800-38D and of the product
#: documents ("AES-256-GCM"); configs accept any casing (heliosdb.config aliases).
ALGORITHM_NAME = "AES-256-GCM"
_SQLITE_MAGIC = b"SQLite format 3\x00"


class ConnectionInfo:
    """What heliosdb knows about one encrypted connection (no key material)."""

    __slots__ = ("path", "full_path", "slot_index", "warn_fraction")

    def __init__(self, path: str, full_path: str, slot_index: int, warn_fraction: float):
        self.path, self.full_path = path, full_path
        self.slot_index, self.warn_fraction = slot_index, warn_fraction


encrypted_connections: "weakref.WeakKeyDictionary[apsw.Connection, ConnectionInfo]" = weakref.WeakKeyDictionary()
_attach_keys: Dict[str, list] = {}
_attach_lock = threading.Lock()


class EncryptedConnection(apsw.Connection):
    """An APSW connection on the heliosdb VFS; closing it releases the key registration."""

    def close(self, force: bool = False) -> None:  # type: ignore[override]
        try:
            super().close(force)
        finally:
            fin = getattr(self, "_helios_release", None)
            if fin is not None:
                fin()


# --------------------------------------------------------------------------- helpers ---

def resolve_target(database: str, flags: int) -> SqliteTarget:
    """What SQLite opens for ``database`` under ``flags`` (:func:`.uri.parse_filename`:
    the one URI parser, with SQLite's rules). Callers that rewrite a URI before opening it
    must pass the rewritten one."""
    return parse_filename(database, flags)


def file_state(path: str) -> str:
    """'missing', 'empty', 'encrypted' or 'plain'."""
    try:
        head = _files.read_at(path, len(fmt.MAGIC))
    except FileNotFoundError:
        return "missing"
    except IsADirectoryError:
        return "plain"
    if not head:
        return "empty"
    return "encrypted" if fmt.is_encrypted_file(head) else "plain"


def read_header(path: str) -> fmt.Header:
    """Read and parse the header; a header that does not parse is retried once (another
    process may be creating the file right now)."""
    for attempt in range(3):
        raw = _files.read_at(path, fmt.HEADER_SIZE)
        try:
            return fmt.read_header(raw)
        except fmt.HeaderFieldError as exc:
            if attempt == 2:
                raise fmt.corrupt(path, exc) from None
            threading.Event().wait(0.01)
    raise AssertionError("unreachable")


def _key_from_config(encryption: Any) -> Optional[Key]:
    src = getattr(encryption, "key_source", None)
    if src is None:
        return None
    kind, value = getattr(src, "kind", None), getattr(src, "value", None)
    prof = getattr(encryption, "kdf_profile", None) or "default"
    if kind == "file":
        return Key.from_file(value)
    if kind == "env":
        return Key.from_env(value)
    if kind == "passphrase_env":
        return Key.from_passphrase_env(value, prof)
    raise ConfigError(f"unknown encryption.key_source kind {kind!r}: use file, env or "
                      "passphrase_env", key="encryption.key_source")


def new_slot(header: fmt.Header, index: int, key: Key, dek: bytearray) -> fmt.Slot:
    salt = os.urandom(16)
    if key.kind == "passphrase":
        p = get_profile(key.profile)
        slot = fmt.Slot(fmt.SLOT_PASSPHRASE, fmt.KDF_ARGON2ID, p.time_cost, p.memory_kib,
                        p.parallelism, salt)
    else:
        slot = fmt.Slot(fmt.SLOT_RAW, fmt.KDF_HKDF_SHA256, 0, 0, 0, salt)
    kek = derive_kek(key, slot.kdf, salt, slot.time_cost, slot.memory_kib, slot.parallelism)
    try:
        header.wrap(index, slot, bytes(kek), dek)
    finally:
        kek[:] = bytes(len(kek))
    return slot


def _create_encrypted_file(path: str, key: Key, exists: bool) -> Tuple[bytearray, bytes]:
    """Write the header of a new encrypted database; (its random DEK, its file id).

    Another process may create the file at the same moment: the caller compares the file
    id on disk with the one returned, and unlocks the winner's header when they differ.
    """
    dek = bytearray(os.urandom(32))
    header = fmt.new_header(dek)
    header.slots.append(new_slot(header, 0, key, dek))
    raw = header.to_bytes()
    if exists:
        # An empty file: fill it only if it is still empty.
        fd = _files.open_fd(path, os.O_RDWR)
        try:
            try:  # serialise concurrent first opens of one empty file
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except (ImportError, OSError):
                pass
            if os.fstat(fd).st_size == 0:
                os.pwrite(fd, raw, 0)
                os.fsync(fd)
        finally:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_UN)  # a parked descriptor must not keep it
            except (ImportError, OSError):
                pass
            _files.close_fd(fd)  # never drop a lock SQLite holds on this inode
        return dek, header.file_id
    # A new file appears whole or not at all.
    tmp = f"{path}.helios-new-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return dek, header.file_id


def unlock_slot(path: str, header: fmt.Header, key: Key) -> Tuple[bytearray, int]:
    """(DEK, slot index) for ``key``; WrongKeyError when no slot opens."""
    want = fmt.SLOT_PASSPHRASE if key.kind == "passphrase" else fmt.SLOT_RAW
    tried = 0
    damaged: Optional[CorruptHeaderError] = None
    for i, slot in enumerate(header.slots):
        try:
            fmt.check_slot(header, i, path)  # before any key derivation
        except CorruptHeaderError as exc:
            damaged = damaged or exc
            continue
        if slot.kind != want:
            continue
        tried += 1
        kek = derive_kek(key, slot.kdf, slot.salt, slot.time_cost, slot.memory_kib,
                         slot.parallelism)
        try:
            return header.unwrap(i, bytes(kek)), i
        except KeySlotError:
            continue  # another slot of this kind may open with this key
        except fmt.HeaderFieldError as exc:
            raise fmt.corrupt(path, exc) from None
        finally:
            kek[:] = bytes(len(kek))
    if damaged is not None:
        # The damaged slot may have been the one for this key: say so, not "wrong key".
        raise damaged
    if not tried:
        other = "a raw key" if want == fmt.SLOT_PASSPHRASE else "a passphrase"
        raise WrongKeyError(f"{path}: wrong key: this database has no "
                            f"{'passphrase' if want == fmt.SLOT_PASSPHRASE else 'raw-key'} "
                            f"slot (it is opened with {other})")
    raise WrongKeyError(f"{path}: wrong key: the key does not open this encrypted database")


def unlock_file(path: str, key: KeyLike, purpose: str) -> Tuple[fmt.Header, bytearray]:
    """(header, DEK) of the encrypted file at ``path`` for offline readers (pure-Python
    page access, no SQLite). A key made here from raw bytes or a passphrase is wiped
    before returning; the caller wipes the DEK. TypeError when ``key`` is None."""
    k = coerce_key(key)
    if k is None:
        raise TypeError(f"{purpose} needs a key")
    try:
        header = read_header(path)
        dek, _slot = unlock_slot(path, header, k)
    finally:
        if k is not key:
            k.close()
    return header, dek


def _prepare_key_for_path(path: str, key: Key, create: bool) -> Tuple[str, int, bool]:
    """Create or check the file's header, register its DEK. (full path, slot, new)."""
    try:
        return _prepare_key_for_path_io(path, key, create)
    except OSError as exc:
        # What SQLite would say (SQLITE_CANTOPEN), without a raw OSError escaping.
        new = OperationalError(f"unable to open database file {path}: {exc.strerror or exc}")
        new.sqlite_errorcode = apsw.SQLITE_CANTOPEN
        new.sqlite_errorname = "SQLITE_CANTOPEN"
        raise new from exc


def _prepare_key_for_path_io(path: str, key: Key, create: bool) -> Tuple[str, int, bool]:
    state = file_state(path)
    new = False
    created: Optional[Tuple[bytearray, bytes]] = None
    if state in ("missing", "empty"):
        if state == "missing" and not create:
            raise translate(apsw.CantOpenError(f"unable to open database file {path}"))
        created = _create_encrypted_file(path, key, exists=state == "empty")
        new = True
    elif state == "plain":
        if not _files.read_at(path, 16).startswith(b"SQLite format 3\x00"):
            # Neither SQLite's header nor ours: never tell the operator to drop the key
            # of what may be an encrypted database with a damaged header.
            raise EncryptionError(
                f"{path}: not a HeliosDB encrypted database and not a SQLite database "
                "either: the HeliosDB header is damaged, or the file is not a database")
        raise NotEncryptedError(
            f"{path} is a plaintext database; a key was given. To encrypt it, make an "
            "encrypted copy with heliosdb.encrypt(plain, encrypted, key), or open it "
            "without key=")
    header = read_header(path)
    full = _vfs.full_pathname(path)
    if key.kind == "passphrase":
        hit = _cached_slot(full, header, key)
        if hit is not None:
            return full, hit, new
    if created is not None and created[1] == header.file_id:
        dek, slot_index = created[0], 0  # our own new file: no second key stretch
    else:
        if created is not None:
            created[0][:] = bytes(32)  # another process created the file first
        dek, slot_index = unlock_slot(path, header, key)
    try:
        _vfs.register(full, dek, header.file_id)
    finally:
        dek[:] = bytes(len(dek))
    if key.kind == "passphrase":
        _cache_store(full, _verifier(header, slot_index, key), slot_index)
    return full, slot_index, new


# Unlock cache. Argon2id costs ~0.1-1 s by design; paying it at every connect of a pool
# is a pitfall peers fell into. While a connection to a file is open in this process its
# data key is registered in the shim anyway, so a later connect with the same passphrase
# only needs proof that it is the same passphrase: a SHA-256 verifier over the file id,
# the slot's salt and wrapped key, and the passphrase (which a passphrase change or
# another file never matches). The entry is dropped when the last connection that used
# it closes, and a file never opened stays uncached.
_unlock_cache: Dict[str, list] = {}  # full path -> [verifier, slot index, users]
_cache_lock = threading.Lock()


def _verifier(header: fmt.Header, slot_index: int, key: Key) -> bytes:
    slot = header.slots[slot_index]
    return hashlib.sha256(b"HeliosDB unlock cache v1" + header.file_id + bytes([slot_index])
                          + slot.salt + slot.wrapped + bytes(key.secret())).digest()


def _cached_slot(full: str, header: fmt.Header, key: Key) -> Optional[int]:
    """A cache lookup: the slot index that ``key`` opened, with one more registration of the
    file's key taken in the shim; None on a miss (no entry, another passphrase, or no key
    registered any more), which is no failure: the caller unlocks with the KDF."""
    with _cache_lock:
        entry = _unlock_cache.get(full)
        if entry is None or entry[1] >= len(header.slots):
            return None
        if not hmac.compare_digest(_verifier(header, entry[1], key), entry[0]):
            return None
        try:
            _vfs.addref(full, header.file_id)
        except LookupError:
            return None
        entry[2] += 1
        return int(entry[1])


def _cache_store(full: str, verifier: bytes, slot_index: int) -> None:
    with _cache_lock:
        entry = _unlock_cache.get(full)
        if entry is not None and entry[0] == verifier:
            entry[2] += 1
        else:
            _unlock_cache[full] = [verifier, slot_index, 1]


def release_registration(full: str, cached: bool) -> None:
    """Drop one registration of ``full`` (a connection closed, an attach key dropped);
    ``cached``: it was made with a passphrase, so it holds an unlock-cache reference."""
    _vfs.unregister(full)
    if not cached:
        return
    with _cache_lock:
        entry = _unlock_cache.get(full)
        if entry is not None:
            entry[2] -= 1
            if entry[2] <= 0:
                del _unlock_cache[full]


def set_reserve(conn: apsw.Connection, schema: str) -> None:
    """Give a new database 32 reserved bytes per page (nonce and tag), before page 1."""
    p = native.ffi.new("int *", fmt.RESERVE_BYTES)
    conn.file_control(schema, apsw.SQLITE_FCNTL_RESERVE_BYTES,
                      int(native.ffi.cast("intptr_t", p)))


def _warn_fraction(encryption: Any) -> float:
    return float(getattr(encryption, "nonce_warning_fraction", DEFAULT_NONCE_WARNING_FRACTION)
                 or DEFAULT_NONCE_WARNING_FRACTION)


# ------------------------------------------------------------------------ public API ---

def open_connection(database: str, *, flags: int, uri: bool, key: KeyLike, encryption: Any,
                    statementcachesize: int = 128) -> apsw.Connection:
    """Open ``database`` for ``heliosdb.connect()``, encrypted when a key is in play.

    ``key`` is None, a passphrase ``str``, 32 raw bytes or a :class:`Key`; ``encryption`` is
    None or the ``[encryption]`` config (``enabled``, ``algorithm``, ``key_source``,
    ``kdf_profile``, ``nonce_warning_fraction``). Raises KeyRequiredError,
    WrongKeyError, NotEncryptedError, EncryptionUnavailableError or a translated error.
    """
    enabled = bool(getattr(encryption, "enabled", False)) if encryption is not None else False
    algorithm = getattr(encryption, "algorithm", ALGORITHM) if encryption is not None else ALGORITHM
    if algorithm and str(algorithm).lower() != ALGORITHM:
        raise ConfigError(f"encryption.algorithm {algorithm!r} is not supported: use "
                          f"{ALGORITHM!r}", key="encryption.algorithm")
    prof = getattr(encryption, "kdf_profile", None) if encryption is not None else None
    owned_key = False
    k = coerce_key(key, prof) if key is not None else None
    if k is not None and k is not key:
        owned_key = True
    if k is None and enabled:
        k = _key_from_config(encryption)
        owned_key = k is not None
        if k is None:
            raise ConfigError("encryption.enabled is true but no key was given and no "
                              "encryption.key_source is configured", key="encryption.key_source")
    try:
        return _open(database, flags, uri, k, encryption, statementcachesize)
    finally:
        if owned_key and k is not None:
            k.close()


def _plain(database: str, flags: int, statementcachesize: int, **kw: Any) -> apsw.Connection:
    try:
        return apsw.Connection(database, flags=flags, statementcachesize=statementcachesize, **kw)
    except apsw.Error as exc:
        raise translate(exc) from None


def _opened_encrypted(conn: apsw.Connection, path: str) -> bool:
    """Whether the file a plain connection just opened is a HeliosDB encrypted one.

    Read through the connection's own file handle (``Connection.read``): opening a
    database makes SQLite read its first 100 bytes and nothing else (no lock, no journal,
    no WAL: those come with the first statement), so checking here, before anything runs,
    refuses the file as early as checking before the open did, without a descriptor of
    our own to open, park and sweep (:mod:`._files`: about 30,000 instructions per open,
    W7). A short read (an empty or new file) is zero-filled: not encrypted. If the
    connection cannot read its file, the file is read from ``path`` as before.
    """
    try:
        head = conn.read("main", 0, 0, len(fmt.MAGIC))[1]
    except apsw.Error:
        return file_state(path) == "encrypted"
    return head == fmt.MAGIC  # (fmt.is_encrypted_file() of exactly that many bytes)


def _open(database: str, flags: int, uri: bool, key: Optional[Key], encryption: Any,
          statementcachesize: int) -> apsw.Connection:
    if uri:
        flags |= apsw.SQLITE_OPEN_URI  # what SQLite is given is what is parsed here
    if key is None:
        try:
            path = target_path(database, flags)
        except UriError:
            return _plain(database, flags, statementcachesize)  # SQLite says what is wrong
        conn = _plain(database, flags, statementcachesize)
        if path is not None and _opened_encrypted(conn, path):
            conn.close()
            raise KeyRequiredError(
                f"{path} is an encrypted HeliosDB database: pass the key, e.g. "
                "heliosdb.connect(path, key=...) (a passphrase, 32 raw bytes or heliosdb.Key)")
        return conn
    target = resolve_target(database, flags)
    path = target.path
    if not target.is_uri and path is None:
        if database == "":
            # An on-disk temp database: the shim encrypts it with a throwaway key.
            _vfs.ensure_loaded()
            return _plain(database, flags, statementcachesize, vfs=_vfs.VFS_NAME)
        return _plain(database, flags, statementcachesize)  # ":memory:": never on disk
    # A key, and a URI or a filename: every byte must reach the encrypted file.
    target.check_encryptable(path is not None and file_state(path) == "encrypted")
    assert path is not None
    if not native.available():
        raise EncryptionUnavailableError(
            f"cannot open encrypted database {path}: {native.unavailable_reason()}")
    _vfs.ensure_loaded()
    full, slot_index, new = _prepare_key_for_path(
        path, key, create=target.create)
    _vfs.clear_last_error()
    try:
        conn = EncryptedConnection(database, flags=flags, vfs=_vfs.VFS_NAME,
                                   statementcachesize=statementcachesize)
    except apsw.Error as exc:
        release_registration(full, key.kind == "passphrase")
        raise (shim_error(exc) or translate(exc)) from None
    conn._helios_release = weakref.finalize(  # type: ignore[attr-defined]
        conn, release_registration, full, key.kind == "passphrase")
    encrypted_connections[conn] = ConnectionInfo(path, full, slot_index, _warn_fraction(encryption))
    try:
        if new:
            set_reserve(conn, "main")
        # Read page 1 now: a damaged first page fails here, not at the first query. A
        # writer may hold the lock: wait a little, and leave BUSY to the first query.
        conn.setbusytimeout(2000)
        try:
            conn.execute("PRAGMA schema_version").fetchall()
        except apsw.BusyError:
            pass
        finally:
            conn.setbusytimeout(0)
    except apsw.Error as exc:
        mapped = explain(conn, exc) or translate(exc)
        conn.close()
        raise mapped from None
    _nonce_check(conn)
    return conn


def _nonce_check(conn: apsw.Connection) -> None:
    info = encrypted_connections.get(conn)
    if info is None:
        return
    used = encryptions_done(info)
    if used > info.warn_fraction * NONCE_LIMIT:
        warnings.warn(f"{info.path}: {nonce_budget_text(used)}: rotate the data key",
                      RuntimeWarning, stacklevel=3)


def nonce_budget_text(used: int) -> str:
    """The nonce budget in words; never a percentage past 100 or of a damaged counter."""
    if used > COUNTER_PLAUSIBLE_MAX:
        return (f"the header's encryption counter reads {used}, more than any database "
                f"makes (the bound of plausible counts is 2^48): the counter is damaged "
                "or was edited, so the encryptions under the current data key are unknown")
    if used >= NONCE_LIMIT:
        return (f"{used} pages were encrypted under the current data key, past the 2^32 "
                "NIST SP 800-38D bound for random nonces")
    return (f"{used} pages were encrypted under the current data key, "
            f"{min(used / NONCE_LIMIT, 0.99):.0%} of the 2^32 NIST SP 800-38D bound for "
            "random nonces")


def encryptions_done(info: ConnectionInfo) -> int:
    (counter,) = struct.unpack(">Q", _files.read_at(info.path, 8, fmt.OFF_COUNTER))
    ki = _vfs.key_info(info.full_path)
    return counter + (ki[0] if ki else 0)


def explain(conn: apsw.Connection, exc: BaseException) -> Optional[BaseException]:
    """A heliosdb error for an apsw error caused by encryption, or None.

    SQLITE_IOERR_DATA from the shim -> CorruptPageError naming the file and page; a
    database shorter than its header says -> CorruptPageError naming the first missing
    page; a file the shim refused to open -> EncryptionError with its reason.
    """
    code = _code(exc)
    if code is None:
        return None
    shim = shim_error(exc)
    if shim is not None:
        return shim
    if (code & 0xFF) in (apsw.SQLITE_CORRUPT, apsw.SQLITE_NOTADB):
        # conn is None when translate() explains an error with no connection at hand (a
        # WeakKeyDictionary cannot look None up).
        info = encrypted_connections.get(conn) if conn is not None else None
        if info is None:
            return None
        ki = _vfs.key_info(info.full_path)
        if ki is None or not ki[1]:
            return None
        _pending, page_size, pages = ki
        size = max(0, os.path.getsize(info.path) - fmt.HEADER_SIZE)
        have = size // page_size
        if pages > have or size % page_size:
            first = have + 1
            new = CorruptPageError(
                f"{info.path}: page {first}: the file is truncated: it holds {size} bytes of "
                f"pages, the database has {pages} pages of {page_size} bytes",
                file=info.path, page=first)
            new.__cause__ = exc
            return new
    return None


def _code(exc: BaseException) -> Optional[int]:
    code = getattr(exc, "extendedresult", None)
    if code is None:
        code = getattr(exc, "result", None)
    return code


def shim_error(exc: BaseException) -> Optional[BaseException]:
    """The error the shim recorded on this thread for ``exc``, as a heliosdb error."""
    code = _code(exc)
    if code is None or (code & 0xFF) not in (apsw.SQLITE_IOERR, apsw.SQLITE_CANTOPEN):
        return None
    err = _vfs.last_error()
    if err is None:
        return None
    file, page, msg = err
    if code & 0xFF == apsw.SQLITE_CANTOPEN:
        new: BaseException = KeyRequiredError(f"{file}: {msg}")
    elif code == apsw.SQLITE_IOERR_DATA:
        new = CorruptPageError(f"{file}: page {page}: {msg}", file=file, page=page)
    else:
        new = EncryptionError(f"{file}: {msg}")
    new.sqlite_errorcode = code  # type: ignore[attr-defined]
    new.__cause__ = exc
    return new


def is_encrypted(conn: apsw.Connection) -> bool:
    """True when ``conn`` was opened by :func:`open_connection` on an encrypted file.

    For callers that copy data out (backup, dump): a copy of an encrypted database into a
    plaintext one must be an explicit operation, never a side effect.
    """
    # Only EncryptedConnection objects are ever recorded: a plain APSW connection is
    # answered without a weak-key lookup (every connect() asks).
    return type(conn) is not apsw.Connection and conn in encrypted_connections


def storage_info(conn: apsw.Connection) -> Dict[str, Any]:
    """How the connection's main database is stored (no key material)."""
    info = encrypted_connections.get(conn)
    page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
    out: Dict[str, Any] = {
        "encryption_enabled": info is not None, "encryption_algorithm": None, "kdf": None,
        "page_size": page_size, "reserve_bytes": _reserve_bytes(conn),
        "format_version": None, "key_slots": [], "encryptions_under_current_key": 0,
        "nonce_limit": NONCE_LIMIT, "nonce_warning": False, "header_size": 0,
        "file_id": None,
    }
    if info is None:
        return out
    header = read_header(info.path)
    used = encryptions_done(info)
    slots = [dict(s.describe(), index=i) for i, s in enumerate(header.slots)]
    out.update({
        "encryption_algorithm": ALGORITHM_NAME,
        # None when the slot this connection opened was changed or removed since.
        "kdf": (slots[info.slot_index].get("kdf")
                if info.slot_index < len(slots) else None),
        "format_version": header.version,
        "key_slots": slots,
        "encryptions_under_current_key": used,
        "nonce_warning": used > info.warn_fraction * NONCE_LIMIT,
        "nonce_counter_damaged": used > COUNTER_PLAUSIBLE_MAX,
        "nonce_warning_fraction": info.warn_fraction,
        "header_size": header.header_size,
        "file_id": header.file_id.hex(),
        "data_key_generation": header.generation,
    })
    return out


def _reserve_bytes(conn: apsw.Connection) -> Optional[int]:
    if native.ffi is None:
        return None
    p = native.ffi.new("int *", -1)  # negative: query without changing
    try:
        conn.file_control("main", apsw.SQLITE_FCNTL_RESERVE_BYTES,
                          int(native.ffi.cast("intptr_t", p)))
    except apsw.Error:
        return None
    return int(p[0])


def register_attach_key(path: str, key: KeyLike, *, create: bool = True) -> str:
    """Register the key of a database that SQL will ATTACH (or VACUUM INTO) later.

    Creates the encrypted header when the file does not exist (``create``). Returns the
    full path the registration is under. The registration lasts until
    :func:`unregister_attach_key`. A file ATTACHed by SQL with a registered key is
    encrypted under its own data key; one without is refused by the shim.
    """
    k = coerce_key(key)
    if k is None:
        raise TypeError("register_attach_key needs a key")
    if not native.available():
        raise EncryptionUnavailableError(native.unavailable_reason() or "native unavailable")
    _vfs.ensure_loaded()
    cached = k.kind == "passphrase"
    try:
        full, _slot, _new = _prepare_key_for_path(path, k, create)
    finally:
        if k is not key:
            k.close()
    with _attach_lock:
        _attach_keys.setdefault(full, []).append(cached)
    return full


def unregister_attach_key(path: str) -> None:
    """Drop a registration made by :func:`register_attach_key`."""
    full = _vfs.full_pathname(path)
    with _attach_lock:
        flags = _attach_keys.get(full)
        if not flags:
            return
        cached = flags.pop()
        if not flags:
            del _attach_keys[full]
    release_registration(full, cached)


def attach(conn: apsw.Connection, path: str, schema: str, key: KeyLike) -> None:
    """ATTACH an encrypted database under its own key (created if missing).

    The connection must be on the heliosdb VFS (an encrypted connection, or one opened
    with ``vfs="heliosdb"``).
    """
    new = file_state(path) in ("missing", "empty")
    register_attach_key(path, key)
    try:
        conn.execute("ATTACH ? AS " + _quote_ident(schema), (path,))
        if new:
            set_reserve(conn, schema)
    except apsw.Error as exc:
        unregister_attach_key(path)
        raise explain(conn, exc) or translate(exc) from None


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
