"""TLS trust for vCenter connections: pinned thumbprints or a CA file, never the defaults.

The machine may set ``REQUESTS_CA_BUNDLE``, which silently overrides ``Session.verify``; so
every ``requests`` session here is built with ``trust_env = False`` and explicit verification.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from typing import TYPE_CHECKING

from vmaccel.plugin.vcenter.models import TlsTrust
from vmaccel.vocabulary.errors import CertificateMismatch, ConnectionFailed

if TYPE_CHECKING:
    import requests


def server_certificate(host: str, port: int, timeout: float = 10.0) -> bytes:
    """The DER certificate a TLS server presents (not verified: this is for pinning)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailed(f"cannot reach {host}:{port}: {exc}") from exc
    if der is None:
        raise ConnectionFailed(f"{host}:{port} presented no certificate")
    return der


def thumbprints(der: bytes) -> tuple[str, str]:
    """(SHA-1, SHA-256) thumbprints as lowercase hex without separators."""
    return hashlib.sha1(der, usedforsecurity=False).hexdigest(), hashlib.sha256(der).hexdigest()


def normalize_thumbprint(text: str) -> str:
    value = text.replace(":", "").replace(" ", "").lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise CertificateMismatch(f"{text!r} is not a SHA-256 thumbprint (64 hex digits)")
    return value


class _PinnedSocket(ssl.SSLSocket):
    """A TLS socket that accepts exactly one certificate, checked at every handshake."""

    pinned_sha256 = ""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        der = self.getpeercert(binary_form=True) or b""
        seen = hashlib.sha256(der).hexdigest()
        if seen != self.pinned_sha256:
            self.close()
            raise CertificateMismatch(
                f"the server certificate (SHA-256 {seen}) does not match the pinned thumbprint "
                f"{self.pinned_sha256}; if it was renewed on purpose, add the vCenter again"
            )


def ssl_context(trust: TlsTrust) -> ssl.SSLContext:
    """An SSL context verifying exactly as ``trust`` says: against the CA file only (not the
    system store), or by comparing the certificate with the pinned thumbprint after each
    handshake (the chain is not checked then: the pin is the trust)."""
    if trust.ca_file is not None:
        return ssl.create_default_context(cafile=trust.ca_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    pinned = type("PinnedSocket", (_PinnedSocket,), {"pinned_sha256": trust.thumbprint})
    ctx.sslsocket_class = pinned
    return ctx


def requests_session(trust: TlsTrust) -> requests.Session:
    """A ``requests`` session that verifies exactly as ``trust`` says (environment ignored).

    ``requests`` loads on first use: SOAP-only runs (file and NBD transports) never need it.
    """
    from vmaccel.plugin.vcenter.tls_requests import requests_session as make

    return make(trust)
