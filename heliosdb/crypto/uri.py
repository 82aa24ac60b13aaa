"""SQLite's URI filenames, parsed by SQLite's own rules (``sqlite3ParseUri``).

HeliosDB decides before SQLite opens a file whether that file must be encrypted, so it
must agree with SQLite on *which* file a filename names. Two parsers that disagree once
let ``file:a.db?mode=memory&mode=rwc`` write an "encrypted" database as plaintext (the
old parser read the first ``mode=``, SQLite reads the last). This module is the one
parser: it follows ``sqlite3ParseUri`` (SQLite 3.54, ``main.c``) character for character:

* only a filename starting with ``file:`` (case-sensitive) and opened with
  ``SQLITE_OPEN_URI`` is a URI; anything else is a plain filename;
* ``file://AUTH/path``: the authority must be empty or ``localhost``;
* ``%HH`` is decoded in the path, keys and values (``+`` is not a space); ``%00`` drops
  the rest of the path, key or value it is in; a ``%`` not followed by two hex digits
  stays a ``%``; ``#`` ends the URI;
* ``key`` without ``=`` has the value ``""``; an empty key is skipped with its value;
* ``vfs``, ``mode`` and ``cache`` are applied in order, so **the last one wins**;
  ``mode`` is one of ``ro``, ``rw``, ``rwc``, ``memory`` and may not ask for more access
  than the open flags allow; ``cache`` is ``shared`` or ``private``;
* every other parameter (``immutable``, ``nolock``, ``psow``...) is read by
  ``sqlite3_uri_parameter``, which returns the **first** occurrence.

:func:`parse_filename` returns what SQLite would open; :meth:`SqliteTarget.check_encryptable`
refuses, with a HeliosDB error, whatever an encrypted open cannot be certain about.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..errors import EncryptionError, OperationalError

__all__ = ["SqliteTarget", "UriError", "parse_filename", "target_path", "KNOWN_PARAMETERS",
           "uri_boolean"]

# SQLite's open flags (sqlite3.h); repeated here so this module needs no apsw import.
OPEN_READONLY = 0x00000001
OPEN_READWRITE = 0x00000002
OPEN_CREATE = 0x00000004
OPEN_URI = 0x00000040
OPEN_MEMORY = 0x00000080
OPEN_SHAREDCACHE = 0x00020000
OPEN_PRIVATECACHE = 0x00040000

_MODES = {"ro": OPEN_READONLY, "rw": OPEN_READWRITE, "rwc": OPEN_READWRITE | OPEN_CREATE,
          "memory": OPEN_MEMORY}
_MODE_MASK = OPEN_READONLY | OPEN_READWRITE | OPEN_CREATE | OPEN_MEMORY
_CACHES = {"shared": OPEN_SHAREDCACHE, "private": OPEN_PRIVATECACHE}
_CACHE_MASK = OPEN_SHAREDCACHE | OPEN_PRIVATECACHE

#: The parameters an encrypted open accepts; any other is refused (SQLite would ignore
#: it, or a future SQLite might not). ``modeof`` only copies another file's permissions.
KNOWN_PARAMETERS = ("vfs", "mode", "cache", "immutable", "nolock", "psow", "modeof")
_BOOLEAN_PARAMETERS = ("immutable", "nolock", "psow")
_TRUE = ("1", "yes", "on", "true")
_FALSE = ("0", "no", "off", "false")


class UriError(OperationalError):
    """A URI filename SQLite itself would refuse (bad authority, bad mode...)."""


@dataclass
class SqliteTarget:
    """What SQLite opens for one filename (no secret material)."""

    filename: str                 #: as given
    is_uri: bool                  #: parsed as a URI
    path: Optional[str]           #: the file on disk; None for memory and temp databases
    memory: bool                  #: an in-memory database (``:memory:``, ``mode=memory``)
    flags: int                    #: the open flags after ``mode=`` and ``cache=``
    vfs: Optional[str] = None     #: ``vfs=`` (the last one), None when absent
    params: List[Tuple[str, str]] = field(default_factory=list)  #: decoded, in order

    @property
    def create(self) -> bool:
        """True when SQLite may create the file (``SQLITE_OPEN_CREATE`` survives)."""
        return bool(self.flags & OPEN_CREATE)

    @property
    def readonly(self) -> bool:
        return bool(self.flags & OPEN_READONLY) and not self.flags & OPEN_READWRITE

    def parameter(self, name: str) -> Optional[str]:
        """``sqlite3_uri_parameter``: the first value of ``name``, or None."""
        for k, v in self.params:
            if k == name:
                return v
        return None

    def repeated(self) -> List[str]:
        seen: Dict[str, int] = {}
        for k, _v in self.params:
            seen[k] = seen.get(k, 0) + 1
        return sorted(k for k, n in seen.items() if n > 1)

    def check_encryptable(self, encrypted_file: bool) -> None:
        """Raise :class:`~heliosdb.errors.EncryptionError` unless every byte this open
        stores would go to the encrypted file ``path`` through the HeliosDB VFS.

        Refused: repeated parameters (SQLite takes the last ``mode``/``vfs``/``cache``
        but the first of the others: no reader of a URI should have to know that),
        parameters outside :data:`KNOWN_PARAMETERS`, booleans that are not one of
        0/1/yes/no/on/off/true/false, ``vfs=`` (the HeliosDB VFS is chosen by HeliosDB),
        memory and temp databases, and ``immutable=1`` on a file that is not an
        encrypted HeliosDB database. ``encrypted_file``: the file exists and carries the
        HeliosDB header.
        """
        what = f"{self.filename!r}"
        rep = self.repeated()
        if rep:
            raise EncryptionError(
                f"{what}: refusing an encrypted open of a URI that repeats "
                f"{', '.join(rep)}: SQLite takes the last 'mode', 'vfs' and 'cache' but "
                "the first of the others; give each parameter once")
        unknown = sorted({k for k, _v in self.params if k not in KNOWN_PARAMETERS})
        if unknown:
            raise EncryptionError(
                f"{what}: refusing an encrypted open of a URI with unknown parameter(s) "
                f"{', '.join(unknown)} (known: {', '.join(KNOWN_PARAMETERS)})")
        for name in _BOOLEAN_PARAMETERS:
            value = self.parameter(name)
            if value is not None:
                uri_boolean(value, name, self.filename)
        if self.vfs is not None:
            raise EncryptionError(
                f"{what}: an encrypted database cannot name its own vfs= in the URI "
                f"(vfs={self.vfs!r} would store the data outside the HeliosDB encryption)")
        if self.memory or self.path is None:
            raise EncryptionError(
                f"{what}: a key was given (or the config requires encryption) but this URI "
                "opens an in-memory or temporary database, not an encrypted file: nothing "
                "would be stored encrypted. Drop mode=memory, or open without a key")
        if self.parameter("immutable") is not None and uri_boolean(
                self.parameter("immutable") or "", "immutable", self.filename) \
                and not encrypted_file:
            raise EncryptionError(
                f"{what}: immutable=1 with a key on a file that is not an encrypted "
                "HeliosDB database")


def uri_boolean(value: str, name: str, filename: str) -> bool:
    """A URI boolean as SQLite reads it, or EncryptionError for anything ambiguous."""
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise EncryptionError(f"{filename!r}: {name}={value!r} is not a boolean HeliosDB can "
                          "be sure of: use 0 or 1")


def _hex(c: int) -> bool:
    return c in b"0123456789abcdefABCDEF"


def target_path(filename: str, flags: int) -> Optional[str]:
    """``parse_filename(filename, flags).path``, without building the target for a
    filename that is not a URI (every connect() without a key asks)."""
    if not (flags & OPEN_URI) or not filename.startswith("file:"):
        return None if filename == ":memory:" or filename == "" else filename
    return parse_filename(filename, flags).path


def parse_filename(filename: str, flags: int) -> SqliteTarget:
    """What SQLite's ``sqlite3_open_v2(filename, flags)`` opens (see the module doc).

    Raises :class:`UriError` where SQLite would fail the open while parsing the URI.
    """
    if not (flags & OPEN_URI) or not filename.startswith("file:"):
        memory = filename == ":memory:"
        path = None if memory or filename == "" else filename
        return SqliteTarget(filename, False, path, memory, flags)
    z = filename.encode("utf-8", "surrogateescape")  # SQLite sees UTF-8 bytes
    n = len(z)
    i = 5
    if z[5:7] == b"//":
        i = 7
        while i < n and z[i] != 0x2F:
            i += 1
        auth = z[7:i]
        if auth not in (b"", b"localhost"):
            raise UriError(f"invalid uri authority: {auth.decode('utf-8', 'replace')}")
    out = bytearray()     # path, then key\0value\0 pairs, as in SQLite's zFile
    state = 0             # 0 path, 1 key, 2 value
    HASH, QM, AMP, EQ, PCT = 0x23, 0x3F, 0x26, 0x3D, 0x25
    while i < n and z[i] != HASH:
        c = z[i]
        i += 1
        if c == PCT and i + 1 < n and _hex(z[i]) and _hex(z[i + 1]):
            octet = int(z[i:i + 2], 16)
            i += 2
            if octet == 0:
                # Skip the rest of this path, key or value.
                while i < n and z[i] != HASH and (state != 0 or z[i] != QM) \
                        and (state != 1 or z[i] not in (EQ, AMP)) \
                        and (state != 2 or z[i] != AMP):
                    i += 1
                continue
            c = octet
        elif state == 1 and c in (AMP, EQ):
            if out and out[-1] == 0:
                # An empty key: ignore it and its value.
                while i < n and z[i] != HASH and z[i - 1] != AMP:
                    i += 1
                continue
            if c == AMP:
                out.append(0)
            else:
                state = 2
            c = 0
        elif (state == 0 and c == QM) or (state == 2 and c == AMP):
            c = 0
            state = 1
        out.append(c)
    if state == 1:
        out.append(0)
    text = out.decode("utf-8", "surrogateescape")
    parts = text.split("\0")
    path = parts[0]
    params: List[Tuple[str, str]] = []
    rest = parts[1:]
    j = 0
    while j + 1 < len(rest) and rest[j]:
        params.append((rest[j], rest[j + 1]))
        j += 2
    vfs: Optional[str] = None
    for key, value in params:
        if key == "vfs":
            vfs = value
        elif key == "cache":
            mode = _CACHES.get(value)
            if mode is None:
                raise UriError(f"no such cache mode: {value}")
            flags = (flags & ~_CACHE_MASK) | mode
        elif key == "mode":
            mode = _MODES.get(value)
            if mode is None:
                raise UriError(f"no such access mode: {value}")
            if (mode & ~OPEN_MEMORY) > (_MODE_MASK & flags):
                raise UriError(f"access mode not allowed: {value}")
            flags = (flags & ~_MODE_MASK) | mode
    # SQLite's memdb VFS keeps the database in memory whatever the path says.
    memory = bool(flags & OPEN_MEMORY) or path == ":memory:" or vfs == "memdb"
    return SqliteTarget(filename, True, None if memory or path == "" else path, memory,
                        flags, vfs, params)
