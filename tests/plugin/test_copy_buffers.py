"""The full-backup fast path (issue 16) stores exactly what the plain path stores.

Pooled reads (``FileSource.read_into`` into reused buffers, handed back by the image writer)
against plain ``read`` calls returning fresh bytes; and the pack gather's reused write buffers
against one plain stream: same chunk ids per block, same pack bytes, same restored disk.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from vmaccel.catalog import Repository, RepositoryConfig
from vmaccel.catalog.chunkstore import _Gather
from vmaccel.catalog.index import ImageStats
from vmaccel.catalog.pack import KIND_DATA, PackWriter
from vmaccel.guestfs.extent import Extent
from vmaccel.plugin.engine.copy import copy_disk
from vmaccel.plugin.engine.plan import FULL, plan_disk
from vmaccel.plugin.transport.file import FileSource

BLOCK = 4096
KiB = 1024


class PlainSource:
    """A file source without ``read_into``: every piece is a fresh ``bytes`` (the slow path)."""

    def __init__(self, inner: FileSource) -> None:
        self._inner = inner

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def name(self) -> str:
        return self._inner.name

    def read(self, offset: int, length: int) -> bytes:
        return self._inner.read(offset, length)

    def data_extents(self) -> Sequence[Extent]:
        return self._inner.data_extents()

    def close(self) -> None:
        self._inner.close()


def make_image(path: Path, size: int, seed: int) -> bytes:
    """Random, text-like, zero and repeated blocks; ``size`` need not be block aligned."""
    rng = random.Random(seed)
    parts, kept = [], b""
    for i in range(-(-size // BLOCK)):
        kind = rng.randrange(4)
        if kind == 0:
            block = bytes(BLOCK)
        elif kind == 1:
            block = rng.randbytes(BLOCK)
        elif kind == 2:
            block = (b"line %d of a log file\n" % i * 200)[:BLOCK]
        else:
            block = kept or rng.randbytes(BLOCK)  # the same content again: dedup
        kept = block if kind == 1 and not kept else kept
        parts.append(block)
    data = b"".join(parts)[:size]
    path.write_bytes(data)
    return data


def back_up(
    tmp: Path, name: str, source: FileSource | PlainSource, read: tuple[Extent, ...], **kw: int
) -> tuple[list[bytes | None], bytes, ImageStats]:
    """Copy ``read`` of ``source`` into a new repository; (chunk id per block, restored disk,
    the image's stats)."""
    repo_path = tmp / name
    Repository.init(
        repo_path, RepositoryConfig(block_size=BLOCK, map_fanout=16, pack_size=96 * KiB)
    )
    holes = (Extent(0, source.size),)  # everything not read is a hole
    plan = plan_disk(source.size, BLOCK, read, None, None, FULL, "test")
    plan = type(plan)(plan.mode, plan.reason, plan.size, BLOCK, read, holes)
    with Repository.open(repo_path, write=True) as repo:
        with repo.begin_backup("vm") as bw:
            writer = bw.image_writer("disk0", source.size)
            assert copy_disk(source, writer, plan, **kw) == sum(e.length for e in read)
            bw.finish_image("disk0", writer)
            row = bw.commit()
        img = repo.image(row, "disk0")
        root = repo.map_root(img)
        ids = repo.blockmap.lookup(root, 0, root.blocks)
        reader = repo.open_image(img)
        try:
            restored = reader.read()
        finally:
            reader.close()
        return ids, restored, img.stats


@pytest.mark.parametrize(
    ("size", "kw"),
    [
        (3 * 1024 * KiB + 12 * KiB + 100, {}),  # default pieces, a short last block
        (700 * KiB, {"piece_bytes": 64 * KiB, "readers": 2}),  # many reuses of few buffers
    ],
)
def test_pooled_reads_store_what_plain_reads_store(
    tmp_path: Path, size: int, kw: dict[str, int]
) -> None:
    data = make_image(tmp_path / "disk.img", size, seed=size)
    # two extents and a gap: pieces of every length, ending mid-piece
    read = (Extent(0, 40 * BLOCK), Extent(64 * BLOCK, size - 64 * BLOCK))
    expected = bytearray(size)
    for e in read:
        expected[e.offset : e.end] = data[e.offset : e.end]
    fast = back_up(tmp_path, "fast", FileSource(tmp_path / "disk.img"), read, **kw)
    slow = back_up(tmp_path, "slow", PlainSource(FileSource(tmp_path / "disk.img")), read, **kw)
    assert fast[0] == slow[0]  # the same chunk id for every block
    assert fast[1] == slow[1] == bytes(expected)
    assert fast[2] == slow[2]
    assert fast[2].new_chunks > 0 and fast[2].zero_blocks > 0 and fast[2].dedup_blocks > 0


def test_small_extents_get_small_buffers_and_the_same_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incremental's scattered small extents: each buffer is as long as the longest extent
    (not a whole piece, zeroed for a few blocks), and the chunks are the plain path's."""
    size = 2048 * KiB
    data = make_image(tmp_path / "disk.img", size, seed=11)
    read = tuple(Extent(k * 37 * BLOCK, (1 + k % 3) * BLOCK) for k in range(12))
    buffers: list[int] = []
    read_into = FileSource.read_into

    def spy(self: FileSource, offset: int, buffer: memoryview) -> None:
        buffers.append(len(buffer.obj))  # type: ignore[arg-type]
        read_into(self, offset, buffer)

    monkeypatch.setattr(FileSource, "read_into", spy)
    fast = back_up(tmp_path, "fast", FileSource(tmp_path / "disk.img"), read)
    slow = back_up(tmp_path, "slow", PlainSource(FileSource(tmp_path / "disk.img")), read)
    assert fast[0] == slow[0] and fast[1] == slow[1]
    assert [fast[1][e.offset : e.end] for e in read] == [data[e.offset : e.end] for e in read]
    assert len(buffers) == len(read) and set(buffers) == {3 * BLOCK}


def test_gathered_pack_bytes_equal_a_plain_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    plain, gathered = io.BytesIO(), io.BytesIO()
    free: list[bytearray] = []
    handed: list[int] = []

    def out(view: bytes | memoryview, release: object) -> None:
        gathered.write(view)  # written, then given back (as the pack I/O thread does)
        handed.append(len(view))
        if callable(release):
            release()

    gather = _Gather(out, 1000, free)
    repo_id = os.urandom(16)
    a, b = PackWriter(plain, repo_id), PackWriter(gather, repo_id)  # type: ignore[arg-type]
    for i in range(300):
        payload = rng.randbytes(rng.choice([0, 1, 17, 400, 999, 1000, 1001, 3000]))
        cid = rng.randbytes(32)
        for w in (a, b):
            w.add(cid, KIND_DATA, 0, len(payload) + i, payload)
    assert a.seal() == b.seal()
    gather.drain()
    assert gathered.getvalue() == plain.getvalue()
    assert max(handed) > 1000  # a write larger than a buffer went through as is
    assert len(free) == 1  # one buffer, reused for every gathered write
