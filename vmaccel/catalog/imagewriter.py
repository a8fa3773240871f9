"""Writing an image: a parent image plus written runs and holes becomes a new block map.

The caller streams ``write(offset, data)`` and ``punch(offset, length)`` calls for the blocks
that changed; every other block keeps its parent's chunk without being read, copied or even
listed. Work per call is split into tasks of up to ``TASK_BYTES``; worker threads zero-check,
hash and (for chunks not yet stored) compress/encrypt them, and the calling thread appends the
results to the pack in order and records (block, chunk id) changes. Changes are applied to the
block map in batches of ``BATCH_BLOCKS``, so memory stays bounded whatever the disk size.

Each block's "is it stored?" check is made in the worker, cheapest first: a block whose id
equals the parent image's id for that block is stored (the parent is committed), with no query
at all, so re-writing unchanged data (an incremental without CBT, a rescan) costs hashing only;
the other ids of a task are looked up in one batched query. The writer thread re-checks only
ids pending in this backup (see ``vmaccel.catalog.chunkstore``, "Duplicates"). A block equal to the
parent's is therefore not re-stored even if the parent's copy is damaged; verify names those.

Contract: offsets and lengths are bytes, block aligned; only the last block of the disk may be
short. ``data`` must not change after ``write`` returns (pass ``bytes``), unless the caller
passes ``release``: then ``data`` is the caller's reusable buffer (a ``bytearray``), left
unchanged until the writer calls ``release()`` (on the calling thread, from a later ``write``,
``punch`` or ``finish``) once no worker reads it any more; a pool of such buffers keeps a full
backup's read memory flat and free of page faults. An image writer is used by one thread.
Nothing it writes is visible until the backup that owns it commits.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import cast

from vmaccel.catalog.blockmap import BlockMap, HoleRange, MapRoot
from vmaccel.catalog.chunkstore import ChunkStore
from vmaccel.catalog.codec import EncodedChunk
from vmaccel.catalog.index.meta import INCOMPRESSIBLE, ImageStats
from vmaccel.vocabulary.errors import UsageError

TASK_BYTES = 1024 * 1024
BATCH_BLOCKS = 32768
MAX_INFLIGHT_TASKS = 8  # 4 per worker on 2 cores: enough to keep both busy, little memory

_Result = tuple[bytes | None, EncodedChunk | None]
Release = Callable[[], None]


@dataclass
class WriteStats:
    """What an image writer is doing, counted as it goes: the mutable side of
    :class:`~vmaccel.catalog.index.meta.ImageStats` (same fields and units)."""

    bytes_written: int = 0
    zero_blocks: int = 0
    dedup_blocks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    stored_bytes: int = 0
    holes_punched: int = 0
    incompressible_blocks: int = 0  # new chunks stored at >= INCOMPRESSIBLE of their size

    def record(self) -> ImageStats:
        """The counters as the image's stored record."""
        return ImageStats(**asdict(self))


