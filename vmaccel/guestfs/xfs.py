"""XFS allocation: the verified free extents of every AG, after checking that the internal
log is clean.

Everything not in a verified free-space record (including the AGFL) counts as used. The
superblock is verified in guestfs.xfssuper, each AG's headers and free-space B+trees in
guestfs.xfsag (CRCs on v5, self-description, and the cross-checks: bnobt and cnobt agree
with each other and with the AGF counters, and nothing that must be in use is free). Disk
block of AG block b in AG a is ``a * agblocks + b``. Any failed check raises `GuestFsError`;
guestfs.allocation then reads the volume whole and reports the message as the reason.

The log is clean when the record just before the head (found, as XFS does, by binary search
on the cycle number stamped in each 512-byte log block) is an unmount record. A dirty log
returns `whole` (DIRTY): free space recorded on disk may lag the log.
"""

from __future__ import annotations

import logging
import struct

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent, complement, merge
from vmaccel.guestfs.usage import FsState, FsUsage, whole
from vmaccel.guestfs.volume import VolumeView
from vmaccel.guestfs.xfsag import ag_free_extents
from vmaccel.guestfs.xfssuper import XfsSuper, read_super

__all__ = ["XfsSuper", "log_is_clean", "read_super", "xfs_usage"]

logger = logging.getLogger(__name__)

BB = 512
LOG_MAGIC = 0xFEEDBABE
XLOG_UNMOUNT_TRANS = 0x20
_LOG_BACKSCAN = 1 << 20


def xfs_usage(view: VolumeView) -> FsUsage:
    """Used space of the XFS filesystem behind `view`, in volume byte offsets.

    Reads the superblock, a few dozen log blocks, and per AG its four header sectors and
    every bnobt and cnobt block. Raises `GuestFsError` when a check fails.
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
        for start, count in ag_free_extents(view, sb, agno):
            free.append(Extent((ag_base + start) * sb.block_size, count * sb.block_size))
    used = complement(merge(free), sb.dblocks * sb.block_size)
    tail = Extent(sb.dblocks * sb.block_size, size - sb.dblocks * sb.block_size)
    return FsUsage("xfs", FsState.CLEAN, merge((*used, tail)))


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
