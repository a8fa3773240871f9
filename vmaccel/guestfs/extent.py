"""Extents: half-open byte ranges ``[offset, offset + length)`` and set operations on them.

Every function here is pure. "Normalized" means sorted by offset, non-overlapping,
non-adjacent (touching ranges are merged) and without empty extents.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Extent:
    """A byte range on a disk or volume: ``[offset, offset + length)``, both in bytes."""

    offset: int
    length: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 0:
            raise ValueError(f"extent must not be negative: {self.offset}+{self.length}")

    @property
    def end(self) -> int:
        """First byte after the extent."""
        return self.offset + self.length


def merge(extents: Iterable[Extent]) -> tuple[Extent, ...]:
    """Return the normalized union of `extents` (sorted, overlaps and neighbours joined)."""
    result: list[Extent] = []
    for ext in sorted(e for e in extents if e.length > 0):
        if result and ext.offset <= result[-1].end:
            last = result[-1]
            if ext.end > last.end:
                result[-1] = Extent(last.offset, ext.end - last.offset)
        else:
            result.append(ext)
    return tuple(result)


def intersect(a: Sequence[Extent], b: Sequence[Extent]) -> tuple[Extent, ...]:
    """Return the normalized intersection of two *normalized* extent sequences, in O(len a + b)."""
    result: list[Extent] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i].offset, b[j].offset)
        hi = min(a[i].end, b[j].end)
        if lo < hi:
            result.append(Extent(lo, hi - lo))
        if a[i].end < b[j].end:
            i += 1
        else:
            j += 1
    return merge(result)


def complement(extents: Sequence[Extent], size: int) -> tuple[Extent, ...]:
    """Return the gaps of normalized `extents` within ``[0, size)``."""
    result: list[Extent] = []
    pos = 0
    for ext in extents:
        if ext.offset >= size:
            break
        if ext.offset > pos:
            result.append(Extent(pos, ext.offset - pos))
        pos = max(pos, ext.end)
    if pos < size:
        result.append(Extent(pos, size - pos))
    return tuple(result)


def clip(extents: Iterable[Extent], size: int) -> tuple[Extent, ...]:
    """Return normalized `extents` cut to ``[0, size)``."""
    return intersect(merge(extents), (Extent(0, size),)) if size > 0 else ()


def total(extents: Iterable[Extent]) -> int:
    """Sum of the lengths, in bytes (callers pass normalized extents to count each byte once)."""
    return sum(e.length for e in extents)


_NOT_ZERO = re.compile(rb"[^\x00]")
_NOT_FF = re.compile(rb"[^\xff]")


def _next_bit(bitmap: bytes, start: int, want: int, nbits: int) -> int:
    """Index of the first bit >= `start` equal to `want` (0 or 1), or `nbits` if none."""
    skip_byte, finder = (0x00, _NOT_ZERO) if want else (0xFF, _NOT_FF)
    i = start
    while i < nbits:
        byte = bitmap[i >> 3]
        if i & 7 == 0 and byte == skip_byte:
            # Whole bytes without the wanted bit are skipped by the regex engine, in C.
            match = finder.search(bitmap, i >> 3)
            if match is None:
                return nbits
            i = match.start() * 8
            continue
        if byte >> (i & 7) & 1 == want:
            return i
        i += 1
    return nbits


def from_bitmap(bitmap: bytes, unit: int, base: int = 0, count: int | None = None) -> list[Extent]:
    """Turn a little-endian bit-per-unit bitmap (bit set = used) into byte extents.

    Bit ``i`` (bit ``i % 8`` of byte ``i // 8``, as ext4, NTFS and FAT-less bitmaps store them)
    covers bytes ``[base + i * unit, base + (i + 1) * unit)``. Only the first `count` bits are
    read. Runs of 0x00/0xFF bytes are skipped in C, so large mostly-empty or mostly-full bitmaps
    cost little more than one pass of the regex engine.
    """
    nbits = len(bitmap) * 8 if count is None else min(count, len(bitmap) * 8)
    result: list[Extent] = []
    i = _next_bit(bitmap, 0, 1, nbits)
    while i < nbits:
        j = _next_bit(bitmap, i, 0, nbits)
        result.append(Extent(base + i * unit, (j - i) * unit))
        i = _next_bit(bitmap, j, 1, nbits)
    return result
