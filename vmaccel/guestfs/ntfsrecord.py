"""NTFS on-disk primitives: boot-sector geometry, protected records, attributes, run lists.

On-disk facts used (little-endian): the boot sector gives bytes per sector (0x0B), sectors
per cluster (0x0D; values above 0x80 mean 2^(256 - v)), total sectors (0x28), the $MFT
cluster (0x30), the $MFTMirr cluster (0x38) and the MFT record size (0x40; negative v means
2^-v bytes). MFT records ("FILE"), index blocks ("INDX") and $LogFile restart pages ("RSTR")
are protected by an update sequence array: the last two bytes of every 512-byte stride hold
the sequence number, the real bytes are in the array ("fixups"); a stride whose last two
bytes differ was torn by an interrupted write. Sizes in this module are bytes unless a name
says clusters or records.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

ATTR_ATTRIBUTE_LIST = 0x20
ATTR_FILE_NAME = 0x30
ATTR_VOLUME_INFORMATION = 0x70
ATTR_DATA = 0x80
ATTR_INDEX_ROOT = 0x90
ATTR_INDEX_ALLOCATION = 0xA0
ATTR_BITMAP = 0xB0
ATTR_END = 0xFFFFFFFF
RECORD_IN_USE = 0x0001
RECORD_IS_DIRECTORY = 0x0002
FIXUP_STRIDE = 512
SYSTEM_FILES = (
    "$MFT",
    "$MFTMirr",
    "$LogFile",
    "$Volume",
    "$AttrDef",
    "the root directory",
    "$Bitmap",
    "$Boot",
    "$BadClus",
    "$Secure",
    "$UpCase",
    "$Extend",
)


@dataclass(frozen=True)
class Geometry:
    """Boot-sector geometry, in bytes except `cluster_count`, `mft_lcn`, `mirror_lcn`
    (clusters) and `total_sectors` (sectors of `sector_size` bytes)."""

    cluster_size: int
    cluster_count: int
    mft_lcn: int
    record_size: int
    sector_size: int = 512
    total_sectors: int = 0
    mirror_lcn: int = 0


@dataclass(frozen=True)
class Run:
    """`length` clusters of an attribute's data at cluster `lcn` (None: sparse, reads zero)."""

    lcn: int | None
    length: int


@dataclass(frozen=True)
class Attribute:
    """One attribute of an MFT record.

    Resident: `value` holds the data and `runs` is empty. Non-resident: `runs` maps the
    attribute's clusters from `lowest_vcn` on and `value` is empty. `data_size` is the logical
    length in bytes, `initialized_size` how much of it was ever written (the rest reads zero).
    """

    type: int
    name: str
    resident: bool
    value: bytes
    runs: tuple[Run, ...]
    lowest_vcn: int
    data_size: int
    initialized_size: int


def read_geometry(view: VolumeView) -> Geometry:
    """Parse the boot sector; raise `GuestFsError` if it is not a plausible NTFS one."""
    boot = view.pread(0, 512)
    if boot[3:11] != b"NTFS    ":
        raise GuestFsError("ntfs: boot sector has no 'NTFS' OEM id")
    bps, spc = struct.unpack_from("<HB", boot, 0x0B)
    total_sectors, mft_lcn, mirror_lcn = struct.unpack_from("<QQQ", boot, 0x28)
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
    count = total_sectors * bps // cluster_size
    return Geometry(cluster_size, count, mft_lcn, record_size, bps, total_sectors, mirror_lcn)


def unprotect(buf: bytearray, magic: bytes, what: str) -> bytearray:
    """Check the update sequence array of the protected block `buf` and apply it, in place.

    `buf` must be a whole number of 512-byte strides, all of them covered by the array.
    Raises `GuestFsError` naming `what` for a wrong signature, a malformed array or a torn
    stride.
    """
    if buf[:4] != magic:
        raise GuestFsError(f"ntfs: {what} has no {magic.decode()!r} signature")
    usa_off, usa_count = struct.unpack_from("<HH", buf, 4)
    strides = len(buf) // FIXUP_STRIDE
    if usa_count - 1 != strides or usa_off < 8 or usa_off + 2 * usa_count > FIXUP_STRIDE - 2:
        raise GuestFsError(f"ntfs: {what} has a bad update sequence array")
    usn = buf[usa_off : usa_off + 2]
    for i in range(1, usa_count):
        end = i * FIXUP_STRIDE
        if buf[end - 2 : end] != usn:
            raise GuestFsError(f"ntfs: {what} is torn (fixup {i} mismatch)")
        buf[end - 2 : end] = buf[usa_off + 2 * i : usa_off + 2 * i + 2]
    return buf


