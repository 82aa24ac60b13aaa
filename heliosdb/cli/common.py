"""What the ``heliosdb`` shell and its subcommands share: errors and exit codes, keys,
opening a database, and the one place that calls the encryption and audit APIs.

Exit codes (the same for the shell and every subcommand): :data:`EXIT_STATUSES`, the
table that docs/CLI.md shows (a test checks that the two agree).

Keys never travel on the command line: ``--key-file FILE``, ``--key-env VAR`` or a prompt
(``getpass``, so never echoed, never in the shell history). A passphrase read at a prompt
lives only as long as the call that needs it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import getpass
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import heliosdb
from heliosdb import errors as _errors

__all__ = [
    "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "CLIError", "Unavailable", "KeySpec",
    "Opener", "prompt_secret", "prompt_new_secret", "have_terminal", "error_message",
    "exit_code_for", "missing_dependency", "event_to_dict", "format_verify_report",
    "parse_when", "parse_audit_filters", "run_audit_query", "export_audit",
    "write_report", "make_checkpoint", "load_signing_key", "verify_audit",
    "verify_pages", "format_storage_info", "format_pages_report", "audit_table_exists",
    "AUDIT_COLUMNS", "EXPORT_FORMATS", "file_is_encrypted",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

#: Every exit status of ``heliosdb`` (shell and subcommands) and when it is used. The
#: "Exit status" table of docs/CLI.md is this table; tests/test_cli_exit.py checks it.
EXIT_STATUSES = {
    EXIT_OK: "success",
    EXIT_FAILED: "verification failed; a report or scan has findings; a purge refused by a "
                 "legal hold; an SQL or dot-command error in a script (piped input or SQL "
                 "arguments; an interactive session ends with 0 unless .exit N)",
    EXIT_USAGE: "usage or input error: bad arguments, a missing file or database, a file "
                "that is not a database, a wrong or missing key, an invalid --config, a "
                "feature not available in this installation",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_BROKEN_PIPE: "standard output was closed by its reader (output piped to head): "
                      "the command stops without a message, as the sqlite3 shell does on "
                      "SIGPIPE (128 + 13)",
}

PROG = "heliosdb"


class CLIError(Exception):
    """An error to print as one line (``heliosdb: error: ...``) and exit with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class Unavailable(CLIError):
    """A command whose backing API is missing from this installation (exit code 2)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} is not available: {reason}", EXIT_USAGE)


def missing_dependency(exc: ImportError) -> Optional[str]:
    """The optional third-party module whose absence caused ``exc``, or None.

    ``exc`` or an ImportError it was raised from (``raise ImportError(hint) from exc``, as
    :mod:`heliosdb.audit.parquet` does for pyarrow) must be a ModuleNotFoundError for a
    module outside heliosdb. Anything else (a missing name or module of heliosdb itself,
    a broken third-party install) is a bug to see, not a feature this machine lacks.
    """
    cur: Optional[BaseException] = exc
    while isinstance(cur, ImportError):
        if isinstance(cur, ModuleNotFoundError) and cur.name \
                and cur.name.partition(".")[0] != "heliosdb":
            return cur.name
        cur = cur.__cause__
    return None


def needs(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: an optional dependency missing from this machine (pyarrow...) becomes
    :class:`Unavailable` (exit status 2), naming the feature that needs it.

    Only a missing third-party module is "not available" (see :func:`missing_dependency`):
    an ImportError from inside heliosdb propagates, so a bug is never reported as a
    feature this installation lacks.
    """
    import functools

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ImportError as exc:
                if missing_dependency(exc) is None:
                    raise
                raise Unavailable(what, str(exc)) from None
        return call
    return wrap


