"""vmaccel.catalog.imagewriter / catalog.imagereader through a real repository in tmp_path."""

from __future__ import annotations

import io
import os
import random
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.index import ImageRow
from vmaccel.catalog.packstore import pack_key
from vmaccel.vocabulary.errors import DamageError, UsageError

BS = 4096


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    Repository.init(tmp_path / "r", RepositoryConfig(block_size=BS, map_fanout=16))
    with Repository.open(tmp_path / "r", write=True) as r:
        yield r


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def backup(
    repo: Repository,
    disks: dict[str, tuple[int, list[tuple[str, int, bytes | int]]]],
    parents: dict[str, ImageRow] | None = None,
    vm: str = "vm1",
) -> dict[str, ImageRow]:
    """One backup; per disk (size, ops) where an op is ("w", offset, data) or ("p", off, len)."""
    parents = parents or {}
    with repo.begin_backup(vm) as bw:
        for disk, (size, ops) in disks.items():
            w = bw.image_writer(disk, size, parent=parents.get(disk))
            for kind, off, arg in ops:
                if kind == "w":
                    assert isinstance(arg, bytes)
                    w.write(off, arg)
                else:
                    assert isinstance(arg, int)
                    w.punch(off, arg)
            bw.finish_image(disk, w, parents.get(disk))
        row = bw.commit()
    return {img.disk: img for img in repo.images(row)}


def read_all(repo: Repository, img: ImageRow) -> bytes:
    with repo.open_image(img) as r:
        return r.read()


def data_chunks(repo: Repository) -> int:
    return repo.index.chunk_totals()[0]


def test_round_trip_and_zeros_never_stored(repo: Repository) -> None:
    size = 40 * BS
    content = bytearray(size)
    content[3 * BS : 5 * BS] = rand(2 * BS, 1)
    content[30 * BS : 31 * BS] = b"x" * BS
    imgs = backup(repo, {"d": (size, [("w", 0, bytes(content))])})
    stats = imgs["d"].stats
    assert stats.zero_blocks == 37
    assert stats.new_chunks == 3
    assert data_chunks(repo) == 3
    assert read_all(repo, imgs["d"]) == content


def test_all_zero_image_stores_nothing(repo: Repository) -> None:
    imgs = backup(repo, {"d": (64 * BS, [("w", 0, bytes(64 * BS))])})
    assert data_chunks(repo) == 0
    assert imgs["d"].root is None
    assert read_all(repo, imgs["d"]) == bytes(64 * BS)


def test_dedup_across_disks_and_backups(repo: Repository) -> None:
    payload = rand(8 * BS, 2)
    first = backup(repo, {"a": (8 * BS, [("w", 0, payload)]), "b": (16 * BS, [])})
    assert data_chunks(repo) == 8
    assert first["a"].stats.new_chunks == 8
    second = backup(
        repo,
        {"a": (8 * BS, [("w", 0, payload)]), "b": (16 * BS, [("w", 8 * BS, payload)])},
        vm="vm2",
    )
    assert second["a"].stats.new_chunks == 0
    assert second["a"].stats.dedup_blocks == 8
    assert second["b"].stats.dedup_blocks == 8
    assert data_chunks(repo) == 8
    assert read_all(repo, second["b"]) == bytes(8 * BS) + payload


def test_repeated_block_within_one_write_is_stored_once(repo: Repository) -> None:
    block = rand(BS, 3)
    imgs = backup(repo, {"d": (32 * BS, [("w", 0, block * 32)])})
    assert data_chunks(repo) == 1
    assert read_all(repo, imgs["d"]) == block * 32


def test_short_last_block(repo: Repository) -> None:
    size = 5 * BS + 123
    content = rand(size, 4)
    imgs = backup(repo, {"d": (size, [("w", 0, content)])})
    assert read_all(repo, imgs["d"]) == content
    with repo.open_image(imgs["d"]) as r:
        assert r.size == size
        assert r.pread(size - 100, 1000) == content[-100:]
        assert r.pread(size, 10) == b""
        # a child that changes only the short tail
        tail = b"T" * 123
        child = backup(repo, {"d": (size, [("w", 5 * BS, tail)])}, parents=imgs)
    assert read_all(repo, child["d"]) == content[: 5 * BS] + tail


