"""Test helpers for syslog shipping: a self-made CA (with the ``cryptography`` package), a
loopback collector in Python that reads RFC 6587 octet-counted frames over TCP or TLS, and
a parser of the RFC 5424 messages HeliosDB sends."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Optional

_SD = re.compile(r'\[heliosdb@32473 db="([0-9a-f]+|unknown)" id="(\d+)"')


def make_pki(folder: Path, *, client: bool = False) -> dict:
    """A CA, a server certificate for localhost / 127.0.0.1 signed by it, and (``client``)
    a client certificate; PEM files in ``folder``. Returns their paths by name."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("HeliosDB test CA"))
          .issuer_name(name("HeliosDB test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(cn: str, usage, sans) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(hours=1))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 ca_key.public_key()), critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    cert, key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                     [x509.DNSName("localhost"),
                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    out["server_cert"], out["server_key"] = folder / "server.pem", folder / "server.key"
    out["server_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(key, out["server_key"])
    if client:
        cert, key = leaf("device-17", ExtendedKeyUsageOID.CLIENT_AUTH, None)
        out["client_cert"], out["client_key"] = folder / "client.pem", folder / "client.key"
        out["client_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, out["client_key"])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FrameCollector:
    """A loopback syslog collector (TCP, or TLS with ``pki``) in a thread: every frame it
    reads, in arrival order, is in ``messages``; ``peer_certs`` holds the subject CN of
    each client certificate presented (when ``require_client_cert``)."""

    def __init__(self, pki: Optional[dict] = None, *, require_client_cert: bool = False):
        self.messages: list[bytes] = []
        self.peer_certs: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._ctx = None
        if pki is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
            if require_client_cert:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(pki["ca"])
            self._ctx = ctx
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(8)
        self.port = self._srv.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._srv.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self._ctx is not None:
                sock = self._ctx.wrap_socket(sock, server_side=True)
                peer = sock.getpeercert()
                if peer:
                    cn = dict(x[0] for x in peer["subject"]).get("commonName")
                    self.peer_certs.append(cn)
            f = sock.makefile("rb")
            while True:
                digits = b""
                while True:
                    c = f.read(1)
                    if not c:
                        return
                    if c == b" ":
                        break
                    if not c.isdigit():
                        raise ValueError(f"frame length holds {c!r}")
                    digits += c
                msg = f.read(int(digits))
                with self._lock:
                    self.messages.append(msg)
        except (OSError, ValueError, ssl.SSLError) as exc:
            self.errors.append(repr(exc))
        finally:
            sock.close()

    def wait_idle(self) -> None:
        """Wait until every connection accepted so far has been read to its end."""
        for t in list(self._threads):
            t.join(timeout=60)

    def close(self) -> None:
        self._srv.close()


def parse_message(msg: bytes) -> dict:
    """A HeliosDB RFC 5424 message: ``pri``, ``msgid``, ``db``, ``id`` and ``body`` (the
    parsed JSON of MSG)."""
    text = msg.decode("utf-8")
    m = re.match(r"<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) ", text)
    assert m, text[:200]
    sd = _SD.search(text)
    assert sd, text[:300]
    from heliosdb.audit.export import _sd_end

    end = _sd_end(text, m.end())  # MSG follows the structured data and one space
    assert text[end] == " ", text[:300]
    return {"pri": int(m.group(1)), "app": m.group(4), "msgid": m.group(6),
            "db": sd.group(1), "id": int(sd.group(2)), "body": json.loads(text[end:])}
