"""Read plans: which blocks of a disk to read and which to make holes. Pure; no I/O.

Inputs are extents in bytes: ``data`` (what the transport says may hold data: not a hole and
not known zeros), ``changed`` (CBT's changed areas since the parent image, or None for a full
read) and ``allocated`` (what the guest filesystems use, or None when unknown). Outputs are
block aligned (the last block may end at the disk's end):

- ``read``: blocks holding any byte that is data and allocated and, for incrementals, lying in a
  block with a changed byte.
- ``holes``: blocks to punch in an image derived from a parent: every changed block that is not
  read (it now reads as zeros or is unused) and every block the guest filesystems do not use
  at all (freed since the parent), minus ``read``. A full read starts from an empty image and
  punches nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmaccel.guestfs.extent import Extent, complement, intersect, merge

FULL = "full"
INCREMENTAL = "incremental"
RESCAN = "rescan"


@dataclass(frozen=True)
class DiskPlan:
    """What to do with one disk. ``mode`` is full, incremental or rescan; ``reason`` says why."""

    mode: str
    reason: str
    size: int
    block_size: int
    read: tuple[Extent, ...]
    holes: tuple[Extent, ...]

    @property
    def read_bytes(self) -> int:
        return sum(e.length for e in self.read)


def round_out(extents: Sequence[Extent], block_size: int, size: int) -> tuple[Extent, ...]:
    """Extents grown to whole blocks (cut at ``size``), merged."""
    out = []
    for e in extents:
        start = e.offset - e.offset % block_size
        end = min(-(-e.end // block_size) * block_size, size)
        if end > start:
            out.append(Extent(start, end - start))
    return merge(out)


def round_in(extents: Sequence[Extent], block_size: int, size: int) -> tuple[Extent, ...]:
    """Only the whole blocks inside ``extents`` (a short last block counts when covered)."""
    out = []
    for e in merge(extents):
        start = -(-e.offset // block_size) * block_size
        end = e.end if e.end >= size else e.end - e.end % block_size
        if end > start:
            out.append(Extent(start, end - start))
    return tuple(out)


def subtract(a: Sequence[Extent], b: Sequence[Extent], size: int) -> tuple[Extent, ...]:
    """``a`` minus ``b`` within ``[0, size)``; both normalized."""
    return intersect(merge(a), complement(merge(b), size))


def plan_disk(
    size: int,
    block_size: int,
    data: Sequence[Extent],
    changed: Sequence[Extent] | None,
    allocated: Sequence[Extent] | None,
    mode: str,
    reason: str,
) -> DiskPlan:
    """Plan one disk (see the module docstring). ``changed`` None means read everything."""
    whole = (Extent(0, size),) if size else ()
    used = merge(allocated) if allocated is not None else whole
    # Changed extents are rounded out to whole blocks *before* the intersection: a block is
    # either kept from the parent or replaced whole, so when CBT reports only part of a block
    # (tracking finer than the image block), the rest of that block must be read too.
    candidates = round_out(changed, block_size, size) if changed is not None else whole
    read = round_out(intersect(intersect(candidates, merge(data)), used), block_size, size)
    if changed is None and mode == FULL:
        return DiskPlan(mode, reason, size, block_size, read, ())
    unused = round_in(complement(used, size), block_size, size)
    gone = subtract(candidates, read, size)
    holes = subtract(merge([*gone, *unused]), read, size)
    return DiskPlan(mode, reason, size, block_size, read, holes)
