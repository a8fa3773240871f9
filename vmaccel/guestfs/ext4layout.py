"""ext2/ext3/ext4 layout: the superblock, the group descriptors, and where metadata lives.

On-disk facts used (all little-endian; "block" = filesystem block of 1024 << s_log_block_size
bytes):
- The superblock is volume bytes [1024, 2048). Group g starts at block
  ``s_first_data_block + g * s_blocks_per_group``.
- Group descriptors (32 bytes, or s_desc_size with INCOMPAT_64BIT) follow the superblock's
  block, except with INCOMPAT_META_BG, where descriptor block m (m >= s_first_meta_bg) lives in
  the first group of meta group m, right after that group's superblock backup if it has one.
- A descriptor holds the block bitmap (0x00, hi 0x20), inode bitmap (0x04, hi 0x24) and
  inode table (0x08, hi 0x28) locations, bg_free_blocks_count (0x0C, hi 0x2C), bg_flags
  (0x12), bg_block_bitmap_csum (0x18, hi 0x38) and bg_checksum (0x1E); the hi halves exist
  only in descriptors of 64 bytes or more.
- bg_flags mean something only when descriptors are checksummed (RO_COMPAT_GDT_CSUM or
  METADATA_CSUM); the kernel ignores them otherwise, and so do we (`GroupDesc.flags` is 0).
- Inode n lives in group (n - 1) // s_inodes_per_group, at index (n - 1) % s_inodes_per_group
  of that group's inode table, s_inode_size bytes each.

Every superblock and descriptor parsed here has had its checksum verified (guestfs.ext4csum).
"""

from __future__ import annotations

import functools
import logging
import struct
from dataclasses import dataclass

from vmaccel.guestfs.blockread import iter_blocks
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.ext4csum import crc16, verify_desc, verify_superblock
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

STATE_VALID_FS = 0x1
STATE_ERROR_FS = 0x2
COMPAT_HAS_JOURNAL = 0x4
COMPAT_RESIZE_INODE = 0x10
COMPAT_SPARSE_SUPER2 = 0x200
INCOMPAT_RECOVER = 0x4
INCOMPAT_JOURNAL_DEV = 0x8
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
RO_COMPAT_SPARSE_SUPER = 0x1
RO_COMPAT_GDT_CSUM = 0x10
RO_COMPAT_BIGALLOC = 0x200
RO_COMPAT_METADATA_CSUM = 0x400
BG_BLOCK_UNINIT = 0x2


