"""The allocation map ("V-Ray"): which byte ranges of a disk its guest filesystems use.

Walks the disk's layout (partition table, LVM physical volumes, logical volumes), asks the
parser of each recognised filesystem for its used space, and maps it to disk offsets.
Whatever is not provably free is used: bytes outside every partition (partition tables,
boot loaders in the MBR gap, EBRs, the GPT backup), unknown or unreadable volumes, and dirty
filesystems (DESIGN invariant 5). A damaged partition table or LVM label is an error rather
than a guess, because a wrong layout could free a live filesystem.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.ext4 import ext4_usage
from vmaccel.guestfs.extent import Extent, clip, complement, merge, total
from vmaccel.guestfs.fat import fat_usage
from vmaccel.guestfs.lvm import PhysicalVolume, read_physical_volume
from vmaccel.guestfs.ntfs import ntfs_usage
from vmaccel.guestfs.partition import MBR_EXTENDED_TYPES, PartitionTable, read_partition_table
from vmaccel.guestfs.probe import EXT_FAMILY, probe
from vmaccel.guestfs.usage import FsState, FsUsage, whole
from vmaccel.guestfs.volume import Segment, Volume, VolumeKind, VolumeView, whole_disk
from vmaccel.guestfs.xfs import xfs_usage

logger = logging.getLogger(__name__)

# Parsers index into bytes read from a hostile disk; these are how such bugs surface.
_MALFORMED = (GuestFsError, struct.error, IndexError, ValueError, KeyError, OverflowError)
MALFORMED_LAYOUT = _MALFORMED  # also used by guestfs.browse for LVM metadata


@dataclass(frozen=True)
class VolumeReport:
    """What the map decided for one volume; `used_bytes` counts bytes of the volume in use.

    `note` explains a CLEAN decision that overrode a warning sign (e.g. ext4 needs_recovery
    with an empty journal)."""

    volume: Volume
    fstype: str | None
    state: FsState
    used_bytes: int
    whole_reason: str | None
    note: str | None = None


@dataclass(frozen=True)
class AllocationMap:
    """Used extents of a disk, in disk byte offsets, normalized and within [0, disk_size)."""

    disk_size: int
    used: tuple[Extent, ...]
    volumes: tuple[VolumeReport, ...]
    partition_table: PartitionTable

    @property
    def used_bytes(self) -> int:
        return total(self.used)


@dataclass(frozen=True)
class Layout:
    """The disk's partition table and every volume found on it, in disk order."""

    partition_table: PartitionTable
    volumes: tuple[Volume, ...]


def disk_size_of(disk: BinaryIO) -> int:
    """Size in bytes of a seekable disk file object (seeks to the end and back)."""
    pos = disk.tell()
    size = disk.seek(0, os.SEEK_END)
    disk.seek(pos)
    return size


def read_layout(disk: BinaryIO, disk_size: int | None = None) -> Layout:
    """Find the partitions of `disk` (or the whole disk, if it holds a bare filesystem).

    LVM logical volumes are not expanded here; see `logical_volumes`. Raises `GuestFsError`
    for a partition table that is present but damaged.
    """
    size = disk_size_of(disk) if disk_size is None else disk_size
    disk_view = VolumeView(disk, whole_disk(size))
    fstype = probe(disk_view)
    # A FAT or NTFS boot sector also ends in 0x55AA: check for a bare filesystem first.
    if fstype is not None:
        table = PartitionTable("none", 512, ())
        return Layout(
            table, (Volume("disk", VolumeKind.DISK, size, ((Segment(0, 0, size)),), fstype),)
        )
    table = read_partition_table(disk_view)
    if table.scheme == "none":
        return Layout(table, (whole_disk(size),))
    volumes = []
    for part in table.partitions:
        if part.type in {f"0x{t:02x}" for t in MBR_EXTENDED_TYPES}:
            continue
        vol = Volume(
            f"p{part.index}", VolumeKind.PARTITION, part.size, (Segment(0, part.start, part.size),)
        )
        volumes.append(_with_fstype(disk, vol))
    return Layout(table, tuple(volumes))


def _with_fstype(disk: BinaryIO, vol: Volume) -> Volume:
    return Volume(vol.name, vol.kind, vol.size, vol.segments, probe(VolumeView(disk, vol)))


def logical_volumes(disk: BinaryIO, pv_volume: Volume, pv: PhysicalVolume) -> Iterator[Volume]:
    """The LVs of `pv` that live entirely on this PV, as volumes in disk offsets."""
    base = pv_volume.segments[0].disk_offset
    for lv in pv.logical_volumes:
        if lv.unsupported or sum(s.length for s in lv.segments) != lv.size:
            continue
        segs = tuple(Segment(s.volume_offset, base + s.disk_offset, s.length) for s in lv.segments)
        yield _with_fstype(disk, Volume(lv.name, VolumeKind.LOGICAL_VOLUME, lv.size, segs))


