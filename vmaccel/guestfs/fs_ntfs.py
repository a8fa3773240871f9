"""NTFS file trees, over dissect.ntfs (MFT records, $I30 indexes, attributes).

What a name shows:
- Directory entries come from the parent's $I30 index; DOS-only (8.3) names are skipped, so
  every name appears once. Metadata files ($MFT .. $Extend, records < 16) are hidden in "/".
- A hard-linked file appears under each of its names with the same `inode` (MFT segment
  number) and `nlink` = its number of non-DOS names.
- Symlinks: reparse points with tag SYMLINK or MOUNT_POINT (junction; print name, "\\" turned
  into "/"), WSL's LX_SYMLINK (UTF-8 target), and ntfs-3g's Interix symlinks (a SYSTEM file
  whose data is "IntxLNK\\x01" + UTF-16LE target). Interix devices ("IntxCHR", "IntxBLK")
  are "other".
- No POSIX mode/uid/gid (ntfs-3g's default mapping is not stored). Times come from
  $STANDARD_INFORMATION (mtime = last modification, ctime = MFT change, atime = access).
- Contents: the unnamed $DATA stream; sparse runs read as zeros and bytes past the valid data
  length (initialized size) read as zeros, as Windows does. Compressed streams are decoded by
  dissect. Encrypted (EFS) data and named streams are not supported.
- An index entry whose MFT record is not in use or has another sequence number (a stale or
  damaged reference) makes that entry damaged (GuestFsError), not the listing.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, cast

from dissect.cstruct.exceptions import Error as CStructError
from dissect.ntfs import NTFS
from dissect.ntfs import index as ntfs_index
from dissect.ntfs.c_ntfs import ATTRIBUTE_TYPE_CODE, FILE_NAME_DOS
from dissect.ntfs.exceptions import Error as NtfsError
from dissect.ntfs.util import segment_reference
from dissect.util.exceptions import Error as UtilError

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.filesystem import FileKind, FileStat, FileSystem
from vmaccel.guestfs.runstream import GuardedStream, Run, RunStream, check_runs
from vmaccel.guestfs.tree import Child, TreeFileSystem, construct
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

FIRST_USER_RECORD = 16  # records 0-15 are NTFS metadata files or reserved
ROOT_RECORD = 5
IN_USE = 0x1
FILE_ATTRIBUTE_SYSTEM = 0x4
ATTR_FLAG_COMPRESSED = 0x00FF
ATTR_FLAG_ENCRYPTED = 0x4000
TAG_SYMLINK = 0xA000000C
TAG_MOUNT_POINT = 0xA0000003
TAG_LX_SYMLINK = 0xA000001D
INTERIX_LINK = b"IntxLNK\x01"
INTERIX_DEVICES = (b"IntxCHR\x00", b"IntxBLK\x00")
MAX_INTERIX = 8 + 2 * 4096
MIN_RECORD, MAX_RECORD = 256, 64 << 10  # bytes; Windows writes 1 KiB/4 KiB records
MAX_INDEX_DEPTH = 64  # B+ tree levels of a directory index; real ones have a handful


def _iter_index_entries(index: Any, fh: BinaryIO, offset: int, size: int) -> Iterator[Any]:
    """dissect.ntfs's index entry walk, refusing entries that do not advance it.

    dissect steps by each entry's Length and never checks it: a Length of 0 (or any Length
    shorter than the entry header) on a hostile disk loops forever, even inside `NTFS()`, which
    looks up $Secure through the root index. Installed below as dissect's own walk, since its
    index classes call the module function.
    """
    header = len(ntfs_index.c_ntfs._INDEX_ENTRY)
    end = offset + size
    while offset < end:
        try:
            entry = ntfs_index.IndexEntry(index, fh, offset)
        except EOFError:
            return
        if entry.length < header and not entry.is_end:
            raise GuestFsError(f"ntfs: index entry at byte {offset} has length {entry.length}")
        yield entry
        if entry.is_end or entry.length < header:
            return
        offset += entry.length


def _search_index(
    self: Any, value: Any, exact: bool = True, cmp: Callable[[Any, Any], Any] | None = None
) -> Any:
    """dissect.ntfs's `Index.search`, bounded: a node pointing back at itself or an ancestor
    (a cycle in a hostile B+ tree) made dissect's descent loop forever."""
    cmp = cmp or _COLLATIONS.get(self.root.collation_rule)
    if cmp is None:
        raise GuestFsError(f"ntfs: no collation for index rule {self.root.collation_rule}")
    key = value.upper() if cmp is ntfs_index._cmp_filename else value
    entries = list(self.root.entries())
    for _level in range(MAX_INDEX_DEPTH):
        entry = ntfs_index._bsearch(entries, key, cmp)
        if not entry.is_node or (not entry.is_end and cmp(entry, key) == ntfs_index.Match.Equal):
            break
        entries = list(self.index_buffer(entry.node_vcn).entries())
    else:
        raise GuestFsError(f"ntfs: index deeper than {MAX_INDEX_DEPTH} levels (a cycle?)")
    if exact and (entry.is_end or cmp(entry, key) != ntfs_index.Match.Equal):
        raise KeyError(f"Value not found: {value}")  # dissect's contract: callers expect it
    return entry


