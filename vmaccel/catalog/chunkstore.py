"""Chunks: reading them back verified, and appending new ones to packs in write order.

Write order (DESIGN invariant 1), enforced here: a chunk is appended to the open pack; when the
pack passes its target size (or on :meth:`ChunkStore.flush`) it is sealed and its upload
committed to the object store (durable and in place when ``commit`` returns: fsync, link,
directory fsync in the directory store), and only then are its chunk rows committed to the
index. Until that commit a chunk is *pending*: known to this writer (so it is not stored
twice) but invisible to everyone else.
A pack's bytes are written, and a full pack is sealed, on a thread of the pack's own while
appends go on into the next pack; one pack seals at a time, and :meth:`ChunkStore.flush` returns
only when every pack is committed. A failed write or seal is raised by a later ``add`` or by
``flush``; the failed pack is never committed.

Duplicates: image writer workers check the index (``unknown``) and the writer thread re-checks
only the in-memory pending and recently sealed ids (``add(check_index=False)``), so the index is
queried once per block, off the writer thread. A chunk first appended by this store after a
worker's check, and followed by more than ``RECENT_IDS`` sealed ids before that worker's result
is appended, would be appended twice: the second copy is a trailer entry no index row names
(``add_pack`` keeps the first location), garbage that gc reclaims. The image writer's in-flight
window is far smaller (4096 blocks at 4 KiB), so this does not happen in practice; it would be
harmless anyway.

Reads: ``load_many`` resolves many ids with one index query and reads neighbouring chunks of a
pack with one ``pread``; a damaged chunk maps to its error and never hides the others.
``load_into`` does the same but decodes each chunk straight into a buffer the caller names (a
restore's block), with no plaintext object and no copy.

Thread safety: ``load``/``load_many``/``load_into``/``load_node``/``known``/``unknown`` may be
called from any thread. ``add``, ``store_node`` and ``flush`` belong to the single writer thread.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import BinaryIO, cast

from vmaccel.catalog.codec import ChunkCodec, EncodedChunk
from vmaccel.catalog.index import ChunkIndex, ChunkLocation
from vmaccel.catalog.objectstore import Upload
from vmaccel.catalog.pack import KIND_DATA, KIND_NODE, PackWriter
from vmaccel.catalog.packstore import PackStore
from vmaccel.vocabulary.errors import ChunkCorrupt, ChunkMissing, DamageError

logger = logging.getLogger(__name__)

WRITE_BATCH_BYTES = 1024 * 1024  # pack bytes gathered before one write call
IO_QUEUE = 4  # gathered buffers queued for the pack I/O thread
RECENT_IDS = 16384  # ids of the last sealed packs still checked in memory (~2 MB)
READ_GAP_BYTES = 16 * 1024  # neighbouring chunks this close are read with one pread
READ_RUN_BYTES = 4 * 1024 * 1024  # ... up to this many bytes per pread
Buffer = bytes | memoryview


class _Gather:
    """Collects a pack's many small writes (entry header, payload, ...) into few large ones:
    the writer thread then hands over one buffer of up to ``limit`` bytes (handed over when the
    next write would not fit), not two per chunk.

    The buffers are reused: ``out(view, release)`` must call ``release()`` once it has written
    ``view`` (from any thread), which returns the buffer to this gather. So a pack of any size
    costs a few fixed buffers, no allocation (and no page faults) per megabyte written. A write
    larger than a buffer is handed over as is, after what was gathered before it.
    """

    def __init__(
        self,
        out: Callable[[Buffer, Callable[[], None] | None], None],
        limit: int,
        free: list[bytearray],
    ) -> None:
        """``free``: spare buffers, shared by the gathers of one store (popped by the writer
        thread, appended by whichever thread releases one)."""
        self._out, self._limit, self._free = out, limit, free
        self._buf: bytearray | None = None
        self._pos = 0

    def write(self, data: bytes) -> int:
        n = len(data)
        if self._pos + n > self._limit:
            self.drain()
        if n > self._limit:
            self._out(data, None)
            return n
        if self._buf is None:
            self._buf = self._free.pop() if self._free else bytearray(self._limit)
        self._buf[self._pos : self._pos + n] = data  # same length: copied in place
        self._pos += n
        return n

    def drain(self) -> None:
        """Hand over what is gathered (the buffer comes back when it is written)."""
        if self._buf is not None and self._pos:
            buf, n = self._buf, self._pos
            self._buf, self._pos = None, 0
            self._out(memoryview(buf)[:n], functools.partial(self._free.append, buf))


class _PackIO:
    """Writes one pack's bytes, then commits it, in order on a thread of its own, so the
    writer thread never waits for the disk (write calls, fsync) while workers run dry.

    At most ``IO_QUEUE`` buffers are queued (memory stays bounded). A failed write fails
    every later step: the pack is then aborted, never committed.
    """

    def __init__(self, sink: Upload) -> None:
        self._sink = sink
        self._pool = ThreadPoolExecutor(1, "vmaccel-pack")
        self._queued: deque[Future[None]] = deque()
        self._failed: BaseException | None = None

    def write(self, data: Buffer, release: Callable[[], None] | None = None) -> None:
        """Queue a write of ``data``; ``release()`` is called once it is written."""
        self._queued.append(self._pool.submit(self._write, data, release))
        while self._queued and (len(self._queued) > IO_QUEUE or self._queued[0].done()):
            self._queued.popleft().result()  # raises a failed write here, early

    def commit(self, then: Callable[[], None]) -> Future[None]:
        """Queue: make the pack durable and visible (fsync, rename), then call ``then``."""
        fut = self._pool.submit(self._commit, then)
        self._queued.clear()  # their failure, if any, is raised by the returned future
        self._pool.shutdown(wait=False)
        return fut

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._sink.abort()

    def _write(self, data: Buffer, release: Callable[[], None] | None) -> None:
        if self._failed is None:
            try:
                self._sink.stream.write(data)
            except BaseException as exc:
                name = getattr(self._sink.stream, "name", None)  # a path, or a descriptor
                if isinstance(exc, OSError) and exc.filename is None and isinstance(name, str):
                    exc.filename = name  # for the CLI's message
                self._failed = exc
                raise
            if release is not None:
                release()

    def _commit(self, then: Callable[[], None]) -> None:
        if self._failed is not None:
            self._sink.abort()
            raise self._failed
        try:
            self._sink.commit()
        except BaseException:
            self._sink.abort()
            raise
        then()


class ChunkStore:
    def __init__(
        self, index: ChunkIndex, packs: PackStore, codec: ChunkCodec, repo_id: bytes, pack_size: int
    ) -> None:
        self.index, self.packs, self.codec = index, packs, codec
        self._repo_id, self._pack_size = repo_id, pack_size
        self._io: _PackIO | None = None
        self._writer: PackWriter | None = None
        self._gather: _Gather | None = None
        self._buffers: list[bytearray] = []  # the gathers' spare write buffers
        self._pack_name = ""
        self._sealing: Future[None] | None = None  # the previous pack, being committed
        # A chunk appended by this store is in the open pack (_pending), in the pack being
        # sealed (_sealing_ids), or committed; the last RECENT_IDS committed stay in _recent.
        self._pending: set[bytes] = set()
        self._sealing_ids: set[bytes] = set()
        self._recent: OrderedDict[bytes, None] = OrderedDict()  # oldest first, committed
        self._pending_nodes: dict[bytes, bytes] = {}
        self._sealing_nodes: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self.stored_bytes = 0  # payload bytes appended by this store (new data, after codec)
        self.packs_written = 0

    # -- reading ----------------------------------------------------------------------------

    def load(self, chunk_id: bytes) -> bytes:
        """The verified plaintext of a committed chunk. Raises a :class:`DamageError`."""
        loc = self.index.chunk(chunk_id)
        if loc is None:
            raise ChunkMissing(_not_indexed(chunk_id))
        return self._decode(loc, self.packs.read(loc.pack, loc.offset, loc.stored_len))

    def load_many(self, ids: Sequence[bytes]) -> dict[bytes, bytes | DamageError]:
        """id -> verified plaintext, or the :class:`DamageError` that reading it raises.

        One index query for all ``ids``, one ``pread`` per run of neighbouring chunks of a
        pack (chunks written together are read together) and one decode batch. Damage is per
        chunk: the result for a chunk is exactly what :meth:`load` would return or raise.
        """
        found, errors = self._stored(ids)
        out: dict[bytes, bytes | DamageError] = dict(errors)
        items = [(loc.id, loc.flags, loc.raw_len, payload) for loc, payload in found]
        for (loc, _), got in zip(found, self.codec.decode_many(items), strict=True):
            out[loc.id] = _located(got, loc) if isinstance(got, ChunkCorrupt) else got
        return out

    def prefetch(self, ids: Iterable[bytes]) -> None:
        """Ask the store to start reading the stored bytes of ``ids`` (one index query, one
        hint per run of neighbouring chunks of a pack) and return without waiting for them.
        Best effort: ids that are not indexed are skipped; their read reports them."""
        for run, start, end in _runs(self.index.chunk_locations(ids).values()):
            self.packs.prefetch(run[0].pack, start, end - start)

    def load_into(self, targets: Mapping[bytes, memoryview]) -> dict[bytes, DamageError]:
        """Decode each chunk of ``targets`` (id -> a view of exactly its plaintext length)
        straight into its view, verified, batched as :meth:`load_many` is. Returns id -> the
        :class:`DamageError` of each chunk that failed; the bytes in a failed chunk's view are
        unspecified."""
        found, errors = self._stored(targets)
        sized = []
        for loc, payload in found:
            if loc.raw_len == len(targets[loc.id]):
                sized.append((loc, payload))
            else:
                errors[loc.id] = ChunkCorrupt(
                    f"chunk {loc.id.hex()[:16]} holds {loc.raw_len} bytes where its block has "
                    f"{len(targets[loc.id])} (pack {loc.pack}, offset {loc.offset})"
                )
        items = [(loc.id, loc.flags, payload, targets[loc.id]) for loc, payload in sized]
        for (loc, _), exc in zip(sized, self.codec.decode_many_into(items), strict=True):
            if exc is not None:
                errors[loc.id] = _located(exc, loc)
        return errors

    def _stored(
        self, ids: Iterable[bytes]
    ) -> tuple[list[tuple[ChunkLocation, Buffer]], dict[bytes, DamageError]]:
        """The location and stored payload of each chunk of ``ids`` that can be read, and
        id -> the :class:`DamageError` of each that is not indexed or cannot be read. One index
        query, one ``pread`` per run of neighbouring chunks (a run whose pack is missing or
        short is read again chunk by chunk, to find out which)."""
        locs = self.index.chunk_locations(ids)
        errors: dict[bytes, DamageError] = {
            cid: ChunkMissing(_not_indexed(cid)) for cid in ids if cid not in locs
        }
        found: list[tuple[ChunkLocation, Buffer]] = []
        for run, start, end in _runs(locs.values()):
            data: memoryview | None
            try:
                data = memoryview(self.packs.read(run[0].pack, start, end - start))
            except DamageError:
                data = None
            for loc in run:
                if data is not None:
                    found.append(
                        (loc, data[loc.offset - start : loc.offset - start + loc.stored_len])
                    )
                    continue
                try:
                    found.append((loc, self.packs.read(loc.pack, loc.offset, loc.stored_len)))
                except DamageError as exc:
                    errors[loc.id] = exc
        return found, errors

    def _decode(self, loc: ChunkLocation, payload: Buffer) -> bytes:
        try:
            return self.codec.decode(loc.id, loc.flags, loc.raw_len, payload)
        except ChunkCorrupt as exc:
            raise _located(exc, loc) from None

    def load_node(self, node_id: bytes) -> bytes:
        with self._lock:
            pending = self._pending_nodes.get(node_id) or self._sealing_nodes.get(node_id)
        return pending if pending is not None else self.load(node_id)

    def known(self, chunk_id: bytes) -> bool:
        """True if the chunk is stored or pending in this writer (no need to store it)."""
        return self._held(chunk_id) or self.index.has_chunk(chunk_id)

    def unknown(self, ids: Iterable[bytes]) -> set[bytes]:
        """Those of ``ids`` neither pending in this writer nor stored: one batched index query
        (on its own read connection, so worker threads do not serialize on the index lock)."""
        rest = {cid for cid in ids if not self._held(cid)}
        return rest - self.index.existing_chunks(rest) if rest else rest

    def _held(self, chunk_id: bytes) -> bool:
        # Pending and sealing sets are replaced, never emptied in place, and only after the
        # next stage holds their ids (rows are committed before _recent takes them): this
        # lock-free check never misses a chunk moving along pending -> sealing -> recent.
        return (
            chunk_id in self._pending or chunk_id in self._sealing_ids or (chunk_id in self._recent)
        )

    # -- writing ----------------------------------------------------------------------------

    def add(self, chunk: EncodedChunk, kind: int = KIND_DATA, check_index: bool = True) -> bool:
        """Append ``chunk`` unless it is known. Returns True if it was appended.

        ``check_index=False``: the caller checked the index already (see "Duplicates"); only
        the pending and recently sealed ids are checked again, with no query.
        """
        if self._held(chunk.id) if not check_index else self.known(chunk.id):
            return False
        writer = self._open_writer()
        writer.add(chunk.id, kind, chunk.flags, chunk.raw_len, chunk.payload, chunk.crc)
        self._pending.add(chunk.id)
        self.stored_bytes += len(chunk.payload)
        if writer.size >= self._pack_size:
            self._seal()  # in the background: appends go on into the next pack
        return True

    def store_node(self, data: bytes) -> bytes:
        """Store one map node (dedup by content) and return its id."""
        node_id = self.codec.chunk_id(data)
        if not self.known(node_id):
            with self._lock:
                self._pending_nodes[node_id] = data
            self.add(self.codec.encode(data, node_id), KIND_NODE)
        return node_id

    def flush(self) -> None:
        """Seal the open pack: durable on disk, then its rows committed, when this returns
        (as is every pack sealed before). Idempotent."""
        self._seal()
        self._wait_sealed()

    def abort(self) -> None:
        """Drop the open pack (its chunks were never visible). A pack already being sealed
        is finished: its chunks are durable and unreferenced, garbage for gc."""
        if self._io is not None:
            self._io.abort()
        self._io = self._writer = self._gather = None
        if self._sealing is not None:
            wait([self._sealing])
            if (exc := self._sealing.exception()) is not None:
                # Not a warning: its chunks were garbage either way, and the error that
                # aborted the backup is reported; this is most often the same one (disk full).
                logger.info("sealing a pack of an aborted backup failed: %s", exc)
            self._sealing = None
        with self._lock:
            self._pending, self._sealing_ids = set(), set()
            self._pending_nodes, self._sealing_nodes = {}, {}

    def _seal(self) -> None:
        """Queue the open pack's commit on its I/O thread; at most one pack is sealing."""
        self._wait_sealed()
        if self._writer is None or self._io is None or self._gather is None:
            return
        writer, io, gather, name = self._writer, self._io, self._gather, self._pack_name
        self._io = self._writer = self._gather = None
        try:
            size = writer.seal()
            gather.drain()
        except BaseException:
            io.abort()
            raise
        with self._lock:
            self._sealing_ids, self._pending = self._pending, set()
            self._sealing_nodes, self._pending_nodes = self._pending_nodes, {}
        then = functools.partial(self._indexed, name, size, writer)
        self._sealing = io.commit(then)

    def _indexed(self, name: str, size: int, writer: PackWriter) -> None:
        """(I/O thread) The pack is durable: commit its rows, then forget it as pending."""
        with self.index.writing():
            self.index.add_pack(name, size, time.time(), writer.entries)
        self.packs_written += 1
        with self._lock:
            self._recent.update(dict.fromkeys(self._sealing_ids))
            while len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)
            self._sealing_ids, self._sealing_nodes = set(), {}
        logger.debug("sealed pack %s: %d chunks, %d bytes", name, len(writer), size)

    def _wait_sealed(self) -> None:
        """Wait for the pack being sealed; raise its error (its chunks are then lost)."""
        fut, self._sealing = self._sealing, None
        if fut is None:
            return
        try:
            fut.result()
        except BaseException:
            with self._lock:
                self._sealing_ids, self._sealing_nodes = set(), {}
            raise

    def _open_writer(self) -> PackWriter:
        if self._writer is None:
            self._pack_name = secrets.token_hex(16)
            self._io = _PackIO(self.packs.create(self._pack_name))
            self._gather = _Gather(self._io.write, WRITE_BATCH_BYTES, self._buffers)
            self._writer = PackWriter(cast(BinaryIO, self._gather), self._repo_id)
        return self._writer