class ImageWriter:
    def __init__(
        self,
        store: ChunkStore,
        blockmap: BlockMap,
        base: MapRoot,
        size: int,
        block_size: int,
        workers: int | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        """``base`` is the parent's map (or an empty one); it is resized to ``size`` bytes."""
        self.size, self.block_size = size, block_size
        blocks = (size + block_size - 1) // block_size
        self._store, self._map = store, blockmap
        self._parent = base if base.root is not None else None  # immutable: shared by workers
        self._root = blockmap.resize(base, blocks) if base.blocks != blocks else base
        self._own_pool = pool is None
        self._pool = pool or ThreadPoolExecutor(workers or os.cpu_count() or 2, "vmaccel-chunk")
        # (first block, task, release of the caller's buffer after this, its last task)
        self._inflight: deque[tuple[int, Future[list[_Result]], Release | None]] = deque()
        self._points: list[tuple[int, bytes | None]] = []
        self._holes: list[HoleRange] = []
        self.stats = WriteStats()
        self._closed = False

    def write(
        self,
        offset: int,
        data: bytes | bytearray,
        release: Release | None = None,
        length: int | None = None,
    ) -> None:
        """Store ``data`` (its first ``length`` bytes when given: a reused buffer may be longer
        than what it holds) at byte ``offset`` (block aligned; see the module contract for
        ``data``'s lifetime and ``release``)."""
        size = len(data) if length is None else length
        self._check(offset, size, allow_short_tail=True)
        if not isinstance(data, bytes | bytearray):
            data = bytes(data[:size])
        if not size and release is not None:
            release()
        for start in range(0, size, TASK_BYTES):
            piece_len = min(TASK_BYTES, size - start)
            first = (offset + start) // self.block_size
            fut = self._pool.submit(self._encode, data, start, piece_len, first)
            last = start + piece_len == size
            self._inflight.append((first, fut, release if last else None))
            if len(self._inflight) >= MAX_INFLIGHT_TASKS:
                self._consume_one()
        self.stats.bytes_written += size

    def punch(self, offset: int, length: int) -> None:
        """Make ``length`` bytes from ``offset`` holes (read as zeros, store nothing)."""
        self._check(offset, length, allow_short_tail=True)
        if not length:
            return
        self._drain()
        if self._points:  # earlier writes must land before a later punch over them
            self._apply()
        first = offset // self.block_size
        count = (length + self.block_size - 1) // self.block_size
        if self._holes:
            last = self._holes[-1]
            if last.first <= first <= last.first + last.count:  # adjacent or overlapping
                self._holes.pop()
                count = max(last.first + last.count, first + count) - last.first
                first = last.first
            elif first < last.first:  # out of order: keep each batch sorted and disjoint
                self._apply()
        self._holes.append(HoleRange(first, count))
        self.stats.holes_punched += count

    def finish(self) -> MapRoot:
        """Wait for all work, apply the last batch and return the new map root."""
        self._drain()
        self._apply()
        self._close_pool()
        self._closed = True
        return self._root

    def abort(self) -> None:
        for _, fut, _ in self._inflight:
            fut.cancel()  # buffers given with release are not released: the caller drops them
        self._inflight.clear()
        self._close_pool()
        self._closed = True

    def _close_pool(self) -> None:
        if self._own_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _check(self, offset: int, length: int, allow_short_tail: bool) -> None:
        if self._closed:
            raise UsageError("image writer is already finished")
        end = offset + length
        if offset % self.block_size or end > self.size or offset < 0:
            raise UsageError(
                f"write of {length} bytes at {offset} is not block aligned or exceeds "
                f"the disk size {self.size}"
            )
        if end % self.block_size and not (allow_short_tail and end == self.size):
            raise UsageError(f"write ending at {end} is not block aligned")

    def _encode(
        self, data: bytes | bytearray, start: int, length: int, first: int
    ) -> list[_Result]:
        """Worker thread: zero check, hash, encode unknown chunks (``first`` is the block at
        ``start``), each step one batch of the codec (one GIL release with the compiled
        codec). Blocks are never copied."""
        bs, codec = self.block_size, self._store.codec
        view = memoryview(data)[start : start + length]
        ids = codec.chunk_ids(view, bs)
        parent = self._parent_ids(first, len(ids))
        unknown = self._store.unknown(
            cid for i, cid in enumerate(ids) if cid is not None and cid != parent[i]
        )
        todo: list[int] = []
        for i, cid in enumerate(ids):
            if cid in unknown:
                unknown.discard(cid)  # a block repeated within the task is encoded once
                todo.append(i)
        blocks = [view[i * bs : (i + 1) * bs] for i in todo]
        todo_ids = [cast(bytes, ids[i]) for i in todo]  # unknown ids: never a hole's None
        encoded = dict(zip(todo, codec.encode_many(blocks, todo_ids), strict=True))
        return [(cid, encoded.get(i)) for i, cid in enumerate(ids)]

    def _parent_ids(self, first: int, count: int) -> list[bytes | None]:
        """The parent's chunk ids for blocks ``first .. first+count-1`` (None past its end)."""
        ids: list[bytes | None] = [None] * count
        if self._parent is not None and first < self._parent.blocks:
            n = min(count, self._parent.blocks - first)
            ids[:n] = self._map.lookup(self._parent, first, n)
        return ids

    def _consume_one(self) -> None:
        first, fut, release = self._inflight.popleft()
        results = fut.result()
        if release is not None:  # the buffer's last task is done: no worker reads it now
            release()
        for i, (cid, enc) in enumerate(results):
            if cid is None:
                self.stats.zero_blocks += 1
            elif enc is not None and self._store.add(enc, check_index=False):
                self.stats.new_chunks += 1
                self.stats.new_bytes += enc.raw_len
                self.stats.stored_bytes += len(enc.payload)
                if len(enc.payload) >= INCOMPRESSIBLE * enc.raw_len:
                    self.stats.incompressible_blocks += 1
            else:
                self.stats.dedup_blocks += 1
            self._points.append((first + i, cid))
        if len(self._points) >= BATCH_BLOCKS:
            self._apply()

    def _drain(self) -> None:
        while self._inflight:
            self._consume_one()

    def _apply(self) -> None:
        if not self._points and not self._holes:
            return
        latest = dict(self._points)  # a block written twice keeps its last chunk
        points = sorted(latest.items())
        self._root = self._map.update(self._root, points, self._holes)
        self._points, self._holes = [], []
