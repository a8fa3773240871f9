"""LVM2: the physical volume label, the current text metadata, and linear logical volumes.

On-disk facts used (little-endian): one of the first four 512-byte sectors of a PV holds the
label header: "LABELONE" at 0, its own sector number (u64 at 8), a checksum (u32 at 16) of
bytes 20..511, the offset of the PV header (u32 at 20) and "LVM2 001" at 24. The PV header
is the 32-character PV uuid, the device size in bytes, then a zero-terminated list of data
areas (offset, size in bytes; the first offset is pe_start) and one of metadata areas. Each
metadata area starts with a 512-byte mda_header: checksum (u32 at 0) of bytes 4..511, magic
" LVM2 x[5A%r0N*>" at 4, version 1, the area's own start and size (u64 at 24 and 32), then
raw locations (offset relative to the area, size, checksum of the text, flags; bit 0 =
"ignored" area). The first raw location points at the newest metadata text (with its
trailing NUL) in a circular buffer that wraps to area offset 512. The text is LVM's config
format; extent sizes and pe_start there are in 512-byte sectors. A linear LV is a "striped"
segment with stripe_count 1; everything else is reported as unsupported, so the caller
takes the PV whole.

Every checksum is LVM's `calc_crc` (lib/misc/crc.c): the reflected CRC-32 of zlib
(polynomial 0xEDB88320) started from 0xf597a6cf and without the final inversion. Checks
that raise `GuestFsError`: each checksum; the label's sector number; mda_header version,
start and size against the PV header; the device size, data area and metadata areas
inside the volume; pe_start in the text equal to the first data area; the extents and every
LV segment inside the data area.
"""

from __future__ import annotations

import logging
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.volume import Segment, VolumeView

logger = logging.getLogger(__name__)

SECTOR = 512
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER_SIZE = 512
INITIAL_CRC = 0xF597A6CF
RAW_LOCN_IGNORED = 1
_MAX_METADATA = 64 << 20
_VG_SECTIONS = frozenset({"physical_volumes", "logical_volumes", "historical_logical_volumes"})
_MAX_NESTING = 16  # LVM writes 4 levels (VG, lists, LV, segment); more is hostile text
_TOKEN = re.compile(r'\s*(?:#[^\n]*\n?|("(?:[^"\\]|\\.)*")|([{}\[\]=,])|([^\s{}\[\]=,"#]+))')

Config = dict[str, Any]


def calc_crc(data: bytes, initial: int = INITIAL_CRC) -> int:
    """LVM2's checksum of `data`: CRC-32 (zlib's) from `initial`, no final inversion.

    Chains like LVM's: ``calc_crc(b, calc_crc(a)) == calc_crc(a + b)``.
    """
    return ~zlib.crc32(data, ~initial & 0xFFFFFFFF) & 0xFFFFFFFF


@dataclass(frozen=True)
class LogicalVolume:
    """A logical volume as seen from one PV.

    `segments` map LV byte offsets to byte offsets *within the PV* (only the parts on this PV);
    `size` is the LV's full size in bytes. `unsupported` names why it cannot be read as a
    plain byte range (e.g. "segment type thin"), or is None for linear LVs.
    """

    name: str
    size: int
    segments: tuple[Segment, ...]
    unsupported: str | None


@dataclass(frozen=True)
class PhysicalVolume:
    """A PV and its volume group; offsets in bytes within the PV."""

    vg_name: str
    pe_start: int
    extent_size: int
    pe_count: int
    logical_volumes: tuple[LogicalVolume, ...]


@dataclass(frozen=True)
class PvLabel:
    """The verified label and PV header; areas are (offset, size) in bytes within the PV
    (a data area size of 0 means "to the end of the device")."""

    pv_uuid: str
    device_size: int
    data_areas: tuple[tuple[int, int], ...]
    metadata_areas: tuple[tuple[int, int], ...]


