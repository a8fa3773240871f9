"""The fast data paths: lookups the image writer skips, packs sealed in the background,
batched and coalesced chunk reads, and the reader's bounded cache."""

from __future__ import annotations

import errno
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.index import ImageRow, Index
from vmaccel.catalog.objectstore import Upload
from vmaccel.catalog.packstore import PackStore, pack_key
from vmaccel.vocabulary.errors import ChunkCorrupt, ChunkMissing, DamageError

BS = 4096


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    # Small packs: many seals (in the background) even for small images.
    Repository.init(
        tmp_path / "r", RepositoryConfig(block_size=BS, map_fanout=16, pack_size=16 * BS)
    )
    with Repository.open(tmp_path / "r", write=True) as r:
        yield r


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def write_image(repo: Repository, data: bytes, parent: ImageRow | None = None) -> ImageRow:
    with repo.begin_backup("vm") as bw:
        w = bw.image_writer("d", len(data), parent=parent)
        for off in range(0, len(data), 64 * BS):
            w.write(off, data[off : off + 64 * BS])
        bw.finish_image("d", w, parent)
        row = bw.commit()
    return repo.image(row, "d")


def read_all(repo: Repository, img: ImageRow, **options: int) -> bytes:
    with repo.open_image(img, **options) as r:
        return r.read()


def count_lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Ids asked of the index by the writer's workers, per batched query."""
    asked: list[int] = []
    real = Index.existing_chunks

    def spy(self: Index, ids: object) -> set[bytes]:
        wanted = list(ids)  # type: ignore[call-overload]
        asked.append(len(wanted))
        return real(self, wanted)

    monkeypatch.setattr(Index, "existing_chunks", spy)
    return asked


