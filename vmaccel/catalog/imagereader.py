"""Reading an image: a seekable, verified byte stream over a block map.

:class:`ImageReader` is an ``io.RawIOBase`` (so ``shutil``, filesystem parsers and FUSE take it
unchanged) and also offers thread-safe positional reads (:meth:`ImageReader.read_into`,
:meth:`ImageReader.pread`). Holes read as zeros without I/O. Every chunk is verified against its
content hash; damage raises a :class:`~vmaccel.vocabulary.errors.DamageError` for the read that
touches it, and never returns wrong bytes.

How chunks are fetched: the blocks a read misses are grouped into *jobs* of up to
``JOB_BLOCKS`` chunks; a worker thread resolves a job's locations with one index query, reads
neighbouring chunks of a pack with one ``pread`` and decodes them (zstd and BLAKE3 release the
GIL, so decoding runs on every core). Sequential access (within ``SEQUENTIAL_SLACK_BYTES`` of the
previous read, as multi-threaded FUSE reads arrive) also submits jobs for the next
``readahead_bytes``. A read that misses exactly one chunk (random access) loads it in the
calling thread, skipping the pool. Decoded chunks go to an LRU cache bounded in bytes; with
the read-ahead in flight, memory does not grow with the image size.

Bulk reads (at least ``BULK_BYTES``, as a restore issues them) take another path: their
blocks are split into jobs of ``BULK_JOB_BLOCKS`` that decode each chunk straight into its
block of the caller's buffer (zstd writes there and BLAKE3 checks it there: no plaintext
object, no copy), without the cache, the read-ahead or a future per chunk; the calling thread
and the pool take the jobs from one queue, so no thread idles while another still has two
jobs to do. Memory is then the caller's buffers plus what the jobs of one read hold, whatever
the image size; overlap comes from the caller (it writes one buffer while the next one
fills). Decoding the next run ahead as well was measured and dropped: it kept about two
reads' worth of chunks alive and the allocator's trimming of them cost more system time than
the overlap saved. What is read ahead instead is the stored bytes: a bulk read that goes on
forward hints the store (:meth:`ChunkStore.prefetch`) to read the packs of the next
``prefetch_bytes`` of the image, on a thread of its own, so that a cold restore's preads find
them in the page cache instead of waiting for the disk one by one.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from vmaccel.catalog.blockmap import BlockMap, MapRoot
from vmaccel.catalog.chunkstore import ChunkStore
from vmaccel.vocabulary.errors import DamageError, VmaccelError

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_READAHEAD_BYTES = 16 * 1024 * 1024
SEQUENTIAL_SLACK_BYTES = 4 * 1024 * 1024
JOB_BLOCKS = 64  # chunks per fetch job: one index query, few preads, one future
BULK_BYTES = 4 * 1024 * 1024  # reads this large fill the caller's buffer directly
BULK_JOB_BLOCKS = 16  # blocks per job of a bulk read: several jobs per read keep workers even
DEFAULT_PREFETCH_BYTES = 32 * 1024 * 1024  # image bytes past a bulk read whose packs are hinted

_Loaded = dict[bytes, bytes | DamageError]


class ImageReader(io.RawIOBase):
    def __init__(
        self,
        store: ChunkStore,
        blockmap: BlockMap,
        root: MapRoot,
        size: int,
        block_size: int,
        workers: int | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        readahead_bytes: int = DEFAULT_READAHEAD_BYTES,
        prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    ) -> None:
        super().__init__()
        self._store, self._map, self._root = store, blockmap, root
        self._size, self.block_size = size, block_size
        # Decoding is CPU bound and coalesced preads are large: a worker per core is enough,
        # more only adds thread switches.
        self._workers = max(workers or min(os.cpu_count() or 2, 8), 1)
        self._pool = ThreadPoolExecutor(self._workers, "vmaccel-read")
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cached = 0  # bytes in _cache
        self._cache_limit = max(cache_bytes, 2 * self._workers * block_size)
        self._readahead = _Ahead(_blocks(readahead_bytes, block_size), tail=False)
        self._inflight: dict[bytes, Future[_Loaded]] = {}
        self._lock = threading.RLock()  # a done future runs its callback under _fetch's lock
        self._pos = 0
        self._last_end = -1
        self._packs_ahead = _Ahead(_blocks(prefetch_bytes, block_size), tail=True)
        self._pf_pool: ThreadPoolExecutor | None = None  # one thread, started by the first hint
        self._zero = memoryview(bytes(block_size))

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
            if self._pf_pool is not None:
                self._pf_pool.shutdown(wait=True, cancel_futures=True)
            with self._lock:
                self._cache.clear()
                self._cached = 0
        super().close()

    # -- positional reads (thread safe) -------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(length, self._size - offset)))
        n = self.read_into(offset, memoryview(buf))
        return bytes(buf[:n]) if n < len(buf) else bytes(buf)

    def read_into(self, offset: int, buf: memoryview) -> int:
        """Fill ``buf`` with image bytes from ``offset``; returns the count (0 at the end)."""
        n = max(0, min(len(buf), self._size - offset))
        if n == 0:
            return 0
        bs = self.block_size
        first, last = offset // bs, (offset + n - 1) // bs
        ids = self._map.lookup(self._root, first, last - first + 1)
        if n >= BULK_BYTES:
            self._read_bulk(offset, buf[:n], first, ids)
            self._last_end = offset + n
            return n
        have, waits, missing = self._claim([cid for cid in ids if cid is not None])
        if len(missing) == 1:  # random access: no pool round trip for one chunk
            have[missing[0]] = self._load_now(missing[0])
        else:
            waits.update(self._submit(missing))
        # Near-sequential counts as sequential: FUSE and other multi-threaded callers issue
        # neighbouring reads in parallel, so they arrive slightly out of order.
        if self._readahead.size and abs(offset - self._last_end) <= SEQUENTIAL_SLACK_BYTES:
            self._prefetch(last + 1)
        self._last_end = offset + n
        pos = 0
        for i, cid in enumerate(ids):
            block_start = (first + i) * bs
            lo = max(offset, block_start) - block_start
            hi = min(offset + n, block_start + bs) - block_start
            if cid is None:
                buf[pos : pos + hi - lo] = self._zero[lo:hi]
            else:
                data = have.get(cid)
                if data is None:
                    data = have[cid] = _result(waits[cid].result(), cid)
                buf[pos : pos + hi - lo] = memoryview(data)[lo:hi]
            pos += hi - lo
        return n

    def _read_bulk(self, offset: int, buf: memoryview, first: int, ids: list[bytes | None]) -> None:
        """Fill ``buf`` (image bytes from ``offset``; ``ids`` the map of its blocks from block
        ``first``) by jobs of ``BULK_JOB_BLOCKS``, taken in order by the calling thread and up
        to ``_workers`` pool threads alike until none is left (so the read ends when its last
        job does, whichever thread is slow). A read that moves forward by at most a prefetch
        window also hints the packs of the window after it. Cached chunks are copied,
        the others loaded and decoded into ``buf`` (not cached; a chunk another reader's job is
        fetching is loaded again rather than awaited). Raises the first damaged chunk's error
        in block order, once no job of the read touches ``buf`` any more."""
        if 0 <= offset - max(self._last_end, 0) <= self._packs_ahead.size * self.block_size:
            self._prefetch_packs(first + len(ids))  # forward, within a window: a stream
        have, _, _ = self._claim([cid for cid in ids if cid is not None])
        todo = deque(range(0, len(ids), BULK_JOB_BLOCKS))  # job starts, taken in order
        failed: dict[int, BaseException] = {}

        def drain() -> None:  # take jobs until none is left (deque.popleft is atomic)
            while todo:
                try:
                    lo = todo.popleft()
                except IndexError:
                    return
                try:
                    self._fill(offset, buf, first, ids[lo : lo + BULK_JOB_BLOCKS], lo, have)
                except Exception as exc:  # noqa: BLE001 - raised below, in block order
                    failed[lo] = exc

        helpers = [self._pool.submit(drain) for _ in range(min(self._workers, len(todo) - 1))]
        drain()
        for helper in helpers:  # one that has not started (a busy pool) finds nothing left
            if not helper.cancel():
                helper.result()  # no job of this read touches buf once every helper is back
        if failed:
            raise failed[min(failed)]

    def _fill(
        self,
        offset: int,
        buf: memoryview,
        first: int,
        part: list[bytes | None],
        lo: int,
        have: dict[bytes, bytes],
    ) -> None:
        """One job of a bulk read (a pool thread or the caller): blocks ``first + lo ...``
        (``part``) into ``buf``. Chunks in ``have`` are copied; a block that ``buf`` holds
        whole is decoded straight into it (a chunk repeated in the job once, then copied); the
        rest (blocks cut by the read's ends) are loaded and copied. Raises the first damaged
        block's error in block order."""
        bs, end, first = self.block_size, offset + len(buf), first + lo
        spans = [
            (max(offset, i * bs) - offset, min(end, i * bs + bs) - offset)
            for i in range(first, first + len(part))
        ]
        whole: dict[bytes, int] = {}  # chunk -> the block (index in part) decoded into
        for k, cid in enumerate(part):
            a, b = spans[k]
            fresh = cid is not None and cid not in have and cid not in whole
            if fresh and b - a == self._len(first + k):
                whole[cast(bytes, cid)] = k
        errors = self._store.load_into({cid: buf[slice(*spans[k])] for cid, k in whole.items()})
        rest = [c for c in dict.fromkeys(part) if c and c not in have and c not in whole]
        loaded: _Loaded = {**self._store.load_many(rest), **errors} if rest else dict(errors)
        for k, cid in enumerate(part):
            a, b = spans[k]
            skip = (first + k) * bs - offset  # where the block starts, relative to buf
            if cid is None:
                buf[a:b] = self._zero[a - skip : b - skip]
            elif cid in loaded:
                buf[a:b] = memoryview(_result(loaded, cid))[a - skip : b - skip]
            elif cid in have:
                buf[a:b] = memoryview(have[cid])[a - skip : b - skip]
            elif whole[cid] != k:  # a repeat of a chunk decoded into another block of buf
                buf[a:b] = buf[slice(*spans[whole[cid]])][a - skip : b - skip]

    def _len(self, block: int) -> int:
        """Bytes in ``block`` (the last block of the image may be short)."""
        return min(self.block_size, self._size - block * self.block_size)

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

    def _claim(
        self, ids: list[bytes]
    ) -> tuple[dict[bytes, bytes], dict[bytes, Future[_Loaded]], list[bytes]]:
        """Split ``ids`` into cached (their bytes), in flight (their job) and missing ones.

        Missing ids must be submitted by the caller (``_submit``) or loaded (``_load_now``).
        """
        have: dict[bytes, bytes] = {}
        waits: dict[bytes, Future[_Loaded]] = {}
        missing: dict[bytes, None] = {}  # ordered: jobs follow the read's block order
        with self._lock:
            for cid in ids:
                if cid in have or cid in waits or cid in missing:
                    continue
                data = self._cache.get(cid)
                if data is not None:
                    self._cache.move_to_end(cid)
                    have[cid] = data
                elif (fut := self._inflight.get(cid)) is not None:
                    waits[cid] = fut
                else:
                    missing[cid] = None
        return have, waits, list(missing)

    def _submit(self, ids: list[bytes]) -> dict[bytes, Future[_Loaded]]:
        """Start jobs for ``ids`` (not cached, not in flight); several jobs when there are
        enough chunks to keep more than one worker busy. Returns each id's job."""
        out: dict[bytes, Future[_Loaded]] = {}
        if not ids:
            return out
        with self._lock:
            todo = []
            for cid in ids:
                fut = self._inflight.get(cid)  # another thread submitted it meanwhile
                if fut is not None:
                    out[cid] = fut
                else:
                    todo.append(cid)
            size = min(JOB_BLOCKS, max(2, -(-len(todo) // self._workers)))
            for start in range(0, len(todo), size):
                job = todo[start : start + size]
                fut = self._pool.submit(self._store.load_many, job)
                for cid in job:
                    self._inflight[cid] = out[cid] = fut
                fut.add_done_callback(functools.partial(self._landed, job))
        return out

    def _load_now(self, cid: bytes) -> bytes:
        # load_many: its index lookup runs on a read connection of its own, so FUSE threads
        # missing at the same time do not queue on the index lock.
        data = _result(self._store.load_many([cid]), cid)  # raises the chunk's DamageError
        with self._lock:
            self._remember(cid, data)
        return data

    def _prefetch(self, first: int) -> None:
        """Request the read-ahead window after ``first`` (see :class:`_Ahead`): blocks already
        requested are not looked up again, so small sequential reads do not each walk the
        whole window."""
        with self._lock:
            todo = self._readahead.claim(first, self._root.blocks)
        if todo is None:
            return
        try:
            ids = self._map.lookup(self._root, todo.start, len(todo))
        except DamageError:
            return  # read-ahead is best effort: only a read that needs a damaged node fails
        _, _, missing = self._claim([cid for cid in ids if cid is not None])
        self._submit(missing)

    def _prefetch_packs(self, first: int) -> None:
        """Hint the store to read the packs of the prefetch window after ``first`` (see
        :class:`_Ahead`), on the hint thread: the map lookup and index query stay off the
        read's critical path, and the bytes arrive in the page cache (or the read cache) while
        this read decodes."""
        with self._lock:
            todo = self._packs_ahead.claim(first, self._root.blocks)
            if todo is None:
                return
            if self._pf_pool is None:
                self._pf_pool = ThreadPoolExecutor(1, "vmaccel-prefetch")
            pool = self._pf_pool
        pool.submit(self._hint, todo.start, len(todo))

    def _hint(self, first: int, count: int) -> None:
        try:
            ids = self._map.lookup(self._root, first, count)
            self._store.prefetch([cid for cid in ids if cid is not None])
        except (VmaccelError, OSError):
            pass  # a hint only: the read that needs these chunks reports what is wrong

    def _landed(self, job: list[bytes], fut: Future[_Loaded]) -> None:
        with self._lock:
            for cid in job:
                self._inflight.pop(cid, None)
            if fut.cancelled() or fut.exception() is not None:
                return  # reported to the readers that wait on this job
            for cid, data in fut.result().items():
                if isinstance(data, bytes):  # damage is not cached: each read raises it
                    self._remember(cid, data)

    def _remember(self, cid: bytes, data: bytes) -> None:
        """Cache ``data`` (caller holds the lock), evicting least recently used chunks."""
        old = self._cache.pop(cid, None)
        self._cached += len(data) - (len(old) if old is not None else 0)
        self._cache[cid] = data
        while self._cached > self._cache_limit and len(self._cache) > 1:
            self._cached -= len(self._cache.popitem(last=False)[1])


@dataclass
class _Ahead:
    """Blocks a reader asks for ahead of its reads, each block once: the ``size`` blocks after
    a read, handed out in batches of at least a quarter of that (a smaller batch only as the
    image's last, with ``tail``). ``size`` 0: never. The reader's lock guards it."""

    size: int
    tail: bool
    next: int = 0  # the first block not handed out yet

    def claim(self, first: int, blocks: int) -> range | None:
        """The blocks to ask for now, after a read that ends before block ``first`` of an
        image of ``blocks`` blocks; None when there are too few new ones."""
        end = min(first + self.size, blocks)
        start = self.next if first <= self.next <= end else first
        small = end - start < max(1, self.size // 4)
        if end <= start or (small and not (self.tail and end == blocks)):
            return None
        self.next = end
        return range(start, end)


def _blocks(nbytes: int, block_size: int) -> int:
    """Whole blocks in a window of ``nbytes`` (at least one; 0 for no window)."""
    return max(nbytes // block_size, 1) if nbytes > 0 else 0


def _result(loaded: _Loaded, cid: bytes) -> bytes:
    data = loaded[cid]
    if isinstance(data, DamageError):
        raise data
    return data
