"""ext4 metadata checksums: superblock, group descriptors, block bitmaps and inodes.

Conventions, as the kernel (fs/ext4) and e2fsprogs compute them:
- ``crc32c_le(seed, data)`` below is the *raw* CRC32C: no inversion on the way in or out
  (Linux ``crc32c()``). Every stored 32-bit checksum is such a raw value.
- RO_COMPAT_METADATA_CSUM (0x400) requires ``s_checksum_type`` (0x175) == 1 (crc32c). The
  superblock checksum ``s_checksum`` (0x3FC) is ``crc32c_le(~0, sb[0:0x3FC])``.
- The checksum seed of all other metadata is ``s_checksum_seed`` (0x270) with
  INCOMPAT_CSUM_SEED (0x2000), else ``crc32c_le(~0, s_uuid)`` (16 bytes at 0x68).
- Group descriptor (metadata_csum): ``bg_checksum`` (0x1E, u16) is the low 16 bits of
  ``crc32c_le(seed, le32 group || desc with bg_checksum as zero)`` over s_desc_size bytes.
  With RO_COMPAT_GDT_CSUM (0x10) only it is ``crc16(~0, uuid || le32 group || desc[0:0x1E]
  || desc[0x20:desc_size])`` (the field skipped, not zeroed; s_desc_size is 32 without
  INCOMPAT_64BIT), crc16 being the reflected 0x8005 (0xA001) polynomial without final inversion.
- Block bitmap (metadata_csum): ``crc32c_le(seed, bitmap[0:blocks_per_group / 8])``, stored
  in ``bg_block_bitmap_csum_lo`` (0x18) and, with descriptors of 64 bytes or more,
  ``bg_block_bitmap_csum_hi`` (0x38); with 32-byte descriptors only the low 16 bits exist.
- Inode (metadata_csum): ``crc32c_le(crc32c_le(crc32c_le(seed, le32 ino), le32
  i_generation), inode with i_checksum_lo (0x7C) and i_checksum_hi (0x82) as zero)`` over
  s_inode_size bytes; the high half is stored (and checked) only if ``i_extra_isize`` covers
  it (>= 4). An extent tree block's tail (after eh_max entries) holds the crc32c of the
  block up to it, from the same per-inode seed.

Every check raises `GuestFsError` naming what failed, where, and both values.
"""

from __future__ import annotations

import logging
import struct

import crc32c

from vmaccel.guestfs.errors import GuestFsError

logger = logging.getLogger(__name__)

RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_METADATA_CSUM = 0x400
INCOMPAT_CSUM_SEED = 0x2000
CHECKSUM_TYPE_CRC32C = 1
SB_CHECKSUM_OFFSET = 0x3FC
DESC_CHECKSUM_OFFSET = 0x1E
INODE_CHECKSUM_LO = 0x7C
INODE_CHECKSUM_HI = 0x82
_MASK = 0xFFFFFFFF


def crc32c_le(seed: int, data: bytes | memoryview) -> int:
    """The kernel's raw CRC32C of `data` starting from `seed` (no pre/post inversion)."""
    return ~int(crc32c.crc32c(data, value=~seed & _MASK)) & _MASK


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC16 = _crc16_table()


