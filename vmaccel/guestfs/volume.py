"""Volumes (a partition, an LVM logical volume or the whole disk) and a stream view of one.

A volume's bytes live on the disk as one or more `Segment`s (a partition is one segment, a
linear LV one per LVM segment). `VolumeView` is an `io.RawIOBase` over those segments, so the
filesystem parsers here, and dissect's, read a volume exactly like a file.
"""

from __future__ import annotations

import enum
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent, merge

logger = logging.getLogger(__name__)


class VolumeKind(enum.StrEnum):
    """Where a volume comes from."""

    DISK = "disk"
    PARTITION = "partition"
    LOGICAL_VOLUME = "logical volume"


@dataclass(frozen=True)
class Segment:
    """`length` bytes at `volume_offset` in the volume are at `disk_offset` on the disk."""

    volume_offset: int
    disk_offset: int
    length: int


@dataclass(frozen=True)
class Volume:
    """A byte range of the guest that may hold a filesystem.

    `size` is in bytes; `segments` are sorted by `volume_offset`, contiguous and cover
    ``[0, size)`` except where part of an LV lives on another disk (then there is a gap).
    `fstype` is what `vmaccel.guestfs.probe` recognised ("ext4", "xfs", "ntfs", "vfat", "lvm2") or
    None.
    """

    name: str
    kind: VolumeKind
    size: int
    segments: tuple[Segment, ...]
    fstype: str | None = None

    def to_disk(self, extents: Iterable[Extent]) -> tuple[Extent, ...]:
        """Map extents in volume byte offsets to normalized extents in disk byte offsets.

        Bytes of the volume not on this disk (a gap between segments) are dropped.
        """
        mapped: list[Extent] = []
        for ext in extents:
            for seg in self.segments:
                lo = max(ext.offset, seg.volume_offset)
                hi = min(ext.end, seg.volume_offset + seg.length)
                if lo < hi:
                    mapped.append(Extent(seg.disk_offset + lo - seg.volume_offset, hi - lo))
        return merge(mapped)

    @property
    def disk_extents(self) -> tuple[Extent, ...]:
        """All disk bytes this volume occupies, normalized."""
        return merge(Extent(s.disk_offset, s.length) for s in self.segments)


class VolumeView(io.RawIOBase):
    """A read-only, seekable stream of a volume's bytes, read through the disk file object.

    Reads of bytes not on this disk (a gap in an LV's segments) return zeros. Not thread-safe:
    it seeks the shared disk file object on every read; give each thread its own disk handle.
    """

    def __init__(self, disk: BinaryIO, volume: Volume) -> None:
        super().__init__()
        self._disk = disk
        self.volume = volume
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.volume.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        want = max(0, min(len(out), self.volume.size - self._pos))
        out[:want] = bytes(want)
        for seg in self.volume.segments:
            lo = max(self._pos, seg.volume_offset)
            hi = min(self._pos + want, seg.volume_offset + seg.length)
            if lo < hi:
                self._disk.seek(seg.disk_offset + lo - seg.volume_offset)
                got = self._disk.readinto(out[lo - self._pos : hi - self._pos])  # type: ignore[attr-defined]
                if got != hi - lo:
                    raise GuestFsError(
                        f"{self.volume.name}: disk ends early at byte "
                        f"{seg.disk_offset + lo - seg.volume_offset + (got or 0)}"
                    )
        self._pos += want
        return want

    def pread(self, offset: int, length: int) -> bytes:
        """Return exactly `length` bytes at volume byte `offset`, or raise `GuestFsError`."""
        if offset < 0 or offset + length > self.volume.size:
            raise GuestFsError(
                f"{self.volume.name}: read of {length} bytes at {offset} is outside the "
                f"volume ({self.volume.size} bytes)"
            )
        self.seek(offset)
        data = bytearray(length)
        self.readinto(data)
        return bytes(data)


def whole_disk(size: int) -> Volume:
    """The volume that is the entire disk of `size` bytes."""
    return Volume("disk", VolumeKind.DISK, size, (Segment(0, 0, size),))
