"""The CBT audit of a forced rescan: blocks whose content changed although CBT did not say so.

A rescan reads every allocated block and derives the new image from the parent; comparing the
two maps block by block (chunk ids, from metadata only) outside the extents CBT announced
finds what CBT missed. A correct CBT leaves nothing; anything found is reported as a warning.
"""

from __future__ import annotations

from collections.abc import Sequence

from vmaccel.catalog.blockmap import BlockMap, MapRoot
from vmaccel.guestfs.extent import Extent, complement, intersect, merge

WINDOW = 65536  # blocks compared per lookup


def unannounced(
    blockmap: BlockMap,
    parent: MapRoot,
    new: MapRoot,
    announced: Sequence[Extent],
    read: Sequence[Extent],
    block_size: int,
) -> tuple[Extent, ...]:
    """Byte extents (block aligned) that differ between ``parent`` and ``new`` inside ``read``
    (what the rescan actually read; blocks freed by the guest are holes by plan, not CBT's
    business) and outside ``announced``. Both maps must describe the same disk size."""
    size = new.blocks * block_size
    quiet = intersect(complement(merge(announced), size), merge(read))
    found: list[Extent] = []
    for ext in quiet:
        first = -(-ext.offset // block_size)
        last = ext.end // block_size  # only blocks wholly outside the announced extents
        for base in range(first, last, WINDOW):
            count = min(WINDOW, last - base)
            old_ids = blockmap.lookup(parent, base, count)
            new_ids = blockmap.lookup(new, base, count)
            found.extend(
                Extent((base + i) * block_size, block_size)
                for i, (a, b) in enumerate(zip(old_ids, new_ids, strict=True))
                if a != b
            )
    return merge(found)
