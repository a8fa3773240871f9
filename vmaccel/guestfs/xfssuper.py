"""The XFS superblock: geometry, identity and features, verified before anything trusts it.

On-disk facts used (big-endian, primary superblock at byte 0, magic "XFSB"): block size
(0x04), data blocks (0x08), uuid (0x20), log start as an fs block number (0x30), root inode
(0x38), AG blocks (0x54), AG count (0x58), log blocks (0x60), version (0x64, low nibble 5 =
CRC format "v5"), sector size (0x66), inode size (0x68), block log (0x78), inodes-per-block
log (0x7B), AG block log (0x7C); v5 only: ro-compat features (0xD4), incompat features
(0xD8), sb_crc (0xE0, CRC-32C over the sector with the field zeroed, little-endian),
meta uuid (0xF8, stamped in metadata headers instead of the uuid when incompat bit 2 is set).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import VolumeView
from vmaccel.guestfs.xfsbtree import verify_crc

logger = logging.getLogger(__name__)

SB_CRC_OFFSET = 0xE0
INCOMPAT_META_UUID = 1 << 2
RO_COMPAT_FINOBT = 1 << 0
RO_COMPAT_RMAPBT = 1 << 1
RO_COMPAT_REFLINK = 1 << 2


@dataclass(frozen=True)
class XfsSuper:
    """Superblock fields allocation needs; block counts in filesystem blocks.

    `meta_uuid` is the uuid every v5 metadata header must carry; `ro_compat` the v5
    read-only-compatible feature bits (0 on v4), which say which optional btrees exist.
    """

    block_size: int
    dblocks: int
    agblocks: int
    agcount: int
    agblklog: int
    sector_size: int
    logstart: int
    logblocks: int
    crc: bool
    meta_uuid: bytes = bytes(16)
    rootino: int = 0
    inopblog: int = 0
    ro_compat: int = 0

    def disk_block(self, fsblock: int) -> int:
        """Linear block number of an (agno << agblklog | agbno) fs block number."""
        agno, agbno = self.split(fsblock)
        return agno * self.agblocks + agbno

    def split(self, fsblock: int) -> tuple[int, int]:
        """(AG number, AG block) of an (agno << agblklog | agbno) fs block number."""
        return fsblock >> self.agblklog, fsblock & ((1 << self.agblklog) - 1)

    def ag_len(self, agno: int) -> int:
        """Blocks in AG `agno` (the last AG may be short)."""
        return min(self.agblocks, self.dblocks - agno * self.agblocks)


def read_super(view: VolumeView) -> XfsSuper:
    """Parse and verify the primary superblock; raise `GuestFsError` naming the failed check
    (magic, CRC on v5, implausible or inconsistent geometry)."""
    raw = view.pread(0, 512)
    if raw[:4] != b"XFSB":
        raise GuestFsError("xfs: bad superblock magic")
    crc = struct.unpack_from(">H", raw, 0x64)[0] & 0xF == 5
    sb = _super(raw, crc)
    bs, sectsize, agblocks = sb.block_size, sb.sector_size, sb.agblocks
    if sectsize not in (512, 1024, 2048, 4096, 8192, 16384, 32768):
        raise GuestFsError(f"xfs: implausible sector size {sectsize}")
    if crc:
        sector = view.pread(0, sectsize) if sectsize > 512 else raw
        verify_crc(sector, SB_CRC_OFFSET, "xfs superblock")
    if bs not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536) or not agblocks:
        raise GuestFsError(f"xfs: implausible geometry ({bs}-byte blocks, {agblocks} per AG)")
    if 1 << raw[0x78] != bs or agblocks > 1 << sb.agblklog or 4 * sectsize > agblocks * bs:
        raise GuestFsError("xfs superblock: block log, AG block log or sector size disagree")
    dblocks, agcount = sb.dblocks, sb.agcount
    if not 0 < dblocks <= agcount * agblocks or (agcount - 1) * agblocks >= dblocks:
        raise GuestFsError(f"xfs: {dblocks} blocks do not fit {agcount} AGs of {agblocks}")
    if dblocks * bs > view.volume.size:
        raise GuestFsError(f"xfs: filesystem is larger than its volume ({view.volume.size} bytes)")
    return sb


def _super(raw: bytes, crc: bool) -> XfsSuper:
    bs, dblocks = struct.unpack_from(">IQ", raw, 0x04)
    uuid = raw[0x20:0x30]
    logstart, rootino = struct.unpack_from(">QQ", raw, 0x30)
    agblocks, agcount, _rbm, logblocks, _version, sectsize = struct.unpack_from(
        ">IIIIHH", raw, 0x54
    )
    ro_compat, incompat = struct.unpack_from(">II", raw, 0xD4) if crc else (0, 0)
    meta_uuid = raw[0xF8:0x108] if incompat & INCOMPAT_META_UUID else uuid
    return XfsSuper(
        bs,
        dblocks,
        agblocks,
        agcount,
        raw[0x7C],
        sectsize,
        logstart,
        logblocks,
        crc,
        meta_uuid,
        rootino,
        raw[0x7B],
        ro_compat,
    )
