"""vmaccel.catalog.imagereader's bulk reads (what a restore issues) against its chunk-at-a-time
path: the same bytes, byte for byte, from a real repository in tmp_path."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.imagereader import BULK_BYTES, ImageReader
from vmaccel.catalog.index import ImageRow
from vmaccel.catalog.packstore import pack_key
from vmaccel.vocabulary.errors import DamageError, IndexCorrupt

BS = 4096
SIZE = 4 * BULK_BYTES + 3 * BS + 123  # several bulk reads, a short last block


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    Repository.init(tmp_path / "r", RepositoryConfig(block_size=BS, map_fanout=16))
    with Repository.open(tmp_path / "r", write=True) as r:
        yield r


@pytest.fixture
def sealed(tmp_path: Path) -> Iterator[Repository]:
    """An encrypted repository (chunks sealed with AES-GCM before they are decoded)."""
    config = RepositoryConfig(block_size=BS, map_fanout=16, encryption="repokey")
    Repository.init(tmp_path / "e", config, passphrase="bulk")
    with Repository.open(tmp_path / "e", passphrase="bulk", write=True) as r:
        yield r


def content() -> bytes:
    """Random blocks, repeated blocks (one chunk at many places), zero runs (holes), text."""
    rng = random.Random(24)
    out = bytearray(rng.randbytes(SIZE))
    repeated = rng.randbytes(BS)
    for block in range(0, SIZE // BS, 7):
        out[block * BS : (block + 1) * BS] = repeated
    out[BS * 100 : BS * 400] = bytes(BS * 300)  # a hole inside the first bulk read
    out[BULK_BYTES - 5 * BS : BULK_BYTES + 9 * BS] = bytes(14 * BS)  # one across two reads
    out[-BS * 50 :] = b"text " * (BS * 10)
    return bytes(out)


def image(repo: Repository, data: bytes) -> ImageRow:
    with repo.begin_backup("vm1") as bw:
        w = bw.image_writer("d", len(data))
        for off in range(0, len(data) - len(data) % BS, BULK_BYTES):
            w.write(off, data[off : min(off + BULK_BYTES, len(data) - len(data) % BS)])
        w.write(len(data) - len(data) % BS, data[len(data) - len(data) % BS :])
        bw.finish_image("d", w)
        row = bw.commit()
    return repo.images(row)[0]


def restore_reads(r: ImageReader, piece: int = BULK_BYTES) -> bytes:
    """The image as a restore reads it: data extents only, in pieces of ``piece`` bytes into
    one reused buffer (stale bytes in it), placed at their offsets; holes stay zero."""
    out, buf = bytearray(r.size), memoryview(bytearray(b"\xee" * piece))
    for offset, length, is_data in r.extents():
        for off in range(offset, offset + length, piece) if is_data else ():
            n = min(piece, offset + length - off)
            assert r.read_into(off, buf[:n]) == n
            out[off : off + n] = buf[:n]
    return bytes(out)


def small_reads(r: ImageReader) -> bytes:
    """The whole image in reads below BULK_BYTES (chunk-at-a-time path, cache, read-ahead)."""
    out, off = bytearray(), 0
    while piece := r.pread(off, 3 * BS + 5):
        out += piece
        off += len(piece)
    return bytes(out)


def bulk_reads(r: ImageReader, start: int, length: int) -> bytes:
    """``start`` onward in reads of ``length`` (at least BULK_BYTES) into one reused buffer
    that holds stale bytes from the read before (holes must overwrite them)."""
    buf = memoryview(bytearray(b"\xee" * length))
    out, off = bytearray(), start
    while n := r.read_into(off, buf):
        out += buf[:n]
        off += n
    return bytes(out)


@pytest.mark.parametrize("options", [{}, {"readahead_bytes": 0, "cache_bytes": 0}, {"workers": 1}])
def test_bulk_reads_equal_small_reads_byte_for_byte(
    repo: Repository, options: dict[str, int]
) -> None:
    data = content()
    img = image(repo, data)
    with repo.open_image(img, **options) as r:
        slow = small_reads(r)
    with repo.open_image(img, **options) as r:
        aligned = bulk_reads(r, 0, BULK_BYTES + 8 * BS)
        unaligned = bulk_reads(r, 1000, BULK_BYTES + 777)
    assert slow == data
    assert aligned == data
    assert unaligned == data[1000:]


def test_an_encrypted_repository_reads_the_same_bytes_both_ways(sealed: Repository) -> None:
    data = content()
    img = image(sealed, data)
    with sealed.open_image(img, readahead_bytes=0, cache_bytes=0) as r:
        assert small_reads(r) == data
        assert restore_reads(r) == data
        assert bulk_reads(r, 1000, BULK_BYTES + 777) == data[1000:]


def test_a_chunk_decoded_into_its_block_equals_the_decoded_chunk(repo: Repository) -> None:
    """ChunkStore.load_into (the bulk path) against load_many, chunk for chunk: the same
    bytes, and the same damage error for a damaged chunk, a wrong length and a missing one."""
    data = content()
    img = image(repo, data)
    ids = [c for c in dict.fromkeys(repo.blockmap.lookup(repo.map_root(img), 0, 64)) if c]
    views = {cid: memoryview(bytearray(BS)) for cid in ids}
    assert repo.chunks.load_into(views) == {}
    loaded = repo.chunks.load_many(ids)
    assert all(bytes(views[cid]) == loaded[cid] for cid in ids)
    bad = damage(repo, img, 5)
    repo.store.close()
    missing = bytes(32)
    views = {cid: memoryview(bytearray(BS)) for cid in [*ids, missing]}
    views[ids[-1]] = memoryview(bytearray(BS - 1))  # a block of another length
    errors = repo.chunks.load_into(views)
    assert set(errors) == {bad, missing, ids[-1]}
    assert str(errors[bad]) == str(repo.chunks.load_many([bad])[bad])
    assert all(bytes(views[c]) == loaded[c] for c in ids[:-1] if c != bad)


def test_restore_pattern_equals_the_image(repo: Repository) -> None:
    data = content()
    img = image(repo, data)
    with repo.open_image(img, readahead_bytes=0, cache_bytes=0) as r:
        assert restore_reads(r) == data
        assert restore_reads(r, BULK_BYTES + 64 * BS) == data


def test_bulk_read_after_small_reads_uses_cached_chunks(repo: Repository) -> None:
    data = content()
    img = image(repo, data)
    with repo.open_image(img) as r:
        assert r.pread(BS * 3, BS * 40) == data[BS * 3 : BS * 43]  # some chunks now cached
        assert bulk_reads(r, 0, BULK_BYTES) == data


def damage(repo: Repository, img: ImageRow, block: int) -> bytes:
    """Flip a byte of the stored chunk of ``block``; returns its id. Close the store after."""
    cid = repo.blockmap.lookup(repo.map_root(img), block, 1)[0]
    assert cid is not None
    loc = repo.index.chunk(cid)
    assert loc is not None
    with open(repo.path / pack_key(loc.pack), "r+b") as f:
        f.seek(loc.offset + 3)
        byte = f.read(1)
        f.seek(loc.offset + 3)
        f.write(bytes([byte[0] ^ 0xFF]))
    return cid


def test_bulk_read_of_a_damaged_chunk_raises_never_data(repo: Repository) -> None:
    data = content()
    img = image(repo, data)
    cid = damage(repo, img, 2 * BULK_BYTES // BS + 152)  # not one of the repeated blocks
    repo.store.close()  # the reads below open the pack again
    with repo.open_image(img, readahead_bytes=0, cache_bytes=0) as r:
        with pytest.raises(DamageError, match=cid.hex()[:16]):
            restore_reads(r)
        buf = memoryview(bytearray(BULK_BYTES))
        assert r.read_into(0, buf) == BULK_BYTES  # the first read does not touch it
        assert bytes(buf) == data[:BULK_BYTES]
        with pytest.raises(DamageError, match=cid.hex()[:16]):
            r.read_into(2 * BULK_BYTES, buf)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_damage_in_any_job_is_raised_in_block_order(repo: Repository, workers: int) -> None:
    """A bulk read's jobs are shared by the pool and the calling thread, in any order: damage
    in its last job is raised, and damage in an earlier job of the same read first."""
    data = content()
    img = image(repo, data)
    last = 3 * BULK_BYTES // BS - 3  # the last job of the third 4 MiB read (not repeated)
    late = damage(repo, img, last)
    repo.store.close()
    buf = memoryview(bytearray(BULK_BYTES))
    with (
        repo.open_image(img, readahead_bytes=0, cache_bytes=0, workers=workers) as r,
        pytest.raises(DamageError, match=late.hex()[:16]),
    ):
        r.read_into(2 * BULK_BYTES, buf)
    early = damage(repo, img, 2 * BULK_BYTES // BS + 11)  # its first job (not repeated)
    repo.store.close()
    with repo.open_image(img, readahead_bytes=0, cache_bytes=0, workers=workers) as r:
        with pytest.raises(DamageError, match=early.hex()[:16]):
            r.read_into(2 * BULK_BYTES, buf)
        assert r.read_into(BULK_BYTES, buf) == BULK_BYTES  # the read before is intact
        assert bytes(buf) == data[BULK_BYTES : 2 * BULK_BYTES]


def spy(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[tuple[Any, ...]]:
    """Record every call of ``owner.name`` as (its arguments..., the calling thread's name),
    then make it."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(owner, name)

    def record(*args: Any) -> Any:
        calls.append((*args, threading.current_thread().name))
        return real(*args)

    monkeypatch.setattr(owner, name, record)
    return calls


def hints(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every prefetch hint the repository's packs get: (pack, offset, length, thread)."""
    return spy(monkeypatch, repo.chunks.packs, "prefetch")


def wait_until(done: Callable[[], bool], seconds: float = 10) -> None:
    """Poll ``done`` until it holds or ``seconds`` pass (hints run behind the reads)."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_bulk_reads_hint_the_packs_of_the_blocks_ahead_once(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = content()
    img = image(repo, data)
    seen = hints(repo, monkeypatch)
    batches = spy(monkeypatch, repo.chunks, "prefetch")
    first_read = BULK_BYTES // BS
    ids = repo.blockmap.lookup(repo.map_root(img), first_read, -(-SIZE // BS) - first_read)
    wanted = [c for c in ids if c is not None]
    window = 2 * BULK_BYTES
    with repo.open_image(img, readahead_bytes=0, cache_bytes=0, prefetch_bytes=window) as r:
        assert bulk_reads(r, 0, BULK_BYTES) == data
        wait_until(lambda: sum(len(ids) for ids, _ in batches) >= len(wanted))  # before close
    asked = [cid for ids, _ in batches for cid in ids]
    assert seen and {thread for *_, thread in seen} == {"vmaccel-prefetch_0"}
    # every block past the first read is hinted once (a hole not at all) ...
    assert asked == wanted
    # ... and the packs are asked for every byte of those chunks
    for cid in {c for c in ids if c is not None}:
        loc = repo.index.chunk(cid)
        assert loc is not None
        assert any(
            p == loc.pack and o <= loc.offset and loc.offset + loc.stored_len <= o + n
            for p, o, n, _ in seen
        ), cid.hex()


def test_no_hints_without_a_prefetch_window(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = content()
    img = image(repo, data)
    seen = hints(repo, monkeypatch)
    with repo.open_image(img, readahead_bytes=0, cache_bytes=0, prefetch_bytes=0) as r:
        assert restore_reads(r) == data
    assert seen == []


def test_bulk_reads_that_jump_around_hint_nothing(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a stream is hinted: reads that go backwards or further than a window do not make
    the store read a window nobody will ask for."""
    data = content()
    img = image(repo, data)
    seen = hints(repo, monkeypatch)
    buf = memoryview(bytearray(BULK_BYTES))
    with repo.open_image(img, readahead_bytes=0, cache_bytes=0, prefetch_bytes=BS * 8) as r:
        for at in (3 * BULK_BYTES, BULK_BYTES, 0, 3 * BULK_BYTES):
            assert r.read_into(at, buf) == BULK_BYTES
            assert bytes(buf) == data[at : at + BULK_BYTES]
    assert seen == []


def test_a_failing_hint_costs_the_reads_nothing(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = content()
    img = image(repo, data)
    failed: list[str] = []

    def broken(ids: object) -> None:
        failed.append(threading.current_thread().name)
        raise IndexCorrupt("catalog query failed: database disk image is malformed")

    monkeypatch.setattr(repo.chunks, "prefetch", broken)
    with repo.open_image(img, readahead_bytes=0, cache_bytes=0) as r:
        assert restore_reads(r) == data
        assert bulk_reads(r, 1000, BULK_BYTES + 777) == data[1000:]
        wait_until(lambda: bool(failed))
    assert failed == ["vmaccel-prefetch_0"] * len(failed) != []
    assert not [t for t in threading.enumerate() if t.name.startswith("vmaccel-prefetch")]
