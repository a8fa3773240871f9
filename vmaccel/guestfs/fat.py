"""FAT12/16/32 allocation from the BIOS parameter block and the FATs, cross-checked.

On-disk facts used (little-endian BPB at byte 11): bytes per sector, sectors per cluster,
reserved sectors, number of FATs, root entries (FAT12/16), total sectors (16- or 32-bit),
media byte (0x15), sectors per FAT (16-bit, or 32-bit at 0x24 for FAT32); FAT32 only: extended
flags (0x28: bit 7 set = FATs not mirrored, bits 0-3 = the active FAT) and the root directory
cluster (0x2C). The type follows from the cluster count alone (< 4085: FAT12, < 65525: FAT16,
else FAT32), as Microsoft's spec says. Cluster n (n >= 2) starts at the data area + (n - 2) *
cluster size; FAT entry 0 means free, entry 0 holds the media byte in its low 8 bits. The
reserved area, every FAT copy and the FAT12/16 root directory are always used.

Clean: the volume-dirty bit in the BPB (FAT12/16 0x25, FAT32 0x41, bit 0) is clear and, on
FAT16/32, the "clean shutdown" bit of FAT entry 1 (0x8000 FAT16, 0x08000000 FAT32) is set.
FAT12 has no clean-shutdown bit, so for it the BPB bit is the only dirty rule.

Cross-checks (a failure raises `GuestFsError` naming the check and the cluster): the mirrored
FAT copies agree entry for entry from cluster 2 on (compared chunk by chunk as they are
streamed); entry 0 holds the media byte; every entry is free, bad, end-of-chain or a cluster
number in [2, cluster_count + 1] other than its own; no chain continues into a free
cluster; the FAT32 root directory cluster is in use; every directory reachable from the
root parses as one and names first clusters that are in use (guestfs.fatdir: this catches
chains freed whole, head included, and a wrong geometry); FAT12/16 have root entries and
FAT32 none; the FAT32 backup boot sector repeats the geometry. The BPB itself has no
checksum. The FAT32 FSInfo sector (free count, next free hint) is advisory and often stale
even on clean volumes, so it is not required to agree (it is not read at all).
"""

from __future__ import annotations

import bisect
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent, merge
from vmaccel.guestfs.fatdir import DirectoryLayout, DirectoryTree
from vmaccel.guestfs.usage import FsState, FsUsage, whole
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

_READ_CHUNK = 4 << 20
_BAD = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}  # values >= this: bad cluster or end of chain


@dataclass(frozen=True)
class FatGeometry:
    """Layout of a FAT volume; offsets and sizes in bytes, `cluster_count` in clusters.

    `fat_offset` is the FAT that is read (the active one); `mirror_offsets` the copies that
    must equal it (empty when there is one FAT or FAT32 mirroring is off). `root_cluster` is
    the FAT32 root directory's first cluster (0 on FAT12/16); the FAT12/16 root directory
    region is ``[root_dir_offset, data_offset)`` (empty on FAT32).
    """

    bits: int
    sector_size: int
    cluster_size: int
    fat_offset: int
    fat_size: int
    data_offset: int
    cluster_count: int
    volume_dirty: bool
    media: int = 0xF8
    mirror_offsets: tuple[int, ...] = ()
    root_cluster: int = 0
    root_dir_offset: int = 0


def read_geometry(view: VolumeView) -> FatGeometry:
    """Parse the boot sector; raise `GuestFsError` if the geometry is implausible, breaks a
    rule of the spec for its FAT type, or (FAT32) disagrees with the backup boot sector."""
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
    bits = _fat_bits(clusters, fat_sectors, bps, root_entries, fat16_size)
    fats = [(reserved + i * fat_sectors) * bps for i in range(nfats)]
    root_cluster = 0
    if bits == 32:
        _check_backup_boot_sector(view, boot, reserved, bps)
        fats, root_cluster = _fat32_tables(boot, fats)
    return FatGeometry(
        bits,
        bps,
        spc * bps,
        fats[0],
        fat_sectors * bps,
        data_sector * bps,
        clusters,
        bool((boot[0x41] if bits == 32 else boot[0x25]) & 1),
        boot[0x15],
        tuple(fats[1:]),
        root_cluster,
        (data_sector - root_sectors) * bps,
    )


def _fat_bits(clusters: int, fat_sectors: int, bps: int, root_entries: int, fat16_size: int) -> int:
    """The FAT type (12, 16 or 32 bits per entry) that ``clusters`` makes it (the spec's
    rule); raises `GuestFsError` when the FAT cannot hold them or the BPB contradicts it
    (a fixed root directory and a 16-bit FAT size exist on FAT12/16 only)."""
    bits = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    if bits * (clusters + 2) > fat_sectors * bps * 8:
        raise GuestFsError(f"fat: FAT ({fat_sectors} sectors) too small for {clusters} clusters")
    if (bits == 32) != (root_entries == 0) or (bits == 32 and fat16_size):
        raise GuestFsError(
            f"fat: {root_entries} root entries and a 16-bit FAT size of {fat16_size} do not "
            f"fit FAT{bits} ({clusters} clusters)"
        )
    return bits