_COLLATIONS = {
    ntfs_index.COLLATION.FILE_NAME: ntfs_index._cmp_filename,
    ntfs_index.COLLATION.NTOFS_ULONG: ntfs_index._cmp_ulong,
}
ntfs_index._iter_entries = _iter_index_entries
ntfs_index.Index.search = _search_index


def _check_boot_sector(boot: bytes) -> None:
    """Refuse record sizes dissect would allocate blindly: it reads one MFT record of the size
    the boot sector gives (a damaged field asked for 16 GiB), before any check of its own."""
    sector, per_cluster = struct.unpack_from("<HB", boot, 0x0B)
    cluster = sector * (per_cluster if per_cluster <= 0x80 else 1 << (256 - per_cluster))
    for what, at in (("MFT record", 0x40), ("index record", 0x44)):
        (raw,) = struct.unpack_from("<b", boot, at)
        size = raw * cluster if raw > 0 else 1 << min(-raw, 63)
        if not MIN_RECORD <= size <= MAX_RECORD:
            raise GuestFsError(f"ntfs: boot sector gives an implausible {what} size ({size})")


def open_ntfs(view: VolumeView, fstype: str = "ntfs") -> FileSystem:
    """The file tree of the NTFS filesystem behind `view`; raises `GuestFsError` if unusable."""
    return TreeFileSystem[Any](
        construct(fstype, _NtfsBackend.errors, lambda: _NtfsBackend(view, fstype))
    )


