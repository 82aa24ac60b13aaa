"""The ``heliosdb`` subcommands, for scripts: info, verify, audit, export, encrypt,
decrypt, rekey, passwd, purge, report and demo.

Each is ``heliosdb COMMAND FILE [options]`` (options may also stand before COMMAND);
``heliosdb COMMAND --help`` describes it. They print results on standard output, errors
as one line on standard error naming the file, and exit with a status of
:data:`heliosdb.cli.common.EXIT_STATUSES`. Long work shows a progress bar when standard
error is a terminal.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from typing import Any, Iterator, Optional, Sequence

import heliosdb

from .common import (
    AUDIT_COLUMNS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    EXPORT_FORMATS,
    PROG,
    KEY_OPTIONS,
    NEW_KEY_OPTIONS,
    CLIError,
    KeySpec,
    Opener,
    check_exists,
    db_file,
    is_readonly_connection,
    key_from_entry,
    name_the_file,
    not_encrypted_message,
    prompt_for_key,
    readonly_target,
    audit_table_exists,
    audit_table_of,
    call_with_progress,
    decrypt_file,
    describe_export,
    error_message,
    event_to_dict,
    event_row,
    exit_code_for,
    file_is_encrypted,
    export_audit,
    format_storage_info,
    format_pages_report,
    format_verify_report,
    heliosdb_api,
    parse_when,
    prompt_new_secret,
    report_findings,
    report_ok,
    run_audit_query,
    verify_audit,
    verify_pages,
    wipe_key,
    write_report,
)
from ..progress import progress_callback

__all__ = ["SUBCOMMANDS", "build_parser", "run_subcommand"]

#: The first arguments that select a subcommand instead of the shell.
SUBCOMMANDS = ("info", "verify", "audit", "export", "encrypt", "decrypt", "rekey", "passwd",
               "purge", "report", "demo", "prove", "fleet-verify", "ship")


class _Parser(argparse.ArgumentParser):
    """argparse, with errors as ``heliosdb COMMAND: error: ...`` and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise CLIError(f"{message} ('{self.prog} --help' lists its options)", EXIT_USAGE)


def _key_options(p: argparse.ArgumentParser, *, prefix: str = "", what: str = "the key",
                 note: Optional[str] = None) -> None:
    """-k/--key, --key-file, --key-env (or --new-key ... with ``prefix="new-"``)."""
    title = f"{prefix.rstrip('-')} key options" if prefix else "key options"
    g = p.add_argument_group(title, note)
    dest = prefix.replace("-", "_")
    names = [f"--{prefix}key"] if prefix else ["-k", "--key"]
    g.add_argument(*names, dest=f"{dest}key_prompt", action="store_true",
                   help=f"prompt for {what} (never echoed)")
    g.add_argument(f"--{prefix}key-file", dest=f"{dest}key_file", metavar="FILE",
                   help=f"read {what} from FILE (32 raw bytes or 64 hex characters)")
    g.add_argument(f"--{prefix}key-env", dest=f"{dest}key_env", metavar="VAR",
                   help=f"read {what} from environment variable VAR (64 hex characters)")


def _common(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    _key_options(p)
    if config:
        p.add_argument("--config", metavar="NAME|FILE",
                       help="config preset or TOML file (default: the 'default' preset when "
                            "the file has an audit log)")
        p.add_argument("--user", metavar="NAME", help="session user recorded in the audit log")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def _event_options(p: argparse.ArgumentParser, *, reason: bool = True) -> None:
    """--actor (and --reason): who did it and why, written in the events the command
    records."""
    p.add_argument("--actor", metavar="NAME",
                   help="who does this, recorded in the event (default: the login name)")
    if reason:
        p.add_argument("--reason", metavar="TEXT", help="why, recorded in the event")


def _event_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("actor", "reason")
            if getattr(args, k, None) is not None}


