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

Batches: ``chunk_ids``, ``encode_many``, ``decode_many`` and ``decode_many_into`` do the same
per block for a whole task. With the compiled ``_chunkcodec`` (scripts/build_native.sh) a batch
takes one GIL release instead of one per zstd and BLAKE3 call, which is what lets two threads
use two cores; without it they loop over the per-chunk methods. Both give the same ids,
plaintexts and errors (tests/catalog/test_codec_batch.py); compressed bytes may differ between
zstd versions.

Thread safety: a codec may be shared by threads. zstd contexts are per thread; BLAKE3, zstd
and AES-GCM all release the GIL, so hashing and compression scale across cores.
"""

from __future__ import annotations

import secrets
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, cast

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
_TAG = 16

Buffer = bytes | memoryview
DecodeItem = tuple[bytes, int, Buffer, memoryview]
"""(chunk id, flags, stored payload, a view of exactly the plaintext's length to fill)."""
StoredItem = tuple[bytes, int, int, Buffer]
"""(chunk id, flags, plaintext length in bytes, stored payload): a chunk as its pack holds it."""


def _load_native() -> ModuleType | None:
    try:
        from vmaccel.catalog import _chunkcodec
    except ImportError:  # not built: the per-chunk Python path
        return None
    return _chunkcodec


NATIVE = _load_native()


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

    def __init__(
        self, compression_level: int | None, key: MasterKey | None, native: bool = True
    ) -> None:
        """``compression_level`` None disables compression; ``key`` None disables encryption;
        ``native`` False keeps the batches on the per-chunk Python path (for comparisons)."""
        self._level = compression_level
        self._key = key
        self._aead = _aesgcm(key.enc_key) if key else None
        self._local = threading.local()
        self._native = NATIVE if native else None

    def chunk_ids(self, data: memoryview, block_size: int) -> list[bytes | None]:
        """The id of each ``block_size`` block of ``data`` (the last may be short), None for
        a block of zero bytes only (a hole: never stored)."""
        if self._native is not None:
            key = self._key.id_key if self._key is not None else None
            ids: list[bytes | None] = self._native.chunk_ids(data, block_size, key)
            return ids
        zero = bytes(block_size)
        out: list[bytes | None] = []
        for pos in range(0, len(data), block_size):
            block = data[pos : pos + block_size]
            out.append(None if bytes(block) == zero[: len(block)] else self.chunk_id(block))
        return out

    def encode_many(self, blocks: Sequence[memoryview], ids: Sequence[bytes]) -> list[EncodedChunk]:
        """:meth:`encode` of each block with its id, compressed in one batch."""
        if self._native is None or self._level is None:
            return [self.encode(b, cid) for b, cid in zip(blocks, ids, strict=True)]
        frames = self._native.compress_many(blocks, self._level)
        out = []
        for block, cid, (frame, crc) in zip(blocks, ids, frames, strict=True):
            payload, flags = (frame, FLAG_ZSTD) if frame is not None else (bytes(block), 0)
            stored, flags = self._sealed(cid, payload, flags)
            if stored is not payload:  # the compiled crc covers the unsealed payload
                crc = zlib.crc32(stored)
            out.append(EncodedChunk(cid, flags, len(block), stored, crc))
        return out

    def decode_many(self, items: Sequence[StoredItem]) -> list[bytes | ChunkCorrupt]:
        """:meth:`decode` of each item, in one batch: per item its verified plaintext or the
        :class:`ChunkCorrupt` it raised."""
        if self._native is None:
            return [self._decode_or_error(*item) for item in items]
        got = self._native_batch(self._native, [(cid, f, p, n) for cid, f, n, p in items])
        return cast(list[bytes | ChunkCorrupt], got)  # a length as out: bytes when verified

    def decode_many_into(self, items: Sequence[DecodeItem]) -> list[ChunkCorrupt | None]:
        """:meth:`decode_into` of each item, in one batch. Per item None (its view holds the
        verified plaintext) or the :class:`ChunkCorrupt` it raised (its view unspecified)."""
        if self._native is None:
            return [self._decode_into_or_error(*item) for item in items]
        got = self._native_batch(self._native, items)
        return cast(list[ChunkCorrupt | None], got)  # a view as out: None when verified

    def _native_batch(
        self, native: ModuleType, items: Sequence[tuple[bytes, int, Buffer, memoryview | int]]
    ) -> list[bytes | ChunkCorrupt | None]:
        """The compiled decode of ``items`` (out: a view to fill, or a length for new bytes);
        encrypted payloads are opened here first."""
        result: list[bytes | ChunkCorrupt | None] = [None] * len(items)
        batch, where = [], []
        for i, (cid, flags, payload, out) in enumerate(items):
            try:
                opened = self._open(cid, flags, payload)
            except ChunkCorrupt as exc:
                result[i] = exc
                continue
            batch.append((cid, bool(flags & FLAG_ZSTD), opened, out))
            where.append(i)
        key = self._key.id_key if self._key is not None else None
        for i, got in zip(where, native.decode_many(batch, key), strict=True):
            if isinstance(got, str):
                cid = items[i][0]
                why = got.removeprefix("undecodable: ")
                result[i] = _mismatch(cid) if got == "mismatch" else _undecodable(cid, why)
            else:
                result[i] = got
        return result

    def _decode_or_error(
        self, chunk_id: bytes, flags: int, raw_len: int, payload: Buffer
    ) -> bytes | ChunkCorrupt:
        try:
            return self.decode(chunk_id, flags, raw_len, payload)
        except ChunkCorrupt as exc:
            return exc

    def _decode_into_or_error(
        self, chunk_id: bytes, flags: int, payload: Buffer, out: memoryview
    ) -> ChunkCorrupt | None:
        try:
            self.decode_into(chunk_id, flags, payload, out)
        except ChunkCorrupt as exc:
            return exc
        return None

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
        payload, flags = self._sealed(cid, payload, flags)
        return EncodedChunk(cid, flags, len(data), payload, zlib.crc32(payload))

    def _sealed(self, chunk_id: bytes, payload: bytes, flags: int) -> tuple[bytes, int]:
        """(payload, flags) as stored: in a ``repokey`` repository sealed with AES-256-GCM under
        a fresh nonce, the id and flags as associated data; otherwise as given."""
        if self._aead is None:
            return payload, flags
        flags |= FLAG_ENCRYPTED
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, payload, chunk_id + bytes([flags])), flags

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

    def decode_into(self, chunk_id: bytes, flags: int, payload: Buffer, out: memoryview) -> None:
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
        if len(payload) < _NONCE + _TAG:  # AESGCM refuses a short nonce with ValueError
            raise ChunkCorrupt(
                f"chunk {chunk_id.hex()[:16]} is too short to be sealed ({len(payload)} bytes)"
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


def _undecodable(chunk_id: bytes, exc: zstandard.ZstdError | str) -> ChunkCorrupt:
    return ChunkCorrupt(f"chunk {chunk_id.hex()[:16]} does not decompress: {exc}")


def _mismatch(chunk_id: bytes) -> ChunkCorrupt:
    return ChunkCorrupt(f"chunk {chunk_id.hex()[:16]} does not match its content hash")
