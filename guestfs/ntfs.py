"""NTFS allocation from the boot sector, $MFT, $Bitmap (MFT record 6) and $Volume (record 3).

On-disk facts used (little-endian): the boot sector gives bytes per sector (0x0B), sectors
per cluster (0x0D; values above 0x80 mean 2^(256 - v)), total sectors (0x28), the $MFT
cluster (0x30) and the MFT record size (0x40; negative v means 2^-v bytes). MFT records start
with "FILE" and are protected by an update sequence array: the last two bytes of every
512-byte stride hold the sequence number, the real bytes are in the array ("fixups").
$Bitmap's unnamed $DATA attribute holds one bit per cluster (set = in use), found through its
run list. VOLUME_INFORMATION (attribute 0x70 of $Volume) carries VOLUME_IS_DIRTY (0x0001).
Sizes in this module are bytes unless a name says clusters or records.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from guestfs.errors import GuestFsError
from guestfs.extent import Extent, from_bitmap, merge
from guestfs.usage import FsState, FsUsage, whole
from guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

ATTR_VOLUME_INFORMATION = 0x70
ATTR_DATA = 0x80
ATTR_END = 0xFFFFFFFF
VOLUME_IS_DIRTY = 0x0001
RECORD_MFT, RECORD_VOLUME, RECORD_BITMAP = 0, 3, 6
_FIXUP_STRIDE = 512
_READ_CHUNK = 4 << 20


@dataclass(frozen=True)
class Geometry:
    """Boot-sector geometry, in bytes except `cluster_count` and `mft_lcn` (clusters)."""

    cluster_size: int
    cluster_count: int
    mft_lcn: int
    record_size: int


@dataclass(frozen=True)
class Run:
    """`length` clusters of an attribute's data at cluster `lcn` (None: sparse, reads zero)."""

    lcn: int | None
    length: int