def read_physical_volume(view: VolumeView) -> PhysicalVolume:
    """Parse the PV behind `view` and its VG's newest metadata, verifying every checksum and
    that the layout fits the volume; raise `GuestFsError` naming the failed check."""
    label = read_label(view)
    text = _read_metadata_text(view, label)
    config = parse_config(text)
    vgs = [(k, v) for k, v in config.items() if isinstance(v, dict)]
    if len(vgs) != 1:
        raise GuestFsError(f"lvm: expected one volume group in the metadata, found {len(vgs)}")
    pv = _physical_volume(vgs[0][0], vgs[0][1], label.pv_uuid)
    _check_extents(pv, label, view.volume.size)
    return pv


def read_label(view: VolumeView) -> PvLabel:
    """Find, verify and parse the label and PV header in the first four sectors."""
    head = view.pread(0, 4 * SECTOR)
    for sector in range(4):
        label = head[sector * SECTOR : (sector + 1) * SECTOR]
        if label[:8] == b"LABELONE" and label[24:32] == b"LVM2 001":
            break
    else:
        raise GuestFsError("lvm: no LABELONE/LVM2 label in the first four sectors")
    own_sector, stored = struct.unpack_from("<QI", label, 8)
    computed = calc_crc(label[20:])
    if stored != computed:
        raise GuestFsError(
            f"lvm: label in sector {sector}: checksum mismatch "
            f"(stored 0x{stored:08x}, computed 0x{computed:08x})"
        )
    if own_sector != sector:
        raise GuestFsError(f"lvm: label in sector {sector} says it is in sector {own_sector}")
    pvh = struct.unpack_from("<I", label, 20)[0]
    if not 32 <= pvh <= SECTOR - 48:
        raise GuestFsError(f"lvm: PV header offset {pvh} out of range")
    pv_uuid = label[pvh : pvh + 32].decode("ascii", errors="replace")
    (device_size,) = struct.unpack_from("<Q", label, pvh + 32)
    pos = pvh + 40
    areas: list[list[tuple[int, int]]] = [[], []]
    for kind in (0, 1):  # data areas, then metadata areas
        while pos + 16 <= SECTOR:
            offset, size = struct.unpack_from("<QQ", label, pos)
            pos += 16
            if not offset:
                break
            areas[kind].append((offset, size))
    result = PvLabel(pv_uuid, device_size, tuple(areas[0]), tuple(areas[1]))
    _check_label(result, view.volume.size)
    return result


def _check_label(label: PvLabel, volume_size: int) -> None:
    if label.device_size > volume_size:
        raise GuestFsError(
            f"lvm: PV header says the device holds {label.device_size} bytes; the volume "
            f"has {volume_size}"
        )
    if not label.data_areas:
        raise GuestFsError("lvm: PV header lists no data area")
    for what, areas in (("data", label.data_areas), ("metadata", label.metadata_areas)):
        for offset, size in areas:
            if offset + size > volume_size or (what == "metadata" and size <= MDA_HEADER_SIZE):
                raise GuestFsError(
                    f"lvm: {what} area {offset}+{size} does not fit the volume ({volume_size})"
                )


def _read_metadata_text(view: VolumeView, label: PvLabel) -> str:
    """The newest metadata text among this PV's metadata areas, every checksum verified."""
    best: tuple[int, str] | None = None
    for mda, area_size in label.metadata_areas:
        text = _read_area_text(view, mda, area_size)
        if text is None:
            continue
        seqno = re.search(r"\bseqno\s*=\s*(\d{1,19})\b", text)
        if seqno and (best is None or int(seqno.group(1)) > best[0]):
            best = (int(seqno.group(1)), text)
    if best is None:
        raise GuestFsError("lvm: no readable metadata area on this PV")
    return best[1]


