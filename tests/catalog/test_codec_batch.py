"""The codec's batches: the compiled path (``_chunkcodec``) against the per-chunk Python path.

Both must give the same chunk ids, the same plaintexts and the same kind of error for every
damaged chunk; each path must decode what the other encoded. Compressed bytes themselves may
differ (the compiled path links Debian's libzstd, python-zstandard bundles its own).
"""

from __future__ import annotations

import os
import random
import threading
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmaccel.catalog import codec as codec_module
from vmaccel.catalog.codec import FLAG_ENCRYPTED, FLAG_ZSTD, ChunkCodec, EncodedChunk
from vmaccel.catalog.key import MasterKey
from vmaccel.vocabulary.errors import ChunkCorrupt

BS = 64 * 1024
TEXT = b"".join(b"line %d of a guest's log file\n" % i for i in range(5000))[: 3 * BS]
KEY = MasterKey.generate()


def mixed_data(seed: int) -> bytes:
    """Text, random and zero blocks, a zero block with one byte set, a short tail."""
    rng = random.Random(seed)
    one = bytearray(BS)
    one[-1] = 1
    parts = [TEXT[:BS], rng.randbytes(BS), bytes(BS), bytes(one), TEXT[BS : 2 * BS], b"\0" * 100]
    return b"".join(parts) + rng.randbytes(777)


@pytest.fixture(params=["plain", "encrypted"])
def pair(request: pytest.FixtureRequest) -> tuple[ChunkCodec, ChunkCodec]:
    """(the compiled path, the Python path) of one repository's codec."""
    assert codec_module.NATIVE is not None, "the compiled codec is not built (scripts/setup.sh)"
    key = KEY if request.param == "encrypted" else None
    return ChunkCodec(3, key), ChunkCodec(3, key, native=False)


def encoded(codec: ChunkCodec, data: bytes) -> list[EncodedChunk]:
    view = memoryview(data)
    ids = codec.chunk_ids(view, BS)
    blocks = [view[i * BS : (i + 1) * BS] for i, cid in enumerate(ids) if cid is not None]
    return codec.encode_many(blocks, [cid for cid in ids if cid is not None])


def test_ids_are_equal_and_holes_are_none(pair: tuple[ChunkCodec, ChunkCodec]) -> None:
    native, python = pair
    data = memoryview(mixed_data(1))
    ids = native.chunk_ids(data, BS)
    assert ids == python.chunk_ids(data, BS)
    assert [cid is None for cid in ids] == [False, False, True, False, False, False]
    assert ids[0] == python.chunk_id(data[:BS])
    assert ids[-1] == python.chunk_id(data[5 * BS :])  # the short tail
    assert native.chunk_ids(memoryview(b""), BS) == []


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3 * 4096), st.integers(1, 4096), st.booleans())
def test_ids_match_for_any_bytes(data: bytes, block: int, keyed: bool) -> None:
    key = KEY if keyed else None
    ids = ChunkCodec(3, key).chunk_ids(memoryview(data), block)
    assert ids == ChunkCodec(3, key, native=False).chunk_ids(memoryview(data), block)


def test_each_path_decodes_what_the_other_encoded(pair: tuple[ChunkCodec, ChunkCodec]) -> None:
    data = mixed_data(2)
    blocks = [data[i : i + BS] for i in range(0, len(data), BS) if data[i : i + BS].strip(b"\0")]
    for writer, reader in (pair, pair[::-1]):
        chunks = encoded(writer, data)
        assert [c.raw_len for c in chunks] == [len(b) for b in blocks]
        for c in chunks:
            assert c.crc == zlib.crc32(c.payload)
            assert bool(c.flags & FLAG_ENCRYPTED) == (writer._key is not None)
        assert chunks[1].flags & FLAG_ZSTD == 0  # random bytes are stored as they are
        assert chunks[0].flags & FLAG_ZSTD and len(chunks[0].payload) < BS // 4
        items = [(c.id, c.flags, c.raw_len, c.payload) for c in chunks]
        assert reader.decode_many(items) == blocks
        outs = [bytearray(c.raw_len) for c in chunks]
        into = [
            (c.id, c.flags, c.payload, memoryview(o)) for c, o in zip(chunks, outs, strict=True)
        ]
        assert reader.decode_many_into(into) == [None] * len(chunks)
        assert [bytes(o) for o in outs] == blocks