# --------------------------------------------------------------------------------------------
# Errors -> one line and an exit code
# --------------------------------------------------------------------------------------------


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that ends a command."""
    exc = _errors.translate(exc)  # an apsw error counts as the heliosdb error it maps to
    if isinstance(exc, CLIError):
        return exc.code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BrokenPipeError):
        return EXIT_BROKEN_PIPE
    if isinstance(exc, (_errors.ConfigError, _errors.KeyRequiredError, _errors.WrongKeyError,
                        _errors.NotEncryptedError, _errors.EncryptionUnavailableError,
                        FileNotFoundError, IsADirectoryError, PermissionError)):
        return EXIT_USAGE
    if isinstance(exc, _errors.CorruptPageError):
        return EXIT_FAILED
    if isinstance(exc, _errors.EncryptionError):
        return EXIT_USAGE  # a damaged header, not a HeliosDB or SQLite file: wrong input
    if type(exc).__name__ == "LegalHoldError":
        return EXIT_FAILED
    if isinstance(exc, _errors.Error):
        # Not a database at all, or a file that cannot be opened: the input is wrong.
        name = exc.sqlite_errorname or ""
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CANTOPEN")):
            return EXIT_USAGE
        return EXIT_FAILED
    if isinstance(exc, OSError):
        return EXIT_USAGE
    return EXIT_FAILED


def error_message(exc: BaseException) -> str:
    """One line describing ``exc`` for a person (no traceback, no key material)."""
    try:
        import apsw

        if isinstance(exc, apsw.Error):
            exc = _errors.translate(exc)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, OSError) and exc.strerror:
        name = exc.filename if exc.filename is not None else ""
        return f"{name}: {exc.strerror}" if name else exc.strerror
    text = str(exc).strip() or type(exc).__name__
    text = " ".join(text.split())  # one line, whatever the message held
    name = getattr(exc, "sqlite_errorname", None)
    if name and text.lower() in ("not an error", "unknown error"):
        text = name  # an extended code without a message (e.g. from a VFS)
    if isinstance(exc, CLIError):
        return text
    if isinstance(exc, (_errors.Error, ValueError, TypeError)):
        return text
    return f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------------------------
# Terminals and secrets
# --------------------------------------------------------------------------------------------


def have_terminal() -> bool:
    """True if a controlling terminal exists to prompt on (``/dev/tty`` opens)."""
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False


#: The options that give a key instead of a prompt, as each command names them.
KEY_OPTIONS = "--key-file FILE or --key-env VAR"
NEW_KEY_OPTIONS = "--new-key-file FILE or --new-key-env VAR"


def prompt_secret(prompt: str, options: str = KEY_OPTIONS) -> str:
    """Read a secret at the terminal with :func:`getpass.getpass` (never echoed).

    Raises :class:`CLIError` when there is no terminal: a secret is never read from a
    pipe, where it could be mixed with SQL or logged. ``options`` are the options of the
    command at hand that give the key instead (named in that error).
    """
    if not have_terminal():
        raise CLIError(f"a key prompt needs a terminal: use {options}")
    try:
        value = getpass.getpass(prompt)  # prompt and input on /dev/tty
    except EOFError:
        raise CLIError("no key entered") from None
    if not value:
        raise CLIError("no key entered")
    return value


def prompt_new_secret(what: str, options: str = NEW_KEY_OPTIONS) -> str:
    """Ask twice for a new passphrase (or 64-hex raw key); the two must match."""
    first = prompt_secret(f"New passphrase or 64-hex key for {what}: ", options)
    second = prompt_secret(f"Repeat the new passphrase or key for {what}: ", options)
    if first != second:
        raise CLIError("the two entries do not match")
    return first


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def key_from_entry(entry: str, path: str, *, new: bool = False) -> Any:
    """The key a person typed at the prompt for ``path``: a passphrase or a raw key
    written as 64 hexadecimal characters.

    For an existing encrypted file the entry is tried against its key slots (the
    header is public): as a raw key when it is 64 hex characters and the file has a
    raw-key slot, then as a passphrase; a wrong entry's error says what was tried. For a
    new file, 64 hex characters make a raw key (a note says so), anything else a
    passphrase.
    """
    key_cls = heliosdb.Key
    is_hex = bool(_HEX64.fullmatch(entry.strip()))
    if new or not os.path.exists(path) or not file_is_encrypted(path):
        if is_hex:
            sys.stderr.write(f"{PROG}: note: the entry is 64 hex characters: used as a raw "
                             f"256-bit key, not as a passphrase\n")
            return key_cls.from_hex(entry)
        return as_passphrase(entry)
    from heliosdb.crypto import read_header, unlock_slot

    header = read_header(path)
    kinds = {s.describe()["kind"] for s in header.slots}
    tried = []
    candidates = []
    if is_hex and "raw" in kinds:
        candidates.append(("a raw 64-hex key", lambda: key_cls.from_hex(entry)))
    if "passphrase" in kinds:
        candidates.append(("a passphrase", lambda: key_cls.passphrase(entry)))
    for label, make in candidates:
        key = make()
        tried.append(label)
        try:
            dek, _slot = unlock_slot(path, header, key)
        except _errors.WrongKeyError:
            key.close()
            continue
        dek[:] = bytes(len(dek))
        if label.startswith("a raw"):
            sys.stderr.write(f"{PROG}: note: the entry opened {path} as a raw 64-hex key\n")
        return key
    slots = " and ".join(sorted(kinds - {"empty"})) or "no"
    if not tried:
        raise CLIError(f"wrong key for {path}: it has {slots} key slots only, and the entry "
                       f"is not a 64-hex raw key")
    raise CLIError(f"wrong key for {path}: tried the entry as {' and as '.join(tried)} "
                   f"(the file has {slots} key slots)")


def prompt_for_key(path: str, options: str = KEY_OPTIONS, prompt: Optional[str] = None) -> Any:
    """Ask for the key of the existing encrypted ``path``: a passphrase or a 64-hex raw
    key (see :func:`key_from_entry`)."""
    entry = prompt_secret(prompt or f"Passphrase or 64-hex key for {path}: ", options)
    return key_from_entry(entry, path)


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """Where a key comes from: a file, an environment variable, or a prompt.

    It holds the path or the variable name, never key material; :meth:`load` reads the key
    each time it is needed, so a shell session keeps no key in memory between commands.
    ``kind`` is ``None`` (no key given), ``"file"``, ``"env"`` or ``"prompt"``;
    ``prefix`` is ``"new-"`` for the new key of ``encrypt`` and ``passwd``.
    """

    kind: Optional[str] = None
    value: Optional[str] = None
    prefix: str = ""

    @property
    def given(self) -> bool:
        """True if the user said where the key is."""
        return self.kind is not None

    def option(self) -> str:
        """The option that gave this key, as typed (``--key-file F``)."""
        if self.kind == "file":
            return f"--{self.prefix}key-file {self.value}"
        if self.kind == "env":
            return f"--{self.prefix}key-env {self.value}"
        if self.kind == "prompt":
            return f"--{self.prefix}key"
        return "no key option"

    def options(self) -> str:
        """The options that give this kind of key without a prompt."""
        return NEW_KEY_OPTIONS if self.prefix else KEY_OPTIONS

    def describe(self) -> str:
        """Where the key comes from, for messages (no secret)."""
        if self.kind == "file":
            return f"key file {self.value}"
        if self.kind == "env":
            return f"environment variable {self.value}"
        if self.kind == "prompt":
            return "passphrase prompt"
        return "no key"

    def load(self, target: str, *, prompt: Optional[str] = None, new: bool = False) -> Any:
        """The key for ``target`` (a heliosdb.Key, or a passphrase ``str``), or ``None``.

        ``new``: the key will create ``target``, so a typed entry is asked twice.
        """
        if self.kind is None:
            return None
        if self.kind == "prompt":
            if new:
                return key_from_entry(prompt_new_secret(target, self.options()), target,
                                      new=True)
            return prompt_for_key(target, self.options(), prompt)
        if self.kind == "file":
            if not os.path.exists(self.value or ""):
                raise CLIError(f"{self.value}: key file not found")
            return heliosdb.Key.from_file(self.value)
        if self.kind == "env":
            if self.value not in os.environ:
                raise CLIError(f"environment variable {self.value} is not set")
            return heliosdb.Key.from_env(self.value)
        raise ValueError(f"unknown key source {self.kind!r}")  # pragma: no cover


def as_passphrase(text: str) -> Any:
    """A typed passphrase as a wipeable ``heliosdb.Key``."""
    return heliosdb.Key.passphrase(text)


def wipe_key(key: Any) -> None:
    """Zero a key held in a mutable buffer, or ask a Key object to wipe itself."""
    if key is None or isinstance(key, (str, bytes)):
        return  # immutable: nothing to zero; dropped with the last reference
    if isinstance(key, bytearray):
        key[:] = bytes(len(key))
        return
    for name in ("wipe", "close"):
        fn = getattr(key, name, None)
        if callable(fn):
            fn()
            return


# --------------------------------------------------------------------------------------------
# Opening databases
# --------------------------------------------------------------------------------------------


def file_is_encrypted(path: str) -> bool:
    """True if ``path`` starts with the HeliosDB encrypted-file header (read 16 bytes).

    Uses :func:`heliosdb.crypto.format.is_encrypted_file`; where that is missing, any file
    that is neither empty nor a plain SQLite database counts as encrypted.
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return False
    try:
        from heliosdb.crypto.format import is_encrypted_file
    except ImportError:
        return head != b"SQLite format 3\x00"
    return bool(is_encrypted_file(head))


