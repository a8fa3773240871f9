"""XFS allocation from the superblock, each AG's AGF and free-space B+tree by block number
(bnobt), after checking that the internal log is clean.

On-disk facts used (big-endian): superblock at byte 0 ("XFSB"): block size (0x04), data
blocks (0x08), log start as an fs block number (0x30), AG blocks (0x54), AG count (0x58),
log blocks (0x60), version (0x64, low nibble 5 = CRC format), sector size (0x66), AG block
log (0x7C). The AGF ("XAGF") is sector 1 of each AG; its bnobt root is at 0x10 and level at
0x1C. Short-form btree blocks ("ABTB", or "AB3B" with a 56-byte CRC header) hold
(startblock, blockcount) free-extent records in leaves. Disk block of AG block b in AG a is
``a * agblocks + b``. Everything not in a bnobt record (including the AGFL) counts as used.

The log is clean when the record just before the head (found, as XFS does, by binary search
on the cycle number stamped in each 512-byte log block) is an unmount record.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from guestfs.errors import GuestFsError
from guestfs.extent import Extent, complement, merge
from guestfs.usage import FsState, FsUsage, whole
from guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

BB = 512
LOG_MAGIC = 0xFEEDBABE
XLOG_UNMOUNT_TRANS = 0x20
NULL_AGBLOCK = 0xFFFFFFFF
_LOG_BACKSCAN = 1 << 20


@dataclass(frozen=True)
class XfsSuper:
    """Superblock fields allocation needs; block counts in filesystem blocks."""

    block_size: int
    dblocks: int
    agblocks: int
    agcount: int
    agblklog: int
    sector_size: int
    logstart: int
    logblocks: int
    crc: bool

    def disk_block(self, fsblock: int) -> int:
        """Linear block number of an (agno << agblklog | agbno) fs block number."""
        agno, agbno = fsblock >> self.agblklog, fsblock & ((1 << self.agblklog) - 1)
        return agno * self.agblocks + agbno


def read_super(view: VolumeView) -> XfsSuper:
    """Parse the primary superblock; raise `GuestFsError` if implausible."""
    raw = view.pread(0, 512)
    if raw[:4] != b"XFSB":
        raise GuestFsError("xfs: bad superblock magic")
    bs, dblocks = struct.unpack_from(">IQ", raw, 0x04)
    logstart = struct.unpack_from(">Q", raw, 0x30)[0]
    agblocks, agcount, _rbm, logblocks, version, sectsize = struct.unpack_from(">IIIIHH", raw, 0x54)
    sb = XfsSuper(
        bs, dblocks, agblocks, agcount, raw[0x7C], sectsize, logstart, logblocks, version & 0xF == 5
    )
    if bs not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) or not agblocks:
        raise GuestFsError(f"xfs: implausible geometry ({bs}-byte blocks, {agblocks} per AG)")
    if not 0 < dblocks <= agcount * agblocks or (agcount - 1) * agblocks >= dblocks:
        raise GuestFsError(f"xfs: {dblocks} blocks do not fit {agcount} AGs of {agblocks}")
    if dblocks * bs > view.volume.size:
        raise GuestFsError(f"xfs: filesystem is larger than its volume ({view.volume.size} bytes)")
    return sb


def xfs_usage(view: VolumeView) -> FsUsage:
    """Used space of the XFS filesystem behind `view`, in volume byte offsets.

    Reads the superblock, a few dozen log blocks, and per AG its AGF and bnobt blocks.
    """
    size = view.volume.size
    sb = read_super(view)
    if not sb.logstart:
        return whole("xfs", FsState.UNKNOWN, size, "xfs external log: cannot check it is clean")
    if not log_is_clean(view, sb):
        return whole("xfs", FsState.DIRTY, size, "xfs log is not clean (mounted or crashed)")
    free: list[Extent] = []
    for agno in range(sb.agcount):
        ag_base = agno * sb.agblocks
        ag_len = min(sb.agblocks, sb.dblocks - ag_base)
        for start, count in _free_extents(view, sb, agno):
            if start + count > ag_len:
                raise GuestFsError(f"xfs: AG {agno} free extent {start}+{count} beyond the AG")
            free.append(Extent((ag_base + start) * sb.block_size, count * sb.block_size))
    used = complement(merge(free), sb.dblocks * sb.block_size)
    tail = Extent(sb.dblocks * sb.block_size, size - sb.dblocks * sb.block_size)
    return FsUsage("xfs", FsState.CLEAN, merge((*used, tail)))


def _free_extents(view: VolumeView, sb: XfsSuper, agno: int) -> list[tuple[int, int]]:
    """All (agbno, length) records of AG `agno`'s bnobt, in block order."""
    ag_offset = agno * sb.agblocks * sb.block_size
    agf = view.pread(ag_offset + sb.sector_size, 64)
    if agf[:4] != b"XAGF":
        raise GuestFsError(f"xfs: AG {agno} has no AGF magic")
    (root,) = struct.unpack_from(">I", agf, 0x10)
    (levels,) = struct.unpack_from(">I", agf, 0x1C)
    if not 0 < levels <= 9:
        raise GuestFsError(f"xfs: AG {agno} bnobt has implausible height {levels}")
    header = 56 if sb.crc else 16
    magic = b"AB3B" if sb.crc else b"ABTB"
    block: int = root
    seen: set[int] = set()
    records: list[tuple[int, int]] = []
    while block != NULL_AGBLOCK:
        if block in seen or block >= sb.agblocks or len(seen) > sb.agblocks:
            raise GuestFsError(f"xfs: AG {agno} bnobt walk loops or leaves the AG at {block}")
        seen.add(block)
        raw = view.pread(ag_offset + block * sb.block_size, sb.block_size)
        if raw[:4] != magic:
            raise GuestFsError(f"xfs: AG {agno} bnobt block {block} has a bad magic")
        level, numrecs, _left, right = struct.unpack_from(">HHII", raw, 4)
        if level:
            maxrecs = (sb.block_size - header) // 12
            if not 0 < numrecs <= maxrecs:
                raise GuestFsError(f"xfs: AG {agno} bnobt node {block} has {numrecs} records")
            (block,) = struct.unpack_from(">I", raw, header + maxrecs * 8)  # leftmost child
            continue
        if numrecs > (sb.block_size - header) // 8:
            raise GuestFsError(f"xfs: AG {agno} bnobt leaf {block} has {numrecs} records")
        records.extend(struct.iter_unpack(">II", raw[header : header + numrecs * 8]))
        block = right
    return records


