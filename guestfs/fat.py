"""FAT12/16/32 allocation from the BIOS parameter block and the first FAT.

On-disk facts used (little-endian BPB at byte 11): bytes per sector, sectors per cluster,
reserved sectors, number of FATs, root entries (FAT12/16), total sectors (16- or 32-bit),
sectors per FAT (16-bit, or 32-bit at 0x24 for FAT32). The type follows from the cluster
count alone (< 4085: FAT12, < 65525: FAT16, else FAT32), as Microsoft's spec says. Cluster n
(n >= 2) starts at the data area + (n - 2) * cluster size; FAT entry 0 means free. The
reserved area, every FAT copy and the FAT12/16 root directory are always used.
Clean: the volume-dirty bit in the BPB (FAT12/16 0x25, FAT32 0x41, bit 0) is clear and the
"clean shutdown" bit of FAT entry 1 (0x8000 FAT16, 0x08000000 FAT32) is set.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from guestfs.errors import GuestFsError
from guestfs.extent import Extent, merge
from guestfs.usage import FsState, FsUsage, whole
from guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

_READ_CHUNK = 4 << 20


@dataclass(frozen=True)
class FatGeometry:
    """Layout of a FAT volume; offsets and sizes in bytes, `cluster_count` in clusters."""

    bits: int
    sector_size: int
    cluster_size: int
    fat_offset: int
    fat_size: int
    data_offset: int
    cluster_count: int
    volume_dirty: bool


def read_geometry(view: VolumeView) -> FatGeometry:
    """Parse the boot sector; raise `GuestFsError` if the geometry is implausible."""
    boot = view.pread(0, 512)
    bps, spc, reserved, nfats, root_entries, total16 = struct.unpack_from("<HBHBHH", boot, 11)
    fat16_size = struct.unpack_from("<H", boot, 22)[0]
    total32 = struct.unpack_from("<I", boot, 32)[0]
    fat32_size = struct.unpack_from("<I", boot, 36)[0]
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or not reserved:
        raise GuestFsError(f"fat: implausible BPB ({bps} bytes/sector, {spc} sectors/cluster)")
    if nfats not in (1, 2):
        raise GuestFsError(f"fat: implausible number of FATs {nfats}")
    fat_sectors = fat16_size or fat32_size
    total = total16 or total32
    root_sectors = (root_entries * 32 + bps - 1) // bps
    data_sector = reserved + nfats * fat_sectors + root_sectors
    if not fat_sectors or total <= data_sector or total * bps > view.volume.size:
        raise GuestFsError(f"fat: implausible sizes (total {total}, data starts at {data_sector})")
    clusters = (total - data_sector) // spc
    bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    if bits * (clusters + 2) > fat_sectors * bps * 8:
        raise GuestFsError(f"fat: FAT ({fat_sectors} sectors) too small for {clusters} clusters")
    dirty_byte = boot[0x41] if bits == 32 else boot[0x25]
    return FatGeometry(
        bits,
        bps,
        spc * bps,
        reserved * bps,
        fat_sectors * bps,
        data_sector * bps,
        clusters,
        bool(dirty_byte & 1),
    )


def fat_usage(view: VolumeView) -> FsUsage:
    """Used space of the FAT volume behind `view`, in volume byte offsets.

    Reads only the first FAT (streamed in 4 MiB chunks). Bytes after the last cluster count
    as used.
    """
    size = view.volume.size
    geo = read_geometry(view)
    entries = fat_entries(view, geo)
    next(entries)  # entry 0 holds the media descriptor
    dirty_reason = _dirty_reason(geo, next(entries)[1])
    if dirty_reason:
        return whole("vfat", FsState.DIRTY, size, dirty_reason)
    used = [Extent(0, geo.data_offset)]
    run_start = -1
    for cluster, value in entries:
        if value and run_start < 0:
            run_start = cluster
        elif not value and run_start >= 0:
            used.append(_clusters(geo, run_start, cluster))
            run_start = -1
    if run_start >= 0:
        used.append(_clusters(geo, run_start, geo.cluster_count + 2))
    end = geo.data_offset + geo.cluster_count * geo.cluster_size
    used.append(Extent(end, size - end))
    return FsUsage("vfat", FsState.CLEAN, merge(used))


def _clusters(geo: FatGeometry, first: int, stop: int) -> Extent:
    """Byte extent of clusters [first, stop)."""
    return Extent(
        geo.data_offset + (first - 2) * geo.cluster_size, (stop - first) * geo.cluster_size
    )


def _dirty_reason(geo: FatGeometry, entry1: int) -> str | None:
    if geo.volume_dirty:
        return "fat volume-dirty bit is set in the boot sector (mounted or not unmounted)"
    clean_bit = {16: 0x8000, 32: 0x08000000}.get(geo.bits)
    if clean_bit and not entry1 & clean_bit:
        return "fat clean-shutdown bit of FAT entry 1 is clear (mounted or not unmounted)"
    return None


def fat_entries(view: VolumeView, geo: FatGeometry) -> Iterator[tuple[int, int]]:
    """Yield (cluster number, entry value) for clusters 0 .. cluster_count + 1 of FAT #1.

    FAT32 entries keep only their low 28 bits, as the spec demands.
    """
    count = geo.cluster_count + 2
    nbytes = (count * geo.bits + 7) // 8
    done = 0
    cluster = 0
    step = _READ_CHUNK - _READ_CHUNK % 12  # 12 bytes = whole FAT12, FAT16 and FAT32 entries
    while done < nbytes:
        chunk = view.pread(geo.fat_offset + done, min(step, nbytes - done) + 2)
        for value in _decode(chunk, geo.bits, min(count - cluster, step * 8 // geo.bits)):
            yield cluster, value
            cluster += 1
        done += step


def _decode(chunk: bytes, bits: int, n: int) -> list[int]:
    if bits == 32:
        return [v & 0x0FFFFFFF for v in struct.unpack_from(f"<{n}I", chunk)]
    if bits == 16:
        return list(struct.unpack_from(f"<{n}H", chunk))
    values = []
    for i in range(n):
        pair = chunk[i * 3 // 2] | chunk[i * 3 // 2 + 1] << 8
        values.append(pair >> 4 if i & 1 else pair & 0x0FFF)
    return values
