"""Read planning: changed extents (from CBT) intersected with the allocation map, aligned to
the image's block size. Pure functions, no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vmaccel.guestfs.allocation import AllocationMap
from vmaccel.guestfs.extent import Extent, complement, intersect, merge

logger = logging.getLogger(__name__)


def plan_reads(
    changed: Sequence[Extent], allocated: AllocationMap, block_size: int
) -> list[Extent]:
    """The block-aligned extents to read: ``changed ∩ allocated.used``, rounded out to
    `block_size` boundaries (bytes), merged, and cut at the disk's end.

    Guarantees: every byte that is both changed and used is covered; every extent starts on
    a block boundary and ends on one (or at the disk's end); nothing lies outside `changed`
    rounded out to blocks. `changed` may be unsorted and overlapping.
    """
    if block_size <= 0:
        raise ValueError(f"block size must be positive, not {block_size}")
    wanted = intersect(merge(changed), allocated.used)
    aligned = (
        Extent(start, min(end, allocated.disk_size) - start)
        for e in wanted
        for start, end in [(_down(e.offset, block_size), _up(e.end, block_size))]
    )
    return list(merge(aligned))


def free_blocks(
    allocated: AllocationMap, block_size: int, disk_size: int | None = None
) -> list[Extent]:
    """Block-aligned extents of whole blocks that hold no used byte (holes in a backup image).

    Block i is bytes ``[i * block_size, min((i + 1) * block_size, disk_size))``, so a short
    last block counts too. `disk_size` defaults to the map's.
    """
    if block_size <= 0:
        raise ValueError(f"block size must be positive, not {block_size}")
    size = allocated.disk_size if disk_size is None else disk_size
    result = []
    for gap in complement(allocated.used, size):
        start = _up(gap.offset, block_size)
        end = gap.end if gap.end == size else _down(gap.end, block_size)
        if end > start:
            result.append(Extent(start, end - start))
    return result


def _down(value: int, block: int) -> int:
    return value - value % block


def _up(value: int, block: int) -> int:
    return -(-value // block) * block