def read_geometry(view: VolumeView) -> Geometry:
    """Parse the boot sector; raise `GuestFsError` if it is not a plausible NTFS one."""
    boot = view.pread(0, 512)
    if boot[3:11] != b"NTFS    ":
        raise GuestFsError("ntfs: boot sector has no 'NTFS' OEM id")
    bps, spc = struct.unpack_from("<HB", boot, 0x0B)
    total_sectors, mft_lcn = struct.unpack_from("<QQ", boot, 0x28)
    rec = struct.unpack_from("<b", boot, 0x40)[0]
    cluster_size = bps * (1 << (256 - spc) if spc > 0x80 else spc)
    if bps not in (512, 1024, 2048, 4096) or not cluster_size or cluster_size & (cluster_size - 1):
        raise GuestFsError(f"ntfs: implausible geometry ({bps} bytes/sector, spc {spc})")
    record_size = 1 << -rec if rec < 0 else rec * cluster_size
    if not 256 <= record_size <= 65536:
        raise GuestFsError(f"ntfs: implausible MFT record size {record_size}")
    if total_sectors * bps > view.volume.size:
        raise GuestFsError(
            f"ntfs: filesystem ({total_sectors} sectors) is larger than its volume "
            f"({view.volume.size} bytes)"
        )
    return Geometry(cluster_size, total_sectors * bps // cluster_size, mft_lcn, record_size)


def ntfs_usage(view: VolumeView) -> FsUsage:
    """Used space of the NTFS volume behind `view`, in volume byte offsets.

    Reads the boot sector, MFT records 0, 3 and 6 and the $Bitmap, streaming the bitmap in
    chunks of at most 4 MiB. The bytes after the last cluster (the backup boot sector lives
    there) count as used. Raises `GuestFsError` on damaged metadata.
    """
    size = view.volume.size
    geo = read_geometry(view)
    mft_runs = data_runs(read_record(view, geo, geo.mft_lcn * geo.cluster_size, RECORD_MFT))
    flags = volume_flags(read_mft_record(view, geo, mft_runs, RECORD_VOLUME))
    if flags & VOLUME_IS_DIRTY:
        return whole("ntfs", FsState.DIRTY, size, "ntfs volume is marked dirty ($Volume flags)")
    bitmap_runs = data_runs(read_mft_record(view, geo, mft_runs, RECORD_BITMAP))
    used: list[Extent] = []
    for first_bit, chunk in _read_runs(view, geo, bitmap_runs, (geo.cluster_count + 7) // 8):
        count = max(0, min(len(chunk) * 8, geo.cluster_count - first_bit))
        used.extend(from_bitmap(chunk, geo.cluster_size, first_bit * geo.cluster_size, count))
    end = geo.cluster_count * geo.cluster_size
    used.append(Extent(end, size - end))
    return FsUsage("ntfs", FsState.CLEAN, merge(used))


def read_mft_record(view: VolumeView, geo: Geometry, mft_runs: list[Run], number: int) -> bytes:
    """MFT record `number`, located through $MFT's own run list, with fixups applied."""
    vcn_bytes = number * geo.record_size
    pos = 0
    for run in mft_runs:
        run_bytes = run.length * geo.cluster_size
        if pos <= vcn_bytes < pos + run_bytes and run.lcn is not None:
            offset = run.lcn * geo.cluster_size + vcn_bytes - pos
            return read_record(view, geo, offset, number)
        pos += run_bytes
    raise GuestFsError(f"ntfs: MFT record {number} is not mapped by $MFT's run list")


def read_record(view: VolumeView, geo: Geometry, offset: int, number: int) -> bytes:
    """The MFT record at volume byte `offset`, checked and with its fixups applied."""
    rec = bytearray(view.pread(offset, geo.record_size))
    if rec[:4] != b"FILE":
        raise GuestFsError(f"ntfs: MFT record {number} has no 'FILE' signature")
    usa_off, usa_count = struct.unpack_from("<HH", rec, 4)
    if usa_count - 1 != geo.record_size // _FIXUP_STRIDE or usa_off + 2 * usa_count > 1024:
        raise GuestFsError(f"ntfs: MFT record {number} has a bad update sequence array")
    usn = rec[usa_off : usa_off + 2]
    for i in range(1, usa_count):
        end = i * _FIXUP_STRIDE
        if rec[end - 2 : end] != usn:
            raise GuestFsError(f"ntfs: MFT record {number} is torn (fixup {i} mismatch)")
        rec[end - 2 : end] = rec[usa_off + 2 * i : usa_off + 2 * i + 2]
    return bytes(rec)


def _attributes(rec: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Yield (type, offset in record, header+body bytes) of each attribute of a record."""
    off = struct.unpack_from("<H", rec, 0x14)[0]
    while off + 8 <= len(rec):
        atype, alen = struct.unpack_from("<II", rec, off)
        if atype == ATTR_END:
            return
        if alen < 16 or off + alen > len(rec):
            raise GuestFsError(f"ntfs: attribute 0x{atype:x} has a bad length {alen}")
        yield atype, off, rec[off : off + alen]
        off += alen
    raise GuestFsError("ntfs: attribute list of a record is not terminated")


def data_runs(rec: bytes) -> list[Run]:
    """The run list of the unnamed, non-resident $DATA attribute of an MFT record."""
    for atype, _off, attr in _attributes(rec):
        if atype == ATTR_DATA and attr[9] == 0:
            if not attr[8]:
                raise GuestFsError("ntfs: expected a non-resident $DATA attribute")
            return decode_runs(attr, struct.unpack_from("<H", attr, 32)[0])
    raise GuestFsError("ntfs: record has no unnamed $DATA attribute")


def decode_runs(attr: bytes, offset: int) -> list[Run]:
    """Decode a mapping-pairs array starting at `offset` of a non-resident attribute."""
    runs: list[Run] = []
    lcn = 0
    while offset < len(attr) and attr[offset]:
        header = attr[offset]
        len_size, off_size = header & 0x0F, header >> 4
        if not len_size or offset + 1 + len_size + off_size > len(attr):
            raise GuestFsError("ntfs: malformed run list")
        body = attr[offset + 1 : offset + 1 + len_size + off_size]
        length = int.from_bytes(body[:len_size], "little")
        if off_size:
            lcn += int.from_bytes(body[len_size:], "little", signed=True)
            runs.append(Run(lcn, length))
        else:
            runs.append(Run(None, length))
        offset += 1 + len_size + off_size
    return runs


def volume_flags(rec: bytes) -> int:
    """VOLUME_INFORMATION flags from the $Volume record."""
    for atype, _off, attr in _attributes(rec):
        if atype == ATTR_VOLUME_INFORMATION and not attr[8]:
            value_off = struct.unpack_from("<H", attr, 20)[0]
            return int(struct.unpack_from("<H", attr, value_off + 10)[0])
    raise GuestFsError("ntfs: $Volume has no VOLUME_INFORMATION attribute")


def _read_runs(
    view: VolumeView, geo: Geometry, runs: list[Run], length: int
) -> Iterator[tuple[int, bytes]]:
    """Yield (first bit index, bytes) chunks of the first `length` bytes of an attribute."""
    pos = 0
    for run in runs:
        run_bytes = min(run.length * geo.cluster_size, length - pos)
        done = 0
        while done < run_bytes:
            n = min(_READ_CHUNK, run_bytes - done)
            if run.lcn is None:
                # A sparse bitmap would read as "all free": refuse rather than guess.
                raise GuestFsError("ntfs: $Bitmap has a sparse run")
            chunk = view.pread(run.lcn * geo.cluster_size + done, n)
            yield (pos + done) * 8, chunk
            done += n
        pos += run_bytes
        if pos >= length:
            return
    raise GuestFsError(f"ntfs: $Bitmap run list covers {pos} of {length} bytes")