def _read_area_text(view: VolumeView, mda: int, area_size: int) -> str | None:
    """The current text of the metadata area at byte `mda`, or None if it holds none."""
    header = view.pread(mda, MDA_HEADER_SIZE)
    where = f"lvm: metadata area at byte {mda}"
    if header[4:20] != MDA_MAGIC:
        raise GuestFsError(f"{where}: bad mda_header magic")
    stored = struct.unpack_from("<I", header, 0)[0]
    computed = calc_crc(header[4:])
    if stored != computed:
        raise GuestFsError(
            f"{where}: mda_header checksum mismatch "
            f"(stored 0x{stored:08x}, computed 0x{computed:08x})"
        )
    version, start, size = struct.unpack_from("<IQQ", header, 20)
    if (version, start, size) != (1, mda, area_size):
        raise GuestFsError(
            f"{where}: mda_header says version {version}, area {start}+{size}; the PV header "
            f"says {mda}+{area_size}"
        )
    offset, length, checksum, flags = struct.unpack_from("<QQII", header, 40)
    if flags & RAW_LOCN_IGNORED or not offset:
        return None
    if not 0 < length <= min(_MAX_METADATA, area_size - MDA_HEADER_SIZE) or not (
        MDA_HEADER_SIZE <= offset < area_size
    ):
        raise GuestFsError(f"{where}: metadata text {offset}+{length} does not fit the area")
    first = min(length, area_size - offset)
    raw = view.pread(mda + offset, first)
    if first < length:  # wrapped around the circular buffer
        raw += view.pread(mda + MDA_HEADER_SIZE, length - first)
    computed = calc_crc(raw)
    if computed != checksum:
        raise GuestFsError(
            f"{where}: metadata text checksum mismatch "
            f"(stored 0x{checksum:08x}, computed 0x{computed:08x})"
        )
    return raw.rstrip(b"\0").decode("utf-8", errors="replace")


def parse_config(text: str) -> Config:
    """Parse LVM's config text format into nested dicts, lists, ints and strs."""
    tokens = _tokenize(text)
    result, _end = _parse_section(tokens, 0, top=True)
    return result


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip():
                raise GuestFsError(f"lvm: metadata syntax error near {text[pos : pos + 30]!r}")
            break
        pos = match.end()
        token = match.group(1) or match.group(2) or match.group(3)
        if token:
            tokens.append(token)
    return tokens


def _parse_section(
    tokens: list[str], pos: int, top: bool = False, depth: int = 0
) -> tuple[Config, int]:
    if depth > _MAX_NESTING:
        raise GuestFsError(f"lvm: metadata sections nested deeper than {_MAX_NESTING}")
    section: Config = {}
    while pos < len(tokens):
        key = tokens[pos]
        if key == "}" and not top:
            return section, pos + 1
        nxt = tokens[pos + 1] if pos + 1 < len(tokens) else ""
        if nxt == "{":
            section[key], pos = _parse_section(tokens, pos + 2, depth=depth + 1)
        elif nxt == "=":
            section[key], pos = _parse_value(tokens, pos + 2)
        else:
            raise GuestFsError(f"lvm: metadata syntax error at {key!r}")
    if not top:
        raise GuestFsError("lvm: metadata section is not closed")
    return section, pos


def _parse_value(tokens: list[str], pos: int) -> tuple[Any, int]:
    if pos >= len(tokens):
        raise GuestFsError("lvm: metadata ends after '='")
    if tokens[pos] != "[":
        return _scalar(tokens[pos]), pos + 1
    items: list[Any] = []
    pos += 1
    while pos < len(tokens) and tokens[pos] != "]":
        if tokens[pos] != ",":
            items.append(_scalar(tokens[pos]))
        pos += 1
    return items, pos + 1