def record_offsets(geo: Geometry, mft_runs: list[Run], first: int, count: int) -> list[int]:
    """Volume byte offsets of MFT records `first` .. `first + count - 1` through $MFT's runs."""
    offsets = []
    for number in range(first, first + count):
        vcn_bytes = number * geo.record_size
        pos = 0
        for run in mft_runs:
            run_bytes = run.length * geo.cluster_size
            if pos <= vcn_bytes < pos + run_bytes and run.lcn is not None:
                offsets.append(run.lcn * geo.cluster_size + vcn_bytes - pos)
                break
            pos += run_bytes
        else:
            raise GuestFsError(f"ntfs: MFT record {number} is not mapped by $MFT's run list")
    return offsets


def read_records(
    view: VolumeView, geo: Geometry, mft_runs: list[Run], first: int, count: int
) -> list[bytearray]:
    """Raw (still protected) MFT records `first` .. `first + count - 1`, read with one read
    per physically contiguous span."""
    offsets = record_offsets(geo, mft_runs, first, count)
    out: list[bytearray] = []
    i = 0
    while i < len(offsets):
        j = i + 1
        while j < len(offsets) and offsets[j] == offsets[j - 1] + geo.record_size:
            j += 1
        data = view.pread(offsets[i], (j - i) * geo.record_size)
        out.extend(
            bytearray(data[k * geo.record_size : (k + 1) * geo.record_size]) for k in range(j - i)
        )
        i = j
    return out


def read_mft_record(view: VolumeView, geo: Geometry, mft_runs: list[Run], number: int) -> bytes:
    """MFT record `number`, located through $MFT's own run list, with fixups applied."""
    raw = read_records(view, geo, mft_runs, number, 1)[0]
    return bytes(unprotect(raw, b"FILE", f"MFT record {number}"))


def read_record(view: VolumeView, geo: Geometry, offset: int, number: int) -> bytes:
    """The MFT record at volume byte `offset`, checked and with its fixups applied."""
    raw = bytearray(view.pread(offset, geo.record_size))
    return bytes(unprotect(raw, b"FILE", f"MFT record {number}"))


def record_flags(rec: bytes) -> int:
    """The MFT record header flags (RECORD_IN_USE, RECORD_IS_DIRECTORY)."""
    return int(struct.unpack_from("<H", rec, 0x16)[0])


def _raw_attributes(rec: bytes) -> Iterator[tuple[int, bytes]]:
    """Yield (type, header+body bytes) of each attribute of a record."""
    off = struct.unpack_from("<H", rec, 0x14)[0]
    while off + 8 <= len(rec):
        atype, alen = struct.unpack_from("<II", rec, off)
        if atype == ATTR_END:
            return
        if alen < 16 or alen & 7 or off + alen > len(rec):
            raise GuestFsError(f"ntfs: attribute 0x{atype:x} has a bad length {alen}")
        yield atype, rec[off : off + alen]
        off += alen
    raise GuestFsError("ntfs: attribute list of a record is not terminated")


def attributes(rec: bytes) -> Iterator[Attribute]:
    """Yield the attributes of an MFT record (fixups applied), decoded."""
    for atype, raw in _raw_attributes(rec):
        non_resident, name_len = raw[8], raw[9]
        name_off = struct.unpack_from("<H", raw, 10)[0]
        name = raw[name_off : name_off + 2 * name_len].decode("utf-16-le", "replace")
        if not non_resident:
            vlen, voff = struct.unpack_from("<IH", raw, 16)
            if voff + vlen > len(raw):
                raise GuestFsError(f"ntfs: resident attribute 0x{atype:x} overruns its record")
            value = raw[voff : voff + vlen]
            yield Attribute(atype, name, True, value, (), 0, vlen, vlen)
            continue
        if len(raw) < 0x40:
            raise GuestFsError(f"ntfs: non-resident attribute 0x{atype:x} is too short")
        low_vcn = struct.unpack_from("<q", raw, 0x10)[0]
        runs_off = struct.unpack_from("<H", raw, 0x20)[0]
        data_size, init_size = struct.unpack_from("<qq", raw, 0x30)
        runs = tuple(decode_runs(raw, runs_off))
        yield Attribute(atype, name, False, b"", runs, low_vcn, data_size, init_size)


def find_attribute(rec: bytes, atype: int, name: str = "") -> Attribute:
    """The attribute of type `atype` named `name` of a record; raise `GuestFsError` if absent."""
    for attr in attributes(rec):
        if attr.type == atype and attr.name == name:
            return attr
    label = f" {name!r}" if name else ""
    raise GuestFsError(f"ntfs: record has no{label} attribute 0x{atype:x}")


def data_runs(rec: bytes) -> list[Run]:
    """The run list of the unnamed, non-resident $DATA attribute of an MFT record."""
    attr = find_attribute(rec, ATTR_DATA)
    if attr.resident:
        raise GuestFsError("ntfs: expected a non-resident $DATA attribute")
    return list(attr.runs)


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
        if length <= 0:
            raise GuestFsError("ntfs: run list holds a run of length 0")
        if off_size:
            lcn += int.from_bytes(body[len_size:], "little", signed=True)
            if lcn < 0:
                raise GuestFsError("ntfs: run list points before the volume")
            runs.append(Run(lcn, length))
        else:
            runs.append(Run(None, length))
        offset += 1 + len_size + off_size
    return runs