def log_is_clean(view: VolumeView, sb: XfsSuper) -> bool:
    """True if the internal log ends with an unmount record (nothing to replay).

    Returns False whenever the log cannot be understood: "not provably clean" is dirty.
    """
    log_offset = sb.disk_block(sb.logstart) * sb.block_size
    log_bbs = sb.logblocks * sb.block_size // BB
    if log_offset + log_bbs * BB > view.volume.size or log_bbs < 2:
        raise GuestFsError("xfs: log lies outside the volume")

    def cycle(bb: int) -> int:
        word, second = struct.unpack(">II", view.pread(log_offset + bb * BB, 8))
        return int(second if word == LOG_MAGIC else word)

    first_cycle = cycle(0)
    lo, hi = 0, log_bbs  # invariant: cycle(lo) == first_cycle; head in (lo, hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cycle(mid) == first_cycle:
            lo = mid
        else:
            hi = mid
    head = hi
    return _unmount_record_before(view, log_offset, log_bbs, head, first_cycle)


def _unmount_record_before(
    view: VolumeView, log_offset: int, log_bbs: int, head: int, head_cycle: int
) -> bool:
    """Whether the log record ending exactly at block `head` is an unmount record."""
    start = max(0, head - _LOG_BACKSCAN // BB)
    window = view.pread(log_offset + start * BB, (head - start) * BB)
    for bb in range(head - 1, start - 1, -1):
        off = (bb - start) * BB
        magic, cyc, version, length = struct.unpack_from(">IIII", window, off)
        if magic != LOG_MAGIC or cyc != head_cycle:
            continue
        (num_logops,) = struct.unpack_from(">I", window, off + 0x28)
        (h_size,) = struct.unpack_from(">I", window, off + 0x140)
        hblks = -(-h_size // 32768) if version & 2 and h_size > 32768 else 1
        if bb + hblks + -(-length // BB) != head or bb + hblks >= head:
            logger.debug("xfs log: last record at %d does not end at head %d", bb, head)
            return False
        flags = window[(bb + hblks - start) * BB + 9]
        return num_logops == 1 and bool(flags & XLOG_UNMOUNT_TRANS)
    logger.debug("xfs log: no record header found before head %d (wrapped record?)", head)
    return False
