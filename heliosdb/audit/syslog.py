"""Syslog over TCP and TLS: RFC 5424 messages framed by RFC 6587 octet counting.

A collector (rsyslog's ``imtcp``, syslog-ng's ``network()``, Splunk, Elastic) receives one
frame per audit event::

    MSG-LEN SP SYSLOG-MSG          (RFC 6587 section 3.4.1, "octet counting")

``SYSLOG-MSG`` is an RFC 5424 message: PRI 13 (log audit) with severity 6 for a success
and 4 for a failure, APP-NAME ``heliosdb``, MSGID the operation, structured data
``[heliosdb@32473 db="<database id>" id="<event id>" ...]`` and, as MSG, either the stored
event as compact JSON (``body="json"``, the record of a JSONL export plus ``database_id``)
or an OCSF 6005 *Datastore Activity* event (``body="ocsf"``, the stored event in
``unmapped.heliosdb``, the database id in ``unmapped.heliosdb_database_id``). Every message
names its database and event, so a receiver can drop the duplicates that an at-least-once
sender may produce (``docs/EXPORT_FORMAT.md``, "Shipping").

TLS follows RFC 5425: the client verifies the collector's certificate against a CA file
(and its name against the host it dialled), and may present a certificate of its own.
Octet counting lets a message hold newlines, and no frame is ever cut: rsyslog's default
``maxMessageSize`` is 8 KiB, so raise it on the collector when events carry long queries
or row images.

This module only formats and sends; :mod:`heliosdb.audit.ship` decides what to send and
records what was sent.
"""
from __future__ import annotations

import json
import socket
import ssl
from typing import Iterable, Optional

from ..errors import OperationalError, ProgrammingError
from .events import AuditEvent
from .export import SYSLOG_SD_ID, format_ts_cached, hex_bytes, printable_ascii, sd_param_escape, event_record, \
    ocsf_event

__all__ = ["BODIES", "syslog_message", "frame", "SyslogSender"]

#: What MSG holds: the stored event as JSON, or an OCSF 6005 event.
BODIES = ("json", "ocsf")
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=hex_bytes)


def syslog_message(ev: AuditEvent, database_id: str, *, body: str = "json",
                   hostname: str = "-", app_name: str = "heliosdb",
                   sd_id: str = SYSLOG_SD_ID) -> bytes:
    """One RFC 5424 message (UTF-8, no trailing newline) for event ``ev`` of database
    ``database_id``; ``body`` is ``"json"`` or ``"ocsf"`` (see the module docstring)."""
    if body not in BODIES:
        raise ProgrammingError(f"unknown syslog body {body!r}: use one of {BODIES}")
    pri = 13 * 8 + (6 if ev.success == 1 else 4)
    ts = format_ts_cached(ev.ts_us) if type(ev.ts_us) is int else "-"
    params = [("db", database_id), ("id", ev.id), ("user", ev.user),
              ("session", ev.session_id), ("operation", ev.operation),
              ("target", ev.target), ("success", ev.success), ("rows", ev.affected_rows),
              ("prev", hex_bytes(ev.prev_hash)), ("checksum", hex_bytes(ev.checksum))]
    sd = "[" + sd_id + "".join(f' {k}="{sd_param_escape(v)}"' for k, v in params if v is not None) \
        + "]"
    if body == "ocsf":
        obj = ocsf_event(ev)
        obj["unmapped"]["heliosdb_database_id"] = database_id
    else:
        obj = event_record(ev)
        obj["database_id"] = database_id
    head = (f"<{pri}>1 {ts} {printable_ascii(hostname, 255)} {printable_ascii(app_name, 48)} - "
            f"{printable_ascii(str(ev.operation), 32)} {sd} ")
    return (head + _JSON.encode(obj)).encode("utf-8")


def frame(message: bytes) -> bytes:
    """RFC 6587 octet-counted frame: the message's length in bytes, a space, the message."""
    return b"%d " % len(message) + message


class SyslogSender:
    """A TCP (or TLS) connection to a syslog collector that sends framed messages.

    ``tls=True`` verifies the collector's certificate against ``ca_file`` (the system's
    trust store when None) and its name against ``server_name`` (default ``host``);
    ``cert_file``/``key_file`` present a client certificate. ``send`` returns once the
    kernel took every byte; :meth:`finish` closes and confirms that the collector read
    them (syslog has no application-level acknowledgement: that is the most it says).
    ``timeout`` bounds connecting, each send and the wait for the collector's close.
    """

    def __init__(self, host: str, port: int, *, tls: bool = False,
                 ca_file: Optional[str] = None, cert_file: Optional[str] = None,
                 key_file: Optional[str] = None, server_name: Optional[str] = None,
                 timeout: float = 30.0) -> None:
        self.address = f"{'tls' if tls else 'tcp'}://{host}:{port}"
        self.timeout = timeout
        try:
            ctx = None
            if tls:
                ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 5425 with RFC 9325
                if cert_file:
                    ctx.load_cert_chain(cert_file, key_file)
            elif ca_file or cert_file:
                raise ProgrammingError("a CA or client certificate was given for plain TCP: "
                                       "use syslog+tls:// to encrypt")
        except (OSError, ssl.SSLError) as exc:
            raise ProgrammingError(f"cannot load the TLS files for {self.address} "
                                   f"(--ca {ca_file}, --cert {cert_file}): {exc}") from None
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise OperationalError(f"cannot connect to the syslog collector at "
                                   f"{self.address}: {exc}") from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = (ctx.wrap_socket(raw, server_hostname=server_name or host)
                          if ctx is not None else raw)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise OperationalError(f"the syslog collector at {self.address} presented a "
                                   f"certificate that does not verify against "
                                   f"{ca_file or 'the system CAs'}: {exc.verify_message}") \
                from None
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise OperationalError(f"TLS handshake with {self.address} failed: {exc}") \
                from None

    def send(self, messages: Iterable[bytes]) -> int:
        """Send each message as one frame; return the bytes sent."""
        data = b"".join(frame(m) for m in messages)
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise OperationalError(f"sending to the syslog collector at {self.address} "
                                   f"failed: {exc}") from None
        return len(data)

    def finish(self) -> None:
        """Close, and confirm that the collector read everything: our TLS close_notify
        and FIN, then wait for the collector to close its side. A collector closes
        cleanly only after reading to our end of stream; one that refused us (a TLS 1.3
        client certificate is checked after the client's handshake ends) or dropped the
        connection resets it instead, and this raises OperationalError: the messages must
        be sent again. This is the only confirmation syslog gives: it says the collector
        read the bytes, not that it stored them."""
        sock = self._sock
        sock.settimeout(self.timeout)
        try:
            if isinstance(sock, ssl.SSLSocket):
                try:
                    sock = sock.unwrap()
                except ssl.SSLEOFError:
                    return  # it read our close_notify and closed without its own: fine
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise OperationalError(f"the syslog collector at {self.address} did not confirm "
                                   f"the messages by closing cleanly ({exc}): they will be "
                                   "sent again") from None
        finally:
            self._sock.close()
            sock.close()

    def close(self) -> None:
        """Close without confirmation (after an error)."""
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> "SyslogSender":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.finish()
        else:
            self.close()
