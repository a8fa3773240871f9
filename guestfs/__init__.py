"""guestfs: look inside a disk image without mounting it, from any seekable binary stream.

Vocabulary: a *disk* holds a *partition table* (MBR, GPT or none) whose *partitions*, and the
*logical volumes* of LVM physical volumes on them, are *volumes*; a volume's bytes live on the
disk as *segments*. The *allocation map* is the normalized set of disk *extents* the guest
uses; `plan_reads` intersects it with changed extents. A volume's *file tree* is a
`FileSystem` (stat/listdir/open/readlink by POSIX path, symlinks never followed);
`browse_disk` opens every volume's. guestfs imports nothing else of ours.
"""

# Exports are resolved lazily (PEP 562): importing one light module such as guestfs.extent
# must not load every filesystem parser and dissect with it.
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from guestfs.allocation import AllocationMap, VolumeReport, build_allocation_map, read_layout
    from guestfs.browse import BrowsedVolume, browse_disk, open_filesystem, volume_name
    from guestfs.errors import GuestFsError
    from guestfs.extent import Extent
    from guestfs.filesystem import (
        FileKind,
        FileStat,
        FileSystem,
        IsADirectoryPathError,
        NotADirectoryPathError,
        NotASymlinkError,
        PathNotFoundError,
    )
    from guestfs.partition import Partition, PartitionTable
    from guestfs.readplan import free_blocks, plan_reads
    from guestfs.usage import FsState
    from guestfs.volume import Segment, Volume, VolumeKind, VolumeView

_EXPORTS = {
    "AllocationMap": "guestfs.allocation",
    "BrowsedVolume": "guestfs.browse",
    "Extent": "guestfs.extent",
    "FileKind": "guestfs.filesystem",
    "FileStat": "guestfs.filesystem",
    "FileSystem": "guestfs.filesystem",
    "FsState": "guestfs.usage",
    "GuestFsError": "guestfs.errors",
    "IsADirectoryPathError": "guestfs.filesystem",
    "NotADirectoryPathError": "guestfs.filesystem",
    "NotASymlinkError": "guestfs.filesystem",
    "Partition": "guestfs.partition",
    "PartitionTable": "guestfs.partition",
    "PathNotFoundError": "guestfs.filesystem",
    "Segment": "guestfs.volume",
    "Volume": "guestfs.volume",
    "VolumeKind": "guestfs.volume",
    "VolumeReport": "guestfs.allocation",
    "VolumeView": "guestfs.volume",
    "browse_disk": "guestfs.browse",
    "build_allocation_map": "guestfs.allocation",
    "free_blocks": "guestfs.readplan",
    "open_filesystem": "guestfs.browse",
    "plan_reads": "guestfs.readplan",
    "read_layout": "guestfs.allocation",
    "volume_name": "guestfs.browse",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'guestfs' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "AllocationMap",
    "BrowsedVolume",
    "Extent",
    "FileKind",
    "FileStat",
    "FileSystem",
    "FsState",
    "GuestFsError",
    "IsADirectoryPathError",
    "NotADirectoryPathError",
    "NotASymlinkError",
    "Partition",
    "PartitionTable",
    "PathNotFoundError",
    "Segment",
    "Volume",
    "VolumeKind",
    "VolumeReport",
    "VolumeView",
    "browse_disk",
    "build_allocation_map",
    "free_blocks",
    "open_filesystem",
    "plan_reads",
    "read_layout",
    "volume_name",
]
