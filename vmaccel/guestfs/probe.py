"""Recognise what a volume holds from its signatures (magic numbers), reading a few sectors.

The names returned are the `fstype` vocabulary of guestfs: "ext2", "ext3", "ext4", "xfs",
"ntfs", "vfat", "lvm2", "swap". None means unrecognised. Recognition is deliberately strict
(a magic plus plausible geometry), because a false positive would hand garbage to a parser.
"""

from __future__ import annotations

import logging
import struct

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

EXT_FAMILY = frozenset({"ext2", "ext3", "ext4"})
_EXT4_INCOMPAT = 0x0040 | 0x0080 | 0x0200  # extents, 64bit, flex_bg


def probe(view: VolumeView) -> str | None:
    """Return the fstype of the volume behind `view`, or None if nothing is recognised."""
    size = view.volume.size
    if size < 4096:
        return None
    try:
        head = view.pread(0, min(size, 8192))
    except GuestFsError:
        return None
    if head[:4] == b"XFSB":
        return "xfs"
    if head[3:11] == b"NTFS    " and head[510:512] == b"\x55\xaa":
        return "ntfs"
    if _is_fat(head):
        return "vfat"
    if struct.unpack_from("<H", head, 1024 + 56)[0] == 0xEF53:
        return _ext_flavour(head[1024:2048])
    for sector in range(4):
        if (
            head[sector * 512 : sector * 512 + 8] == b"LABELONE"
            and head[sector * 512 + 24 : sector * 512 + 32] == b"LVM2 001"
        ):
            return "lvm2"
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    return None


def _ext_flavour(sb: bytes) -> str:
    compat, incompat = struct.unpack_from("<II", sb, 0x5C)
    if incompat & _EXT4_INCOMPAT:
        return "ext4"
    return "ext3" if compat & 0x0004 else "ext2"  # COMPAT_HAS_JOURNAL


def _is_fat(boot: bytes) -> bool:
    """A FAT boot sector: 0x55AA, a "FAT" type string, and sane BPB geometry."""
    if boot[510:512] != b"\x55\xaa" or boot[0] not in (0xEB, 0xE9):
        return False
    if b"FAT" not in (boot[0x36:0x39], boot[0x52:0x55]):
        return False
    bps, spc, reserved, nfats = struct.unpack_from("<HBHB", boot, 11)
    return (
        bps in (512, 1024, 2048, 4096)
        and spc in (1, 2, 4, 8, 16, 32, 64, 128)
        and reserved > 0
        and nfats in (1, 2)
    )
