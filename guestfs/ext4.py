"""ext2/ext3/ext4 allocation from the superblock, group descriptors and block bitmaps.

On-disk facts used (all little-endian; "block" = filesystem block of 1024 << s_log_block_size
bytes):
- The superblock is volume bytes [1024, 2048). Group g starts at block
  ``s_first_data_block + g * s_blocks_per_group``.
- Group descriptors (32 bytes, or s_desc_size with INCOMPAT_64BIT) follow the superblock's
  block, except with INCOMPAT_META_BG, where descriptor block m (m >= s_first_meta_bg) lives in
  the first group of meta group m, right after that group's superblock backup if it has one.
- A group flagged BLOCK_UNINIT has no bitmap on disk; its used blocks are exactly its
  superblock/descriptor backups plus any bitmaps or inode tables placed in it (which mkfs and
  the kernel never do for another group without clearing the flag, but we add every group's
  bitmaps and inode table anyway, so flex_bg layouts are covered whatever the flag says).
- Inode n lives in group (n - 1) // s_inodes_per_group, at index (n - 1) % s_inodes_per_group
  of that group's inode table, s_inode_size bytes each.

Clean (DESIGN invariant 5: no pending journal replay) means s_state has VALID_FS and not
ERROR_FS, and either INCOMPAT_RECOVER (needs_recovery) is clear or the internal journal
(inode s_journal_inum) is empty: its jbd2 superblock has s_start == 0 and s_errno == 0 (see
guestfs.jbd2). needs_recovery stays set for as long as a journaled ext4 is mounted, so a live
guest's root is always flagged; what matters is whether recovery would replay anything, and
after fsfreeze (quiesced snapshot) or a clean unmount it would not. An external journal
cannot be checked, so needs_recovery with one is dirty. Anything else is taken whole.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from guestfs.blockread import iter_blocks
from guestfs.errors import GuestFsError
from guestfs.extent import Extent, from_bitmap, merge
from guestfs.jbd2 import read_journal_super
from guestfs.usage import FsState, FsUsage, whole
from guestfs.volume import VolumeView

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
RO_COMPAT_BIGALLOC = 0x200
BG_BLOCK_UNINIT = 0x2


@dataclass(frozen=True)
class Superblock:
    """The superblock fields allocation needs; sizes in blocks unless named `_bytes`."""

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

    @property
    def group_count(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def gdt_blocks(self) -> int:
        return -(-self.group_count // self.descs_per_block)


@dataclass(frozen=True)
class GroupDesc:
    """One group descriptor: block numbers of its bitmaps and inode table, and its flags."""

    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    flags: int


def read_superblock(view: VolumeView) -> Superblock:
    """Parse and sanity-check the primary superblock; raise `GuestFsError` if implausible."""
    sb = parse_superblock(view.pread(1024, 1024))
    _check_geometry(sb, view.volume.size)
    return sb


def parse_superblock(raw: bytes) -> Superblock:
    """The superblock in `raw` (its 1024 bytes); raises `GuestFsError` for a bad magic or
    block size only (`read_superblock` also checks the geometry against the volume)."""
    (magic, state) = struct.unpack_from("<HH", raw, 0x38)
    if magic != 0xEF53:
        raise GuestFsError(f"ext4: bad superblock magic {magic:#06x}")
    compat, incompat, ro_compat = struct.unpack_from("<III", raw, 0x5C)
    log_bs = struct.unpack_from("<I", raw, 0x18)[0]
    if log_bs > 6:
        raise GuestFsError(f"ext4: implausible block size 1024 << {log_bs}")
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
    )


def _check_geometry(sb: Superblock, volume_size: int) -> None:
    if sb.desc_size < 32 or sb.desc_size & (sb.desc_size - 1) or sb.desc_size > sb.block_size:
        raise GuestFsError(f"ext4: implausible group descriptor size {sb.desc_size}")
    if not 0 < sb.blocks_per_group <= 8 * sb.block_size:
        raise GuestFsError(f"ext4: implausible blocks per group {sb.blocks_per_group}")
    if sb.blocks_count <= sb.first_data_block:
        raise GuestFsError(f"ext4: implausible block count {sb.blocks_count}")
    if sb.blocks_count * sb.block_size > volume_size:
        raise GuestFsError(
            f"ext4: filesystem ({sb.blocks_count} blocks of {sb.block_size}) is larger than "
            f"its volume ({volume_size} bytes)"
        )


def ext4_usage(view: VolumeView, fstype: str = "ext4") -> FsUsage:
    """Used space of the ext2/3/4 filesystem behind `view`, in volume byte offsets.

    Reads the superblock, the group descriptors and the block bitmap of every initialized
    group (coalesced reads; memory O(one read run + result)). Bytes after the filesystem's last
    block are counted as used, since something other than this filesystem may own them.
    Raises `GuestFsError` on inconsistent metadata.
    """
    size = view.volume.size
    sb = read_superblock(view)
    state, reason = fs_state(view, sb)
    if state is not FsState.CLEAN:
        return whole(fstype, state, size, reason or "ext4 state unknown")
    if sb.ro_compat & RO_COMPAT_BIGALLOC:
        return whole(
            fstype, FsState.CLEAN, size, "ext4 bigalloc (clustered bitmaps) is not supported"
        )
    descs = read_group_descs(view, sb)
    bs = sb.block_size
    used: list[Extent] = [Extent(0, (sb.first_data_block + 1) * bs)]
    used.extend(_descriptor_blocks(sb))
    for d in descs:
        used.extend(_group_tables(sb, d))
    bitmaps: dict[int, int] = {}
    for g, d in enumerate(descs):
        if g and d.flags & BG_BLOCK_UNINIT:
            used.extend(_uninit_group_used(sb, g))
        elif bitmaps.setdefault(d.block_bitmap, g) != g:
            raise GuestFsError(f"ext4: groups {bitmaps[d.block_bitmap]} and {g} share a bitmap")
    for block, bitmap in iter_blocks(view, bitmaps, bs):
        first = _group_first_block(sb, bitmaps[block])
        count = min(sb.blocks_per_group, sb.blocks_count - first)
        used.extend(from_bitmap(bitmap, bs, first * bs, count))
    used.append(Extent(sb.blocks_count * bs, size - sb.blocks_count * bs))
    return FsUsage(fstype, FsState.CLEAN, merge(used), note=reason)


def fs_state(view: VolumeView, sb: Superblock) -> tuple[FsState, str | None]:
    """Whether the on-disk bitmaps can be trusted, and why (see the module docstring).

    Returns (CLEAN, None) for a plainly clean filesystem, (CLEAN, note) when needs_recovery is
    set but the journal is empty, else (DIRTY or UNKNOWN, reason). Reads the journal inode and
    the jbd2 superblock only when needs_recovery is set; never raises for a damaged journal
    (that is a dirty filesystem, with the damage as the reason).
    """
    if sb.incompat & INCOMPAT_JOURNAL_DEV:
        return FsState.UNKNOWN, "ext4 external journal device, not a filesystem"
    if sb.state & STATE_ERROR_FS:
        return FsState.DIRTY, "ext4 has recorded errors (s_state ERROR_FS)"
    if not sb.state & STATE_VALID_FS:
        return FsState.DIRTY, "ext4 not cleanly unmounted (s_state lacks VALID_FS)"
    if not sb.incompat & INCOMPAT_RECOVER:
        return FsState.CLEAN, None
    needs = "ext4 journal needs recovery (needs_recovery set"
    if not sb.compat & COMPAT_HAS_JOURNAL or sb.journal_inum == 0:
        return FsState.DIRTY, f"{needs}; external or no journal, so it cannot be checked)"
    try:
        inode = read_inode(view, sb, sb.journal_inum)
        journal = read_journal_super(view, inode, sb.block_size, sb.blocks_count)
    except (GuestFsError, struct.error) as exc:
        return FsState.DIRTY, f"{needs}; journal unreadable: {exc})"
    if journal.errno:
        return FsState.DIRTY, f"{needs}; journal aborted with s_errno {journal.errno})"
    if not journal.empty:
        return FsState.DIRTY, f"{needs}; jbd2 log holds transactions from block {journal.start})"
    return FsState.CLEAN, (
        "ext4 needs_recovery set but the jbd2 journal is empty (s_start 0): nothing to replay"
    )


def read_inode(view: VolumeView, sb: Superblock, ino: int) -> bytes:
    """The raw on-disk bytes (s_inode_size) of inode number `ino` (1-based)."""
    if not 0 < ino <= sb.inodes_per_group * sb.group_count:
        raise GuestFsError(f"ext4: inode {ino} is out of range")
    group, index = divmod(ino - 1, sb.inodes_per_group)
    dpb = sb.descs_per_block
    block = view.pread(desc_block(sb, group // dpb) * sb.block_size, sb.block_size)
    desc = parse_desc(sb, block, (group % dpb) * sb.desc_size, group)
    return view.pread(desc.inode_table * sb.block_size + index * sb.inode_size, sb.inode_size)


def read_group_descs(view: VolumeView, sb: Superblock) -> list[GroupDesc]:
    """All group descriptors, in group order, checked to point inside the filesystem."""
    dpb = sb.descs_per_block
    locations = [desc_block(sb, m) for m in range(sb.gdt_blocks)]
    blocks = dict(iter_blocks(view, locations, sb.block_size))
    return [
        parse_desc(sb, blocks[locations[g // dpb]], (g % dpb) * sb.desc_size, g)
        for g in range(sb.group_count)
    ]


def parse_desc(sb: Superblock, raw: bytes, off: int, g: int) -> GroupDesc:
    """Group `g`'s descriptor at byte `off` of descriptor block `raw`, range-checked."""
    bb, ib, it = struct.unpack_from("<III", raw, off)
    flags = struct.unpack_from("<H", raw, off + 0x12)[0]
    if sb.desc_size >= 64:
        bbh, ibh, ith = struct.unpack_from("<III", raw, off + 0x20)
        bb, ib, it = bb | bbh << 32, ib | ibh << 32, it | ith << 32
    for what, block in (("block bitmap", bb), ("inode bitmap", ib), ("inode table", it)):
        if not sb.first_data_block <= block < sb.blocks_count:
            raise GuestFsError(f"ext4: group {g} {what} at block {block} is outside the fs")
    return GroupDesc(bb, ib, it, flags)


