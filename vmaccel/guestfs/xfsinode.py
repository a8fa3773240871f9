"""XFS inode cores parsed straight from the inode chunks: the metadata fast path of fs_xfs.

On-disk facts used (big-endian): absolute inode number n is relative inode
n & ((1 << (sb_agblklog + sb_inopblog)) - 1) of allocation group n >> (agblklog + inopblog),
and relative inode r is sb_inodesize bytes at byte r * sb_inodesize of its AG (AG a starts at
volume byte a * sb_agblocks * blocksize). The core starts with magic "IN" (0x494E), then
mode, version, format, onlink, uid, gid, nlink (v2+; onlink for v1), projid, pad, then the
atime, mtime and ctime words and the size. Version 3 inodes carry di_flags2 at 0x78; with
XFS_DIFLAG2_BIGTIME a time word is nanoseconds since 1901-12-13T20:45:52Z (-2**31 s), else it
is signed 32-bit seconds over 32-bit nanoseconds.

`InodeCores` reads 64 KiB aligned chunks of the volume and keeps a bounded LRU of them
(memory at most `CACHE_CHUNKS * CHUNK` bytes). Not thread-safe.
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from typing import NamedTuple

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
CACHE_CHUNKS = 64
DINODE_MAGIC = 0x494E
DIFLAG2_BIGTIME = 1 << 3
_CORE = struct.Struct(">HHBBHIII4x8xqqqQ")  # magic .. size (0x00-0x40)
_FLAGS2 = struct.Struct(">Q")
_NS = 1_000_000_000
_BIGTIME_EPOCH = 1 << 31


class InodeCore(NamedTuple):
    """The inode core fields a file tree needs; times in ns since the epoch, size in bytes."""

    mode: int
    version: int
    format: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


def parse_core(raw: bytes, offset: int, ino: int) -> InodeCore:
    """The core of inode `ino` at `offset` of `raw`; raises `GuestFsError` for a bad magic."""
    (magic, mode, version, fmt, onlink, uid, gid, nlink, atime, mtime, ctime, size) = (
        _CORE.unpack_from(raw, offset)
    )
    if magic != DINODE_MAGIC:
        raise GuestFsError(f"xfs: inode {ino} has a bad magic {magic:#06x}")
    if version >= 3 and _FLAGS2.unpack_from(raw, offset + 0x78)[0] & DIFLAG2_BIGTIME:
        times = [(t & 0xFFFFFFFFFFFFFFFF) - _BIGTIME_EPOCH * _NS for t in (atime, mtime, ctime)]
    else:
        times = [(t >> 32) * _NS + (t & 0xFFFFFFFF) for t in (atime, mtime, ctime)]
    return InodeCore(mode, version, fmt, uid, gid, nlink if version >= 2 else onlink, size, *times)


class InodeCores:
    """Inode cores by absolute inode number, through a bounded chunk cache."""

    def __init__(
        self, view: VolumeView, agcount: int, agblocks: int, agblklog: int, inopblog: int,
        block_size: int, inode_size: int,
    ) -> None:  # fmt: skip
        if not 256 <= inode_size <= block_size or inode_size & (inode_size - 1):
            raise GuestFsError(f"xfs: implausible inode size {inode_size}")
        self._view = view
        self._agcount = agcount
        self._bits = agblklog + inopblog
        self._max = agblocks << inopblog  # relative inodes per AG
        self._ag_bytes = agblocks * block_size
        self._isz = inode_size
        self._chunks: OrderedDict[int, bytes] = OrderedDict()

    def get(self, ino: int) -> InodeCore:
        """The core of inode `ino`; raises `GuestFsError` if out of range or unreadable."""
        agno, rel = ino >> self._bits, ino & ((1 << self._bits) - 1)
        if agno >= self._agcount or rel >= self._max:
            raise GuestFsError(f"xfs: inode {ino} is out of range")
        where = agno * self._ag_bytes + rel * self._isz
        chunk_no, within = divmod(where, CHUNK)
        chunk = self._chunks.get(chunk_no)
        if chunk is None:
            start = chunk_no * CHUNK
            length = min(CHUNK, self._view.volume.size - start)
            chunk = self._view.pread(start, length) if length > 0 else b""
            self._chunks[chunk_no] = chunk
            if len(self._chunks) > CACHE_CHUNKS:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(chunk_no)
        if within + self._isz > len(chunk):
            raise GuestFsError(f"xfs: inode {ino} lies outside the volume")
        return parse_core(chunk, within, ino)
