"""Read plans (plugin/engine/plan.py), checked against a byte model of a disk.

The model: a parent disk whose image holds exactly its bytes, and a current disk that differs
from it only inside CBT's ``changed`` extents. The transport's ``data`` extents cover every
non-zero byte of the current disk (plus arbitrary extra ranges), and the guest's ``allocated``
extents are arbitrary. Carrying out a plan (start from the parent image, or from nothing for a
full read; punch the holes; copy the read blocks from the current disk) must give an image
equal to the current disk on every allocated byte, and everywhere when nothing is known about
allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from vmaccel.guestfs.extent import Extent, intersect, merge
from vmaccel.plugin.engine.plan import (
    FULL,
    INCREMENTAL,
    RESCAN,
    DiskPlan,
    plan_disk,
    round_in,
    round_out,
)


@dataclass(frozen=True)
class Case:
    size: int
    block_size: int
    parent: bytes
    current: bytes
    data: tuple[Extent, ...]
    changed: tuple[Extent, ...] | None
    allocated: tuple[Extent, ...] | None
    mode: str


def whole(size: int) -> tuple[Extent, ...]:
    return (Extent(0, size),) if size else ()


def nonzero_runs(buf: bytes) -> list[Extent]:
    runs, start = [], None
    for i, b in enumerate(buf):
        if b and start is None:
            start = i
        elif not b and start is not None:
            runs.append(Extent(start, i - start))
            start = None
    if start is not None:
        runs.append(Extent(start, len(buf) - start))
    return runs


@st.composite
def extents(draw: st.DrawFn, size: int) -> tuple[Extent, ...]:
    if size == 0:
        return ()
    pairs = draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, size)), max_size=6))
    return merge(Extent(o, min(n, size - o)) for o, n in pairs)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    block_size = draw(st.sampled_from([1, 4, 8, 16]))
    size = draw(st.integers(0, 12)) * block_size + draw(st.integers(0, block_size - 1))
    byte = st.sampled_from([0, 0, 1, 2, 3])
    parent = bytes(draw(st.lists(byte, min_size=size, max_size=size)))
    changed = draw(st.none() | extents(size))
    current = bytearray(parent)
    for e in changed if changed is not None else whole(size):
        for i in range(e.offset, e.end):
            if draw(st.booleans()):
                current[i] = draw(byte)
    data = merge([*nonzero_runs(bytes(current)), *draw(extents(size))])
    allocated = draw(st.none() | extents(size))
    mode = INCREMENTAL if changed is not None else draw(st.sampled_from([FULL, RESCAN]))
    return Case(size, block_size, parent, bytes(current), data, changed, allocated, mode)


def plan_of(c: Case) -> DiskPlan:
    return plan_disk(c.size, c.block_size, c.data, c.changed, c.allocated, c.mode, "why")


def carry_out(c: Case, plan: DiskPlan) -> bytes:
    image = bytearray(c.size) if plan.mode == FULL else bytearray(c.parent)
    for h in plan.holes:
        image[h.offset : h.end] = bytes(h.length)
    for r in plan.read:
        image[r.offset : r.end] = c.current[r.offset : r.end]
    return bytes(image)


def blocks_of(extents_: tuple[Extent, ...], bs: int) -> set[int]:
    return {b for e in extents_ for b in range(e.offset // bs, -(-e.end // bs))}


def covered(outer: tuple[Extent, ...], inner: tuple[Extent, ...]) -> bool:
    return intersect(merge(outer), merge(inner)) == merge(inner)


@settings(max_examples=250, deadline=None)
@given(cases())
def test_the_image_equals_the_disk_on_every_allocated_byte(c: Case) -> None:
    image = carry_out(c, plan_of(c))
    where = c.allocated if c.allocated is not None else whole(c.size)
    for e in where:
        assert image[e.offset : e.end] == c.current[e.offset : e.end], e


@settings(max_examples=250, deadline=None)
@given(cases())
def test_reads_are_aligned_minimal_and_disjoint_from_holes(c: Case) -> None:
    plan = plan_of(c)
    bs, size = c.block_size, c.size
    used = c.allocated if c.allocated is not None else whole(size)
    wanted = intersect(
        intersect(merge(c.data), merge(used)),
        merge(c.changed) if c.changed is not None else whole(size),
    )
    assert covered(plan.read, wanted)  # every byte of data ∩ changed ∩ allocated is read
    for e in plan.read:
        assert e.offset % bs == 0 and (e.end % bs == 0 or e.end == size) and e.end <= size
    assert plan.read == merge(plan.read) and plan.holes == merge(plan.holes)
    assert not intersect(plan.read, plan.holes)
    # Only blocks holding allocated data inside a changed block are read.
    candidates = round_out(c.changed, bs, size) if c.changed is not None else whole(size)
    useful = blocks_of(intersect(intersect(merge(c.data), merge(used)), candidates), bs)
    assert blocks_of(plan.read, bs) <= useful
    assert plan.read_bytes == sum(e.length for e in plan.read)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_full_reads_punch_nothing_incrementals_punch_freed_and_zeroed_blocks(c: Case) -> None:
    plan = plan_of(c)
    bs, size = c.block_size, c.size
    if plan.mode == FULL:
        assert plan.holes == ()
        return
    holes = blocks_of(plan.holes, bs)
    read = blocks_of(plan.read, bs)
    if c.allocated is not None:  # every block the guest does not use at all is a hole
        assert blocks_of(round_in(tuple(_gaps(c.allocated, size)), bs, size), bs) <= holes
    changed = round_out(c.changed, bs, size) if c.changed is not None else whole(size)
    assert blocks_of(changed, bs) - read <= holes  # changed but now zero or unused
    # ... and nothing else: an unchanged block holding allocated bytes keeps its content.
    used = merge(c.allocated) if c.allocated is not None else whole(size)
    kept = blocks_of(used, bs) - blocks_of(changed, bs)
    assert not (holes & kept)


def _gaps(allocated: tuple[Extent, ...], size: int) -> list[Extent]:
    gaps, pos = [], 0
    for e in merge(allocated):
        if e.offset > pos:
            gaps.append(Extent(pos, e.offset - pos))
        pos = e.end
    if pos < size:
        gaps.append(Extent(pos, size - pos))
    return gaps


def test_a_zeroed_part_of_a_block_does_not_drop_the_rest_of_it() -> None:
    """A 16-byte block whose first 4 bytes CBT reports changed and now read as zeros: the other
    12 bytes are unchanged data and must survive (CBT granularity finer than the block size,
    e.g. 64 KiB tracking under a 1 MiB repository block)."""
    plan = plan_disk(16, 16, [Extent(4, 12)], [Extent(0, 4)], None, INCREMENTAL, "cbt")
    assert plan.read == (Extent(0, 16),)
    assert plan.holes == ()


def test_a_freed_part_of_a_block_does_not_drop_the_used_rest() -> None:
    plan = plan_disk(16, 16, [Extent(0, 16)], [Extent(0, 4)], [Extent(8, 8)], INCREMENTAL, "cbt")
    assert plan.read == (Extent(0, 16),)
    assert plan.holes == ()


def test_short_last_block_and_empty_disk() -> None:
    plan = plan_disk(20, 16, [Extent(17, 2)], None, None, FULL, "first")
    assert plan.read == (Extent(16, 4),)
    assert plan_disk(0, 16, [], None, None, FULL, "empty").read == ()