def desc_block(sb: Superblock, m: int) -> int:
    """Block number of descriptor block `m` (holding groups [m * dpb, (m + 1) * dpb))."""
    if not sb.incompat & INCOMPAT_META_BG or m < sb.first_meta_bg:
        return sb.first_data_block + 1 + m
    group = m * sb.descs_per_block
    return _group_first_block(sb, group) + (1 if has_super(sb, group) else 0)


def _group_first_block(sb: Superblock, g: int) -> int:
    return sb.first_data_block + g * sb.blocks_per_group


def has_super(sb: Superblock, g: int) -> bool:
    """Whether group `g` holds a superblock (primary or backup) and old-style GDT copy."""
    if g == 0:
        return True
    if sb.compat & COMPAT_SPARSE_SUPER2:
        return g in sb.backup_bgs
    if not sb.ro_compat & RO_COMPAT_SPARSE_SUPER or g == 1:
        return True
    for base in (3, 5, 7):
        n = base
        while n < g:
            n *= base
        if n == g:
            return True
    return False


def _group_tables(sb: Superblock, d: GroupDesc) -> list[Extent]:
    """A group's block bitmap, inode bitmap and inode table, wherever flex_bg put them."""
    itable_blocks = -(-sb.inodes_per_group * sb.inode_size // sb.block_size)
    bs = sb.block_size
    return [
        Extent(d.block_bitmap * bs, bs),
        Extent(d.inode_bitmap * bs, bs),
        Extent(d.inode_table * bs, itable_blocks * bs),
    ]


def _descriptor_blocks(sb: Superblock) -> list[Extent]:
    return [Extent(desc_block(sb, m) * sb.block_size, sb.block_size) for m in range(sb.gdt_blocks)]


def _uninit_group_used(sb: Superblock, g: int) -> list[Extent]:
    """Used blocks of a BLOCK_UNINIT group: its superblock backup and descriptor copies.

    Conservative where the layout rules get subtle: with META_BG, a backup descriptor block
    sits after the superblock backup if there is one, else at the group's first block; we mark
    the first two blocks, which covers both.
    """
    if not has_super(sb, g):
        if sb.incompat & INCOMPAT_META_BG and g % sb.descs_per_block in (1, sb.descs_per_block - 1):
            first = _group_first_block(sb, g)
            return [Extent(first * sb.block_size, 2 * sb.block_size)]
        return []
    old_style = sb.gdt_blocks
    if sb.incompat & INCOMPAT_META_BG:
        old_style = min(sb.first_meta_bg, sb.gdt_blocks)
    reserved = sb.reserved_gdt_blocks if sb.compat & COMPAT_RESIZE_INODE else 0
    first = _group_first_block(sb, g)
    used = [Extent(first * sb.block_size, (1 + old_style + reserved) * sb.block_size)]
    if sb.incompat & INCOMPAT_META_BG and g % sb.descs_per_block in (1, sb.descs_per_block - 1):
        # META_BG keeps backups of a meta group's descriptor block in its 2nd and last group.
        used.append(Extent((first + 1) * sb.block_size, sb.block_size))
    return used
