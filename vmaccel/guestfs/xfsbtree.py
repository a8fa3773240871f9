"""Verified walks of XFS short-form B+trees (the per-AG free-space trees bnobt and cnobt).

On-disk facts used (big-endian): a short-form block starts with magic, level (u16), numrecs
(u16), left and right sibling AG block numbers (u32, 0xFFFFFFFF = none). CRC filesystems (v5)
add bb_blkno (u64, the block's own disk address in 512-byte units), bb_lsn, bb_uuid (16),
bb_owner (u32, the AG number) and bb_crc (u32 at 0x34), for a 56-byte header; v4 headers are
16 bytes. Leaves hold fixed-size records; nodes hold `maxrecs` keys followed by `maxrecs`
child pointers (u32 AG block numbers), where ``maxrecs = (block - header) // (key + 4)``.

The CRC is CRC-32C over the whole block with the CRC field zeroed, stored little-endian
(XFS's ``xfs_verify_cksum``), which equals the standard CRC-32C of that byte string.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import crc32c

from vmaccel.guestfs.blockread import iter_blocks
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

NULL_AGBLOCK = 0xFFFFFFFF
MAX_LEVELS = 9
V5_HEADER = 56
V4_HEADER = 16
_CRC_OFFSET = 0x34


@dataclass(frozen=True)
class BtreeGeometry:
    """What a walk needs to know about the filesystem and the AG; blocks in fs blocks.

    `ag_first_block` is the volume block number of AG block 0; `ag_len` the AG's length;
    `uuid` the uuid stamped in v5 block headers (sb_meta_uuid when that feature is on).
    """

    block_size: int
    agno: int
    ag_first_block: int
    ag_len: int
    crc: bool
    uuid: bytes


@dataclass(frozen=True)
class BtreeWalk:
    """Every record of a tree in key order, and every block the tree occupies (AG blocks)."""

    records: tuple[tuple[int, ...], ...]
    blocks: tuple[int, ...]


def verify_crc(block: bytes, offset: int, what: str) -> None:
    """Raise `GuestFsError` naming `what` unless the CRC-32C stored little-endian at
    `offset` matches `block` with those 4 bytes zeroed."""
    stored = int.from_bytes(block[offset : offset + 4], "little")
    computed = crc32c.crc32c(block[:offset])
    computed = crc32c.crc32c(b"\0\0\0\0", value=computed)
    computed = crc32c.crc32c(block[offset + 4 :], value=computed)
    if stored != computed:
        raise GuestFsError(
            f"{what}: CRC mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})"
        )


def walk_btree(
    view: VolumeView,
    geo: BtreeGeometry,
    name: str,
    magic: bytes,
    root: int,
    levels: int,
    record: struct.Struct,
) -> BtreeWalk:
    """Read the whole tree `name` rooted at AG block `root`, `levels` high, level by level.

    Every block is checked: magic, level, record count, CRC and self-description (v5),
    that it lies inside the AG and is visited once, and that the sibling pointers chain
    the blocks of each level in order. Keys are `record`-sized (true of the alloc btrees).
    Raises `GuestFsError` naming the tree, AG and block for the first failed check.
    """
    if not 0 < levels <= MAX_LEVELS:
        raise GuestFsError(f"xfs: AG {geo.agno} {name} has implausible height {levels}")
    header = V5_HEADER if geo.crc else V4_HEADER
    current = [root]
    seen: set[int] = set()
    for level in range(levels - 1, -1, -1):
        where = f"xfs: AG {geo.agno} {name} level {level}"
        _check_new_blocks(current, seen, geo.ag_len, where)
        blocks = _read_level(view, geo, current)
        children: list[int] = []
        records: list[tuple[int, ...]] = []
        for i, agbno in enumerate(current):
            raw = blocks[agbno]
            numrecs = _check_block(raw, geo, agbno, magic, level, f"{where} block {agbno}")
            left, right = struct.unpack_from(">II", raw, 8)
            want_left = current[i - 1] if i else NULL_AGBLOCK
            want_right = current[i + 1] if i + 1 < len(current) else NULL_AGBLOCK
            if (left, right) != (want_left, want_right):
                raise GuestFsError(f"{where} block {agbno}: sibling pointers are inconsistent")
            if level:
                what = f"{where} block {agbno}"
                children.extend(_node_pointers(raw, header, numrecs, record.size, what))
            elif numrecs > (geo.block_size - header) // record.size or (
                not numrecs and len(current) > 1
            ):
                raise GuestFsError(f"{where} block {agbno}: leaf holds {numrecs} records")
            else:
                end = header + numrecs * record.size
                records.extend(record.iter_unpack(raw[header:end]))
        if level == 0:
            return BtreeWalk(tuple(records), tuple(sorted(seen)))
        current = children
    raise AssertionError("unreachable: level 0 returns")


def _check_new_blocks(blocks: list[int], seen: set[int], ag_len: int, where: str) -> None:
    for agbno in blocks:
        if agbno in seen or not 0 < agbno < ag_len:
            raise GuestFsError(f"{where}: block {agbno} is outside the AG or visited twice")
        seen.add(agbno)


def _read_level(view: VolumeView, geo: BtreeGeometry, agbnos: list[int]) -> dict[int, bytes]:
    base = geo.ag_first_block
    return {
        block - base: data
        for block, data in iter_blocks(view, (base + b for b in agbnos), geo.block_size)
    }


def _check_block(
    raw: bytes, geo: BtreeGeometry, agbno: int, magic: bytes, level: int, what: str
) -> int:
    """Verify one block's header; return its record count."""
    if raw[:4] != magic:
        raise GuestFsError(f"{what}: bad magic {raw[:4]!r} (expected {magic!r})")
    got_level, numrecs = struct.unpack_from(">HH", raw, 4)
    if got_level != level:
        raise GuestFsError(f"{what}: says level {got_level}")
    if geo.crc:
        verify_crc(raw, _CRC_OFFSET, what)
        blkno, _lsn, uuid, owner = struct.unpack_from(">QQ16sI", raw, 0x10)
        daddr = (geo.ag_first_block + agbno) * (geo.block_size // 512)
        if blkno != daddr:
            raise GuestFsError(f"{what}: header names disk address {blkno}, it is at {daddr}")
        if owner != geo.agno:
            raise GuestFsError(f"{what}: header names owner AG {owner}")
        if uuid != geo.uuid:
            raise GuestFsError(f"{what}: header uuid is not the filesystem's")
    return int(numrecs)


def _node_pointers(raw: bytes, header: int, numrecs: int, key_size: int, what: str) -> list[int]:
    maxrecs = (len(raw) - header) // (key_size + 4)
    if not 0 < numrecs <= maxrecs:
        raise GuestFsError(f"{what}: node holds {numrecs} keys (at most {maxrecs})")
    start = header + maxrecs * key_size
    return list(struct.unpack_from(f">{numrecs}I", raw, start))
