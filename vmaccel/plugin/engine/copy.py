"""Copying a planned disk through a transport into an image writer.

Reads are split into block-aligned pieces of up to ``piece_bytes`` and issued on a few
threads (transports block on the network or the disk, and release the GIL), while the calling
thread hands the pieces to the :class:`~vmaccel.catalog.imagewriter.ImageWriter` in order; the
writer's own workers hash and compress. The window of pieces in flight is bounded, so memory is
``O(readers x piece_bytes)`` whatever the disk size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from vmaccel.catalog.imagewriter import ImageWriter
from vmaccel.guestfs.extent import Extent
from vmaccel.plugin.engine.plan import DiskPlan
from vmaccel.plugin.transport.source import DiskSource

Progress = Callable[[int], None]
PIECE_BYTES = 4 * 1024 * 1024


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
    readers: int = 3,
    piece_bytes: int = PIECE_BYTES,
) -> int:
    """Punch ``plan.holes``, then read ``plan.read`` from ``source`` into ``writer``.

    Returns the bytes read. A transport error propagates after in-flight reads finish; the
    caller then aborts the backup, so nothing half-written becomes visible.
    """
    if piece_bytes % plan.block_size:
        raise ValueError("piece size must be a multiple of the block size")
    for hole in plan.holes:
        writer.punch(hole.offset, hole.length)
    total = 0
    window: deque[tuple[Extent, Future[bytes]]] = deque()
    with ThreadPoolExecutor(readers, "vmaccel-transport") as pool:
        try:
            for piece in pieces(plan.read, piece_bytes):
                window.append((piece, pool.submit(source.read, piece.offset, piece.length)))
                if len(window) > readers * 2:
                    total += _land(window.popleft(), writer, progress)
            while window:
                total += _land(window.popleft(), writer, progress)
        finally:
            for _, fut in window:
                fut.cancel()
    return total


def _land(
    item: tuple[Extent, Future[bytes]], writer: ImageWriter, progress: Progress | None
) -> int:
    piece, fut = item
    writer.write(piece.offset, fut.result())
    if progress is not None:
        progress(piece.length)
    return piece.length
