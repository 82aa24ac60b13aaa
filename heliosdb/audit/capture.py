"""Statement capture: turn what a connection runs into audit events.

How each piece of SQLite's machinery is used (DESIGN.md sections 3 and 3a):

* The **authorizer** runs when a statement is prepared. It classifies the statement
  (operation, target tables, columns read) and denies any user statement that would write,
  alter or drop the audit tables. APSW reuses prepared statements from its cache without
  calling the authorizer again, so the classification is kept per SQL text.
* The **preupdate hook** gives old and new row values (only when
  ``capture_row_values = true``: it costs a Python call per row).
* The **rollback hook** tells when SQLite rolled a transaction back on its own.
* Statement timing is measured around the execution.

Transaction rules (docs/AUDIT_CAPTURE.md, "Capture semantics", says it for users):

* A change and its event commit together: inside a user transaction the event is queued
  and stored in that transaction, in batches (before COMMIT, SAVEPOINT, RELEASE and
  ROLLBACK TO, before SQL naming the audit tables, when ``conn.audit`` reads the log, and
  every ``_TX_BATCH`` events); an autocommit statement is wrapped in ``BEGIN`` ...
  ``COMMIT`` with its event (statements that cannot run in a transaction, such as VACUUM,
  ATTACH or a journal-mode change, get their event in a transaction of its own right
  after). If the audit write fails, the change is rolled back (the wrapper, or the whole
  user transaction) and the error raised: no change commits without its event.
* Failed, denied and rolled-back attempts are kept in memory and written in a separate
  transaction *after* the rollback, so they survive it. A crash before that write loses
  them, as it loses the attempt itself; SELECT events buffered under
  ``async_buffer_size`` may likewise be lost in a crash (at most that many).
* The session keeps sqlite3's view: ``last_insert_rowid()`` is restored after audit
  writes, ``own_changes`` says how much of ``total_changes()`` is heliosdb's own, a
  statement that never compiled opens no transaction, rows kept after a failure (OR FAIL,
  executemany) stay, with their event.
"""
from __future__ import annotations

import base64
import getpass
import json
import os
import re
import threading
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional

import apsw

from .. import statements
from ..apsw_errors import explain_error, raise_translated
from ..errors import AuditIntegrityError, ProgrammingError, translate
from ..errors import Error as HeliosError
from . import store
from .api import AuditAPI
from .events import EventFields, canonical_json
# Module level, not inside the functions of the open path: an import statement run in a
# function costs about 10,000 instructions each time even when the module is loaded.
from .neighbourhood import (audited_attachments, find_audit_tables, find_foreign_schema,
                            schema_rows)
from .policy import POLICY_ROW, enforce, per_config, read_meta, read_stored_policy
from . import retention

# Authorizer action codes -> audit operation, in priority order: the first one seen in
# this list names the statement (a CREATE TABLE also reports an INSERT into
# sqlite_master; that INSERT must not name it).
_DDL_ACTIONS = {
    apsw.SQLITE_CREATE_TABLE: "CREATE_TABLE", apsw.SQLITE_CREATE_TEMP_TABLE: "CREATE_TABLE",
    apsw.SQLITE_DROP_TABLE: "DROP_TABLE", apsw.SQLITE_DROP_TEMP_TABLE: "DROP_TABLE",
    apsw.SQLITE_ALTER_TABLE: "ALTER_TABLE",
    apsw.SQLITE_CREATE_INDEX: "CREATE_INDEX", apsw.SQLITE_CREATE_TEMP_INDEX: "CREATE_INDEX",
    apsw.SQLITE_DROP_INDEX: "DROP_INDEX", apsw.SQLITE_DROP_TEMP_INDEX: "DROP_INDEX",
    apsw.SQLITE_CREATE_VIEW: "CREATE_VIEW", apsw.SQLITE_CREATE_TEMP_VIEW: "CREATE_VIEW",
    apsw.SQLITE_DROP_VIEW: "DROP_VIEW", apsw.SQLITE_DROP_TEMP_VIEW: "DROP_VIEW",
    apsw.SQLITE_CREATE_TRIGGER: "CREATE_TRIGGER",
    apsw.SQLITE_CREATE_TEMP_TRIGGER: "CREATE_TRIGGER",
    apsw.SQLITE_DROP_TRIGGER: "DROP_TRIGGER", apsw.SQLITE_DROP_TEMP_TRIGGER: "DROP_TRIGGER",
    apsw.SQLITE_CREATE_VTABLE: "CREATE_TABLE", apsw.SQLITE_DROP_VTABLE: "DROP_TABLE",
}
# Actions whose second argument (not the first) is the table: (index or trigger, table).
_ON_TABLE = frozenset((
    apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_DROP_INDEX, apsw.SQLITE_CREATE_TEMP_INDEX,
    apsw.SQLITE_DROP_TEMP_INDEX, apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_DROP_TRIGGER,
    apsw.SQLITE_CREATE_TEMP_TRIGGER, apsw.SQLITE_DROP_TEMP_TRIGGER, apsw.SQLITE_ALTER_TABLE,
    apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE))
_DML_ACTIONS = {apsw.SQLITE_INSERT: "INSERT", apsw.SQLITE_UPDATE: "UPDATE",
                apsw.SQLITE_DELETE: "DELETE"}
_OTHER_ACTIONS = {apsw.SQLITE_PRAGMA: "PRAGMA", apsw.SQLITE_ATTACH: "ATTACH",
                  apsw.SQLITE_DETACH: "DETACH", apsw.SQLITE_ANALYZE: "ANALYZE",
                  apsw.SQLITE_REINDEX: "REINDEX"}
_SCHEMA_TABLES = ("sqlite_master", "sqlite_temp_master", "sqlite_schema",
                  "sqlite_temp_schema", "sqlite_sequence", "sqlite_stat1", "sqlite_stat4")

_CATEGORY = {**{op: "ddl" for op in _DDL_ACTIONS.values()},
             "INSERT": "dml", "UPDATE": "dml", "DELETE": "dml",
             "SELECT": "select", "BEGIN": "tx", "COMMIT": "tx", "ROLLBACK": "tx",
             "SAVEPOINT": "tx", "RELEASE": "tx", "ROLLBACK_TO": "tx"}
_TX_OPS = frozenset(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "ROLLBACK_TO"))
# Events of a transaction are stored in batches of at most this many (see _queue).
_TX_BATCH = 1000
# Events that a rollback does not turn into failed attempts: they record what happened
# (a read, the start of the transaction) or are failures already.
_KEEP_ON_ROLLBACK = frozenset(("BEGIN", "SELECT", "SAVEPOINT", "RELEASE", "ROLLBACK_TO"))
# First keywords of statements the audit layer wraps in BEGIN ... COMMIT with their event
# when they run in autocommit mode. Others (SELECT, PRAGMA, VACUUM, ATTACH, transaction
# control ...) are not: some cannot run inside a transaction, and a read must not take
# the write lock. WITH is wrapped when its text holds a DML keyword.
_WRAP_WORDS = frozenset(("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER"))
_DML_WORDS = ("INSERT", "UPDATE", "DELETE", "REPLACE")
# Leading keyword -> operation, for statements the authorizer never saw (syntax errors)
# or that have no action code (VACUUM).
_KEYWORD_OPS = {
    "INSERT": "INSERT", "REPLACE": "INSERT", "UPDATE": "UPDATE", "DELETE": "DELETE",
    "SELECT": "SELECT", "VALUES": "SELECT", "EXPLAIN": "SELECT", "PRAGMA": "PRAGMA",
    "ATTACH": "ATTACH", "DETACH": "DETACH", "BEGIN": "BEGIN", "COMMIT": "COMMIT",
    "END": "COMMIT", "ROLLBACK": "ROLLBACK", "SAVEPOINT": "SAVEPOINT", "RELEASE": "RELEASE",
    "VACUUM": "VACUUM", "ANALYZE": "ANALYZE", "REINDEX": "REINDEX",
}
_UNKNOWN = "UNKNOWN"  # a statement whose first word is no SQL verb (a syntax error)


_WRITE_OR_SHADOW = frozenset((
    apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE,
    apsw.SQLITE_DROP_TABLE, apsw.SQLITE_DROP_TEMP_TABLE,
    apsw.SQLITE_CREATE_TABLE, apsw.SQLITE_CREATE_TEMP_TABLE,
    apsw.SQLITE_CREATE_VIEW, apsw.SQLITE_CREATE_TEMP_VIEW,
    apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE))
_WRITES = frozenset((apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE,
                     apsw.SQLITE_DROP_TABLE, apsw.SQLITE_DROP_TEMP_TABLE,
                     apsw.SQLITE_DROP_VTABLE))
# Authorizer actions that change data or schema: what require_reason asks a reason for.
_CHANGES = frozenset((apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE)) \
    | frozenset(_DDL_ACTIONS)
_REASON_REQUIRED = ("a reason is required for every change under this audit policy "
                    "(require_reason): set one with conn.audit.set_context(reason=...) or "
                    "conn.audit.acting_as(user, reason=...)")
# dbconfig-like pragmas that would let SQL rewrite the schema, the log with it.
_UNSAFE_PRAGMAS = frozenset(("writable_schema",))


def deny_reason(code: int, a1: Any, a2: Any, protected: frozenset) -> Optional[str]:
    """Why an authorizer action must be denied to protect the audit tables (lower-case
    names in ``protected``), or ``None``. Append-only: nobody but the audit writer
    changes, alters, drops, shadows, indexes or attaches triggers to them."""
    if code in _WRITE_OR_SHADOW:
        if a1 and a1.lower() in protected:
            if code in _WRITES:
                return f"the audit log {a1} is append-only"
            return f"the name {a1} is reserved for the audit log"
    elif code in _ON_TABLE:
        if a2 and a2.lower() in protected:
            if code in (apsw.SQLITE_CREATE_TRIGGER, apsw.SQLITE_CREATE_TEMP_TRIGGER):
                return f"triggers on the audit log {a2} are not allowed"
            if code in (apsw.SQLITE_CREATE_INDEX, apsw.SQLITE_CREATE_TEMP_INDEX):
                # An index expression could call a function that fails every append.
                return f"indexes on the audit log {a2} are managed by heliosdb"
            return f"the audit log {a2} is append-only"
    elif code == apsw.SQLITE_PRAGMA and a2 is not None and a1 \
            and a1.lower() in _UNSAFE_PRAGMAS:
        return "writable_schema would let SQL rewrite the audit log"
    return None


def guard_authorizer(tables: Iterable[str]) -> Any:
    """An authorizer that only protects ``tables`` (and the meta table): for a database
    whose stored policy switched capture off. Its log stays append-only."""
    from .store import META_TABLE

    protected = frozenset([t.lower() for t in tables] + [META_TABLE.lower()])

    def authorize(code: int, a1: Any, a2: Any, dbname: Any, trigger: Any) -> int:
        return apsw.SQLITE_OK if deny_reason(code, a1, a2, protected) is None \
            else apsw.SQLITE_DENY

    return authorize


class _Classification:
    """What a statement does, as the authorizer saw it at prepare time."""

    __slots__ = ("operation", "targets", "target", "columns", "tx_verb", "savepoint")

    def __init__(self, operation: str, targets: tuple, columns: tuple,
                 tx_verb: Optional[str], savepoint: Optional[str] = None) -> None:
        self.operation = operation
        self.targets = targets
        self.target = ",".join(targets) or None  # the event's target column
        self.columns = columns
        self.tx_verb = tx_verb
        self.savepoint = savepoint


def _qualified(name: str, dbname: Any) -> str:
    if dbname and dbname != "main":
        return f"{dbname}.{name}"
    return name


def _classify_actions(actions: list, sql: str = "") -> _Classification:
    ddl = dml = other = None
    select = False
    targets: list[str] = []
    columns: list[str] = []
    tx_verb = None
    savepoint = None
    schema_dml = None  # (op, table): a change to sqlite_sequence / sqlite_stat1 itself
    for code, a1, a2, dbname in actions:
        if code in _DDL_ACTIONS:
            if ddl is None:
                ddl = _DDL_ACTIONS[code]
                tbl = a2 if code in _ON_TABLE else a1
                if tbl:
                    tbl = _qualified(tbl, dbname)
                    if tbl not in targets:
                        targets.insert(0, tbl)
        elif code in _DML_ACTIONS:
            if a1 in _SCHEMA_TABLES:
                if schema_dml is None:
                    schema_dml = (_DML_ACTIONS[code], _qualified(a1, dbname))
                continue
            if dml is None:
                dml = _DML_ACTIONS[code]
            if a1:
                t = _qualified(a1, dbname)
                if t not in targets:
                    targets.append(t)
        elif code == apsw.SQLITE_READ:
            if a1 in _SCHEMA_TABLES:
                continue
            t = _qualified(a1, dbname)
            col = f"{t}.{a2}" if a2 else t
            if col not in columns:
                columns.append(col)
        elif code == apsw.SQLITE_SELECT:
            select = True
        elif code == apsw.SQLITE_TRANSACTION:
            tx_verb = (a1 or "").upper()
        elif code == apsw.SQLITE_SAVEPOINT:
            verb = (a1 or "").upper()
            tx_verb = tx_verb or {"BEGIN": "SAVEPOINT", "RELEASE": "RELEASE",
                                  "ROLLBACK": "ROLLBACK_TO"}.get(verb, "SAVEPOINT")
            savepoint = a2
        elif code in _OTHER_ACTIONS and other is None:
            other = _OTHER_ACTIONS[code]
            if code == apsw.SQLITE_PRAGMA and a1:
                targets.append(a1)
            elif code == apsw.SQLITE_ATTACH and a1:
                targets.append(a1)
            elif code == apsw.SQLITE_DETACH and a1:
                targets.append(a1)
    if tx_verb in _TX_OPS:
        op = tx_verb
    else:
        op = ddl or dml or other
        if op is None and schema_dml is not None:
            # A statement that changes only SQLite's own tables (UPDATE sqlite_sequence
            # SET seq = (SELECT ...)) is that change, not a read: with a subquery it was
            # classified SELECT, and not recorded when reads are not logged.
            op = schema_dml[0]
            targets.append(schema_dml[1])
        if op is None:
            kw = _keyword_op(sql) if sql else _UNKNOWN
            op = "SELECT" if select or kw in (_UNKNOWN, "SELECT") else kw
        if op == "SELECT":
            for c in columns:
                t = c.rsplit(".", 1)[0] if "." in c else c
                if t not in targets:
                    targets.append(t)
    return _Classification(op, tuple(targets), tuple(columns), tx_verb, savepoint)