def build_allocation_map(
    disk: BinaryIO, disk_size: int | None = None, *, quiesced: bool = False
) -> AllocationMap:
    """Compute the allocation map of the disk behind the seekable binary file object `disk`.

    Reads only metadata (partition tables, LVM labels and text, superblocks, bitmaps, free
    space trees). `quiesced` says the disk is a snapshot taken with the guest's filesystems
    flushed (VSS / VMware Tools quiescing); parsers whose "clean" test is an open log (NTFS)
    then trust their free-space metadata. Not thread-safe with other users of `disk` (it
    seeks). Raises `GuestFsError` when the partition table or an LVM label cannot be trusted;
    problems inside one filesystem only make that volume count as used, with the reason
    reported.
    """
    size = disk_size_of(disk) if disk_size is None else disk_size
    layout = read_layout(disk, size)
    used = list(complement(merge(e for v in layout.volumes for e in v.disk_extents), size))
    reports: list[VolumeReport] = []
    for vol in layout.volumes:
        if vol.fstype == "lvm2":
            reports.extend(_map_physical_volume(disk, vol, used, quiesced))
        else:
            reports.append(_map_volume(disk, vol, used, quiesced))
    return AllocationMap(size, clip(used, size), tuple(reports), layout.partition_table)


def _map_volume(disk: BinaryIO, vol: Volume, used: list[Extent], quiesced: bool) -> VolumeReport:
    """Add the disk extents `vol` uses to `used` and report on it."""
    usage = filesystem_usage(VolumeView(disk, vol), quiesced=quiesced)
    mapped = vol.to_disk(usage.used)
    used.extend(mapped)
    if usage.whole_reason:
        logger.info("%s (%s) taken whole: %s", vol.name, usage.fstype, usage.whole_reason)
    if usage.note:
        logger.info("%s (%s) clean: %s", vol.name, usage.fstype, usage.note)
    return VolumeReport(vol, vol.fstype, usage.state, total(mapped), usage.whole_reason, usage.note)


def _map_physical_volume(
    disk: BinaryIO, vol: Volume, used: list[Extent], quiesced: bool
) -> list[VolumeReport]:
    """Map a PV: its header and metadata area, its LVs, and unallocated extents (free)."""
    try:
        pv = read_physical_volume(VolumeView(disk, vol))
    except _MALFORMED as exc:
        return [_take_whole(vol, used, f"unreadable LVM physical volume: {exc}")]
    bad = [f"{lv.name}: {lv.unsupported}" for lv in pv.logical_volumes if lv.unsupported]
    if bad:
        return [_take_whole(vol, used, "unsupported LVM layout: " + "; ".join(bad))]
    spanning = [
        lv.name for lv in pv.logical_volumes if sum(s.length for s in lv.segments) != lv.size
    ]
    if spanning:
        return [_take_whole(vol, used, "LVs span other PVs: " + ", ".join(spanning))]
    pe_end = pv.pe_start + pv.pe_count * pv.extent_size
    # The label and metadata areas, and anything past the last extent, are the PV's own.
    used.extend(vol.to_disk([Extent(0, pv.pe_start), Extent(pe_end, max(0, vol.size - pe_end))]))
    report = VolumeReport(vol, "lvm2", FsState.CLEAN, pv.pe_start, None)
    lvs = logical_volumes(disk, vol, pv)
    return [report, *(_map_volume(disk, lv, used, quiesced) for lv in lvs)]


def _take_whole(vol: Volume, used: list[Extent], reason: str) -> VolumeReport:
    logger.warning("%s taken whole: %s", vol.name, reason)
    used.extend(vol.disk_extents)
    return VolumeReport(vol, vol.fstype, FsState.UNKNOWN, vol.size, reason)


Parser = Callable[[VolumeView, bool], FsUsage]  # (view, quiesced) -> usage; may raise


def _unquiesced(parse: Callable[[VolumeView], FsUsage]) -> Parser:
    """A parser whose verdict does not depend on quiescing (its clean test is its journal)."""
    return lambda view, _quiesced: parse(view)


def _ntfs(view: VolumeView, quiesced: bool) -> FsUsage:
    return ntfs_usage(view, quiesced=quiesced)


_PARSERS: dict[str, Parser] = {
    "xfs": _unquiesced(xfs_usage),
    "ntfs": _ntfs,
    "vfat": _unquiesced(fat_usage),
    **{name: _unquiesced(functools.partial(ext4_usage, fstype=name)) for name in EXT_FAMILY},
}


def check_filesystem(view: VolumeView, *, quiesced: bool = False) -> FsUsage:
    """Used space of the volume behind `view`, in volume offsets, with every check of its
    parser enforced: raises `GuestFsError` (or, for metadata damaged in ways the parser did
    not foresee, one of `MALFORMED_LAYOUT`) when the metadata cannot be verified. A volume
    that is verified but not current (DIRTY) or not a filesystem we map (UNKNOWN) is returned
    whole with its reason, not raised. `quiesced`: see `build_allocation_map`."""
    fstype = view.volume.fstype
    parser = _PARSERS.get(fstype or "")
    if parser is None:
        what = f"{fstype} is not a filesystem we map" if fstype else "unrecognised content"
        return whole(fstype or "unknown", FsState.UNKNOWN, view.volume.size, what)
    return parser(view, quiesced)


def filesystem_usage(view: VolumeView, *, quiesced: bool = False) -> FsUsage:
    """Used space of the volume behind `view`, in volume offsets; never raises for bad
    filesystem metadata (the volume is then taken whole with the reason, and a warning is
    logged). `quiesced`: see `build_allocation_map`."""
    fstype = view.volume.fstype
    try:
        return check_filesystem(view, quiesced=quiesced)
    except _MALFORMED as exc:
        reason = f"unusable metadata: {exc}"
        # The text, not the exception: a handler that keeps records must not keep the
        # parser's frames (and the metadata buffers they hold) alive.
        logger.warning("%s: %s taken whole: %s", view.volume.name, fstype, reason)
        return whole(fstype or "unknown", FsState.UNKNOWN, view.volume.size, reason)
