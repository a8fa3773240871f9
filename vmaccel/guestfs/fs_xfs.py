"""XFS file trees, over dissect.xfs (directories, symlinks); inode cores for `stat` are
parsed by guestfs.xfsinode.

File data is mapped here from the inode's extent list or bmap B+tree (via dissect's record
parser), so that unwritten (preallocated) extents read as zeros, which dissect's own runlist
ignores, and every extent is checked to lie inside the filesystem.

Not supported: realtime-device files (their data is on another device; GuestFsError on open),
directory blocks larger than the filesystem block (dissect's directory reader assumes equal).
"""

from __future__ import annotations

import io
import logging
import stat as statmod
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from dissect.cstruct.exceptions import Error as CStructError
from dissect.xfs import XFS
from dissect.xfs.c_xfs import c_xfs
from dissect.xfs.exceptions import Error as XfsError
from dissect.xfs.xfs import parse_fsblock

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import FileKind, FileStat, FileSystem, posix_stat
from vmaccel.guestfs.runstream import Run, RunStream, check_runs
from vmaccel.guestfs.tree import Child, TreeFileSystem, construct
from vmaccel.guestfs.volume import VolumeView
from vmaccel.guestfs.xfsinode import InodeCores

logger = logging.getLogger(__name__)

FMT_LOCAL, FMT_EXTENTS, FMT_BTREE = 1, 2, 3
DIFLAG_REALTIME = 0x1
_KINDS: dict[int, FileKind] = {
    statmod.S_IFREG: "file",
    statmod.S_IFDIR: "dir",
    statmod.S_IFLNK: "symlink",
}


def open_xfs(view: VolumeView, fstype: str = "xfs") -> FileSystem:
    """The file tree of the XFS filesystem behind `view`; raises `GuestFsError` if unusable."""
    return TreeFileSystem[Any](
        construct(fstype, _XfsBackend.errors, lambda: _XfsBackend(view, fstype))
    )


class _XfsBackend:
    """`vmaccel.guestfs.tree.Backend` over dissect.xfs inodes."""

    errors: tuple[type[BaseException], ...] = (XfsError, CStructError)

    def __init__(self, view: VolumeView, fstype: str) -> None:
        self.fstype = fstype
        self._view = view
        self._fs = XFS(view)
        sb = self._fs.sb
        self.label: str | None = self._fs.name or None
        self._bs: int = self._fs.block_size
        self._agblocks: int = sb.sb_agblocks
        self._agblklog: int = sb.sb_agblklog
        self._fs_bytes: int = sb.sb_dblocks * self._bs
        self._cores = InodeCores(
            view, sb.sb_agcount, sb.sb_agblocks, sb.sb_agblklog, sb.sb_inopblog, self._bs,
            sb.sb_inodesize,
        )  # fmt: skip

    def root(self) -> Any:
        return self._fs.root

    def children(self, node: Any, path: str) -> Iterator[Child[Any]]:
        for child in node.iterdir():
            name = child.filename
            if name in (".", ".."):
                continue
            yield Child(name, name.encode("utf-8", "surrogateescape"), child, child.inum)

    def stat(self, node: Any, name: str, name_bytes: bytes | None) -> FileStat:
        inum = int(node.inum)
        ino = self._cores.get(inum)
        kind = _KINDS.get(statmod.S_IFMT(ino.mode), "other")
        size = ino.size
        target = None
        if kind == "symlink":
            target = str(node.link)
            size = len(target.encode("utf-8", "surrogateescape"))
        return posix_stat(name, name_bytes, inum, ino, kind, size, target)

    def open(self, node: Any, st: FileStat, path: str) -> BinaryIO:
        what = f"xfs inode {node.inum} ({path})"
        ino = node.inode
        if ino.di_flags & DIFLAG_REALTIME:
            raise GuestFsError(f"{what}: data on the realtime device is not supported")
        if ino.di_format == FMT_LOCAL:
            return io.BytesIO(node.datafork().read(st.size))
        if ino.di_format not in (FMT_EXTENTS, FMT_BTREE):
            raise GuestFsError(f"{what}: unexpected data fork format {ino.di_format}")
        runs = check_runs(list(self._runs(node, what)), self._fs_bytes, what)
        return cast(BinaryIO, RunStream(self._view, st.size, runs, what))

    def readlink(self, node: Any, st: FileStat) -> str:
        assert st.target is not None  # noqa: S101 - stat sets it for every symlink
        return st.target

    def _runs(self, node: Any, what: str) -> Iterator[Run]:
        bs = self._bs
        for offset, fsblock, count, unwritten in self._records(node):
            agno, agbno = fsblock >> self._agblklog, fsblock & ((1 << self._agblklog) - 1)
            if agbno >= self._agblocks:
                raise GuestFsError(f"{what}: extent block {fsblock} is outside its AG")
            if count:
                source = None if unwritten else (agno * self._agblocks + agbno) * bs
                yield Run(offset * bs, count * bs, source)

    def _records(self, node: Any) -> Iterator[tuple[int, int, int, int]]:
        """(file block, fs block, block count, unwritten flag) of every data extent."""
        if node.inode.di_format == FMT_EXTENTS:
            raw = node.datafork().read(node.data_extents * 16)
            for i in range(node.data_extents):
                yield parse_fsblock(raw[i * 16 : i * 16 + 16])
            return
        fork = node.datafork()
        root = c_xfs.xfs_bmdr_block(fork)
        # The root's keys fill the first half of the fork, its pointers the second.
        maxrecs = (fork.size - 4) // 16
        fork.seek(4 + maxrecs * 8)
        for ptr in c_xfs.uint64[root.bb_numrecs](fork):
            yield from node.ag.walk_extents(ptr)
