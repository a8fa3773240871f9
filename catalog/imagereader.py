"""Reading an image: a seekable, verified byte stream over a block map.

:class:`ImageReader` is an ``io.RawIOBase`` (so ``shutil``, filesystem parsers and FUSE take it
unchanged) and also offers thread-safe positional reads (:meth:`ImageReader.read_into`,
:meth:`ImageReader.pread`). Holes read as zeros without I/O. Chunks are fetched in parallel on
a small thread pool, with read-ahead when access is sequential, into a cache bounded in bytes
(memory does not grow with the image size). Every chunk is verified against its content hash;
damage raises a :class:`~catalog.errors.DamageError` for the read that touches it, and never
returns wrong bytes.
"""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from catalog.blockmap import BlockMap, MapRoot
from catalog.chunkstore import ChunkStore
from catalog.errors import DamageError

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_READAHEAD_BYTES = 16 * 1024 * 1024
SEQUENTIAL_SLACK_BYTES = 4 * 1024 * 1024


class ImageReader(io.RawIOBase):
    def __init__(
        self,
        store: ChunkStore,
        blockmap: BlockMap,
        root: MapRoot,
        size: int,
        block_size: int,
        workers: int = 4,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        readahead_bytes: int = DEFAULT_READAHEAD_BYTES,
    ) -> None:
        super().__init__()
        self._store, self._map, self._root = store, blockmap, root
        self._size, self.block_size = size, block_size
        self._pool = ThreadPoolExecutor(workers, "vmaccel-read")
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_limit = max(cache_bytes // block_size, 2 * workers)
        self._readahead = max(readahead_bytes // block_size, 1)
        self._inflight: dict[bytes, Future[bytes]] = {}
        self._lock = threading.RLock()  # a done future runs its callback under _fetch's lock
        self._pos = 0
        self._last_end = -1
        self._ra_next = 0  # first block not yet requested by read-ahead
        self._zero = bytes(block_size)

    @property
    def size(self) -> int:
        """Image size in bytes."""
        return self._size

    # -- io.RawIOBase -----------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = self.read_into(self._pos, memoryview(buffer).cast("B"))
        self._pos += n
        return n

    def readall(self) -> bytes:
        """Read to the end in large positional reads (the io default uses 8 KiB)."""
        parts = []
        while chunk := self.pread(self._pos, 8 * 1024 * 1024):
            parts.append(chunk)
            self._pos += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._pool.shutdown(wait=True, cancel_futures=True)
            with self._lock:
                self._cache.clear()
        super().close()

    # -- positional reads (thread safe) -------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(length, self._size - offset)))
        n = self.read_into(offset, memoryview(buf))
        return bytes(buf[:n])

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` with image bytes from ``offset``; returns the count (0 at the end)."""
        n = max(0, min(len(buf), self._size - offset))
        if n == 0:
            return 0
        bs = self.block_size
        first, last = offset // bs, (offset + n - 1) // bs
        ids = self._map.lookup(self._root, first, last - first + 1)
        futures = [self._fetch(cid) if cid else None for cid in ids]
        # Near-sequential counts as sequential: FUSE and other multi-threaded callers issue
        # neighbouring reads in parallel, so they arrive slightly out of order.
        if abs(offset - self._last_end) <= SEQUENTIAL_SLACK_BYTES:
            self._prefetch(last + 1)
        self._last_end = offset + n
        pos = 0
        for i, fut in enumerate(futures):
            block_start = (first + i) * bs
            lo = max(offset, block_start) - block_start
            hi = min(offset + n, block_start + bs) - block_start
            if fut is None:
                buf[pos : pos + hi - lo] = self._zero[: hi - lo]
            else:
                data = fut.result()
                buf[pos : pos + hi - lo] = data[lo:hi]
            pos += hi - lo
        return n

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, is_data) runs covering the image, from the map alone (no I/O)."""
        blocks, bs = self._root.blocks, self.block_size
        start, cur_data = 0, None
        step = 65536
        for base in range(0, blocks, step):
            ids = self._map.lookup(self._root, base, min(step, blocks - base))
            for i, cid in enumerate(ids):
                is_data = cid is not None
                if cur_data is None:
                    cur_data = is_data
                elif is_data != cur_data:
                    yield start * bs, (base + i - start) * bs, cur_data
                    start, cur_data = base + i, is_data
        if cur_data is not None:
            yield start * bs, min(blocks * bs, self._size) - start * bs, cur_data

    # -- chunk fetching -----------------------------------------------------------------------

    def _prefetch(self, first: int) -> None:
        """Request the ``_readahead`` blocks after ``first``, in batches of at least a quarter
        window: blocks already requested are not looked up again, so small sequential reads
        do not each walk the whole window."""
        end = min(first + self._readahead, self._root.blocks)
        with self._lock:
            start = self._ra_next if first <= self._ra_next <= end else first
            if end - start < max(1, self._readahead // 4):
                return
            self._ra_next = end
        try:
            ids = self._map.lookup(self._root, start, end - start)
        except DamageError:
            return  # read-ahead is best effort: only a read that needs a damaged node fails
        for cid in ids:
            if cid is not None:
                self._fetch(cid)

    def _fetch(self, cid: bytes) -> Future[bytes]:
        with self._lock:
            data = self._cache.get(cid)
            if data is not None:
                self._cache.move_to_end(cid)
                done: Future[bytes] = Future()
                done.set_result(data)
                return done
            fut = self._inflight.get(cid)
            if fut is None:
                fut = self._pool.submit(self._store.load, cid)
                self._inflight[cid] = fut
                fut.add_done_callback(functools.partial(self._landed, cid))
            return fut

    def _landed(self, cid: bytes, fut: Future[bytes]) -> None:
        with self._lock:
            self._inflight.pop(cid, None)
            if fut.cancelled() or fut.exception() is not None:
                return  # damage is reported to the reader that waits on this future
            self._cache[cid] = fut.result()
            while len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)
