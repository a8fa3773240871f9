"""Checks that NTFS allocation metadata is intact and consistent before it frees anything.

Intact: the backup boot sector (the last sector of the partition, just past the sectors the
boot sector counts; mkntfs puts it in the last 512 bytes of that sector) repeats the boot
sector's geometry; $MFTMirr holds the same first records as $MFT (4, or one cluster's worth
when a cluster holds more, as ntfs-3g compares them), each compared over its bytes in use
after fixups. Consistent: every cluster the system files (MFT records 0-15) occupy is marked
in use in $Bitmap, and so is the boot sector's cluster. Every failure raises `GuestFsError`
naming the check; nothing here decides what a failure costs.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence

from vmaccel.guestfs.errors import GuestFsError
from vmaccel.guestfs.extent import Extent, complement, intersect, merge
from vmaccel.guestfs.ntfsrecord import (
    ATTR_DATA,
    SYSTEM_FILES,
    Geometry,
    Run,
    attributes,
    find_attribute,
    read_attribute,
    read_records,
    unprotect,
)
from vmaccel.guestfs.volume import VolumeView

logger = logging.getLogger(__name__)

RECORD_MFTMIRR = 1
# (name, struct format, offset) of the boot-sector fields the backup must repeat.
_BOOT_FIELDS = (
    ("OEM id", "8s", 0x03),
    ("bytes per sector", "<H", 0x0B),
    ("sectors per cluster", "B", 0x0D),
    ("total sectors", "<Q", 0x28),
    ("$MFT cluster", "<Q", 0x30),
    ("$MFTMirr cluster", "<Q", 0x38),
    ("MFT record size", "b", 0x40),
    ("index block size", "b", 0x44),
    ("serial number", "<Q", 0x48),
)


def system_name(number: int) -> str:
    return SYSTEM_FILES[number] if number < len(SYSTEM_FILES) else f"system record {number}"


def check_backup_boot_sector(view: VolumeView, geo: Geometry) -> None:
    """Raise `GuestFsError` unless a backup boot sector repeats the boot sector's geometry."""
    boot = view.pread(0, 512)
    end = geo.total_sectors * geo.sector_size
    places = sorted({end, end + geo.sector_size - 512})
    places = [p for p in places if p + 512 <= view.volume.size]
    if not places:
        raise GuestFsError(
            f"ntfs: no room for the backup boot sector after sector {geo.total_sectors}"
        )
    differences = []
    for place in places:
        backup = view.pread(place, 512)
        wrong = [
            name
            for name, fmt, off in _BOOT_FIELDS
            if struct.unpack_from(fmt, boot, off) != struct.unpack_from(fmt, backup, off)
        ]
        if not wrong:
            return
        differences.append(f"at byte {place}: {', '.join(wrong)} differ")
    raise GuestFsError(
        "ntfs: the backup boot sector does not match the boot sector ("
        + "; ".join(differences)
        + ")"
    )


def check_mirror(view: VolumeView, geo: Geometry, mft_runs: list[Run], mirror: bytes) -> None:
    """Raise `GuestFsError` unless $MFTMirr (whose record, fixups applied, is `mirror`)
    repeats $MFT's first records, and both sit where the boot sector says."""
    if not mft_runs or mft_runs[0].lcn != geo.mft_lcn:
        raise GuestFsError("ntfs: $MFT's run list does not start at the boot sector's $MFT cluster")
    data = find_attribute(mirror, ATTR_DATA)
    if data.resident or not data.runs or data.runs[0].lcn != geo.mirror_lcn:
        raise GuestFsError("ntfs: $MFTMirr does not start at the boot sector's $MFTMirr cluster")
    rs = geo.record_size
    count = 4 if geo.cluster_size <= 4 * rs else geo.cluster_size // rs
    if data.data_size < count * rs:
        raise GuestFsError(
            f"ntfs: $MFTMirr holds {data.data_size} bytes, fewer than {count} records"
        )
    copies = read_attribute(view, geo, data, count * rs)
    originals = read_records(view, geo, mft_runs, 0, count)
    for i, original in enumerate(originals):
        copy = bytearray(copies[i * rs : (i + 1) * rs])
        if original[:4] != b"FILE" and copy[:4] != b"FILE" and i >= 4:
            continue  # neither holds a record (ntfs-3g compares nothing either)
        a = unprotect(original, b"FILE", f"MFT record {i}")
        b = unprotect(copy, b"FILE", f"$MFTMirr copy of MFT record {i}")
        in_use = min(struct.unpack_from("<I", a, 0x18)[0], rs)
        if a[:in_use] != b[:in_use]:
            raise GuestFsError(f"ntfs: $MFTMirr does not match $MFT (record {i}, {system_name(i)})")


def required_extents(
    geo: Geometry, system: dict[int, bytes]
) -> list[tuple[str, tuple[Extent, ...]]]:
    """(name, byte extents) that must be marked in use: the boot sector's cluster and every
    allocated run of every non-resident attribute of the system records in `system`
    (record number -> record with fixups applied). Raises `GuestFsError` for a run that
    lies outside the volume's clusters."""
    cs = geo.cluster_size
    out: list[tuple[str, tuple[Extent, ...]]] = [("the boot sector", (Extent(0, cs),))]
    for number in sorted(system):
        for attr in attributes(system[number]):
            if attr.resident:
                continue
            name = system_name(number) + (f":{attr.name}" if attr.name else "")
            extents = []
            for run in attr.runs:
                if run.lcn is None:
                    continue
                if run.lcn + run.length > geo.cluster_count:
                    raise GuestFsError(
                        f"ntfs: {name} has clusters {run.lcn}+{run.length} outside the "
                        f"volume ({geo.cluster_count} clusters)"
                    )
                extents.append(Extent(run.lcn * cs, run.length * cs))
            if extents:
                out.append((name, merge(extents)))
    return out


def check_marked_used(
    geo: Geometry, required: list[tuple[str, tuple[Extent, ...]]], used: Sequence[Extent]
) -> None:
    """Raise `GuestFsError` naming the first required cluster that $Bitmap calls free.

    `used` is what $Bitmap marks in use, normalized, in volume byte offsets."""
    free = complement(used, geo.cluster_count * geo.cluster_size)
    for name, extents in required:
        missing = intersect(extents, free)
        if missing:
            cluster = missing[0].offset // geo.cluster_size
            raise GuestFsError(f"ntfs: cluster {cluster} of {name} is marked free in $Bitmap")