def crc16(crc: int, data: bytes) -> int:
    """The kernel's crc16 (CRC-16/ARC polynomial, reflected, no final inversion)."""
    table = _CRC16
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def verify_superblock(raw: bytes) -> int | None:
    """Check the metadata_csum superblock checksum of the 1024 bytes `raw`.

    Returns the checksum seed for the rest of the metadata, or None when the filesystem has
    no metadata_csum. Raises `GuestFsError` for an unknown checksum type or a mismatch.
    """
    incompat, ro_compat = struct.unpack_from("<II", raw, 0x60)
    if not ro_compat & RO_COMPAT_METADATA_CSUM:
        return None
    if raw[0x175] != CHECKSUM_TYPE_CRC32C:
        raise GuestFsError(f"ext4: superblock checksum type {raw[0x175]} is not crc32c (1)")
    (stored,) = struct.unpack_from("<I", raw, SB_CHECKSUM_OFFSET)
    computed = crc32c_le(_MASK, raw[:SB_CHECKSUM_OFFSET])
    if stored != computed:
        raise GuestFsError(
            f"ext4: superblock checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )
    if incompat & INCOMPAT_CSUM_SEED:
        return int(struct.unpack_from("<I", raw, 0x270)[0])
    return crc32c_le(_MASK, raw[0x68:0x78])


def verify_desc(desc: bytes, group: int, seed: int | None, uuid_crc16: int) -> None:
    """Check group `group`'s descriptor `desc` (exactly s_desc_size bytes): crc32c from the
    metadata_csum `seed`, else crc16 continuing from `uuid_crc16` = ``crc16(~0, s_uuid)``
    (call only when the filesystem has RO_COMPAT_GDT_CSUM or METADATA_CSUM)."""
    (stored,) = struct.unpack_from("<H", desc, DESC_CHECKSUM_OFFSET)
    le_group = struct.pack("<I", group)
    head, tail = desc[:DESC_CHECKSUM_OFFSET], desc[DESC_CHECKSUM_OFFSET + 2 :]
    if seed is not None:
        computed = crc32c_le(seed, le_group + head + b"\0\0" + tail) & 0xFFFF
        kind = "crc32c"
    else:
        computed = crc16(uuid_crc16, le_group + head + tail)
        kind = "crc16"
    if stored != computed:
        raise GuestFsError(
            f"ext4: group {group} descriptor {kind} checksum mismatch "
            f"(stored {stored:#06x}, computed {computed:#06x})"
        )


def verify_block_bitmap(
    seed: int, bitmap: bytes, nbytes: int, stored: int, full: bool, group: int
) -> None:
    """Check group `group`'s block bitmap against the checksum `stored` in its descriptor.

    `nbytes` is blocks_per_group / 8 (the checksummed length, also for the last group);
    `full` says whether the descriptor holds all 32 bits (64-byte descriptors) or only 16.
    """
    computed = crc32c_le(seed, bitmap[:nbytes])
    if not full:
        computed &= 0xFFFF
    if stored != computed:
        width = 10 if full else 6
        raise GuestFsError(
            f"ext4: group {group} block bitmap checksum mismatch "
            f"(stored {stored:#0{width}x}, computed {computed:#0{width}x})"
        )


def inode_checksum_fault(
    seed: int, ino: int, raw: bytes | memoryview, offset: int, inode_size: int
) -> str | None:
    """Why inode `ino` (`inode_size` bytes at `offset` of `raw`) fails its checksum, or None.

    An all-zero inode (never used, in a zeroed table) carries no checksum and passes, as in
    e2fsprogs.
    """
    inode = bytes(raw[offset : offset + inode_size])
    crc = inode_seed(seed, ino, inode)
    (stored,) = struct.unpack_from("<H", inode, INODE_CHECKSUM_LO)
    parts = [inode[:INODE_CHECKSUM_LO], b"\0\0", inode[INODE_CHECKSUM_LO + 2 : 128]]
    full = False
    if inode_size > 128:
        (extra_isize,) = struct.unpack_from("<H", inode, 0x80)
        full = extra_isize >= 4
        if full:
            stored |= struct.unpack_from("<H", inode, INODE_CHECKSUM_HI)[0] << 16
            parts += [inode[128:INODE_CHECKSUM_HI], b"\0\0", inode[INODE_CHECKSUM_HI + 2 :]]
        else:
            parts.append(inode[128:])
    computed = crc32c_le(crc, b"".join(parts))
    if not full:
        computed &= 0xFFFF
    if stored == computed or not any(inode):
        return None
    return f"inode {ino} checksum mismatch (stored {stored:#x}, computed {computed:#x})"


def inode_seed(seed: int, ino: int, inode: bytes) -> int:
    """The checksum seed of inode `ino` (raw bytes `inode`), for the inode and its extent
    blocks: crc32c_le of le32 ino, then le32 i_generation (0x64), from the fs `seed`."""
    (generation,) = struct.unpack_from("<I", inode, 0x64)
    return crc32c_le(crc32c_le(seed, struct.pack("<I", ino)), struct.pack("<I", generation))


def extent_block_fault(iseed: int, block: bytes) -> str | None:
    """Why an extent tree block (not the root in i_block) fails its checksum, or None: the
    ext4_extent_tail after eh_max entries holds crc32c_le(`iseed`, header and entries)."""
    (max_entries,) = struct.unpack_from("<H", block, 4)
    tail = 12 + 12 * max_entries
    if tail + 4 > len(block):
        return f"extent block eh_max {max_entries} leaves no room for its checksum"
    (stored,) = struct.unpack_from("<I", block, tail)
    computed = crc32c_le(iseed, block[:tail])
    if stored != computed:
        return f"extent block checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    return None