def test_unaligned_writes_are_refused(repo: Repository) -> None:
    with repo.begin_backup("vm") as bw:
        w = bw.image_writer("d", 10 * BS)
        with pytest.raises(UsageError):
            w.write(1, b"x" * BS)
        with pytest.raises(UsageError):
            w.write(0, b"x" * (BS + 1))
        with pytest.raises(UsageError):
            w.write(9 * BS, b"x" * 2 * BS)  # past the end
        w.abort()


def test_punch_after_write_and_write_after_punch(repo: Repository) -> None:
    size = 32 * BS
    a, b = rand(8 * BS, 5), rand(8 * BS, 6)
    ops: list[tuple[str, int, bytes | int]] = [
        ("w", 0, a),  # blocks 0-7
        ("p", 2 * BS, 3 * BS),  # punched after the write: blocks 2-4 become holes
        ("p", 16 * BS, 8 * BS),  # holes 16-23 ...
        ("w", 18 * BS, b[: 2 * BS]),  # ... then data written back into 18-19
    ]
    imgs = backup(repo, {"d": (size, ops)})
    expect = bytearray(size)
    expect[0 : 8 * BS] = a
    expect[2 * BS : 5 * BS] = bytes(3 * BS)
    expect[18 * BS : 20 * BS] = b[: 2 * BS]
    assert read_all(repo, imgs["d"]) == expect


def test_punch_over_parent_blocks_and_out_of_order_punches(repo: Repository) -> None:
    size = 64 * BS
    base = rand(size, 7)
    parent = backup(repo, {"d": (size, [("w", 0, base)])})
    ops: list[tuple[str, int, bytes | int]] = [
        ("p", 40 * BS, 4 * BS),
        ("p", 10 * BS, 2 * BS),  # out of order
        ("p", 11 * BS, 3 * BS),  # overlaps the previous
        ("p", 63 * BS, BS),
    ]
    child = backup(repo, {"d": (size, ops)}, parents=parent)
    expect = bytearray(base)
    for off, n in ((40, 4), (10, 4), (63, 1)):
        expect[off * BS : (off + n) * BS] = bytes(n * BS)
    assert read_all(repo, child["d"]) == expect
    assert read_all(repo, parent["d"]) == base


def test_out_of_order_and_overwritten_writes(repo: Repository) -> None:
    size = 48 * BS
    blocks = [rand(BS, 100 + i) for i in range(48)]
    order = list(range(48))
    random.Random(8).shuffle(order)
    ops: list[tuple[str, int, bytes | int]] = [("w", i * BS, blocks[i]) for i in order]
    ops.append(("w", 5 * BS, b"z" * BS))  # a later write of the same block wins
    imgs = backup(repo, {"d": (size, ops)})
    blocks[5] = b"z" * BS
    assert read_all(repo, imgs["d"]) == b"".join(blocks)


def test_synthetic_full_shares_parent_and_grows(repo: Repository) -> None:
    base = rand(20 * BS, 9)
    parent = backup(repo, {"d": (20 * BS, [("w", 0, base)])})
    new = rand(BS, 10)
    child = backup(repo, {"d": (300 * BS, [("w", 250 * BS, new)])}, parents=parent)
    assert child["d"].stats.new_chunks == 1
    assert child["d"].depth == 3
    assert read_all(repo, child["d"]) == base + bytes(230 * BS) + new + bytes(49 * BS)
    shrunk = backup(repo, {"d": (7 * BS + 5, [])}, parents=child)
    assert read_all(repo, shrunk["d"]) == base[: 7 * BS + 5]


