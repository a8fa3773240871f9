"""Key material of an encrypted (``repokey``) repository.

A random :class:`MasterKey` is made at ``repo init``. It is stored in the repository's ``key``
object (a file, mode 0600, in a local repository) wrapped (AES-256-GCM) by a key-encryption
key derived from the passphrase with scrypt, with the repository id as associated data so a
key file cannot be moved to another repository. The master key has two independent halves:
``enc_key`` encrypts chunks, ``id_key`` keys the content hash that names them, so chunk ids
reveal nothing about content to someone without it.

``cryptography`` is imported by the functions that use it, so that commands on repositories
without encryption do not pay for loading it (~19 ms of start-up).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from vmaccel.catalog.objectstore import ObjectStore
from vmaccel.vocabulary.errors import PassphraseError, RepositoryError

OBJECT = "key"  # the object key of the wrapped master key

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


@dataclass(frozen=True, repr=False)
class MasterKey:
    """Two 32-byte keys. ``repr`` never shows them."""

    enc_key: bytes
    id_key: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(32), secrets.token_bytes(32))

    def __repr__(self) -> str:
        return "MasterKey(<secret>)"


def _kek(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def wrap_key(key: MasterKey, passphrase: str, repo_id: bytes) -> bytes:
    """Return the ``key`` file contents: ``key`` encrypted under a passphrase-derived key."""
    if not passphrase:
        raise PassphraseError("an encrypted repository needs a non-empty passphrase")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    kek = _kek(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    wrapped = AESGCM(kek).encrypt(nonce, key.enc_key + key.id_key, repo_id)
    doc = {
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": salt.hex(),
        "nonce": nonce.hex(),
        "wrapped": wrapped.hex(),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def unwrap_key(data: bytes, passphrase: str, repo_id: bytes) -> MasterKey:
    """Open a ``key`` file. A wrong passphrase raises :class:`PassphraseError`."""
    try:
        doc: dict[str, Any] = json.loads(data)
        salt, nonce = bytes.fromhex(doc["salt"]), bytes.fromhex(doc["nonce"])
        wrapped = bytes.fromhex(doc["wrapped"])
        n, r, p = int(doc["n"]), int(doc["r"]), int(doc["p"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RepositoryError(f"the repository key file is damaged: {exc}") from exc
    if doc.get("kdf") != "scrypt":
        raise RepositoryError(f"unknown key derivation {doc.get('kdf')!r} in the key file")
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        raw = AESGCM(_kek(passphrase, salt, n, r, p)).decrypt(nonce, wrapped, repo_id)
    except InvalidTag:
        raise PassphraseError(
            "wrong passphrase for this repository (set VMACCEL_PASSPHRASE or type it again)"
        ) from None
    return MasterKey(raw[:32], raw[32:])


def save_key(store: ObjectStore, key: MasterKey, passphrase: str, repo_id: bytes) -> None:
    """Write the ``key`` object (durably; never over an existing one)."""
    store.put(OBJECT, wrap_key(key, passphrase, repo_id))
