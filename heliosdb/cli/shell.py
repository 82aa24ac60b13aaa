"""The interactive ``heliosdb`` shell: APSW's sqlite3-style shell on a HeliosDB connection.

``heliosdb [OPTIONS] FILE [SQL|CMD]...`` behaves like the ``sqlite3`` command line: an
interactive prompt with history and tab completion on a terminal, SQL and dot-commands read
from standard input when it is piped, each extra argument run as one complete command, and
the usual dot-commands (``.tables``, ``.schema``, ``.mode``, ``.headers``, ``.import``,
``.dump``, ``.read``, ``.quit`` ... see ``.help``), all inherited from
:class:`apsw.shell.Shell`. The database is opened with :func:`heliosdb.connect`, so it is
decrypted, and audited when a config turns auditing on, like any other HeliosDB connection.

HeliosDB adds the dot-commands ``.audit``, ``.verify``, ``.checkpoint``, ``.export-audit``,
``.encryption``, ``.passwd``, ``.rekey`` and ``.report``; their help (``.help NAME``) is the
docstring of the ``command_NAME`` method, as for APSW's own commands.

Safety:

* keys come from ``--key-file``, ``--key-env`` or a ``getpass`` prompt; ``.passwd`` and
  ``.rekey`` only ever prompt, so no secret is typed on a command line or kept in the
  history file (``~/.heliosdb_history``, written with mode 0600);
* ``.open``, ``.backup`` and ``.restore`` go through :func:`heliosdb.connect` too, so a copy
  of an encrypted database is never written in clear by accident;
* an audited database stays audited: every dot-command is harmless (:data:`AUDIT_HARMLESS`),
  runs through the audited connection or checks its own arguments (:data:`AUDIT_CHECKED`),
  or is refused, with the attempt recorded (``.load``, ``.py``, ``.shell``, ``.restore``,
  ``.dbconfig writable_schema 1`` ..., and any command not classified); a database whose
  audit log the config in force would not write is not opened (see docs/CLI.md);
* errors print as one line (``Error: ...``); ``--debug`` or ``.exceptions on`` adds a
  Python traceback (never the values of local variables, which could hold a passphrase).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import sys
import traceback
from typing import Any, Iterable, Optional, Sequence

import apsw
import apsw.ext
import apsw.shell

import heliosdb

from .common import (
    AUDIT_COLUMNS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXPORT_FORMATS,
    PROG,
    CLIError,
    KeySpec,
    Opener,
    Unavailable,
    check_exists,
    db_file,
    is_readonly_connection,
    key_from_entry,
    name_the_file,
    call_with_progress,
    describe_export,
    error_message,
    event_row,
    exit_code_for,
    export_audit,
    file_is_encrypted,
    format_storage_info,
    format_pages_report,
    format_verify_report,
    heliosdb_api,
    make_checkpoint,
    parse_audit_filters,
    prompt_new_secret,
    report_findings,
    report_ok,
    run_audit_query,
    sql_value,
    verify_audit,
    verify_pages,
    wipe_key,
    write_report,
)
from ..progress import progress_callback

__all__ = ["HeliosShell", "run_shell", "shell_usage"]



def _is_memory(path: Optional[str]) -> bool:
    return not path or path == ":memory:" or path.startswith("file::memory:")


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing on the way out; the error was reported
        pass


# One statement splitter and one comment skipper for the whole package: the DB-API's.
from ..statements import skip_space_and_comments as _skip_comments  # noqa: E402
from ..statements import split_statements as split_sql  # noqa: E402


# -- dot-commands on an audited database -----------------------------------------------------
#
# An audited database stays audited: no dot-command may change data or the log without
# the change being recorded. Every dot-command is in exactly one of three groups when the
# current database is audited (or merely holds an audit log):
#
# * AUDIT_HARMLESS: output settings, listings and read-only looks at the schema or at
#   SQLite's state. They run as in APSW's shell (their reads are not recorded).
# * AUDIT_CHECKED: commands that go through the audited heliosdb.Connection (their
#   effects are recorded) or that check their arguments themselves and refuse the
#   forms that would weaken the log (.dbconfig NAME VALUE, .read FILE.py, ...).
# * everything else, including any dot-command a later APSW adds, and any command_*
#   method a subclass adds without classifying it: refused, with the attempt recorded.

#: Dot-commands that never write: output settings, listings, read-only queries.
AUDIT_HARMLESS = frozenset({
    "bail", "cd", "changes", "colour", "color", "databases", "dbinfo", "dump", "echo",
    "encoding", "exceptions", "exit", "quit", "find", "header", "headers", "help",
    "indices", "log", "mode", "nullvalue", "pages", "print",
    "prompt", "schema", "separator", "show", "tables", "timeout", "timer", "version",
    "vfsname", "vfsinfo", "vfslist", "width",
})

#: Dot-commands that run through the audited connection or guard their own arguments.
AUDIT_CHECKED = frozenset({
    # HeliosDB's own: heliosdb APIs on the audited connection
    "audit", "verify", "checkpoint", "export_audit", "encryption", "passwd", "rekey",
    "report",
    # APSW's, made safe here
    "import", "autoimport", "open", "close", "backup", "restore", "dbconfig", "limit",
    "connection", "parameter", "read", "ftsq",
    # they write a file: never the database's own (or its journal, WAL or shm)
    "output", "pages_svg",
})

#: Why a refused dot-command would weaken the log.
_REFUSED_BECAUSE = {
    "load": "an extension is native code running on the raw SQLite connection, around "
            "the audit log",
    "py": "Python code gets the raw SQLite connection, which writes around the audit log",
    "shell": "an outside program can write the database file around the audit log",
}
_REFUSED_DEFAULT = "it uses the raw SQLite connection, around the audit log"

#: .dbconfig settings an audited database may change: query planning and diagnostics.
_DBCONFIG_SETTABLE = frozenset({"enable_qpsg", "reverse_scanorder", "stmt_scanstatus"})
#: ... and settings it may only make stricter (the one value allowed).
_DBCONFIG_STRICTER = {"defensive": 1, "writable_schema": 0, "trusted_schema": 0,
                      "enable_load_extension": 0}
_DBCONFIG_BECAUSE = {
    "writable_schema": "it would let SQL rewrite the audit log",
    "defensive": "turning it off lets SQL corrupt the database file and its audit log",
    "trusted_schema": "it would let views and triggers call functions with side effects, "
                      "unrecorded",
    "enable_trigger": "triggers change what a statement does, so the log would no longer "
                      "match the data",
    "enable_load_extension": "an extension is native code running around the audit log",
    "reset_database": "it would wipe the database and its audit log",
}
_DBCONFIG_DEFAULT = "it changes how SQLite treats the schema and data the audit log records"


def _audit_tables(db: apsw.Connection) -> set[str]:
    """Names of the audit logs ``db`` holds (heliosdb.audit.neighbourhood's
    ``find_audit_tables``: every table with the log's columns and every table the meta
    table keeps rows for, even one since dropped). An unreadable schema counts as holding
    one (fail closed)."""
    from ..audit.neighbourhood import find_audit_tables

    try:
        return set(find_audit_tables(db))
    except (apsw.Error, heliosdb.DatabaseError):
        return {"?"}


def _uncovered_audit_log(conn: heliosdb.Connection) -> Optional[str]:
    """An audit log the database holds that ``conn`` neither writes nor protects (None if
    none). An audited connection protects every audit table of the file; one whose
    stored policy switched capture off still guards them."""
    if getattr(conn, "audit", None) is not None or conn._internal_authorizer is not None:
        return None
    others = sorted(_audit_tables(conn._apsw))
    return others[0] if others else None


def _check_audit_coverage(conn: heliosdb.Connection, path: str) -> None:
    """Refuse (closing ``conn``) a database whose audit log ``conn`` would not write.

    A database holding an audit log is only ever used audited, by that log: opened with
    auditing off (a config that does not audit) or auditing another table (a config with
    another ``table_name``), SQL typed in the shell would change data or that log
    unrecorded.
    """
    other = _uncovered_audit_log(conn)
    if other is None:
        return
    _close_quietly(conn)
    if other == "?":
        raise CLIError(f"{path}: cannot read its schema to check for an audit log")
    raise CLIError(_uncovered_message(path, other))


def _uncovered_message(path: str, table: str) -> str:
    return (f"{path} holds the audit log {table}, which the config in force does not write: "
            f"open it with an audit config for that log (--config default for __audit_log, "
            f"else a config with [audit] table_name = \"{table}\")")


def _connect_checked(opener: Opener, path: str, *, key: Optional[KeySpec] = None,
                     config: Any = "__same__") -> heliosdb.Connection:
    """``opener.connect(path, ...)``, refusing a database whose audit log it would not write.

    The connection itself runs a database that holds an audit policy under at least that
    policy, whatever config the command line gave (heliosdb.audit.policy), and protects
    every audit table in the file; :func:`_check_audit_coverage` is the shell's second
    check of that.
    """
    cfg = opener.config if config == "__same__" else config
    spec = key if key is not None else opener.key
    conn = opener.connect(path, key=spec, config=cfg)
    _check_audit_coverage(conn, path)
    if conn.audit is not None and is_readonly_connection(conn):
        # The stored policy lets a read-only session read unrecorded (it refuses the
        # reads where it logs them): say so, once, on stderr.
        sys.stderr.write(f"{PROG}: note: {db_file(path)} is open read-only: this session "
                         f"writes nothing to its audit log, so changes are refused, and so "
                         f"are reads if its audit policy records them\n")
    return _harden(conn)


def _harden(conn: heliosdb.Connection) -> heliosdb.Connection:
    """Turn SQLite's defensive mode on for an audited connection (and return it).

    SQLITE_DBCONFIG_DEFENSIVE stops SQL from corrupting the file behind the audit log's
    back: ``PRAGMA writable_schema``, ``journal_mode=OFF``, ``schema_version`` writes,
    writes to shadow tables and ``sqlite_dbpage``. The connection layer is to do this
    itself; until it does, the shell does it for the connections it opens.
    """
    if getattr(conn, "audit", None) is not None:
        try:
            conn._apsw.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
        except (apsw.Error, AttributeError):  # noqa: BLE001 - an older SQLite: the checks stay
            pass
    return conn


def _plain_file_holds_audit_log(path: str) -> bool:
    """True if ``path`` is an existing plaintext database holding an audit log (read-only
    look; an encrypted file cannot be looked into without its key: False)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0 or file_is_encrypted(path):
        return False
    try:
        db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error:
        return False
    try:
        return bool(_audit_tables(db) - {"?"})
    finally:
        db.close()