def _is_memory(path: str) -> bool:
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        return True
    return is_uri(path) and (uri_parts(path)[1].get("mode") == "memory"
                             or uri_parts(path)[0] in ("", ":memory:"))


def is_uri(path: str) -> bool:
    """True for a SQLite ``file:`` URI (``file:app.db?mode=ro``), which the command line
    opens as a URI, as the sqlite3 shell does and as ``heliosdb.connect(..., uri=True)``."""
    return path.startswith("file:")


def uri_parts(uri: str) -> tuple[str, dict[str, str]]:
    """(file name, query parameters) of a ``file:`` URI, by SQLite's rules: an authority
    may only be empty or ``localhost``; %XX escapes are decoded."""
    from urllib.parse import parse_qsl, unquote

    rest = uri[len("file:"):].split("#", 1)[0]
    rest, _, query = rest.partition("?")
    if rest.startswith("//"):
        authority, slash, rest = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise CLIError(f"{uri}: a file: URI may only name this machine (file:///path "
                           f"or file://localhost/path)")
        rest = slash + rest
    params = dict(parse_qsl(query, keep_blank_values=True))
    return unquote(rest), params


def db_file(path: str) -> Optional[str]:
    """The file a database name (a path or a ``file:`` URI) stands for; None in memory."""
    if _is_memory(path):
        return None
    return uri_parts(path)[0] if is_uri(path) else path


def uri_mode(path: str) -> Optional[str]:
    """The ``mode=`` of a ``file:`` URI (``ro``, ``rw``, ``rwc``, ``memory``), else None."""
    return uri_parts(path)[1].get("mode") if is_uri(path) else None


def readonly_target(path: str) -> str:
    """The URI that opens ``path`` (a file name or a ``file:`` URI) read-only."""
    if not is_uri(path):
        return readonly_uri(path)
    from urllib.parse import urlencode

    base, _, query = path.partition("?")
    name, params = uri_parts(path)
    params["mode"] = "ro"
    return base + "?" + urlencode(params)


def check_exists(path: str, *, create: bool = False) -> None:
    """Refuse a database name whose file is missing (or a directory), unless ``create``
    (``--create``, or a URI with ``mode=rwc``) asks for a new database. CLIError, exit 2."""
    name = db_file(path)
    if name is None:
        return
    if os.path.isdir(name):
        raise CLIError(f"{name}: is a directory, not a database")
    if os.path.exists(name):
        return
    if create or uri_mode(path) == "rwc":
        if uri_mode(path) in ("ro", "rw"):
            raise CLIError(f"{name}: no such database file (mode={uri_mode(path)} never "
                           f"creates one)")
        return
    raise CLIError(f"{name}: no such database file (to create a new database there, add "
                   f"--create)")


