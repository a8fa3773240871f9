"""Pure extent algebra and read planning, checked against a set-of-bytes model."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from vmaccel.guestfs.allocation import AllocationMap
from vmaccel.guestfs.extent import Extent, clip, complement, from_bitmap, intersect, merge
from vmaccel.guestfs.partition import PartitionTable
from vmaccel.guestfs.readplan import free_blocks, plan_reads

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


def amap(used: list[Extent], size: int = SIZE + 100) -> AllocationMap:
    return AllocationMap(size, clip(used, size), (), PartitionTable("none", 512, ()))


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


@given(extents, extents, st.sampled_from([1, 7, 64, 512]))
def test_plan_reads_properties(changed: list[Extent], used: list[Extent], block: int) -> None:
    allocated = amap(used)
    plan = plan_reads(changed, allocated, block)
    assert normalized(plan)
    covered = bytes_of(plan)
    # every changed byte in use is read
    assert bytes_of(changed) & bytes_of(allocated.used) <= covered
    # block aligned (or ending at the disk's end), never outside changed rounded out
    rounded = {
        b for e in changed for b in range(e.offset - e.offset % block, -(-e.end // block) * block)
    }
    for e in plan:
        assert e.offset % block == 0
        assert e.end % block == 0 or e.end == allocated.disk_size
    assert covered <= rounded


@given(extents, st.sampled_from([1, 8, 64, 512]))
def test_free_blocks_hold_no_used_byte(used: list[Extent], block: int) -> None:
    allocated = amap(used)
    free = free_blocks(allocated, block)
    used_bytes = bytes_of(allocated.used)
    assert not bytes_of(free) & used_bytes
    size = allocated.disk_size
    for start in range(0, size, block):
        blk = set(range(start, min(start + block, size)))
        if not blk & used_bytes:
            assert blk <= bytes_of(free)  # every wholly free block is reported
    assert all(e.offset % block == 0 for e in free)