def _scalar(token: str) -> int | str:
    if token.startswith('"'):
        return token[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    try:
        return int(token)
    except ValueError:
        return token


def _physical_volume(vg_name: str, vg: Config, pv_uuid: str) -> PhysicalVolume:
    extent_size = _int(vg, "extent_size") * SECTOR
    unknown = [k for k, v in vg.items() if isinstance(v, dict) and k not in _VG_SECTIONS]
    if unknown:  # e.g. a renamed logical_volumes: its LVs' extents would look free
        raise GuestFsError(f"lvm: VG {vg_name} has unknown sections {unknown[:3]}")
    pvs = _sections(vg, "physical_volumes")
    mine = [k for k, v in pvs.items() if str(v.get("id", "")).replace("-", "") == pv_uuid]
    if len(mine) != 1 or extent_size <= 0:
        raise GuestFsError(f"lvm: this PV ({pv_uuid}) is not described in VG {vg_name}")
    pv = pvs[mine[0]]
    pe_start = _int(pv, "pe_start") * SECTOR
    lvs = tuple(
        _logical_volume(f"{vg_name}/{name}", lv, mine[0], pe_start, extent_size)
        for name, lv in _sections(vg, "logical_volumes").items()
    )
    return PhysicalVolume(vg_name, pe_start, extent_size, _int(pv, "pe_count"), lvs)


def _logical_volume(
    name: str, lv: Config, pv_key: str, pe_start: int, extent_size: int
) -> LogicalVolume:
    segments: list[Segment] = []
    unsupported: str | None = None
    extents = 0
    for key, seg in lv.items():
        if not key.startswith("segment") or not isinstance(seg, dict):
            continue
        start, count = _int(seg, "start_extent"), _int(seg, "extent_count")
        extents = max(extents, start + count)
        stripes = seg.get("stripes", [])
        if not isinstance(stripes, list):
            raise GuestFsError(f"lvm: {name} {key}: stripes is not a list")
        if seg.get("type") != "striped" or seg.get("stripe_count") != 1 or len(stripes) != 2:
            unsupported = f"segment type {seg.get('type')} (stripe_count {seg.get('stripe_count')})"
            continue
        if stripes[0] == pv_key:
            if not isinstance(stripes[1], int) or stripes[1] < 0:
                raise GuestFsError(
                    f"lvm: {name} {key}: first extent {stripes[1]!r} is not a number"
                )
            segments.append(
                Segment(
                    start * extent_size, pe_start + stripes[1] * extent_size, count * extent_size
                )
            )
    segments.sort(key=lambda s: s.volume_offset)
    return LogicalVolume(name, extents * extent_size, tuple(segments), unsupported)


def _check_extents(pv: PhysicalVolume, label: PvLabel, volume_size: int) -> None:
    """pe_start agrees with the PV header; extents, LV segments and metadata areas fit."""
    data_offset, data_size = label.data_areas[0]
    if pv.pe_start != data_offset:
        raise GuestFsError(
            f"lvm: metadata says pe_start {pv.pe_start}; the PV header's data area starts at "
            f"{data_offset}"
        )
    pe_end = pv.pe_start + pv.pe_count * pv.extent_size
    limit = min(volume_size, data_offset + data_size if data_size else volume_size)
    if pe_end > limit:
        raise GuestFsError(
            f"lvm: {pv.pe_count} extents of {pv.extent_size} bytes from {pv.pe_start} end at "
            f"{pe_end}, beyond the data area or volume ({limit})"
        )
    for offset, size in label.metadata_areas:
        if offset < pe_end and pv.pe_start < offset + size:
            raise GuestFsError(f"lvm: metadata area {offset}+{size} overlaps the extents")
    for lv in pv.logical_volumes:
        for seg in lv.segments:
            if seg.disk_offset + seg.length > pe_end:
                raise GuestFsError(
                    f"lvm: {lv.name} segment at LV byte {seg.volume_offset} ends beyond the "
                    f"last extent of this PV"
                )


def _sections(parent: Config, key: str) -> dict[str, Config]:
    """The sub-sections of `parent[key]` (absent: none); raises if it is not a section of
    sections, as hostile text may make it a number, a list or a section of values."""
    value = parent.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise GuestFsError(f"lvm: metadata field {key!r} is not a section of sections")
    return value


def _int(section: Config, key: str) -> int:
    value = section.get(key)
    if not isinstance(value, int) or value < 0:
        raise GuestFsError(f"lvm: metadata field {key!r} is missing or not a number")
    return value
