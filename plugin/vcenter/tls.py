"""TLS trust for vCenter connections: pinned thumbprints or a CA file, never the defaults.

The machine may set ``REQUESTS_CA_BUNDLE``, which silently overrides ``Session.verify``; so
every ``requests`` session here is built with ``trust_env = False`` and explicit verification.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from plugin.errors import CertificateMismatch, ConnectionFailed
from plugin.vcenter.models import TlsTrust


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
    return hashlib.sha1(der).hexdigest(), hashlib.sha256(der).hexdigest()


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


class _PinnedAdapter(HTTPAdapter):
    """Verifies the pinned SHA-256 fingerprint on every connection (urllib3's
    ``assert_fingerprint``); the CA chain is deliberately not consulted."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["assert_fingerprint"] = self._fingerprint
        kwargs["cert_reqs"] = "CERT_NONE"
        super().init_poolmanager(*args, **kwargs)


class _PinnedSession(requests.Session):
    """A session whose ``https://`` adapter stays the pinned one.

    The vSphere Automation SDK mounts its own ``HTTPAdapter`` on the session it is given (to
    size the pool) before logging in; with the pin living in the adapter and ``verify`` off,
    that would silently send the password to any server. Later mounts for HTTPS are refused.
    """

    def mount(self, prefix: str | bytes, adapter: requests.adapters.BaseAdapter) -> None:
        current = self.adapters.get("https://")
        text = prefix.decode() if isinstance(prefix, bytes) else prefix
        if isinstance(current, _PinnedAdapter) and text.lower().startswith("https"):
            return
        super().mount(prefix, adapter)


def requests_session(trust: TlsTrust) -> requests.Session:
    """A ``requests`` session that verifies exactly as ``trust`` says (environment ignored)."""
    session = requests.Session() if trust.ca_file is not None else _PinnedSession()
    session.trust_env = False
    if trust.ca_file is not None:
        session.verify = trust.ca_file
    else:
        assert trust.thumbprint is not None
        session.verify = False  # the adapter asserts the pinned fingerprint instead
        # urllib3 would warn about "unverified" requests: they are verified by the pin.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        session.mount("https://", _PinnedAdapter(trust.thumbprint))
    return session
