"""How a chunk's bytes become stored bytes and back: content id, compression, encryption.

Contract:
- ``chunk_id(data)`` is BLAKE3-256 of the plaintext, keyed with the repository's ``id_key``
  when the repository is encrypted. Equal content has equal ids across every VM, disk and
  backup in a repository; that is what deduplicates.
- ``encode`` compresses with zstd and keeps the result only if it is smaller; then, in
  ``repokey`` repositories, seals it with AES-256-GCM under a random 96-bit nonce, with the
  chunk id and flags as associated data (a payload cannot be swapped under another id).
  Stored layout when encrypted: ``nonce (12) || ciphertext || tag (16)``.
- ``decode`` reverses it and checks the content hash; any mismatch raises
  :class:`ChunkCorrupt`. Wrong bytes are never returned. ``decode_into`` does the same into a
  buffer the caller gives (no plaintext object); after :class:`ChunkCorrupt` that buffer holds
  unspecified bytes, which the caller must not use.

Thread safety: a codec may be shared by threads. zstd contexts are per thread; BLAKE3, zstd
and AES-GCM all release the GIL, so hashing and compression scale across cores.
"""

from __future__ import annotations

import secrets
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
import zstandard

from vmaccel.vocabulary.errors import ChunkCorrupt

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from vmaccel.catalog.key import MasterKey

ID_SIZE = 32
FLAG_ZSTD = 0x01
FLAG_ENCRYPTED = 0x02
_NONCE = 12

Buffer = bytes | memoryview


@dataclass(frozen=True)
class EncodedChunk:
    """A chunk ready to be appended to a pack. ``raw_len`` is the plaintext length in bytes.

    ``crc`` is the crc32 of ``payload`` (the pack entry checksum), computed by ``encode`` so
    that worker threads pay for it rather than the single pack-writer thread.
    """

    id: bytes
    flags: int
    raw_len: int
    payload: bytes
    crc: int


class ChunkCodec:
    """Names, compresses, encrypts and verifies chunks for one repository."""

    def __init__(self, compression_level: int | None, key: MasterKey | None) -> None:
        """``compression_level`` None disables compression; ``key`` None disables encryption."""
        self._level = compression_level
        self._key = key
        self._aead = _aesgcm(key.enc_key) if key else None
        self._local = threading.local()

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        if self._key is not None:
            return blake3.blake3(data, key=self._key.id_key).digest()
        return blake3.blake3(data).digest()

    def encode(self, data: bytes | memoryview, chunk_id: bytes | None = None) -> EncodedChunk:
        """Encode ``data`` (its id computed unless given). Safe to call from worker threads."""
        cid = chunk_id if chunk_id is not None else self.chunk_id(data)
        flags = 0
        packed = self._compressor().compress(data) if self._level is not None else None
        if packed is not None and len(packed) < len(data):
            payload, flags = packed, FLAG_ZSTD
        else:  # copied only when stored as is (a memoryview ``data`` is not kept)
            payload = data if isinstance(data, bytes) else bytes(data)
        if self._aead is not None:
            flags |= FLAG_ENCRYPTED
            nonce = secrets.token_bytes(_NONCE)
            payload = nonce + self._aead.encrypt(nonce, payload, cid + bytes([flags]))
        return EncodedChunk(cid, flags, len(data), payload, zlib.crc32(payload))

    def decode(self, chunk_id: bytes, flags: int, raw_len: int, payload: Buffer) -> bytes:
        """Return the plaintext of a stored chunk, verified against ``chunk_id``."""
        data = self._open(chunk_id, flags, payload)
        if flags & FLAG_ZSTD:
            try:
                data = self._decompressor().decompress(data, max_output_size=raw_len)
            except zstandard.ZstdError as exc:
                raise _undecodable(chunk_id, exc) from exc
        if len(data) != raw_len or self.chunk_id(data) != chunk_id:
            raise _mismatch(chunk_id)
        return data if isinstance(data, bytes) else bytes(data)

    def decode_into(
        self, chunk_id: bytes, flags: int, payload: Buffer, out: memoryview
    ) -> None:
        """Write the plaintext of a stored chunk into ``out`` (exactly its length in bytes),
        verified against ``chunk_id``: :meth:`decode` without the plaintext object and the copy
        out of it. On :class:`ChunkCorrupt` the bytes in ``out`` are unspecified."""
        data = self._open(chunk_id, flags, payload)
        if flags & FLAG_ZSTD:
            n = 0
            try:
                with self._decompressor().stream_reader(data) as reader:
                    while n < len(out) and (got := reader.readinto(out[n:])):
                        n += got
            except zstandard.ZstdError as exc:
                raise _undecodable(chunk_id, exc) from exc
        elif (n := len(data)) == len(out):
            out[:] = data
        if n != len(out) or self.chunk_id(out) != chunk_id:
            raise _mismatch(chunk_id)

    def _open(self, chunk_id: bytes, flags: int, payload: Buffer) -> Buffer:
        """The payload, decrypted and authenticated when the chunk is encrypted."""
        if not flags & FLAG_ENCRYPTED:
            return payload
        if self._aead is None:
            raise ChunkCorrupt(
                f"chunk {chunk_id.hex()[:16]} is encrypted but the repository is not"
            )
        from cryptography.exceptions import InvalidTag  # loaded with the key (see _aesgcm)

        try:
            return self._aead.decrypt(
                bytes(payload[:_NONCE]), payload[_NONCE:], chunk_id + bytes([flags])
            )
        except InvalidTag:
            raise ChunkCorrupt(
                f"chunk {chunk_id.hex()[:16]} fails authentication (damaged or tampered)"
            ) from None

    def _compressor(self) -> zstandard.ZstdCompressor:
        comp: zstandard.ZstdCompressor | None = getattr(self._local, "comp", None)
        if comp is None:
            comp = zstandard.ZstdCompressor(level=self._level or 3, write_content_size=True)
            self._local.comp = comp
        return comp

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        dec: zstandard.ZstdDecompressor | None = getattr(self._local, "dec", None)
        if dec is None:
            dec = zstandard.ZstdDecompressor()
            self._local.dec = dec
        return dec


def _aesgcm(key: bytes) -> AESGCM:
    """The AEAD of an encrypted repository (cryptography is imported only for those: ~19 ms
    of every command's start-up otherwise)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _undecodable(chunk_id: bytes, exc: zstandard.ZstdError) -> ChunkCorrupt:
    return ChunkCorrupt(f"chunk {chunk_id.hex()[:16]} does not decompress: {exc}")


def _mismatch(chunk_id: bytes) -> ChunkCorrupt:
    return ChunkCorrupt(f"chunk {chunk_id.hex()[:16]} does not match its content hash")
