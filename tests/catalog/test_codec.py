"""vmaccel.catalog.codec: chunk ids, compression kept only when it shrinks, authenticated
encryption."""

from __future__ import annotations

import os

import blake3
import pytest

from vmaccel.catalog.codec import FLAG_ENCRYPTED, FLAG_ZSTD, ChunkCodec
from vmaccel.catalog.key import MasterKey
from vmaccel.vocabulary.errors import ChunkCorrupt

TEXT = b"the quick brown fox jumps over the lazy dog\n" * 1500


def test_unkeyed_id_is_plain_blake3() -> None:
    codec = ChunkCodec(3, None)
    assert codec.chunk_id(TEXT) == blake3.blake3(TEXT).digest()
    assert codec.chunk_id(memoryview(TEXT)) == codec.chunk_id(TEXT)


def test_keyed_id_depends_on_the_id_key() -> None:
    k1, k2 = MasterKey.generate(), MasterKey.generate()
    a, b = ChunkCodec(3, k1), ChunkCodec(3, k2)
    assert a.chunk_id(TEXT) == blake3.blake3(TEXT, key=k1.id_key).digest()
    assert a.chunk_id(TEXT) != b.chunk_id(TEXT)
    assert a.chunk_id(TEXT) != ChunkCodec(3, None).chunk_id(TEXT)
    assert a.chunk_id(TEXT) == ChunkCodec(None, k1).chunk_id(TEXT)  # id ignores compression


def test_compressible_data_is_compressed_and_round_trips() -> None:
    codec = ChunkCodec(3, None)
    enc = codec.encode(TEXT)
    assert enc.flags == FLAG_ZSTD
    assert len(enc.payload) < len(TEXT) // 10
    assert enc.raw_len == len(TEXT)
    assert codec.decode(enc.id, enc.flags, enc.raw_len, enc.payload) == TEXT


def test_incompressible_data_is_stored_raw() -> None:
    codec = ChunkCodec(3, None)
    data = os.urandom(65536)
    enc = codec.encode(data)
    assert enc.flags == 0
    assert enc.payload == data
    assert codec.decode(enc.id, enc.flags, enc.raw_len, enc.payload) == data


def test_compression_disabled_stores_raw() -> None:
    codec = ChunkCodec(None, None)
    enc = codec.encode(TEXT)
    assert enc.flags == 0 and enc.payload == TEXT


def test_given_id_is_used() -> None:
    codec = ChunkCodec(3, None)
    cid = codec.chunk_id(TEXT)
    assert codec.encode(TEXT, cid).id == cid


def test_encrypted_round_trip_hides_plaintext() -> None:
    codec = ChunkCodec(3, MasterKey.generate())
    marker = b"PLAINTEXT-MARKER-0123456789" * 10
    for data in (TEXT + marker, os.urandom(4096) + marker):
        enc = codec.encode(data)
        assert enc.flags & FLAG_ENCRYPTED
        assert b"PLAINTEXT-MARKER" not in enc.payload
        assert codec.decode(enc.id, enc.flags, enc.raw_len, enc.payload) == data


def test_encryption_uses_fresh_nonces() -> None:
    codec = ChunkCodec(3, MasterKey.generate())
    a, b = codec.encode(TEXT), codec.encode(TEXT)
    assert a.id == b.id
    assert a.payload != b.payload


def _flip(payload: bytes, at: int) -> bytes:
    b = bytearray(payload)
    b[at] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("key", [None, MasterKey.generate()], ids=["plain", "repokey"])
@pytest.mark.parametrize("at", [0, -1, 20])
def test_tampered_payload_raises_chunk_corrupt(key: MasterKey | None, at: int) -> None:
    codec = ChunkCodec(3, key)
    for data in (TEXT, os.urandom(8192)):
        enc = codec.encode(data)
        with pytest.raises(ChunkCorrupt, match=enc.id.hex()[:16]):
            codec.decode(enc.id, enc.flags, enc.raw_len, _flip(enc.payload, at))


def test_encrypted_payload_is_bound_to_its_id() -> None:
    """The id is associated data: a valid payload moved under another id fails."""
    codec = ChunkCodec(3, MasterKey.generate())
    a, b = codec.encode(TEXT), codec.encode(TEXT[:-1] + b"!")
    with pytest.raises(ChunkCorrupt, match="authentication"):
        codec.decode(b.id, a.flags, a.raw_len, a.payload)


def test_encrypted_payload_is_bound_to_its_flags() -> None:
    codec = ChunkCodec(3, MasterKey.generate())
    enc = codec.encode(TEXT)
    with pytest.raises(ChunkCorrupt, match="authentication"):
        codec.decode(enc.id, enc.flags & ~FLAG_ZSTD, enc.raw_len, enc.payload)


def test_other_key_cannot_decrypt() -> None:
    enc = ChunkCodec(3, MasterKey.generate()).encode(TEXT)
    with pytest.raises(ChunkCorrupt):
        ChunkCodec(3, MasterKey.generate()).decode(enc.id, enc.flags, enc.raw_len, enc.payload)


def test_encrypted_chunk_in_plain_repository_is_refused() -> None:
    enc = ChunkCodec(3, MasterKey.generate()).encode(TEXT)
    with pytest.raises(ChunkCorrupt, match="encrypted"):
        ChunkCodec(3, None).decode(enc.id, enc.flags, enc.raw_len, enc.payload)


def test_wrong_id_or_length_raises() -> None:
    codec = ChunkCodec(3, None)
    enc = codec.encode(TEXT)
    other = codec.chunk_id(b"other")
    with pytest.raises(ChunkCorrupt, match="content hash"):
        codec.decode(other, enc.flags, enc.raw_len, enc.payload)
    with pytest.raises(ChunkCorrupt):
        codec.decode(enc.id, enc.flags, enc.raw_len - 1, enc.payload)
    raw = codec.encode(os.urandom(100))
    with pytest.raises(ChunkCorrupt, match="content hash"):
        codec.decode(raw.id, raw.flags, raw.raw_len, _flip(raw.payload, 5))


def test_codec_is_thread_safe() -> None:
    from concurrent.futures import ThreadPoolExecutor

    codec = ChunkCodec(3, MasterKey.generate())
    blocks = [TEXT + i.to_bytes(4, "little") for i in range(64)]
    with ThreadPoolExecutor(4) as pool:
        encs = list(pool.map(codec.encode, blocks))
        outs = list(pool.map(lambda e: codec.decode(e.id, e.flags, e.raw_len, e.payload), encs))
    assert outs == blocks
