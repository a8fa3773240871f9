"""FAT12/16/32 file trees, over dissect.fat (BPB, FAT entries, directory entry parsing).

Cluster chains are followed here, bounded by the file size (or the FAT32 maximum directory
size), so a looping or truncated chain is a GuestFsError instead of a hang or a short file.

FAT has no inodes, permissions, owners, links or change times: `inode` is the volume byte
offset of the entry's 8.3 directory slot (stable; 1 for the root), `mode`/`uid`/`gid`/
`ctime_ns` are None, `nlink` is 1, a directory's size is 0. Long (VFAT) names are used when
present, else the 8.3 name (code page 437, lower-cased where its NT case flags say so).
mtime has 2-second resolution, atime is a date; both are the guest's local time, reported
as if UTC. The volume label is the root's
volume-ID entry, else the boot sector's.
"""

from __future__ import annotations

import calendar
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from dissect.cstruct.exceptions import Error as CStructError
from dissect.fat import FATFS
from dissect.fat.c_fat import Fattype
from dissect.fat.exceptions import EmptyDirectoryError, LastEmptyDirectoryError
from dissect.fat.exceptions import Error as FatError
from dissect.fat.fat import DirectoryEntry

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import FileStat, FileSystem
from vmaccel.guestfs.runstream import Run, RunStream, check_runs
from vmaccel.guestfs.tree import MALFORMED, Child, TreeFileSystem, construct
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

DIRENT = 32
MAX_DIR_BYTES = 65536 * DIRENT  # the FAT specification's limit on a directory's entries
_EOC = {Fattype.FAT12: 0xFF8, Fattype.FAT16: 0xFFF8, Fattype.FAT32: 0x0FFFFFF8}


@dataclass(frozen=True)
class _Node:
    """A directory entry (None for the root) and its synthetic inode number."""

    entry: Any
    inode: int


def open_fat(view: VolumeView, fstype: str = "vfat") -> FileSystem:
    """The file tree of the FAT filesystem behind `view`; raises `GuestFsError` if unusable."""
    return TreeFileSystem[Any](
        construct(fstype, _FatBackend.errors, lambda: _FatBackend(view, fstype))
    )


