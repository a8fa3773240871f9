"""ext2/3/4 inodes and directory entries, parsed straight from the inode table and dir blocks.

This is the metadata fast path of `vmaccel.guestfs.fs_ext`: listing a tree needs a handful of fixed
inode fields and the directory entries, so they are unpacked with one `struct` call each from
raw bytes, instead of through a generic structure parser.

On-disk facts used (little-endian; see also `vmaccel.guestfs.ext4layout`):
- Inode n is s_inode_size bytes at index (n - 1) % s_inodes_per_group of the inode table of
  group (n - 1) // s_inodes_per_group; its first 128 bytes are the classic inode. With larger
  inodes, i_extra_isize (at 0x80) says how many bytes after 128 are in use; a time's extra
  word (epoch bits and nanoseconds) counts only if it lies inside them (EXT4_FITS_IN_INODE).
- A time is the signed 32-bit seconds, plus (extra & 3) << 32, plus extra >> 2 nanoseconds.
- A directory is a sequence of blocks of entries: u32 inode, u16 rec_len, u8 name_len and
  u8 file_type (u16 name_len without the FILETYPE feature), then the name. Entries never cross
  a block; rec_len is a multiple of 4, at least 12 and at least 8 + name_len. Inode 0 marks an
  unused entry, which is also how htree index blocks and the metadata_csum tail hide from a
  linear reader, so linear and htree directories are read the same way.

With metadata_csum, every inode is checked against its checksum (guestfs.ext4csum) the
first time it is read from a cached chunk; descriptors are checked by `parse_desc`.

`InodeTable` reads the inode table in aligned chunks and keeps a bounded LRU of them, so a
walk reads each table chunk about once; memory is at most `CACHE_CHUNKS * CHUNK` bytes.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.ext4csum import inode_checksum_fault
from vmaccel.guestfs.ext4layout import GroupDesc, Superblock, desc_block, parse_desc
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024  # bytes of inode table read at once (>= any block size, 64 KiB at most)
CACHE_CHUNKS = 64
_DESC_CACHE = 1024
_BASE = struct.Struct("<HHIiiiiHHIII60sIIIIHHHH")  # the classic 128-byte inode up to 0x7C
_EXTRA = struct.Struct("<HHIII")  # i_extra_isize, i_checksum_hi, ctime/mtime/atime extra
_DIRENT = struct.Struct("<IHBB")
_DIRENT_OLD = struct.Struct("<IHH")
_NS = 1_000_000_000


class Inode(NamedTuple):
    """The inode fields a file tree needs; times in ns since the epoch, sizes in bytes."""

    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    flags: int
    block: bytes  # i_block: the 60 bytes of extent root, block map, fast symlink or inline data
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


def parse_inode(raw: bytes | memoryview, offset: int, inode_size: int) -> Inode:
    """The inode of `inode_size` (>= 128) bytes at `offset` of `raw`."""
    (
        mode,
        uid,
        size_lo,
        atime,
        ctime,
        mtime,
        _dtime,
        gid,
        nlink,
        _blocks_lo,
        flags,
        _osd1,
        block,
        _generation,
        _acl_lo,
        size_hi,
        _faddr,
        _blocks_hi,
        _acl_hi,
        uid_hi,
        gid_hi,
    ) = _BASE.unpack_from(raw, offset)
    atime_x = mtime_x = ctime_x = 0
    if inode_size >= 0x90:
        extra_isize, _csum, ctime_x, mtime_x, atime_x = _EXTRA.unpack_from(raw, offset + 0x80)
        if extra_isize < 16:  # only fields inside i_extra_isize are in use
            atime_x = 0
            if extra_isize < 12:
                mtime_x = 0
                if extra_isize < 8:
                    ctime_x = 0
    return Inode(
        mode,
        uid | uid_hi << 16,
        gid | gid_hi << 16,
        nlink,
        size_lo | size_hi << 32,
        flags,
        block,
        (atime + ((atime_x & 3) << 32)) * _NS + (atime_x >> 2),
        (mtime + ((mtime_x & 3) << 32)) * _NS + (mtime_x >> 2),
        (ctime + ((ctime_x & 3) << 32)) * _NS + (ctime_x >> 2),
    )


class InodeTable:
    """Inodes by number, read through a bounded cache of inode-table chunks.

    `sb.inodes_count` bounds valid numbers. A damaged group descriptor (range or checksum),
    an inode table outside the volume, or (with metadata_csum) an inode whose checksum does
    not match fails only the inodes that need it (GuestFsError), so a file tree shows an
    error rather than plausible wrong metadata. Not thread-safe.
    """

    def __init__(self, view: VolumeView, sb: Superblock) -> None:
        if not 128 <= sb.inode_size <= sb.block_size or sb.inode_size & (sb.inode_size - 1):
            raise GuestFsError(f"ext4: implausible inode size {sb.inode_size}")
        self._view = view
        self._sb = sb
        self._limit = min(sb.inodes_count, sb.inodes_per_group * sb.group_count)
        self._end = min(view.volume.size, sb.blocks_count * sb.block_size)
        self._table_bytes = sb.inodes_per_group * sb.inode_size
        self._chunk = max(CHUNK, sb.block_size)
        self._chunks: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._verified: dict[tuple[int, int], set[int]] = {}  # per cached chunk: good inodes
        self._descs: OrderedDict[int, GroupDesc] = OrderedDict()

    @property
    def inodes_count(self) -> int:
        """Inode numbers are 1 ..= inodes_count."""
        return self._limit

    def get(self, ino: int) -> Inode:
        """Inode number `ino`; raises `GuestFsError` if out of range or unreadable."""
        if not 0 < ino <= self._limit:
            raise GuestFsError(f"ext4: inode {ino} is out of range")
        sb = self._sb
        group, index = divmod(ino - 1, sb.inodes_per_group)
        offset = index * sb.inode_size
        chunk_no, within = divmod(offset, self._chunk)
        key = (group, chunk_no)
        chunk = self._chunks.get(key)
        if chunk is None:
            chunk = self._read_chunk(group, chunk_no)
            self._chunks[key] = chunk
            self._verified[key] = set()
            if len(self._chunks) > CACHE_CHUNKS:
                self._verified.pop(self._chunks.popitem(last=False)[0], None)
        else:
            self._chunks.move_to_end(key)
        if within + sb.inode_size > len(chunk):
            raise GuestFsError(f"ext4: inode {ino} lies outside the filesystem")
        if sb.csum_seed is not None and ino not in self._verified[key]:
            fault = inode_checksum_fault(sb.csum_seed, ino, chunk, within, sb.inode_size)
            if fault:
                raise GuestFsError(f"ext4: {fault}")
            self._verified[key].add(ino)
        return parse_inode(chunk, within, sb.inode_size)

    def record_offset(self, ino: int) -> int:
        """Volume byte offset of inode ``ino``'s record (``inode_size`` bytes long)."""
        if not 0 < ino <= self._limit:
            raise GuestFsError(f"ext4: inode {ino} is out of range")
        group, index = divmod(ino - 1, self._sb.inodes_per_group)
        return self._desc(group).inode_table * self._sb.block_size + index * self._sb.inode_size

    def table_blocks(self) -> list[int]:
        """The first block of every group's inode table, by group."""
        groups = -(-self._limit // self._sb.inodes_per_group)
        return [self._desc(g).inode_table for g in range(groups)]

    def _read_chunk(self, group: int, chunk_no: int) -> bytes:
        start = self._desc(group).inode_table * self._sb.block_size + chunk_no * self._chunk
        length = min(self._chunk, self._table_bytes - chunk_no * self._chunk, self._end - start)
        return self._view.pread(start, length) if length > 0 else b""

    def _desc(self, group: int) -> GroupDesc:
        desc = self._descs.get(group)
        if desc is None:
            sb = self._sb
            dpb = sb.descs_per_block
            where = desc_block(sb, group // dpb) * sb.block_size + (group % dpb) * sb.desc_size
            raw = self._view.pread(where, sb.desc_size)
            desc = parse_desc(sb, raw, 0, group)
            self._descs[group] = desc
            if len(self._descs) > _DESC_CACHE:
                self._descs.popitem(last=False)
        return desc


def parse_dirents(
    block: bytes, inodes_count: int, filetype: bool, where: str
) -> Iterator[tuple[int, bytes]]:
    """(inode, name bytes) of the in-use entries of one directory block, incl. "." and "..".

    Entries naming an inode above `inodes_count` are skipped (as the parser before this one
    did); a malformed entry raises `GuestFsError` naming `where` and the entry's byte offset.
    """
    end = len(block)
    off = 0
    unpack = _DIRENT.unpack_from if filetype else _DIRENT_OLD.unpack_from
    while off < end:
        if off + 8 > end:
            raise GuestFsError(f"{where}: truncated directory entry at byte {off}")
        ino, rec_len, name_len = unpack(block, off)[:3]
        if end >= 65536:  # 64 KiB blocks: rec_len's low 2 bits are bits 16-17 (0 or ~0 = 64K)
            rec_len = end if rec_len in (0, 65535) else (rec_len & 65532) | (rec_len & 3) << 16
        if rec_len < 12 or rec_len & 3 or off + rec_len > end or 8 + name_len > rec_len:
            raise GuestFsError(
                f"{where}: damaged directory entry at byte {off} "
                f"(rec_len {rec_len}, name_len {name_len})"
            )
        if ino and ino <= inodes_count:
            yield ino, block[off + 8 : off + 8 + name_len]
        off += rec_len
