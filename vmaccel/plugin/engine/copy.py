"""Copying a planned disk through a transport into an image writer.

Reads are split into block-aligned pieces of up to ``piece_bytes`` and issued on a few threads
(the source's :class:`~vmaccel.plugin.transport.source.ReadShape`; transports block on the
network or the disk, and release the GIL), while the calling thread hands the pieces to the
:class:`~vmaccel.catalog.imagewriter.ImageWriter` in order; the writer's own workers hash and
compress. The window of pieces in flight is bounded, so memory is ``O(readers x piece_bytes)``
whatever the disk size.

A source with ``read_into(offset, buffer)`` (the file and http transports) reads whole pieces
into a few reused buffers, which the writer hands back (``release``) once its workers are done
with them: no allocation per piece, so no page faults per read and no heap growth from freed
pieces (glibc raises its mmap threshold after the first free and then keeps them in the heap).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Protocol

from vmaccel.catalog.imagewriter import ImageWriter
from vmaccel.guestfs.extent import Extent
from vmaccel.plugin.engine.plan import DiskPlan
from vmaccel.plugin.transport.source import NETWORK_READS, DiskSource, ReadShape

Progress = Callable[[int], None]
_Pending = tuple[Extent, "Future[bytes | bytearray]", Callable[[], None] | None]


class ReadInto(Protocol):
    """A source's optional ``read_into``: fill all of ``buffer`` from byte ``offset`` (raises
    :class:`~vmaccel.vocabulary.errors.TransportError` like ``read``)."""

    def __call__(self, offset: int, buffer: memoryview) -> None: ...


def pieces(extents: tuple[Extent, ...], piece_bytes: int) -> Iterator[Extent]:
    """Split ``extents`` into consecutive pieces of at most ``piece_bytes``."""
    for e in extents:
        for start in range(e.offset, e.end, piece_bytes):
            yield Extent(start, min(piece_bytes, e.end - start))


def copy_disk(
    source: DiskSource,
    writer: ImageWriter,
    plan: DiskPlan,
    progress: Progress | None = None,
    readers: int | None = None,
    piece_bytes: int | None = None,
) -> int:
    """Punch ``plan.holes``, then read ``plan.read`` from ``source`` into ``writer``.

    Returns the bytes read. A transport error propagates after in-flight reads finish; the
    caller then aborts the backup, so nothing half-written becomes visible.
    """
    read_into: ReadInto | None = getattr(source, "read_into", None)
    shape: ReadShape = getattr(source, "read_shape", NETWORK_READS)
    readers = readers or shape.readers
    piece_bytes = piece_bytes or max(plan.block_size, shape.piece_bytes)
    if piece_bytes % plan.block_size:
        raise ValueError("piece size must be a multiple of the block size")
    for hole in plan.holes:
        writer.punch(hole.offset, hole.length)
    total = 0
    free: list[bytearray] = []  # reusable piece buffers; used on this thread only
    # No piece is longer than the longest extent: an incremental's small extents get small
    # buffers, not zeroed megabytes each.
    buffer_bytes = min(piece_bytes, max((e.length for e in plan.read), default=0))
    window: deque[_Pending] = deque()
    with ThreadPoolExecutor(readers, "vmaccel-transport") as pool:

        def fetch(piece: Extent) -> _Pending:
            if read_into is None:
                return piece, pool.submit(source.read, piece.offset, piece.length), None
            buf = free.pop() if free else bytearray(buffer_bytes)
            return (
                piece,
                pool.submit(_fill, read_into, piece.offset, buf, piece.length),
                partial(free.append, buf),
            )

        try:
            for piece in pieces(plan.read, piece_bytes):
                window.append(fetch(piece))
                if len(window) > readers + 1:
                    total += _land(window.popleft(), writer, progress)
            while window:
                total += _land(window.popleft(), writer, progress)
        finally:
            for _, fut, _ in window:
                fut.cancel()
    return total


def _fill(read_into: ReadInto, offset: int, buf: bytearray, length: int) -> bytearray:
    """(reader thread) The first ``length`` bytes of ``buf`` filled from ``offset``."""
    read_into(offset, memoryview(buf)[:length])
    return buf


def _land(item: _Pending, writer: ImageWriter, progress: Progress | None) -> int:
    piece, fut, release = item
    writer.write(piece.offset, fut.result(), release, piece.length)
    if progress is not None:
        progress(piece.length)
    return piece.length
