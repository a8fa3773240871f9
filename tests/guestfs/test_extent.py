"""Pure extent algebra, checked against a set-of-bytes model. (Read planning, which builds on
it, is checked in tests/plugin/test_plan.py against the planner that runs.)"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from vmaccel.guestfs.extent import Extent, clip, complement, from_bitmap, intersect, merge

SIZE = 600
extents = st.lists(
    st.builds(lambda o, n: Extent(o, n), st.integers(0, SIZE), st.integers(0, 80)), max_size=12
)


def bytes_of(exts: list[Extent] | tuple[Extent, ...]) -> set[int]:
    return {b for e in exts for b in range(e.offset, e.end)}


def normalized(exts: tuple[Extent, ...] | list[Extent]) -> bool:
    return all(e.length > 0 for e in exts) and all(
        a.end < b.offset for a, b in itertools.pairwise(exts)
    )


@given(extents, st.integers(0, SIZE))
def test_clip_cuts_to_the_disk(exts: list[Extent], size: int) -> None:
    clipped = clip(exts, size)
    assert normalized(clipped)
    assert bytes_of(clipped) == {b for b in bytes_of(exts) if b < size}


@given(extents)
def test_merge_is_normalized_union(exts: list[Extent]) -> None:
    merged = merge(exts)
    assert normalized(merged)
    assert bytes_of(merged) == bytes_of(exts)


@given(extents, extents)
def test_intersect_and_complement(a: list[Extent], b: list[Extent]) -> None:
    inter = intersect(merge(a), merge(b))
    assert normalized(inter)
    assert bytes_of(inter) == bytes_of(a) & bytes_of(b)
    comp = complement(merge(a), SIZE)
    assert bytes_of(comp) == set(range(SIZE)) - bytes_of(a)


@given(st.binary(max_size=40), st.integers(1, 4096), st.integers(0, 10**6))
def test_from_bitmap_matches_bits(bitmap: bytes, unit: int, base: int) -> None:
    got = from_bitmap(bitmap, unit, base)
    assert normalized(got)
    want = [i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1]
    assert [(e.offset - base) // unit for e in got for _ in [0]] == [
        i for i in want if i == 0 or i - 1 not in want
    ]
    assert sum(e.length for e in got) == len(want) * unit