def _first_words(sql: str) -> list:
    i = statements.skip_space_and_comments(sql, 0)
    return sql[i:i + 40].upper().replace("(", " ").replace(";", " ").split()


def _keyword_op(sql: str) -> str:
    words = _first_words(sql)
    first = words[0] if words else ""
    if first == "WITH":
        up = sql.upper()
        for w in _DML_WORDS:
            if w in up:
                return "INSERT" if w == "REPLACE" else w
        return "SELECT"
    if first == "ROLLBACK" and len(words) > 1 and words[1] == "TO" or \
            first == "ROLLBACK" and len(words) > 2 and words[2] == "TO":
        return "ROLLBACK_TO"
    if first in ("CREATE", "DROP", "ALTER"):
        kind = words[1] if len(words) > 1 else ""
        if kind in ("TEMP", "TEMPORARY", "UNIQUE", "VIRTUAL") and len(words) > 2:
            kind = words[2]
        if kind in ("TABLE", "INDEX", "VIEW", "TRIGGER"):
            return f"{first}_{kind}"
        return _UNKNOWN
    return _KEYWORD_OPS.get(first, _UNKNOWN)


def _explain_now(db: Any, exc: BaseException) -> Optional[BaseException]:
    """CorruptPageError (file, page) for a page that failed authentication, else None."""
    if not isinstance(exc, (apsw.IOError, apsw.CorruptError, apsw.NotADBError)):
        return None
    return explain_error(db, exc)


def _classify_by_keyword(sql: str) -> _Classification:
    """Fallback classification from the leading keyword (statement never prepared here)."""
    return _Classification(_keyword_op(sql), (), (), None)


def _needs_wrap(sql: str) -> bool:
    """Does ``sql``, run in autocommit mode, change data or schema (wrap it with its event)?"""
    words = _first_words(sql)
    first = words[0] if words else ""
    if first in _WRAP_WORDS:
        return True
    if first == "WITH":
        up = sql.upper()
        return any(w in up for w in _DML_WORDS)
    return False


_DML_OPS = frozenset(("INSERT", "UPDATE", "DELETE"))
#: What writing an event can fail with that the capture records or retries (a locked or
#: full database, a log that refused the append); anything else is not swallowed.
_WRITE_ERRORS = (apsw.Error, HeliosError)
_perf_ns = time.perf_counter_ns
_new_event = tuple.__new__  # a NamedTuple from a positional tuple, without its __new__
#: The field order in which :meth:`AuditSession._stmt_event` (the hot path) builds
#: EventFields positionally. Checked against the class at import: a reordered or added
#: field stops the import instead of silently moving values into other columns (and into
#: what is hashed). Every other event is built by name.
_STMT_EVENT_ORDER = ("operation", "target", "user", "session_id", "query", "affected_rows",
                     "success", "error", "metadata", "old_values", "new_values", "reason")
if EventFields._fields != _STMT_EVENT_ORDER:  # pragma: no cover - a developer's error
    raise ImportError(f"heliosdb.audit.capture builds EventFields as {_STMT_EVENT_ORDER}, "
                      f"but events.py declares {EventFields._fields}: update _stmt_event")


#: At most this many metadata texts are kept by execution time (see _hot_metadata): a
#: millisecond's worth of distinct times, some 150 kB per connection at most.
_MD_TEXTS = 1024
_MISSING = object()


def _now_us() -> int:
    return time.time_ns() // 1000


class StatementRun(NamedTuple):
    """What an audited statement leaves for the cursor that asked for it, read right after
    the statement ran and before its event was written (the event's own INSERT changes
    ``changes()`` and ``last_insert_rowid()``).

    ``rows`` is None when the statement's rows are still to be read from the APSW cursor;
    a list when the audit ran it to its end first (DML ... RETURNING: SQLite makes every
    change at the first step but counts them only at the end, and a wrapping COMMIT cannot
    run while it is active; a PRAGMA in autocommit mode, whose event needs a transaction
    of its own), with ``description`` as APSW's ``get_description()`` gave it.
    """

    changes: int
    lastrowid: int
    rows: Optional[list]
    description: Any


def _collect(params_iter: Iterable[Any], into: list) -> Iterable[Any]:
    """Pass ``params_iter`` through, keeping each parameter set (capture_parameters)."""
    for p in params_iter:
        into.append(p)
        yield p


_TOKEN = re.compile(r"""
    (?P<skip>'(?:[^']|'')*'|--[^\n]*|/\*.*?(?:\*/|$))
  | (?P<ident>"(?:[^"]|"")*"|\[[^\]]*\]|`(?:[^`]|``)*`|[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<param>\?\d*|[:@$][A-Za-z0-9_]+)
  | (?P<op>==|!=|<>|<=|>=|[=<>(),.;])
  | (?P<other>\S)
""", re.S | re.X)
_COMPARE = {"=", "==", "!=", "<>", "<", ">", "<=", ">=", "like", "glob", "is", "match",
            "regexp"}


def parameter_columns(sql: str) -> dict:
    """Which column each bound parameter goes to, where the SQL says so plainly:
    ``col <op> ?``, ``col IN (?, ...)`` and ``INSERT INTO t (a, b) VALUES (?, ?)``. Keys
    are positions (0-based, in order of appearance; ``?NNN`` by its number - 1) and, for
    named parameters, ``:name``; a parameter not in the dict could not be attributed."""
    toks: list[tuple[str, str]] = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup
        if kind == "skip" or kind is None:
            continue
        text = m.group(kind)
        if kind == "ident":
            if text[0] in "\"[`":
                text = text[1:-1]
            toks.append(("ident", text))
        elif kind == "op":
            toks.append(("op", text))
        else:
            toks.append((kind, text))
    out: dict = {}
    pos = 0
    insert_cols: list[str] = []
    values_at = -1
    for i, (kind, text) in enumerate(toks):
        if kind == "ident" and text.lower() == "values" and i > 0 and toks[i - 1] == ("op", ")"):
            # INSERT INTO t (a, b) VALUES (...): the column list just before
            j = i - 2
            names: list[str] = []
            while j >= 0 and toks[j] != ("op", "("):
                if toks[j][0] == "ident":
                    names.append(toks[j][1])
                j -= 1
            insert_cols = list(reversed(names))
            values_at = i
        if kind != "param":
            continue
        key: Any
        if text.startswith("?"):
            key = int(text[1:]) - 1 if len(text) > 1 else pos
        else:
            key = ":" + text[1:]
        pos = (key + 1) if isinstance(key, int) else pos + 1
        col = None
        prev = toks[i - 1] if i else ("", "")
        if prev[0] in ("op", "ident") and prev[1].lower() in _COMPARE and i >= 2 \
                and toks[i - 2][0] == "ident":
            col = toks[i - 2][1]
        elif values_at >= 0 and insert_cols:
            # position inside the first VALUES tuple
            depth, n = 0, 0
            for k in range(values_at + 1, i):
                t = toks[k]
                if t == ("op", "("):
                    depth += 1
                elif t == ("op", ")"):
                    depth -= 1
                elif t == ("op", ",") and depth == 1:
                    n += 1
            if n < len(insert_cols) and depth == 1:
                col = insert_cols[n]
        else:
            # col IN (?, ?, ...)
            depth, k = 0, i - 1
            while k >= 0:
                t = toks[k]
                if t == ("op", ")"):
                    depth += 1
                elif t == ("op", "("):
                    if depth == 0:
                        if k >= 2 and toks[k - 1][0] == "ident" \
                                and toks[k - 1][1].lower() == "in" and toks[k - 2][0] == "ident":
                            col = toks[k - 2][1]
                        break
                    depth -= 1
                elif t[0] == "ident" and t[1].lower() in ("select", "where", "set", "and",
                                                          "or", "from"):
                    break
                k -= 1
        if col is not None:
            out[key] = col
    return out


def refuse_audited_attachments(db: apsw.Connection, names: list,
                               rollback: Optional[Callable[[str], None]] = None) -> None:
    """Detach the databases ``names`` (attached ones with an audit log of their own, see
    :func:`heliosdb.audit.neighbourhood.audited_attachments`) and refuse: written through
    this connection, their changes would be recorded in no log of theirs (in this
    connection's, if it has one, or none). They are opened with heliosdb.connect(), which
    enforces their own policy. Used after every ATTACH, audited connection or not.

    Fails closed: when the DETACH fails inside an open transaction (the check had to read
    the file through this connection, which keeps its schema locked until the transaction
    ends), the transaction is rolled back with ``rollback(reason)`` (a plain ROLLBACK if
    None) and the DETACH retried; if the database still cannot be detached, the
    connection is closed. Either way the error says what happened."""
    from ..errors import AuditPolicyError

    for name in names:
        detach = f'DETACH "{name.replace(chr(34), chr(34) * 2)}"'
        said = (f"the database attached as {name} has an audit log of its own: its "
                "changes would not be recorded there. Open it with heliosdb.connect() "
                "instead")
        if _ran(db, detach):
            raise AuditPolicyError(said)
        if not db.get_autocommit():
            try:
                if rollback is None:
                    db.execute("ROLLBACK")
                else:
                    rollback(f"an audited database was attached as {name}")
            except apsw.Error:
                pass  # still attached: the connection is closed below
            else:
                if _ran(db, detach):
                    raise AuditPolicyError(said + "; the open transaction was rolled back "
                                           "to detach it")
        db.close()
        raise AuditPolicyError(said + "; it could not be detached, so the connection was "
                               "closed")


def _ran(db: apsw.Connection, sql: str) -> bool:
    """Whether ``sql`` ran without an SQLite error."""
    try:
        db.execute(sql)
    except apsw.Error:
        return False
    return True


#: The commit hook that turns every COMMIT into a rollback, installed while a transaction
#: whose audit write failed could not be rolled back at once (see _abort_transaction).
_DOOMED_HOOK = "heliosdb-audit-doomed-transaction"
#: The savepoint AuditSession.commit() sets before storing the COMMIT event.
_COMMIT_SAVEPOINT = "heliosdb_audit_commit_event"


def _refuse_commit() -> bool:
    return True  # True: SQLite rolls the transaction back instead of committing it


class _ActorFrames(threading.local):
    """Per-thread stack of ``acting_as`` frames; ``top`` is the one in force (or None)."""

    def __init__(self) -> None:
        self.stack: list[tuple] = []
        self.top: Optional[tuple] = None


