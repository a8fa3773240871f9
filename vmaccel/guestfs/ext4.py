"""ext2/ext3/ext4 allocation from the superblock, group descriptors and block bitmaps.

The layout (superblock, descriptors, where metadata lives) is `vmaccel.guestfs.ext4layout`. A block
marked free becomes a hole only if the metadata that says so is verified (DESIGN invariant 5):
- with metadata_csum, the superblock, every group descriptor and every block bitmap read
  match their crc32c checksums; with gdt_csum only, every descriptor matches its crc16
  (guestfs.ext4csum);
- on every filesystem, each bitmap marks in use all metadata and journal blocks of its group
  and has as many zero bits as its descriptor counts free blocks (guestfs.ext4check).
Any failure raises `GuestFsError`, so the allocation map takes the volume whole and names it.

A group flagged BLOCK_UNINIT (honoured only with descriptor checksums, as by the kernel) has
no bitmap on disk; its used blocks are its superblock/descriptor backups plus any bitmaps or
inode tables placed in it, all of which are counted as used.

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

from vmaccel.guestfs.blockread import iter_blocks
from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.ext4check import BitmapCheck, journal_needs, metadata_needs
from vmaccel.guestfs.ext4csum import verify_block_bitmap
from vmaccel.guestfs.ext4layout import (
    BG_BLOCK_UNINIT,
    COMPAT_HAS_JOURNAL,
    COMPAT_RESIZE_INODE,
    INCOMPAT_JOURNAL_DEV,
    INCOMPAT_META_BG,
    INCOMPAT_RECOVER,
    RO_COMPAT_BIGALLOC,
    STATE_ERROR_FS,
    STATE_VALID_FS,
    GroupDesc,
    Superblock,
    desc_block,
    group_block_count,
    group_first_block,
    parse_desc,
    parse_superblock,
    read_group_descs,
    read_superblock,
    super_groups,
)
from vmaccel.guestfs.extent import Extent, from_bitmap, merge
from vmaccel.guestfs.jbd2 import read_journal_super
from vmaccel.guestfs.usage import FsState, FsUsage, whole
from vmaccel.guestfs.volume import VolumeView

__all__ = [
    "GroupDesc",
    "Superblock",
    "ext4_usage",
    "fs_state",
    "parse_superblock",
    "read_inode",
    "read_superblock",
]

logger = logging.getLogger(__name__)


def ext4_usage(view: VolumeView, fstype: str = "ext4") -> FsUsage:
    """Used space of the ext2/3/4 filesystem behind `view`, in volume byte offsets.

    Reads the superblock, the group descriptors, the journal inode's map and the block bitmap
    of every initialized group (coalesced reads; memory O(one read run + result)), verifying
    them as the module docstring says. Bytes after the filesystem's last block are counted as
    used, since something other than this filesystem may own them. Raises `GuestFsError` on
    damaged or inconsistent metadata; returns `whole` for a filesystem that is not clean.
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
    bitmaps: dict[int, int] = {}
    supers = super_groups(sb)
    for g, d in enumerate(descs):
        if g and d.flags & BG_BLOCK_UNINIT:
            used.extend(_uninit_group_used(sb, g, g in supers))
        elif bitmaps.setdefault(d.block_bitmap, g) != g:
            raise GuestFsError(f"ext4: groups {bitmaps[d.block_bitmap]} and {g} share a bitmap")
    needs = metadata_needs(sb, descs) + journal_needs(view, sb, descs)
    check = BitmapCheck(sb, needs, set(bitmaps.values()))
    used.extend(Extent(start * bs, (stop - start) * bs) for start, stop in check.runs)
    wide = sb.desc_size >= 64
    fault: str | None = None  # a checksum mismatch, if any, is the better reason: report it
    for block, bitmap in iter_blocks(view, bitmaps, bs):
        g = bitmaps[block]
        if sb.csum_seed is not None:
            csum = descs[g].bitmap_csum
            verify_block_bitmap(sb.csum_seed, bitmap, sb.blocks_per_group // 8, csum, wide, g)
        count = group_block_count(sb, g)
        fault = fault or check.fault(g, bitmap, count, descs[g].free_blocks)
        if fault is None:
            used.extend(from_bitmap(bitmap, bs, group_first_block(sb, g) * bs, count))
    if fault is not None:
        raise GuestFsError(fault)
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


def _uninit_group_used(sb: Superblock, g: int, sup: bool) -> list[Extent]:
    """Used blocks of a BLOCK_UNINIT group: its superblock backup (`sup`: if it has one)
    and descriptor copies.

    Conservative where the layout rules get subtle: with META_BG, a backup descriptor block
    sits after the superblock backup if there is one, else at the group's first block; we mark
    the first two blocks, which covers both.
    """
    if not sup:
        if sb.incompat & INCOMPAT_META_BG and g % sb.descs_per_block in (1, sb.descs_per_block - 1):
            first = group_first_block(sb, g)
            return [Extent(first * sb.block_size, 2 * sb.block_size)]
        return []
    old_style = sb.gdt_blocks
    if sb.incompat & INCOMPAT_META_BG:
        old_style = min(sb.first_meta_bg, sb.gdt_blocks)
    reserved = sb.reserved_gdt_blocks if sb.compat & COMPAT_RESIZE_INODE else 0
    first = group_first_block(sb, g)
    used = [Extent(first * sb.block_size, (1 + old_style + reserved) * sb.block_size)]
    if sb.incompat & INCOMPAT_META_BG and g % sb.descs_per_block in (1, sb.descs_per_block - 1):
        # META_BG keeps backups of a meta group's descriptor block in its 2nd and last group.
        used.append(Extent((first + 1) * sb.block_size, sb.block_size))
    return used