def _refused_when_audited(name: str, fn: Any) -> Any:
    """``fn`` (an APSW ``command_*`` method) refused while the database is audited."""
    import functools

    @functools.wraps(fn)
    def guarded(self: "HeliosShell", cmd: list[str], *args: Any, **kwargs: Any) -> Any:
        if self.audit_guarded():
            self.refuse("." + name.replace("_", "-"),
                        _REFUSED_BECAUSE.get(name, _REFUSED_DEFAULT), cmd)
        return fn(self, cmd, *args, **kwargs)

    guarded._heliosdb_refused_when_audited = True  # type: ignore[attr-defined]
    return guarded


def _explain_kind(stmt: str) -> int:
    """1 for EXPLAIN, 2 for EXPLAIN QUERY PLAN, 0 otherwise."""
    words = stmt[_skip_comments(stmt):][:40].upper().split()
    if not words or words[0] != "EXPLAIN":
        return 0
    return 2 if words[1:3] == ["QUERY", "PLAN"] else 1


class HeliosShell(apsw.shell.Shell):
    """The sqlite3-style shell of :class:`apsw.shell.Shell`, on HeliosDB connections.

    ``conn`` is the :class:`heliosdb.Connection` to start on (``None`` opens one lazily,
    in memory unless a file name is set); ``opener`` says how to open further databases
    (``.open``, ``.backup``, ``.restore``): key source, config and audit user.
    """

    #: The HeliosDB connection whose APSW connection is ``self.db`` (``None`` if the
    #: current connection was not opened by this shell, e.g. after ``.connection N``).
    _hconn: Optional[heliosdb.Connection] = None

    _command_params = dict(apsw.shell.Shell._command_params)
    _command_params["export-audit"] = list(EXPORT_FORMATS)
    _command_params["audit"] = ["user=", "op=", "table=", "since=", "until=", "session=",
                                "limit=", "offset=", "failed"]

    def __init__(self, conn: Optional[heliosdb.Connection] = None,
                 opener: Optional[Opener] = None, *, debug: bool = False,
                 stdin: Any = None, stdout: Any = None, stderr: Any = None) -> None:
        self._hconn = conn
        self.opener = opener or Opener()
        #: Where the key of the current database comes from (never the key itself).
        self.current_key = self.opener.key if conn is not None else KeySpec()
        self.debug = debug
        #: Errors reported so far (a script that had any exits with status 1).
        self.error_count = 0
        #: The exit status the errors so far call for: 1, or 2 for a usage or input
        #: error such as a feature missing from this installation.
        self.exit_status = EXIT_OK
        super().__init__(stdin=stdin, stdout=stdout, stderr=stderr,
                         db=conn._apsw if conn is not None else None)
        self.history_file = "~/.heliosdb_history"
        self.prompt = "heliosdb> "
        self.moreprompt = "     ...> "

    # -- the connection: always opened through heliosdb.connect --------------------------------

    def _ensure_db(self) -> apsw.Connection:
        "The database isn't opened until first use.  This function ensures it is now open."
        if self._db is None:
            path = self.dbfilename or ":memory:"
            spec = self._default_key(path)
            conn = _connect_checked(self.opener, path, key=spec)
            self._hconn = conn
            self._db = conn._apsw
            self.dbfilename = path
            self.current_key = spec
            self._apply_fts()
        return self._db

    def _default_key(self, path: str) -> KeySpec:
        """The key source for opening ``path`` when no key option was given.

        The command line's for an encrypted file or a new one; none for a memory database
        or an existing plaintext file.
        """
        if _is_memory(path):
            return KeySpec()
        if os.path.exists(path) and os.path.getsize(path) > 0 and not file_is_encrypted(path):
            return KeySpec()
        return self.opener.key

    def _set_db(self, newv: tuple) -> None:
        "Sets the open database (or None) and filename, closing the HeliosDB connection"
        db, _name = newv
        old = self._hconn
        if old is not None and (db is None or old._apsw is not db):
            self._hconn = None
            if self._db is old._apsw:
                self._db = None
            _close_quietly(old)  # flushes buffered audit events
        apsw.shell.Shell._set_db(self, newv)

    db = property(_ensure_db, _set_db, None, "The current :class:`apsw.Connection`")

    @property
    def connection(self) -> heliosdb.Connection:
        """The current :class:`heliosdb.Connection` (opening it if needed)."""
        self._ensure_db()
        if self._hconn is None or self._hconn._apsw is not self._db:
            raise self.Error("the current connection was not opened by heliosdb: use .open")
        return self._hconn

    def close(self) -> None:
        """Close the current connection (flushing buffered audit events)."""
        conn, self._hconn = self._hconn, None
        if conn is not None:
            if self._db is conn._apsw:
                self._db = None
            conn.close()

    def _is_encrypted(self) -> bool:
        """True if the current database is stored encrypted (storage_info, else its header)."""
        conn = self.connection
        info_fn = getattr(conn, "storage_info", None)
        if info_fn is not None:
            try:
                return bool(info_fn().get("encryption_enabled"))
            except Exception:  # noqa: BLE001 - fall back to looking at the file
                pass
        path = self.dbfilename
        if _is_memory(path) or not os.path.exists(path):
            return False
        return file_is_encrypted(path)

    # -- errors -------------------------------------------------------------------------------

    def _query_details(self, sql: str, bindings: Any) -> Any:
        # SQL errors found while preparing: show them as sqlite3 does ("Error: ..."),
        # without APSW's class names.
        qd = super()._query_details(sql, bindings)
        if qd.exception is not None and isinstance(qd.exception, apsw.Error) and qd.error_text:
            qd = dataclasses.replace(qd, error_text="Error: " + error_message(qd.exception))
        return qd

    def handle_exception(self) -> None:
        """Print the current exception as one line on stderr (a traceback with --debug).

        Counts the error; re-raises it when ``.bail`` is on, as APSW's shell does.
        """
        eclass, eval_, etb = sys.exc_info()
        if isinstance(eval_, SystemExit):
            eval_._handle_exception_saw_this = True
            raise
        if isinstance(eval_, BrokenPipeError):
            raise  # the reader of the output went away: end quietly, as sqlite3 does
        if not getattr(eval_, "_heliosdb_counted", False) and eval_ is not None:
            if not isinstance(eval_, KeyboardInterrupt):
                self.error_count += 1
                code = eval_.code if isinstance(eval_, CLIError) else EXIT_FAILED
                self.exit_status = max(self.exit_status, code)
            try:
                eval_._heliosdb_counted = True
            except AttributeError:  # pragma: no cover - exceptions take attributes
                pass
        if not getattr(eval_, "_handle_exception_saw_this", False):
            self._out_colour()
            if isinstance(eval_, KeyboardInterrupt):
                self.handle_interrupt()
                text = "Interrupted"
            else:
                text = error_message(eval_) if not isinstance(eval_, self.Error) else \
                    str(eval_).rstrip("\n")
                if not text.startswith("Error"):
                    text = "Error: " + text
            for i, desc in enumerate(self._input_descriptions):
                pref = "At " if i == 0 else " " * i + "From "
                self.write(self.stderr, pref + desc + "\n")
            if (self.debug or self.exceptions) and eval_ is not None:
                self.write(self.stderr, "".join(traceback.format_exception(eclass, eval_, etb)))
            self.write_error(text + "\n")
        eval_._handle_exception_saw_this = True
        if self.bail:
            raise

    def command_exceptions(self, cmd: list[str]) -> None:
        """exceptions ON|OFF: If ON then detailed tracebacks are shown on exceptions

        Normally only the error message is shown.  With ON (or the --debug
        option) the Python traceback is printed as well.  Unlike APSW's
        shell, the values of local variables are never printed: they could
        hold a passphrase.
        """
        self.exceptions = self._boolean_command("exceptions", cmd)

    # -- help and banner ----------------------------------------------------------------------

    def command_help(self, cmd: list[str]) -> None:
        """help ?COMMAND?: Shows list of commands and their usage

        If COMMAND is specified then shows detail about that COMMAND.
        ``.help all`` will show detailed help about all commands.
        Commands with a dash (.export-audit) are found with or without it.
        """
        super().command_help([c.lstrip(".").replace("-", "_") for c in cmd])

    def usage(self) -> str:
        "Returns the usage message."
        return shell_usage()

    def banner(self) -> str:
        """The text shown when an interactive session starts."""
        lines = [f"HeliosDB {heliosdb.__version__} (SQLite {apsw.sqlite_lib_version()}, "
                 f"APSW {apsw.apsw_version()})",
                 'Enter ".help" for instructions']
        if self._hconn is not None and not _is_memory(self.dbfilename):
            facts = []
            try:
                facts.append("encrypted" if self._is_encrypted() else "not encrypted")
            except Exception:  # noqa: BLE001 - the banner never fails
                pass
            audit = getattr(self._hconn, "audit", None)
            if audit is not None:
                user = getattr(audit, "user", None) or self.opener.user
                preset = getattr(getattr(self._hconn, "config", None), "name", None)
                text = f"audited as {user}" if user else "audited"
                facts.append(f"{text}, config {preset}" if preset else text)
            else:
                facts.append("not audited")
            lines.append(f"Connected to {self.dbfilename} ({', '.join(facts)})")
        return "\n".join(lines) + "\n"

    def cmdloop(self, intro: Optional[str] = None, transient: Optional[str] = None) -> None:
        """Runs the main interactive command loop (see :meth:`apsw.shell.Shell.cmdloop`).

        The history file is made private (mode 0600) when it is written; where it cannot
        be written (a read-only HOME), the session keeps no history rather than failing.
        """
        path = os.path.expanduser(self.history_file)
        if not os.access(path if os.path.exists(path) else os.path.dirname(path) or ".",
                         os.W_OK):
            self.history_file = os.devnull
        try:
            super().cmdloop(intro=self.banner() if intro is None else intro,
                            transient=transient)
        finally:
            path = os.path.expanduser(self.history_file)
            if os.path.isfile(path):
                try:
                    os.chmod(path, 0o600)
                except OSError:
                    pass

    # -- output helpers -----------------------------------------------------------------------

    def emit_rows(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Write rows through the current output mode (list, box, csv, json...).

        Values must be SQLite values (see :func:`heliosdb.cli.common.sql_value`).
        Returns the number of rows written.
        """
        columns = tuple(columns)
        rows_iter = iter(rows)

        class _Source:
            def get_description(self) -> tuple:
                return tuple((c, None) for c in columns)

            def __iter__(self) -> "_Source":
                return self

            def __next__(self) -> tuple:
                return tuple(next(rows_iter))

        import inspect

        sig = inspect.signature(self.output)
        first_param = list(sig.parameters.values())[1] if len(sig.parameters) > 1 else None
        use_prow = first_param is not None and first_param.annotation == "Shell.Row"
        if getattr(self.output, "all_at_once", False):
            collected = [tuple(r) for r in _Source()]
            if collected:
                self.output(columns, collected)
            return len(collected)
        count = 0
        for prow in apsw.shell.Shell.PositionRow(_Source()):
            if count == 0:
                self.output(True, columns)
            self.output(False, prow if use_prow else prow.row)
            count += 1
        return count

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call an API, turning a missing feature or an error into a shell error."""
        try:
            return fn(*args, **kwargs)
        except (CLIError, self.Error):
            raise
        except heliosdb.Error as exc:
            raise self.Error(error_message(exc)) from None

    def _key_options(self, args: list[str]) -> tuple[Optional[KeySpec], list[str]]:
        """Take --key/-k, --key-file F and --key-env V out of ``args``."""
        spec: Optional[KeySpec] = None
        rest: list[str] = []
        it = iter(args)
        for a in it:
            if a in ("--key", "-k"):
                spec = KeySpec("prompt")
            elif a in ("--key-file", "--key-env"):
                value = next(it, None)
                if value is None:
                    raise self.Error(f"{a} needs a value")
                spec = KeySpec("file" if a == "--key-file" else "env", value)
            elif a.startswith(("--key-file=", "--key-env=")):
                name, _, value = a.partition("=")
                spec = KeySpec("file" if name == "--key-file" else "env", value)
            elif a.startswith("--key="):
                raise self.Error("keys are never given on a command line: use --key-file, "
                                 "--key-env or --key (prompt)")
            else:
                rest.append(a)
        return spec, rest

    # -- SQL: through the HeliosDB connection when it is audited ------------------------------

    @property
    def audited(self) -> bool:
        """True when the current connection records an audit log."""
        conn = self._hconn
        return conn is not None and self._db is conn._apsw and conn.audit is not None

    # -- dot-commands on an audited database: recorded, harmless, or refused ------------------

    def audit_guarded(self) -> bool:
        """True when dot-commands that could write around the audit log are refused.

        That is when the current connection is audited, or its database holds an audit
        log all the same (opening the database first if needed).
        """
        return self.audited or bool(_audit_tables(self.db))

    def refuse(self, command: str, reason: str, args: Sequence[str] = (),
               what: Optional[str] = None) -> None:
        """Refuse dot-command ``command`` (".load") on an audited database; always raises.

        ``what`` is how the error names it (".dbconfig writable_schema"; default
        ``command``). On an audited connection the attempt is recorded first, as a failed
        ``SHELL_COMMAND`` event whose target is the command.
        """
        what = what or command
        message = f"{what} is refused on an audited database: {reason}"
        if self.audited:
            details: dict[str, Any] = {"command": what, "refused": reason}
            if command not in (".py", ".shell"):  # free text: could be anything
                details["arguments"] = [str(a)[:200] for a in list(args)[:16]]
            try:
                self._hconn.audit.log("SHELL_COMMAND", target=command,  # type: ignore
                                      success=False, details=details)
            except Exception as exc:  # noqa: BLE001 - still refused; say it went unrecorded
                message += f" (the attempt could not be recorded: {error_message(exc)})"
        raise self.Error(message)

    def _database_path(self) -> Optional[str]:
        """The absolute path of the current database file (None for a memory database);
        SQLite's name for it, which a later ``.cd`` does not change."""
        db = self._db
        if db is not None:
            try:
                name = db.filename
            except apsw.Error:
                name = ""
            return name or None
        path = self.dbfilename
        return None if not path or _is_memory(path) else os.path.abspath(path)

    def check_not_database_file(self, command: str, path: Optional[str],
                                args: Sequence[str] = ()) -> None:
        """Refuse ``command`` writing ``path`` when that is the audited database's file.

        Writing over the file (or its -journal, -wal or -shm) would destroy the
        database and its audit log unrecorded: a next connection would start a new,
        empty log that verifies.
        """
        db_path = self._database_path()
        if not path or not db_path or not self.audit_guarded():
            return
        base = os.path.realpath(db_path)
        target = os.path.realpath(os.path.expanduser(path))
        same = target in {base + s for s in ("", "-journal", "-wal", "-shm")}
        if not same and os.path.exists(target) and os.path.exists(base):
            same = os.path.samefile(target, base)
        if same:
            self.refuse(command, "it would write over the database file and its audit log",
                        args, what=f"{command} {path}")

    def command_output(self, cmd: list[str]) -> None:
        """output FILENAME: Send output to FILENAME (or stdout)

        If the FILENAME is 'stdout' then output is sent to standard
        output from when the shell was started.  The file is opened
        using the current encoding (change with 'encoding' command).
        On an audited database FILENAME cannot be the database file (or
        its journal): truncating it would destroy the audit log.
        """
        if len(cmd) == 1 and cmd[0] != "stdout":
            self.check_not_database_file(".output", cmd[0], cmd)
        super().command_output(cmd)

    def command_pages_svg(self, cmd: list[str]) -> None:
        """pages-svg ?OUTFILENAME?: Shows space usage in a graphic

        If you do not specify a filename, then a temporary file is created and
        the browser invoked to show it.  On an audited database OUTFILENAME
        cannot be the database file (or its journal).
        """
        if len(cmd) == 1:
            self.check_not_database_file(".pages-svg", cmd[0], cmd)
        super().command_pages_svg(cmd)

    def process_command(self, command: str) -> None:
        """Processes a dot command (split with :func:`shlex.split`).

        On an audited database, a dot-command that is neither harmless
        (:data:`AUDIT_HARMLESS`) nor run through the audited connection or checked by
        its own method (:data:`AUDIT_CHECKED`) is refused: a new or unknown command
        that could reach the raw SQLite connection is safe by default.
        """
        import shlex

        try:
            words = shlex.split(command)
        except ValueError:
            words = []  # APSW's own parse reports it
        if words and words[0].startswith(".") and len(words[0]) > 1:
            name = words[0][1:].replace("-", "_")
            if name not in AUDIT_HARMLESS and name not in AUDIT_CHECKED and \
                    getattr(self, "command_" + name, None) is not None and \
                    self.audit_guarded():
                if self.echo:
                    self.write(self.stderr, command + "\n")
                self.refuse("." + words[0][1:], _REFUSED_BECAUSE.get(name, _REFUSED_DEFAULT),
                            words[1:])
        super().process_command(command)

    def command_dbconfig(self, cmd: list[str]) -> None:
        """dbconfig ?NAME VALUE?: Show all dbconfig, or set a specific one

        With no arguments lists all settings.  Supply a name and integer value
        to change.  For example:

            .dbconfig enable_fkey 1

        On an audited database (opened with defensive on) the settings can
        be listed (and one read with VALUE -1) but only enable_qpsg,
        reverse_scanorder and stmt_scanstatus changed, and defensive,
        writable_schema, trusted_schema and enable_load_extension only made
        stricter: the other changes (writable_schema 1, defensive 0,
        enable_trigger ...) could let SQL rewrite the audit log or change
        data unrecorded.  The refused attempt is recorded.
        """
        if len(cmd) == 2 and self.audit_guarded():
            name = cmd[0].lower()
            try:
                value: Optional[int] = int(cmd[1])
            except ValueError:
                value = None
            if value != -1 and name not in _DBCONFIG_SETTABLE and \
                    (value is None or _DBCONFIG_STRICTER.get(name) != value):
                self.refuse(".dbconfig", _DBCONFIG_BECAUSE.get(name, _DBCONFIG_DEFAULT), cmd,
                            what=f".dbconfig {name}")
        super().command_dbconfig(cmd)

    def command_limit(self, cmd: list[str]) -> None:
        """limit ?NAME VALUE?: Show all limits, or set a specific one

        With no arguments lists all limits.  Supply a name and value to
        change.  For example:

           .limit attached 10

        On an audited database limits can be listed (and one read with VALUE
        -1) but not changed: they apply to the audit log's own writes too.
        """
        if len(cmd) == 2 and self.audit_guarded():
            try:
                reading = int(cmd[1]) == -1
            except ValueError:
                reading = False
            if not reading:
                self.refuse(".limit", "limits apply to the audit log's own writes too, so "
                            "a change could stop events from being recorded", cmd,
                            what=f".limit {cmd[0].lower()}")
        super().command_limit(cmd)

    def command_connection(self, cmd: list[str]) -> None:
        """connection ?NUMBER?: List connections, or switch active connection

        This covers all connections, not just those started in this
        shell.  Closed connections are not shown.

        For each connection, its index for switching active connection,
        (VFS used), "filename", and open flags are shown.  Switching away
        from an audited database, or to a connection whose database holds an
        audit log, is refused: SQL on that raw connection would not be
        recorded.  Use .open instead.
        """
        if len(cmd) == 1:
            dbs = [c for c in apsw.connections() if c]
            try:
                target = dbs[int(cmd[0])]
            except (ValueError, IndexError):
                target = None  # APSW's command reports it
            if target is not None and target is not self.db and \
                    (self.audit_guarded() or _audit_tables(target)):
                self.refuse(".connection", "SQL on another raw SQLite connection is not "
                            "recorded: use .open", cmd)
        super().command_connection(cmd)

    def command_parameter(self, cmd: list[str]) -> None:
        """parameter CMD ...:  Maintain named bindings you can use in your queries.

        Specify a subcommand:

           list            -- shows current bindings
           clear           -- deletes all bindings
           unset NAME      -- deletes named binding
           set NAME VALUE  -- sets binding to VALUE

        The value must be a valid SQL literal or expression.  For example
        `3` will be an integer 3 while '3' will be a string.  On an audited
        database the value is computed by one SELECT on the audited
        connection.

        Example::

          .parameter set floor 10.99
          .parameter set text 'Acme''s Glove'
          SELECT * FROM sales WHERE price > $floor AND description != $text;
        """
        if len(cmd) == 3 and cmd[0] == "set" and self.audit_guarded():
            if not self.audited:
                self.refuse(".parameter", _REFUSED_DEFAULT, cmd, what=".parameter set")
            try:
                row = self._hconn.execute(f"select ({cmd[2]})").fetchone()  # type: ignore
            except Exception:  # noqa: BLE001 - as APSW's shell says it
                raise self.Error(
                    f"Does not appear to be a valid SQLite value: {cmd[2]}") from None
            self.bindings[cmd[1]] = row[0]
            return
        super().command_parameter(cmd)

    def command_read(self, cmd: list[str]) -> None:
        """read FILENAME: Processes SQL and commands in FILENAME (or Python if FILENAME ends with .py)

        Treats the specified file as input (a mixture or SQL and/or
        dot commands), each of which is audited like typed input.  If the
        filename ends in .py then it is treated as Python code instead:
        refused on an audited database, as Python gets the raw connection.

        For Python code the symbol 'db' refers to the current database,
        'shell' refers to the instance of the shell and 'apsw' is the
        apsw module.
        """
        if len(cmd) == 1 and cmd[0].lower().endswith(".py") and self.audit_guarded():
            self.refuse(".read", _REFUSED_BECAUSE["py"], cmd, what=".read FILE.py")
        super().command_read(cmd)

    def process_sql(self, sql: str, bindings: Any = None, internal: bool = False,
                    summary: Any = None) -> None:
        """Processes SQL text consisting of one or more statements

        On an audited connection, user SQL runs through :class:`heliosdb.Connection`
        (so each statement is captured in the audit log, with the connection's
        transaction rules); the shell's own queries (``internal``: .tables, .schema ...)
        and everything on a plain connection run as in APSW's shell.
        """
        if internal or not self.audited:
            return super().process_sql(sql, bindings, internal, summary)
        conn = self._hconn
        assert conn is not None
        if bindings is None:
            bindings = self.bindings
        changes = 0  # rows changed by the user's statements (not by the audit writes)
        for stmt in split_sql(sql):
            if self.echo:
                self.write_error(stmt.strip() + "\n")
            explain = _explain_kind(stmt)
            if explain:
                self.push_output()
                self.header = True
                self.widths = [-4, 13, 4, 4, 4, 13, 2, 13] if explain == 1 else [-4, -6, 22]
                self.truncate = False
                self.output = self.output_column
            try:
                with apsw.ext.ShowResourceUsage(file=self.stderr if self.timer else None,
                                                db=self.db, scope="thread", indent="* "):
                    cur = conn.cursor()
                    cur.execute(stmt, bindings if bindings else ())
                    changes += max(cur.rowcount, 0)
                    if cur.description is not None:
                        columns = [d[0] for d in cur.description]
                        rows: Any = cur
                        if explain == 2:
                            columns = [c for i, c in enumerate(columns) if i != 2]
                            rows = (tuple(v for i, v in enumerate(r) if i != 2) for r in cur)
                        self.emit_rows(columns, rows)
            finally:
                if explain:
                    self.pop_output()
        if changes and self.changes:
            total = self.db.total_changes()
            self.write(self.stdout,
                       "changes: " + self.colour.colour_value(changes, str(changes))
                       + "\ttotal changes: " + self.colour.colour_value(total, str(total))
                       + "\n")

    def command_import(self, cmd: list[str]) -> None:
        """import FILE TABLE: Imports separated data from FILE into TABLE

        Reads data from the file into the named table using the current
        separator and encoding (.mode csv for CSV files), as one
        transaction.  All values are supplied to SQLite as strings; declare
        column types to have them converted.  On an audited connection the
        rows are inserted through the audit layer: one INSERT event with the
        row count, committed with the rows.
        """
        if not self.audited:
            return super().command_import(cmd)
        if len(cmd) != 2:
            raise self.Error("import takes two parameters")
        fname, table = cmd
        ident = self._fmt_sql_identifier(table)
        ncols = len(self.db.execute(f"pragma table_info({ident})").fetchall())
        if ncols < 1:
            raise self.Error(f"No such table '{table}'")
        if self.separator == ",":
            dialect: dict[str, Any] = {"dialect": "excel"}
        elif self.separator == "\t":
            dialect = {"dialect": "excel-tab"}
        else:
            dialect = {"quoting": csv.QUOTE_NONE, "delimiter": self.separator,
                       "doublequote": False, "quotechar": "\x00"}

        def rows() -> Iterable[list[str]]:
            for n, line in enumerate(self._csvin_wrapper(fname, dialect), start=1):
                if len(line) != ncols:
                    raise self.Error(f"row {n} has {len(line)} columns but should have {ncols}")
                yield line

        sql = f"insert into {ident} values({','.join('?' * ncols)})"
        self._run(self._hconn.executemany, sql, rows())  # type: ignore[union-attr]

    def command_autoimport(self, cmd: list[str]) -> None:
        """autoimport FILENAME ?TABLE?: Imports a file, creating the table and working out types

        The import command requires that you precisely pre-setup the
        table and schema, and set the data separators (eg commas or
        tabs).  This command figures out the separator and csv dialect
        automatically, creates the table and converts values.  On an
        audited connection it is refused (it writes around the audit layer):
        create the table and use .import.
        """
        if self.audit_guarded():
            self.refuse(".autoimport", "it writes around the audit layer: create the table "
                        "and use .import", cmd)
        return super().command_autoimport(cmd)

    # -- standard commands that must not bypass encryption ------------------------------------

    def command_open(self, cmd: list[str]) -> None:
        """open ?OPTIONS? ?FILE?: Closes the current database and opens FILE

        The database is opened with heliosdb.connect, like the one named on
        the command line: with its config and audit user, and with its key
        source for an encrypted or new FILE (a plaintext FILE needs none),
        unless options say otherwise for this FILE.  Options are:

        --key, -k        prompt for the key (never echoed)

        --key-file FILE  read the key from FILE

        --key-env VAR    read the key (64 hex characters) from $VAR

        --config NAME    a config preset or TOML file (audit, encryption)

        --new            delete FILE first if it exists (and its journals)

        If FILE is omitted then a memory database is opened.
        """
        spec, args = self._key_options(list(cmd))
        config: Any = "__same__"
        new = False
        path: Optional[str] = None
        it = iter(args)
        for a in it:
            if a == "--config":
                config = next(it, None)
                if config is None:
                    raise self.Error("--config needs a value")
            elif a in ("--new", "--wipe"):
                new = True
            elif a.startswith("-"):
                raise self.Error(f"Unknown open option: {a}")
            elif path is not None:
                raise self.Error(f"Too many arguments: {a}")
            else:
                path = a
        path = path or ":memory:"
        if new and not _is_memory(path):
            db_path = self._database_path()
            current = bool(db_path and os.path.exists(path) and os.path.exists(db_path)
                           and os.path.samefile(path, db_path))
            if current and self.audit_guarded():
                self.refuse(".open", "it would delete the database and its audit log", cmd,
                            what=".open --new")
            if not current and _plain_file_holds_audit_log(path):
                raise self.Error(f".open --new {path} is refused: that database holds an "
                                 f"audit log, which deleting it would lose unrecorded")
            if current and self._hconn is not None:
                self.close()
            for suffix in ("", "-journal", "-wal", "-shm"):
                try:
                    os.remove(path + suffix)
                except FileNotFoundError:
                    pass
        if spec is None:
            spec = self._default_key(path)
        conn = self._run(_connect_checked, self.opener, path, key=spec,
                         config=self.opener.config if config == "__same__" else config)
        self.db = None, None  # close the current one (and its audit session)
        self._hconn = conn
        self._db = conn._apsw
        self.dbfilename = path
        self.current_key = spec
        self._apply_fts()
        self.db_references.add(self._db)

    def command_close(self, cmd: list[str]) -> None:
        """close: Closes the current database

        Buffered audit events are written first.  The next statement opens
        a memory database; use .open to open another file.
        """
        if cmd:
            raise self.Error("Unexpected arguments")
        if self._db is not None:
            self.db_references.discard(self._db)
        if self._hconn is not None:
            self._run(self.close)
        elif self._db is not None:
            self._db.close()
            self._db = None
        self.dbfilename = ""

    def _copy_target(self, args: list[str], what: str) -> tuple[str, str, Optional[KeySpec]]:
        spec, rest = self._key_options(args)
        if len(rest) == 1:
            return "main", rest[0], spec
        if len(rest) == 2:
            return rest[0], rest[1], spec
        raise self.Error(f"{what} takes one or two parameters (and key options)")

    def _backup_progress(self, description: str) -> Any:
        bar = progress_callback(None, description)

        def progress(status: int, remaining: int, total: int) -> None:
            bar(total - remaining, total)

        progress.close = bar.close  # type: ignore[attr-defined]
        return progress

    def command_backup(self, cmd: list[str]) -> None:
        """backup ?DB? FILE ?KEY OPTIONS?: Backup DB (default "main") to FILE

        Copies the contents of the current database to FILE, overwriting
        whatever was in FILE, page by page with SQLite's backup API.  The
        copy is opened with heliosdb.connect: the backup of an encrypted
        database is encrypted too, under the key given by --key-file FILE,
        --key-env VAR or --key (prompt), or by default the key source this
        database was opened with.  A plaintext database is copied in clear
        (a key option is refused: use heliosdb encrypt).
        """
        dbname, fname, spec = self._copy_target(list(cmd), "backup")
        self.check_not_database_file(".backup", fname, cmd)
        conn = self.connection
        encrypted = self._is_encrypted()
        if spec is None:
            spec = self.current_key if encrypted else KeySpec()
        if encrypted and not spec.given:
            raise self.Error("this database is encrypted: give the backup a key with "
                             "--key-file, --key-env or --key")
        if spec.given and not encrypted:
            raise self.Error("a page-by-page backup keeps the page layout, so the backup of "
                             "a plaintext database is plaintext: use 'heliosdb encrypt' to "
                             "make an encrypted copy")
        if os.path.exists(fname):
            if not _is_memory(self.dbfilename) and os.path.exists(self.dbfilename) and \
                    os.path.samefile(fname, self.dbfilename):
                raise self.Error("the backup cannot overwrite the database itself")
            # The backup replaces FILE whatever it was (another key, plaintext ...).
            for suffix in ("", "-journal", "-wal", "-shm"):
                try:
                    os.remove(fname + suffix)
                except FileNotFoundError:
                    pass
        target = self._run(Opener(key=spec, prompt_if_needed=False, auto_audit=False).connect,
                           fname, config=None)
        progress = self._backup_progress(f"Backing up to {fname}")
        try:
            self._run(conn.backup, target, name=dbname, progress=progress)
        finally:
            progress.close()
            _close_quietly(target)

    def command_restore(self, cmd: list[str]) -> None:
        """restore ?DB? FILE ?KEY OPTIONS?: Restore database from FILE into DB (default "main")

        Copies the contents of FILE to the current database (default
        "main"), page by page.  FILE is opened with heliosdb.connect; if it
        is encrypted its key is given by --key-file FILE, --key-env VAR or
        --key (prompt), by default the key source of this database.  Both
        must be encrypted or both plaintext (convert with heliosdb encrypt
        or decrypt).  Refused on an audited database (it would replace the
        audit log with FILE's, and the log it replaces could not record it),
        and from a FILE that holds an audit log into an unaudited one (use
        .open FILE, or .backup from it).
        """
        dbname, fname, spec = self._copy_target(list(cmd), "restore")
        if self.audit_guarded():
            self.refuse(".restore", "it would replace the database and its audit log with "
                        "FILE's, and the log it replaces could not record it", cmd)
        self.connection  # noqa: B018 - a heliosdb connection, opened if needed
        if not os.path.exists(fname):
            raise self.Error(f"{fname}: no such file")
        if spec is None:
            spec = self.current_key if file_is_encrypted(fname) else KeySpec()
        source = self._run(Opener(key=spec, auto_audit=False).connect, fname,
                           config=None, must_exist=True)
        try:
            if _audit_tables(source._apsw):
                raise self.Error(f".restore of {fname} is refused: it holds an audit log, "
                                 f"which this unaudited connection would not write (use "
                                 f".open {fname})")
            if file_is_encrypted(fname) != self._is_encrypted():
                raise self.Error(
                    "restore copies pages as they are, so source and database must both be "
                    "encrypted or both plaintext: use 'heliosdb encrypt' or 'heliosdb "
                    "decrypt' to convert FILE first")
            # Both ends were opened by heliosdb.connect: pages are decrypted as read from
            # FILE and encrypted (if at all) by the current database's own VFS as written.
            with self.db.backup(dbname, source._apsw, "main") as b:
                while not b.done:
                    b.step(256)
        except apsw.Error as exc:
            raise self.Error(error_message(exc)) from None
        finally:
            _close_quietly(source)

    # -- HeliosDB commands --------------------------------------------------------------------

    def command_audit(self, cmd: list[str]) -> None:
        """audit ?FILTER ...?: Shows audit log events, oldest first

        Filters (any number, all must match):

          user=NAME        events of that session user

          op=OPERATION     INSERT, UPDATE, DELETE, CREATE_TABLE, LOGIN ...

          table=NAME       events on that table

          since=WHEN       at or after WHEN: ISO 8601 (2026-01-31,
          2026-01-31T09:30Z) or an age (90m, 12h, 7d, 2w)

          until=WHEN       before WHEN

          session=ID       one session

          failed           failed or denied attempts only (ok: successes)

          limit=N offset=N paging

        Events are shown with the current output mode (.mode), for example
        .mode json then .audit op=DELETE.  Needs a database opened with
        auditing on (--config).
        """
        filters = parse_audit_filters(cmd)
        events = self._run(run_audit_query, self.connection, filters)
        self.emit_rows(AUDIT_COLUMNS, (event_row(e) for e in events))

    def command_verify(self, cmd: list[str]) -> None:
        """verify ?--checkpoint FILE? ?--verify-key KEYFILE? ?--pages?: Verifies the audit chain

        Recomputes every checksum of the audit log and reports the first
        fault: an event modified, deleted, inserted, reordered, a truncated
        tail, time going backwards.  With --checkpoint FILE (made by
        .checkpoint) it also proves that the log still reaches the signed
        head, which catches truncation and a file rolled back to an older
        copy; --verify-key names the key that checks its signature (the
        signing key, an Ed25519 public key in PEM form, or the HMAC secret;
        default $HELIOSDB_SIGNING_KEY_FILE).  With --pages, every page of an
        encrypted database is authenticated as well (this asks for the key).
        A failure is an error: scripts exit with status 1.
        """
        checkpoint = None
        verify_key = None
        pages = False
        it = iter(cmd)
        for a in it:
            if a in ("--checkpoint", "--verify-key"):
                value = next(it, None)
                if value is None:
                    raise self.Error(f"{a} needs a file")
                if a == "--checkpoint":
                    checkpoint = value
                else:
                    verify_key = value
            elif a == "--pages":
                pages = True
            else:
                raise self.Error(f"Unexpected argument {a!r}: .verify ?--checkpoint FILE? "
                                 f"?--verify-key KEYFILE? ?--pages?")
        conn = self.connection
        notes: list[str] = []
        with progress_callback(None, "Verifying the audit chain") as bar:
            report = self._run(verify_audit, conn, checkpoint, verify_key, bar, notes)
        for note in notes:
            self.write(self.stderr, f"note: {note}\n")
        line = format_verify_report(report)
        if not report_ok(report):
            raise self.Error(line)
        self.write(self.stdout, line + "\n")
        if pages:
            if not self._is_encrypted():
                raise self.Error("--pages: this database is not encrypted")
            key = (self.current_key if self.current_key.given else KeySpec("prompt")).load(
                self.dbfilename)
            try:
                with progress_callback(None, "Authenticating pages") as bar:
                    result = self._run(verify_pages, self.dbfilename, key, bar)
            finally:
                wipe_key(key)
            line = format_pages_report(result)
            if not report_ok(result):
                raise self.Error(line)
            self.write(self.stdout, line + "\n")

    def _out_file_and_option(self, cmd: list[str], command: str, option: str, value: str
                             ) -> tuple[str, Optional[str]]:
        """The arguments ``FILE ?OPTION VALUE?`` of ``.command`` (.checkpoint, .report): the
        FILE to write, checked not to be an open database, and OPTION's value (None when
        not given); ``value`` says what OPTION needs, for the error."""
        given = None
        out = None
        it = iter(cmd)
        for a in it:
            if a == option:
                given = next(it, None)
                if given is None:
                    raise self.Error(f"{option} needs {value}")
            elif out is None and not a.startswith("-"):
                out = a
            else:
                raise self.Error(f"Unexpected argument {a!r}")
        if out is None:
            raise self.Error(f"{command} needs a FILE to write")
        self.check_not_database_file(f".{command}", out, cmd)
        return out, given

    def command_checkpoint(self, cmd: list[str]) -> None:
        """checkpoint FILE ?--signing-key KEYFILE?: Signs the head of the audit chain

        Writes a checkpoint (the last event's id and checksum, the count
        and the time) signed under a key kept outside the database, to FILE.
        KEYFILE is an Ed25519 private key in PEM form or an HMAC secret (64
        hex characters or 32+ bytes); the default is the file named by
        $HELIOSDB_SIGNING_KEY_FILE.  Keep checkpoints away from the
        database: .verify --checkpoint FILE then detects a truncated or
        rolled-back log.
        """
        out, signing = self._out_file_and_option(cmd, "checkpoint", "--signing-key", "a file")
        cp = self._run(make_checkpoint, self.connection, out, signing)
        ident = getattr(cp, "event_id", None) or getattr(cp, "id", None)
        where = f" at event {ident}" if ident is not None else ""
        self.write(self.stdout, f"checkpoint{where} written to {out}\n")

    def command_export_audit(self, cmd: list[str]) -> None:
        """export-audit FORMAT FILE ?--since-id N?: Exports the audit log to FILE

        FORMAT is one of jsonl (JSON Lines carrying the chain proof), csv,
        ocsf (OCSF 6005 Datastore Activity JSON, for SIEMs) or syslog
        (RFC 5424 lines).  --since-id N exports only events after id N, for
        incremental shipping.  A FILE ending in .gz is gzip-compressed.
        """
        since_id = None
        rest = []
        it = iter(cmd)
        for a in it:
            if a == "--since-id":
                value = next(it, None)
                try:
                    since_id = int(value or "")
                except ValueError:
                    raise self.Error("--since-id needs an event id") from None
            else:
                rest.append(a)
        if len(rest) != 2:
            raise self.Error("export-audit takes FORMAT FILE (formats: "
                             + ", ".join(EXPORT_FORMATS) + ")")
        fmt, out = rest
        self.check_not_database_file(".export-audit", out, cmd)
        manifest = self._run(export_audit, self.connection, fmt, out, after_id=since_id)
        self.write(self.stdout, f"{describe_export(manifest, fmt, out)}\n")

    def command_encryption(self, cmd: list[str]) -> None:
        """encryption: Shows how the database is stored

        Whether it is encrypted, the cipher, the key derivation function and
        its parameters, the page size and reserved bytes, the format version,
        the key slots and the number of page encryptions under the current
        key (AES-GCM with random nonces is safe for 2^32 of them).  No key
        material is ever shown.
        """
        if cmd:
            raise self.Error("encryption takes no arguments")
        conn = self.connection
        info_fn = getattr(conn, "storage_info", None)
        if info_fn is None:
            raise Unavailable(".encryption", "Connection.storage_info is missing")
        try:
            info = info_fn()
        except ImportError as exc:
            raise Unavailable(".encryption", str(exc)) from None
        except heliosdb.Error as exc:
            raise self.Error(error_message(exc)) from None
        self.emit_rows(("property", "value"),
                       ((k, sql_value(v)) for k, v in format_storage_info(info)))

    def _current_secret(self, what: str) -> Any:
        """The key of the open database, asked for again (``.passwd``, ``.rekey``)."""
        if _is_memory(self.dbfilename):
            raise self.Error(f"{what}: a memory database has no key")
        if not self._is_encrypted():
            raise self.Error(f"{what}: this database is not encrypted (see heliosdb encrypt)")
        spec = self.current_key if self.current_key.given else KeySpec("prompt")
        return spec.load(self.dbfilename,
                         prompt=f"Current passphrase or 64-hex key for {self.dbfilename}: ")

    def command_passwd(self, cmd: list[str]) -> None:
        """passwd: Changes the passphrase of this encrypted database

        Asks for the current passphrase (or uses the key file or variable
        the database was opened with) and twice for the new one, at the
        terminal and never echoed.  Only the key slot is rewritten, so it
        is instant whatever the size of the database; the old passphrase
        stops working at once.  Takes no arguments: a passphrase typed on
        the command line would end up in the history.
        """
        if cmd:
            self._forget_last_history_line()
            raise self.Error("passwd takes no arguments: the passphrases are asked for "
                             "at the prompt")
        change = self._run(heliosdb_api, "change_passphrase", ".passwd")
        path = self.dbfilename
        old = self._current_secret(".passwd")
        new = None
        try:
            new = key_from_entry(prompt_new_secret(path), path, new=True)
            self._run(change, path, old, new)
        finally:
            wipe_key(old)
            wipe_key(new)
        self.write(self.stdout, f"passphrase changed for {path}\n")

    def command_rekey(self, cmd: list[str]) -> None:
        """rekey: Re-encrypts every page under a new random data key

        Key rotation: a fresh data key is drawn and every page (and the
        WAL) is re-encrypted under it, crash-safely, with a progress bar on
        a terminal.  The database is closed for the rotation and reopened
        after it.  The passphrase or key file stays the same; the nonce
        counter starts again from zero.  Asks for the current key unless the
        database was opened with --key-file or --key-env.  Takes no arguments.
        """
        if cmd:
            self._forget_last_history_line()
            raise self.Error("rekey takes no arguments")
        rotate = self._run(heliosdb_api, "rotate_key", ".rekey")
        conn = self.connection
        path, config = self.dbfilename, conn.config
        key = self._current_secret(".rekey")
        try:
            # Rotate with the file closed here (buffered audit events written first),
            # then reopen it with the same key: the data key changed, not the key.
            self.close()
            try:
                with progress_callback(None, f"Re-encrypting {os.path.basename(path)}") as bar:
                    self._run(call_with_progress, rotate, path, key, progress=bar)
            finally:
                conn = _harden(self._run(self.opener.connect, path, secret=key,
                                         config=config, auto_audit=False))
                self._hconn, self._db, self.dbfilename = conn, conn._apsw, path
                self._apply_fts()
        finally:
            wipe_key(key)
        self.write(self.stdout, f"data key rotated for {path}\n")

    def command_report(self, cmd: list[str]) -> None:
        """report FILE ?--preset NAME?: Writes a compliance report to FILE

        A self-contained HTML file, and its data as JSON next to it (same
        name, .json): the config in force, encryption status, audit coverage by operation, the
        verification result, the latest checkpoint and findings (mass
        deletes, DELETE without WHERE, failed bursts, after-hours access...).
        --preset names the regulation to report against (hipaa, soc2, gdpr,
        pci-dss, fda-part11); the default is the config in force.
        """
        out, preset = self._out_file_and_option(cmd, "report", "--preset", "a name")
        self.check_not_database_file(".report", os.path.splitext(out)[0] + ".json", cmd)
        result = self._run(write_report, self.connection, out, preset)
        findings = report_findings(result)
        self.write(self.stdout, f"report written to {out} ({len(findings)} findings)\n")

    def _forget_last_history_line(self) -> None:
        """Drop the line just typed from the readline history (it may hold a secret)."""
        if not self._using_readline:
            return
        try:
            import readline

            n = readline.get_current_history_length()
            if n:
                readline.remove_history_item(n - 1)
        except (ImportError, ValueError):  # pragma: no cover
            pass


# Every APSW dot-command that is neither harmless nor checked by a HeliosShell method is
# refused on an audited database, however it is called (.init files and direct calls too),
# including any a later APSW adds.
for _name in dir(apsw.shell.Shell):
    if _name.startswith("command_") and _name not in HeliosShell.__dict__ and \
            _name[len("command_"):] not in AUDIT_HARMLESS | AUDIT_CHECKED:
        setattr(HeliosShell, _name,
                _refused_when_audited(_name[len("command_"):], getattr(apsw.shell.Shell, _name)))
del _name


# --------------------------------------------------------------------------------------------
# The command line of the shell
# --------------------------------------------------------------------------------------------

#: APSW shell options that take a value.
_APSW_VALUED = {"init", "separator", "nullvalue", "encoding"}


def shell_usage() -> str:
    """The usage text of the shell (``heliosdb --help``)."""
    return f"""\
Usage: {PROG} [OPTIONS] FILE [SQL|CMD]...
       {PROG} [OPTIONS] COMMAND [ARGS]   (info, verify, audit, export, encrypt,
                  decrypt, rekey, passwd, purge, report, prove, fleet-verify,
                  demo; '{PROG} COMMAND --help')

FILE is a HeliosDB (or plain SQLite) database, or a file: URI (file:app.db?mode=ro).
A missing FILE is an error unless --create is given; if FILE is omitted, a
transient in-memory database is used. A FILE named like a COMMAND is written as a
path (./verify). Each SQL|CMD argument is run as one complete statement or
dot-command, then the shell exits; otherwise commands are read from the terminal
(with history and completion) or from standard input. Options may stand before
or after FILE; '--' ends them.

Keys and auditing:
   --create             create FILE if it does not exist
   -readonly            open FILE read-only (an audited FILE records nothing)
   -k, --key            prompt for the passphrase or 64-hex key (never echoed)
   --key-file FILE      read the key from FILE (32 raw bytes or 64 hex characters)
   --key-env VAR        read the key from environment variable VAR (64 hex chars)
   --config NAME|FILE   config preset (default, hipaa, soc2, ...) or TOML file
   --user NAME          the session user recorded in the audit log
   --debug              show Python tracebacks on errors

Shell options (as the sqlite3 shell):
   -cmd COMMAND         run COMMAND before reading input (may be repeated)
   -init FILE           read and run FILE first
   -batch               force batch I/O; -interactive forces interactive I/O
   -bail                stop after the first error
   -echo                print commands before running them
   -[no]header          turn headers on or off
   -box -column -csv -html -json -jsonl -line -list -python -table -tabs
                        output mode
   -separator SEP       field separator for list mode (default |)
   -nullvalue TEXT      text shown for NULL
   -version             show versions and exit

An encrypted FILE opened without a key asks for one when standard input is a
terminal. Keys are never accepted as command-line values.

Exit status: 0 ok; 1 an error in SQL or a command (scripts), or verification
failed; 2 usage or input error (bad options, missing file, wrong key); 130
interrupted; 141 standard output closed by its reader (quietly). See docs/CLI.md.
"""


@dataclasses.dataclass
class ShellArgs:
    """The shell's command line, split into what HeliosDB and what APSW handle."""

    opener: Opener
    filename: str = ""
    commands: list[str] = dataclasses.field(default_factory=list)
    cmds: list[str] = dataclasses.field(default_factory=list)
    apsw_options: list[str] = dataclasses.field(default_factory=list)
    debug: bool = False
    help: bool = False
    version: bool = False
    #: --create: a missing FILE becomes a new database (otherwise it is an error).
    create: bool = False
    #: -readonly: open FILE read-only (as a ``file:...?mode=ro`` URI would).
    readonly: bool = False


def parse_shell_args(argv: Sequence[str]) -> ShellArgs:
    """Split the shell's arguments. Options may come before or after FILE, as in the
    sqlite3 shell; ``--`` ends them (what follows is FILE and SQL)."""
    key = KeySpec()
    config = None
    user = None
    out = ShellArgs(opener=Opener())
    args = list(argv)
    i = 0
    have_file = False
    positional: list[str] = []
    while i < len(args):
        a = args[i]
        if a == "--":
            positional.extend(args[i + 1:])
            break
        if a == "-" or not a.startswith("-"):
            positional.append(a)
            have_file = True
            i += 1
            continue
        name, eq, inline = a.lstrip("-").partition("=")

        def value() -> str:
            nonlocal i
            if eq:
                return inline
            if i + 1 >= len(args):
                raise CLIError(f"option {a} needs a value")
            i += 1
            return args[i]

        if name in ("k", "key"):
            if eq:
                raise CLIError("keys are never given on the command line: use --key-file "
                               "FILE, --key-env VAR or --key (prompt)")
            key = KeySpec("prompt")
        elif name == "key-file":
            key = KeySpec("file", value())
        elif name == "key-env":
            key = KeySpec("env", value())
        elif name == "config":
            config = value()
        elif name == "user":
            user = value()
        elif name == "debug":
            out.debug = True
        elif name == "create":
            out.create = True
        elif name == "readonly":
            out.readonly = True
        elif name == "cmd":
            out.cmds.append(value())
        elif name in ("h", "help"):
            out.help = True
        elif name == "version":
            out.version = True
        elif name in _APSW_VALUED:
            out.apsw_options += ["-" + name, value()]
        else:
            out.apsw_options.append(a)
        i += 1
    if positional:
        out.filename = positional[0]
        out.commands = positional[1:]
    out.opener = Opener(key=key, config=config, user=user)
    return out


def _refuse_subcommand_name(filename: str) -> None:
    """A subcommand's name is never a database name (``heliosdb -- verify``)."""
    from .commands import SUBCOMMANDS

    if filename in SUBCOMMANDS:
        raise CLIError(f"{filename!r} is the name of the subcommand 'heliosdb {filename}', not "
                       f"a database: to open a database file of that name, write "
                       f"./{filename}")


def _first_opener(args: ShellArgs, path: str) -> Opener:
    """The opener of the database named on the command line: read-only when asked
    (-readonly, mode=ro) or when the file cannot be written (a read-only session of an
    audited database records nothing; the shell says so)."""
    opener = args.opener
    if _is_memory(path):
        return dataclasses.replace(opener, key=KeySpec())
    name = db_file(path)
    if args.readonly or (name is not None and os.path.exists(name)
                         and not os.access(name, os.W_OK)):
        return dataclasses.replace(opener, readonly=True)
    return opener


def _print_error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()


def run_shell(argv: Sequence[str]) -> int:
    """Run the shell with ``argv`` (without the program name); returns the exit status."""
    debug = "--debug" in argv or "-debug" in argv
    try:
        args = parse_shell_args(argv)
    except CLIError as exc:
        _print_error(str(exc))
        return exc.code
    if args.help:
        sys.stdout.write(shell_usage())
        return EXIT_OK
    if args.version:
        sys.stdout.write(f"HeliosDB {heliosdb.__version__}, SQLite {apsw.sqlite_lib_version()}"
                         f", APSW {apsw.apsw_version()}\n")
        return EXIT_OK
    conn = None
    shell = None
    try:
        path = args.filename or ":memory:"
        _refuse_subcommand_name(path)
        check_exists(path, create=args.create)
        conn = _connect_checked(_first_opener(args, path), path)
        shell = HeliosShell(conn, args.opener, debug=debug)
        conn = None  # the shell owns it now
        # APSW's option parser treats every option as -nocolour while NO_COLOR is set
        # (swallowing -json, -csv ...): parse without it, then honour it.
        no_color = os.environ.pop("NO_COLOR", None)
        try:
            shell.process_args(list(args.apsw_options))
        except apsw.shell.Shell.Error as exc:
            _print_error(str(exc).strip())
            return EXIT_USAGE
        finally:
            if no_color is not None:
                os.environ["NO_COLOR"] = no_color
        if no_color is not None:
            shell.command_colour(["off"])
        for command in args.cmds:
            _run_one(shell, command)
        if args.commands:
            for command in args.commands:
                _run_one(shell, command)
        else:
            shell.cmdloop()
        if shell.error_count and not shell.interactive:
            return shell.exit_status or EXIT_FAILED
        return EXIT_OK
    except SystemExit as exc:  # .exit N / .quit
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_FAILED)
    except KeyboardInterrupt:
        return exit_code_for(KeyboardInterrupt())
    except BrokenPipeError:
        raise  # the reader of standard output went away: __main__ ends quietly
    except BaseException as exc:  # noqa: BLE001 - one line, exit code
        if getattr(exc, "_handle_exception_saw_this", False):  # already reported (.bail)
            return (shell.exit_status if shell is not None else 0) or EXIT_FAILED
        if debug:
            traceback.print_exc()
        _print_error(name_the_file(exc, args.filename) if shell is None
                     else error_message(exc))
        return exit_code_for(exc)
    finally:
        if conn is not None:
            _close_quietly(conn)
        if shell is not None:
            try:
                shell.close()
            except Exception as exc:  # noqa: BLE001
                _print_error(error_message(exc))


def _run_one(shell: HeliosShell, command: str) -> None:
    """Run one complete command, reporting an error like the interactive loop does."""
    try:
        shell.process_complete_line(command)
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - handle_exception reports it (re-raises on bail)
        shell.handle_exception()