#: The config a database with an audit log is opened with when ``--config`` is not given,
#: so that the command line never changes an audited database without auditing it.
AUTO_AUDIT_CONFIG = "default"


def _name_file(message: str, path: Optional[str]) -> str:
    """``message``, prefixed with ``path`` when it does not name the file already."""
    if not path or path in message or (os.path.basename(path) and
                                       os.path.basename(path) in message):
        return message
    return f"{path}: {message}"


def name_the_file(exc: BaseException, path: Optional[str]) -> str:
    """The one-line message of ``exc``, naming the database file ``path``."""
    return _name_file(error_message(exc), db_file(path) if path else None)


_KEY_HINT = "give its key with --key-file FILE, --key-env VAR or --key (prompt)"


def is_readonly_connection(conn: Any) -> bool:
    """True when the main database of ``conn`` is open read-only."""
    return bool(conn._apsw.readonly("main"))


@dataclasses.dataclass
class Opener:
    """Opens databases the way the command line said: key source, config, audit user.

    When no key source was given and the file turns out to be encrypted, the key is asked
    for at the terminal if ``prompt_if_needed`` is true and standard input is a terminal;
    otherwise the error says how to give one. Names may be ``file:`` URIs.

    Without a config (``--config``), a database that already holds an audit log
    (``__audit_log``) is reopened with the ``default`` preset when ``auto_audit`` is
    true, so that changes made from the command line are audited like any others.
    """

    key: KeySpec = dataclasses.field(default_factory=KeySpec)
    config: Optional[str] = None
    user: Optional[str] = None
    prompt_if_needed: bool = True
    auto_audit: bool = True

    #: Open read-only (``info``, ``verify``, ``-readonly``, a URI with ``mode=ro``): an
    #: audited database then records nothing, so inspecting a database never appends to
    #: the log under inspection.
    readonly: bool = False

    def _connect(self, path: str, secret: Any, cfg: Any) -> "heliosdb.Connection":
        if self.readonly and not _is_memory(path):
            return heliosdb.connect(readonly_target(path), uri=True, key=secret, config=cfg,
                                    audit_user=self.user, isolation_level=None)
        return heliosdb.connect(path, uri=is_uri(path), key=secret, config=cfg,
                                audit_user=self.user, isolation_level=None)

    def connect(self, path: str, *, must_exist: bool = False, config: Any = "__same__",
                key: Optional[KeySpec] = None, secret: Any = None,
                auto_audit: Optional[bool] = None) -> "heliosdb.Connection":
        """Open ``path``; ``must_exist`` refuses to create a missing file (exit code 2).

        The key comes from ``key`` (a :class:`KeySpec`, default the opener's), or is
        ``secret`` itself when given (the caller keeps and wipes it).
        """
        if must_exist:
            check_exists(path)
        cfg = self.config if config == "__same__" else config
        spec = key if key is not None else self.key
        auto = self.auto_audit if auto_audit is None else auto_audit
        name = db_file(path)
        creating = name is not None and (not os.path.exists(name)
                                         or os.path.getsize(name) == 0)
        owned = secret is None
        if owned:
            secret = spec.load(name or path, new=creating)
        try:
            try:
                conn = self._connect(path, secret, cfg)
            except _errors.KeyRequiredError:
                if secret is not None or not self.prompt_if_needed or not sys.stdin.isatty() \
                        or name is None or not os.path.exists(name):
                    raise CLIError(f"{name or path} is encrypted: {_KEY_HINT}") from None
                secret = prompt_for_key(name)
                conn = self._connect(path, secret, cfg)
            if cfg is None and auto and conn.audit is None and name is not None \
                    and audit_table_exists(conn):
                conn.close()
                conn = self._connect(path, secret, AUTO_AUDIT_CONFIG)
            return conn
        except CLIError:
            raise
        except _errors.WrongKeyError:
            raise CLIError(f"wrong key for {name or path}") from None
        except _errors.NotEncryptedError:
            raise CLIError(not_encrypted_message(name or path, spec)) from None
        except _errors.ProgrammingError as exc:
            if secret is None and "no key was given" in str(exc):
                # An encrypting config without a key source: the input lacks a key.
                raise CLIError(f"{name or path}: the config {cfg!r} encrypts the database, "
                               f"but no key was given: {_KEY_HINT.replace('its key', 'a key')}"
                               ) from None
            raise CLIError(_name_file(error_message(exc), name), exit_code_for(exc)) from None
        except _errors.Error as exc:
            raise CLIError(_name_file(error_message(exc), name), exit_code_for(exc)) from None
        except ImportError as exc:
            # A third-party module the connection needs is not installed here; an
            # ImportError of heliosdb's own is a bug and propagates.
            if missing_dependency(exc) is None:
                raise
            raise Unavailable("opening a database", str(exc)) from None
        finally:
            if owned:
                wipe_key(secret)
            secret = None


def not_encrypted_message(path: str, spec: Optional[KeySpec] = None) -> str:
    """A key was given for a plaintext file: drop it, or encrypt a copy."""
    how = f"drop {spec.option()}" if spec is not None and spec.given else "drop the key option"
    return (f"{path} is not encrypted, but a key was given: {how} to open it as it is, or "
            f"write an encrypted copy with: heliosdb encrypt {path} --out NEW.db "
            f"--new-key-file FILE")