@dataclass(frozen=True)
class Superblock:
    """The superblock fields allocation needs; sizes in blocks unless named `_bytes`.

    `csum_seed` is the metadata_csum checksum seed, None without metadata_csum.
    """

    block_size: int
    blocks_count: int
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int
    inode_size: int
    state: int
    compat: int
    incompat: int
    ro_compat: int
    reserved_gdt_blocks: int
    desc_size: int
    first_meta_bg: int
    backup_bgs: tuple[int, int]
    journal_inum: int = 0
    inodes_count: int = 0
    uuid: bytes = bytes(16)
    csum_seed: int | None = None

    @property
    def group_count(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def gdt_blocks(self) -> int:
        return -(-self.group_count // self.descs_per_block)

    @property
    def desc_csum(self) -> bool:
        """Whether group descriptors carry a checksum (and bg_flags count)."""
        return self.csum_seed is not None or bool(self.ro_compat & RO_COMPAT_GDT_CSUM)

    @property
    def itable_blocks(self) -> int:
        """Blocks of one group's inode table."""
        return -(-self.inodes_per_group * self.inode_size // self.block_size)


@dataclass(frozen=True)
class GroupDesc:
    """One verified group descriptor: block numbers of its bitmaps and inode table, its
    flags (0 without descriptor checksums), its free block count, and the stored checksum of
    its block bitmap (16 bits with 32-byte descriptors)."""

    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    flags: int
    free_blocks: int = 0
    bitmap_csum: int = 0


def read_superblock(view: VolumeView) -> Superblock:
    """Parse and sanity-check the primary superblock; raise `GuestFsError` if implausible."""
    sb = parse_superblock(view.pread(1024, 1024))
    _check_geometry(sb, view.volume.size)
    return sb


def parse_superblock(raw: bytes) -> Superblock:
    """The superblock in `raw` (its 1024 bytes); raises `GuestFsError` for a bad magic, block
    size or metadata_csum checksum (`read_superblock` also checks the geometry against the
    volume)."""
    (magic, state) = struct.unpack_from("<HH", raw, 0x38)
    if magic != 0xEF53:
        raise GuestFsError(f"ext4: bad superblock magic {magic:#06x}")
    compat, incompat, ro_compat = struct.unpack_from("<III", raw, 0x5C)
    log_bs = struct.unpack_from("<I", raw, 0x18)[0]
    if log_bs > 6:
        raise GuestFsError(f"ext4: implausible block size 1024 << {log_bs}")
    seed = verify_superblock(raw)
    blocks_hi = struct.unpack_from("<I", raw, 0x150)[0] if incompat & INCOMPAT_64BIT else 0
    desc_size = struct.unpack_from("<H", raw, 0xFE)[0] if incompat & INCOMPAT_64BIT else 32
    return Superblock(
        block_size=1024 << log_bs,
        blocks_count=struct.unpack_from("<I", raw, 0x04)[0] | blocks_hi << 32,
        first_data_block=struct.unpack_from("<I", raw, 0x14)[0],
        blocks_per_group=struct.unpack_from("<I", raw, 0x20)[0],
        inodes_per_group=struct.unpack_from("<I", raw, 0x28)[0],
        inode_size=struct.unpack_from("<H", raw, 0x58)[0] or 128,
        state=state,
        compat=compat,
        incompat=incompat,
        ro_compat=ro_compat,
        reserved_gdt_blocks=struct.unpack_from("<H", raw, 0xCE)[0],
        desc_size=desc_size,
        first_meta_bg=struct.unpack_from("<I", raw, 0x104)[0],
        backup_bgs=struct.unpack_from("<II", raw, 0x24C),
        journal_inum=struct.unpack_from("<I", raw, 0xE0)[0],
        inodes_count=struct.unpack_from("<I", raw, 0x00)[0],
        uuid=bytes(raw[0x68:0x78]),
        csum_seed=seed,
    )


def _check_geometry(sb: Superblock, volume_size: int) -> None:
    if sb.desc_size < 32 or sb.desc_size & (sb.desc_size - 1) or sb.desc_size > sb.block_size:
        raise GuestFsError(f"ext4: implausible group descriptor size {sb.desc_size}")
    bigalloc = sb.ro_compat & RO_COMPAT_BIGALLOC  # bitmaps count clusters; never read then
    plausible = sb.blocks_per_group > 0 and (bigalloc or sb.blocks_per_group <= 8 * sb.block_size)
    if not plausible or sb.blocks_per_group % 8:
        raise GuestFsError(f"ext4: implausible blocks per group {sb.blocks_per_group}")
    if sb.blocks_count <= sb.first_data_block:
        raise GuestFsError(f"ext4: implausible block count {sb.blocks_count}")
    if sb.blocks_count * sb.block_size > volume_size:
        raise GuestFsError(
            f"ext4: filesystem ({sb.blocks_count} blocks of {sb.block_size}) is larger than "
            f"its volume ({volume_size} bytes)"
        )


def read_group_descs(view: VolumeView, sb: Superblock) -> list[GroupDesc]:
    """All group descriptors, in group order, checksum-verified and checked to point inside
    the filesystem."""
    dpb = sb.descs_per_block
    locations = [desc_block(sb, m) for m in range(sb.gdt_blocks)]
    blocks = dict(iter_blocks(view, locations, sb.block_size))
    return [
        parse_desc(sb, blocks[locations[g // dpb]], (g % dpb) * sb.desc_size, g)
        for g in range(sb.group_count)
    ]


def parse_desc(sb: Superblock, raw: bytes, off: int, g: int) -> GroupDesc:
    """Group `g`'s descriptor at byte `off` of descriptor block `raw`, range-checked and then
    checksum-verified (raises `GuestFsError`)."""
    bb, ib, it, free = struct.unpack_from("<IIIH", raw, off)
    flags, bb_csum = struct.unpack_from("<HxxxxH", raw, off + 0x12)
    if sb.desc_size >= 64:
        bbh, ibh, ith, freeh = struct.unpack_from("<IIIH", raw, off + 0x20)
        bb, ib, it, free = bb | bbh << 32, ib | ibh << 32, it | ith << 32, free | freeh << 16
        bb_csum |= struct.unpack_from("<H", raw, off + 0x38)[0] << 16
    for what, block in (("block bitmap", bb), ("inode bitmap", ib), ("inode table", it)):
        if not sb.first_data_block <= block < sb.blocks_count:
            raise GuestFsError(f"ext4: group {g} {what} at block {block} is outside the fs")
    if it + sb.itable_blocks > sb.blocks_count:
        raise GuestFsError(f"ext4: group {g} inode table at block {it} runs past the fs end")
    if sb.desc_csum:
        desc = raw[off : off + sb.desc_size]
        verify_desc(desc, g, sb.csum_seed, _uuid_crc16(sb.uuid) if sb.csum_seed is None else 0)
    return GroupDesc(bb, ib, it, flags if sb.desc_csum else 0, free, bb_csum)


@functools.lru_cache(maxsize=16)
def _uuid_crc16(uuid: bytes) -> int:
    return crc16(0xFFFF, uuid)


def desc_block(sb: Superblock, m: int) -> int:
    """Block number of descriptor block `m` (holding groups [m * dpb, (m + 1) * dpb))."""
    if not sb.incompat & INCOMPAT_META_BG or m < sb.first_meta_bg:
        return sb.first_data_block + 1 + m
    group = m * sb.descs_per_block
    return group_first_block(sb, group) + (1 if has_super(sb, group) else 0)


def group_first_block(sb: Superblock, g: int) -> int:
    """First block of group `g`."""
    return sb.first_data_block + g * sb.blocks_per_group


def group_block_count(sb: Superblock, g: int) -> int:
    """Blocks in group `g` (the last group may be short)."""
    return min(sb.blocks_per_group, sb.blocks_count - group_first_block(sb, g))


def has_super(sb: Superblock, g: int) -> bool:
    """Whether group `g` holds a superblock (primary or backup) and old-style GDT copy."""
    return g in super_groups(sb)


@functools.lru_cache(maxsize=16)
def super_groups(sb: Superblock) -> frozenset[int]:
    """The groups holding a superblock copy: all, or with sparse_super 0, 1 and the powers
    of 3, 5 and 7, or with sparse_super2 0 and the (up to two) s_backup_bgs."""
    count = sb.group_count
    if sb.compat & COMPAT_SPARSE_SUPER2:
        return frozenset({0, *(g for g in sb.backup_bgs if 0 < g < count)})
    if not sb.ro_compat & RO_COMPAT_SPARSE_SUPER:
        return frozenset(range(count))
    groups = {0, 1}
    for base in (3, 5, 7):
        n = base
        while n < count:
            groups.add(n)
            n *= base
    return frozenset(groups)
