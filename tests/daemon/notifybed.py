"""Small real receivers for the notification tests: a self-signed certificate, an SMTP server
(aiosmtpd) with STARTTLS or implicit TLS and AUTH, and an HTTP(S) server that records POSTs."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

USER, PASSWORD = "vmaccel", "s3cret-pass"


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path
    sha256: str  # hex of the DER certificate

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def make_cert(directory: Path) -> Cert:
    """A self-signed certificate for 127.0.0.1 and localhost (valid one day)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmaccel test receiver")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return Cert(cert_path, key_path, digest)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    """What the SMTP server received: (envelope, parsed message, authenticated user, TLS)."""

    mails: list[tuple[Envelope, Message, str | None, bool]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        user = login.decode() if login else None
        tls = server.transport is not None and server.transport.get_extra_info("ssl_object")
        self.mails.append((envelope, message_from_bytes(content), user, bool(tls)))
        return "250 OK"


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@contextmanager
def smtp_server(cert: Cert, implicit_tls: bool = False) -> Iterator[tuple[int, Mailbox]]:
    """An SMTP server on 127.0.0.1 requiring TLS (STARTTLS, or implicit) and AUTH."""
    mailbox, port = Mailbox(), free_port()
    # aiosmtpd's auth_require_tls looks at STARTTLS only; with implicit TLS every byte is
    # encrypted from the start, so the flag must be off there for AUTH to be offered.
    tls: dict[str, Any] = (
        {"ssl_context": cert.server_context(), "auth_require_tls": False}
        if implicit_tls
        else {
            "tls_context": cert.server_context(),
            "require_starttls": True,
            "auth_require_tls": True,
        }
    )
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=_authenticate,
        auth_required=True,
        server_hostname="127.0.0.1",
        **tls,
    )
    controller.start()
    try:
        yield port, mailbox
    finally:
        controller.stop()


@dataclass
class Receiver:
    """An HTTP server recording ``(path, json body)`` of every POST; answers ``status``."""

    server: ThreadingHTTPServer
    posts: list[tuple[str, dict[str, Any]]]
    status: list[int]

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


@contextmanager
def http_receiver(port: int = 0, cert: Cert | None = None, status: int = 200) -> Iterator[Receiver]:
    posts: list[tuple[str, dict[str, Any]]] = []
    answer = [status]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            posts.append((self.path, json.loads(body)))
            self.send_response(answer[0])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if cert is not None:
        server.socket = cert.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(server, posts, answer)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