def readonly_uri(path: str) -> str:
    """A ``file:`` URI that opens ``path`` read-only (SQLite's own rules: RFC 3986
    percent-encoding of the path)."""
    from urllib.parse import quote

    return "file:" + quote(os.path.abspath(path), safe="/") + "?mode=ro"


def audit_table_exists(conn: Any, table: str = "__audit_log") -> bool:
    """True if the database holds an audit log table named ``table``."""
    audit = getattr(conn, "audit", None)
    if audit is not None and audit.table == table:
        return True  # an audit session exists only over its (checked) log
    row = conn.execute("SELECT 1 FROM sqlite_schema WHERE type='table' AND name=?",
                       (table,)).fetchone()
    return row is not None


def audit_table_of(conn: Any) -> str:
    """The audit table of a connection: its session's, else its config's."""
    audit = getattr(conn, "audit", None)
    table = getattr(audit, "table", None)
    if table:
        return table
    cfg = getattr(conn, "config", None)
    return getattr(getattr(cfg, "audit", None), "table_name", None) or "__audit_log"


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------

#: The columns the shell and ``heliosdb audit`` show for an event, in order.
AUDIT_COLUMNS = ("id", "timestamp", "user", "operation", "target", "affected_rows",
                 "success", "query")


def _plain(value: Any) -> Any:
    """A JSON- and SQLite-friendly form of a value from an audit event."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and type(value).__module__ == "enum":  # pragma: no cover
        return value.value
    return value


def event_to_dict(event: Any) -> dict[str, Any]:
    """An audit event (dataclass, named tuple, mapping or object) as a plain dict."""
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        raw = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
    elif hasattr(event, "_asdict"):
        raw = dict(event._asdict())
    elif hasattr(event, "to_dict"):
        raw = dict(event.to_dict())
    elif isinstance(event, Mapping):
        raw = dict(event)
    else:
        raw = {k: v for k, v in vars(event).items() if not k.startswith("_")}
    if "timestamp" not in raw and isinstance(getattr(event, "timestamp", None), str):
        raw["timestamp"] = event.timestamp  # ts_us formatted as ISO 8601 UTC
    for k in ("metadata", "old_values", "new_values"):  # stored as canonical JSON text
        v = raw.get(k)
        if isinstance(v, str) and v[:1] in ("{", "["):
            try:
                raw[k] = json.loads(v)
            except ValueError:
                pass
    return {k: _plain(v) for k, v in raw.items()}


def sql_value(value: Any) -> Any:
    """A value the shell's output modes can format (int, float, str, bytes or None)."""
    value = _plain(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if value is None or isinstance(value, (int, float, str, bytes)):
        return value
    return str(value)


def event_row(event: Any, columns: Sequence[str] = AUDIT_COLUMNS) -> tuple:
    """The values of ``columns`` from an event, ready for the shell's output modes."""
    d = event_to_dict(event)
    return tuple(sql_value(d.get(c)) for c in columns)


def _report_get(report: Any, name: str, default: Any = None) -> Any:
    if isinstance(report, Mapping):
        return report.get(name, default)
    return getattr(report, name, default)


def report_ok(report: Any) -> bool:
    """The ``ok`` of a verification report (a report without it counts as failed)."""
    return bool(_report_get(report, "ok", False))


def format_verify_report(report: Any, *, what: str = "audit log") -> str:
    """One line for a ``VerifyReport``: OK with the count, or the fault and where."""
    ok = report_ok(report)
    n = _report_get(report, "events_checked")
    message = _report_get(report, "message") or ""
    if ok:
        if message:
            return f"{what}: OK: {message}"
        return f"{what}: OK, {n} events checked" if n is not None else f"{what}: OK"
    fault = _report_get(report, "fault") or "failed"
    fault = getattr(fault, "value", fault)
    bad = _report_get(report, "first_bad_id")
    where = f" at event {bad}" if bad is not None else ""
    counted = f" after {n} events" if n is not None else ""
    return f"{what}: FAILED: {fault}{where}{counted}: {message}".rstrip(": ")


def _bad_page_number(bad: Any) -> Any:
    """The page of a bad-page entry: a number, ``(file, page, reason)``, or an object."""
    if isinstance(bad, Mapping):
        return bad.get("page", bad)
    if isinstance(bad, (tuple, list)) and len(bad) >= 2:
        return bad[1]
    return getattr(bad, "page", bad)


def format_pages_report(report: Any) -> str:
    """One line for a page-authentication report (``heliosdb.verify_encryption``)."""
    n = next((v for v in (_report_get(report, k) for k in
                          ("pages_checked", "pages", "checked", "total")) if v is not None), None)
    bad = _report_get(report, "bad_pages", None)
    if bad is None:
        bad = _report_get(report, "failures", None)
    message = _report_get(report, "message") or ""
    counted = f"{n} pages" if isinstance(n, int) else "every page"
    if report_ok(report):
        return f"pages: OK, {counted} authenticated" + (f" ({message})" if message else "")
    listed = ""
    if bad:
        items = [str(_bad_page_number(b)) for b in list(bad)[:20]]
        listed = f" {len(bad)} bad page(s): {', '.join(items)}" + (
            ", ..." if len(bad) > 20 else "")
    return f"pages: FAILED:{listed} {message}".rstrip()


def format_storage_info(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(name, value)`` pairs for storage facts, in a stable order, values as text."""
    out = []
    for k in sorted(info, key=lambda k: (k != "encryption_enabled", k)):
        v = _plain(info[k])
        if isinstance(v, (dict, list)):
            v = json.dumps(v, sort_keys=True)
        out.append((str(k), "" if v is None else str(v)))
    return out


# --------------------------------------------------------------------------------------------
# Audit queries
# --------------------------------------------------------------------------------------------

_REL_RE = re.compile(r"^(\d+)\s*([smhdw])$", re.I)
_REL_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, *, now: Optional[_dt.datetime] = None) -> _dt.datetime:
    """A UTC datetime from ISO 8601 (``2026-01-31``, ``2026-01-31T12:00``, with a zone or
    taken as UTC) or a relative age (``90m``, ``12h``, ``7d``, ``2w`` ago)."""
    text = text.strip()
    now = now or _dt.datetime.now(_dt.timezone.utc)
    m = _REL_RE.match(text)
    if m:
        return now - _dt.timedelta(**{_REL_UNITS[m.group(2).lower()]: int(m.group(1))})
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CLIError(f"bad time {text!r}: use ISO 8601 (2026-01-31, 2026-01-31T09:30) or "
                       f"an age such as 12h or 7d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc)


#: Filters of ``.audit`` and ``heliosdb audit``: name -> kind.
AUDIT_FILTERS = {"user": str, "op": str, "table": str, "since": "when", "until": "when",
                 "session": str, "limit": int, "offset": int, "success": bool}


def parse_audit_filters(words: Iterable[str]) -> dict[str, Any]:
    """``user=alice op=INSERT since=7d failed`` -> a filter dict for :func:`run_audit_query`."""
    out: dict[str, Any] = {}
    for word in words:
        if word in ("failed", "failures"):
            out["success"] = False
            continue
        if word in ("ok", "succeeded"):
            out["success"] = True
            continue
        name, sep, value = word.partition("=")
        name = {"operation": "op", "target": "table", "user_name": "user"}.get(name, name)
        if not sep or name not in AUDIT_FILTERS or value == "":
            raise CLIError(f"bad filter {word!r}: expected NAME=VALUE with NAME one of "
                           f"{', '.join(AUDIT_FILTERS)}, or 'failed'")
        kind = AUDIT_FILTERS[name]
        if kind == "when":
            out[name] = parse_when(value)
        elif kind is int:
            try:
                out[name] = int(value)
            except ValueError:
                raise CLIError(f"bad filter {word!r}: {name} must be a whole number") from None
            if out[name] < 0:
                raise CLIError(f"bad filter {word!r}: {name} must not be negative")
        elif kind is bool:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise CLIError(f"bad filter {word!r}: success must be true or false")
            out[name] = value.lower() in ("1", "true", "yes")
        else:
            out[name] = value.upper() if name == "op" else value
    return out


def _audit_of(conn: Any, what: str) -> Any:
    audit = getattr(conn, "audit", None)
    if audit is None:
        raise CLIError(f"{what}: this database is not audited here (open it with --config "
                       f"PRESET, e.g. --config default)")
    return audit


@needs("audit queries")
def run_audit_query(conn: Any, filters: Mapping[str, Any]) -> Iterator[Any]:
    """Events matching ``filters`` (see :func:`parse_audit_filters`), oldest first."""
    audit = _audit_of(conn, "audit queries")
    q = audit.query()
    applied = {
        "user": "user", "op": "operation", "table": "table", "session": "session",
        "success": "success", "limit": "limit", "offset": "offset",
    }
    for key, method in applied.items():
        if key in filters:
            q = getattr(q, method)(filters[key])
    if "since" in filters or "until" in filters:
        q = q.between(filters.get("since"), filters.get("until"))
    return iter(q.all())


def log_event(conn: Any, operation: str, **kwargs: Any) -> None:
    """Record an application event (VERIFY, EXPORT ...) when the connection is audited."""
    audit = getattr(conn, "audit", None)
    log = getattr(audit, "log", None)
    if log is not None and not getattr(audit, "readonly", False):
        log(operation, **kwargs)


@needs("audit verification")
def verify_audit(conn: Any, checkpoint: Optional[str] = None,
                 verify_key_file: Optional[str] = None, progress: Any = None,
                 notes: Optional[list[str]] = None) -> Any:
    """Verify the audit chain of ``conn`` (against a checkpoint file if given).

    Runs ``conn.audit.verify`` on an audited connection, else
    :func:`heliosdb.audit.verify.verify_connection` on the database (read-only, in one
    read transaction: nothing is appended to the log). ``verify_key_file`` holds the key
    the checkpoint is checked with (see :func:`load_verify_key`); ``notes`` collects
    remarks for the user (such as which key checked the signature). An audited
    connection records a VERIFY event with the outcome.
    """
    from heliosdb.audit.verify import verify_connection
    table = audit_table_of(conn)
    if not audit_table_exists(conn, table):
        raise CLIError(f"this database has no audit log (table {table})")
    kwargs: dict[str, Any] = {}
    if progress is not None:
        kwargs["progress"] = progress
    if checkpoint is not None:
        if not os.path.exists(checkpoint):
            raise CLIError(f"{checkpoint}: checkpoint file not found")
        if not (verify_key_file or os.environ.get("HELIOSDB_SIGNING_KEY_FILE")):
            # Without a key, a checkpoint is proof only if the database pins its signer
            # (the shell's .verify and heliosdb verify alike).
            require_pinned_signer(conn, table, checkpoint, notes if notes is not None else [])
        cp = _load_checkpoint(checkpoint)
        kwargs["checkpoint"] = cp
        kwargs.update(load_verify_key(cp, verify_key_file, notes))
    audit = getattr(conn, "audit", None)
    if getattr(audit, "verify", None) is not None:
        report = audit.verify(**kwargs)
    else:
        report = verify_connection(conn._apsw, table, **kwargs)
    log_event(conn, "VERIFY", target=table, success=report_ok(report),
              details={"events_checked": _report_get(report, "events_checked"),
                       "fault": _report_get(report, "fault"),
                       "checkpoint": os.path.basename(checkpoint) if checkpoint else None})
    return report


def _load_checkpoint(path: str) -> Any:
    """A :class:`heliosdb.audit.checkpoint.Checkpoint` read from ``path``."""
    from heliosdb.audit.checkpoint import Checkpoint

    try:
        return Checkpoint.load(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{path}: not a HeliosDB checkpoint ({error_message(exc)})") from None


def _read_key_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CLIError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def load_signing_key(path: str) -> Any:
    """A checkpoint signing key from a file.

    PEM files hold an Ed25519 private key (``openssl genpkey -algorithm ed25519``); any
    other file is an HMAC-SHA256 secret: 64 hexadecimal characters or 32+ raw bytes.
    """
    data = _read_key_file(path, "signing key")
    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives import serialization

        try:
            return serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"{path}: not a usable private key ({exc})") from None
    text = data.strip()
    if re.fullmatch(rb"[0-9a-fA-F]{64,}", text) and len(text) % 2 == 0:
        return bytearray.fromhex(text.decode())
    if len(data) < 32:
        raise CLIError(f"{path}: a signing key needs at least 32 bytes (or an Ed25519 PEM key)")
    return bytearray(data)


def require_pinned_signer(conn: Any, table: str, path: str, notes: list[str]) -> None:
    """Without --verify-key, a checkpoint is proof only when the database pins its signer.

    The first checkpoint of a database pins its signer in ``__audit_meta``
    (``checkpoint_signer``). A checkpoint file carries its own public key, which anyone
    can replace along with the signature: checking it with that key proves nothing. So
    without a key on the command line the checkpoint must be signed by the pinned Ed25519
    key; an HMAC signer (its secret is not in the database) always needs --verify-key.
    Raises CLIError (exit 1) otherwise.
    """
    if not os.path.exists(path):
        return  # verify_audit names the missing file
    from heliosdb.audit.checkpoint import Checkpoint, key_id, pinned_signer

    try:
        cp = Checkpoint.load(path)
    except (OSError, ValueError, KeyError, TypeError, _errors.Error):
        return  # unreadable or malformed: verify_audit reports it
    pin = pinned_signer(conn._apsw, table)
    how = "give the signer's key with --verify-key FILE (or HELIOSDB_SIGNING_KEY_FILE)"
    if cp.algorithm != "ed25519":
        raise CLIError(f"{path} is signed with HMAC-SHA256 (key {cp.key_id}), which cannot "
                       f"be checked without its secret: {how}", EXIT_FAILED)
    if pin is None or pin[0] != "ed25519":
        raise CLIError(f"{path} is signed by key {cp.key_id}, but this database pins no "
                       f"Ed25519 checkpoint signer, so nothing vouches for that key: {how}",
                       EXIT_FAILED)
    try:
        pinned = bytes.fromhex(pin[1])
    except ValueError:
        pinned = b""
    if cp.public_key is None or bytes(cp.public_key) != pinned:
        raise CLIError(f"{path} is signed by key {cp.key_id}, not by the signer this database "
                       f"pins (key {key_id(pinned)}): the checkpoint was re-signed by another "
                       f"key, or the signing key changed: {how}", EXIT_FAILED)
    notes.append(f"checkpoint signer {cp.key_id} is the one pinned in the database by its "
                 "first checkpoint")


def load_verify_key(cp: Any, path: Optional[str],
                    notes: Optional[list[str]] = None) -> dict[str, Any]:
    """The keyword (``public_key=`` or ``hmac_key=``) that checks checkpoint ``cp``.

    ``path`` (else ``$HELIOSDB_SIGNING_KEY_FILE``) is the signing key itself, an Ed25519
    public key in PEM form, or the HMAC secret. Without one, an Ed25519 checkpoint is
    checked against the public key it carries, and a note says so: that proves the log
    reaches the signed head, but not who signed it.
    """
    path = path or os.environ.get("HELIOSDB_SIGNING_KEY_FILE")
    algorithm = getattr(cp, "algorithm", None)
    if path is None:
        embedded = getattr(cp, "public_key", None)
        if algorithm == "ed25519" and embedded:
            if notes is not None:
                notes.append(f"checkpoint signature checked with the public key it carries "
                             f"(key id {getattr(cp, 'key_id', '?')}); pass --verify-key "
                             f"FILE to check it against your own copy")
            return {"public_key": bytes(embedded)}
        raise CLIError("this checkpoint is signed with HMAC-SHA256: give the secret with "
                       "--verify-key FILE (or HELIOSDB_SIGNING_KEY_FILE)")
    data = _read_key_file(path, "verification key")
    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives import serialization

        try:
            if b"PRIVATE KEY" in data:
                return {"public_key": serialization.load_pem_private_key(data, password=None)}
            return {"public_key": serialization.load_pem_public_key(data)}
        except (ValueError, TypeError) as exc:
            raise CLIError(f"{path}: not a usable key ({exc})") from None
    secret = load_signing_key(path)
    if algorithm == "ed25519":
        return {"public_key": bytes(secret)}
    return {"hmac_key": bytes(secret)}


def signing_key_path(option: Optional[str]) -> str:
    """The signing key file: the option, else ``$HELIOSDB_SIGNING_KEY_FILE``."""
    path = option or os.environ.get("HELIOSDB_SIGNING_KEY_FILE")
    if not path:
        raise CLIError("a checkpoint needs a signing key: --signing-key FILE or "
                       "HELIOSDB_SIGNING_KEY_FILE")
    return path


@needs("checkpoints")
def make_checkpoint(conn: Any, out: str, signing_key_file: Optional[str]) -> Any:
    """Sign the head of the audit chain and save the checkpoint to ``out``.

    Uses ``conn.audit.checkpoint(key)`` on an audited connection, else
    :func:`heliosdb.audit.checkpoint.create_checkpoint` on the database.
    """
    key = load_signing_key(signing_key_path(signing_key_file))
    try:
        audit = getattr(conn, "audit", None)
        fn = getattr(audit, "checkpoint", None)
        if fn is not None:
            cp = fn(key)
        else:
            from heliosdb.audit.checkpoint import create_checkpoint

            table = audit_table_of(conn)
            if not audit_table_exists(conn, table):
                raise CLIError(f"this database has no audit log (table {table})")
            cp = create_checkpoint(conn._apsw, table, key)
    finally:
        wipe_key(key)
    cp.save(out)
    return cp


def describe_export(manifest: Any, fmt: str, out: str) -> str:
    """One line about an export: how many events, which ids, where."""
    count = getattr(manifest, "count", None)
    first, last = getattr(manifest, "first_id", None), getattr(manifest, "last_id", None)
    what = f"{count} audit events" if count is not None else "the audit log"
    if count and first is not None and last is not None:
        what += f" (ids {first}..{last})"
    return f"{what} exported as {fmt.lower()} to {out}"


#: The formats ``conn.audit.export`` writes.
EXPORT_FORMATS = ("jsonl", "csv", "ocsf", "syslog", "parquet")


@needs("audit exports")
def export_audit(conn: Any, fmt: str, out: str, **options: Any) -> Any:
    """Write the audit log to ``out`` in ``fmt`` (one of :data:`EXPORT_FORMATS`) with
    ``conn.audit.export``; ``options`` (``after_id=`` ...) are passed on when not None.
    Returns the export manifest."""
    fmt = fmt.lower()
    if fmt not in EXPORT_FORMATS:
        raise CLIError(f"unknown export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    audit = _audit_of(conn, "audit exports")
    options = {k: v for k, v in options.items() if v is not None}
    return audit.export(out, format=fmt, **options)


@needs("compliance reports")
def write_report(conn: Any, out: str, preset: Optional[str] = None) -> Any:
    """Write the compliance report with ``conn.audit.report`` (HTML at ``out``, its JSON
    next to it); returns the report data."""
    audit = _audit_of(conn, "compliance reports")
    kwargs: dict[str, Any] = {}
    if preset is not None:
        kwargs["preset"] = preset
    return audit.report(out, **kwargs)


def report_findings(result: Any) -> list[Any]:
    """The findings a report or a forensic scan returned (empty when none)."""
    if result is None:
        return []
    findings = _report_get(result, "findings", None)
    if findings is None and isinstance(result, (list, tuple)):
        findings = result
    return list(findings or [])


def verify_pages(path: str, key: Any, progress: Any = None) -> Any:
    """Authenticate every page of an encrypted database (``heliosdb.verify_encryption``);
    a report with ``ok``."""
    return call_with_progress(heliosdb.verify_encryption, path, key, progress=progress)


def decrypt_file(src: str, dst: str, key: Any, progress: Any = None, **events: Any) -> Any:
    """Write a plaintext copy of the encrypted ``src`` to ``dst`` (which must not exist)
    with ``heliosdb.decrypt``."""
    return call_with_progress(heliosdb.decrypt, src, dst, key, progress=progress, **events)


def heliosdb_api(name: str, what: str) -> Callable[..., Any]:
    """The key-operation function ``heliosdb.NAME`` (``encrypt``, ``rotate_key``...) that
    the command ``what`` runs."""
    return getattr(heliosdb, name)


def call_with_progress(fn: Callable[..., Any], *args: Any, progress: Any = None,
                       **kwargs: Any) -> Any:
    """Call ``fn`` with ``progress=`` when it takes one, without otherwise."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        params = {}
    if progress is not None and ("progress" in params or any(
            p.kind is p.VAR_KEYWORD for p in params.values())):
        kwargs["progress"] = progress
    return fn(*args, **kwargs)
