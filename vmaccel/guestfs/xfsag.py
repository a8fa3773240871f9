"""One XFS allocation group (AG): its free extents, trusted only after verification.

On-disk facts used (big-endian): an AG starts with four sectors: a superblock copy, the AGF
("XAGF"), the AGI ("XAGI") and the AGFL. AGF: version (0x04), seqno (0x08), length (0x0C),
roots of bnobt/cnobt/rmapbt (0x10/0x14/0x18) and their levels (0x1C/0x20/0x24), flfirst,
fllast, flcount (0x28..0x30), freeblks (0x34), longest (0x38), uuid (0x40), refcount root
(0x58), agf_crc (0xD8). AGI: version, seqno, length as the AGF, inobt root (0x14), uuid
(0x128), agi_crc (0x138), finobt root (0x148). AGFL: v5 header "XAFL" with crc at 0x20 and
the block list from 0x24; v4 is the bare list. Free-extent records are (agbno, length) u32
pairs: bnobt sorted by block, cnobt by (length, block).

Checks, each raising `GuestFsError` naming the check and the AG: CRCs of AGF, AGI, AGFL and
every bnobt/cnobt block (v5), header self-description (magic, seqno, length, uuid);
bnobt records sorted, non-overlapping, non-empty and inside the AG; their sum equals
agf_freeblks and their largest agf_longest; the cnobt holds exactly the same extents; and
nothing that must be in use lies in a free extent (AG headers, the internal log, the root
inode, every free-space btree block, the AGFL blocks, the inobt/finobt/rmapbt/refcountbt
roots). v4 filesystems get every check except the CRC and uuid ones.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import struct
from collections.abc import Iterable

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import VolumeView
from vmaccel.guestfs.xfsbtree import NULL_AGBLOCK, BtreeGeometry, verify_crc, walk_btree
from vmaccel.guestfs.xfssuper import RO_COMPAT_FINOBT, RO_COMPAT_REFLINK, RO_COMPAT_RMAPBT, XfsSuper

logger = logging.getLogger(__name__)

AGF_CRC_OFFSET = 0xD8
AGI_CRC_OFFSET = 0x138
AGFL_CRC_OFFSET = 0x20
_FREE_RECORD = struct.Struct(">II")

Interval = tuple[int, int]  # (first AG block, length in blocks)
InUse = tuple[int, int, str]  # an interval that must be in use, and what it holds


def ag_free_extents(view: VolumeView, sb: XfsSuper, agno: int) -> list[Interval]:
    """The verified free extents of AG `agno` as (agbno, length) in block order.

    Reads the AG's four header sectors and every bnobt and cnobt block. Raises
    `GuestFsError` for the first failed check (see the module docstring).
    """
    ag_len = sb.ag_len(agno)
    headers = view.pread(agno * sb.agblocks * sb.block_size, 4 * sb.sector_size)
    sectors = [headers[i * sb.sector_size : (i + 1) * sb.sector_size] for i in range(1, 4)]
    agf, agi, agfl = sectors
    where = f"xfs: AG {agno}"
    _check_header(agf, b"XAGF", AGF_CRC_OFFSET, 0x40, sb, agno, f"{where} AGF")
    _check_header(agi, b"XAGI", AGI_CRC_OFFSET, 0x128, sb, agno, f"{where} AGI")
    geo = BtreeGeometry(sb.block_size, agno, agno * sb.agblocks, ag_len, sb.crc, sb.meta_uuid)
    bno_root, cnt_root, _rmap, bno_levels, cnt_levels = struct.unpack_from(">5I", agf, 0x10)
    magics = (b"AB3B", b"AB3C") if sb.crc else (b"ABTB", b"ABTC")
    bno = walk_btree(view, geo, "bnobt", magics[0], bno_root, bno_levels, _FREE_RECORD)
    cnt = walk_btree(view, geo, "cnobt", magics[1], cnt_root, cnt_levels, _FREE_RECORD)
    free: list[Interval] = [(int(s), int(n)) for s, n in bno.records]
    _check_records(free, [(int(s), int(n)) for s, n in cnt.records], agf, ag_len, where)
    in_use = [
        *_header_blocks(sb),
        *_log_blocks(sb, agno),
        *_root_inode_block(sb, agno),
        *((b, 1, "bnobt block") for b in bno.blocks),
        *((b, 1, "cnobt block") for b in cnt.blocks),
        *_agfl_blocks(agfl, agf, sb, where),
        *_other_roots(agf, agi, sb),
    ]
    _check_in_use(free, in_use, where)
    return free


def _check_header(
    raw: bytes, magic: bytes, crc_offset: int, uuid_offset: int, sb: XfsSuper, agno: int, what: str
) -> None:
    """Magic, version 1, seqno == agno, length == the AG's, and on v5 CRC and uuid."""
    if raw[:4] != magic:
        raise GuestFsError(f"{what}: bad magic {raw[:4]!r}")
    if sb.crc:
        verify_crc(raw, crc_offset, what)
        if raw[uuid_offset : uuid_offset + 16] != sb.meta_uuid:
            raise GuestFsError(f"{what}: uuid is not the filesystem's")
    version, seqno, length = struct.unpack_from(">III", raw, 4)
    if (version, seqno, length) != (1, agno, sb.ag_len(agno)):
        raise GuestFsError(
            f"{what}: header says version {version}, AG {seqno}, {length} blocks "
            f"(expected 1, {agno}, {sb.ag_len(agno)})"
        )


