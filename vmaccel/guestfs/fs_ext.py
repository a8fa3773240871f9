"""ext2/ext3/ext4 file trees: inodes and directories parsed by guestfs.ext4inode.

dissect.extfs is used only to check the superblock at open and to read the xattrs of
inline-data inodes.

File data is mapped here rather than by dissect, to get what a restore needs: unwritten
(fallocated) extents and zero block pointers at any indirection level read as zeros, every
block pointer is checked to lie inside the filesystem, and extent trees are depth-bounded.
Inline data (INLINE_DATA_FL) is i_block's 60 bytes followed by the "system.data" xattr.

Not supported (open_ext raises GuestFsError naming it): META_BG group descriptors (dissect,
used at open, assumes descriptors follow the superblock) and bigalloc. Encrypted (fscrypt)
names and data are returned as stored, i.e. ciphertext.
"""

from __future__ import annotations

import io
import logging
import stat as statmod
import struct
from collections.abc import Iterator
from typing import BinaryIO, cast

from dissect.cstruct.exceptions import Error as CStructError
from dissect.extfs import ExtFS
from dissect.extfs.exceptions import Error as ExtError

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.ext4 import parse_superblock
from vmaccel.guestfs.ext4inode import Inode, InodeTable, parse_dirents
from vmaccel.guestfs.filesystem import FileKind, FileStat, FileSystem, posix_stat
from vmaccel.guestfs.runstream import Run, RunStream, check_runs
from vmaccel.guestfs.tree import Child, TreeFileSystem, construct
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

EXTENTS_FL = 0x80000
INLINE_DATA_FL = 0x10000000
INCOMPAT_META_BG = 0x10
RO_COMPAT_BIGALLOC = 0x200
EXTENT_MAGIC = 0xF30A
UNINIT_LEN = 32768  # ee_len above this marks an unwritten extent of ee_len - 32768 blocks
MAX_EXTENT_DEPTH = 5
MAX_SYMLINK = 4096
ROOT_INO = 2
INCOMPAT_FILETYPE = 0x2
DIR_READ = 256 * 1024  # bytes of directory read at once
_KINDS: dict[int, FileKind] = {
    statmod.S_IFREG: "file",
    statmod.S_IFDIR: "dir",
    statmod.S_IFLNK: "symlink",
}


def open_ext(view: VolumeView, fstype: str = "ext4") -> FileSystem:
    """The file tree of the ext2/3/4 filesystem behind `view`; raises `GuestFsError` if the
    superblock is unusable or uses an unsupported feature."""
    raw = view.pread(1024, 1024)
    incompat, ro_compat = struct.unpack_from("<II", raw, 0x60)
    if incompat & INCOMPAT_META_BG:
        raise GuestFsError("ext4 META_BG layouts are not supported for browsing")
    if ro_compat & RO_COMPAT_BIGALLOC:
        raise GuestFsError("ext4 bigalloc is not supported for browsing")
    return TreeFileSystem[int](
        construct(fstype, _ExtBackend.errors, lambda: _ExtBackend(view, fstype))
    )


