"""LVM2: the physical volume label, the current text metadata, and linear logical volumes.

On-disk facts used (little-endian): one of the first four 512-byte sectors of a PV holds the
label ("LABELONE" at 0, "LVM2 001" at 24, u32 offset of the PV header at 20). The PV header
is the 32-character PV uuid, the device size, then a zero-terminated list of data areas
(offset, size in bytes; the first offset is pe_start) and one of metadata areas. Each
metadata area starts with a 512-byte mda_header (magic " LVM2 x[5A%r0N*>" at 4) whose first
raw location (offset relative to the area, size) points at the newest metadata text in a
circular buffer that wraps to area offset 512. The text is LVM's config format; extent sizes
and pe_start there are in 512-byte sectors. A linear LV is a "striped" segment with
stripe_count 1; everything else is reported as unsupported, so the caller takes the PV whole.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from typing import Any

from guestfs.errors import GuestFsError
from guestfs.volume import Segment, VolumeView

logger = logging.getLogger(__name__)

SECTOR = 512
MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER_SIZE = 512
_MAX_METADATA = 64 << 20
_TOKEN = re.compile(r'\s*(?:#[^\n]*\n?|("(?:[^"\\]|\\.)*")|([{}\[\]=,])|([^\s{}\[\]=,"#]+))')

Config = dict[str, Any]


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


def read_physical_volume(view: VolumeView) -> PhysicalVolume:
    """Parse the PV behind `view` and its VG's newest metadata; raise `GuestFsError` if bad."""
    pv_uuid, mda_offsets = _read_label(view)
    text = _read_metadata_text(view, mda_offsets)
    config = parse_config(text)
    vgs = [(k, v) for k, v in config.items() if isinstance(v, dict)]
    if len(vgs) != 1:
        raise GuestFsError(f"lvm: expected one volume group in the metadata, found {len(vgs)}")
    return _physical_volume(vgs[0][0], vgs[0][1], pv_uuid)


def _read_label(view: VolumeView) -> tuple[str, list[int]]:
    head = view.pread(0, 4 * SECTOR)
    for sector in range(4):
        label = head[sector * SECTOR : (sector + 1) * SECTOR]
        if label[:8] == b"LABELONE" and label[24:32] == b"LVM2 001":
            break
    else:
        raise GuestFsError("lvm: no LABELONE/LVM2 label in the first four sectors")
    pvh = struct.unpack_from("<I", label, 20)[0]
    if not 32 <= pvh <= SECTOR - 48:
        raise GuestFsError(f"lvm: PV header offset {pvh} out of range")
    pv_uuid = label[pvh : pvh + 32].decode("ascii", errors="replace")
    pos = pvh + 40
    areas: list[list[int]] = [[], []]
    for kind in (0, 1):  # data areas, then metadata areas
        while pos + 16 <= SECTOR:
            offset, _size = struct.unpack_from("<QQ", label, pos)
            pos += 16
            if not offset:
                break
            areas[kind].append(offset)
    return pv_uuid, areas[1]


def _read_metadata_text(view: VolumeView, mda_offsets: list[int]) -> str:
    """The newest metadata text among this PV's metadata areas."""
    best: tuple[int, str] | None = None
    for mda in mda_offsets:
        header = view.pread(mda, MDA_HEADER_SIZE)
        if header[4:20] != MDA_MAGIC:
            logger.warning("lvm: metadata area at %d has a bad magic; skipped", mda)
            continue
        area_size = struct.unpack_from("<Q", header, 32)[0]
        offset, size = struct.unpack_from("<QQ", header, 40)
        if not offset or not 0 < size <= _MAX_METADATA or offset >= area_size:
            continue
        first = min(size, area_size - offset)
        raw = view.pread(mda + offset, first)
        if first < size:  # wrapped around the circular buffer
            raw += view.pread(mda + MDA_HEADER_SIZE, size - first)
        text = raw.rstrip(b"\0").decode("utf-8", errors="replace")
        seqno = re.search(r"\bseqno\s*=\s*(\d+)", text)
        if seqno and (best is None or int(seqno.group(1)) > best[0]):
            best = (int(seqno.group(1)), text)
    if best is None:
        raise GuestFsError("lvm: no readable metadata area on this PV")
    return best[1]


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


def _parse_section(tokens: list[str], pos: int, top: bool = False) -> tuple[Config, int]:
    section: Config = {}
    while pos < len(tokens):
        key = tokens[pos]
        if key == "}" and not top:
            return section, pos + 1
        nxt = tokens[pos + 1] if pos + 1 < len(tokens) else ""
        if nxt == "{":
            section[key], pos = _parse_section(tokens, pos + 2)
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
    pvs = vg.get("physical_volumes", {})
    mine = [k for k, v in pvs.items() if str(v.get("id", "")).replace("-", "") == pv_uuid]
    if len(mine) != 1 or extent_size <= 0:
        raise GuestFsError(f"lvm: this PV ({pv_uuid}) is not described in VG {vg_name}")
    pv = pvs[mine[0]]
    pe_start = _int(pv, "pe_start") * SECTOR
    lvs = tuple(
        _logical_volume(f"{vg_name}/{name}", lv, mine[0], pe_start, extent_size)
        for name, lv in vg.get("logical_volumes", {}).items()
        if isinstance(lv, dict)
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
        if seg.get("type") != "striped" or seg.get("stripe_count") != 1 or len(stripes) != 2:
            unsupported = f"segment type {seg.get('type')} (stripe_count {seg.get('stripe_count')})"
            continue
        if stripes[0] == pv_key:
            segments.append(
                Segment(
                    start * extent_size, pe_start + stripes[1] * extent_size, count * extent_size
                )
            )
    segments.sort(key=lambda s: s.volume_offset)
    return LogicalVolume(name, extents * extent_size, tuple(segments), unsupported)


def _int(section: Config, key: str) -> int:
    value = section.get(key)
    if not isinstance(value, int) or value < 0:
        raise GuestFsError(f"lvm: metadata field {key!r} is missing or not a number")
    return value