def damaged(chunk: EncodedChunk) -> dict[str, tuple[bytes, int, int, bytes]]:
    """Ways a stored chunk can be wrong: (id, flags, raw_len, payload) each."""
    p, cid = chunk.payload, chunk.id
    flipped = bytearray(p)
    flipped[len(p) // 2] ^= 0x40
    return {
        "flipped byte": (cid, chunk.flags, chunk.raw_len, bytes(flipped)),
        "truncated": (cid, chunk.flags, chunk.raw_len, p[: len(p) // 2]),
        "other id": (bytes(32), chunk.flags, chunk.raw_len, p),
        "short length": (cid, chunk.flags, chunk.raw_len - 1, p),
        "long length": (cid, chunk.flags, chunk.raw_len + 1, p),
        "garbage": (cid, chunk.flags, chunk.raw_len, os.urandom(len(p))),
        "empty": (cid, chunk.flags, chunk.raw_len, b""),
    }


def test_damage_is_refused_alike(pair: tuple[ChunkCodec, ChunkCodec]) -> None:
    native, python = pair
    for chunk in encoded(python, mixed_data(3)):
        for how, item in damaged(chunk).items():
            got = native.decode_many([item])[0]
            want = python.decode_many([item])[0]
            assert isinstance(got, ChunkCorrupt) and isinstance(want, ChunkCorrupt), how
            # the wording may differ (zstd may say a frame is cut where the Python path finds
            # too few bytes), never the chunk named
            name = f"chunk {item[0].hex()[:16]} "
            assert str(got).startswith(name) and str(want).startswith(name), how
            cid, flags, raw_len, payload = item
            out = bytearray(raw_len)
            failed = native.decode_many_into([(cid, flags, payload, memoryview(out))])[0]
            assert isinstance(failed, ChunkCorrupt), how


def test_a_damaged_chunk_leaves_its_neighbours_decoded(
    pair: tuple[ChunkCodec, ChunkCodec],
) -> None:
    native, _ = pair
    chunks = encoded(native, mixed_data(4))
    items = [(c.id, c.flags, c.raw_len, c.payload) for c in chunks]
    items[2] = damaged(chunks[2])["flipped byte"]
    got = native.decode_many(items)
    assert isinstance(got[2], ChunkCorrupt)
    assert got[:2] + got[3:] == [native.decode(*i) for i in items[:2] + items[3:]]


def test_an_encrypted_chunk_in_a_plain_repository_is_refused() -> None:
    sealed = encoded(ChunkCodec(3, KEY), mixed_data(5))[0]
    item = (sealed.id, sealed.flags, sealed.raw_len, sealed.payload)
    got = ChunkCodec(3, None).decode_many([item])[0]
    assert isinstance(got, ChunkCorrupt) and "encrypted" in str(got)


def test_no_buffer_stays_exported() -> None:
    """Every buffer the compiled calls take is given back: a bytearray can be resized after."""
    codec = ChunkCodec(3, None)
    data = bytearray(mixed_data(6))
    codec.chunk_ids(memoryview(data), BS)
    chunks = encoded(codec, bytes(data))
    out = bytearray(chunks[0].raw_len)
    payload = bytearray(chunks[0].payload)
    with memoryview(data) as view:
        codec.encode_many([view[:BS]], [chunks[0].id])
    assert codec.decode_many_into([(chunks[0].id, chunks[0].flags, payload, memoryview(out))]) == [
        None
    ]
    bad = bytearray(b"x" * 10)
    codec.decode_many_into([(chunks[0].id, chunks[0].flags, bad, memoryview(out))])
    for buf in (data, out, payload, bad):
        buf.extend(b"more")  # BufferError if a view were still exported


def test_threads_share_a_codec() -> None:
    codec = ChunkCodec(3, KEY)
    data = mixed_data(7)
    chunks = encoded(codec, data)
    items = [(c.id, c.flags, c.raw_len, c.payload) for c in chunks]
    want = ChunkCodec(3, KEY, native=False).decode_many(items)
    results: list[bool] = []

    def work(fn: Callable[[], bool]) -> None:
        results.extend(fn() for _ in range(30))

    threads = [
        threading.Thread(target=work, args=(lambda: codec.decode_many(items) == want,)),
        threading.Thread(target=work, args=(lambda: encoded(codec, data)[0].id == chunks[0].id,)),
        threading.Thread(target=work, args=(lambda: codec.decode_many(items) == want,)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 90


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048), st.integers(0, 4096), st.booleans(), st.booleans())
def test_hostile_payloads_are_refused_never_crash(
    payload: bytes, raw_len: int, compressed: bool, into: bool
) -> None:
    """Any bytes as a stored chunk (a damaged or forged pack): refused as ChunkCorrupt by the
    compiled path as by the Python path; no crash, no other exception, no bytes returned."""
    cid = bytes(range(32))  # no payload here has this id
    flags = FLAG_ZSTD if compressed else 0
    for codec in (ChunkCodec(3, None), ChunkCodec(3, None, native=False)):
        if into:
            got = codec.decode_many_into([(cid, flags, payload, memoryview(bytearray(raw_len)))])
        else:
            got = codec.decode_many([(cid, flags, raw_len, payload)])  # type: ignore[assignment]
        assert isinstance(got[0], ChunkCorrupt)