def _locked(method: Any) -> Any:
    """Run a session method under the session's lock (see ``AuditSession._lock``)."""
    import functools

    @functools.wraps(method)
    def locked(self: "AuditSession", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _new_session_id() -> str:
    """``uuid.uuid4().hex`` without building the UUID object (about 10,000 instructions
    per open): 16 random bytes with the version (4) and variant (RFC 4122) bits set as
    uuid4 sets them, as 32 hex digits."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return b.hex()


#: AuditSession._metadata_parts()'s answers (policy.per_config), and the value types of a
#: context it keeps them for (floats are not: 0.0 and -0.0 are equal keys, not equal JSON).
_MD_PARTS: dict = {}
_PLAIN_JSON = frozenset((str, int, bool, type(None)))


#: uid -> login name from the password database (getpass.getuser()'s last resort, an NSS
#: lookup that reads /etc/passwd: about 10 us per audited open).
_LOGIN_NAMES: dict = {}
_LOGIN_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")  # getpass.getuser()'s order


def _default_user() -> str:
    """``getpass.getuser()`` (a fallback where there is no login name), with the password
    database's answer kept per uid: the environment is still read at every call, as
    getpass reads it first."""
    uid = None
    if hasattr(os, "getuid"):
        environ = os.environ
        if not any(environ.get(name) for name in _LOGIN_VARIABLES):
            uid = os.getuid()
            name = _LOGIN_NAMES.get(uid)
            if name is not None:
                return name
    try:
        name = getpass.getuser()
    except (ImportError, KeyError, OSError):  # no login name in some containers
        name = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    if uid is not None:
        if len(_LOGIN_NAMES) > 16:
            _LOGIN_NAMES.clear()
        _LOGIN_NAMES[uid] = name
    return name


class AuditSession(AuditAPI):
    """The audit side of one connection: capture, pending events, and the public API.

    Reached as ``conn.audit``. Created by :func:`attach_audit`.
    """

    #: Also a class attribute: the rollback hook reads it, and may run on a session whose
    #: __init__ did not get that far (a connection collected half-built).
    _doomed: Optional[str] = None

    def __init__(self, conn: Any, config: Any, user: Optional[str],
                 context: Optional[dict], *, overridden: Optional[dict] = None,
                 enforced: bool = False, lock: Any = None,
                 meta: Optional[dict] = None) -> None:
        # meta: every row of __audit_meta as attach_audit() just read it (policy.read_meta;
        # {} for a file without the table): the open's questions about the meta table are
        # answered from it instead of a query each. None: read here.
        self._conn = conn
        self._db = conn._apsw
        self._cfg = config.audit
        self._config = config
        self.table = self._cfg.table_name
        self.session_id = _new_session_id()
        self.user = user if user is not None else _default_user()
        self._context: dict[str, Any] = dict(context or {})
        # acting_as(): per thread, the (user, reason, context overrides) in force.
        self._tls = _ActorFrames()
        self._capture_params = bool(self._cfg.capture_parameters)
        # execute()'s hot path: not when each event carries parameters or row values.
        self._hot_allowed = not self._capture_params and not self._cfg.capture_row_values
        self._redaction_key: Optional[bytes] = None
        self._md_parts: Optional[tuple] = None
        self._class_cache: dict[str, _Classification] = {}
        self._wanted_ops: dict[str, bool] = {}
        self._sql_info: dict[str, tuple] = {}  # sql -> (wrap in autocommit, can_cache)
        self._actions: list = []
        self._depth = 0  # audited statements running now on this connection (_nested)
        # acting_as() frames open now, on any thread (changed under the lock): while there
        # is none, execute()'s hot path need not read this thread's frame (a thread-local).
        self._acting = 0
        self._nested_changes = 0  # rows changed by nested statements (_nested), ever
        self._many = 0  # executemany() is drawing its parameters (see _no_tx_end)
        # Our own statements: the authorizer lets them through, on the thread that runs
        # them only (another thread sharing the connection is never trusted).
        self._writing = False
        self._writer_thread = 0
        self._vacuuming = False  # VACUUM's own copy (schema "vacuum_*") is trusted
        self._vacuum_denied: Optional[str] = None
        # One connection used from several threads: one audit session at a time, so no
        # event, denial or row is lost and no check fails open. A connection threads share
        # passes its own lock (an RLock), which orders its every call, this session's too.
        self._lock = lock if lock is not None else threading.RLock()
        self.shared_by_threads = lock is not None  # lazy reads take the lock row by row
        # Events written in the open transaction: rewritten as failed attempts if it rolls
        # back. _savepoints: (name, len(_pending_tx)) for ROLLBACK TO.
        self._pending_tx: list[EventFields] = []
        # Why the open transaction may not commit (its audit write failed and the
        # ROLLBACK after it failed too), or None; a commit hook enforces it meanwhile.
        self._doomed: Optional[str] = None
        self._unstored = 0  # the last _unstored events of _pending_tx are not stored yet
        self._savepoints: list[tuple[str, int]] = []
        self._deferred: list[EventFields] = []  # failures, written after the transaction
        self._select_buffer: list[EventFields] = []
        self._row_values: list = []
        self._rolled_back = False
        self._closed = False
        self._denied: Optional[str] = None
        self._pending_begin: Optional[EventFields] = None
        self._just_begun = False  # the DB-API issued BEGIN for the statement now running
        self._prepared = False
        #: Rows heliosdb's own statements changed on this connection (the audit table and
        #: its meta rows); ``total_changes()`` counts them too.
        self.own_changes = conn._apsw.total_changes()
        self._protected = frozenset((self.table.lower(), store.META_TABLE.lower()))
        _defensive(self._db)
        #: A read-only connection (``mode=ro``, read-only media) cannot write events: it
        #: writes none (no LOGIN), and refuses the statements its policy would record.
        self.readonly = bool(self._db.readonly("main"))
        self._foreign: list = []
        with self._internal():
            if meta is None:
                meta = read_meta(self._db) or {}
            rows = schema_rows(self._db)  # one read of the schema for all three checks
            self._check_neighbourhood(self._refresh_protected(rows, meta), rows)
            self._check_log_present(rows, meta)
            if not self.readonly and not self._foreign:
                # (creates nothing _protected does not already name: this table, the meta)
                if store.ensure_schema(self._db, self.table, meta=meta):
                    meta = None  # it wrote: what was read before is not the file now
                self._record_config_change(meta=meta)
                self._point_policy(meta)
        conn._set_internal_authorizer(self._authorize)
        self._db.set_rollback_hook(self._on_rollback)
        if self._cfg.capture_row_values:
            self._db.preupdate_hook(self._on_preupdate)
        if not self.readonly and not self._foreign and self._cfg.auto_purge:
            self._auto_purge(meta)
        if self.readonly or self._foreign:
            pass  # nothing can be written (or a foreign trigger could swallow it)
        elif overridden or enforced:
            # The first event of the session says that the file's policy, not the caller's
            # config, decides what is recorded (written even when log_auth is off).
            details = {"policy": "enforced from the database",
                       "requested_audit": not enforced}
            if overridden:
                details["overridden"] = overridden
            self._write_now([self._event("LOGIN", target=None, query=None,
                                         details=details)])
        elif self._cfg.log_auth:
            self._write_now([self._event("LOGIN", target=None, query=None)])

    #: Whether the first connection to a log records the initial config as an
    #: AUDIT_CONFIG_CHANGE event. Off for now: the suites list the exact events of fresh
    #: logs (test_audit_capture, test_audit_retention, test_reliability_concurrency). The
    #: first config is stored in ``__audit_meta`` either way, so every later change is
    #: recorded, naming the changed keys.
    record_initial_config = False

    def _record_config_change(self, extra: Optional[dict] = None, *,
                              meta: Optional[dict] = None) -> None:
        """AUDIT_CONFIG_CHANGE when the audit-relevant config (``name``, ``[audit]``,
        ``[encryption]``: no secrets, key sources are paths or variable names) differs
        from the one last recorded in ``__audit_meta`` (``config_hash``, ``config``), or
        was never recorded (see :attr:`record_initial_config`). The event and the meta
        update commit together, under BEGIN IMMEDIATE with the hash re-read inside:
        concurrent connects record a change once. Called inside ``_internal()``. ``meta``:
        the meta rows as the open read them (else ``config_hash`` is read here)."""
        digest = _config_digest(self._config)
        db, table = self._db, self.table
        if (store.get_meta(db, table, "config_hash") if meta is None
                else meta.get((table, "config_hash"))) == digest:
            return  # the common case: no write lock taken

        def work(c: Any) -> None:
            old_hash = store.get_meta(c, table, "config_hash")
            if old_hash == digest:
                return  # another connection recorded it meanwhile
            cur = _recorded_config(self._config)
            text = canonical_json(cur)  # (its SHA-256 is digest: the config is immutable)
            details: dict[str, Any] = {"preset": cur["name"], "hash": digest,
                                       "previous_hash": old_hash}
            old_text = store.get_meta(c, table, "config")
            try:
                old = json.loads(old_text) if isinstance(old_text, str) else None
            except ValueError:
                old = None
            if isinstance(old, dict):
                details["previous_preset"] = old.get("name")
                details["changed"] = _config_changes(old, cur)
            else:
                details["initial"] = True
                details["config"] = cur
            if extra:
                details.update(extra)
            if old_hash is not None or self.record_initial_config:
                store.append(c, table, [self._event("AUDIT_CONFIG_CHANGE", target=table,
                                                    query=None, details=details)],
                             max_query_length=self._cfg.max_query_length)
            store.set_meta(c, table, "config_hash", digest)
            store.set_meta(c, table, "config", text)

        store._run(db, work)

    @_locked
    def change_policy(self, config: Any, *, reason: str) -> None:
        """Change the audit policy stored in the database: the one explicit, audited way
        to relax it, switch capture off, or move the log to another ``table_name``.

        ``config`` is what ``connect(config=...)`` accepts. The change is recorded as an
        ``AUDIT_CONFIG_CHANGE`` event (with ``reason`` and the relaxed keys) in the log in
        force, then stored; later connections run under it. A policy with mandatory
        checksums cannot be relaxed at all. Must run outside a transaction.
        """
        from ..config import load_config
        from .policy import relaxations

        if not isinstance(reason, str) or not reason.strip():
            raise ProgrammingError("change_policy() needs a reason (a non-empty string): "
                                   "it is recorded with the change")
        if not self._db.get_autocommit():
            raise ProgrammingError("change_policy() must run outside a transaction: commit "
                                   "or roll back first")
        new = load_config(config)
        relaxed = relaxations(self._config, new)
        if relaxed and self._cfg.checksums_mandatory:
            raise ProgrammingError(
                f"the audit policy of this database ({self._config.name!r}) has mandatory "
                f"checksums and cannot be relaxed ({', '.join(relaxed)})")
        extra = {"explicit": True, "reason": reason, "relaxed": relaxed}
        self.flush()
        old_table = self.table
        if not new.audit.enabled:
            # Record the switch-off in the log in force, then stop capture on this
            # connection; the log stays protected (guard_authorizer).
            with self._internal():
                self._store_policy(new, extra, old_table)
            self._closed = True
            conn = self._conn
            conn._audit = None
            conn._config = new
            conn._set_internal_authorizer(guard_authorizer(sorted(self._protected)))
            self._db.set_rollback_hook(None)
            if self._cfg.capture_row_values:
                self._db.preupdate_hook(None)
            return
        with self._internal():
            self._store_policy(new, extra, old_table)
            if new.audit.table_name != old_table:
                store.ensure_schema(self._db, new.audit.table_name)
        self._config = new
        self._cfg = new.audit
        self.table = new.audit.table_name
        self._capture_params = bool(self._cfg.capture_parameters)
        self._hot_allowed = not self._capture_params and not self._cfg.capture_row_values
        self._wanted_ops = {}
        self._md_parts = None
        self._sql_info = {}
        self._conn._config = new
        with self._internal():
            self._record_config_change()
            self._point_policy()
            self._refresh_protected()
        if self._cfg.capture_row_values:
            self._db.preupdate_hook(self._on_preupdate)

    # -- write and read paths outside SQL (called by the DB-API) ------------------------
    @_locked
    def record_read(self, target: Optional[str], query: str) -> None:
        """A read outside SQL (``serialize()``, a blob read, a backup from this database):
        a SELECT event when reads are logged. Called *before* the read, so that a
        read-only connection whose policy logs reads refuses it."""
        if not self._wanted("SELECT"):
            return
        self._buffer_select(self._event("SELECT", target=target, query=query))

    @_locked
    def before_blob_write(self, table: str, column: str, row: int) -> None:
        """Called before an incremental blob write: refuse it when the policy requires a
        reason and none is in force. The authorizer never sees a blob write, so without
        this check require_reason stopped ``UPDATE t SET b = ...`` but let the same change
        through ``blobopen(...).write(...)``; refusing after the write would leave the
        change in the transaction without its event."""
        if self._cfg.require_reason and not self._reason_in_force():
            from ..errors import ReasonRequiredError

            err = f"not authorized: {_REASON_REQUIRED}"
            # The denied attempt is on record, as a denied UPDATE is (after the
            # transaction, whichever way it ends).
            ev = self._event("UPDATE", target=table,
                             query=f"blob write: {table}.{column} rowid {row}",
                             affected_rows=0, success=False, error=err,
                             details={"denied": True})
            if self._db.get_autocommit():
                self._write_or_defer([ev])
            else:
                self._deferred.append(ev)
            raise ReasonRequiredError(err)

    @_locked
    def record_blob_write(self, table: str, column: str, row: int, offset: int,
                          length: int) -> None:
        """An incremental blob write (``Blob.write``): an UPDATE event of the open
        transaction, which the DB-API opened at ``blobopen`` if none was."""
        if self.readonly:
            self._refuse_readonly("blob writes")
        if not self._wanted("UPDATE"):
            return
        ev = self._event("UPDATE", target=table,
                         query=f"blob write: {table}.{column} rowid {row}",
                         affected_rows=1,
                         details={"blob": {"column": column, "rowid": row,
                                           "offset": offset, "length": length}})
        self._record_change(ev, wrapped=False)

    @_locked
    def before_restore(self) -> Any:
        """Before a backup overwrites this database (``restore=True``): store what is
        pending and return the head of the chain, to be named by the RESTORE event."""
        if not self._db.get_autocommit():
            raise ProgrammingError("a restore must run outside a transaction: commit or "
                                   "roll back first")
        if self.readonly:
            self._refuse_readonly("restores")
        self.flush()
        with self._internal():
            return store.head(self._db, self.table)

    @_locked
    def after_restore(self, previous: Any, source: str) -> None:
        """After a backup replaced this database: the log is the source's now (or none);
        make sure it exists, protect every audit table it holds, and record RESTORE
        naming the head the database had before."""
        with self._internal():
            store.ensure_schema(self._db, self.table)
            self._point_policy()
            self._check_neighbourhood(self._refresh_protected())
            new_head = store.head(self._db, self.table)
        self._sql_info = {}
        self._class_cache = {}
        details = {"source": source,
                   "previous_head": {"id": previous.last_id,
                                     "checksum": bytes(previous.last_checksum).hex()},
                   "restored_head": {"id": new_head.last_id,
                                     "checksum": bytes(new_head.last_checksum).hex()}}
        self._write_now([self._event("RESTORE", target=self.table, query=None,
                                     details=details)])

    # -- bound parameters (capture_parameters) -----------------------------------------
    def keyed_hash(self, value: Any) -> Optional[str]:
        """The token a redacted value is recorded as: ``hmac:`` + 32 hex digits of
        HMAC-SHA256 under this log's redaction key (random, kept in ``__audit_meta``, as
        secret as the database). Equal values give equal tokens, so lookups by value work
        (``conn.audit.keyed_hash("P12345")``) without the value being stored."""
        import hashlib
        import hmac

        if value is None:
            return None
        key = self._redaction_key
        if key is None:
            key = self._redaction_key = self._load_redaction_key()
        if isinstance(value, bool):
            data = b"i:" + str(int(value)).encode()
        elif isinstance(value, int):
            data = b"i:" + str(value).encode()
        elif isinstance(value, float):
            data = b"f:" + repr(value).encode()
        elif isinstance(value, str):
            data = b"s:" + value.encode("utf-8", "surrogatepass")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = b"b:" + bytes(value)
        else:
            data = b"r:" + repr(value).encode()
        return "hmac:" + hmac.new(key, data, hashlib.sha256).hexdigest()[:32]

    def _load_redaction_key(self) -> bytes:
        with self._internal():
            stored = store.get_meta(self._db, self.table, "redaction_key")
            if not isinstance(stored, str) or len(stored) != 64:
                if self.readonly:
                    self._refuse_readonly("redacted parameters")
                stored = os.urandom(32).hex()
                store.set_meta(self._db, self.table, "redaction_key", stored)
        return bytes.fromhex(stored)

    def _params_record(self, sql: str, params: Any, targets: Any) -> Any:
        """The bound values as recorded: a list (positional) or a dict (named), each value
        replaced by :meth:`keyed_hash` where ``redact_tables`` / ``redact_columns`` say."""
        if params is None:
            return None
        cfg = self._cfg
        tables = {t.lower() for t in cfg.redact_tables}
        columns = {c.lower() for c in cfg.redact_columns}
        every = "*" in tables or any(
            t.split(".")[-1].lower() in tables for t in (targets or ()))
        cols: Any = None
        mentioned = False
        if columns and not every:
            cols = parameter_columns(sql)
            low = sql.lower()
            mentioned = any(re.search(r"(?<![a-z0-9_])" + re.escape(c) + r"(?![a-z0-9_])", low)
                            for c in columns)

        def shown(v: Any, col: Optional[str]) -> Any:
            if v is None:
                return None
            redact = every or (bool(columns) and (
                col.lower() in columns if col is not None else mentioned))
            if redact:
                return self.keyed_hash(v)
            if isinstance(v, (bytes, bytearray, memoryview)):
                return {"$base64": base64.b64encode(bytes(v)).decode()}
            return v

        if isinstance(params, dict):
            return {k: shown(v, (cols or {}).get(":" + k) if cols else None)
                    for k, v in params.items()}
        seq = list(params)
        return [shown(v, cols.get(i) if cols else None) for i, v in enumerate(seq)]

    def _store_policy(self, new: Any, extra: dict, table: str) -> None:
        """AUDIT_CONFIG_CHANGE for ``new`` in ``table``'s log, and ``new`` stored as its
        config (inside ``_internal()``)."""
        saved = self._config
        self._config = new
        try:
            self._record_config_change(extra)
        finally:
            self._config = saved

    # -- plumbing -------------------------------------------------------------------
    class _InternalGuard:
        """``with session._internal():`` runs heliosdb's own statements: the authorizer lets
        them through, and what they change is kept out of what the user sees
        (``last_insert_rowid()``; ``own_changes`` for ``total_changes``). Nests."""

        __slots__ = ("s", "rowid", "changes", "outer")

        def __init__(self, session: "AuditSession") -> None:
            self.s = session

        def __enter__(self) -> None:
            s = self.s
            s._lock.acquire()  # released in __exit__: internal work is serialized too
            self.outer = not s._writing
            if self.outer:
                s._writing = True
                s._writer_thread = threading.get_ident()
                db = s._db
                self.rowid = db.last_insert_rowid()
                self.changes = db.total_changes()

        def __exit__(self, *exc: Any) -> None:
            s = self.s
            try:
                if not self.outer:
                    return
                s._writing = False
                s._writer_thread = 0
                try:
                    db = s._db
                    s.own_changes += db.total_changes() - self.changes
                    db.set_last_insert_rowid(self.rowid)
                except apsw.Error:  # noqa: BLE001 - connection closing
                    pass
            finally:
                s._lock.release()

    def _internal(self) -> "_InternalGuard":
        return AuditSession._InternalGuard(self)

    def trusted_now(self) -> bool:
        """Whether the statement being authorized is heliosdb's own audit write, on the
        thread that runs it (the DB-API's authorizer asks, to skip the user's)."""
        return self._writing and self._writer_thread == threading.get_ident()

    def _authorize(self, code: int, a1: Any, a2: Any, dbname: Any, trigger: Any) -> int:
        if self._writing and self._writer_thread == threading.get_ident():
            return apsw.SQLITE_OK
        if self._vacuuming:
            # VACUUM's own copy writes into its temporary schema "vacuum_<hex>"; anything
            # else run meanwhile (a user function of VACUUM INTO f()) is user SQL.
            if isinstance(dbname, str) and dbname.startswith("vacuum_"):
                return apsw.SQLITE_OK
        else:
            self._actions.append((code, a1, a2, dbname))
        if self._foreign:
            reason = self._foreign_refusal(code, a1)
            if reason is None and code in (apsw.SQLITE_DROP_TRIGGER,
                                           apsw.SQLITE_DROP_TEMP_TRIGGER,
                                           apsw.SQLITE_DROP_INDEX,
                                           apsw.SQLITE_DROP_TEMP_INDEX):
                return apsw.SQLITE_OK  # a foreign object on the log: its removal
        else:
            reason = None
        if reason is None:
            reason = deny_reason(code, a1, a2, self._protected)
        if reason is None and self._cfg.require_reason and code in _CHANGES \
                and not (isinstance(a1, str) and a1.lower().startswith("sqlite_")) \
                and not self._reason_in_force():
            reason = _REASON_REQUIRED
        if reason is not None:
            self._denied = reason
            if self._vacuuming:
                self._vacuum_denied = reason
            return apsw.SQLITE_DENY
        return apsw.SQLITE_OK

    def protects(self, table: str) -> bool:
        """Whether ``table`` is one of the audit tables this session keeps append-only."""
        return str(table).lower() in self._protected

    def _refresh_protected(self, rows: Optional[dict] = None,
                           meta: Optional[dict] = None) -> list[str]:
        """Protect every audit table the file holds, not only this session's. ``rows``:
        the schema as neighbourhood.schema_rows() just read it (else it is read here);
        ``meta``: the meta rows as policy.read_meta() just read them (else read here)."""
        names = {self.table.lower(), store.META_TABLE.lower()}
        tables = find_audit_tables(self._db, rows=rows, meta=meta)
        names.update(t.lower() for t in tables)
        self._protected = frozenset(names)
        return tables

    def _point_policy(self, meta: Optional[dict] = None) -> None:
        """Record this session's table as the one whose config is the policy in force.
        ``meta``: the meta rows as the open read them (else the pointer is read here)."""
        pointed = store.get_meta(self._db, POLICY_ROW[0], POLICY_ROW[1]) if meta is None \
            else meta.get(POLICY_ROW)
        if pointed != self.table:
            store.set_meta(self._db, POLICY_ROW[0], POLICY_ROW[1], self.table)

    def _check_neighbourhood(self, audit_tables: Optional[list[str]] = None,
                             rows: Optional[dict] = None) -> None:
        """Triggers, views and indexes on (or writing to) an audit table that heliosdb
        did not create: while any is there, this connection refuses every statement but
        the DROP that removes it (recorded like any DROP). ``audit_tables``: what
        :meth:`_refresh_protected` just found (else the file is scanned again); ``rows``:
        the schema it read them from."""
        self._foreign = [(f.type, f.name, f.table) for f in find_foreign_schema(
            self._db, sorted(self._protected - {store.META_TABLE.lower()}),
            audit_tables=audit_tables, rows=rows)]

    def _reason_in_force(self) -> bool:
        """A reason for the change: this thread's acting_as() frame, else the context."""
        top = self._tls.top
        if top is not None and top[1]:
            return True
        return bool(self._context.get("reason"))

    def _recheck_neighbourhood(self) -> None:
        """:meth:`_check_neighbourhood` on a path that is already reporting an error (or
        has just run a statement): if the schema cannot be read now (the I/O error being
        reported), keep what is known rather than replace the error; the next connection
        checks again, fail-closed."""
        from ..errors import DatabaseError

        try:
            with self._internal():
                self._check_neighbourhood()
        except (DatabaseError, apsw.Error):
            pass

    def _foreign_refusal(self, code: int, a1: Any) -> Optional[str]:
        names = {f[1].lower(): f for f in self._foreign}
        if code in (apsw.SQLITE_DROP_TRIGGER, apsw.SQLITE_DROP_TEMP_TRIGGER,
                    apsw.SQLITE_DROP_VIEW, apsw.SQLITE_DROP_TEMP_VIEW,
                    apsw.SQLITE_DROP_INDEX, apsw.SQLITE_DROP_TEMP_INDEX) \
                and a1 and a1.lower() in names:
            return None
        if code in (apsw.SQLITE_DELETE, apsw.SQLITE_READ, apsw.SQLITE_UPDATE) and a1 \
                and a1.lower() in ("sqlite_master", "sqlite_schema", "sqlite_temp_master",
                                   "sqlite_temp_schema"):
            return None  # what a DROP does to the schema table
        if code in (apsw.SQLITE_FUNCTION, apsw.SQLITE_SELECT, apsw.SQLITE_TRANSACTION,
                    apsw.SQLITE_SAVEPOINT):
            return None
        kind, name, _ = self._foreign[0]
        return (f"the {kind} {name} was not created by heliosdb and touches the audit log: "
                f"remove it first (DROP {kind.upper()} {name})")

    #: auto_purge runs at most once per this many microseconds (a day).
    AUTO_PURGE_INTERVAL_US = 86_400 * 1_000_000

    def _auto_purge(self, meta: Optional[dict] = None) -> None:
        """``auto_purge``: at most once a day, at connect, purge what retention says is due
        into the archive next to the database. Never under a legal hold (skipped, not
        refused: nobody asked for this purge); an in-memory database has nowhere to
        archive and is skipped. ``meta``: the meta rows as the open read them (else the
        time of the last purge is read here; a stale one only runs the check again)."""
        if self._db_path() is None:
            return
        now = retention._clock_us()  # the clock purge() measures retention with
        if meta is not None:
            last = meta.get((self.table, "auto_purge_us"))
        else:
            with self._internal():
                last = store.get_meta(self._db, self.table, "auto_purge_us")
        if isinstance(last, int) and 0 <= now - last < self.AUTO_PURGE_INTERVAL_US:
            return
        if retention.active_holds(self):
            return
        due = retention.purge(self, dry_run=True)
        with self._internal():
            store.set_meta(self._db, self.table, "auto_purge_us", now)
        if due.purged:
            retention.purge(self)

    def _check_log_present(self, rows: Optional[dict] = None,
                           meta: Optional[dict] = None) -> None:
        """A log that ``__audit_meta`` records must still be there: never start a fresh,
        empty chain in its place (it would verify, and hide that the log was dropped). A
        read-only connection cannot create a new one either. ``rows``: the schema as
        neighbourhood.schema_rows() just read it, ``meta``: the meta rows as
        policy.read_meta() did (else each is asked here)."""
        if rows is not None:
            # main's sqlite_schema, the name compared as `name = ?` does (exactly)
            found = any(typ == "table" and name == self.table
                        for typ, name, _tbl, _sql in rows.get("main", ()))
        else:
            found = self._db.execute("SELECT count(*) FROM sqlite_schema WHERE type = "
                                     "'table' AND name = ?", (self.table,)).fetchall()[0][0]
        if found:
            return
        recorded = store.get_meta(self._db, self.table, "database_id") if meta is None \
            else meta.get((self.table, "database_id"))
        if recorded is not None:
            raise AuditIntegrityError(
                f"the audit log {self.table} that this database records in "
                f"{store.META_TABLE} is missing: it was dropped outside heliosdb. Restore the "
                "database from a backup; heliosdb will not start a new, empty log in its place")
        if self.readonly:
            from ..errors import OperationalError

            raise OperationalError(
                f"the audit log {self.table} of this database is missing and a read-only "
                "connection cannot create it: open the database read-write")

    def _refuse_readonly(self, what: str) -> None:
        from ..errors import OperationalError

        raise OperationalError(
            f"this database's audit policy records {what}, which a read-only connection "
            "cannot write: open the database read-write")

    def _on_rollback(self) -> None:
        self._rolled_back = True
        if self._doomed is not None:
            self._doomed = None
            self._db.set_commit_hook(None, id=_DOOMED_HOOK)

    def _on_preupdate(self, update: Any) -> None:
        if self._writing:
            return
        tname = update.table_name
        if tname.lower() in self._protected:
            return
        op = update.op
        old = list(update.old) if op in ("UPDATE", "DELETE") else None
        new = list(update.new) if op in ("UPDATE", "INSERT") else None
        self._row_values.append((tname, update.rowid, old, new))

    def _mark_prepared(self, cursor: Any, sql: str, bindings: Any) -> bool:
        """Cursor exec tracer for the first statement of a DB-API transaction: it ran
        past prepare. Hands over to the connection's tracer (the DB-API's trace)."""
        cursor.exec_trace = None
        self._prepared = True
        outer = self._db.exec_trace
        if outer is not None:
            return outer(cursor, sql, bindings)
        return True

    def _info(self, sql: str) -> tuple:
        """(wrap in autocommit, may use APSW's statement cache, DML with RETURNING,
        VACUUM, store queued events first), once per SQL text.

        A text that names the audit tables never comes from the statement cache: the
        authorizer runs only when a statement is prepared, and the cache could hold the
        very same text prepared by the audit writer itself."""
        info = self._sql_info.get(sql)
        if info is None:
            low = sql.lower()
            wrap = _needs_wrap(sql)
            words = _first_words(sql)
            # With require_reason, every statement is authorized when it runs: a statement
            # cached while a reason was in force must not run without one.
            can_cache = not any(p in low for p in self._protected) \
                and not self._cfg.require_reason
            info = (wrap, can_cache, wrap and "returning" in low,
                    bool(words) and words[0] == "VACUUM",
                    not can_cache or _keyword_op(sql) in ("COMMIT", "RELEASE", "ROLLBACK_TO",
                                                          "SAVEPOINT"))
            if len(self._sql_info) > 4096:
                self._sql_info.clear()
            self._sql_info[sql] = info
        return info

    def _classification(self, sql: str) -> _Classification:
        if self._actions:
            c = _classify_actions(self._actions, sql)
            info = self._sql_info.get(sql)
            if info is not None and not info[1]:
                # Never served from APSW's statement cache (always prepared, so always
                # classified afresh): kept out of this cache, so that 2048 such texts
                # (SQL naming the log) cannot evict the classification of a cached
                # statement, which then ran with its target unrecorded.
                return c
            if len(self._class_cache) > 2048:
                self._class_cache.clear()
                # A statement APSW keeps prepared would now run unclassified (no target
                # recorded): setting the authorizer again expires every prepared
                # statement, so each is prepared, and authorized, anew.
                self._db.authorizer = self._db.authorizer
            self._class_cache[sql] = c
            return c
        c = self._class_cache.get(sql)
        if c is None:
            c = _classify_by_keyword(sql)
        return c

    def _wanted(self, op: str) -> bool:
        w = self._wanted_ops.get(op)
        if w is None:
            w = self._wanted_ops[op] = self._wanted_uncached(op)
        return w

    def _wanted_uncached(self, op: str) -> bool:
        cat = _CATEGORY.get(op)
        cfg = self._cfg
        if cat == "ddl":
            return cfg.log_ddl
        if cat == "dml":
            return cfg.log_dml
        if cat == "select":
            return cfg.log_select
        if cat == "tx":
            return cfg.log_transactions
        # PRAGMA, ATTACH, DETACH, ANALYZE, VACUUM ...: administrative, logged with DDL.
        return cfg.log_ddl

    def _metadata(self, elapsed_ns: Optional[int], ctx: Optional[dict] = None) -> dict:
        cm = self._cfg.capture_metadata
        if ctx is None:
            ctx = self._context
        md: dict[str, Any] = {}
        if cm.client_ip and "client_ip" in ctx:
            md["client_ip"] = ctx["client_ip"]
        if cm.application_name and "application_name" in ctx:
            md["application_name"] = ctx["application_name"]
        if cm.database_name:
            md["database_name"] = os.path.basename(self._conn._database) or ":memory:"
        if cm.execution_time and elapsed_ns is not None:
            md["execution_time_ms"] = (elapsed_ns + 500) // 1000 / 1000  # ms, to the us
        if cm.custom_fields:
            names = cm.custom_field_names
            for k, v in ctx.items():
                if k not in ("client_ip", "application_name", "reason") \
                        and (not names or k in names):
                    md[k] = v
        return md

    def _metadata_parts(self) -> tuple:
        """(canonical JSON of the constant metadata or None, prefix, suffix, texts,
        reason): the metadata of an event with an execution time is ``prefix + repr(ms) +
        suffix``, already in canonical form (sorted keys), so that no JSON is encoded per
        statement. Rebuilt when the context changes (``set_context``), which empties
        ``texts``, the metadata of the hot path's events by their time in microseconds
        (see :meth:`_hot_metadata`); ``reason`` is the context's. ``prefix`` is None
        when that shortcut does not apply.

        The first three are kept per config object, database name and context
        (``_MD_PARTS``) when every context key is a str and every value a str, an int, a
        bool or None, typed in the key (``1`` and ``True`` are equal keys but not equal
        JSON): every connection of a process builds the same parts, three canonical JSON
        encodings at its first event (LOGIN). ``texts`` is the session's own."""
        parts = self._md_parts
        if parts is None:
            ctx = self._context
            if all(k.__class__ is str and v.__class__ in _PLAIN_JSON for k, v in ctx.items()):
                base = per_config(_MD_PARTS, self._config, (
                    self._conn._database, tuple([(k, v.__class__, v) for k, v in ctx.items()])),
                    self._build_metadata_parts)
            else:
                base = self._build_metadata_parts()
            parts = base + ({}, ctx.get("reason"))
            self._md_parts = parts
        return parts

    def _build_metadata_parts(self) -> tuple:
        const = self._metadata(None)
        whole = canonical_json(const) if const else None
        key = "execution_time_ms"
        if key in const:  # a custom field of that name: no shortcut
            return (whole, None, None)
        before = canonical_json({k: v for k, v in const.items() if k < key})[1:-1]
        after = canonical_json({k: v for k, v in const.items() if k > key})[1:-1]
        return (whole, "{" + before + ("," if before else "") + f'"{key}":',
                ("," + after if after else "") + "}")

    def _timed_metadata(self, elapsed_ns: Optional[int]) -> Any:
        """The metadata of an event without details: canonical JSON text built from the
        cached parts (see :meth:`_metadata_parts`), its ``execution_time_ms`` to the
        microsecond; a dict when no shortcut applies; None when there is none."""
        whole, prefix, suffix, _texts, _reason = self._md_parts or self._metadata_parts()
        if elapsed_ns is None or not self._cfg.capture_metadata.execution_time:
            return whole
        if prefix is not None:
            return prefix + repr((elapsed_ns + 500) // 1000 / 1000) + suffix
        return self._metadata(elapsed_ns)

    def _hot_metadata(self, us: int, elapsed_ns: int) -> Any:
        """``_timed_metadata(elapsed_ns) or None``, the metadata of a hot path event
        (:meth:`execute`) for a statement that took ``us`` microseconds (``elapsed_ns``
        rounded as ``execution_time_ms`` is), kept for the next statement that takes as
        long when it is text (the metadata depends on ``us`` only): the hot path reads
        it from ``_md_parts[3]`` instead of building it, ``repr(float)`` included."""
        md = self._timed_metadata(elapsed_ns) or None
        if md is None or md.__class__ is str:
            texts = self._md_parts[3]
            if len(texts) >= _MD_TEXTS:
                texts.clear()
            texts[us] = md
        return md

    def _stmt_event(self, operation: str, target: Optional[str], query: Optional[str],
                    affected_rows: Optional[int], elapsed_ns: int) -> EventFields:
        """:meth:`_event` for a successful statement without details or row values (the
        hot path): same fields, built positionally."""
        maxlen = self._cfg.max_query_length
        if query is not None and maxlen and len(query) > maxlen:
            query = query[:maxlen]
        if self._tls.top is not None:  # inside acting_as(): the general path
            return self._event(operation, target=target, query=query,
                               affected_rows=affected_rows, elapsed_ns=elapsed_ns)
        md = self._timed_metadata(elapsed_ns)
        return _new_event(EventFields, (
            operation, target, self.user, self.session_id, query, affected_rows, 1, None,
            md or None, None, None, self._context.get("reason")))

    def _event(self, operation: str, *, target: Optional[str], query: Optional[str],
               affected_rows: Optional[int] = None, success: bool = True,
               error: Optional[str] = None, elapsed_ns: Optional[int] = None,
               old_values: Any = None, new_values: Any = None,
               details: Optional[dict] = None, reason: Optional[str] = None,
               params: Any = None) -> EventFields:
        maxlen = self._cfg.max_query_length
        if query is not None and maxlen and len(query) > maxlen:
            query = query[:maxlen]
        top = self._tls.top
        user = self.user
        ctx = None
        if top is not None:  # acting_as(): this thread's actor, reason and context
            user, frame_reason, overrides = top
            if reason is None:
                reason = frame_reason
            if overrides:
                ctx = {**self._context, **overrides}
        if details or ctx is not None or params is not None:
            md: Any = self._metadata(elapsed_ns, ctx)
            if details:
                md["details"] = details
            if params is not None:
                md["params"] = params
        else:
            md = self._timed_metadata(elapsed_ns)
        return EventFields(
            operation=operation, target=target, user=user, session_id=self.session_id,
            query=query, affected_rows=affected_rows, success=1 if success else 0,
            error=error, metadata=md or None, old_values=old_values, new_values=new_values,
            reason=reason if reason is not None else self._context.get("reason"))

    def _store(self, events: list[EventFields]) -> None:
        with self._internal():
            store.append(self._db, self.table, events,
                         max_query_length=self._cfg.max_query_length)

    def _queue(self, events: list[EventFields]) -> None:
        """Add events to the open transaction (a pending BEGIN event and buffered SELECT
        events go first). They are stored in batches, inside that transaction: before it
        commits, before a transaction-control statement or a statement naming the audit
        tables, when the log is read through ``conn.audit``, and every ``_TX_BATCH``
        events. One append per batch instead of per statement halves the cost of an
        audited statement; the change and its event still commit together or not at all.
        """
        if self._pending_begin is not None or self._select_buffer:
            head = [self._pending_begin] if self._pending_begin is not None else []
            events = head + self._select_buffer + list(events)
            self._pending_begin = None
            self._select_buffer = []
        self._pending_tx.extend(events)
        self._unstored += len(events)
        if self._unstored >= _TX_BATCH:
            self._flush_tx()

    def _flush_tx(self) -> None:
        """Store the queued events of the open transaction (in it)."""
        n = self._unstored
        if n:
            batch = self._pending_tx[-n:]
            self._unstored = 0
            try:
                self._store(batch)
            except BaseException:
                self._unstored = n
                raise

    def _append(self, events: list[EventFields]) -> None:
        """Append inside the open transaction, now (queued events go first); the events
        are remembered until the transaction ends."""
        self._queue(events)
        self._flush_tx()

    def _write_now(self, events: list[EventFields]) -> None:
        """Write events in a transaction of their own (nothing else may be open).

        Failures kept from earlier (their own write failed) and buffered SELECT events go
        first: nothing is open, so they can go now. If this write fails, those stay kept;
        ``events`` are the caller's to handle."""
        if self.readonly:
            # Nothing can be written (the statement that failed could not have changed
            # anything either); application events are refused in log().
            self._deferred = []
            return
        carried = self._deferred + self._select_buffer if (
            self._deferred or self._select_buffer) else []
        self._deferred = []
        self._select_buffer = []
        batch = carried + list(events) if carried else events
        if not batch:
            return
        db = self._db
        try:
            with self._internal():
                db.execute("BEGIN IMMEDIATE")
                try:
                    store.append(db, self.table, batch,
                                 max_query_length=self._cfg.max_query_length)
                    # Inside the try: a COMMIT refused with SQLITE_BUSY (a reader of
                    # another connection) left this transaction open, and the user's next
                    # autocommit statements ran in it, to be rolled back at close.
                    db.execute("COMMIT")
                except BaseException:
                    if not db.get_autocommit():
                        db.execute("ROLLBACK")
                    raise
        except BaseException as exc:
            self._deferred[:0] = carried
            if isinstance(exc, AuditIntegrityError):
                self._recheck_neighbourhood()
            if isinstance(exc, apsw.Error):
                raise translate(exc) from exc
            raise
        finally:
            self._rolled_back = False

    def _write_or_defer(self, events: list[EventFields]) -> None:
        """Write failure records now; if even that fails (the database is locked, the disk
        is full), keep them for the next write rather than hide the user's error."""
        try:
            self._write_now(events)
        except _WRITE_ERRORS:
            self._deferred.extend(events)

    def _failed_copies(self, events: list[EventFields], reason: str) -> list[EventFields]:
        out = []
        for ev in events:
            if ev.__class__ is tuple:  # queued by execute()'s hot path: the same fields
                ev = _new_event(EventFields, ev)
            if ev.operation in _KEEP_ON_ROLLBACK:
                out.append(ev)
            elif ev.success:
                out.append(ev._replace(success=0, error=reason))
            else:
                out.append(ev._replace(error=f"{ev.error}; {reason}" if ev.error else reason))
        return out

    def _after_rollback(self, reason: str, extra: Optional[list] = None) -> None:
        """The transaction is gone: record what it tried, and deferred failures."""
        self._rolled_back = False
        self._just_begun = False
        events = self._failed_copies(self._pending_tx, reason)
        if self._pending_begin is not None:
            events.insert(0, self._pending_begin)  # nothing was written: BEGIN goes now
            self._pending_begin = None
        events += self._select_buffer
        self._select_buffer = []
        self._pending_tx = []
        self._unstored = 0
        self._savepoints = []
        self._row_values = []
        events.extend(self._deferred)
        self._deferred = []
        if extra:
            events.extend(extra)
        if self._cfg.log_transactions:
            events.append(self._event("ROLLBACK", target=None, query=None,
                                      details={"reason": reason}))
        if self._db.get_autocommit():
            self._write_or_defer(events)
        else:  # a new transaction already began (cannot happen via the DB-API): keep them
            self._deferred = events

    def _after_commit(self, query: Optional[str]) -> None:
        """A user COMMIT (or RELEASE of the outermost savepoint) ran: what was pending is
        committed; deferred failures and the COMMIT event follow in a write of their own."""
        self._pending_tx = []
        self._unstored = 0
        self._savepoints = []
        self._just_begun = False
        events = []
        if self._cfg.log_transactions and self._pending_begin is not None:
            events.append(self._pending_begin)
        self._pending_begin = None
        events += self._select_buffer + self._deferred
        self._select_buffer = []
        self._deferred = []
        if self._cfg.log_transactions:
            events.append(self._event("COMMIT", target=None, query=query))
        self._write_or_defer(events)

    def _abort_transaction(self, reason: str) -> None:
        """The audit write failed inside an open transaction: the change it was for must
        not commit without its event, so the whole transaction is rolled back."""
        db = self._db
        with self._internal():
            if not db.get_autocommit():
                try:
                    db.execute("ROLLBACK")
                except apsw.Error:
                    # Still open (an interrupt() while a cursor of the user's runs stops
                    # the ROLLBACK too): its changes have no events, so it must never
                    # commit. Until it ends, every COMMIT becomes a rollback.
                    db.set_commit_hook(_refuse_commit, id=_DOOMED_HOOK)
                    self._doomed = reason
        # The write may have failed because of a schema object planted on the log since
        # connect: from now on only its removal is accepted.
        self._recheck_neighbourhood()
        self._after_rollback(reason)

    # -- the execution paths the DB-API calls ----------------------------------------
    def execute(self, cur: apsw.Cursor, sql: str, params: Any, begin: bool = False, *,
                query: Optional[str] = None) -> Any:
        """Run one statement on the APSW cursor ``cur`` and record it (as ``query`` if
        given: the statement of a script without its surrounding white space). ``begin``:
        open the DB-API's implicit transaction first if none is open (decided under the
        lock; positional, as the DB-API passes it: a keyword costs a name match per
        call). Returns what the DB-API cursor reports of the statement: a
        :class:`StatementRun`, or on the hot path a plain tuple in its order."""
        # (acquire and release, not ``with``: a with statement looks __enter__ and
        # __exit__ up and binds them each time, about 1,000 instructions)
        lock = self._lock
        lock.acquire()
        try:
            if self._writing:
                self._refuse_reentry()
            if self._many and _keyword_op(sql) in _TX_OPS:
                self._no_tx_end(sql)
            if self._depth:
                return self._nested(self.execute, cur, sql, params, query=query,
                                    begin=begin)
            db = self._db
            autocommit = db.get_autocommit()
            if begin and autocommit:
                self._conn._begin()
                autocommit = db.get_autocommit()
            info = self._sql_info.get(sql)
            if not autocommit and info is not None and len(info) > 5 and query is None \
                    and self._hot_allowed and not self._foreign and not self._just_begun \
                    and self._unstored < _TX_BATCH - 1 and self._pending_begin is None \
                    and not self._select_buffer and not self._rolled_back \
                    and (not self._acting or self._tls.top is None):
                # The hot path: DML already classified, in an open transaction whose queue
                # takes its event (no acting_as() frame on this thread). Same event as
                # _execute and _finish record, in fewer steps; anything unusual after it
                # ran goes to _finish.
                self._depth = 1  # (it was 0: see above)
                try:
                    if self._actions:
                        self._actions = []
                    if self._denied is not None:
                        self._denied = None
                    before = db.total_changes()
                    t0 = _perf_ns()
                    try:
                        cur.execute(sql, params)
                    except BaseException as exc:  # noqa: BLE001
                        elapsed = _perf_ns() - t0
                        explained = _explain_now(db, exc)
                        self._record_failure(sql, exc, elapsed, wrapped=False, before=before,
                                             query=None, params=params)
                        if explained is not None:
                            raise explained from exc
                        self._raise(exc, sql)
                    elapsed = _perf_ns() - t0
                    if self._actions or self._rolled_back or self._row_values \
                            or db.get_autocommit():
                        # Prepared again (the schema changed: classify it again), or the
                        # transaction ended under it: the general path decides.
                        return self._finish(cur, sql, params, None, info, False, False,
                                            before, elapsed, None, None)
                    # A statement whose first word is INSERT, UPDATE, DELETE, REPLACE or
                    # WITH (hot records are made for no other: see _finish): SQLite sets
                    # changes() when it ends, to 0 when it changed nothing, so that the
                    # event's affected_rows is changes() without the total_changes()
                    # comparison _finish needs for other statements.
                    changes = db.changes()
                    op, target, q = info[5]
                    parts = self._md_parts or self._metadata_parts()
                    us = (elapsed + 500) // 1000
                    md = parts[3].get(us, _MISSING)
                    if md is _MISSING:
                        md = self._hot_metadata(us, elapsed)
                    # _stmt_event's fields, as a plain tuple (see _failed_copies): the
                    # record holds the query already cut to max_query_length.
                    self._pending_tx.append((op, target, self.user, self.session_id, q,
                                             changes, 1, None, md, None, None, parts[4]))
                    self._unstored += 1
                    return (changes, db.last_insert_rowid(), None, None)
                finally:
                    self._depth = 0
            if self._foreign:
                try:
                    return self._execute(cur, sql, params, query)
                finally:
                    self._recheck_neighbourhood()
            try:
                self._depth += 1
                return self._execute(cur, sql, params, query)
            except AuditIntegrityError:
                # The log did not take an append (a trigger planted since connect):
                # refuse everything but its removal from now on.
                self._recheck_neighbourhood()
                raise
            finally:
                self._depth -= 1
        finally:
            lock.release()

    def probe(self, run: Any) -> Any:
        """Run ``run()``, a compile-only probe of user SQL (``con(sql)``, a description or
        read-only check), with its authorizer actions and denial kept apart: probed from a
        user function while a statement runs, they were taken for that statement's own, so
        that "DELETE FROM secrets WHERE f(a)" (cached, f compiling "INSERT INTO decoy ...")
        was recorded as an INSERT into decoy."""
        with self._lock:
            saved = (self._actions, self._denied)
            self._actions = []
            try:
                return run()
            finally:
                self._actions, self._denied = saved

    def _refuse_reentry(self) -> None:
        """User code called back while heliosdb writes its own rows (a user function
        replacing a built-in the log's schema calls, e.g. strftime() of the generated
        ``timestamp`` column, runs inside the append) may not use the connection: the
        authorizer trusts every statement of this thread until the write ends, so such a
        callback could DELETE or rewrite log rows unrecorded."""
        if self._writing and self._writer_thread == threading.get_ident():
            raise ProgrammingError(
                "the connection is writing its audit log: a callback may not use it now")

    def _no_tx_end(self, what: str) -> None:
        """Refuse to end (or nest) the transaction while executemany() draws parameters:
        between two rows its statement is reset, so a COMMIT from the parameter
        generator committed the rows so far before their event was written (a crash
        then left them unrecorded; a later error recorded them as 0 rows failed), and a
        ROLLBACK left the rest to autocommit one by one."""
        raise ProgrammingError(f"{what} is refused while executemany() is running (from "
                               "its parameters): end the transaction after it")

    def _nested(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """A statement run while another one of this connection is running (a user
        function calling ``conn.execute``): it gets its own authorizer actions, denial
        and row values, and the outer statement gets its own back. Shared, the inner
        statement's actions classified the outer one: ``DELETE FROM t WHERE f(a)``, with
        f reading ``u``, was recorded against ``u`` (or as a read, unrecorded)."""
        saved = (self._actions, self._denied, self._row_values)
        self._actions, self._denied, self._row_values = [], None, []
        depth = self._depth
        self._depth = 0
        changes = self._db.total_changes()
        try:
            return method(*args, **kwargs)
        finally:
            # Not the outer statement's rows: executemany counts its own by total_changes.
            self._nested_changes += self._db.total_changes() - changes
            self._depth = depth
            self._actions, self._denied, self._row_values = saved

    def _execute(self, cur: apsw.Cursor, sql: str, params: Any,
                 query: Optional[str]) -> StatementRun:
        db = self._db
        if self._actions:
            self._actions = []
        if self._denied is not None:
            self._denied = None
        if self._row_values:
            self._row_values = []
        info = self._sql_info.get(sql)
        if info is None:
            info = self._info(sql)
        if self._unstored and info[4]:
            # COMMIT / SAVEPOINT / RELEASE / ROLLBACK TO, or SQL naming the log: queued
            # events of the transaction are stored first (a savepoint must be set after
            # the events of the work before it, so that ROLLBACK TO keeps them).
            try:
                self._flush_tx()
            except BaseException as exc:
                self._abort_transaction(f"rolled back: audit write failed: {exc}")
                if isinstance(exc, apsw.Error):
                    raise translate(exc) from exc
                raise
        autocommit = db.get_autocommit()
        wrap = autocommit and info[0]
        just_begun = self._open_statement(cur, wrap) if wrap or self._just_begun else False
        before = db.total_changes()
        t0 = _perf_ns()
        try:
            if info[3]:
                # VACUUM copies every table, the audit log included, through SQL that
                # the authorizer sees: only that copy (schema vacuum_*) is trusted.
                self._vacuuming = True
                self._vacuum_denied = None
                try:
                    cur.execute(sql, params, can_cache=False)
                finally:
                    self._vacuuming = False
                if self._vacuum_denied is not None:
                    self._denied = self._vacuum_denied
            else:
                cur.execute(sql, params, can_cache=info[1])
            rows = desc = None
            if info[2]:  # DML ... RETURNING: run it to its end (see StatementRun)
                try:
                    desc = cur.get_description()
                    rows = list(cur)
                except apsw.ExecutionCompleteError:  # it returned no row
                    desc, rows = None, []
        except BaseException as exc:  # noqa: BLE001
            elapsed = _perf_ns() - t0
            if just_begun:
                cur.exec_trace = None
            # Read the encryption layer's account of the error (a tampered page) before
            # recording the failure runs more I/O over it.
            explained = _explain_now(self._db, exc)
            self._record_failure(sql, exc, elapsed, wrapped=wrap, before=before,
                                 unprepared_begin=just_begun and not self._prepared,
                                 query=query, params=params)
            if explained is not None:
                raise explained from exc
            self._raise(exc, sql)
        return self._finish(cur, sql, params, query, info, wrap, autocommit, before,
                            _perf_ns() - t0, rows, desc if rows is not None else None)

    def _finish(self, cur: apsw.Cursor, sql: str, params: Any, query: Optional[str],
                info: tuple, wrap: bool, autocommit: bool, before: int, elapsed: int,
                rows: Optional[list], desc: Any) -> StatementRun:
        """What follows a statement that ran: classify it, record its event (or hand a
        transaction-control statement to :meth:`_on_tx_statement`)."""
        db = self._db
        if self._actions:
            c = self._classification(sql)
        else:  # reused from APSW's statement cache: classified when it was prepared
            c = self._class_cache.get(sql) or _classify_by_keyword(sql)
        op = c.operation
        wanted = self._wanted_ops.get(op)
        if wanted is None:
            wanted = self._wanted(op)
        in_tx = not db.get_autocommit()
        if rows is None and not wrap and wanted and not in_tx and op not in _TX_OPS \
                and op != "SELECT":
            # PRAGMA, VACUUM, ATTACH ... in autocommit mode: the event is written in a
            # transaction of its own, which cannot commit while this statement is active
            # (PRAGMA journal_mode returns a row): finish it first (small results).
            try:
                desc = cur.get_description()
                rows = list(cur)
            except apsw.ExecutionCompleteError:
                pass
        changes = db.changes()
        run = StatementRun(changes, db.last_insert_rowid(), rows,
                           desc if rows is not None else None)
        if query is None and (self._actions or len(info) == 5):
            # A DML statement classified from the authorizer's account (now, or when it
            # was prepared): the next runs of this text inside a transaction take the hot
            # path of execute(), with what it was classified as. Classified again (the
            # schema changed), the record is replaced, or dropped. Only a text that is a
            # DML statement by its first word (info[0]): the hot path counts its rows
            # by changes() alone (not EXPLAIN INSERT ..., which changes nothing).
            if wanted and op in _DML_OPS and rows is None and info[0] and info[1] \
                    and not (info[2] or info[3] or info[4]) \
                    and (self._actions or sql in self._class_cache):
                maxlen = self._cfg.max_query_length
                self._sql_info[sql] = info[:5] + (
                    (op, c.target, sql[:maxlen] if maxlen else sql),)
            elif len(info) > 5:
                self._sql_info[sql] = info[:5]
        if op in _TX_OPS:
            self._on_tx_statement(c, sql, was_autocommit=autocommit)
            return run
        if self._rolled_back:  # e.g. a trigger's RAISE(ROLLBACK) that did not raise
            self._after_rollback("rolled back by SQLite")
        if wanted:
            if op in _DML_OPS:
                affected = changes if db.total_changes() != before else 0
            else:
                affected = None
            if self._row_values or (self._capture_params and params):
                old, new = self._take_row_values()
                ev = self._event(op, target=c.target,
                                 query=sql if query is None else query,
                                 affected_rows=affected, elapsed_ns=elapsed,
                                 old_values=old, new_values=new,
                                 params=self._params_record(sql, params, c.targets)
                                 if self._capture_params else None)
            else:
                ev = self._stmt_event(op, c.target, sql if query is None else query,
                                      affected, elapsed)
            if op == "SELECT":
                self._buffer_select(ev)
            elif in_tx and not wrap and self._unstored < _TX_BATCH - 1 \
                    and self._pending_begin is None and not self._select_buffer:
                # The hot path of _record_change: queued in the open user transaction.
                self._pending_tx.append(ev)
                self._unstored += 1
            else:
                self._record_change(ev, wrapped=wrap)
        elif wrap:
            self._commit_wrapper()
        if op == "ATTACH":
            self._refuse_audited_attachment()
        return run

    def _refuse_audited_attachment(self) -> None:
        """After an ATTACH: a database with an audit log of its own is detached again and
        refused. Attached, its tables were written with the events in this connection's
        log (or none), never in its own: its log said nothing of the change and verified
        ok. It is opened with heliosdb.connect(), which enforces its policy."""
        with self._internal():
            refuse_audited_attachments(self._db, audited_attachments(self._db),
                                       self._abort_transaction)

    def _raise(self, exc: BaseException, sql: str) -> None:
        """Raise what the DB-API raises; a denial by the audit layer says why."""
        from ..errors import DatabaseError

        if isinstance(exc, apsw.AuthError) and self._denied:
            if self._denied is _REASON_REQUIRED:
                from ..errors import ReasonRequiredError

                err = ReasonRequiredError(f"not authorized: {self._denied}")
            else:
                err = DatabaseError(f"not authorized: {self._denied}")
            err.sqlite_errorcode = apsw.SQLITE_AUTH
            err.sqlite_errorname = "SQLITE_AUTH"
            raise err from exc
        raise_translated(exc, sql)

    def _take_row_values(self) -> tuple:
        if not self._row_values:
            return None, None
        rows = self._row_values
        self._row_values = []
        old = [{"table": t, "rowid": r, "values": o} for t, r, o, _n in rows if o is not None]
        new = [{"table": t, "rowid": r, "values": n} for t, r, _o, n in rows if n is not None]
        return (old or None), (new or None)

    def _record_change(self, ev: EventFields, *, wrapped: bool) -> None:
        db = self._db
        if not wrapped and self._pending_begin is None and not self._select_buffer \
                and not db.get_autocommit():
            # The hot path: a statement of an open user transaction (what _queue does).
            self._pending_tx.append(ev)
            self._unstored += 1
            if self._unstored < _TX_BATCH:
                return
            try:
                self._flush_tx()
            except BaseException as exc:
                self._abort_transaction(f"rolled back: audit write failed: {exc}")
                if isinstance(exc, apsw.Error):
                    raise translate(exc) from exc
                raise
            return
        if db.get_autocommit() and not wrapped:
            # A statement that cannot run in a transaction (VACUUM, ATTACH, PRAGMA ...)
            # already took effect: its event follows at once, in a transaction of its own.
            self._write_now([ev])
            return
        carried = self._deferred if wrapped else []  # our own transaction: they can go
        if carried:
            self._deferred = []
        try:
            if wrapped:
                self._append(carried + [ev] if carried else [ev])
            else:
                self._queue([ev])
        except BaseException as exc:
            self._deferred[:0] = carried
            if wrapped:
                with self._internal():
                    if not db.get_autocommit():
                        db.execute("ROLLBACK")
                self._rolled_back = False
                self._pending_tx = []
                self._unstored = 0
                fail = ev._replace(success=0, error=f"audit write failed: {exc}",
                                   affected_rows=0)
                self._write_or_defer([fail])
            else:
                self._abort_transaction(f"rolled back: audit write failed: {exc}")
            if isinstance(exc, apsw.Error):
                raise translate(exc) from exc
            raise
        if wrapped:
            self._commit_wrapper()

    def _commit_wrapper(self) -> None:
        try:
            with self._internal():
                self._db.execute("COMMIT")
        except apsw.Error as exc:
            # The change and its event are rolled back together.
            with self._internal():
                if not self._db.get_autocommit():
                    self._db.execute("ROLLBACK")
            self._after_rollback(f"rolled back: COMMIT failed: {exc}")
            raise translate(exc) from exc
        self._pending_tx = []
        self._unstored = 0
        self._rolled_back = False

    def _record_failure(self, sql: str, exc: BaseException, elapsed: int, *,
                        wrapped: bool, before: int, unprepared_begin: bool = False,
                        query: Optional[str] = None, params: Any = None) -> None:
        db = self._db
        denied = isinstance(exc, apsw.AuthError)
        try:
            c = self._classification(sql) if self._actions or sql in self._class_cache \
                else _classify_by_keyword(sql)
        except Exception:  # noqa: BLE001
            c = _Classification(_UNKNOWN, (), (), None)
        old, new = self._take_row_values()
        partial = db.total_changes() - before if not db.get_autocommit() else 0
        msg = self._denied if denied else None
        err_text = str(exc.args[0]) if getattr(exc, "args", None) else type(exc).__name__
        if msg:
            err_text = f"not authorized: {msg}"
        details = {"denied": True} if denied else None
        ev = self._event(c.operation, target=c.target, query=sql if query is None else query,
                         affected_rows=partial, success=False, error=err_text,
                         elapsed_ns=elapsed, details=details,
                         old_values=old if partial else None,
                         new_values=new if partial else None,
                         params=self._params_record(sql, params, c.targets)
                         if self._capture_params and params else None)
        if self._rolled_back:
            # SQLite rolled the whole transaction back (ON CONFLICT ROLLBACK, RAISE(ROLLBACK),
            # disk full ...): the wrapper, or the user's transaction, is gone.
            self._after_rollback(f"rolled back by SQLite: {err_text}",
                                 extra=[ev._replace(affected_rows=0, old_values=None,
                                                    new_values=None)])
            return
        if wrapped or unprepared_begin:
            interrupted: Optional[BaseException] = None
            if partial > 0:
                # Rows changed before the failure stay (INSERT OR FAIL, executemany), as
                # in sqlite3's autocommit mode: commit them with this event.
                try:
                    self._append([ev])
                    if wrapped:
                        self._commit_wrapper()
                    return
                except _WRITE_ERRORS:
                    pass  # the attempt is recorded below, without the rows
                except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt, SystemExit
                    interrupted = exc  # the transaction ends as below first, then it goes on
            # Nothing to keep: end the transaction (the wrapper's, or the one the DB-API
            # opened for a statement that never compiled, as sqlite3 opens none then).
            with self._internal():
                if not db.get_autocommit():
                    db.execute("ROLLBACK")
            self._rolled_back = False
            if unprepared_begin:
                self._pending_begin = None
            self._pending_tx = []
            self._unstored = 0
            self._write_or_defer([ev._replace(affected_rows=0, old_values=None,
                                              new_values=None)])
            if interrupted is not None:
                raise interrupted
        elif db.get_autocommit():
            self._write_or_defer([ev])
        elif partial > 0:
            # Inside a user transaction, rows changed before the failure stay in it: the
            # event goes with them (and becomes a rolled-back attempt if it rolls back).
            try:
                self._queue([ev])
            except BaseException as exc:  # noqa: BLE001 - ends the transaction, then ...
                self._abort_transaction("rolled back: audit write failed")
                if not isinstance(exc, _WRITE_ERRORS):
                    raise  # ... KeyboardInterrupt or a bug goes on; a write failure is recorded
        else:
            # Inside a user transaction: the event must outlive a later rollback, so it
            # is written after the transaction ends, whichever way it ends.
            self._deferred.append(ev)

    def _open_statement(self, cur: Any, wrap: bool) -> bool:
        """Start the transaction a statement runs in: our own BEGIN for a wrapped
        autocommit statement, or, right after the DB-API's implicit BEGIN, a tracer that
        notes when the statement got prepared. Returns whether the DB-API just began."""
        just_begun = self._just_begun
        self._just_begun = False
        if wrap:
            with self._internal():
                self._db.execute("BEGIN")
        elif just_begun:
            self._prepared = False
            cur.exec_trace = self._mark_prepared
        return just_begun

    def executemany(self, cur: apsw.Cursor, sql: str, params_iter: Iterable[Any], *,
                    begin: bool = False) -> int:
        """Run a DML statement over many parameter sets on the APSW cursor ``cur``; one
        event for the batch.

        Returns the number of rows changed by the batch (``total_changes`` also counts
        the audit rows)."""
        with self._lock:
            self._refuse_reentry()
            if self._depth:
                return self._nested(self.executemany, cur, sql, params_iter, begin=begin)
            if begin and self._db.get_autocommit():
                self._conn._begin()
            self._depth += 1
            try:
                return self._executemany(cur, sql, params_iter)
            finally:
                self._depth -= 1

    def _executemany(self, cur: apsw.Cursor, sql: str, params_iter: Iterable[Any]) -> int:
        db = self._db
        collected: Optional[list] = None
        if self._capture_params:
            collected = []
            params_iter = _collect(params_iter, collected)
        self._actions = []
        self._denied = None
        self._row_values = []
        info = self._info(sql)
        wrap = db.get_autocommit()
        just_begun = self._open_statement(cur, wrap)
        before = db.total_changes()
        nested = self._nested_changes  # a generator may run statements of its own
        own = self.own_changes  # ... or write events (conn.audit.log)
        t0 = time.perf_counter_ns()
        self._many += 1
        try:
            try:
                for _ in cur.executemany(sql, params_iter, can_cache=info[1]):
                    pass
            finally:
                self._many -= 1
        except BaseException as exc:  # noqa: BLE001
            elapsed = time.perf_counter_ns() - t0
            if just_begun:
                cur.exec_trace = None
            explained = _explain_now(self._db, exc)
            before += self._nested_changes - nested + self.own_changes - own
            self._record_failure(sql, exc, elapsed, wrapped=wrap, before=before,
                                 unprepared_begin=just_begun and not self._prepared)
            if explained is not None:
                raise explained from exc
            self._raise(exc, sql)
        elapsed = time.perf_counter_ns() - t0
        count = db.total_changes() - before - (self._nested_changes - nested) \
            - (self.own_changes - own)
        c = self._classification(sql)
        if self._wanted(c.operation):
            old, new = self._take_row_values()
            ev = self._event(c.operation, target=c.target, query=sql,
                             affected_rows=count, elapsed_ns=elapsed,
                             old_values=old, new_values=new, details={"executemany": True},
                             params=[self._params_record(sql, p, c.targets)
                                     for p in collected] if collected else None)
            self._record_change(ev, wrapped=wrap)
        elif wrap:
            self._commit_wrapper()
        return count

    @_locked
    def executescript(self, cur: apsw.Cursor, script: str) -> None:
        """Run a script statement by statement on the APSW cursor ``cur``, each captured
        like ``execute`` and run to its end."""
        for stmt in statements.split_statements(script):
            if statements.classify(stmt) & statements.EMPTY:
                continue
            if self.execute(cur, stmt, None, query=stmt.strip()).rows is None:
                for _ in cur:
                    pass

    def on_begin(self) -> None:
        """The DB-API opened an implicit transaction."""
        self._just_begun = True
        if self._cfg.log_transactions:
            # Kept in memory and written with the first change or at commit, so that a
            # read-only transaction does not take the write lock at BEGIN.
            self._pending_begin = self._event("BEGIN", target=None, query=None)

    def _on_tx_statement(self, c: _Classification, sql: str, *, was_autocommit: bool) -> None:
        op = c.operation
        db = self._db
        now_autocommit = db.get_autocommit()
        if was_autocommit and not now_autocommit:
            # BEGIN, or a SAVEPOINT that opened the transaction.
            self._pending_tx = []
            self._unstored = 0
            self._savepoints = []
            if self._cfg.log_transactions:
                self._pending_begin = self._event("BEGIN" if op == "BEGIN" else op,
                                                  target=c.savepoint, query=sql)
            if op == "SAVEPOINT":
                self._savepoints.append(((c.savepoint or "").lower(), 0))
            return
        if not was_autocommit and now_autocommit:
            if op == "ROLLBACK":
                self._after_rollback("rolled back")
            else:  # COMMIT, END, or RELEASE of the outermost savepoint
                self._after_commit(sql)
            return
        if now_autocommit:
            return  # a no-op (RELEASE / ROLLBACK TO of nothing raises; BEGIN cannot be here)
        name = (c.savepoint or "").lower()
        if op == "SAVEPOINT":
            self._savepoints.append((name, len(self._pending_tx)))
        elif op in ("RELEASE", "ROLLBACK_TO"):
            idx = None
            for i in range(len(self._savepoints) - 1, -1, -1):
                if self._savepoints[i][0] == name:
                    idx = i
                    break
            if idx is not None:
                pos = self._savepoints[idx][1]
                if op == "RELEASE":
                    del self._savepoints[idx:]
                else:
                    # The savepoint stays; what was written after it is gone: record it
                    # as rolled back, after the transaction ends.
                    del self._savepoints[idx + 1:]
                    undone = self._pending_tx[pos:]
                    del self._pending_tx[pos:]
                    self._deferred.extend(
                        self._failed_copies(undone, f"rolled back to savepoint {c.savepoint}"))
        if self._cfg.log_transactions and op in ("SAVEPOINT", "RELEASE", "ROLLBACK_TO"):
            ev = self._event(op, target=c.savepoint, query=sql)
            if op == "ROLLBACK_TO":
                self._deferred.append(ev)
            else:
                try:
                    self._queue([ev])
                except _WRITE_ERRORS:
                    pass  # queued; stored with the next batch, or the transaction aborts

    # -- transaction control from the DB-API -------------------------------------------
    @_locked
    def flush(self) -> None:
        """Write buffered SELECT events (in the open transaction, or in one of their own)."""
        if not self._select_buffer:
            return
        if self._db.get_autocommit():
            self._write_now([])
        else:
            self._queue([])

    def _buffer_select(self, ev: EventFields) -> None:
        if self.readonly:
            self._refuse_readonly("reads (log_select)")
        self._select_buffer.append(ev)
        if len(self._select_buffer) >= max(1, self._cfg.async_buffer_size):
            self.flush()

    @_locked
    def commit(self) -> None:
        """Commit: buffered events first, then COMMIT (and its event, if logged). Nothing
        when no transaction is open (decided here, under the session's lock)."""
        self._refuse_reentry()
        if self._many:
            self._no_tx_end("commit()")
        if self._db.get_autocommit():
            return
        deferred = self._deferred
        self._deferred = []
        events = list(deferred)
        commit_ev = self._event("COMMIT", target=None, query=None) \
            if self._cfg.log_transactions else None
        marked = False
        unstored = 0
        try:
            if events or self._select_buffer or self._pending_begin is not None:
                self._queue(events)
            if commit_ev is not None:
                # The last batch and the COMMIT event go in after a savepoint of our own:
                # should the COMMIT fail and leave the transaction open (a deferred foreign
                # key, a busy database, a trace callback raising), they are taken out again
                # (the batch is stored with the next one). The COMMIT event stayed before,
                # and the log showed a COMMIT that never happened.
                with self._internal():
                    self._db.execute(f"SAVEPOINT {_COMMIT_SAVEPOINT}")
                marked = True
                self._pending_tx.append(commit_ev)
                self._unstored += 1
                unstored = self._unstored
            self._flush_tx()
        except BaseException as exc:
            # The events of the transaction cannot be stored: it must not commit.
            self._abort_transaction(f"rolled back: audit write failed: {exc}")
            if isinstance(exc, apsw.Error):
                raise translate(exc) from exc
            raise
        doomed = self._doomed
        try:
            # The user's own COMMIT (not an internal statement: traces show it).
            self._db.execute("COMMIT")
        except BaseException as exc:
            if marked and not self._db.get_autocommit():
                try:
                    with self._internal():
                        self._db.execute(f"ROLLBACK TO {_COMMIT_SAVEPOINT}")
                        self._db.execute(f"RELEASE {_COMMIT_SAVEPOINT}")
                    self._pending_tx.pop()  # the COMMIT event: it did not happen
                    self._unstored = unstored - 1
                except apsw.Error:
                    pass
            if not isinstance(exc, apsw.Error):
                raise  # KeyboardInterrupt from a trace callback: the transaction stays open
            if doomed is not None and self._db.get_autocommit():
                from ..errors import OperationalError

                self._after_rollback(doomed)
                raise OperationalError(
                    f"the transaction was not committed ({doomed}; the ROLLBACK after that "
                    "failed too, so SQLite rolled it back now: none of its changes may "
                    "commit without their events)") from exc
            if self._db.get_autocommit():
                # SQLite gave the transaction up: everything in it is gone.
                self._after_rollback(f"rolled back: COMMIT failed: {exc}")
            else:
                # Still open (a deferred foreign key, a busy database): the deferred
                # failures stay recorded in it; the COMMIT event was taken out above.
                self._deferred.append(self._event("COMMIT", target=None, query=None,
                                                  success=False, error=str(exc)))
            raise translate(exc) from exc
        self._pending_tx = []
        self._unstored = 0
        self._savepoints = []
        self._just_begun = False

    @_locked
    def rollback(self) -> None:
        """Roll back, then record what was rolled back in a write of its own (nothing
        when no transaction is open)."""
        self._refuse_reentry()
        if self._many:
            self._no_tx_end("rollback()")
        if self._db.get_autocommit():
            return
        try:
            self._db.execute("ROLLBACK")  # the user's own (traces show it)
        except apsw.Error as exc:
            raise translate(exc) from exc
        self._after_rollback("rolled back")

    def check_closable(self) -> None:
        """Refuse close() from a callback while a statement of this connection runs
        (executemany's parameters): the ROLLBACK of close() undid the rows so far, APSW
        then refused to close, and the rest autocommitted one by one while their event
        said "rolled back" (or counted the LOGOUT rows as theirs)."""
        if self._many or self._depth:
            raise ProgrammingError("close() is refused while a statement of this "
                                   "connection runs (from a callback)")

    @_locked
    def close(self) -> None:
        """Called by Connection.close(): flush, log LOGOUT, detach hooks."""
        if self._closed:
            return
        self.check_closable()
        self._closed = True
        db = self._db
        if not db.get_autocommit():
            # sqlite3 rolls back at close: record that too.
            with self._internal():
                db.execute("ROLLBACK")
            self._after_rollback("rolled back at close")
        events = self._deferred
        self._deferred = []
        if self._cfg.log_auth:
            events.append(self._event("LOGOUT", target=None, query=None))
        self._write_now(events)

    # -- public API ---------------------------------------------------------------------
    @_locked
    def verify(self, *, checkpoint: Any = None, public_key: Any = None,
               hmac_key: Optional[bytes] = None, since_checkpoint: bool = False,
               progress: Any = None, archives: Any = None) -> Any:
        """Verify the chain; return a :class:`heliosdb.audit.VerifyReport`.

        ``checkpoint`` is a :class:`Checkpoint` or the path of a saved one; with it the
        signature is checked (``public_key`` for Ed25519, ``hmac_key`` for HMAC) and a
        truncated tail, a rewritten chain or a rolled-back file are detected.
        """
        from .checkpoint import Checkpoint
        from .verify import verify_connection

        self._flush_for_read()
        self._flush_tx()
        if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
            checkpoint = Checkpoint.load(checkpoint)
        with self._internal():
            return verify_connection(self._db, self.table, checkpoint=checkpoint,
                                     public_key=public_key, hmac_key=hmac_key,
                                     since_checkpoint=since_checkpoint, progress=progress,
                                     archives=archives)

    @_locked
    def checkpoint(self, signing_key: Any, path: Any = None) -> Any:
        """Sign the head of the chain (Ed25519 private key, or HMAC key bytes); save it to
        ``path`` if given. Keep the key, and the file, outside the database."""
        from .checkpoint import create_checkpoint

        self._flush_for_read()
        self._flush_tx()
        with self._internal():
            cp = create_checkpoint(self._db, self.table, signing_key)
        if path is not None:
            cp.save(path)
        return cp

    @_locked
    def head(self) -> Any:
        """The head of the chain: (last id, last checksum, last time, count)."""
        self._flush_tx()
        with self._internal():
            return store.head(self._db, self.table)

    def _flush_for_read(self) -> None:
        if self._select_buffer and self._db.get_autocommit():
            self.flush()

    def set_context(self, **context: Any) -> None:
        """Update the session context (client_ip, application_name, reason, custom fields)."""
        self._context.update(context)
        self._md_parts = None

    def set_user(self, user: str, *, reason: Optional[str] = None) -> None:
        """Make ``user`` the actor of this connection's events from now on (a pooled
        connection handed to another user). Recorded as ACTOR_CHANGE, vouched for by the
        previous actor."""
        if not isinstance(user, str) or not user:
            raise ProgrammingError("set_user() needs a non-empty user name")
        previous = self.user
        self._record_actor_change(user, reason, {}, vouched_by=previous)
        self.user = user

    def acting_as(self, user: str, *, reason: Optional[str] = None,
                  client_ip: Optional[str] = None,
                  application_name: Optional[str] = None) -> Any:
        """``with conn.audit.acting_as("bob", reason="ticket 42"):`` the events of this
        thread inside the block carry ``bob`` as ``user`` (and the reason, client IP and
        application name given). Nests; other threads keep their own actor. Entering is
        recorded as ACTOR_CHANGE by the actor in force (who vouches for it)."""
        import contextlib

        if not isinstance(user, str) or not user:
            raise ProgrammingError("acting_as() needs a non-empty user name")
        overrides = {k: v for k, v in (("client_ip", client_ip),
                                       ("application_name", application_name)) if v is not None}

        @contextlib.contextmanager
        def frame() -> Any:
            tls = self._tls
            outer = tls.top
            vouched_by = outer[0] if outer is not None else self.user
            # A nested frame keeps what the outer one set and it does not override.
            why = reason if reason is not None or outer is None else outer[1]
            ctx = {**outer[2], **overrides} if outer is not None else overrides
            self._record_actor_change(user, why, overrides, vouched_by=vouched_by)
            tls.stack.append((user, why, ctx))
            tls.top = tls.stack[-1]
            with self._lock:
                self._acting += 1
            try:
                yield self
            finally:
                tls.stack.pop()
                tls.top = tls.stack[-1] if tls.stack else None
                with self._lock:
                    self._acting -= 1

        return frame()

    def _record_actor_change(self, user: str, reason: Optional[str], overrides: dict, *,
                             vouched_by: str) -> None:
        details: dict[str, Any] = {"actor": user, "vouched_by": vouched_by}
        details.update(overrides)
        self.log("ACTOR_CHANGE", target=None, details=details, reason=reason)

    @_locked
    def log(self, operation: str, *, target: Optional[str] = None,
            details: Optional[dict] = None, success: bool = True,
            reason: Optional[str] = None, error: Optional[str] = None) -> None:
        """Append an application event (LOGIN, GRANT, DATA_SUBJECT_REQUEST, custom ...);
        ``error`` says why a failed one failed (``success=False``)."""
        self._refuse_reentry()
        if not isinstance(operation, str) or not operation:
            raise ValueError("operation must be a non-empty string")
        if self.readonly:
            self._refuse_readonly(f"application events ({operation})")
        if error is not None and not isinstance(error, str):
            raise ProgrammingError("error must be a string")
        ev = self._event(operation.upper(), target=target, query=None, success=success,
                         details=details, reason=reason, error=error)
        if self._db.get_autocommit():
            self._write_now([ev])
        else:
            self._append([ev])


def _recorded_config(config: Any) -> dict:
    """What ``__audit_meta`` records of a config: ``name``, ``[audit]``, ``[encryption]``."""
    full = config.to_dict()
    return {k: full[k] for k in ("name", "audit", "encryption")}


#: _config_digest()'s answers (policy.per_config): every audited open asks, most with the
#: config object load_config() keeps for a file or preset.
_CONFIG_DIGESTS: dict = {}


def _config_digest(config: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`_recorded_config` (``config_hash``)."""
    def digest() -> str:
        import hashlib

        text = canonical_json(_recorded_config(config))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    return per_config(_CONFIG_DIGESTS, config, (), digest)


def attach_audit(conn: Any, config: Any, *, user: Optional[str],
                 context: Optional[dict], lock: Any = None,
                 ) -> tuple[Optional[AuditSession], Any]:
    """The audit session of a new connection and the config it runs under (called by
    ``Connection.__init__``).

    An audited database stays audited: the policy stored in the file is enforced whatever
    ``config`` asks (:func:`heliosdb.audit.policy.enforce`). Returns ``(None, config)`` when
    neither the config nor the file asks for audit; a file whose stored policy switched
    capture off still gets its audit tables protected.
    """
    db = conn._apsw
    try:
        # Every row of the meta table, once (None: there is none): the policy, and the
        # session's questions at open, are answered from it.
        meta = read_meta(db)
        stored = None if meta is None else read_stored_policy(db, meta=meta)
    except apsw.Error as exc:
        raise translate(exc) from exc
    if stored is None and not config.audit.enabled:
        return None, config  # what enforce() answers: most connections (W7)
    effective, overridden = enforce(config, stored)
    if not effective.audit.enabled:
        if stored is not None:
            # Capture switched off by an audited call: the log stays append-only.
            try:
                tables = find_audit_tables(db, meta=meta)
            except apsw.Error as exc:
                raise translate(exc) from exc
            conn._set_internal_authorizer(guard_authorizer(tables))
            _defensive(db)
        return None, effective
    session = AuditSession(conn, effective, user, context, overridden=overridden,
                           enforced=stored is not None and not config.audit.enabled,
                           lock=lock, meta=meta if meta is not None else {})
    return session, effective


def _defensive(db: apsw.Connection) -> None:
    """SQLITE_DBCONFIG_DEFENSIVE: no writable_schema, no writes to shadow tables or
    sqlite_dbpage: SQL cannot edit the file behind the authorizer's back."""
    try:
        db.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
    except apsw.Error as exc:
        raise translate(exc) from exc


def _config_changes(old: Any, new: Any, prefix: str = "") -> dict:
    """Dotted keys whose value differs between two config dicts: {key: {old, new}}."""
    out: dict = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_config_changes(a, b, prefix + k + "."))
        elif a != b or (k in old) != (k in new):
            out[prefix + k] = {"old": a, "new": b}
    return out


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
