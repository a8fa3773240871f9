"""The server's TLS certificate: the one given, or a self-signed one made on first start.

The self-signed certificate (ECDSA P-256, valid ten years, names ``localhost``, the host's
name and the loopback addresses) and its key are kept in ``<config dir>/tls/`` (directory
0700, files 0600) and reused by every later start, so a client that pinned its fingerprint
keeps trusting it. The SHA-256 fingerprint is what ``vmaccel serve`` prints.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vmaccel.catalog.durable import make_private_dir, write_file_durably
from vmaccel.vocabulary.errors import UsageError

CERT_NAME, KEY_NAME = "serve-cert.pem", "serve-key.pem"
VALID_DAYS = 3650


@dataclass(frozen=True)
class ServerCertificate:
    """PEM files of the certificate and its key; ``self_signed`` when vmaccel made them."""

    cert: Path
    key: Path
    self_signed: bool

    @property
    def fingerprint_sha256(self) -> str:
        """``AB:CD:...``: SHA-256 of the certificate (the leaf, DER)."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


def server_certificate(
    config_dir: Path, cert: Path | None = None, key: Path | None = None
) -> ServerCertificate:
    """The certificate to serve: ``cert`` and ``key`` when given (both or neither), else the
    self-signed pair of ``config_dir`` (made now when missing)."""
    if (cert is None) != (key is None):
        raise UsageError("give both a TLS certificate and its key, or neither")
    if cert is not None and key is not None:
        for path in (cert, key):
            if not path.is_file():
                raise UsageError(f"the TLS file {path} does not exist")
        return ServerCertificate(cert.absolute(), key.absolute(), False)
    where = config_dir / "tls"
    found = ServerCertificate(where / CERT_NAME, where / KEY_NAME, True)
    if not (found.cert.is_file() and found.key.is_file()):
        config_dir.mkdir(parents=True, exist_ok=True)
        make_private_dir(where)
        cert_pem, key_pem = self_signed_pair(socket.gethostname())
        write_file_durably(found.key, key_pem)  # 0600
        write_file_durably(found.cert, cert_pem)
    return found


def self_signed_pair(hostname: str) -> tuple[bytes, bytes]:
    """(certificate PEM, unencrypted PKCS#8 key PEM) for ``hostname``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vmaccel on {hostname}"[:64])])
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
