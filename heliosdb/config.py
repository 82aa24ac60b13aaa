"""HeliosDB configuration: TOML files, presets and dicts, validated into frozen dataclasses.

``connect(..., config=...)`` accepts what :func:`load_config` accepts:

* ``None``: the *plain* config (audit and encryption off: a drop-in ``sqlite3`` connection);
* a preset name such as ``"hipaa"`` (a file in ``configs/``, listed by :func:`preset_names`);
* a path to a TOML file (``str`` or ``os.PathLike``);
* a ``dict`` (or any mapping) shaped like the TOML file;
* a :class:`Config` (returned unchanged).

Every problem raises :class:`heliosdb.ConfigError` naming the dotted key, the file and the line,
e.g. ``configs/x.toml:7: audit.retention_days: expected a positive integer, got -3``. Unknown
keys in the sections HeliosDB owns (``[database]``, ``[encryption]``, ``[audit]``) are errors
(with the closest known key suggested), never silently ignored: a typo in an audit setting would
otherwise switch auditing off without anyone noticing.

Config files written for the product carry sections of their own (``[monitoring]``,
``[server]``, ``[gdpr]``...): those are kept for the application in :attr:`Config.extra` and
named in one :class:`heliosdb.ConfigWarning` per load. The product's spellings are aliases
(``algorithm = "Aes256Gcm"``, ``key_source = { File = "..." }``, ``[database] cache_mb``);
``fips_mode = true`` is refused (HeliosDB does not run in a FIPS-validated mode).

The keys, their types, defaults and meaning are documented in ``docs/CONFIG.md``, whose tables
are generated from the schema below (``python -m heliosdb.config --write-docs``) and checked
by the test suite so that they cannot go stale.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import functools
import hashlib
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Optional, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import ConfigError, ConfigWarning

__all__ = [
    "Config", "DatabaseConfig", "EncryptionConfig", "AuditConfig", "CaptureMetadata",
    "AfterHours", "KeySource", "FrozenMap", "load_config", "preset_names", "preset_path",
    "presets_dir", "category_of", "OPERATIONS", "CATEGORIES", "KDF_PROFILES",
    "render_key_reference", "render_preset_table", "update_docs", "find_key_line",
    "FIPS_REFUSAL", "time_zone",
]

# --------------------------------------------------------------------------------------------
# Vocabulary shared with the audit code
# --------------------------------------------------------------------------------------------

#: Operation -> category. The operations are those of DESIGN.md section 3; the categories are
#: what ``audit.retention_overrides`` may name besides a single operation.
_OPERATION_CATEGORY: dict[str, str] = {
    **{op: "DDL" for op in (
        "CREATE_TABLE", "DROP_TABLE", "ALTER_TABLE", "CREATE_INDEX", "DROP_INDEX",
        "CREATE_VIEW", "DROP_VIEW", "CREATE_TRIGGER", "DROP_TRIGGER")},
    **{op: "DML" for op in ("INSERT", "UPDATE", "DELETE")},
    "SELECT": "QUERY",
    **{op: "TRANSACTION" for op in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE",
                                    "ROLLBACK_TO")},
    **{op: "SECURITY" for op in (
        "LOGIN", "LOGOUT", "GRANT", "REVOKE", "KEY_CHANGE", "KEY_ROTATION",
        "AUDIT_CONFIG_CHANGE", "RETENTION_PURGE", "EXPORT", "VERIFY", "RESTORE",
        "ACTOR_CHANGE", "LEGAL_HOLD", "LEGAL_HOLD_RELEASE", "SHELL_COMMAND")},
    # UNKNOWN: a statement whose first word is no SQL verb (it failed to compile).
    **{op: "ADMIN" for op in ("PRAGMA", "ATTACH", "DETACH", "VACUUM", "ANALYZE", "REINDEX",
                              "UNKNOWN")},
    **{op: "APPLICATION" for op in ("DATA_SUBJECT_REQUEST", "MODEL_TRAINING")},
}
#: Every operation name known to the audit log.
OPERATIONS: tuple[str, ...] = tuple(_OPERATION_CATEGORY)
#: Categories of operations. APPLICATION also covers custom operations logged with
#: ``conn.audit.log()``.
CATEGORIES: tuple[str, ...] = ("DDL", "DML", "QUERY", "TRANSACTION", "SECURITY", "ADMIN",
                               "APPLICATION")


def category_of(operation: str) -> str:
    """The category (one of :data:`CATEGORIES`) of an audit operation name.

    Unknown names are application-defined operations (``conn.audit.log("MY_OP")``).
    """
    return _OPERATION_CATEGORY.get(operation.upper(), "APPLICATION")


_ALGORITHMS = ("aes-256-gcm",)


class FrozenMap(Mapping[str, int]):
    """A read-only, hashable ``str -> int`` mapping (``retention_overrides``).

    ``types.MappingProxyType`` is read-only but unhashable, which would make the frozen
    config dataclasses unhashable too; configs are meant to be usable as cache keys.
    """

    __slots__ = ("_d",)

    def __init__(self, items: Mapping[str, int] | None = None) -> None:
        object.__setattr__(self, "_d", dict(items or {}))

    def __getitem__(self, key: str) -> int:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._d) == dict(other)
        return NotImplemented

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("FrozenMap is read-only")

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


def _freeze(v: Any) -> Any:
    """A deep, hashable, read-only copy: tables become FrozenMaps, arrays tuples."""
    if isinstance(v, Mapping):
        return FrozenMap({str(k): _freeze(x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: Any) -> Any:
    """The plain (dict and list) form of a :func:`_freeze` result."""
    if isinstance(v, Mapping):
        return {k: _thaw(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_thaw(x) for x in v]
    return v


#: Why ``encryption.fips_mode = true`` is refused (a message for users, kept in one place).
FIPS_REFUSAL = (
    "HeliosDB does not run in a FIPS 140-validated mode: it does not use the OpenSSL FIPS "
    "provider, and it derives keys from passphrases with Argon2id, which is not a "
    "FIPS-approved key derivation function. Remove fips_mode or set it to false (pages are "
    "encrypted with AES-256-GCM either way, but not by a validated module)")


# --------------------------------------------------------------------------------------------
# Checkers: each returns the normalized value or raises _Invalid
# --------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """A bad value; ``subpath`` names the part inside it (for an inline table's key)."""

    def __init__(self, message: str, subpath: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.subpath = subpath


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, Mapping):
        return "table"
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return "date/time"
    return type(v).__name__


def _toml_repr(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(v: Any) -> str:
    return f"{_toml_repr(v)} ({_type_name(v)})"


Checker = Callable[[Any], Any]


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Invalid(f"expected true or false, got {_describe(v)}")
    return v


def _int(lo: int = 1, hi: Optional[int] = None) -> Checker:
    if lo == 1:
        what = "a positive integer"
    elif lo == 0:
        what = "a non-negative integer"
    else:
        what = f"an integer >= {lo}"

    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Invalid(f"expected {what}, got {_describe(v)}")
        if v < lo:
            raise _Invalid(f"expected {what}, got {v}")
        if hi is not None and v > hi:
            raise _Invalid(f"expected at most {hi}, got {v}")
        return v
    return check


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Invalid(f"expected a number in (0, 1], got {_describe(v)}")
    if not 0 < v <= 1:
        raise _Invalid(f"expected a number in (0, 1], got {v}")
    return float(v)


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _Invalid(f"expected a string, got {_describe(v)}")
    return v


def _nonempty_str(v: Any) -> str:
    if not _str(v).strip():
        raise _Invalid("expected a non-empty string")
    return v


def _choice(options: Any) -> Checker:
    def check(v: Any) -> str:
        _str(v)
        if v not in options:
            near = difflib.get_close_matches(v, list(options), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise _Invalid(f"expected one of {', '.join(map(repr, options))}; got {v!r}{hint}")
        return v
    return check


def _optional(check: Checker) -> Checker:
    # TOML has no null: None only reaches us from dicts (e.g. Config.to_dict() output).
    def opt(v: Any) -> Any:
        return None if v is None else check(v)
    return opt


def _page_size(v: Any) -> int:
    _int(512, 65536)(v)
    if v & (v - 1):
        raise _Invalid(f"expected a power of two from 512 to 65536, got {v}")
    return v


def _str_list(what: str) -> Checker:
    def check(v: Any) -> tuple[str, ...]:
        if isinstance(v, str) or not isinstance(v, (list, tuple)):
            raise _Invalid(f"expected an array of {what}, got {_describe(v)}")
        out: list[str] = []
        for i, item in enumerate(v):
            if not isinstance(item, str) or not item.strip():
                raise _Invalid(f"item {i}: expected a non-empty string, got {_describe(item)}")
            if item not in out:  # duplicates are harmless; keep the first
                out.append(item)
        return tuple(out)
    return check


_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _identifier(v: Any) -> str:
    # The audit code splices the table name into SQL text; accept only names that need no
    # quoting at all, so no quoting bug can ever become SQL injection.
    _str(v)
    if not _IDENT_RE.match(v):
        raise _Invalid(f"expected a plain SQL identifier (letters, digits, _; not starting "
                       f"with a digit; at most 128 characters), got {v!r}")
    if v.lower().startswith("sqlite_"):
        raise _Invalid(f"names starting with 'sqlite_' are reserved by SQLite, got {v!r}")
    import apsw  # local: keep importing this module cheap for tools that only read configs
    if v.upper() in apsw.keywords:
        raise _Invalid(f"{v!r} is an SQL keyword")
    return v


_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _key_source(v: Any) -> Optional[KeySource]:
    if v is None or isinstance(v, KeySource):
        if isinstance(v, KeySource):
            return _key_source({v.kind: v.value})
        return None
    if not isinstance(v, Mapping):
        raise _Invalid('expected a table with one of file, env, passphrase_env, e.g. '
                       '{ file = "/secure/db.key" }, got ' + _describe(v))
    kinds = ("file", "env", "passphrase_env")
    for k in v:
        if _KIND_SPELLINGS.get(str(k).replace("_", "").lower()) is None:
            near = difflib.get_close_matches(str(k).lower(), kinds, n=1)
            hint = f"; did you mean {near[0]}?" if near else f"; expected one of {', '.join(kinds)}"
            raise _Invalid(f"unknown key{hint}", (str(k),))
    if len(v) != 1:
        raise _Invalid(f"expected exactly one of {', '.join(kinds)}, got {len(v)}")
    (given, value), = v.items()
    kind = _KIND_SPELLINGS[str(given).replace("_", "").lower()]
    if not isinstance(value, str) or not value:
        raise _Invalid(f"expected a non-empty string, got {_describe(value)}", (str(given),))
    if kind != "file" and not _ENV_RE.match(value):
        raise _Invalid(f"expected an environment variable name, got {value!r}", (str(given),))
    return KeySource(kind, value)


#: ``key_source`` table keys, compared without case and underscores: the product documents'
#: ``{ File = ... }``, ``{ Env = ... }`` and ``{ PassphraseEnv = ... }`` (Rust enum variant
#: names) mean what ``file``, ``env`` and ``passphrase_env`` mean.
_KIND_SPELLINGS = {"file": "file", "env": "env", "passphraseenv": "passphrase_env"}


def _algorithm(v: Any) -> str:
    """``aes-256-gcm``, also spelt as the product documents do: ``Aes256Gcm`` (the Rust
    variant), ``AES-256-GCM``, ``aes_256_gcm``... (case, ``-``, ``_`` and spaces ignored)."""
    _str(v)
    if re.sub(r"[\s_-]", "", v).lower() == "aes256gcm":
        return "aes-256-gcm"
    return _choice(_ALGORITHMS)(v)


def _fips_mode(v: Any) -> bool:
    if _bool(v):
        raise _Invalid(FIPS_REFUSAL)
    return v


_OVERRIDE_NAMES = CATEGORIES + OPERATIONS


def _overrides(v: Any) -> FrozenMap:
    if isinstance(v, FrozenMap):
        v = dict(v)
    if not isinstance(v, Mapping):
        raise _Invalid(f"expected a table of operation or category = days, got {_describe(v)}")
    out: dict[str, int] = {}
    for k, days in v.items():
        name = str(k).upper()
        if name not in _OVERRIDE_NAMES:
            near = difflib.get_close_matches(name, _OVERRIDE_NAMES, n=1)
            hint = f"; did you mean {near[0]}?" if near else (
                f"; expected a category ({', '.join(CATEGORIES)}) or an operation")
            raise _Invalid(f"unknown operation or category{hint}", (str(k),))
        if name in out:
            raise _Invalid("given twice (names are case-insensitive)", (str(k),))
        try:
            out[name] = _int(1)(days)
        except _Invalid as e:
            raise _Invalid(str(e), (str(k),)) from None
    return FrozenMap(out)


def _parse_hhmm(s: str) -> _dt.time:
    return _dt.time(int(s[:2]), int(s[3:5]))


_HHMM_RE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _hhmm(v: Any) -> str:
    _str(v)
    if not _HHMM_RE.match(v):
        raise _Invalid(f'expected a time "HH:MM" (24-hour), got {v!r}')
    return v


def time_zone(name: str) -> _dt.tzinfo:
    """The ``tzinfo`` of an IANA time zone name as configs give it (``"UTC"`` works even
    where no tz database is installed); raises KeyError or ValueError for an unknown one."""
    if name.upper() == "UTC":  # works even where no tz database is installed
        return _dt.timezone.utc
    import zoneinfo
    return zoneinfo.ZoneInfo(name)


def _timezone(v: Any) -> str:
    _str(v)
    try:
        time_zone(v)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
        raise _Invalid(f'expected an IANA time zone name such as "Europe/Paris", '
                       f'got {v!r}') from None
    return v


# --------------------------------------------------------------------------------------------
# Declaring a key: each dataclass field below carries its own schema in its metadata
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    """One config key as the loader and the docs see it (built from a field's metadata)."""

    name: str
    type: str
    check: Checker
    doc: str
    aliases: tuple[str, ...] = ()


def _key(default: Any = dataclasses.MISSING, *, type: str, check: Checker, doc: str,
         aliases: tuple[str, ...] = (), **field_options: Any) -> Any:
    """A dataclass field that is a config key: its TOML type (for the docs), the checker
    that validates and normalizes a value, its documentation and its accepted aliases."""
    return field(default=default, **field_options,
                 metadata={"key": {"type": type, "check": check, "doc": doc,
                                   "aliases": aliases}})


def _section(cls: type) -> Any:
    """A dataclass field that is a TOML table of its own (``[audit.after_hours]``)."""
    return field(default_factory=cls, metadata={"section": cls})


# --------------------------------------------------------------------------------------------
# The dataclasses: every key is declared here, once (_key), and the loader's tables, the
# unknown-key hints and docs/CONFIG.md are derived from these fields (see _SECTIONS)
# --------------------------------------------------------------------------------------------


#: Argon2id cost profiles that ``encryption.kdf_profile`` may name (memory in KiB): the
#: one table of them, which ``heliosdb.crypto.keys`` derives keys with (config is data and
#: imports none of the other modules). "default" is RFC 9106's low-memory recommendation
#: (argon2-cffi ``RFC_9106_LOW_MEMORY``, about 0.1 s per open here, DESIGN.md section 5);
#: "interactive" is OWASP's minimum; "sensitive" quadruples the memory for keys that guard
#: long-lived archives; "test" is deliberately weak and exists only to keep test suites
#: fast (never for real data).
KDF_PROFILES: Mapping[str, Mapping[str, int]] = FrozenMap({
    "default": FrozenMap({"time_cost": 3, "memory_kib": 65536, "parallelism": 4}),
    "interactive": FrozenMap({"time_cost": 2, "memory_kib": 19456, "parallelism": 1}),
    "sensitive": FrozenMap({"time_cost": 4, "memory_kib": 262144, "parallelism": 4}),
    "test": FrozenMap({"time_cost": 1, "memory_kib": 64, "parallelism": 1}),
})

@dataclass(frozen=True)
class KeySource:
    """Where the encryption key comes from (DESIGN.md section 2).

    ``kind`` is ``"file"`` (a raw 32-byte key file; a relative path in a config file is
    resolved against that file's directory), ``"env"`` (an environment variable holding 64
    hex characters) or ``"passphrase_env"`` (an environment variable holding a passphrase,
    stretched with Argon2id). ``value`` is the path or the variable name, never key material.
    """

    kind: Literal["file", "env", "passphrase_env"]
    value: str

    def __post_init__(self) -> None:
        if self.kind not in ("file", "env", "passphrase_env"):
            raise ConfigError(f"KeySource: kind must be file, env or passphrase_env, "
                              f"got {self.kind!r}", key="encryption.key_source")


@dataclass(frozen=True)
class EncryptionConfig:
    """``[encryption]``: transparent page encryption.

    ``enabled = true`` with no ``key_source`` means the key must be passed to
    ``connect(..., key=...)``; connecting without one then fails with ``KeyRequiredError``.
    """

    enabled: bool = _key(
        False, type="boolean", check=_bool,
        doc="Encrypt every page, journal, WAL and temp file. With no `key_source`, the key "
            "must be passed to `connect(..., key=...)`.")
    algorithm: str = _key(
        "aes-256-gcm", type="string", check=_algorithm,
        doc="Page cipher. Only `aes-256-gcm` (12-byte nonce, 16-byte tag per page); the "
            "product's `Aes256Gcm`, `AES-256-GCM` and other casings mean the same.")
    key_source: Optional[KeySource] = _key(
        None, type="table", check=_key_source,
        doc='Where the key comes from: `{ file = "/secure/db.key" }` (raw 32 bytes; a '
            'relative path is resolved against the config file), `{ env = "VAR" }` (64 hex '
            'chars) or `{ passphrase_env = "VAR" }` (passphrase, Argon2id). Unset: passed to '
            '`connect()`. The product\'s `File`, `Env`, `PassphraseEnv` spellings are '
            'accepted.')
    kdf_profile: str = _key(
        "default", type="string", check=_choice(tuple(KDF_PROFILES)),
        doc="Argon2id cost for passphrases: " + ", ".join(
            f"`{n}` (t={p['time_cost']}, {p['memory_kib'] // 1024} MiB, "
            f"p={p['parallelism']})" for n, p in KDF_PROFILES.items())
        + ". `test` is for test suites only.")
    rotation_interval_days: int = _key(
        90, type="integer", check=_int(0, 36500),
        doc="Days after which the data key is due for rotation (0: no schedule).")
    nonce_warning_fraction: float = _key(
        0.5, type="float", check=_fraction,
        doc="Warn when the writes under one key reach this fraction of the 2^32 random-nonce "
            "bound of AES-GCM (NIST SP 800-38D).")
    fips_mode: bool = _key(
        False, type="boolean", check=_fips_mode,
        doc="Only `false` is accepted: HeliosDB does not run in a FIPS 140-validated mode (no "
            "OpenSSL FIPS provider; Argon2id is not a FIPS-approved KDF), so `true` is an "
            "error rather than a promise it cannot keep.")

    def __post_init__(self) -> None:
        if self.fips_mode:
            raise ConfigError(f"encryption.fips_mode: {FIPS_REFUSAL}", key="encryption.fips_mode")

    @property
    def kdf_params(self) -> Mapping[str, int]:
        """The Argon2id parameters of :attr:`kdf_profile` (see :data:`KDF_PROFILES`)."""
        return KDF_PROFILES[self.kdf_profile]


@dataclass(frozen=True)
class CaptureMetadata:
    """``[audit.capture_metadata]``: what goes into each event's ``metadata`` JSON.

    TOML accepts both ``client_ip`` and the product documents' ``capture_client_ip``
    spelling (and likewise for every field).
    """

    client_ip: bool = _key(
        True, type="boolean", check=_bool, aliases=("capture_client_ip",),
        doc="Record the client IP given in the session context.")
    application_name: bool = _key(
        True, type="boolean", check=_bool, aliases=("capture_application_name",),
        doc="Record the application name.")
    database_name: bool = _key(
        True, type="boolean", check=_bool, aliases=("capture_database_name",),
        doc="Record the database file name.")
    execution_time: bool = _key(
        True, type="boolean", check=_bool, aliases=("capture_execution_time",),
        doc="Record each statement's execution time (ms).")
    custom_fields: bool = _key(
        False, type="boolean", check=_bool, aliases=("capture_custom_fields",),
        doc="Record application-supplied custom fields.")
    custom_field_names: tuple[str, ...] = _key(
        (), type="array of strings", check=_str_list("field names"),
        doc="Custom fields the application is expected to supply (e.g. GDPR legal basis and "
            "purpose); documentation for reports, not enforced per event.")

    def __post_init__(self) -> None:
        # Built directly (not by load_config) with a list: keep the instance immutable.
        object.__setattr__(self, "custom_field_names", tuple(self.custom_field_names))


@dataclass(frozen=True)
class AfterHours:
    """``[audit.after_hours]``: the window ``conn.audit.suspicious()`` calls after hours.

    ``start`` and ``end`` are local ``"HH:MM"`` times in ``timezone`` (an IANA name); a window
    with ``start > end`` wraps past midnight; ``start == end`` means no after-hours window.
    With ``weekends`` true, all of Saturday and Sunday counts as after hours.
    """

    start: str = _key("19:00", type="string", check=_hhmm,
                      doc='Local time "HH:MM" at which after hours begins.')
    end: str = _key("07:00", type="string", check=_hhmm,
                    doc='Local time "HH:MM" at which after hours ends '
                        "(before `start`: the window wraps past midnight).")
    timezone: str = _key("UTC", type="string", check=_timezone,
                         doc="IANA time zone of `start` and `end`.")
    weekends: bool = _key(True, type="boolean", check=_bool,
                          doc="All of Saturday and Sunday counts as after hours.")

    def contains(self, when: _dt.datetime) -> bool:
        """True if ``when`` falls after hours. A naive ``when`` is taken as UTC."""
        if when.tzinfo is None:
            when = when.replace(tzinfo=_dt.timezone.utc)
        local = when.astimezone(time_zone(self.timezone))
        if self.weekends and local.weekday() >= 5:
            return True
        t = local.time()
        start, end = _parse_hhmm(self.start), _parse_hhmm(self.end)
        if start == end:
            return False
        if start < end:
            return start <= t < end
        return t >= start or t < end


@dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: what the audit log captures and how long it keeps it.

    Retention: ``retention_days`` is the total time an event is kept; ``archive_days`` is the
    trailing part of it that may live in archive files instead of the database, so events
    stay in the database for :attr:`active_days` (``retention_days - archive_days``).
    ``retention_overrides`` sets the total retention of one operation (``"DELETE"``) or a
    category (``"DDL"``, ``"SECURITY"``...; see :func:`category_of`); an event is never kept
    in the database longer than the active window, the rest of its retention is archive.
    """

    enabled: bool = _key(False, type="boolean", check=_bool,
                         doc="Capture events into the audit log.")
    log_ddl: bool = _key(True, type="boolean", check=_bool,
                         doc="Log CREATE, DROP and ALTER statements.")
    log_dml: bool = _key(True, type="boolean", check=_bool,
                         doc="Log INSERT, UPDATE and DELETE (with row counts).")
    log_select: bool = _key(False, type="boolean", check=_bool,
                            doc="Log SELECT (buffered, see `async_buffer_size`).")
    log_transactions: bool = _key(False, type="boolean", check=_bool,
                                  doc="Log BEGIN, COMMIT and ROLLBACK.")
    log_auth: bool = _key(
        True, type="boolean", check=_bool,
        doc="Log LOGIN/LOGOUT (connection open/close by the session user) and key changes.")
    retention_days: int = _key(90, type="integer", check=_int(1, 36500),
                               doc="Total days an event is kept (database plus archive).")
    retention_overrides: Mapping[str, int] = _key(
        default_factory=FrozenMap, type="table", check=_overrides,
        doc="Total days per operation (`DELETE = 365`) or category ("
            + ", ".join(f"`{c}`" for c in CATEGORIES) + "); case-insensitive. "
            "Failed and denied attempts also count as `SECURITY`.")
    archive_days: int = _key(
        0, type="integer", check=_int(0, 36500),
        doc="Trailing part of the retention kept in archive files (gzip JSON Lines) instead "
            "of the database; events stay in the database `retention_days - archive_days` "
            "days. Must be less than `retention_days`.")
    async_buffer_size: int = _key(
        100, type="integer", check=_int(0, 10_000_000),
        doc="SELECT events buffered before a write (flushed at commit, close and when full; "
            "a crash loses at most this many). 0: write each at once.")
    enable_checksums: bool = _key(
        True, type="boolean", check=_bool,
        doc="Chain events with SHA-256 so that tampering is detectable.")
    checksums_mandatory: bool = _key(
        False, type="boolean", check=_bool,
        doc="Refuse any config (or `extends`/`replace()` of this one) that turns checksums "
            "off or lifts this flag.")
    max_query_length: int = _key(
        10000, type="integer", check=_int(1),
        doc="Characters of SQL text kept per event; longer text is cut.")
    capture_row_values: bool = _key(
        False, type="boolean", check=_bool,
        doc="Record old and new row values of UPDATE and DELETE (preupdate hook).")
    require_reason: bool = _key(
        False, type="boolean", check=_bool,
        doc="Changes need a reason for change in the session context (21 CFR Part 11).")
    capture_parameters: bool = _key(
        False, type="boolean", check=_bool,
        doc="Record the values bound to each statement in `metadata.params` (covered by the "
            "chain), redacted as `redact_tables` and `redact_columns` say.")
    redact_tables: tuple[str, ...] = _key(
        (), type="array of strings", check=_str_list("table names"),
        doc="Statements on these tables (`\"*\"`: every table) record a keyed hash "
            "(`hmac:...`, `conn.audit.keyed_hash(value)`) instead of each bound value.")
    redact_columns: tuple[str, ...] = _key(
        (), type="array of strings", check=_str_list("column names"),
        doc="Values bound to these columns (or that cannot be told apart from them) record "
            "a keyed hash instead of the value.")
    auto_purge: bool = _key(
        False, type="boolean", check=_bool,
        doc="Purge what retention says is due (into the archive) when a connection opens, "
            "at most once a day; never under a legal hold. `heliosdb purge` does it on "
            "demand.")
    table_name: str = _key(
        "__audit_log", type="string", check=_identifier,
        doc="Name of the audit table: a plain identifier, not an SQL keyword, not "
            "`sqlite_*`.")
    sensitive_tables: tuple[str, ...] = _key(
        (), type="array of strings", check=_str_list("table names"),
        doc="Tables whose reads `conn.audit.suspicious()` reports.")
    after_hours: AfterHours = _section(AfterHours)
    capture_metadata: CaptureMetadata = _section(CaptureMetadata)

    def __post_init__(self) -> None:
        # Built directly (not by load_config) with a dict or a list: keep the instance
        # immutable and hashable all the same.
        if not isinstance(self.retention_overrides, FrozenMap):
            object.__setattr__(self, "retention_overrides",
                               FrozenMap({k.upper(): v for k, v in
                                          self.retention_overrides.items()}))
        object.__setattr__(self, "sensitive_tables", tuple(self.sensitive_tables))
        object.__setattr__(self, "redact_tables", tuple(self.redact_tables))
        object.__setattr__(self, "redact_columns", tuple(self.redact_columns))

    @property
    def active_days(self) -> int:
        """Days an event stays in the database before purge archives it."""
        return self.retention_days - self.archive_days

    def retention_for(self, operation: str, *, failed: bool = False) -> int:
        """Total days to keep an event of ``operation``.

        An override for the operation wins over one for its category, which wins over
        ``retention_days``. A failed or denied attempt is also a security event: it is kept
        at least as long as the ``SECURITY`` override says.
        """
        op = operation.upper()
        days = self.retention_overrides.get(op)
        if days is None:
            days = self.retention_overrides.get(category_of(op), self.retention_days)
        if failed and "SECURITY" in self.retention_overrides:
            days = max(days, self.retention_overrides["SECURITY"])
        return days

    def active_days_for(self, operation: str, *, failed: bool = False) -> int:
        """Days an event of ``operation`` stays in the database (then archive or delete)."""
        return min(self.retention_for(operation, failed=failed), self.active_days)


@dataclass(frozen=True)
class DatabaseConfig:
    """``[database]``: accepted for compatibility with the product's config files.

    Only what maps onto SQLite pragmas applies (see :meth:`pragmas`); :meth:`ignored` says
    which keys are accepted but have no effect for a given ``connect()`` call.
    """

    path: Optional[str] = _key(
        None, type="string", check=_optional(_nonempty_str),
        doc="Database file of the product's own config files. Informational: `connect()` "
            "always names the database, so this is reported by `DatabaseConfig.ignored()`.")
    memory_limit_mb: Optional[int] = _key(
        None, type="integer", check=_optional(_int(1, 1 << 20)),
        doc="Page cache size in MiB (`PRAGMA cache_size = -KiB`).")
    enable_wal: Optional[bool] = _key(
        None, type="boolean", check=_optional(_bool),
        doc="true: `PRAGMA journal_mode = WAL`; false: `journal_mode = DELETE`; "
            "unset: SQLite's default. Ignored for in-memory databases.")
    page_size: Optional[int] = _key(
        None, type="integer", check=_optional(_page_size),
        doc="`PRAGMA page_size`, a power of two from 512 to 65536; takes effect on a new "
            "database only.")
    cache_mb: Optional[int] = _key(
        None, type="integer", check=_optional(_int(1, 1 << 20)),
        doc="Page cache size in MiB (`PRAGMA cache_size = -KiB`), the product's spelling; "
            "wins over `memory_limit_mb` (then reported by `DatabaseConfig.ignored()` and the "
            "load warning) and may not exceed it.")

    def pragmas(self) -> list[tuple[str, object]]:
        """``(pragma, value)`` pairs to run at open, in order.

        ``page_size`` comes first because it cannot change once a database is in WAL mode
        (and only takes effect on a new, empty database). ``cache_mb``, else
        ``memory_limit_mb``, becomes the page cache size, negative meaning KiB as SQLite
        defines ``cache_size``; SQLite's heap limits are process-wide, so a per-connection
        setting cannot use them.
        """
        out: list[tuple[str, object]] = []
        if self.page_size is not None:
            out.append(("page_size", self.page_size))
        if self.enable_wal is not None:
            out.append(("journal_mode", "WAL" if self.enable_wal else "DELETE"))
        cache_mb = self.cache_mb if self.cache_mb is not None else self.memory_limit_mb
        if cache_mb is not None:
            out.append(("cache_size", -cache_mb * 1024))
        return out

    def ignored(self, database: Optional[str] = None) -> list[str]:
        """Dotted keys that are set but have no effect when ``connect(database)`` is called.

        ``database.path`` is ignored whenever ``connect()`` is given a database (it always
        is; the path is informational); ``database.enable_wal`` is ignored for in-memory and
        temporary databases, which have no WAL; ``database.memory_limit_mb`` is ignored
        when ``database.cache_mb`` sizes the cache.
        """
        out: list[str] = []
        if self.path is not None and database is not None:
            out.append("database.path")
        if self.memory_limit_mb is not None and self.cache_mb is not None:
            out.append("database.memory_limit_mb")
        in_memory = database in ("", ":memory:") or (
            database is not None and database.startswith("file::memory:"))
        if self.enable_wal is not None and in_memory:
            out.append("database.enable_wal")
        return out


@dataclass(frozen=True)
class Config:
    """A complete, validated configuration. Build one with :func:`load_config`."""

    name: str = "plain"
    # Where a config came from is not what it is: two equal configs from different files
    # compare (and hash) equal.
    source: Optional[str] = field(default=None, compare=False)
    database: DatabaseConfig = _section(DatabaseConfig)
    encryption: EncryptionConfig = _section(EncryptionConfig)
    audit: AuditConfig = _section(AuditConfig)
    description: str = ""
    #: Top-level sections HeliosDB does not own (``[monitoring]``, ``[gdpr]``...), kept for
    #: the application: a read-only mapping of section name to its (read-only) table, arrays
    #: as tuples. Loading them issues one :class:`heliosdb.ConfigWarning`.
    extra: Mapping[str, Any] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        # Built directly with plain dicts: keep the instance immutable and hashable.
        object.__setattr__(self, "extra", _freeze(self.extra))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/TOML types and ``None``); ``load_config`` accepts it back.

        ``source`` is not included (it says where a config came from, not what it is). The
        sections of :attr:`extra` follow HeliosDB's own, at the top level as in the file.
        """
        return {
            "name": self.name,
            "description": self.description,
            "database": _section_to_dict(self.database),
            "encryption": _section_to_dict(self.encryption),
            "audit": _section_to_dict(self.audit),
            **_thaw(self.extra),
        }

    def to_toml(self) -> str:
        """This config as TOML text that :func:`load_config` reads back to an equal config."""
        return _dump_toml(self.to_dict())

    def replace(self, **sections: Any) -> "Config":
        """A new config with some keys changed, validated like a file.

        Each keyword is ``name``, ``description``, or a section (``database``,
        ``encryption``, ``audit``) given as a mapping of keys to change (merged, nested
        tables included) or as a section dataclass (replacing the section). Checksums that
        are mandatory here stay mandatory: ``replace(audit={"enable_checksums": False})`` on
        the hipaa preset raises :class:`ConfigError`.
        """
        raw = self.to_dict()
        for key, value in sections.items():
            if key in ("database", "encryption", "audit"):
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    raw[key] = _section_to_dict(value)
                elif isinstance(value, Mapping):
                    raw[key] = _deep_merge(raw[key], value)
                else:
                    raise ConfigError(f"<replace>: {key}: expected a table or a "
                                      f"{key.capitalize()}Config, got {_describe(value)}",
                                      key=key, file="<replace>")
            elif key in ("name", "description"):
                raw[key] = value
            else:
                raise _unknown_key_error(key, _TOP_KEYS, "<replace>", None, key)
        src = _Source("<replace>", None, None)
        ctx = _Ctx(src, {})
        cfg = _build(raw, ctx, name=raw.get("name") or self.name, source=self.source,
                     inherited=self if self.audit.checksums_mandatory else None)
        return cfg


def _section_to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, KeySource):
            v = {v.kind: v.value}
        elif isinstance(v, FrozenMap):
            v = dict(v)
        elif dataclasses.is_dataclass(v):
            v = _section_to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


# --------------------------------------------------------------------------------------------
# The schema, derived from the dataclass fields. Documentation is generated from it.
# --------------------------------------------------------------------------------------------


def _subsections(cls: type) -> tuple[tuple[str, type], ...]:
    """(name, dataclass) of the fields of ``cls`` declared with :func:`_section`."""
    return tuple((f.name, f.metadata["section"]) for f in dataclasses.fields(cls)
                 if "section" in f.metadata)


def _keys_of(cls: type) -> tuple[_Key, ...]:
    """The keys of one section dataclass, in declaration order."""
    keys = []
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            continue
        if "key" not in f.metadata:
            # A field without a declaration could never be set from a file: refuse it here
            # rather than ship a setting that is silently unconfigurable.
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with _key() or _section()")
        keys.append(_Key(f.name, **f.metadata["key"]))
    return tuple(keys)


def _walk_sections(cls: type, path: tuple[str, ...]
                   ) -> Iterator[tuple[tuple[str, ...], type]]:
    """(path, dataclass) of the section ``cls`` at ``path`` and of every section inside it."""
    yield path, cls
    for name, sub in _subsections(cls):
        yield from _walk_sections(sub, path + (name,))


#: The sections HeliosDB owns: the fields of :class:`Config` declared with :func:`_section`.
_OWNED_SECTIONS: tuple[str, ...] = tuple(name for name, _ in _subsections(Config))
_TOP_KEYS = ("name", "description", "extends") + _OWNED_SECTIONS

#: section path -> its dataclass, outer sections before the ones inside them.
_SECTION_CLASSES: dict[tuple[str, ...], type] = {
    path: cls for top, top_cls in _subsections(Config)
    for path, cls in _walk_sections(top_cls, (top,))
}

#: section path -> (keys, subsection names): what the loader, the docs and the unknown-key
#: hints read.
_SECTIONS: dict[tuple[str, ...], tuple[tuple[_Key, ...], tuple[str, ...]]] = {
    path: (_keys_of(cls), tuple(name for name, _ in _subsections(cls)))
    for path, cls in _SECTION_CLASSES.items()
}


def _instantiate(cls: type, values: Mapping[str, Any]) -> Any:
    """``cls`` built from :func:`_read_section` output (subsections built first)."""
    values = dict(values)
    for name, sub in _subsections(cls):
        values[name] = _instantiate(sub, values.get(name, {}))
    return cls(**values)


# --------------------------------------------------------------------------------------------
# Finding the line of a key in TOML text (tomllib does not report it)
# --------------------------------------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\\n]|\\.)*"'
_LITERAL = r"'[^'\n]*'"
_PART = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED = rf"{_PART}(?:[ \t]*\.[ \t]*{_PART})*"


@functools.lru_cache(maxsize=None)
def _line_regexes() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    # Compiled on first use: only error paths need them, and they cost milliseconds at
    # import, which every `import heliosdb` would pay.
    return (re.compile(rf"^[ \t]*\[\[?[ \t]*({_DOTTED})[ \t]*\]\]?"),
            re.compile(rf"^[ \t]*({_DOTTED})[ \t]*="),
            re.compile(_PART))


def _split_dotted(s: str) -> tuple[str, ...]:
    parts = []
    for m in _line_regexes()[2].finditer(s):
        p = m.group(0)
        if p[0] == '"':
            p = p[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif p[0] == "'":
            p = p[1:-1]
        parts.append(p)
    return tuple(parts)


def find_key_line(text: str, path: tuple[str, ...] | str) -> Optional[int]:
    """1-based line where the dotted key ``path`` is defined in TOML ``text``, or None.

    Tracks ``[table]`` headers and dotted keys. A key inside an inline table
    (``key_source = { file = ... }``) is reported at the line of the enclosing key; a table
    never named on its own line at the first line that defines a key inside it
    (``x.y = 1`` for ``x``); a key not found at all at the closest enclosing table or key.
    """
    if isinstance(path, str):
        path = tuple(path.split("."))
    table: tuple[str, ...] = ()
    best_line, best_len = None, 0
    inner_line: Optional[int] = None
    in_multiline: Optional[str] = None
    header_re, keyline_re, _ = _line_regexes()
    for lineno, line in enumerate(text.splitlines(), 1):
        if in_multiline:
            # Skip the body of a multi-line string: its text may look like keys.
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        here: Optional[tuple[str, ...]] = None
        m = header_re.match(line)
        if m:
            table = _split_dotted(m.group(1))
            here = table
        else:
            m = keyline_re.match(line)
            if m:
                here = table + _split_dotted(m.group(1))
                rest = line[m.end():]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote
                        break
        if here is None:
            continue
        if here == path:
            return lineno
        if len(here) > len(path) and here[:len(path)] == path and inner_line is None:
            inner_line = lineno  # defines a key inside the target: the target's first use
        if len(here) < len(path) and path[:len(here)] == here and len(here) > best_len:
            best_line, best_len = lineno, len(here)
    return inner_line if inner_line is not None else best_line


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """One input: a file (with its text, for line numbers) or a dict."""

    display: str
    text: Optional[str]
    directory: Optional[Path]

    def line_of(self, path: tuple[str, ...]) -> Optional[int]:
        return None if self.text is None else find_key_line(self.text, path)


class _Ctx:
    """Where each key came from (several files when ``extends`` is used)."""

    def __init__(self, default: _Source, origins: dict[tuple[str, ...], _Source]) -> None:
        self.default = default
        self.origins = origins

    def origin(self, path: tuple[str, ...]) -> _Source:
        for n in range(len(path), 0, -1):
            src = self.origins.get(path[:n])
            if src is not None:
                return src
        return self.default

    def error(self, path: tuple[str, ...], message: str) -> ConfigError:
        src = self.origin(path)
        return _error(message, path, src.display, src.line_of(path))


def _error(message: str, path: tuple[str, ...], file: str,
           line: Optional[int]) -> ConfigError:
    key = ".".join(path) if path else None
    where = f"{file}:{line}" if line is not None else file
    text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
    return ConfigError(text, key=key, file=file, line=line)


def _unknown_key_error(name: str, known: tuple[str, ...], file: str, line: Optional[int],
                       dotted: str, section: tuple[str, ...] = ()) -> ConfigError:
    path = tuple(dotted.split("."))
    # Right key, wrong section? Say where it belongs before guessing at a spelling.
    homes = [".".join(sec + (name,)) for sec, (keys, subs) in _SECTIONS.items()
             if sec != section and (name in subs or any(name == k.name or name in k.aliases
                                                       for k in keys))]
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if homes:
        hint = f"; did you mean {homes[0]} (it belongs in [{homes[0].rsplit('.', 1)[0]}])?"
    elif near:
        hint = f"; did you mean {'.'.join(section + (near[0],))}?"
    else:
        hint = f"; known keys here: {', '.join(known)}"
    return _error(f"unknown key{hint}", path, file, line)


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k != "key_source":
            # key_source is one choice of three, not a table to merge key by key.
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _record_origins(data: Mapping[str, Any], src: _Source, prefix: tuple[str, ...],
                    origins: dict[tuple[str, ...], _Source]) -> None:
    for k, v in data.items():
        path = prefix + (str(k),)
        origins[path] = src
        if isinstance(v, Mapping):
            _record_origins(v, src, path, origins)


def _read_section(raw: Any, path: tuple[str, ...], ctx: _Ctx) -> dict[str, Any]:
    """Validate one table against its schema: field name -> value (only keys given)."""
    keys, subsections = _SECTIONS[path]
    if not isinstance(raw, Mapping):
        raise ctx.error(path, f"expected a table [{'.'.join(path)}], got {_describe(raw)}")
    by_name = {k.name: k for k in keys}
    for k in keys:
        for alias in k.aliases:
            by_name[alias] = k
    out: dict[str, Any] = {}
    for name, value in raw.items():
        name = str(name)
        kpath = path + (name,)
        if name in subsections:
            out[name] = _read_section(value, kpath, ctx)
            continue
        spec = by_name.get(name)
        if spec is None:
            known = tuple(by_name) + subsections
            src = ctx.origin(kpath)
            raise _unknown_key_error(name, known, src.display, src.line_of(kpath),
                                     ".".join(kpath), path)
        if spec.name in out:
            raise ctx.error(kpath, f"given twice (as {spec.name} and "
                                   f"{' and '.join(spec.aliases)})")
        try:
            out[spec.name] = spec.check(value)
        except _Invalid as e:
            raise ctx.error(kpath + e.subpath, str(e)) from None
    return out


#: Keys of sections HeliosDB does not own that look like audit or encryption settings: the
#: warning names them, since they change nothing here ([logging] audit_log_enabled does not
#: turn HeliosDB's audit log on).
_LOOKALIKE_RE = re.compile(r"audit|encrypt|cipher|fips|retention|checksum", re.IGNORECASE)


def _is_foreign_section(name: str, value: Any) -> bool:
    """A top-level table (or array of tables) that HeliosDB leaves to the application.

    Not one whose name is a misspelling of a section HeliosDB owns (``[audti]``), nor one
    that belongs inside an owned section (``[capture_metadata]``, ``[retention_overrides]``):
    those stay errors, as a typo would otherwise switch a setting off.
    """
    is_table = isinstance(value, Mapping) or (
        isinstance(value, (list, tuple)) and bool(value)
        and all(isinstance(x, Mapping) for x in value))
    if not is_table or name in _TOP_KEYS:
        return False
    if difflib.get_close_matches(name.lower(), _OWNED_SECTIONS, n=1, cutoff=0.76):
        return False
    return not any(name in subs or any(name == k.name or name in k.aliases for k in keys)
                   for keys, subs in _SECTIONS.values())


def _lookalike_keys(value: Any, prefix: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    if isinstance(value, Mapping):
        for k, v in value.items():
            path = prefix + (str(k),)
            if _LOOKALIKE_RE.search(str(k)):
                out.append(".".join(path))
            out.extend(_lookalike_keys(v, path))
    elif isinstance(value, (list, tuple)):
        for v in value:
            out.extend(_lookalike_keys(v, prefix))
    return list(dict.fromkeys(out))


def _load_warning(cfg: Config, ctx: _Ctx) -> Optional[ConfigWarning]:
    """The one warning of a load: foreign sections and keys accepted without effect."""
    where = ctx.default.display

    def at(path: tuple[str, ...]) -> str:
        src = ctx.origin(path)
        line = src.line_of(path)
        if src.display != where:
            return f" ({src.display}:{line})" if line else f" ({src.display})"
        return f" (line {line})" if line else ""

    parts: list[str] = []
    keys: list[str] = []
    if cfg.extra:
        names = ", ".join(f"[{k}]{at((k,))}" for k in cfg.extra)
        parts.append(f"ignoring section(s) HeliosDB does not own, kept for the application "
                     f"in Config.extra: {names}")
        look = [k for s, v in cfg.extra.items() for k in _lookalike_keys(v, (s,))]
        if look:
            parts.append("these keys in them look like audit or encryption settings but "
                         "change nothing in HeliosDB (its own are in [audit] and "
                         "[encryption], see docs/CONFIG.md): " + ", ".join(look))
            keys.extend(look)
    if "database.memory_limit_mb" in cfg.database.ignored():
        path = ("database", "memory_limit_mb")
        parts.append(f"database.memory_limit_mb{at(path)} has no effect: database.cache_mb "
                     f"sizes the page cache, and SQLite has no per-connection memory limit")
        keys.append("database.memory_limit_mb")
    if not parts:
        return None
    return ConfigWarning(f"{where}: " + "; ".join(parts), file=where,
                         sections=tuple(cfg.extra), keys=tuple(keys))


def _build(raw: Mapping[str, Any], ctx: _Ctx, *, name: str, source: Optional[str],
           inherited: Optional[Config] = None) -> Config:
    """Validate a merged raw mapping into a Config."""
    extra: dict[str, Any] = {}
    for k in raw:
        if k not in _TOP_KEYS:
            if _is_foreign_section(str(k), raw[k]):
                extra[str(k)] = raw[k]
                continue
            src = ctx.origin((str(k),))
            raise _unknown_key_error(str(k), _TOP_KEYS, src.display,
                                     src.line_of((str(k),)), str(k))
    for k in ("name", "description"):
        if k in raw and raw[k] is not None and not isinstance(raw[k], str):
            raise ctx.error((k,), f"expected a string, got {_describe(raw[k])}")

    db = _read_section(raw.get("database", {}), ("database",), ctx)
    enc = _read_section(raw.get("encryption", {}), ("encryption",), ctx)
    aud = _read_section(raw.get("audit", {}), ("audit",), ctx)

    ks = enc.get("key_source")
    if ks is not None and ks.kind == "file" and not os.path.isabs(ks.value):
        directory = ctx.origin(("encryption", "key_source")).directory
        if directory is not None:
            enc["key_source"] = KeySource("file", str(directory / ks.value))

    audit = _instantiate(AuditConfig, aud)

    # Cross-key rules.
    if audit.archive_days >= audit.retention_days:
        raise ctx.error(("audit", "archive_days"),
                        f"must be less than audit.retention_days ({audit.retention_days}): "
                        f"events need at least one day in the database, got "
                        f"{audit.archive_days}")
    # The inherited rule first: its message names the config that made checksums mandatory.
    if inherited is not None and inherited.audit.checksums_mandatory:
        for key in ("enable_checksums", "checksums_mandatory"):
            if not getattr(audit, key):
                raise ctx.error(("audit", key),
                                f"checksums are mandatory in {inherited.name!r} and cannot "
                                f"be turned off")
    if audit.checksums_mandatory and not audit.enable_checksums:
        raise ctx.error(("audit", "enable_checksums"),
                        "cannot be false while audit.checksums_mandatory is true")
    if db.get("cache_mb") is not None and db.get("memory_limit_mb") is not None \
            and db["cache_mb"] > db["memory_limit_mb"]:
        raise ctx.error(("database", "cache_mb"),
                        f"a {db['cache_mb']} MiB cache exceeds database.memory_limit_mb "
                        f"({db['memory_limit_mb']})")
    if audit.capture_metadata.custom_field_names and not audit.capture_metadata.custom_fields:
        raise ctx.error(("audit", "capture_metadata", "custom_field_names"),
                        "names custom fields, but audit.capture_metadata.custom_fields is "
                        "false")

    return Config(name=name, source=source, database=DatabaseConfig(**db),
                  encryption=EncryptionConfig(**enc), audit=audit,
                  description=raw.get("description") or "", extra=extra)


@functools.lru_cache(maxsize=1)  # where this module lies does not change while it runs
def presets_dir() -> Path:
    """Directory holding the preset files.

    ``heliosdb/configs`` (a symlink to, or in a wheel a copy of, the repository's
    ``configs/``), else the repository root's ``configs/`` (a source checkout).
    """
    here = Path(__file__).resolve().parent
    for candidate in (Path(__file__).parent / "configs", here.parent / "configs"):
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    return here.parent / "configs"


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def _normalize_preset(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def preset_path(name: str) -> Path:
    """Path of preset ``name`` (``"hipaa"``, ``"PCI_DSS"`` -> ``pci-dss.toml``)."""
    norm = _normalize_preset(name)
    path = presets_dir() / f"{norm}.toml"
    if not path.is_file():
        names = preset_names()
        near = difflib.get_close_matches(norm, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{name}: no such preset{hint} (presets: {', '.join(names)})",
                          file=str(name))
    return path


def _read_toml(path: Path, display: str) -> tuple[dict[str, Any], _Source]:
    try:
        raw_bytes = path.read_bytes()
        # (as read_text() reads: universal newlines)
        text = raw_bytes.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        read = getattr(_loading, "files", None)
        if read is not None:
            read.append((str(path), _digest(raw_bytes)))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{display}: cannot read config file: {e}", file=display) from e
    src = _Source(display, text, path.resolve().parent)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = getattr(e, "lineno", None)  # Python 3.14+ has it
        msg = getattr(e, "msg", None) or str(e)
        if line is None:
            m = re.search(r"at line (\d+)", str(e))
            line = int(m.group(1)) if m else (text.count("\n") + 1
                                               if "end of document" in str(e) else None)
        raise _error(f"TOML syntax error: {msg}", (), display, line) from e
    return data, src


def _is_preset_name(spec: str) -> bool:
    return (not spec.endswith(".toml") and "/" not in spec and os.sep not in spec
            and (presets_dir() / f"{_normalize_preset(spec)}.toml").is_file())


def _resolve(spec: Union[str, os.PathLike], base_dir: Optional[Path]) -> tuple[Path, str, str]:
    """(path, display name, config name) of a preset name or a file."""
    if isinstance(spec, str) and _is_preset_name(spec):
        path = preset_path(spec)
        return path, f"configs/{path.name}", path.stem
    path = Path(spec)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.exists():
        display = os.fspath(spec)
        if isinstance(spec, str) and not spec.endswith(".toml"):
            names = preset_names()
            near = difflib.get_close_matches(_normalize_preset(spec), names, n=1)
            hint = f" (did you mean preset {near[0]!r}?)" if near else ""
            raise ConfigError(f"{display}: no such preset or file{hint}; presets: "
                              f"{', '.join(names)}", file=display)
        raise ConfigError(f"{display}: config file not found", file=display)
    return path, os.fspath(path), path.stem


def _load_raw(data: Mapping[str, Any], src: _Source, chain: tuple[str, ...]
              ) -> tuple[dict[str, Any], dict[tuple[str, ...], _Source], Optional[Config]]:
    """Resolve ``extends``: merged raw data, key origins, and the parent's config."""
    data = dict(data)
    origins: dict[tuple[str, ...], _Source] = {}
    parent_cfg: Optional[Config] = None
    merged: dict[str, Any] = {}
    ext = data.pop("extends", None)
    if ext is not None:
        if not isinstance(ext, str) or not ext:
            raise _error(f"expected a preset name or a file path, got {_describe(ext)}",
                         ("extends",), src.display, src.line_of(("extends",)))
        try:
            path, display, pname = _resolve(ext, src.directory)
        except ConfigError as e:
            raise _error(str(e).split(": ", 1)[-1], ("extends",), src.display,
                         src.line_of(("extends",))) from None
        key = str(path.resolve())
        if key in chain:
            raise _error("extends itself (a cycle)", ("extends",), src.display,
                         src.line_of(("extends",)))
        pdata, psrc = _read_toml(path, display)
        praw, porigins, _ = _load_raw(pdata, psrc, chain + (key,))
        parent_cfg = _build(praw, _Ctx(psrc, porigins), name=pname, source=str(path))
        # A child names and describes itself; it inherits keys, not identity.
        praw.pop("name", None)
        praw.pop("description", None)
        merged, origins = praw, porigins
    _record_origins(data, src, (), origins)
    merged = _deep_merge(merged, data)
    return merged, origins, parent_cfg


_PLAIN = Config()


def _warn_once(cfg: Config, ctx: _Ctx) -> None:
    w = _load_warning(cfg, ctx)
    if w is not None:
        # Points at the caller of load_config() (or of connect(), one level further up).
        warnings.warn(w, stacklevel=3)


#: Configs loaded from files, by resolved path: (config, the (path, stamp) of every file
#: its load read, ``extends`` included). Reused while none of those files changed: every
#: connect() names its config, and parsing and validating TOML each time cost more than
#: opening the database. Only configs that loaded without a warning are kept (their
#: ``extra`` is empty, so nothing shared is mutable), so a warning is never swallowed.
_file_configs: dict[str, tuple[Config, tuple[tuple[str, bytes], ...]]] = {}
_loading = threading.local()
#: Preset name as given -> (presets_dir(), its key in _file_configs). A name resolves in
#: the presets directory alone (never relative to the working directory): while that is
#: the directory and the cached config's files read the same, the name means that
#: config, without resolving the path again at every connect(config="<preset>"). A
#: preset file gone or changed fails the check and the name is resolved anew.
_preset_keys: dict[str, tuple[Path, str]] = {}


def _digest(content: bytes) -> bytes:
    # The content's digest, not mtime: a file rewritten within the clock's granularity
    # with text of the same length must not be taken for the old one.
    return hashlib.blake2b(content, digest_size=16).digest()


def _file_stamp(path: Union[str, Path]) -> bytes:
    with open(path, "rb") as f:
        return _digest(f.read())


def _cached_file_config(key: str) -> Optional[Config]:
    hit = _file_configs.get(key)
    if hit is None:
        return None
    cfg, files = hit
    try:
        if all(_file_stamp(f) == stamp for f, stamp in files):
            return cfg
    except OSError:
        pass
    _file_configs.pop(key, None)
    return None


def load_config(spec: Union[None, str, os.PathLike, Mapping[str, Any], Config] = None) -> Config:
    """Load and validate a configuration.

    ``spec`` is ``None`` (the plain config: no audit, no encryption), a preset name, a path
    to a TOML file, a mapping shaped like the TOML file, or a :class:`Config` (returned as
    is). A file or mapping may start with ``extends = "<preset or path>"`` to inherit from
    another config; checksums mandatory in the parent cannot be turned off.

    Raises :class:`heliosdb.ConfigError` naming the key, file and line of any problem. Top-level
    sections HeliosDB does not own are kept in :attr:`Config.extra`; they, and keys accepted
    without effect, are named in one :class:`heliosdb.ConfigWarning`.
    """
    if spec is None:
        return _PLAIN
    if isinstance(spec, Config):
        return spec
    if isinstance(spec, Mapping):
        src = _Source("<dict>", None, None)
        raw, origins, parent = _load_raw(spec, src, ())
        name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") else "custom"
        ctx = _Ctx(src, origins)
        cfg = _build(raw, ctx, name=name, source=None, inherited=parent)
        _warn_once(cfg, ctx)
        return cfg
    if isinstance(spec, (str, os.PathLike)):
        hit = _preset_keys.get(spec) if type(spec) is str else None
        if hit is not None:
            where = presets_dir()
            if hit[0] is where or hit[0] == where:
                cfg = _cached_file_config(hit[1])
                if cfg is not None:
                    return cfg
        path, display, default_name = _resolve(spec, None)
        resolved = str(path.resolve())
        key = f"{resolved}\0{display}"
        if type(spec) is str and _is_preset_name(spec):
            if len(_preset_keys) >= 256:
                _preset_keys.clear()
            _preset_keys[spec] = (presets_dir(), key)
        cfg = _cached_file_config(key)
        if cfg is not None:
            return cfg
        _loading.files = files = []
        try:
            data, src = _read_toml(path, display)
            raw, origins, parent = _load_raw(data, src, (resolved,))
        finally:
            _loading.files = None
        name = raw.get("name") if isinstance(raw.get("name"), str) and raw.get("name") \
            else default_name
        ctx = _Ctx(src, origins)
        cfg = _build(raw, ctx, name=name, source=str(path), inherited=parent)
        warning = _load_warning(cfg, ctx)
        if warning is not None:
            warnings.warn(warning, stacklevel=2)
        elif not cfg.extra:
            _file_configs[key] = (cfg, tuple(files))
        return cfg
    raise ConfigError(f"config: expected None, a preset name, a path, a dict or a Config, "
                      f"got {type(spec).__name__}")


# --------------------------------------------------------------------------------------------
# TOML output (tomllib only reads)
# --------------------------------------------------------------------------------------------

_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY_RE.match(k) else _toml_value(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (_dt.datetime, _dt.date, _dt.time)):
        return v.isoformat()  # TOML's date/time forms are RFC 3339, as isoformat() writes
    if isinstance(v, str):
        out = []
        for ch in v:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()
                                if x is not None) + " }" if v else "{}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _dump_toml(data: Mapping[str, Any]) -> str:
    lines: list[str] = []

    def table(d: Mapping[str, Any], path: tuple[str, ...]) -> None:
        subtables = []
        if path:
            lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in d.items():
            if v is None:
                continue  # TOML has no null: an absent key means "unset"
            if isinstance(v, Mapping) and k not in ("key_source",):
                subtables.append((k, v))
            else:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in subtables:
            table(v, path + (k,))

    table(data, ())
    return "\n".join(lines).lstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# Documentation generated from the schema and the preset files
# --------------------------------------------------------------------------------------------


def _default_of(section: tuple[str, ...], key: _Key) -> str:
    obj: Any = Config()
    for part in section:
        obj = getattr(obj, part)
    v = getattr(obj, key.name)
    if v is None:
        return "unset"
    if isinstance(v, FrozenMap):
        return "`{}`" if not v else "`" + _toml_value(dict(v)) + "`"
    return "`" + _toml_value(list(v) if isinstance(v, tuple) else v) + "`"


def render_key_reference() -> str:
    """Markdown tables of every key: type, default (the plain config's) and meaning."""
    out: list[str] = []
    for section, (keys, _) in _SECTIONS.items():
        out.append(f"### `[{'.'.join(section)}]`")
        out.append("")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for k in keys:
            names = " / ".join(f"`{n}`" for n in (k.name,) + k.aliases)
            out.append(f"| {names} | {k.type} | {_default_of(section, k)} | {k.doc} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _yn(b: bool) -> str:
    return "yes" if b else "no"


_PRESET_ORDER = ("minimal", "default", "verbose", "compliance", "soc2", "hipaa", "gdpr",
                 "pci-dss", "fda-part11")


def render_preset_table() -> str:
    """Markdown table comparing every shipped preset (read from the preset files)."""
    head = ("| preset | DDL | DML | SELECT | transactions | auth | retention days "
            "(database + archive) | longer retention | checksums | row values | reason "
            "required | metadata | encryption |")
    rows = [head, "|" + "---|" * 13]
    names = preset_names()
    # The order of DESIGN.md section 4 (least to most), then any other preset by name.
    ordered = [n for n in _PRESET_ORDER if n in names] + [n for n in names
                                                           if n not in _PRESET_ORDER]
    for name in ordered:
        c = load_config(name)
        a = c.audit
        ret = str(a.retention_days)
        if a.archive_days:
            ret += f" ({a.active_days} + {a.archive_days})"
        over = ", ".join(f"{k} {v}" for k, v in a.retention_overrides.items()) or "-"
        checks = ("yes, mandatory" if a.checksums_mandatory
                  else _yn(a.enable_checksums))
        m = a.capture_metadata
        meta = [label for label, on in (("client ip", m.client_ip),
                                        ("application", m.application_name),
                                        ("database", m.database_name),
                                        ("execution time", m.execution_time)) if on]
        if m.custom_fields:
            meta.append("custom fields" + (f" ({', '.join(m.custom_field_names)})"
                                           if m.custom_field_names else ""))
        enc = c.encryption
        if enc.enabled:
            encs = "yes, " + (f"key from {enc.key_source.kind}" if enc.key_source
                              else "key passed to connect()")
        else:
            encs = "no"
        if not a.enabled:
            cols = ["off"] * 5
        else:
            cols = [_yn(a.log_ddl), _yn(a.log_dml), _yn(a.log_select),
                    _yn(a.log_transactions), _yn(a.log_auth)]
        rows.append("| " + " | ".join([f"`{name}`", *cols, ret, over, checks,
                                       _yn(a.capture_row_values), _yn(a.require_reason),
                                       ", ".join(meta) or "none", encs]) + " |")
    return "\n".join(rows) + "\n"


_MARKERS = {
    "keys": render_key_reference,
    "presets": render_preset_table,
}


def _docs_blocks(text: str) -> dict[str, tuple[int, int]]:
    spans = {}
    for name in _MARKERS:
        begin, end = f"<!-- generated:{name}:begin -->\n", f"<!-- generated:{name}:end -->"
        i, j = text.find(begin), text.find(end)
        if i < 0 or j < i:
            raise ValueError(f"markers for the generated {name!r} block not found")
        spans[name] = (i + len(begin), j)
    return spans


def update_docs(text: str) -> str:
    """``text`` (docs/CONFIG.md) with its generated blocks rewritten from the sources."""
    for name, render in _MARKERS.items():
        start, end = _docs_blocks(text)[name]
        text = text[:start] + render() + text[end:]
    return text


def _main(argv: Optional[list[str]] = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m heliosdb.config",
                                description="Show a config, or regenerate docs/CONFIG.md.")
    p.add_argument("spec", nargs="?", help="preset name or TOML file to validate and show")
    p.add_argument("--write-docs", metavar="CONFIG_MD",
                   help="rewrite the generated tables of this file")
    args = p.parse_args(argv)
    if args.write_docs:
        path = Path(args.write_docs)
        path.write_text(update_docs(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"updated {path}")
    if args.spec is not None or not args.write_docs:
        try:
            print(load_config(args.spec).to_toml(), end="")
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
