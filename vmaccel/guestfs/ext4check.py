"""What must be in use in an ext2/3/4 filesystem, checked against its block bitmaps.

A block bitmap is trusted only if it agrees with the rest of the metadata (DESIGN invariant 5).
Checked here, also on filesystems without metadata_csum:
- Every block that must be in use is marked in use in the bitmap of the group holding it: each
  superblock copy with its descriptor blocks (and reserved GDT blocks, with resize_inode), the
  META_BG descriptor blocks and their backups, every group's block bitmap, inode bitmap and
  inode table (wherever flex_bg put them), and every block of the internal journal: its data
  and its extent-tree or indirect blocks. A group flagged BLOCK_UNINIT has no bitmap: the
  kernel marks in use only its own superblock copy, descriptors and tables when it first
  allocates there, so any other metadata inside such a group is an error.
- None of those overlap: two groups' tables, or a table and a superblock copy or the journal,
  never share a block in a sound filesystem.
- Each group's bg_free_blocks_count equals the zero bits of its bitmap over the group's real
  blocks (the padding bits of the last group are ignored). The kernel changes both in the same
  journal transaction, so with no replay pending (the only state whose bitmaps we read) they
  agree. The superblock's s_free_blocks_count is maintained lazily and is not compared.
- The journal inode is a regular file whose blocks (data and map) lie inside the filesystem
  and cover its i_size without holes; with metadata_csum its inode and extent blocks match
  their checksums.

Which layouts mark what follows e2fsprogs (ext2fs_super_and_bgd_loc2) and the kernel
(ext4_num_base_meta_clusters); where they differ, only what both mark is required.
"""

from __future__ import annotations

import bisect
import logging
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.ext4csum import extent_block_fault, inode_checksum_fault, inode_seed
from vmaccel.guestfs.ext4layout import (
    COMPAT_HAS_JOURNAL,
    COMPAT_RESIZE_INODE,
    INCOMPAT_JOURNAL_DEV,
    INCOMPAT_META_BG,
    GroupDesc,
    Superblock,
    group_first_block,
    super_groups,
)
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

EXTENTS_FL = 0x80000
EXTENT_MAGIC = 0xF30A
UNINIT_LEN = 32768  # ee_len above this: an unwritten (but allocated) extent
MAX_EXTENT_DEPTH = 5
S_IFMT = 0xF000
S_IFREG = 0x8000


class Need(NamedTuple):
    """`length` blocks from block `start` that must be in use: `what` of group `group` (-1 for
    the journal)."""

    start: int
    length: int
    what: str
    group: int

    @property
    def label(self) -> str:
        return self.what if self.group < 0 else f"group {self.group} {self.what}"


def metadata_needs(sb: Superblock, descs: Sequence[GroupDesc]) -> list[Need]:
    """The superblock copies, descriptor blocks and group tables, one `Need` each."""
    meta_bg = bool(sb.incompat & INCOMPAT_META_BG)
    dpb = sb.descs_per_block
    old_style = min(sb.first_meta_bg, sb.gdt_blocks) if meta_bg else sb.gdt_blocks
    reserved = sb.reserved_gdt_blocks if sb.compat & COMPAT_RESIZE_INODE and not meta_bg else 0
    itable = sb.itable_blocks
    supers = super_groups(sb)
    needs: list[Need] = []
    for g, d in enumerate(descs):
        first = group_first_block(sb, g)
        sup = g in supers
        new_style = meta_bg and g // dpb >= sb.first_meta_bg
        if sup:
            n = 1 if new_style else 1 + old_style + reserved
            needs.append(Need(first, min(n, sb.blocks_count - first), "superblock copy", g))
        if new_style and g % dpb in (0, 1, dpb - 1):
            needs.append(Need(first + int(sup), 1, "META_BG descriptor block", g))
        needs.append(Need(d.block_bitmap, 1, "block bitmap", g))
        needs.append(Need(d.inode_bitmap, 1, "inode bitmap", g))
        needs.append(Need(d.inode_table, itable, "inode table", g))
    return needs