class _FatBackend:
    """`vmaccel.guestfs.tree.Backend` over dissect.fat directory entries."""

    errors: tuple[type[BaseException], ...] = (FatError, CStructError, UnicodeDecodeError)

    def __init__(self, view: VolumeView, fstype: str) -> None:
        self.fstype = fstype
        self._view = view
        self._fs = FATFS(view)
        fs = self._fs
        self._cs: int = fs.cluster_size
        self._data_start: int = fs.first_data_sector * fs.sector_size
        self._clusters: int = (fs.total_sectors - fs.first_data_sector) // fs.bpb.BPB_SecPerClus
        self._eoc = _EOC[fs.type]
        self.label: str | None = self._label()

    def root(self) -> Any:
        return _Node(None, 1)

    def children(self, node: Any, path: str) -> Iterator[Child[Any]]:
        for offset, entry in self._entries(node):
            if entry.is_volume_id() or entry.name in (".", ".."):
                continue
            yield Child(_name(entry), None, _Node(entry, offset), offset)

    def stat(self, node: Any, name: str, name_bytes: bytes | None) -> FileStat:
        entry = node.entry
        if entry is None:
            return FileStat(name, "dir", 0, node.inode)
        d = entry.dirent
        is_dir = entry.is_directory()
        return FileStat(
            name=name,
            kind="dir" if is_dir else "file",
            size=0 if is_dir else int(d.DIR_FileSize),
            inode=node.inode,
            mtime_ns=_dos_ns(d.DIR_WrtDate, d.DIR_WrtTime),
            atime_ns=_dos_ns(d.DIR_LstAccDate, 0),
        )

    def open(self, node: Any, st: FileStat, path: str) -> BinaryIO:
        what = f"vfat {path}"
        if st.size == 0:
            return io.BytesIO(b"")
        runs = self._chain_runs(_first_cluster(node.entry), -(-st.size // self._cs), what, True)
        return cast(BinaryIO, RunStream(self._view, st.size, runs, what))

    def readlink(self, node: Any, st: FileStat) -> str:
        raise GuestFsError("vfat has no symlinks")

    def _entries(self, node: Any) -> Iterator[tuple[int, Any]]:
        """(volume offset of the 8.3 slot, entry) for every used slot of directory `node`."""
        runs = self._dir_runs(node.entry)
        size = sum(r.length for r in runs)
        stream = RunStream(self._view, size, runs, "vfat directory")
        while True:
            try:
                entry = DirectoryEntry(self._fs, stream, None)
            except EmptyDirectoryError:
                continue
            except (LastEmptyDirectoryError, EOFError):
                return
            yield _to_volume(runs, stream.tell() - DIRENT), entry

    def _dir_runs(self, entry: Any) -> list[Run]:
        fs = self._fs
        if entry is not None:
            first = _first_cluster(entry)
        elif fs.type == Fattype.FAT32:
            first = fs.bpb_ext.BPB_RootClus
        else:
            start = (fs.bpb.BPB_RsvdSecCnt + fs.fat_size * fs.bpb.BPB_NumFATs) * fs.sector_size
            return [Run(0, fs.bpb.BPB_RootEntCnt * DIRENT, start)]
        return self._chain_runs(first, MAX_DIR_BYTES // self._cs + 1, "vfat directory", False)

    def _chain_runs(self, cluster: int, limit: int, what: str, exact: bool) -> list[Run]:
        """Runs of the chain starting at `cluster`: exactly `limit` clusters if `exact` (a
        file), else up to its end-of-chain mark, failing past `limit` (a loop)."""
        cs, count = self._cs, 0
        runs: list[Run] = []
        while True:
            if not 2 <= cluster < self._clusters + 2:
                raise GuestFsError(f"{what}: cluster chain reaches invalid cluster {cluster}")
            source = self._data_start + (cluster - 2) * cs
            last = runs[-1] if runs else None
            if last and last.source is not None and last.source + last.length == source:
                runs[-1] = Run(runs[-1].offset, runs[-1].length + cs, runs[-1].source)
            else:
                runs.append(Run(count * cs, cs, source))
            count += 1
            if exact and count == limit:
                break
            cluster = self._fs.fat.get(cluster)
            if cluster >= self._eoc:
                if exact:
                    raise GuestFsError(f"{what}: cluster chain ends after {count} of {limit}")
                break
            if count >= limit:
                raise GuestFsError(f"{what}: cluster chain longer than {limit} (a loop?)")
        return check_runs(runs, self._view.volume.size, what)

    def _label(self) -> str | None:
        try:
            for _offset, entry in self._entries(_Node(None, 1)):
                if entry.is_volume_id():
                    return str(entry.short_name).strip() or None
        except (GuestFsError, FatError, CStructError, UnicodeDecodeError, *MALFORMED):
            logger.warning("vfat: root directory unreadable while looking for the label")
        label = str(self._fs.volume_label).strip()
        return None if label in ("", "NO NAME") else label


def _name(entry: Any) -> str:
    """The long name, else the 8.3 name with the NT case flags Windows and Linux set for an
    all-lowercase base or extension (DIR_NTRes bits 3 and 4) instead of writing a long name."""
    if entry.ldirents:
        return str(entry.name)
    flags = entry.dirent.DIR_NTRes
    base, _, ext = str(entry.short_name).partition(".")
    base = base.lower() if flags & 0x08 else base
    ext = ext.lower() if flags & 0x10 else ext
    return f"{base}.{ext}" if ext else base


def _first_cluster(entry: Any) -> int:
    return int(entry.dirent.DIR_FstClusHI << 16 | entry.dirent.DIR_FstClusLO)


def _to_volume(runs: list[Run], offset: int) -> int:
    for run in runs:
        if run.offset <= offset < run.offset + run.length and run.source is not None:
            return run.source + offset - run.offset
    return 0


def _dos_ns(date: int, time: int) -> int | None:
    """A DOS date and time (local time, 2 s steps) as ns since the epoch, read as UTC."""
    day, month, year = date & 0x1F, (date >> 5) & 0xF, 1980 + (date >> 9)
    second, minute, hour = (time & 0x1F) * 2, (time >> 5) & 0x3F, time >> 11
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        return None
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) * 1_000_000_000
