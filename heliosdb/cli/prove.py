"""``heliosdb prove``: RFC 6962 Merkle proofs of the audit log, made and checked.

::

    heliosdb prove inclusion FILE --event ID --checkpoint CP [--out PROOF.json]
    heliosdb prove consistency FILE --old CP1 --new CP2 [--out PROOF.json]
    heliosdb prove check PROOF.json --verify-key KEYFILE

``inclusion`` and ``consistency`` open the database (with its key options) and write the
proof as JSON (``docs/EXPORT_FORMAT.md``: format and a stdlib-only checker); ``check``
needs no database: it checks a proof against the signed checkpoint(s) it carries, with
the key given (never the key the proof carries). Exit status 0 when the proof was made
or verifies, 1 when it does not verify, 2 for a usage or input error.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from .common import CLIError, EXIT_FAILED, EXIT_OK, load_verify_key

__all__ = ["add_parser", "cmd_prove"]


def add_parser(sub: Any, common: Callable[..., None],
               open_audited: Callable[[argparse.Namespace], Any]) -> None:
    """Register ``prove`` on the subcommand parsers (``common`` adds the key options)."""
    p = sub.add_parser("prove", help="make or check Merkle inclusion/consistency proofs",
                       description="Make an RFC 6962 inclusion proof of an audit event, or a "
                                   "consistency proof between two signed checkpoints, as "
                                   "JSON; or check one (docs/EXPORT_FORMAT.md).")
    ps = p.add_subparsers(dest="prove_what", metavar="WHAT", parser_class=type(p))
    ps.required = True
    q = ps.add_parser("inclusion", help="prove that an event is in a signed tree")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--event", type=int, required=True, metavar="ID", help="the event id")
    q.add_argument("--checkpoint", required=True, metavar="CP",
                   help="version 2 checkpoint file whose tree holds the event")
    q.add_argument("--archive", action="append", metavar="F",
                   help="retention archive holding purged events (repeatable; default: "
                        "the archives next to the database)")
    q.add_argument("--out", "-o", metavar="F", help="write the proof here (default: stdout)")
    common(q)
    q = ps.add_parser("consistency", help="prove that a later signed tree extends an earlier")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--old", required=True, metavar="CP", help="the earlier checkpoint file")
    q.add_argument("--new", required=True, metavar="CP", help="the later checkpoint file")
    q.add_argument("--archive", action="append", metavar="F",
                   help="retention archive holding purged events (repeatable)")
    q.add_argument("--out", "-o", metavar="F", help="write the proof here (default: stdout)")
    common(q)
    q = ps.add_parser("check", help="check a proof against its signed checkpoint(s)")
    q.add_argument("proof", metavar="PROOF.json")
    q.add_argument("--verify-key", metavar="KEYFILE",
                   help="the checkpoint signer's key: the signing key, an Ed25519 public key "
                        "(PEM) or the HMAC secret (default $HELIOSDB_SIGNING_KEY_FILE)")
    q.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=cmd_prove, open_audited=open_audited)


def _write(proof: dict, out: Any) -> None:
    text = json.dumps(proof, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
        sys.stderr.write(f"heliosdb: proof written to {out}\n")
    else:
        sys.stdout.write(text)


def cmd_prove(args: argparse.Namespace) -> int:
    from ..audit import merkle

    if args.prove_what == "check":
        try:
            proof = merkle._load(args.proof)
            texts = [proof.get("checkpoint") or proof.get("new_checkpoint")]
            from ..audit.checkpoint import Checkpoint
            cp = Checkpoint.from_text(texts[0])
        except Exception as exc:  # noqa: BLE001 - unreadable proof: input error
            raise CLIError(f"{args.proof}: not a HeliosDB proof ({exc})") from None
        import os
        if not (args.verify_key or os.environ.get("HELIOSDB_SIGNING_KEY_FILE")):
            raise CLIError("a proof is checked against the checkpoint signer's key: give it "
                           "with --verify-key FILE (a proof's own key proves nothing)",
                           EXIT_FAILED)
        keys = load_verify_key(cp, args.verify_key)
        try:
            res = merkle.check_proof(proof, **keys)
        except merkle.MerkleProofError as exc:
            sys.stdout.write(f"proof: FAILED: {exc}\n")
            return EXIT_FAILED
        if "event_id" in res:
            sys.stdout.write(f"proof: OK: event {res['event_id']} is in the tree of "
                             f"{res['tree_size']} events signed by checkpoint #{res['seq']}\n")
        else:
            sys.stdout.write(f"proof: OK: the tree of {res['second_size']} events (checkpoint "
                             f"#{res['seqs'][1]}) extends the tree of {res['first_size']} "
                             f"events (checkpoint #{res['seqs'][0]})\n")
        return EXIT_OK
    conn = args.open_audited(args)  # the opener commands.py hands in (no import back)
    try:
        if args.prove_what == "inclusion":
            proof = conn.audit.prove_inclusion(args.event, args.checkpoint,
                                               archives=args.archive)
        else:
            proof = conn.audit.prove_consistency(args.old, args.new, archives=args.archive)
    finally:
        conn.close()
    _write(proof, args.out)
    return EXIT_OK