def test_reader_stream_api(repo: Repository) -> None:
    size = 20 * BS
    content = bytearray(rand(size, 11))
    content[5 * BS : 9 * BS] = bytes(4 * BS)
    imgs = backup(repo, {"d": (size, [("w", 0, bytes(content)), ("p", 5 * BS, 4 * BS)])})
    with repo.open_image(imgs["d"]) as r:
        assert r.readable() and r.seekable()
        assert r.seek(100) == 100
        assert r.read(10) == content[100:110]
        assert r.tell() == 110
        assert r.seek(-10, io.SEEK_END) == size - 10
        assert r.read() == content[-10:]
        assert r.read(5) == b""
        r.seek(BS - 7)
        buf = bytearray(3 * BS)
        assert r.readinto(buf) == 3 * BS
        assert buf == content[BS - 7 : 4 * BS - 7]
        r.seek(-5, io.SEEK_CUR)
        assert r.tell() == 4 * BS - 12
        mv = memoryview(bytearray(BS))
        assert r.read_into(2 * BS + 1, mv) == BS
        assert mv == content[2 * BS + 1 : 3 * BS + 1]
        assert r.pread(size - 3, 100) == content[-3:]
        assert r.pread(size + 5, 10) == b""
        with pytest.raises(ValueError):
            r.seek(-1)
        assert list(r.extents()) == [
            (0, 5 * BS, True),
            (5 * BS, 4 * BS, False),
            (9 * BS, 11 * BS, True),
        ]
        # io wrappers and shutil take it unchanged
        out = io.BytesIO()
        r.seek(0)
        shutil.copyfileobj(io.BufferedReader(r), out)  # type: ignore[arg-type]
        assert out.getvalue() == content


def test_extents_of_short_tail_and_empty_image(repo: Repository) -> None:
    imgs = backup(
        repo,
        {"a": (3 * BS + 10, [("w", 3 * BS, b"q" * 10)]), "b": (2 * BS, [])},
    )
    with repo.open_image(imgs["a"]) as r:
        assert list(r.extents()) == [(0, 3 * BS, False), (3 * BS, 10, True)]
    with repo.open_image(imgs["b"]) as r:
        assert list(r.extents()) == [(0, 2 * BS, False)]
        assert r.read() == bytes(2 * BS)


def test_readers_in_several_threads(repo: Repository) -> None:
    size = 256 * BS
    content = rand(size, 12)
    imgs = backup(repo, {"d": (size, [("w", 0, content)])})
    with repo.open_image(imgs["d"], cache_bytes=16 * BS, readahead_bytes=8 * BS) as r:

        def worker(seed: int) -> bool:
            rng = random.Random(seed)
            for _ in range(200):
                off, n = rng.randrange(size), rng.randrange(1, 3 * BS)
                if r.pread(off, n) != content[off : off + n]:
                    return False
            return True

        with ThreadPoolExecutor(6) as pool:
            assert all(pool.map(worker, range(12)))


def test_damaged_chunk_is_an_error_never_data(repo: Repository) -> None:
    content = rand(4 * BS, 13)
    imgs = backup(repo, {"d": (4 * BS, [("w", 0, content)])})
    cid = repo.blockmap.lookup(repo.map_root(imgs["d"]), 2, 1)[0]
    assert cid is not None
    loc = repo.index.chunk(cid)
    assert loc is not None
    path = repo.path / pack_key(loc.pack)
    with open(path, "r+b") as f:
        f.seek(loc.offset + 7)
        byte = f.read(1)
        f.seek(loc.offset + 7)
        f.write(bytes([byte[0] ^ 0xFF]))
    repo.store.close()  # the reads below open the pack again
    with repo.open_image(imgs["d"]) as r:
        assert r.pread(0, BS) == content[:BS]
        with pytest.raises(DamageError, match=cid.hex()[:16]):
            r.pread(2 * BS, 10)


def test_big_write_spans_many_tasks(repo: Repository) -> None:
    size = 1024 * BS  # 4 MiB: several TASK_BYTES pieces, more than one batch of inflight
    content = os.urandom(size // 2) + bytes(size // 2)
    imgs = backup(repo, {"d": (size, [("w", 0, content)])})
    assert imgs["d"].stats.zero_blocks == 512
    assert read_all(repo, imgs["d"]) == content