def _check_records(
    free: list[Interval], by_size: list[Interval], agf: bytes, ag_len: int, where: str
) -> None:
    """bnobt records sane and consistent with the AGF counters and with the cnobt."""
    end = 0
    for start, length in free:
        if not length or start < end or start + length > ag_len:
            raise GuestFsError(
                f"{where} bnobt: free extent {start}+{length} is empty, out of order, "
                f"overlaps the previous one or leaves the AG ({ag_len} blocks)"
            )
        end = start + length
    freeblks, longest = struct.unpack_from(">II", agf, 0x34)
    counted = sum(n for _s, n in free)
    largest = max((n for _s, n in free), default=0)
    if (counted, largest) != (freeblks, longest):
        raise GuestFsError(
            f"{where}: bnobt holds {counted} free blocks, largest {largest}; the AGF says "
            f"agf_freeblks {freeblks}, agf_longest {longest}"
        )
    keys = [(n, s) for s, n in by_size]
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise GuestFsError(f"{where} cnobt: records are not in (length, block) order")
    if sorted(by_size) != free:
        raise GuestFsError(f"{where}: cnobt and bnobt do not hold the same free extents")


def _header_blocks(sb: XfsSuper) -> list[InUse]:
    """SB, AGF, AGI and AGFL: the first four sectors, rounded up to whole blocks."""
    return [(0, -(-4 * sb.sector_size // sb.block_size), "AG headers")]


def _log_blocks(sb: XfsSuper, agno: int) -> list[InUse]:
    log_ag, log_agbno = sb.split(sb.logstart)
    return [(log_agbno, sb.logblocks, "internal log")] if sb.logstart and log_ag == agno else []


def _root_inode_block(sb: XfsSuper, agno: int) -> list[InUse]:
    """The block holding the root inode (not its whole chunk: sparse chunks may have holes)."""
    ino_ag = sb.rootino >> (sb.agblklog + sb.inopblog)
    agbno = (sb.rootino >> sb.inopblog) & ((1 << sb.agblklog) - 1)
    return [(agbno, 1, "root inode")] if ino_ag == agno else []


def _agfl_blocks(agfl: bytes, agf: bytes, sb: XfsSuper, where: str) -> list[InUse]:
    """Blocks on the AG free list: reserved for btree growth, so not free space."""
    header = 0x24 if sb.crc else 0
    if sb.crc:
        if agfl[:4] != b"XAFL":
            raise GuestFsError(f"{where} AGFL: bad magic {agfl[:4]!r}")
        verify_crc(agfl, AGFL_CRC_OFFSET, f"{where} AGFL")
    size = (len(agfl) - header) // 4
    flfirst, _fllast, flcount = struct.unpack_from(">III", agf, 0x28)
    if flcount > size or flfirst >= size:
        raise GuestFsError(f"{where} AGF: free list {flfirst}+{flcount} exceeds the AGFL ({size})")
    slots = struct.unpack_from(f">{size}I", agfl, header)
    return [(slots[(flfirst + i) % size], 1, "AGFL block") for i in range(flcount)]


def _other_roots(agf: bytes, agi: bytes, sb: XfsSuper) -> Iterable[InUse]:
    """Roots of the inode btrees (AGI) and, when the features exist, rmapbt and refcountbt."""
    roots = [(struct.unpack_from(">I", agi, 0x14)[0], "inobt root")]
    if sb.ro_compat & RO_COMPAT_FINOBT:
        roots.append((struct.unpack_from(">I", agi, 0x148)[0], "finobt root"))
    if sb.ro_compat & RO_COMPAT_RMAPBT:
        roots.append((struct.unpack_from(">I", agf, 0x18)[0], "rmapbt root"))
    if sb.ro_compat & RO_COMPAT_REFLINK:
        roots.append((struct.unpack_from(">I", agf, 0x58)[0], "refcountbt root"))
    return ((r, 1, what) for r, what in roots if r not in (0, NULL_AGBLOCK))


def _check_in_use(free: list[Interval], in_use: list[InUse], where: str) -> None:
    """Raise if any block of `in_use` lies in a free extent (`free` sorted and disjoint)."""
    starts = [s for s, _n in free]
    for first, length, what in in_use:
        i = bisect.bisect_right(starts, first + length - 1) - 1
        if length and i >= 0 and free[i][0] + free[i][1] > first:
            start, n = free[i]
            raise GuestFsError(
                f"{where}: free extent {start}+{n} covers the {what} "
                f"(blocks {first}+{length}), which must be in use"
            )