class _NtfsBackend:
    """`vmaccel.guestfs.tree.Backend` over dissect.ntfs MFT records; nodes are (segment,
    sequence)."""

    errors: tuple[type[BaseException], ...] = (
        NtfsError,
        CStructError,
        UtilError,
        UnicodeDecodeError,
    )

    def __init__(self, view: VolumeView, fstype: str) -> None:
        self.fstype = fstype
        self._view = view
        _check_boot_sector(view.pread(0, 512))
        self._fs = NTFS(view)
        self._mft = self._fs.mft
        self.label: str | None = self._fs.volume_name or None
        self._cluster: int = self._fs.cluster_size

    def root(self) -> Any:
        return (ROOT_RECORD, None)

    def children(self, node: Any, path: str) -> Iterator[Child[Any]]:
        record = self._record(node)
        seen: set[str] = set()
        for entry in record.index("$I30").entries():
            name_attr = entry.attribute
            if name_attr is None or name_attr.flags == FILE_NAME_DOS:
                continue
            ref = entry.header.FileReference
            segment = segment_reference(ref)
            if node[0] == ROOT_RECORD and segment < FIRST_USER_RECORD:
                continue
            name = str(name_attr.file_name)
            if name not in seen:
                seen.add(name)
                yield Child(name, None, (segment, ref.SequenceNumber), segment)

    def stat(self, node: Any, name: str, name_bytes: bytes | None) -> FileStat:
        record = self._record(node)
        si = record.attributes[ATTRIBUTE_TYPE_CODE.STANDARD_INFORMATION]
        info = si[0].attribute if si else None
        kind, target = self._kind(record, info)
        size = 0
        if kind == "file" and record.has_stream():
            size = int(record.size())
            if size < 0:  # dissect reads the 64-bit data size as signed
                raise GuestFsError(f"ntfs record {node[0]}: negative data size {size}")
        elif target is not None:
            size = len(target.encode("utf-8", "surrogateescape"))
        names = [a for a in record.attributes[ATTRIBUTE_TYPE_CODE.FILE_NAME] if a.flags != 2]
        return FileStat(
            name=name,
            kind=kind,
            size=size,
            inode=node[0],
            nlink=max(1, len(names)),
            mtime_ns=info.last_modification_time_ns if info else None,
            atime_ns=info.last_access_time_ns if info else None,
            ctime_ns=info.last_change_time_ns if info else None,
            target=target,
        )

    def open(self, node: Any, st: FileStat, path: str) -> BinaryIO:
        record = self._record(node)
        what = f"ntfs record {node[0]} ({path})"
        attrs = record.attributes.find("", ATTRIBUTE_TYPE_CODE.DATA)
        if not attrs:
            return io.BytesIO(b"")
        first = min(attrs, key=lambda a: a.header.lowest_vcn or 0).header
        if first.resident:
            return io.BytesIO(record.open().read(st.size))
        if first.flags & ATTR_FLAG_ENCRYPTED:
            raise GuestFsError(f"{what}: EFS-encrypted data is not supported")
        if first.flags & ATTR_FLAG_COMPRESSED:
            return cast(
                BinaryIO, GuardedStream(record.open(), st.size, what, (*self.errors, OSError))
            )
        runs, vcn = [], 0
        for lcn, count in record.dataruns():
            source = None if lcn is None else lcn * self._cluster
            runs.append(Run(vcn * self._cluster, count * self._cluster, source))
            vcn += count
        checked = check_runs(runs, self._view.volume.size, what)
        valid = first.header.Form.Nonresident.ValidDataLength
        return cast(BinaryIO, RunStream(self._view, st.size, checked, what, valid))

    def readlink(self, node: Any, st: FileStat) -> str:
        assert st.target is not None  # noqa: S101 - stat sets it for every symlink
        return st.target

    def _record(self, node: Any) -> Any:
        segment, sequence = node
        record = self._mft.get(segment)
        header = record.header
        if not header.Flags & IN_USE:
            raise GuestFsError(f"ntfs: MFT record {segment} is not in use (stale entry)")
        if sequence is not None and header.SequenceNumber != sequence:
            raise GuestFsError(
                f"ntfs: MFT record {segment} has sequence {header.SequenceNumber}, "
                f"the directory entry expects {sequence} (stale entry)"
            )
        return record

    def _kind(self, record: Any, info: Any) -> tuple[FileKind, str | None]:
        reparse = record.attributes[ATTRIBUTE_TYPE_CODE.REPARSE_POINT]
        if reparse:
            point = reparse[0].attribute
            if point.tag in (TAG_SYMLINK, TAG_MOUNT_POINT):
                return "symlink", str(point.print_name or point.substitute_name).replace("\\", "/")
            if point.tag == TAG_LX_SYMLINK:
                return "symlink", bytes(point.buffer[4:]).decode("utf-8", "surrogateescape")
        if record.is_dir():
            return "dir", None
        if info and info.file_attributes & FILE_ATTRIBUTE_SYSTEM and record.has_stream():
            size = record.size()
            if 8 <= size <= MAX_INTERIX:
                head = record.open().read(size)
                if head[:8] == INTERIX_LINK:
                    return "symlink", head[8:].decode("utf-16-le", "surrogatepass")
                if head[:8] in INTERIX_DEVICES:
                    return "other", None
        return "file", None