class _ExtBackend:
    """`vmaccel.guestfs.tree.Backend` whose nodes are inode numbers.

    Inodes and directory blocks are parsed by `vmaccel.guestfs.ext4inode`; dissect.extfs validates
    the superblock at open and reads the "system.data" xattr of inline-data inodes.
    """

    errors: tuple[type[BaseException], ...] = (ExtError, CStructError)

    def __init__(self, view: VolumeView, fstype: str) -> None:
        self.fstype = fstype
        self._view = view
        self._fs = ExtFS(view)  # checks the superblock as before; used for inline data xattrs
        self.label: str | None = self._fs.volume_name or None
        sb = parse_superblock(view.pread(1024, 1024))
        self._sb = sb
        self._bs: int = sb.block_size
        self._blocks: int = sb.blocks_count
        self._inodes = InodeTable(view, sb)
        self._filetype = bool(sb.incompat & INCOMPAT_FILETYPE)

    def root(self) -> int:
        return ROOT_INO

    def children(self, node: int, path: str) -> Iterator[Child[int]]:
        ino = self._inodes.get(node)
        what = f"{self.fstype} directory inode {node} ({path})"
        count, filetype = self._inodes.inodes_count, self._filetype
        for block in self._dir_blocks(node, ino, what):
            for child, raw in parse_dirents(block, count, filetype, what):
                if raw == b"." or raw == b"..":
                    continue
                yield Child(raw.decode("utf-8", "surrogateescape"), raw, child, child)

    def stat(self, node: int, name: str, name_bytes: bytes | None) -> FileStat:
        ino = self._inodes.get(node)
        mode = ino.mode
        kind = _KINDS.get(statmod.S_IFMT(mode), "other")
        size = ino.size
        target = None
        if kind == "symlink":
            target = self._link(node, ino)
            size = len(target.encode("utf-8", "surrogateescape"))
        return posix_stat(name, name_bytes, node, ino, kind, size, target)

    def open(self, node: int, st: FileStat, path: str) -> BinaryIO:
        ino = self._inodes.get(node)
        return self._data(node, ino, st.size, f"{self.fstype} inode {node} ({path})")

    def readlink(self, node: int, st: FileStat) -> str:
        assert st.target is not None  # noqa: S101 - stat sets it for every symlink
        return st.target

    # -- placement (vmaccel.guestfs.placement) ----------------------------------------------

    def layout(self) -> bytes:
        """Block and inode geometry, then every group's inode table block."""
        sb = self._sb
        head = (sb.block_size, sb.blocks_count, sb.inode_size, sb.inodes_per_group,
                self._inodes.inodes_count, self._filetype, sb.csum_seed is not None)  # fmt: skip
        tables = self._inodes.table_blocks()
        return struct.pack(f"<{len(head) + len(tables)}Q", *head, *tables)

    def record(self, inode: int) -> tuple[int, int]:
        return self._inodes.record_offset(inode), self._sb.inode_size

    def entries(self, inode: int) -> list[tuple[int, int]] | None:
        """The extent tree's index blocks and the data runs of directory ``inode``; None for
        inline-data and block-mapped (ext2/3) directories."""
        ino = self._inodes.get(inode)
        if ino.flags & INLINE_DATA_FL or not ino.flags & EXTENTS_FL:
            return None
        what = f"{self.fstype} directory inode {inode}"
        index: list[tuple[int, int]] = []
        runs = list(self._extent_runs(ino.block, MAX_EXTENT_DEPTH, what, index))
        data = check_runs(runs, self._blocks * self._bs, what)
        return index + [(r.source, r.length) for r in data if r.source is not None]

    def _link(self, node: int, ino: Inode) -> str:
        size = ino.size
        if size > MAX_SYMLINK:
            raise GuestFsError(f"{self.fstype} inode {node}: symlink of {size} bytes")
        if size < 60 and not ino.flags & (EXTENTS_FL | INLINE_DATA_FL):
            raw = ino.block[:size]  # a fast symlink lives in i_block
        else:
            raw = self._data(node, ino, size, f"{self.fstype} symlink inode {node}").read()
        return str(raw.decode("utf-8", "surrogateescape"))

    def _inline(self, node: int, ino: Inode) -> bytes:
        """The "system.data" xattr: an inline-data inode's bytes after i_block's 60."""
        xattrs = self._fs.get_inode(node).xattr
        return b"".join(x.value for x in xattrs if x.name == "system.data")

    def _runs(self, ino: Inode, size: int, what: str) -> list[Run]:
        """The checked runs (volume bytes) of a non-inline inode's first `size` bytes."""
        if ino.flags & EXTENTS_FL:
            runs = list(self._extent_runs(ino.block, MAX_EXTENT_DEPTH, what))
        else:
            nblocks = -(-size // self._bs)
            runs = _blockmap_runs(self._view, ino.block, self._bs, nblocks, self._blocks, what)
        return check_runs(runs, self._blocks * self._bs, what)

    def _data(self, node: int, ino: Inode, size: int, what: str) -> BinaryIO:
        if ino.flags & INLINE_DATA_FL:
            return io.BytesIO((ino.block + self._inline(node, ino))[:size])
        return cast(BinaryIO, RunStream(self._view, size, self._runs(ino, size, what), what))

    def _dir_blocks(self, node: int, ino: Inode, what: str) -> Iterator[bytes]:
        """The directory's entry blocks in file order; holes (and unwritten extents), which
        hold no entries, are skipped. Reads at most DIR_READ bytes at a time."""
        if ino.flags & INLINE_DATA_FL:
            # i_block: the parent's inode number, then entries; the xattr holds more entries.
            yield ino.block[4:]
            if ino.size > 60:
                yield self._inline(node, ino)
            return
        bs, size = self._bs, ino.size
        for run in self._runs(ino, size, what):
            if run.source is None:
                continue
            start, stop = run.offset, min(run.offset + run.length, size)
            while start < stop:
                length = min(DIR_READ, stop - start)
                data = self._view.pread(run.source + start - run.offset, length)
                for at in range(0, length, bs):
                    yield data[at : at + bs]
                start += length

    def _extent_runs(
        self, node: bytes, depth_left: int, what: str, index: list[tuple[int, int]] | None = None
    ) -> Iterator[Run]:
        """Runs of the extent tree node `node` (bytes), in bytes; unwritten ones as holes.
        The (offset, length) of every index block read is appended to ``index``, if given."""
        magic, entries, max_entries, depth = struct.unpack_from("<HHHH", node, 0)
        if magic != EXTENT_MAGIC or entries > max_entries or depth > depth_left:
            raise GuestFsError(f"{what}: bad extent node (magic {magic:#06x}, depth {depth})")
        bs = self._bs
        for i in range(entries):
            off = 12 + 12 * i
            if depth == 0:
                lblock, length, hi, lo = struct.unpack_from("<IHHI", node, off)
                unwritten = length > UNINIT_LEN
                length -= UNINIT_LEN if unwritten else 0
                if length:
                    source = None if unwritten else (lo | hi << 32) * bs
                    yield Run(lblock * bs, length * bs, source)
                continue
            _lblock, leaf_lo, leaf_hi = struct.unpack_from("<IIH", node, off)
            leaf = leaf_lo | leaf_hi << 32
            if not 0 < leaf < self._blocks:
                raise GuestFsError(f"{what}: extent index points outside the fs ({leaf})")
            child = self._view.pread(leaf * bs, bs)
            if index is not None:
                index.append((leaf * bs, bs))
            yield from self._extent_runs(child, depth - 1, what, index)


def _blockmap_runs(
    view: VolumeView, i_block: bytes, bs: int, nblocks: int, fs_blocks: int, what: str
) -> list[Run]:
    """Runs of a classic (ext2/3) block map: 12 direct, then single/double/triple indirect
    pointers. A zero pointer at any level is a hole; logical blocks >= `nblocks` are ignored."""
    per = bs // 4
    runs: list[Run] = []

    def add(logical: int, physical: int) -> None:
        if physical == 0:
            return
        if physical >= fs_blocks:
            raise GuestFsError(f"{what}: block pointer {physical} is outside the fs")
        last = runs[-1] if runs else None
        if (
            last
            and last.source is not None
            and last.offset + last.length == logical * bs
            and (last.source + last.length == physical * bs)
        ):
            runs[-1] = Run(last.offset, last.length + bs, last.source)
        else:
            runs.append(Run(logical * bs, bs, physical * bs))

    def walk(pointer: int, level: int, first: int) -> None:
        if pointer == 0 or first >= nblocks:
            return
        if pointer >= fs_blocks:
            raise GuestFsError(f"{what}: indirect block {pointer} is outside the fs")
        span = per ** (level - 1)
        for k, child in enumerate(struct.unpack(f"<{per}I", view.pread(pointer * bs, bs))):
            logical = first + k * span
            if logical >= nblocks:
                break
            if level == 1:
                add(logical, child)
            else:
                walk(child, level - 1, logical)

    pointers = struct.unpack("<15I", i_block)
    for logical in range(min(12, nblocks)):
        add(logical, pointers[logical])
    first = 12
    for level in (1, 2, 3):
        walk(pointers[11 + level], level, first)
        first += per**level
    return runs