def _not_indexed(chunk_id: bytes) -> str:
    return f"chunk {chunk_id.hex()[:16]} is not in the index"


def _runs(locs: Iterable[ChunkLocation]) -> list[tuple[list[ChunkLocation], int, int]]:
    """``locs`` in (pack, offset) order, split into runs that one pread each can cover: each
    run with its start and end offset in its pack (bytes)."""
    runs: list[list[ChunkLocation]] = []
    for loc in sorted(locs, key=lambda c: (c.pack, c.offset)):
        if runs:
            run = runs[-1]
            first, last = run[0], run[-1]
            gap = loc.offset - (last.offset + last.stored_len)
            end = loc.offset + loc.stored_len
            if (
                loc.pack == first.pack
                and 0 <= gap <= READ_GAP_BYTES
                and end - first.offset <= READ_RUN_BYTES
            ):
                run.append(loc)
                continue
        runs.append([loc])
    return [(run, run[0].offset, max(c.offset + c.stored_len for c in run)) for run in runs]


def _located(exc: ChunkCorrupt, loc: ChunkLocation) -> ChunkCorrupt:
    """``exc`` with where the chunk is stored (pack and offset) added to its message."""
    return ChunkCorrupt(f"{exc} (pack {loc.pack}, offset {loc.offset})")


__all__ = ["ChunkStore", "DamageError"]
