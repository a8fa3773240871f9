"""Reading many metadata blocks with few, larger reads.

Bitmaps of neighbouring groups usually sit next to each other on disk (ext4 flex_bg), so
coalescing them turns thousands of small reads into a few large ones, which matters on remote
transports (NBD, HTTP ranges) where each read is a round trip.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

MAX_RUN_BYTES = 4 << 20


def iter_blocks(
    view: VolumeView, blocks: Iterable[int], block_size: int
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(block number, its block_size bytes)`` for each distinct block, in block order.

    Block ``n`` is volume bytes ``[n * block_size, (n + 1) * block_size)``. Consecutive block
    numbers are fetched in one read of at most `MAX_RUN_BYTES`, so memory stays bounded by
    that however many blocks are asked for. Raises `GuestFsError` if a block lies outside the
    volume.
    """
    wanted = sorted(set(blocks))
    max_run = max(1, MAX_RUN_BYTES // block_size)
    i = 0
    while i < len(wanted):
        j = i + 1
        while j < len(wanted) and wanted[j] == wanted[j - 1] + 1 and j - i < max_run:
            j += 1
        data = view.pread(wanted[i] * block_size, (j - i) * block_size)
        for k in range(i, j):
            off = (k - i) * block_size
            yield wanted[k], data[off : off + block_size]
        i = j