def _fat32_tables(boot: bytes, fats: list[int]) -> tuple[list[int], int]:
    """(byte offsets of the FATs in use, root directory cluster) of a FAT32 volume whose FAT
    copies start at ``fats``: with mirroring off (BPB 0x28 bit 7), only the active FAT."""
    ext_flags, root_cluster = struct.unpack_from("<HxxI", boot, 0x28)
    if ext_flags & 0x80:  # mirroring off: only the active FAT is maintained
        active = ext_flags & 0x0F
        if active >= len(fats):
            raise GuestFsError(f"fat: active FAT {active} of {len(fats)} does not exist")
        fats = [fats[active]]
    return fats, root_cluster


def _check_backup_boot_sector(view: VolumeView, boot: bytes, reserved: int, bps: int) -> None:
    """The FAT32 backup boot sector (BPB 0x32) must repeat the geometry fields.

    Compared: 0x0B..0x17 (sector and cluster size .. 16-bit FAT size) and 0x20..0x27 and
    0x2C..0x2F (total sectors, FAT size, root cluster); not the CHS/hidden-sector fields,
    the mirroring flags or the dirty byte, which tools legitimately update in one copy. An
    absent backup (field 0 or 0xFFFF, or no boot signature there) is not an error.
    """
    (backup,) = struct.unpack_from("<H", boot, 0x32)
    if backup in (0, 0xFFFF) or backup >= reserved:
        return
    copy = view.pread(backup * bps, 512)
    if copy[510:512] != b"\x55\xaa":
        logger.debug("fat32: no backup boot sector at sector %d", backup)
        return
    for lo, hi in ((0x0B, 0x18), (0x20, 0x28), (0x2C, 0x30)):
        if boot[lo:hi] != copy[lo:hi]:
            raise GuestFsError(
                f"fat: boot sector and its backup (sector {backup}) disagree in BPB bytes "
                f"{lo:#x}..{hi - 1:#x}"
            )


def fat_usage(view: VolumeView) -> FsUsage:
    """Used space of the FAT volume behind `view`, in volume byte offsets.

    Streams the FAT (4 MiB chunks, each compared with its mirror). Bytes after the last
    cluster count as used. Dirty volumes are taken whole; failed cross-checks raise
    `GuestFsError` (see the module docstring).
    """
    size = view.volume.size
    geo = read_geometry(view)
    chunks = fat_chunks(view, geo)
    first, head = next(chunks)
    dirty_reason = _dirty_reason(geo, head[1])
    if dirty_reason:
        return whole("vfat", FsState.DIRTY, size, dirty_reason)
    if head[0] & 0xFF != geo.media:
        raise GuestFsError(
            f"fat: FAT entry 0 (0x{head[0]:x}) does not hold the media byte 0x{geo.media:02x}"
        )
    scan = _ChainScan(geo)
    scan.add(first, head)
    for first, values in chunks:
        scan.add(first, values)
    runs = scan.finish()
    layout = DirectoryLayout(
        geo.bits,
        geo.fat_offset,
        geo.data_offset,
        geo.cluster_size,
        geo.cluster_count,
        None if geo.bits == 32 else (geo.root_dir_offset, geo.data_offset - geo.root_dir_offset),
        geo.root_cluster,
    )
    DirectoryTree(view, layout, scan.in_use).check()
    used = [Extent(0, geo.data_offset), *(_clusters(geo, a, b) for a, b in runs)]
    end = geo.data_offset + geo.cluster_count * geo.cluster_size
    used.append(Extent(end, size - end))
    return FsUsage("vfat", FsState.CLEAN, merge(used))


