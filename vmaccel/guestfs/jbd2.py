"""The jbd2 journal superblock of an ext3/ext4 internal journal: is a replay pending?

On-disk facts used. The journal is an ordinary inode (``s_journal_inum``, usually 8) whose
logical block 0 holds the journal superblock. The inode (little-endian) has ``i_flags`` at
0x20 and the 60-byte ``i_block`` at 0x28: with EXTENTS_FL (0x80000) an extent tree (header
magic 0xF30A, entries, max, depth; 12-byte entries, leaves ``(ee_block u32, ee_len u16,
ee_start_hi u16, ee_start_lo u32)``, index nodes ``(ei_block u32, ei_leaf_lo u32,
ei_leaf_hi u16)``), otherwise the classic block map whose first word is logical block 0.
The journal superblock is big-endian: magic 0xC03B3998 at 0, block type (3 = v1, 4 = v2) at 4,
s_blocksize 0x0C, s_maxlen 0x10, s_first 0x14, s_sequence 0x18, s_start 0x1C, s_errno 0x20.

``s_start == 0`` means the log holds no transaction that recovery would replay: jbd2's own
recovery returns at once in that case, and jbd2 writes a non-zero s_start (with FUA) before
it writes the first commit into an empty log. A non-zero ``s_errno`` means the journal was
aborted after an error.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

JBD2_MAGIC = 0xC03B3998
JBD2_SUPERBLOCK_V1 = 3
JBD2_SUPERBLOCK_V2 = 4
EXTENTS_FL = 0x80000
EXTENT_MAGIC = 0xF30A
S_IFMT = 0xF000
S_IFREG = 0x8000
_MAX_DEPTH = 5  # ext4 trees are at most 5 levels deep
_INIT_MAX_LEN = 32768  # ee_len above this marks an uninitialized extent


@dataclass(frozen=True)
class JournalSuper:
    """The jbd2 superblock fields that decide whether a replay is pending; blocks are journal
    blocks (of `block_size` bytes)."""

    block_size: int
    max_len: int
    first: int
    sequence: int
    start: int
    errno: int

    @property
    def empty(self) -> bool:
        """No transaction awaits replay (what jbd2 recovery itself checks)."""
        return self.start == 0


def read_journal_super(
    view: VolumeView, inode: bytes, block_size: int, blocks_count: int
) -> JournalSuper:
    """The superblock of the journal whose raw inode bytes are `inode`.

    `block_size` is the filesystem's block size in bytes and `blocks_count` its size in
    blocks (to reject pointers outside it). Raises `GuestFsError` if the inode is not a
    regular file, its block map is damaged, or the block is not a jbd2 superblock.
    """
    (mode,) = struct.unpack_from("<H", inode, 0)
    if mode & S_IFMT != S_IFREG:
        raise GuestFsError(f"ext4 journal inode is not a regular file (mode {mode:#o})")
    (flags,) = struct.unpack_from("<I", inode, 0x20)
    i_block = inode[0x28 : 0x28 + 60]
    if flags & EXTENTS_FL:
        block = _extent_block_zero(view, i_block, block_size, blocks_count)
    else:
        (block,) = struct.unpack_from("<I", i_block, 0)
    if not 0 < block < blocks_count:
        raise GuestFsError(f"ext4 journal: first block {block} is outside the filesystem")
    raw = view.pread(block * block_size, 1024)
    magic, blocktype = struct.unpack_from(">II", raw, 0)
    if magic != JBD2_MAGIC or blocktype not in (JBD2_SUPERBLOCK_V1, JBD2_SUPERBLOCK_V2):
        raise GuestFsError(
            f"ext4 journal: block {block} is not a jbd2 superblock "
            f"(magic {magic:#010x}, type {blocktype})"
        )
    bs, max_len, first, seq, start = struct.unpack_from(">IIIII", raw, 0x0C)
    (errno,) = struct.unpack_from(">i", raw, 0x20)
    if start and not first <= start < max_len:
        raise GuestFsError(f"ext4 journal: s_start {start} outside the log [{first}, {max_len})")
    return JournalSuper(bs, max_len, first, seq, start, errno)


def _extent_block_zero(view: VolumeView, node: bytes, block_size: int, blocks_count: int) -> int:
    """Physical block of logical block 0 in the extent tree whose root node is `node`."""
    for _level in range(_MAX_DEPTH + 1):
        magic, entries, max_entries, depth = struct.unpack_from("<HHHH", node, 0)
        if magic != EXTENT_MAGIC or not 0 < entries <= max_entries:
            raise GuestFsError(
                f"ext4 journal: bad extent header (magic {magic:#06x}, {entries} entries)"
            )
        first = node[12:24]
        if depth == 0:
            ee_block, ee_len, start_hi, start_lo = struct.unpack_from("<IHHI", first, 0)
            if ee_block != 0 or ee_len > _INIT_MAX_LEN:
                raise GuestFsError("ext4 journal: logical block 0 is not mapped to written data")
            return int(start_lo | start_hi << 32)
        ei_block, leaf_lo, leaf_hi = struct.unpack_from("<IIH", first, 0)
        leaf = leaf_lo | leaf_hi << 32
        if ei_block != 0 or not 0 < leaf < blocks_count:
            raise GuestFsError(f"ext4 journal: bad extent index (block {ei_block}, leaf {leaf})")
        node = view.pread(leaf * block_size, block_size)
    raise GuestFsError(f"ext4 journal: extent tree deeper than {_MAX_DEPTH}")
