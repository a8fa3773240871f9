"""guestfs: look inside a disk image without mounting it, from any seekable binary stream.

Vocabulary: a *disk* holds a *partition table* (MBR, GPT or none) whose *partitions*, and the
*logical volumes* of LVM physical volumes on them, are *volumes*; a volume's bytes live on the
disk as *segments*. The *allocation map* is the normalized set of disk *extents* the guest
uses (the backup engine's read planner intersects it with changed extents). A volume's *file
tree* is a `FileSystem` (stat/listdir/open/readlink by POSIX path, symlinks never followed);
`browse_disk` opens every volume's. guestfs imports nothing else of ours.
"""

# Exports are resolved lazily (PEP 562): importing one light module such as guestfs.extent
# must not load every filesystem parser and dissect with it.
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, eagerly, for type checkers
    from vmaccel.guestfs.allocation import (
        AllocationMap,
        VolumeReport,
        build_allocation_map,
        read_layout,
    )
    from vmaccel.guestfs.browse import BrowsedVolume, browse_disk, open_filesystem, volume_name
    from vmaccel.guestfs.errors import GuestFsError
    from vmaccel.guestfs.extent import Extent
    from vmaccel.guestfs.filesystem import (
        FileKind,
        FileStat,
        FileSystem,
        IsADirectoryPathError,
        NotADirectoryPathError,
        NotASymlinkError,
        PathNotFoundError,
    )
    from vmaccel.guestfs.partition import Partition, PartitionTable
    from vmaccel.guestfs.usage import FsState
    from vmaccel.guestfs.volume import Segment, Volume, VolumeKind, VolumeView

_EXPORTS = {
    "AllocationMap": "vmaccel.guestfs.allocation",
    "BrowsedVolume": "vmaccel.guestfs.browse",
    "Extent": "vmaccel.guestfs.extent",
    "FileKind": "vmaccel.guestfs.filesystem",
    "FileStat": "vmaccel.guestfs.filesystem",
    "FileSystem": "vmaccel.guestfs.filesystem",
    "FsState": "vmaccel.guestfs.usage",
    "GuestFsError": "vmaccel.guestfs.errors",
    "IsADirectoryPathError": "vmaccel.guestfs.filesystem",
    "NotADirectoryPathError": "vmaccel.guestfs.filesystem",
    "NotASymlinkError": "vmaccel.guestfs.filesystem",
    "Partition": "vmaccel.guestfs.partition",
    "PartitionTable": "vmaccel.guestfs.partition",
    "PathNotFoundError": "vmaccel.guestfs.filesystem",
    "Segment": "vmaccel.guestfs.volume",
    "Volume": "vmaccel.guestfs.volume",
    "VolumeKind": "vmaccel.guestfs.volume",
    "VolumeReport": "vmaccel.guestfs.allocation",
    "VolumeView": "vmaccel.guestfs.volume",
    "browse_disk": "vmaccel.guestfs.browse",
    "build_allocation_map": "vmaccel.guestfs.allocation",
    "open_filesystem": "vmaccel.guestfs.browse",
    "read_layout": "vmaccel.guestfs.allocation",
    "volume_name": "vmaccel.guestfs.browse",
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
    "open_filesystem",
    "read_layout",
    "volume_name",
]
