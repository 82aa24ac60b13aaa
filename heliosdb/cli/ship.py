"""``heliosdb ship DB``: send what is new in a database's audit log to a fleet store.

::

    heliosdb ship DB --to parquet:DIR --state FILE
    heliosdb ship DB --to syslog+tls://HOST:PORT --state FILE --ca CA.pem [--body ocsf]
                     [--client-cert C.pem --client-key K.pem]
    heliosdb ship DB --to syslog+tcp://HOST:PORT --state FILE

Sends the events after the last one the state file records as acknowledged, verifying
their chain first, and records each batch in the state file once the destination took it.
Run it again (from cron, after a crash, after kill -9) and it resumes. A progress bar is
drawn on standard error when it is a terminal. Exit status: 0 shipped (or nothing new),
1 the log does not verify (nothing from the bad event on was shipped), 2 usage or input
error (unreachable collector, bad certificate, a state file of another database). The
work is done by :mod:`heliosdb.audit.ship`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from ..progress import progress_callback
from .common import EXIT_OK

__all__ = ["add_parser", "cmd_ship", "describe_result"]


def add_parser(sub: Any, common: Callable[..., None],
               open_audited: Callable[..., Any]) -> None:
    """Register ``ship`` on the subcommand parsers (``common`` adds the key options,
    ``open_audited(args)`` opens the database as the other subcommands do; passed in so
    that this module imports nothing from :mod:`heliosdb.cli.commands`)."""
    p = sub.add_parser("ship", help="send new audit events to a Parquet dataset or a syslog "
                       "collector (resumable)",
                       description="Send the audit events that are new since the last "
                                   "acknowledged one (per --state) to a Parquet dataset or a "
                                   "syslog collector over TCP or TLS (RFC 5424 messages, RFC "
                                   "6587 octet counting, RFC 5425), verifying their chain "
                                   "first. Safe to re-run after a crash: Parquet receives "
                                   "each event once, syslog at least once (each message names "
                                   "its database and event id).",
                       epilog="Exit status: 0 ok, 1 the log does not verify, 2 usage or "
                              "input error.")
    p.add_argument("file", metavar="DB")
    p.add_argument("--to", required=True, metavar="DEST",
                   help="parquet:DIR, syslog+tcp://HOST:PORT or syslog+tls://HOST:PORT")
    p.add_argument("--state", required=True, metavar="FILE",
                   help="where the last acknowledged event is recorded (one per destination)")
    p.add_argument("--ca", metavar="FILE",
                   help="TLS: the CA certificate(s) that sign the collector's certificate "
                        "(default: the system's trust store)")
    p.add_argument("--client-cert", metavar="FILE", help="TLS: present this certificate")
    p.add_argument("--client-key", metavar="FILE",
                   help="TLS: the client certificate's key (if not in --client-cert)")
    p.add_argument("--server-name", metavar="NAME",
                   help="TLS: the name the collector's certificate must hold (default HOST)")
    p.add_argument("--body", choices=("json", "ocsf"), default="json",
                   help="syslog MSG: the stored event as JSON (default) or OCSF 6005")
    p.add_argument("--batch", type=int, default=10_000, metavar="N",
                   help="events per batch, per Parquet part and per state write "
                        "(default 10000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    common(p)
    p.set_defaults(func=cmd_ship, open_audited=open_audited)


def describe_result(r: Any, to: str) -> str:
    """The line ``heliosdb ship`` prints (``to`` as the user wrote it)."""
    if not r.count:
        return f"nothing new to ship: {to} has every event up to {r.last_id}"
    return (f"shipped {r.count} event(s) (ids {r.first_id}..{r.last_id}) of database "
            f"{r.database_id} to {to} in {r.batches} batch(es)")


def cmd_ship(args: argparse.Namespace) -> int:
    """Ship new audit events (conn.audit.ship)."""
    from ..errors import OperationalError, ProgrammingError
    from .common import CLIError

    if args.batch < 1:
        raise CLIError("--batch must be at least 1")
    conn = args.open_audited(args)
    try:
        ship = conn.audit.ship
        with progress_callback(None, "Shipping audit events") as bar:
            try:
                result = ship(args.to, state=args.state, batch_size=args.batch,
                              body=args.body, ca_file=args.ca, cert_file=args.client_cert,
                              key_file=args.client_key, server_name=args.server_name,
                              progress=bar)
            except (ImportError, ProgrammingError, OperationalError) as exc:
                # pyarrow missing, a bad destination or state file, a collector that is
                # unreachable or fails TLS: input errors (a tampered log raises
                # AuditIntegrityError, exit 1)
                raise CLIError(str(exc)) from None
    finally:
        conn.close()
    if args.json:
        sys.stdout.write(json.dumps(vars(result), indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(describe_result(result, args.to) + "\n")
    return EXIT_OK