def journal_needs(view: VolumeView, sb: Superblock, descs: Sequence[GroupDesc]) -> list[Need]:
    """The blocks of the internal journal (none for no journal or an external one); raises
    `GuestFsError` if its inode is damaged or its map has holes or points outside the fs."""
    ino = sb.journal_inum
    if not sb.compat & COMPAT_HAS_JOURNAL or not ino or sb.incompat & INCOMPAT_JOURNAL_DEV:
        return []
    if not 0 < ino <= min(sb.inodes_per_group * len(descs), sb.inodes_count or ino):
        raise GuestFsError(f"ext4: journal inode {ino} is out of range")
    group, index = divmod(ino - 1, sb.inodes_per_group)
    at = descs[group].inode_table * sb.block_size + index * sb.inode_size
    inode = view.pread(at, sb.inode_size)
    what = f"ext4: journal inode {ino}"
    if sb.csum_seed is not None:
        fault = inode_checksum_fault(sb.csum_seed, ino, inode, 0, sb.inode_size)
        if fault:
            raise GuestFsError(f"ext4: journal {fault}")
    mode, size_lo = struct.unpack_from("<HxxI", inode, 0)
    if mode & S_IFMT != S_IFREG:
        raise GuestFsError(f"{what} is not a regular file (mode {mode:#o})")
    size = size_lo | struct.unpack_from("<I", inode, 0x6C)[0] << 32
    nblocks = -(-size // sb.block_size)
    runs: list[list[int]] = []
    iseed = None if sb.csum_seed is None else inode_seed(sb.csum_seed, ino, inode)
    walker = _MapWalker(view, sb, runs, what, iseed)
    if struct.unpack_from("<I", inode, 0x20)[0] & EXTENTS_FL:
        mapped = walker.extents(inode[0x28:0x64], MAX_EXTENT_DEPTH)
    else:
        mapped = walker.blockmap(inode[0x28:0x64], nblocks)
    if mapped != nblocks:
        raise GuestFsError(f"{what} maps {mapped} blocks for a size of {nblocks} blocks")
    return [Need(start, count, "journal", -1) for start, count in runs]


class _MapWalker:
    """Collects the physical block runs ([start, count], merged when adjacent) of one inode's
    extent tree or block map, tree/indirect blocks included; the walk methods return how many
    data blocks they mapped."""

    def __init__(
        self, view: VolumeView, sb: Superblock, runs: list[list[int]], what: str, iseed: int | None
    ) -> None:
        self._iseed = iseed  # metadata_csum: verify extent blocks with this inode seed
        self._view = view
        self._bs = sb.block_size
        self._limit = sb.blocks_count
        self._runs = runs
        self._what = what

    def _add(self, start: int, count: int) -> None:
        if start <= 0 or start + count > self._limit:
            raise GuestFsError(f"{self._what}: blocks {start}+{count} lie outside the fs")
        runs = self._runs
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1][1] += count
        else:
            runs.append([start, count])

    def _read(self, block: int) -> bytes:
        self._add(block, 1)
        return self._view.pread(block * self._bs, self._bs)

    def extents(self, node: bytes, depth_left: int) -> int:
        magic, entries, max_entries, depth = struct.unpack_from("<HHHH", node, 0)
        if magic != EXTENT_MAGIC or entries > max_entries or depth > depth_left:
            raise GuestFsError(f"{self._what}: bad extent node (magic {magic:#06x})")
        mapped = 0
        for i in range(entries):
            if depth == 0:
                _lblock, length, hi, lo = struct.unpack_from("<IHHI", node, 12 + 12 * i)
                length -= UNINIT_LEN if length > UNINIT_LEN else 0
                self._add(lo | hi << 32, length)
                mapped += length
            else:
                _lblock, lo, hi = struct.unpack_from("<IIH", node, 12 + 12 * i)
                child = self._read(lo | hi << 32)
                fault = None if self._iseed is None else extent_block_fault(self._iseed, child)
                if fault:
                    raise GuestFsError(f"{self._what}: {fault}")
                mapped += self.extents(child, depth - 1)
        return mapped

    def blockmap(self, i_block: bytes, nblocks: int) -> int:
        pointers = struct.unpack("<15I", i_block)
        mapped = self._pointers(pointers[: min(12, nblocks)])
        per = self._bs // 4
        first = 12
        for level in (1, 2, 3):
            if first >= nblocks:
                break
            mapped += self._indirect(pointers[11 + level], level, min(nblocks - first, per**level))
            first += per**level
        return mapped

    def _indirect(self, pointer: int, level: int, wanted: int) -> int:
        """Data blocks mapped by the first `wanted` logical blocks under an indirect block."""
        if pointer == 0:
            return 0
        children = struct.unpack(f"<{self._bs // 4}I", self._read(pointer))
        if level == 1:
            return self._pointers(children[:wanted])
        span = (self._bs // 4) ** (level - 1)
        return sum(
            self._indirect(child, level - 1, min(span, wanted - k * span))
            for k, child in enumerate(children[: -(-wanted // span)])
        )

    def _pointers(self, pointers: Sequence[int]) -> int:
        n = len(pointers)
        if n and pointers[0] and tuple(pointers) == tuple(range(pointers[0], pointers[0] + n)):
            self._add(pointers[0], n)  # the common case: a contiguous run, compared in C
            return n
        for p in pointers:
            if p:
                self._add(p, 1)
        return sum(1 for p in pointers if p)


class BitmapCheck:
    """The needs of a filesystem, coalesced into runs and sorted into the groups whose
    bitmaps must mark them.

    Construction raises `GuestFsError` if two needs overlap or a need of one group lies in
    another group that is not in `checked` (BLOCK_UNINIT, no bitmap). `fault` then verifies
    one group's bitmap. `runs` are the coalesced needs, ``[start, end)`` in blocks, sorted.
    """

    def __init__(self, sb: Superblock, needs: Iterable[Need], checked: set[int]) -> None:
        self._sb = sb
        self._needs = sorted(needs)
        self._starts = [n.start for n in self._needs]
        self._by_group: dict[int, list[tuple[int, int]]] = {}
        runs: list[list[int]] = []
        end = -1
        for i, need in enumerate(self._needs):
            if need.start < end:
                prev = self._needs[i - 1]
                raise GuestFsError(
                    f"ext4: {need.label} (block {need.start}) overlaps {prev.label} "
                    f"(blocks {prev.start}+{prev.length})"
                )
            if need.start == end:
                runs[-1][1] = end = need.start + need.length
            else:
                end = need.start + need.length
                runs.append([need.start, end])
        self.runs = [(start, stop) for start, stop in runs]
        for start, stop in self.runs:
            self._bucket(start, stop, checked)

    def _bucket(self, block: int, end: int, checked: set[int]) -> None:
        first, per = self._sb.first_data_block, self._sb.blocks_per_group
        while block < end:
            g, bit = divmod(block - first, per)
            stop = min(end - block, per - bit) + bit
            if g in checked:
                self._by_group.setdefault(g, []).append((bit, stop))
            else:
                for need in self._needs_in(block, block + stop - bit):
                    if need.group != g:
                        raise GuestFsError(
                            f"ext4: {need.label} at block {need.start} lies in group {g}, "
                            f"which is BLOCK_UNINIT (a group without a bitmap holds only its "
                            f"own metadata)"
                        )
            block += stop - bit

    def _needs_in(self, start: int, end: int) -> list[Need]:
        """The needs overlapping blocks [start, end)."""
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        j = bisect.bisect_left(self._starts, end)
        return [n for n in self._needs[i:j] if n.start + n.length > start]

    def fault(self, g: int, bitmap: bytes, count: int, free: int) -> str | None:
        """Why group `g`'s `bitmap` (of `count` real blocks) disagrees with its needs or its
        descriptor's free block count `free`, or None if it agrees."""
        for lo, hi in self._by_group.get(g, ()):
            value = int.from_bytes(bitmap[lo >> 3 : (hi + 7) >> 3], "little") >> (lo & 7)
            missing = ~value & ((1 << (hi - lo)) - 1)
            if missing:
                block = group_first_block(self._sb, g) + lo + (missing & -missing).bit_length() - 1
                (need,) = self._needs_in(block, block + 1)
                return (
                    f"ext4: group {g} block bitmap marks block {block} free, but it holds "
                    f"the {need.label}"
                )
        bits = int.from_bytes(bitmap[: (count + 7) >> 3], "little") & ((1 << count) - 1)
        zeros = count - bits.bit_count()
        if zeros != free:
            return (
                f"ext4: group {g} free block count disagrees with its block bitmap "
                f"(descriptor {free}, bitmap {zeros})"
            )
        return None