class _ChainScan:
    """Collects the in-use cluster runs of a FAT streamed in chunks, checking every entry.

    Targets of chain links that leave their chunk are checked against the runs at the end,
    so memory is O(runs + such links), not O(clusters).
    """

    def __init__(self, geo: FatGeometry) -> None:
        self._max = geo.cluster_count + 1
        self._bad = _BAD[geo.bits]
        self._root = geo.root_cluster
        self.runs: list[tuple[int, int]] = []  # [first, stop) clusters in use
        self._run_start = -1
        self._later: list[tuple[int, int]] = []  # (cluster, target) checked in finish()

    def add(self, first: int, values: list[int]) -> None:
        """Scan the entries of clusters first .. first + len(values) - 1."""
        stop = first + len(values)
        for i, value in enumerate(values):
            cluster = first + i
            if cluster < 2:
                continue
            if not value:
                if self._run_start >= 0:
                    self.runs.append((self._run_start, cluster))
                    self._run_start = -1
                continue
            if self._run_start < 0:
                self._run_start = cluster
            if value >= self._bad:
                continue
            if value < 2 or value > self._max or value == cluster:
                raise GuestFsError(
                    f"fat: FAT entry of cluster {cluster} holds 0x{value:x}, which is neither "
                    f"a cluster number in [2, {self._max}] nor a bad or end-of-chain mark"
                )
            if first <= value < stop:
                if not values[value - first]:
                    raise GuestFsError(
                        f"fat: the chain through cluster {cluster} continues into free "
                        f"cluster {value}"
                    )
            else:
                self._later.append((cluster, value))

    def finish(self) -> list[tuple[int, int]]:
        """The in-use runs; raises for chains into free clusters and a free FAT32 root."""
        if self._run_start >= 0:
            self.runs.append((self._run_start, self._max + 1))
        for cluster, target in self._later:
            if not self.in_use(target):
                raise GuestFsError(
                    f"fat: the chain through cluster {cluster} continues into free cluster {target}"
                )
        if self._root and not self.in_use(self._root):
            raise GuestFsError(f"fat: FAT32 root directory cluster {self._root} is free")
        return self.runs

    def in_use(self, cluster: int) -> bool:
        """Whether `cluster` lies in a run found so far (all runs, after `finish`)."""
        i = bisect.bisect_right(self.runs, (cluster, self._max + 2)) - 1
        return i >= 0 and self.runs[i][0] <= cluster < self.runs[i][1]


def _clusters(geo: FatGeometry, first: int, stop: int) -> Extent:
    """Byte extent of clusters [first, stop)."""
    return Extent(
        geo.data_offset + (first - 2) * geo.cluster_size, (stop - first) * geo.cluster_size
    )


def _dirty_reason(geo: FatGeometry, entry1: int) -> str | None:
    if geo.volume_dirty:
        return "fat volume-dirty bit is set in the boot sector (mounted or not unmounted)"
    clean_bit = {16: 0x8000, 32: 0x08000000}.get(geo.bits)  # FAT12 has none
    if clean_bit and not entry1 & clean_bit:
        return "fat clean-shutdown bit of FAT entry 1 is clear (mounted or not unmounted)"
    return None


def fat_chunks(view: VolumeView, geo: FatGeometry) -> Iterator[tuple[int, list[int]]]:
    """Yield (first cluster, entry values) for clusters 0 .. cluster_count + 1 of the FAT,
    a chunk of at most 4 MiB of FAT at a time.

    Each chunk is compared with the same bytes of every mirror copy first; a difference in
    any entry from cluster 2 on raises `GuestFsError` naming the first differing cluster.
    FAT32 entries keep only their low 28 bits, as the spec demands (the top 4 bits are not
    compared).
    """
    count = geo.cluster_count + 2
    nbytes = (count * geo.bits + 7) // 8
    done = 0
    cluster = 0
    step = _READ_CHUNK - _READ_CHUNK % 12  # 12 bytes = whole FAT12, FAT16 and FAT32 entries
    while done < nbytes:
        length = min(step, nbytes - done)
        n = min(count - cluster, step * 8 // geo.bits)
        chunk = view.pread(geo.fat_offset + done, length)
        values = _decode(chunk, geo.bits, n)
        for copy, offset in enumerate(geo.mirror_offsets, start=2):
            mirror = view.pread(offset + done, length)
            if mirror != chunk:
                _compare(values, _decode(mirror, geo.bits, n), cluster, copy)
        yield cluster, values
        cluster += n
        done += step


def fat_entries(view: VolumeView, geo: FatGeometry) -> Iterator[tuple[int, int]]:
    """Yield (cluster number, entry value) for clusters 0 .. cluster_count + 1 (see
    `fat_chunks` for the checks made on the way)."""
    for first, values in fat_chunks(view, geo):
        yield from enumerate(values, start=first)


def _compare(values: list[int], mirror: list[int], first: int, copy: int) -> None:
    for i, (a, b) in enumerate(zip(values, mirror, strict=True)):
        if a != b and first + i >= 2:  # entries 0 and 1 hold no allocation
            raise GuestFsError(
                f"fat: FAT copies disagree at cluster {first + i} "
                f"(FAT #1 holds 0x{a:x}, FAT #{copy} 0x{b:x})"
            )


def _decode(chunk: bytes, bits: int, n: int) -> list[int]:
    if len(chunk) * 8 < n * bits:
        raise GuestFsError(f"fat: FAT ends early ({len(chunk)} bytes for {n} entries)")
    if bits == 32:
        return [v & 0x0FFFFFFF for v in struct.unpack_from(f"<{n}I", chunk)]
    if bits == 16:
        return list(struct.unpack_from(f"<{n}H", chunk))
    values = []
    for i in range(n):
        lo = i * 3 // 2
        pair = chunk[lo] | (chunk[lo + 1] << 8 if lo + 1 < len(chunk) else 0)
        values.append(pair >> 4 if i & 1 else pair & 0x0FFF)
    return values