def test_rewrite_of_unchanged_data_asks_the_index_nothing(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = rand(96 * BS, 1) + bytes(32 * BS)
    full = write_image(repo, data)
    packs = len(repo.index.packs())
    asked = count_lookups(monkeypatch)

    again = write_image(repo, data, parent=full)

    assert sum(asked) == 0  # equal to the parent's ids: known without any query
    assert again.stats.new_chunks == 0 and again.stats.dedup_blocks == 96
    assert again.root == full.root  # the same map: every node shared
    assert len(repo.index.packs()) == packs
    assert read_all(repo, again) == data


def test_rewrite_with_changes_stores_only_the_changed_blocks(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(rand(128 * BS, 2))
    full = write_image(repo, bytes(data))
    changed = [3, 64, 100]
    for b in changed:
        data[b * BS : (b + 1) * BS] = rand(BS, 100 + b)
    data[5 * BS : 6 * BS] = data[7 * BS : 8 * BS]  # moved, not new: found by the index query
    asked = count_lookups(monkeypatch)

    child = write_image(repo, bytes(data), parent=full)

    assert sum(asked) == len(changed) + 1  # only blocks that differ from the parent
    assert child.stats.new_chunks == len(changed)
    assert read_all(repo, child) == bytes(data)
    assert read_all(repo, full) != bytes(data)


def test_background_seals_keep_chunks_known_and_readable(repo: Repository) -> None:
    block = rand(BS, 3)
    # Many small packs are sealed while writing; a block seen before any of those seals
    # (pending, sealing or recently sealed) must never be stored twice.
    data = b"".join(block if i % 10 == 0 else rand(BS, 1000 + i) for i in range(300))
    img = write_image(repo, data)
    assert len(repo.index.packs()) > 10
    assert img.stats.new_chunks == 300 - 30 + 1
    assert repo.index.chunk_totals()[0] == img.stats.new_chunks
    assert read_all(repo, img) == data


def test_load_many_coalesces_and_isolates_damage(repo: Repository) -> None:
    data = rand(48 * BS, 4)
    img = write_image(repo, data)
    ids = [c for c in repo.blockmap.lookup(repo.map_root(img), 0, 48) if c is not None]
    locs = repo.index.chunk_locations(ids)
    assert set(locs) == set(ids)
    bad = ids[5]
    loc = locs[bad]
    with open(repo.path / pack_key(loc.pack), "r+b") as f:
        f.seek(loc.offset + 9)
        byte = f.read(1)
        f.seek(loc.offset + 9)
        f.write(bytes([byte[0] ^ 0x55]))
    missing = bytes(32)

    got = repo.chunks.load_many([*ids, missing])

    assert isinstance(got[bad], ChunkCorrupt) and loc.pack in str(got[bad])
    assert isinstance(got[missing], ChunkMissing)
    for i, cid in enumerate(ids):
        if cid != bad:
            assert got[cid] == data[i * BS : (i + 1) * BS]
    with repo.open_image(img) as r:  # sequential (read-ahead) and single-block reads
        assert r.pread(0, 5 * BS) == data[: 5 * BS]
        with pytest.raises(DamageError, match=bad.hex()[:16]):
            r.pread(5 * BS + 1, 1)
        assert r.pread(6 * BS, 42 * BS) == data[6 * BS :]
        with pytest.raises(DamageError):
            r.pread(0, 48 * BS)


def test_reader_cache_is_bounded_in_bytes(repo: Repository) -> None:
    data = rand(200 * BS, 5)
    img = write_image(repo, data)
    with repo.open_image(img, cache_bytes=20 * BS, readahead_bytes=8 * BS, workers=2) as r:
        for off in range(0, len(data), 3 * BS):
            assert r.pread(off, 3 * BS) == data[off : off + 3 * BS]
            assert r._cached <= 20 * BS  # the bound is the contract
        assert r._cached == sum(len(v) for v in r._cache.values())


def test_random_single_block_reads_from_many_threads(repo: Repository) -> None:
    data = rand(64 * BS, 6) + bytes(16 * BS) + rand(48 * BS, 7)
    img = write_image(repo, data)
    with repo.open_image(img, cache_bytes=0, readahead_bytes=0) as r:

        def worker(seed: int) -> bool:
            rng = random.Random(seed)
            for _ in range(150):
                off = rng.randrange(len(data) // 512) * 512
                if r.pread(off, 512) != data[off : off + 512]:
                    return False
            return True

        with ThreadPoolExecutor(6) as pool:
            assert all(pool.map(worker, range(12)))


def test_index_batched_lookups(repo: Repository) -> None:
    data = rand(8 * BS, 8)
    img = write_image(repo, data)
    ids = [c for c in repo.blockmap.lookup(repo.map_root(img), 0, 8) if c is not None]
    absent = bytes(range(32))
    assert repo.index.existing_chunks([*ids, absent, ids[0]]) == set(ids)
    locs = repo.index.chunk_locations([absent, *ids])
    assert set(locs) == set(ids)
    assert all(locs[c] == repo.index.chunk(c) for c in ids)


class _FailingStream:
    """A pack stream whose writes fail once ``budget`` bytes were written (a full disk)."""

    def __init__(self, real: BinaryIO, budget: int) -> None:
        self._real, self._budget = real, budget

    def write(self, data: bytes) -> int:
        self._budget -= len(data)
        if self._budget < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._real.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


@pytest.mark.parametrize("failing", [0, 3], ids=["first-pack", "later-pack"])
def test_failed_pack_write_fails_the_backup_and_commits_nothing(
    repo: Repository, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    good = write_image(repo, rand(8 * BS, 9))
    packs, chunks = len(repo.index.packs()), repo.index.chunk_totals()[0]
    real_create = PackStore.create
    created: list[str] = []

    def create(self: PackStore, name: str) -> Upload:
        sink = real_create(self, name)
        budget = 0 if len(created) == failing else 1 << 30
        sink.stream = _FailingStream(sink.stream, budget)  # type: ignore[misc,assignment]
        created.append(name)
        return sink

    monkeypatch.setattr(PackStore, "create", create)
    with pytest.raises(OSError, match="No space left"):
        write_image(repo, rand(200 * BS, 10))
    monkeypatch.undo()

    # Packs sealed before the failure may be committed (durable, unreferenced: garbage for
    # gc); the failed one never is, and no backup became visible.
    assert len(created) > failing
    assert created[failing] not in {p.name for p in repo.index.packs()}
    assert len(repo.index.packs()) >= packs and repo.index.chunk_totals()[0] >= chunks
    for pack in repo.index.packs():
        assert repo.packs.size(pack.name) == pack.size
    assert [b.id for b in repo.backups()] == [good.backup_id]
    assert read_all(repo, good) == rand(8 * BS, 9)
    assert not list((repo.path / "packs" / "tmp").iterdir())