def volume_flags(rec: bytes) -> int:
    """VOLUME_INFORMATION flags from the $Volume record."""
    attr = find_attribute(rec, ATTR_VOLUME_INFORMATION)
    if not attr.resident or len(attr.value) < 12:
        raise GuestFsError("ntfs: $Volume has no usable VOLUME_INFORMATION attribute")
    return int(struct.unpack_from("<H", attr.value, 10)[0])


def read_attribute(view: VolumeView, geo: Geometry, attr: Attribute, length: int) -> bytes:
    """The first `length` bytes of an attribute's data (at most its initialized size is read;
    the rest, and sparse runs, read as zeros). Physically contiguous runs are read at once."""
    length = min(length, attr.data_size)
    if attr.resident:
        return attr.value[:length]
    valid = min(length, attr.initialized_size)
    out = bytearray(length)
    pos = attr.lowest_vcn * geo.cluster_size
    for lcn, start, size in coalesce(attr.runs, geo.cluster_size, pos):
        lo, hi = start, min(start + size, valid)
        if lo < hi and lcn is not None:
            out[lo:hi] = view.pread(lcn * geo.cluster_size, hi - lo)
        pos = start + size
    if pos < valid:
        raise GuestFsError(f"ntfs: run list covers {pos} of {valid} bytes")
    return bytes(out)


def coalesce(
    runs: tuple[Run, ...] | list[Run], cluster_size: int, start: int = 0
) -> list[tuple[int | None, int, int]]:
    """(lcn, attribute byte offset, byte length) of `runs`, physically adjacent runs joined."""
    spans: list[tuple[int | None, int, int]] = []
    pos = start
    for run in runs:
        size = run.length * cluster_size
        if spans:
            lcn, off, n = spans[-1]
            if lcn is not None and run.lcn == lcn + n // cluster_size:
                spans[-1] = (lcn, off, n + size)
                pos += size
                continue
            if lcn is None and run.lcn is None:
                spans[-1] = (None, off, n + size)
                pos += size
                continue
        spans.append((run.lcn, pos, size))
        pos += size
    return spans


def mft_data(view: VolumeView, geo: Geometry, record0: bytes) -> Attribute:
    """$MFT's unnamed $DATA with its whole run list, `record0` being MFT record 0 (fixups
    applied).

    A fragmented $MFT keeps the later parts of its run list in extension records, named by
    the $ATTRIBUTE_LIST (entries: type 0x00, length 0x04, name length 0x06, lowest VCN 0x08,
    MFT reference 0x10). Each extension is read through the runs known so far, as Windows
    keeps them mapped by the earlier ones. Raises `GuestFsError` for a list that leaves a gap.
    """
    base = find_attribute(record0, ATTR_DATA)
    lists = [a for a in attributes(record0) if a.type == ATTR_ATTRIBUTE_LIST]
    if base.resident or base.lowest_vcn or not lists:
        return base
    raw = read_attribute(view, geo, lists[0], min(lists[0].data_size, 1 << 20))
    runs = list(base.runs)
    vcn = sum(r.length for r in runs)
    for low, number in sorted(_data_extents(raw)):
        if low < vcn:
            continue  # the extent in record 0 itself
        if low != vcn:
            raise GuestFsError(f"ntfs: $MFT's run list has a gap at VCN {vcn}")
        rec = read_mft_record(view, geo, runs, number)
        ext = [
            a
            for a in attributes(rec)
            if a.type == ATTR_DATA and not a.name and not a.resident and a.lowest_vcn == low
        ]
        if not ext:
            raise GuestFsError(f"ntfs: MFT record {number} lacks $MFT's data from VCN {low}")
        runs.extend(ext[0].runs)
        vcn += sum(r.length for r in ext[0].runs)
    return Attribute(
        ATTR_DATA, "", False, b"", tuple(runs), 0, base.data_size, base.initialized_size
    )


def _data_extents(raw: bytes) -> Iterator[tuple[int, int]]:
    """(lowest VCN, MFT record number) of each unnamed $DATA entry of an attribute list."""
    pos = 0
    while pos + 0x1A <= len(raw):
        atype, length, name_len = struct.unpack_from("<IHB", raw, pos)
        if length < 0x1A or pos + length > len(raw):
            raise GuestFsError("ntfs: $MFT's attribute list holds a malformed entry")
        if atype == ATTR_DATA and not name_len:
            low, ref = struct.unpack_from("<QQ", raw, pos + 8)
            yield low, ref & 0xFFFFFFFFFFFF
        pos += length