def _spec(args: argparse.Namespace, prefix: str = "") -> KeySpec:
    pre = prefix.replace("-", "_")
    if getattr(args, f"{pre}key_file", None):
        return KeySpec("file", getattr(args, f"{pre}key_file"), prefix)
    if getattr(args, f"{pre}key_env", None):
        return KeySpec("env", getattr(args, f"{pre}key_env"), prefix)
    if getattr(args, f"{pre}key_prompt", False):
        return KeySpec("prompt", None, prefix)
    return KeySpec(prefix=prefix)


def _opener(args: argparse.Namespace) -> Opener:
    user = getattr(args, "actor", None) or getattr(args, "user", None)
    return Opener(key=_spec(args), config=getattr(args, "config", None), user=user)


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _note(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")


def _must_exist(path: str) -> None:
    check_exists(path)


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def _public_header(name: str) -> dict[str, Any]:
    """What the header of an encrypted file tells without its key (it is public)."""
    import datetime as dt

    from ..crypto import read_header

    h = read_header(name)
    return {
        "encryption_enabled": True,
        "encryption_algorithm": "aes-256-gcm",
        "format_version": h.version,
        "header_size": h.header_size,
        "page_size": h.page_size,
        "reserve_bytes": h.reserve,
        "file_id": h.file_id.hex(),
        "data_key_generation": h.generation,
        "encryptions_under_current_key": h.counter,
        "key_created": dt.datetime.fromtimestamp(h.key_created, dt.timezone.utc)
        .isoformat().replace("+00:00", "Z") if h.key_created else None,
        "key_slots": [dict(sl.describe(), index=i) for i, sl in enumerate(h.slots)],
    }


def cmd_info(args: argparse.Namespace) -> int:
    """Show what a database holds and how it is stored."""
    check_exists(args.file)
    name = db_file(args.file) or args.file
    if not _spec(args).given and not args.config and file_is_encrypted(name):
        # Without a key, the public header: how it is stored, not what it holds.
        info: dict[str, Any] = {
            "file": os.path.abspath(name),
            "size_bytes": os.path.getsize(name),
            "heliosdb_version": heliosdb.__version__,
            "storage": _public_header(name),
            "key_needed": "the tables and the audit log are encrypted: add --key-file "
                          "FILE, --key-env VAR or --key (prompt) to see them",
        }
        if args.json:
            _out(json.dumps(info, indent=2, sort_keys=True, default=str))
            return EXIT_OK
        storage = info.pop("storage")
        rows = [(k, str(v)) for k, v in info.items() if k != "key_needed"]
        rows += [(f"storage.{k}", v) for k, v in format_storage_info(storage)]
        rows.append(("tables", "(encrypted: needs the key)"))
        rows.append(("audit", "(encrypted: needs the key)"))
        _print_rows(rows)
        _note(f"note: {name}: only the public header is shown; {info['key_needed'][4:]}")
        return EXIT_OK
    opener = _opener(args)
    opener.readonly = True
    conn = opener.connect(args.file, must_exist=True, auto_audit=False)
    try:
        db = conn._apsw

        def pragma(name: str) -> Any:
            return db.execute(f"PRAGMA {name}").fetchall()[0][0]

        info = {
            "file": os.path.abspath(name),
            "size_bytes": os.path.getsize(name),
            "sqlite_version": heliosdb.sqlite_version,
            "heliosdb_version": heliosdb.__version__,
            "page_size": pragma("page_size"),
            "page_count": pragma("page_count"),
            "journal_mode": pragma("journal_mode"),
            "tables": [r[0] for r in db.execute(
                "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name")],
        }
        try:
            info["storage"] = conn.storage_info()
        except (ImportError, AttributeError) as exc:
            info["storage"] = {"encryption_enabled": file_is_encrypted(name),
                               "note": f"storage details are not available: {exc}"}
        table = audit_table_of(conn)
        audit: dict[str, Any] = {"table": table, "present": audit_table_exists(conn, table)}
        if audit["present"]:
            row = db.execute(f'SELECT count(*), min(id), max(id), max(ts_us) FROM "{table}"'
                             ).fetchall()[0]
            audit.update(events=row[0], first_id=row[1], last_id=row[2])
            if row[3] is not None:
                from ..audit.events import format_ts

                audit["last_event_at"] = format_ts(row[3])
        info["audit"] = audit
    finally:
        conn.close()
    if args.json:
        _out(json.dumps(info, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    storage = info.pop("storage")
    audit = info.pop("audit")
    tables = info.pop("tables")
    user_tables = [t for t in tables if t != audit["table"] and t != "__audit_meta"]
    rows: list[tuple[str, str]] = [(k, str(v)) for k, v in info.items()]
    rows.append(("tables", f"{len(user_tables)}: {', '.join(user_tables)}" if user_tables
                 else "0"))
    rows += [(f"storage.{k}", v) for k, v in format_storage_info(storage)]
    if audit["present"]:
        rows += [(f"audit.{k}", str(v)) for k, v in audit.items() if k != "present"]
    else:
        rows.append(("audit", "no audit log"))
    _print_rows(rows)
    return EXIT_OK


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        _out(f"{k:<{width}}  {v}")


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the audit chain (and, with --pages, every encrypted page)."""
    check_exists(args.file)
    name = db_file(args.file) or args.file
    spec = _spec(args)
    # Read once, so a prompted key is asked for once for both checks.
    secret = spec.load(name) if spec.given else None
    if secret is None and file_is_encrypted(name) and not args.config:
        # (a --config may name the key source: encryption.key_source)
        if not sys.stdin.isatty():
            raise CLIError(f"{name} is encrypted: give its key with --key-file FILE, "
                           f"--key-env VAR or --key (prompt)")
        secret = prompt_for_key(name)
    results: dict[str, Any] = {}
    ok = True
    try:
        try:
            # Without --config, read-only: verifying never appends to the log it checks.
            target = args.file if args.config else readonly_target(args.file)
            conn = heliosdb.connect(target, uri=not args.config or args.file.startswith(
                "file:"), key=secret, config=args.config, audit_user=args.user,
                isolation_level=None)
        except heliosdb.WrongKeyError:
            raise CLIError(f"wrong key for {name}") from None
        except heliosdb.KeyRequiredError:
            raise CLIError(f"{name} is encrypted: give its key with --key-file FILE, "
                           f"--key-env VAR or --key (prompt)") from None
        except heliosdb.NotEncryptedError:
            raise CLIError(not_encrypted_message(name, spec)) from None
        try:
            notes: list[str] = []
            table = audit_table_of(conn)
            if audit_table_exists(conn, table) or args.checkpoint:
                with progress_callback(None, "Verifying the audit chain") as bar:
                    report = verify_audit(conn, args.checkpoint, args.verify_key, bar, notes)
                ok = ok and report_ok(report)
                results["audit"] = report
                for n in notes:
                    _note(f"note: {n}")
            elif not args.pages:
                raise CLIError(f"{args.file} has no audit log to verify (table {table})")
        finally:
            conn.close()
        if args.pages:
            if secret is None:
                raise CLIError(f"--pages: {args.file} is not encrypted")
            with progress_callback(None, "Authenticating pages") as bar:
                pages = verify_pages(name, secret, bar)
            ok = ok and report_ok(pages)
            results["pages"] = pages
    finally:
        wipe_key(secret)
    if args.json:
        out = {"ok": ok}
        for what, rep in results.items():
            out[what] = event_to_dict(rep)  # a report dataclass or dict, as JSON
        _out(json.dumps(out, indent=2, sort_keys=True, default=str))
    else:
        for what, rep in results.items():
            _out(format_verify_report(rep) if what == "audit" else format_pages_report(rep))
    return EXIT_OK if ok else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# audit, export, report
# --------------------------------------------------------------------------------------------


def open_audited(args: argparse.Namespace, user: Any = "__opener__") -> Any:
    opener = _opener(args)
    if user != "__opener__":
        opener.user = user
    conn = opener.connect(args.file, must_exist=True)
    if conn.audit is None:
        conn.close()
        raise CLIError(f"{db_file(args.file)} has no audit log (or --config turns auditing "
                       f"off)")
    return conn


def cmd_purge(args: argparse.Namespace) -> int:
    """Archive and delete the expired prefix of the audit log (conn.audit.purge)."""
    conn = open_audited(args)
    try:
        if is_readonly_connection(conn):
            raise CLIError(f"{db_file(args.file)} is open read-only: a purge writes (drop "
                           f"mode=ro, or make the file writable)")
        purge = conn.audit.purge
        kwargs: dict[str, Any] = {"dry_run": args.dry_run}
        if args.archive is not None:
            kwargs["archive"] = args.archive
        result = purge(**kwargs)
    finally:
        conn.close()
    d = event_to_dict(result)
    if args.json:
        _out(json.dumps(d, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    n = d.get("purged") or 0
    ids = f" (ids {d.get('first_id')}..{d.get('last_id')})" if n else ""
    if args.dry_run:
        _out(f"would purge {n} event(s){ids}; nothing was changed")
    elif n:
        _out(f"purged {n} event(s){ids}; archived to {d.get('archive')} "
             f"(sha256 {d.get('archive_sha256')})")
    else:
        _out("nothing to purge: no event at the start of the log has expired")
    if d.get("blocked_by") is not None:
        _out(f"kept from event {d['blocked_by']} on: {d.get('blocked_reason') or 'not expired'}")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """List audit events, filtered (or, with --suspicious, forensic findings)."""
    filters: dict[str, Any] = {}
    for name in ("user", "op", "table", "session"):
        value = getattr(args, name)
        if value is not None:
            filters[name] = value.upper() if name == "op" else value
    if args.since:
        filters["since"] = parse_when(args.since)
    if args.until:
        filters["until"] = parse_when(args.until)
    if args.failed:
        filters["success"] = False
    if args.limit is not None:
        filters["limit"] = args.limit
    # (--user filters the events here; the session user is --actor)
    conn = open_audited(args, user=args.actor)
    try:
        if args.suspicious:
            findings = report_findings(conn.audit.suspicious())
            for f in findings:
                _out(json.dumps(event_to_dict(f), sort_keys=True, default=str) if args.json
                     else str(getattr(f, "message", None) or f))
            return EXIT_FAILED if findings else EXIT_OK
        events = run_audit_query(conn, filters)
        if args.json:
            for ev in events:
                _out(json.dumps(event_to_dict(ev), sort_keys=True, default=str))
        else:
            _print_table(AUDIT_COLUMNS, (event_row(ev) for ev in events))
    finally:
        conn.close()
    return EXIT_OK


def _print_table(columns: Sequence[str], rows: Any) -> None:
    """Rows as aligned text columns (long values cut), like ``sqlite3 -column``."""
    rows = [["" if v is None else str(v).replace("\n", " ") for v in r] for r in rows]
    limit = 60
    rows = [[v if len(v) <= limit else v[:limit - 3] + "..." for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    _out("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    _out("  ".join("-" * w for w in widths))
    for r in rows:
        _out("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def cmd_export(args: argparse.Namespace) -> int:
    """Export the audit log for a SIEM or an auditor."""
    conn = open_audited(args)
    try:
        manifest = export_audit(conn, args.format, args.out, after_id=args.since_id)
    finally:
        conn.close()
    _note(describe_export(manifest, args.format, args.out))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Write a compliance report; exit 1 when it has findings or verification failed."""
    conn = open_audited(args)
    try:
        result = write_report(conn, args.out, args.preset)
    finally:
        conn.close()
    findings = report_findings(result)
    verification = getattr(result, "verification", None)
    if isinstance(result, dict):
        verification = result.get("verification", verification)
    failed = verification is not None and not report_ok(verification)
    _note(f"report written to {args.out}: {len(findings)} finding(s)"
          + ("; audit verification FAILED" if failed else ""))
    return EXIT_FAILED if findings or failed else EXIT_OK


# --------------------------------------------------------------------------------------------
# key operations
# --------------------------------------------------------------------------------------------


def _new_secret(args: argparse.Namespace, target: str) -> Any:
    """The new key of encrypt/passwd: --new-key-file/--new-key-env, or a passphrase asked
    twice."""
    spec = _spec(args, "new-")
    if spec.kind in ("file", "env"):
        return spec.load(target)
    return key_from_entry(prompt_new_secret(target, NEW_KEY_OPTIONS), target, new=True)


def _old_secret(args: argparse.Namespace, target: str) -> Any:
    spec = _spec(args)
    if not spec.given:
        if not sys.stdin.isatty():
            raise CLIError(f"{target} is encrypted: give its key with --key-file FILE, "
                           f"--key-env VAR or --key (prompt)")
        spec = KeySpec("prompt")
    return spec.load(target, prompt=f"Current passphrase or 64-hex key for {target}: ")


def _check_out(args: argparse.Namespace) -> None:
    if os.path.exists(args.out) and not args.force:
        raise CLIError(f"{args.out} exists: choose another --out or pass --force")
    if os.path.abspath(args.out) == os.path.abspath(args.file):
        raise CLIError("--out must differ from the input file")


def _must_be_encrypted(path: str, hint: str = " (see heliosdb encrypt)") -> None:
    """The input of decrypt/rekey/passwd: an existing, encrypted database."""
    _must_exist(path)
    if not file_is_encrypted(path):
        raise CLIError(f"{path} is not encrypted{hint}")


def _clear_out(args: argparse.Namespace) -> None:
    """Remove an --out that --force lets us replace (only once the key is in hand, so a
    refused prompt leaves it alone)."""
    if args.force and os.path.exists(args.out):
        os.remove(args.out)


@contextlib.contextmanager
def _key_operation(target: str, *keys: Any) -> Iterator[list]:
    """The body of a key operation on ``target``: a wrong key becomes the CLI's one-line
    error, and every key held (those given, and those the body appends to the yielded
    list) is wiped on the way out, whatever happens."""
    held = list(keys)
    try:
        yield held
    except heliosdb.WrongKeyError:
        raise CLIError(f"wrong key for {target}") from None
    finally:
        for key in held:
            wipe_key(key)


def _rewrite_with_progress(args: argparse.Namespace, doing: str, fn: Any, *fn_args: Any
                           ) -> None:
    """Run the page-by-page rewrite ``fn(*fn_args)`` of ``args.file`` with a progress bar
    labelled ``doing``, the audit event's options passed on."""
    with progress_callback(None, f"{doing} {os.path.basename(args.file)}") as bar:
        call_with_progress(fn, *fn_args, progress=bar, **_event_kwargs(args))


def cmd_encrypt(args: argparse.Namespace) -> int:
    """Write an encrypted copy of a plaintext database."""
    _must_exist(args.file)
    if file_is_encrypted(args.file):
        raise CLIError(f"{args.file} is already encrypted (see heliosdb rekey / passwd)")
    _check_out(args)
    fn = heliosdb_api("encrypt", "heliosdb encrypt")
    key = _new_secret(args, args.out)
    try:
        _clear_out(args)
        _rewrite_with_progress(args, "Encrypting", fn, args.file, args.out, key)
    finally:
        wipe_key(key)
    _note(f"encrypted copy written to {args.out}")
    return EXIT_OK


def cmd_decrypt(args: argparse.Namespace) -> int:
    """Write a plaintext copy of an encrypted database."""
    _must_be_encrypted(args.file, hint="")
    _check_out(args)
    key = _old_secret(args, args.file)
    with _key_operation(args.file, key):
        _clear_out(args)
        _rewrite_with_progress(args, "Decrypting", decrypt_file, args.file, args.out, key)
    _note(f"plaintext copy written to {args.out}")
    return EXIT_OK


def cmd_rekey(args: argparse.Namespace) -> int:
    """Rotate the data key: re-encrypt every page under a new random key."""
    _must_be_encrypted(args.file)
    fn = heliosdb_api("rotate_key", "heliosdb rekey")
    key = _old_secret(args, args.file)
    with _key_operation(args.file, key):
        _rewrite_with_progress(args, "Re-encrypting", fn, args.file, key)
    _note(f"data key rotated for {args.file}")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    """Change the passphrase (rewrap the key slot; instant)."""
    _must_be_encrypted(args.file)
    fn = heliosdb_api("change_passphrase", "heliosdb passwd")
    old = _old_secret(args, args.file)
    with _key_operation(args.file, old) as held:
        new = _new_secret(args, args.file)
        held.append(new)
        fn(args.file, old, new, **_event_kwargs(args))
    _note(f"key changed for {args.file}: the old key no longer opens it")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, rest: Sequence[str] = ()) -> int:
    """Run the guided demonstration (heliosdb.demo)."""
    try:
        from .. import demo
    except ImportError as exc:
        raise CLIError(f"heliosdb demo is not available: {exc}") from None
    main = getattr(demo, "main", None)
    if main is None:
        raise CLIError("heliosdb demo is not available: heliosdb.demo.main is missing")
    code = main(list(rest))
    return int(code or 0)


# --------------------------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the subcommands."""
    parser = _Parser(prog=PROG, description="HeliosDB: encrypted, audited SQLite. Without a "
                     "COMMAND, 'heliosdb [OPTIONS] FILE [SQL]...' is the SQL shell "
                     "(heliosdb --help).",
                     epilog="Exit status: 0 ok, 1 verification failed or findings, "
                            "2 usage or input error.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("info", help="what a database holds and how it is stored",
                       description="Show page size, tables, encryption (no key material) "
                                   "and the audit log's size and head.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print JSON")
    _common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("verify", help="verify the audit chain (exit 1 on a fault)",
                       description="Recompute the audit chain and name the first fault; "
                                   "with --checkpoint, also detect truncation and rollback; "
                                   "with --pages, authenticate every encrypted page.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--checkpoint", metavar="F", help="signed checkpoint file to check against")
    p.add_argument("--verify-key", metavar="KEYFILE",
                   help="key that checks the checkpoint signature: the signing key, an Ed25519 "
                        "public key (PEM) or the HMAC secret (default $HELIOSDB_SIGNING_KEY_FILE; "
                        "without one, only a checkpoint signed by the Ed25519 key the database "
                        "pinned at its first checkpoint is accepted)")
    p.add_argument("--pages", action="store_true",
                   help="also authenticate every page of an encrypted database")
    p.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    _common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("audit", help="list audit events",
                       description="List audit events, oldest first, filtered. Times are ISO "
                                   "8601 (2026-01-31, 2026-01-31T09:30Z) or ages (90m, 12h, 7d).")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--user", help="events of this session user")
    p.add_argument("--op", metavar="OPERATION", help="INSERT, DELETE, CREATE_TABLE, LOGIN ...")
    p.add_argument("--table", help="events on this table")
    p.add_argument("--session", help="events of this session id")
    p.add_argument("--since", metavar="WHEN", help="at or after WHEN")
    p.add_argument("--until", metavar="WHEN", help="before WHEN")
    p.add_argument("--failed", action="store_true", help="failed or denied attempts only")
    p.add_argument("--limit", type=int, metavar="N", help="at most N events")
    p.add_argument("--suspicious", action="store_true",
                   help="forensic findings instead of events (exit 1 if any)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _key_options(p)
    p.add_argument("--config", metavar="NAME|FILE", help="config preset or TOML file")
    _event_options(p, reason=False)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=cmd_audit, user_name=None)

    p = sub.add_parser("export", help="export the audit log (jsonl, csv, ocsf, syslog)",
                       description="Export the audit log with its chain proof (jsonl), as CSV, "
                                   "as OCSF 6005 JSON or RFC 5424 syslog lines for a SIEM.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    p.add_argument("--out", required=True, metavar="F", help="output file (.gz compresses)")
    p.add_argument("--since-id", type=int, metavar="N", help="only events after id N")
    _common(p)
    _event_options(p, reason=False)
    p.set_defaults(func=cmd_export)

    for name, fn, text in (
            ("encrypt", cmd_encrypt, "write an encrypted copy of a plaintext database"),
            ("decrypt", cmd_decrypt, "write a plaintext copy of an encrypted database")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("file", metavar="FILE")
        p.add_argument("--out", "-o", required=True, metavar="F", help="the new file")
        p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
        if name == "encrypt":
            _key_options(p, prefix="new-", what="the new key",
                         note="default: a new passphrase (or 64-hex key), asked twice")
        else:
            _key_options(p)
        _event_options(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        p.set_defaults(func=fn)

    p = sub.add_parser("rekey", help="rotate the data key (re-encrypt every page)",
                       description="Draw a new data key and re-encrypt every page under it, "
                                   "crash-safely. The passphrase or key file stays valid "
                                   "(change it with heliosdb passwd).")
    p.add_argument("file", metavar="FILE")
    _key_options(p)
    _event_options(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=cmd_rekey)

    p = sub.add_parser("passwd", help="change the passphrase (instant)",
                       description="Rewrap the data key under a new passphrase or key: only "
                                   "the key slot is rewritten; the old one stops working.")
    p.add_argument("file", metavar="FILE")
    _key_options(p)
    _key_options(p, prefix="new-", what="the new key",
                 note="default: a new passphrase (or 64-hex key), asked twice")
    _event_options(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("report", help="write a compliance report (HTML and JSON)",
                       description="Write a self-contained compliance report: config, "
                                   "encryption, coverage, verification, checkpoint, findings. "
                                   "Exit 1 when it has findings or verification failed.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--preset", metavar="NAME", help="hipaa, soc2, gdpr, pci-dss, fda-part11")
    p.add_argument("--out", required=True, metavar="F",
                   help="the HTML file (its JSON is written next to it)")
    _common(p)
    _event_options(p, reason=False)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("purge", help="archive and delete expired audit events",
                       description="Write the expired prefix of the audit log to a gzip JSON "
                                   "Lines archive, delete it and record RETENTION_PURGE "
                                   "(conn.audit.purge). Retention comes from the audit "
                                   "policy. Exit 1 when a legal hold blocks it.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--dry-run", action="store_true",
                   help="say what would be purged; change nothing")
    p.add_argument("--archive", metavar="DIR",
                   help="directory (or .gz file) for the archive (default: next to FILE)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _common(p)
    _event_options(p, reason=False)
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("demo", help="a guided demonstration", add_help=False,
                       description="Run heliosdb.demo (its own options follow).")
    p.set_defaults(func=cmd_demo)
    from .prove import add_parser as _add_prove  # heliosdb prove: cli/prove.py
    _add_prove(sub, _common, open_audited)
    from .fleet import add_parser as _add_fleet  # heliosdb fleet-verify: cli/fleet.py
    _add_fleet(sub)
    from .ship import add_parser as _add_ship  # heliosdb ship: cli/ship.py
    _add_ship(sub, _common, open_audited)
    return parser


def run_subcommand(argv: Sequence[str]) -> int:
    """Run ``heliosdb COMMAND ...``; returns the exit status."""
    argv = list(argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = None
    try:
        if argv and argv[0] == "demo":
            return cmd_demo(argparse.Namespace(), argv[1:])
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if extra:
            command, args = args.command, None
            raise CLIError(f"unrecognized arguments: {' '.join(extra)} ('{PROG} {command} "
                           f"--help' lists its options)")
        return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return exit_code_for(KeyboardInterrupt())
    except BrokenPipeError:
        raise  # the reader of standard output went away: __main__ ends quietly
    except Exception as exc:  # noqa: BLE001 - one line and an exit code, never a traceback
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{PROG}: error: "
                         f"{name_the_file(exc, getattr(args, 'file', None))}\n")
        return exit_code_for(exc)
