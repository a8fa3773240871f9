"""Cross-check of $Bitmap against every file: each in-use MFT record's allocated runs.

$Bitmap carries no checksum, so a cleared bit under a file's data can only be seen by
comparing it with the run lists in the MFT. This walks $MFT's data in reads of at most 4 MiB
(physically contiguous runs joined), skips the records $MFT's own $BITMAP (attribute 0xB0 of
record 0) marks free, and checks every non-sparse run of every non-resident attribute of each
record in use, extension records included (they hold the later runs of fragmented files).
Cost: one read of the parts of the MFT that hold records in use, and about 4 microseconds of
parsing per record in use; memory is bounded by the read size and the used extents.
"""

from __future__ import annotations

import bisect
import logging
import struct
from collections.abc import Iterator, Sequence

from vmaccel.guestfs.errors import GuestFsError, LocalDamage
from vmaccel.guestfs.extent import Extent
from vmaccel.guestfs.ntfsrecord import (
    ATTR_BITMAP,
    ATTR_END,
    RECORD_IN_USE,
    Attribute,
    Geometry,
    coalesce,
    decode_runs,
    find_attribute,
    read_attribute,
    unprotect,
)
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

_READ_CHUNK = 4 << 20
_FIRST_USER_RECORD = 16  # records 0-15 are checked by name in guestfs.ntfscheck


def check_all_records(
    view: VolumeView, geo: Geometry, mft: Attribute, mft_record: bytes, used: Sequence[Extent]
) -> int:
    """Raise `GuestFsError` naming the first cluster that an in-use MFT record (from 16 on)
    maps but $Bitmap calls free (`used`: $Bitmap's in-use extents, normalized, volume bytes).

    `mft` is $MFT's unnamed $DATA, `mft_record` MFT record 0 with fixups applied. Returns
    the number of records checked. A record marked in use that is torn, not a "FILE" record
    or malformed raises `LocalDamage` (its runs cannot be known), but only after the walk has
    checked every other record, so that a file tree may still trust the rest of the volume.
    """
    rs = geo.record_size
    records = mft.data_size // rs
    covered = sum(r.length for r in mft.runs) * geo.cluster_size // rs
    if mft.lowest_vcn or covered < records:
        raise GuestFsError(
            f"ntfs: $MFT's record 0 maps {covered} of its {records} records (the rest is in "
            "extension records, which we do not follow)"
        )
    in_use = read_attribute(view, geo, find_attribute(mft_record, ATTR_BITMAP), (records + 7) // 8)
    starts = [e.offset for e in used]
    ends = [e.end for e in used]
    checked = 0
    damage: LocalDamage | None = None
    for number, raw in _in_use_records(view, geo, mft, records, in_use):
        checked += 1
        try:
            runs = list(_allocated_runs(_unprotected(raw, number), number))
        except GuestFsError as exc:
            damage = damage or LocalDamage(str(exc))
            continue
        for lcn, length in runs:
            if lcn + length > geo.cluster_count:
                raise GuestFsError(
                    f"ntfs: MFT record {number} maps clusters {lcn}+{length} outside the volume"
                )
            lo, hi = lcn * geo.cluster_size, (lcn + length) * geo.cluster_size
            i = bisect.bisect_right(starts, lo) - 1
            if i < 0 or ends[i] < hi:
                first = lcn if i < 0 or ends[i] <= lo else ends[i] // geo.cluster_size
                raise GuestFsError(
                    f"ntfs: cluster {first} of MFT record {number} is marked free in $Bitmap"
                )
    if damage is not None:
        raise damage
    return checked


def _unprotected(raw: bytearray, number: int) -> bytes:
    return bytes(unprotect(raw, b"FILE", f"MFT record {number}"))


def _in_use_records(
    view: VolumeView, geo: Geometry, mft: Attribute, records: int, in_use: bytes
) -> Iterator[tuple[int, bytearray]]:
    """(number, raw record, fixups not applied) of each record from 16 on that $MFT's bitmap
    and the record's own flags mark in use."""
    rs = geo.record_size
    pending = bytearray()
    number = 0
    for piece in _mft_pieces(view, geo, mft, records * rs, in_use):
        pending += piece
        usable = len(pending) - len(pending) % rs
        for off in range(0, usable, rs):
            n = number + off // rs
            if n < _FIRST_USER_RECORD or not in_use[n >> 3] >> (n & 7) & 1:
                continue
            raw = bytearray(pending[off : off + rs])
            if raw[22] & RECORD_IN_USE:  # flags at 0x16 lie before the first fixup
                yield n, raw
        number += usable // rs
        del pending[:usable]


def _mft_pieces(
    view: VolumeView, geo: Geometry, mft: Attribute, length: int, in_use: bytes
) -> Iterator[bytes]:
    """$MFT's data up to `length` bytes, in reads of at most 4 MiB; sparse runs refused.
    A piece whose records `in_use` marks all free is not read (zeros stand in for it)."""
    rs = geo.record_size
    for lcn, start, size in coalesce(mft.runs, geo.cluster_size):
        if start >= length:
            return
        if lcn is None:
            raise GuestFsError("ntfs: $MFT has a sparse run")
        span = min(size, length - start)
        for done in range(0, span, _READ_CHUNK):
            n = min(_READ_CHUNK, span - done)
            first, last = (start + done) // rs, (start + done + n + rs - 1) // rs
            if in_use[first >> 3 : (last + 7) >> 3].strip(b"\x00"):
                yield view.pread(lcn * geo.cluster_size + done, n)
            else:
                yield bytes(n)


def _allocated_runs(rec: bytes, number: int) -> Iterator[tuple[int, int]]:
    """(lcn, clusters) of every non-sparse run of every non-resident attribute of `rec`."""
    off = struct.unpack_from("<H", rec, 0x14)[0]
    size = len(rec)
    while off + 8 <= size:
        atype, alen = struct.unpack_from("<II", rec, off)
        if atype == ATTR_END:
            return
        if alen < 16 or alen & 7 or off + alen > size:
            raise GuestFsError(f"ntfs: MFT record {number} has an attribute of bad length {alen}")
        if rec[off + 8]:
            attr = rec[off : off + alen]
            for run in decode_runs(attr, struct.unpack_from("<H", attr, 0x20)[0]):
                if run.lcn is not None:
                    yield run.lcn, run.length
        off += alen
    raise GuestFsError(f"ntfs: MFT record {number} has no attribute end marker")
